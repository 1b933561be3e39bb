//! Certificates made for a test (ECDSA P-256, by `rcgen`): an authority, and server and client
//! certificates it signs, written as PEM files.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority that lives for the test.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM text.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

/// Where [`Issued::write`] put the files.
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Authority { issuer }
    }

    /// The authority's own certificate, as PEM: what a client trusts.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1 with this serial number, valid from a day
    /// ago for `days` more days (negative: it has expired).
    pub fn server(&self, serial: u64, days: i64) -> Issued {
        self.issue(vec!["localhost".into(), "127.0.0.1".into()], serial, days)
    }

    /// A server certificate for the DNS `names` given, valid for 30 days.
    pub fn named(&self, names: &[&str], serial: u64) -> Issued {
        self.issue(names.iter().map(|n| n.to_string()).collect(), serial, 30)
    }

    /// A client certificate, for mutual TLS.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(vec![name.to_string()], 1000, 30)
    }

    fn issue(&self, names: Vec<String>, serial: u64, days: i64) -> Issued {
        let mut params = CertificateParams::new(names).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(2).max(Duration::days(1 - days));
        params.not_after = now + Duration::days(days);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Issued {
    /// Writes `NAME.pem` and `NAME-key.pem` in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Files {
        let files = Files {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        fs::write(&files.cert, &self.cert).unwrap();
        fs::write(&files.key, &self.key).unwrap();
        files
    }
}
