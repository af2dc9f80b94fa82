//! The alert rules shipped in `examples/prometheus/resilience-alerts.yml`: valid for Prometheus
//! (`promtool check rules`), their unit tests pass (`promtool test rules`, the Debian package
//! `prometheus` that `scripts/test` installs; the test fails without it), and every metric they
//! use is one the daemon publishes (`resilience-core/src/health.rs`), so a renamed metric fails
//! here rather than silencing an alert.

use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("promtool runs (Debian package `prometheus`; scripts/test installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "resilience-alerts.yml"]);
    promtool(&["test", "rules", "resilience-alerts.test.yml"]);
}

#[test]
fn every_metric_the_rules_use_is_published() {
    let rules = std::fs::read_to_string(dir().join("resilience-alerts.yml")).unwrap();
    let published = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../resilience-core/src/health.rs"),
    )
    .unwrap();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("resilience_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for metric in used {
        assert!(
            published.contains(&format!("\"{metric}\"")),
            "the rules use {metric}, which the daemon does not publish"
        );
    }
}
