//! The source keeps its layers pointing one way (README, "Layout"): `lib`/`main` → `master`,
//! `worker`, `program` → `process`, `log`, `application` → `config`. A module that names one
//! above it, or a sibling of its own layer, fails here with the file and the line.

use std::fs;
use std::path::{Path, PathBuf};

/// Each module and the crate modules it must not name.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("master", &["worker", "program", "app"]),
    ("worker", &["master", "program", "app"]),
    ("program", &["master", "worker", "app", "cli"]),
    ("process", &["master", "worker", "log", "app"]),
    ("log", &["master", "worker", "process", "app"]),
    (
        "config",
        &["master", "worker", "process", "log", "app", "cli"],
    ),
    ("app", &["master", "worker", "process", "cli"]),
    (
        "application",
        &["master", "worker", "process", "log", "app", "cli"],
    ),
    (
        "drain",
        &["master", "worker", "process", "log", "app", "cli", "config"],
    ),
    (
        "stall",
        &[
            "master",
            "worker",
            "process",
            "log",
            "app",
            "cli",
            "config",
            "application",
        ],
    ),
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs: Vec<PathBuf> = Some(dir.to_path_buf())
        .filter(|d| d.is_dir())
        .into_iter()
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The files of a module: `src/NAME.rs` and everything under `src/NAME/`.
fn module_files(src: &Path, name: &str) -> Vec<PathBuf> {
    let mut files = rust_files(&src.join(name));
    let single = src.join(format!("{name}.rs"));
    if single.exists() {
        files.push(single);
    }
    assert!(!files.is_empty(), "no module {name} in {}", src.display());
    files
}

#[test]
fn layers_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (module, forbidden) in FORBIDDEN {
        for file in module_files(&src, module) {
            let text = fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                for name in *forbidden {
                    let named = [format!("crate::{name}::"), format!("crate::{name};")]
                        .iter()
                        .any(|p| line.contains(p.as_str()))
                        || line.contains(&format!("crate::{{{name}"))
                        || line.contains(&format!(", {name}}}"));
                    if named && line.contains("crate::") {
                        wrong.push(format!("{}:{}: {line}", file.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules naming a layer above them or beside them:\n{}",
        wrong.join("\n")
    );
}
