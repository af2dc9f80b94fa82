//! Running a runbook's commands as written: every ```sh block after a `<!-- runbook-test -->`
//! marker in `docs/runbooks/*.md`, with bash (`set -euo pipefail`, `resilience` on the PATH).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

pub const MARKER: &str = "<!-- runbook-test -->";

pub fn runbook(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/runbooks")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The runnable blocks of a runbook, in order: those after `marker` ([`MARKER`], or a named
/// one such as `<!-- runbook-test: salvage -->` for a scenario of its own).
pub fn blocks(name: &str, marker: &str) -> Vec<String> {
    let text = runbook(name);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(marker) {
        rest = &rest[at + marker.len()..];
        let body = rest
            .trim_start()
            .strip_prefix("```sh\n")
            .unwrap_or_else(|| panic!("{name}: {marker} is not followed by a ```sh block"));
        let end = body.find("\n```").expect("an unterminated block");
        out.push(body[..end].to_owned());
        rest = &body[end..];
    }
    assert!(!out.is_empty(), "{name} has no runnable block");
    out
}

/// Runs every runnable block of `name` in `dir` with `vars`; fails the test on a failed block.
pub fn run_runbook(name: &str, dir: &Path, vars: &[(&str, String)]) -> String {
    run_runbook_marked(name, MARKER, dir, vars)
}

/// Runs the blocks of `name` after `marker` in `dir` with `vars`; fails the test on a failed
/// block.
pub fn run_runbook_marked(name: &str, marker: &str, dir: &Path, vars: &[(&str, String)]) -> String {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut all = String::new();
    for block in blocks(name, marker) {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block])
            .current_dir(dir)
            .env("PATH", &path)
            .env_remove("RESILIENCE_PASSWORD")
            .env_remove("RESILIENCE_REPOSITORY")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: block failed ({}):\n{block}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}
