//! The Kubernetes manifests in `examples/k8s/` are valid against the Kubernetes schemas, checked
//! offline with `kubernetes-validate --strict` (PyPI `kubernetes-validate`, which bundles the
//! schemas; `scripts/test` installs it, and the test fails without it). A manifest with a field
//! the schema does not have is refused, so the check can fail.

use std::path::PathBuf;
use std::process::{Command, Output};

fn validate(files: &[PathBuf]) -> Output {
    Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files)
        .output()
        .expect("kubernetes-validate runs (pip install kubernetes-validate; scripts/test does)")
}

#[test]
fn the_example_manifests_are_valid_kubernetes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let out = validate(&files);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let documents: usize = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .split("\n---")
                .filter(|d| d.contains("kind:"))
                .count()
        })
        .sum();
    assert_eq!(
        text.matches(" passed for resource ").count(),
        documents,
        "{text}"
    );

    // A field the schema does not know is refused.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    let cronjob = std::fs::read_to_string(dir.join("backup-cronjob.yaml")).unwrap();
    std::fs::write(
        &bad,
        cronjob.replacen("spec:", "spec:\n  notAField: true", 1),
    )
    .unwrap();
    let out = validate(&[bad]);
    assert!(
        !out.status.success(),
        "an unknown field passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
