//! The TLS files (`--certfile`, `--keyfile`, `--ca-certs`): read and checked where the rest of
//! the configuration is, at start, by `check` and at every reload, so that a certificate that
//! does not load stops the start (exit status 2) or fails the reload with the old workers left
//! serving. The master reads them before it forks, as nginx does: the workers may run as a user
//! that cannot read the key. Each worker builds its TLS acceptor from what is loaded here.
//! Several certificates (repeated `--certfile`/`--keyfile` pairs) are chosen by the name the
//! client asks for (SNI) among the DNS names each one holds; the first serves any other name.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::Source;

/// How soon before its end a certificate is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Whether clients must present a certificate signed by `--ca-certs` (mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientCerts {
    /// No certificate is asked for.
    None,
    /// A certificate is asked for; a client without one is served, one with a bad one refused.
    Optional,
    /// A client without a valid certificate is refused in the handshake.
    Required,
}

impl ClientCerts {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "none" => Ok(ClientCerts::None),
            "optional" => Ok(ClientCerts::Optional),
            "required" => Ok(ClientCerts::Required),
            _ => Err("expected none, optional or required".to_string()),
        }
    }
}

/// A file named by an option, with where it was named.
#[derive(Debug, Clone)]
pub(crate) struct TlsFile {
    pub(crate) path: PathBuf,
    pub(crate) source: Source,
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.source)
    }
}

/// The TLS options as given.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFiles {
    /// Certificates and their keys, paired in the order given.
    pub(crate) certfile: Vec<TlsFile>,
    pub(crate) keyfile: Vec<TlsFile>,
    pub(crate) ca_certs: Option<TlsFile>,
    /// `None` when not given: required with `ca_certs`, none without.
    pub(crate) client_certs: Option<ClientCerts>,
}

/// What the workers' acceptors are built from, loaded and checked.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) certificates: Arc<Certificates>,
    /// With `--ca-certs`: checks client certificates.
    pub(crate) client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Made once, before the workers fork, so that every worker of a generation encrypts
    /// session tickets with the same key: a client resumes its session on whichever worker
    /// accepts its next connection.
    pub(crate) ticketer: Arc<dyn ProducesTickets>,
}

/// The loaded certificates, the default one first, chosen by SNI.
#[derive(Debug)]
pub(crate) struct Certificates(Vec<Certificate>);

/// A certificate, its key, and what is known of it.
struct Certificate {
    certified: Arc<CertifiedKey>,
    /// The DNS names it holds, lowercase; `*.example.com` for a wildcard.
    names: Vec<String>,
    /// When it ends, for the warning a fortnight before.
    not_after: SystemTime,
    certfile: PathBuf,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("certfile", &self.certfile)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("certificates", &self.certificates)
            .field("client_verifier", &self.client_verifier.is_some())
            .finish_non_exhaustive()
    }
}

/// The crypto provider: aws-lc-rs, rustls's default, the faster of the two on handshakes and
/// bulk encryption; it builds with a C compiler alone (no cmake) on Linux.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsFiles {
    /// Whether TLS is configured at all.
    pub(crate) fn given(&self) -> bool {
        !self.certfile.is_empty() || !self.keyfile.is_empty()
    }

    /// Reads and checks the files; each error is one line naming the file and the problem.
    pub(crate) fn load(&self) -> Result<Tls, String> {
        match (
            self.certfile.get(self.keyfile.len()),
            self.keyfile.get(self.certfile.len()),
        ) {
            (Some(cert), _) => return Err(format!("certfile {cert} is given without a keyfile")),
            (_, Some(key)) => return Err(format!("keyfile {key} is given without a certfile")),
            (None, None) if self.certfile.is_empty() => {
                return Err("no certfile and keyfile are given".to_string());
            }
            (None, None) => {}
        }
        let provider = provider();
        let certificates = self
            .certfile
            .iter()
            .zip(&self.keyfile)
            .map(|(certfile, keyfile)| certificate(certfile, keyfile, &provider))
            .collect::<Result<Vec<_>, _>>()?;
        let client_certs = self.client_certs.unwrap_or(if self.ca_certs.is_some() {
            ClientCerts::Required
        } else {
            ClientCerts::None
        });
        let client_verifier = match (client_certs, &self.ca_certs) {
            (ClientCerts::None, _) => None,
            (_, None) => {
                return Err("client_certs optional or required needs --ca-certs".to_string());
            }
            (mode, Some(ca)) => Some(client_verifier(ca, mode, &provider)?),
        };
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("cannot make a session ticket key: {e}"))?;
        Ok(Tls {
            provider,
            certificates: Arc::new(Certificates(certificates)),
            client_verifier,
            ticketer,
        })
    }
}

impl Tls {
    /// A warning for each certificate that ends within [`EXPIRY_WARNING`].
    pub(crate) fn expiry_warnings(&self) -> impl Iterator<Item = String> + '_ {
        self.certificates.0.iter().filter_map(|cert| {
            let left = cert
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            (left < EXPIRY_WARNING).then(|| {
                format!(
                    "the certificate in {} expires in {} day(s), on {}",
                    cert.certfile.display(),
                    left.as_secs() / 86_400,
                    date(cert.not_after)
                )
            })
        })
    }
}

impl ResolvesServerCert for Certificates {
    /// The certificate holding the name the client asked for, else the first.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.0
                .iter()
                .find(|cert| cert.names.iter().any(|pattern| matches(pattern, &name)))
        });
        chosen
            .or(self.0.first())
            .map(|cert| Arc::clone(&cert.certified))
    }
}

/// Whether a certificate's DNS name covers `name`: the same name, or a wildcard
/// `*.example.com` covering one more label (`www.example.com`, not `example.com`).
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

/// A certificate chain and its key, checked: readable, matching, within its validity.
fn certificate(
    certfile: &TlsFile,
    keyfile: &TlsFile,
    provider: &CryptoProvider,
) -> Result<Certificate, String> {
    let chain = certificates(certfile)?;
    let key = PrivateKeyDer::from_pem_file(&keyfile.path).map_err(|e| {
        format!("keyfile {keyfile}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}")
    })?;
    let (not_after, names) = validity(certfile, &chain[0])?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("keyfile {keyfile} does not match the certificate in {certfile}")
        }
        e => format!("keyfile {keyfile}: {e}"),
    })?;
    Ok(Certificate {
        certified: Arc::new(certified),
        names,
        not_after,
        certfile: certfile.path.clone(),
    })
}

/// Every certificate in a PEM file, the server's own first.
fn certificates(file: &TlsFile) -> Result<Vec<CertificateDer<'static>>, String> {
    let text =
        std::fs::read(&file.path).map_err(|e| format!("certfile {file}: cannot read: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certfile {file}: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!("certfile {file}: no PEM certificate in it"));
    }
    Ok(chain)
}

/// The end of the certificate's validity, refused when it has passed or not yet begun, and the
/// DNS names of its subject alternative names, lowercase.
fn validity(
    file: &TlsFile,
    cert: &CertificateDer<'_>,
) -> Result<(SystemTime, Vec<String>), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("certfile {file}: not an X.509 certificate: {e}"))?;
    let validity = parsed.validity();
    let at = |seconds: i64| UNIX_EPOCH + Duration::from_secs(seconds.max(0).unsigned_abs());
    let (not_before, not_after) = (
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
    );
    let now = SystemTime::now();
    if now > not_after {
        return Err(format!(
            "certfile {file}: the certificate expired on {}",
            date(not_after)
        ));
    }
    if now < not_before {
        return Err(format!(
            "certfile {file}: the certificate is not valid before {}",
            date(not_before)
        ));
    }
    let names = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    Some(dns.to_ascii_lowercase())
                }
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(format!(
                "certfile {file}: unreadable subject alternative names: {e}"
            ));
        }
    };
    Ok((not_after, names))
}

fn client_verifier(
    ca: &TlsFile,
    mode: ClientCerts,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let text = std::fs::read(&ca.path).map_err(|e| format!("ca_certs {ca}: cannot read: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert.map_err(|e| format!("ca_certs {ca}: not a PEM certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_certs {ca}: unusable certificate: {e}"))?;
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    let builder = if mode == ClientCerts::Optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| format!("ca_certs {ca}: {e}"))
}

/// `2026-05-01 12:00:00 UTC`.
fn date(at: SystemTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from(at)
        .format(format)
        .unwrap_or_else(|_| format!("{at:?}"))
}
