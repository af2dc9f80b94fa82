//! The alert rules shipped in `examples/prometheus/resilience-alerts.yml`: valid for Prometheus
//! (`promtool check rules`), their unit tests pass (`promtool test rules`, the Debian package
//! `prometheus` that `scripts/test` installs; the test fails without it), and every metric they
//! use is one the daemon publishes (`resilience-core/src/health.rs`), so a renamed metric fails
//! here rather than silencing an alert. End to end, a real Prometheus scrapes a daemon whose
//! source breaches its RPO, and a real Alertmanager delivers the alert to a webhook.

mod daemon_support;
mod pg_support;
mod tls_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use daemon_support::{wait_for, webhook, Daemon};
use pg_support::{free_port, Lab, BIN};

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
    let published: String = [
        "../resilience-core/src/health.rs",
        "../resilience-core/src/health/monitor.rs",
        "src/daemon/standby.rs",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(f)).unwrap())
    .collect();
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

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(program: &str, args: &[String], log: &std::path::Path) -> Server {
    let log = std::fs::File::create(log).unwrap();
    Server(
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} runs (Debian packages prometheus, prometheus-alertmanager; scripts/test installs them): {e}")
            }),
    )
}

/// A source backed up once, then failing (its directory is gone), with an RPO of 3 s: a real
/// Prometheus scraping the daemon evaluates the shipped rules (with their `for` waits cut to
/// nothing) and a real Alertmanager posts `ResilienceRpoBreached` for that source to a webhook.
/// The daemon's own webhook, in Alertmanager's shape, posts to the same Alertmanager, whose
/// `ResilienceSourceBreach` reaches the webhook too: either path works.
#[test]
fn a_breached_rpo_reaches_a_webhook_through_prometheus_and_alertmanager() {
    let lab = Lab::new();
    let docs = lab.path("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("a.txt"), b"alpha").unwrap();
    let (hook_port, posted) = webhook();
    let am_port = free_port();
    let am_dir = lab.path("alertmanager");
    std::fs::create_dir_all(&am_dir).unwrap();
    std::fs::write(
        am_dir.join("am.yml"),
        format!(
            r#"
route:
  receiver: hook
  group_by: [alertname, source]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{hook_port}/alerts
"#
        ),
    )
    .unwrap();
    let _alertmanager = start(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", am_dir.join("am.yml").display()),
            format!("--storage.path={}", am_dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".into(),
        ],
        &am_dir.join("log"),
    );

    let daemon_port = free_port();
    let config = lab.path("daemon.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[repository]
url = "{repo}"
key_file = "{key}"
[server]
listen = "127.0.0.1:{daemon_port}"
webhook = "http://127.0.0.1:{am_port}/api/v2/alerts"
webhook_format = "alertmanager"
[[source]]
name = "docs"
kind = "dir"
path = "{docs}"
schedule = "* * * * * *"
rpo = "3s"
"#,
            repo = lab.repo().display(),
            key = lab.key_file().display(),
            docs = docs.display(),
        ),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["daemon", "--config"])
        .arg(&config)
        .env_remove("RESILIENCE_PASSWORD")
        .env_remove("RESILIENCE_REPOSITORY");
    let daemon = Daemon::start(command, daemon_port);
    wait_for(60, "a first backup in /metrics", || {
        daemon
            .metrics()
            .contains("resilience_backup_last_success_timestamp_seconds{source=\"docs\"}")
            .then_some(())
    });
    // From now on every backup of the source fails: the RPO will pass.
    std::fs::remove_dir_all(&docs).unwrap();

    // The shipped rules, with every `for` wait cut to nothing.
    let prom_dir = lab.path("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let rules = std::fs::read_to_string(dir().join("resilience-alerts.yml")).unwrap();
    let quick: String = rules
        .lines()
        .map(|l| match l.trim_start().starts_with("for:") {
            true => String::new(),
            false => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(prom_dir.join("rules.yml"), quick).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
  - job_name: resilience
    static_configs:
      - targets: ["127.0.0.1:{daemon_port}"]
"#
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let _prometheus = start(
        "prometheus",
        &[
            format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &prom_dir.join("log"),
    );

    let firing = |name: &str| {
        let name = name.to_owned();
        let posted = posted.clone();
        move || {
            posted
                .lock()
                .unwrap()
                .iter()
                .flat_map(|p| p["alerts"].as_array().cloned().unwrap_or_default())
                .find(|a| a["labels"]["alertname"] == name.as_str() && a["status"] == "firing")
        }
    };
    let alert = wait_for(
        90,
        "ResilienceRpoBreached at the webhook",
        firing("ResilienceRpoBreached"),
    );
    assert_eq!(alert["labels"]["source"], "docs", "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("docs: no successful backup within its RPO"),
        "{alert}"
    );
    // The daemon's own webhook, in Alertmanager's shape, reached the same receiver.
    let direct = wait_for(
        30,
        "the daemon's ResilienceSourceBreach at the webhook",
        firing("ResilienceSourceBreach"),
    );
    assert_eq!(direct["labels"]["source"], "docs", "{direct}");
    assert!(
        direct["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("RPO"),
        "{direct}"
    );
    drop(daemon);
}
