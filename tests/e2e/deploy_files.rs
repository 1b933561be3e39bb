//! The container image and the Kubernetes manifests under `deploy/`: every manifest parses,
//! prefork accepts the command lines they give it, and the settings a rolling deploy depends on
//! agree with each other (docs/kubernetes.md says why each matters).

use std::path::PathBuf;

use serde::Deserialize;
use yaml_serde::Value;

use super::support::{Bin, run};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document under `deploy/`, with the file it came from.
fn manifests() -> Vec<(String, Value)> {
    let dir = repository().join("deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest under {}", dir.display());
    let mut documents = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for document in yaml_serde::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}"));
            documents.push((name.clone(), value));
        }
    }
    documents
}

/// The one manifest of `kind`.
fn only(kind: &str) -> Value {
    let mut found = manifests()
        .into_iter()
        .filter(|(_, m)| m["kind"].as_str() == Some(kind));
    let (_, manifest) = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} under deploy/"));
    assert!(found.next().is_none(), "more than one {kind} under deploy/");
    manifest
}

fn text(value: &Value, what: &str) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
        .to_string()
}

/// The Deployment's container, the command line it gives prefork and its environment.
struct Container {
    spec: Value,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Container {
    fn of(deployment: &Value) -> Container {
        let containers = deployment["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("the Deployment's containers");
        assert_eq!(containers.len(), 1, "one container: {containers:?}");
        let spec = containers[0].clone();
        let args = spec["args"]
            .as_sequence()
            .expect("the container's args")
            .iter()
            .map(|a| text(a, "an argument"))
            .collect();
        let env = spec["env"]
            .as_sequence()
            .map(|env| {
                env.iter()
                    .map(|e| (text(&e["name"], "a name"), text(&e["value"], "a value")))
                    .collect()
            })
            .unwrap_or_default();
        Container { spec, args, env }
    }

    /// The value the command line (`--flag VALUE`), else the environment (`PREFORK_...`),
    /// gives an option; the command line wins, as in prefork.
    fn setting(&self, flag: &str) -> Option<String> {
        let variable = format!(
            "PREFORK_{}",
            flag.trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase()
        );
        self.args
            .iter()
            .position(|a| a == flag)
            .map(|i| self.args[i + 1].clone())
            .or_else(|| {
                self.env
                    .iter()
                    .find(|(name, _)| *name == variable)
                    .map(|(_, value)| value.clone())
            })
    }

    fn required(&self, flag: &str) -> String {
        self.setting(flag)
            .unwrap_or_else(|| panic!("the Deployment's container sets no {flag}"))
    }

    /// The number of the container port named `name`.
    fn port(&self, name: &str) -> u64 {
        self.spec["ports"]
            .as_sequence()
            .expect("the container's ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }
}

/// Whole seconds, the form the manifests give durations in (prefork itself takes more forms;
/// `prefork check` below validates them).
fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{duration:?}: the manifests give durations as whole seconds"))
}

/// The port of a `HOST:PORT` address.
fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

#[test]
fn every_manifest_parses_as_a_kubernetes_object() {
    let documents = manifests();
    for (file, manifest) in &documents {
        for key in ["apiVersion", "kind"] {
            assert!(manifest[key].is_string(), "{file}: no {key}");
        }
        assert!(manifest["metadata"]["name"].is_string(), "{file}: no name");
    }
    let kinds: Vec<&str> = documents
        .iter()
        .filter_map(|(_, m)| m["kind"].as_str())
        .collect();
    for kind in ["Deployment", "Service"] {
        assert!(kinds.contains(&kind), "no {kind} under deploy/: {kinds:?}");
    }
}

#[test]
fn the_deployment_outlasts_the_drain_and_probes_the_health_path() {
    let deployment = only("Deployment");
    let pod = &deployment["spec"]["template"];
    let container = Container::of(&deployment);

    // The kubelet's SIGKILL comes after prefork's own deadline.
    let delay = seconds(&container.required("--shutdown-delay"));
    let graceful = seconds(&container.required("--graceful-timeout"));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > delay + graceful,
        "terminationGracePeriodSeconds {grace} is not more than shutdown delay {delay} + \
         graceful timeout {graceful}"
    );
    // The shutdown delay is what gives the endpoints time to go: without it the drain starts
    // while traffic still arrives.
    assert!(delay > 0, "no shutdown delay");

    // Readiness asks prefork's health path, on the port prefork serves.
    let probe = &container.spec["readinessProbe"]["httpGet"];
    assert_eq!(
        text(&probe["path"], "the readiness probe's path"),
        container.required("--health-path")
    );
    let http = container.port(&text(&probe["port"], "the readiness probe's port"));
    assert_eq!(http, port_of(&container.required("--bind")));

    // Prometheus scrapes the metrics listener.
    let annotations = &pod["metadata"]["annotations"];
    let metrics = port_of(&container.required("--metrics-bind"));
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(metrics.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    assert_eq!(container.port("metrics"), metrics);

    // Not root, on a read-only root file system.
    let security = [
        &pod["spec"]["securityContext"],
        &container.spec["securityContext"],
    ];
    let field = |key: &str| security.iter().rev().find_map(|s| s.get(key)).cloned();
    assert_eq!(field("runAsNonRoot"), Some(Value::Bool(true)));
    let user = field("runAsUser").and_then(|u| u.as_u64());
    assert!(user.is_some_and(|u| u != 0), "runAsUser: {user:?}");
    assert_eq!(field("readOnlyRootFilesystem"), Some(Value::Bool(true)));

    // The Service sends its traffic to the port prefork serves.
    let service = only("Service");
    let selector = &service["spec"]["selector"];
    assert_eq!(selector, &deployment["spec"]["selector"]["matchLabels"]);
    for port in service["spec"]["ports"].as_sequence().expect("ports") {
        let target = &port["targetPort"];
        let number = target
            .as_u64()
            .unwrap_or_else(|| container.port(&text(target, "targetPort")));
        assert_eq!(number, http, "the Service's port {port:?}");
    }
}

/// The JSON array of the Dockerfile instruction `instruction` (exec form).
fn dockerfile(instruction: &str) -> Vec<String> {
    let path = repository().join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(instruction)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {instruction} in {}", path.display()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{instruction} {line}: {e}"))
}

/// Runs `prefork check` with the command line of `serve` given by `args`, and environment
/// `env`, and requires that it passes.
fn check(what: &str, args: &[String], env: &[(String, String)]) {
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{what}");
    let args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let args = [&["check"], &args[..]].concat();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, stderr) = run(Bin::Prefork, &args, &env);
    assert!(
        status.success(),
        "{what}: prefork {args:?} failed: {status}\n{stderr}"
    );
}

#[test]
fn prefork_accepts_what_the_image_and_the_deployment_give_it() {
    let entrypoint = dockerfile("ENTRYPOINT");
    assert_eq!(entrypoint, ["/usr/local/bin/prefork"], "prefork is PID 1");
    let cmd = dockerfile("CMD");
    check("the image's CMD", &cmd, &[]);

    let deployment = Container::of(&only("Deployment"));
    check(
        "the Deployment's container",
        &deployment.args,
        &deployment.env,
    );
    // The Deployment repeats the image's command line, so that both serve the same health path
    // and metrics port.
    assert_eq!(deployment.args, cmd);

    let text = std::fs::read_to_string(repository().join("Dockerfile")).unwrap();
    let user = text
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the Dockerfile");
    assert!(
        !["0", "root"].contains(&user.split(':').next().unwrap()),
        "the image runs as {user}"
    );
    assert!(text.lines().any(|l| l == "STOPSIGNAL SIGTERM"));
    let ignored = std::fs::read_to_string(repository().join(".dockerignore")).unwrap();
    assert!(
        ignored.lines().any(|l| l.trim_end_matches('/') == "target"),
        ".dockerignore leaves target/ in the build context"
    );
    // What the image copies in to serve.
    assert!(repository().join("public").is_dir());
}
