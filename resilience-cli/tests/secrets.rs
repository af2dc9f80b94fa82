//! Secrets never leak: a full CLI run with known secrets — the repository passphrase, the S3
//! secret key, a Postgres password (scram-sha-256 on the TCP listener, in a key=value DSN and in
//! a postgres:// URL) and a Redis `requirepass` password (in a redis:// URL) — at
//! `RESILIENCE_LOG=trace`, then runs with bad input (wrong passwords, unreachable servers).
//! Every stdout, stderr and `--json` document, the catalog (`snapshots --json`) and its copy in
//! Postgres (`pg catalog-sync`) are searched for each secret.

mod daemon_support;
mod garage_support;
mod pg_support;
mod redis_support;
mod tls_support;

use std::process::Command;

use garage_support::Garage;

const PASSPHRASE: &str = "repo-passphrase-Zq8vLwX2";
const PG_PASSWORD: &str = "pg-password-Hk3mTn7R";
const PG_WRONG: &str = "pg-wrong-password-Pa5sW0rd";
const REDIS_PASSWORD: &str = "redis-password-Vb6yUe4Q";
const REDIS_WRONG: &str = "redis-wrong-password-Jx2cN8";

/// Everything the runs printed or stored, by where it came from.
#[derive(Default)]
struct Collected {
    texts: Vec<(String, String)>,
}

impl Collected {
    fn add(&mut self, origin: impl Into<String>, text: impl Into<String>) {
        self.texts.push((origin.into(), text.into()));
    }

    /// Asserts that no secret appears anywhere, naming where one does.
    fn assert_clean(&self, secrets: &[&str]) {
        let mut leaks = Vec::new();
        for (origin, text) in &self.texts {
            for secret in secrets {
                if text.contains(secret) {
                    let at = text.find(secret).unwrap();
                    let from = text[..at]
                        .char_indices()
                        .rev()
                        .nth(120)
                        .map_or(0, |(i, _)| i);
                    leaks.push(format!(
                        "{secret:?} in {origin}: …{}…",
                        &text[from..(at + secret.len()).min(text.len())]
                    ));
                }
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

/// The daemon's side: a config whose Postgres DSN and Redis URL carry passwords (one of them
/// wrong, so that a failure and an RPO breach are reported), run at trace level; its log,
/// `/metrics` and `/health` are collected.
fn daemon_output(
    run: &Run,
    config_dir: &std::path::Path,
    pg: (&str, &str),
    redis_url: &str,
) -> Vec<(String, String)> {
    let port = pg_support::free_port();
    let config = config_dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[repository]
url = "{repo}"
[server]
listen = "127.0.0.1:{port}"
[[source]]
name = "db-daemon"
kind = "postgres"
pgdata = "{pgdata}"
dsn = "{dsn}"
schedule = "*/2 * * * * *"
rpo = "1h"
[[source]]
name = "cache-daemon"
kind = "redis"
url = "{redis_url}"
schedule = "* * * * * *"
rpo = "2s"
"#,
            repo = run.repo,
            pgdata = pg.0,
            dsn = pg.1,
        ),
    )
    .unwrap();
    let mut command = run.command(
        PASSPHRASE,
        &["daemon", "--config", config.to_str().unwrap()],
    );
    command.env_remove("RESILIENCE_REPOSITORY");
    let daemon = daemon_support::Daemon::start(command, port);
    let metrics = daemon_support::wait_for(60, "a Postgres backup and a Redis breach", || {
        let m = daemon.metrics();
        let pg_ok = daemon_support::metric(
            &m,
            "resilience_backup_last_success_timestamp_seconds",
            "source=\"db-daemon\"",
        )
        .is_some();
        (pg_ok && daemon.health().0 == 503).then_some(m)
    });
    let (_, health) = daemon.health();
    assert!(
        health["breaches"][0]
            .as_str()
            .unwrap()
            .starts_with("cache-daemon: no successful backup"),
        "{health:#}"
    );
    let (_, log) = daemon.terminate();
    vec![
        ("the daemon's /metrics".into(), metrics),
        ("the daemon's /health".into(), health.to_string()),
        ("the daemon's log".into(), log),
    ]
}

struct Run<'a> {
    garage: &'a Garage,
    repo: String,
    collected: Collected,
    /// Extra environment for the next commands.
    env: Vec<(&'static str, String)>,
}

impl Run<'_> {
    fn command(&self, passphrase: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(pg_support::BIN);
        cmd.arg("--repo")
            .arg(&self.repo)
            .args(args)
            .env("RESILIENCE_PASSWORD", passphrase)
            .env("RESILIENCE_LOG", "trace")
            .env_remove("RESILIENCE_REPOSITORY")
            .env_remove("RESILIENCE_PG_DSN")
            .env_remove("RESILIENCE_REDIS_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.garage.with_key(&mut cmd, &self.garage.admin);
        cmd
    }

    /// Runs a command; collects its output; returns (success, stdout, stderr).
    fn run_as(&mut self, passphrase: &str, args: &[&str]) -> (bool, String, String) {
        let out = self.command(passphrase, args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let name = format!("{args:?}");
        self.collected
            .add(format!("stdout of {name}"), stdout.clone());
        self.collected
            .add(format!("stderr of {name}"), stderr.clone());
        (out.status.success(), stdout, stderr)
    }

    fn ok(&mut self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run_as(PASSPHRASE, args);
        let tail: String = stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        assert!(ok, "{args:?} failed: {tail}");
        stdout
    }

    /// A run that must fail; returns its stderr.
    fn fails(&mut self, passphrase: &str, args: &[&str]) -> String {
        let (ok, _, stderr) = self.run_as(passphrase, args);
        assert!(!ok, "{args:?} must fail");
        stderr
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_output_logs_json_or_catalogs() {
    let lab = pg_support::Lab::new();
    let garage = Garage::start(&lab.path("garage"), "secrets");
    let s3_secret = garage.admin.secret.clone();
    let mut run = Run {
        repo: garage.url(&garage.bucket, "repo"),
        garage: &garage,
        collected: Collected::default(),
        env: Vec::new(),
    };

    // Postgres: a role with a password, which it must give over TCP (scram-sha-256).
    let cluster = lab.cluster("db").await;
    let hba = cluster.pgdata.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all secretuser 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    let admin = cluster.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE secretuser LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}';
             SELECT pg_reload_conf();
             CREATE TABLE accounts (id int PRIMARY KEY, owner text);
             INSERT INTO accounts SELECT i, 'owner ' || i FROM generate_series(1, 500) i;"
        ))
        .await
        .unwrap();
    let kv_dsn = |password: &str| {
        format!(
            "host=127.0.0.1 port={} user=secretuser password={password} dbname=postgres",
            cluster.port
        )
    };
    let url_dsn = format!(
        "postgres://secretuser:{PG_PASSWORD}@127.0.0.1:{}/postgres",
        cluster.port
    );
    // The password is really needed: without it the role is refused.
    assert!(resilience_pg::connect::connect(&format!(
        "host=127.0.0.1 port={} user=secretuser dbname=postgres",
        cluster.port
    ))
    .await
    .is_err());

    // Redis with requirepass.
    let redis_options = redis_support::ServerOptions {
        password: Some(REDIS_PASSWORD),
        ..Default::default()
    };
    let redis_source = redis_support::start_server_with(lab.dir.path(), &redis_options);
    let redis_target = redis_support::start_server_with(lab.dir.path(), &redis_options);
    let redis_url =
        |s: &redis_support::Server, pw: &str| format!("redis://:{pw}@127.0.0.1:{}", s.port);
    let rc = redis_support::client(&redis_url(&redis_source, REDIS_PASSWORD), false).await;
    redis_support::fill_every_type(&rc, 5).await;

    // The full run.
    let data = lab.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "nothing secret here\n").unwrap();
    run.ok(&["init"]);
    let dir_backup = run.ok(&["--json", "backup", "dir", data.to_str().unwrap()]);
    let dir_id = serde_json::from_str::<serde_json::Value>(&dir_backup).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    run.ok(&["backup", "dir", data.to_str().unwrap()]);
    run.ok(&[
        "--json",
        "pg",
        "backup",
        "--pgdata",
        cluster.pgdata.to_str().unwrap(),
        "--dsn",
        &kv_dsn(PG_PASSWORD),
        "--source",
        "db",
    ]);
    run.ok(&[
        "--json",
        "pg",
        "table-backup",
        "--dsn",
        &url_dsn,
        "--table",
        "accounts",
    ]);
    run.ok(&[
        "pg",
        "table-backup",
        "--dsn",
        &kv_dsn(PG_PASSWORD),
        "--table",
        "accounts",
        "--source",
        "tables-kv",
    ]);
    let redis_backup = run.ok(&[
        "--json",
        "redis",
        "backup",
        "--url",
        &redis_url(&redis_source, REDIS_PASSWORD),
    ]);
    let redis_id = serde_json::from_str::<serde_json::Value>(&redis_backup).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let catalog = run.ok(&["--json", "snapshots"]);
    let records: serde_json::Value = serde_json::from_str(&catalog).unwrap();
    assert_eq!(records.as_array().unwrap().len(), 6, "{records}");
    run.collected.add("the catalog (snapshots --json)", catalog);
    run.ok(&["snapshots"]);
    run.ok(&["--json", "verify"]);
    run.ok(&["verify", "--full"]);
    run.ok(&[
        "--json",
        "restore",
        &dir_id,
        "--target",
        lab.path("restored").to_str().unwrap(),
    ]);
    run.ok(&[
        "--json",
        "redis",
        "restore",
        &redis_id,
        "--url",
        &redis_url(&redis_target, REDIS_PASSWORD),
    ]);
    run.ok(&[
        "--json",
        "pg",
        "table-restore",
        "latest",
        "--dsn",
        &url_dsn,
        "--into-schema",
        "copy",
    ]);
    // The DSN from the environment, out of the process list.
    run.env = vec![("RESILIENCE_PG_DSN", kv_dsn(PG_PASSWORD))];
    run.ok(&["--json", "pg", "catalog-sync"]);
    run.env.clear();
    let copied = admin
        .query(
            "SELECT row_to_json(b)::text FROM resilience.backups b
             UNION ALL SELECT row_to_json(r)::text FROM resilience.backup_revisions r",
            &[],
        )
        .await
        .unwrap();
    assert!(copied.len() >= 6);
    for row in copied {
        run.collected.add(
            "the Postgres catalog (catalog-sync)",
            row.get::<_, String>(0),
        );
    }

    // Bad input: wrong passwords, unreachable servers, a wrong passphrase.
    let closed = pg_support::free_port();
    let err = run.fails(
        PASSPHRASE,
        &[
            "pg",
            "table-backup",
            "--dsn",
            &kv_dsn(PG_WRONG),
            "--table",
            "accounts",
        ],
    );
    assert!(err.contains("password authentication failed"), "{err}");
    let err = run.fails(
        PASSPHRASE,
        &[
            "pg",
            "table-backup",
            "--dsn",
            &format!("postgres://secretuser:{PG_PASSWORD}@127.0.0.1:{closed}/postgres"),
            "--table",
            "accounts",
        ],
    );
    assert!(err.contains(&format!("127.0.0.1:{closed}")), "{err}");
    let err = run.fails(
        PASSPHRASE,
        &[
            "redis",
            "backup",
            "--url",
            &redis_url(&redis_source, REDIS_WRONG),
        ],
    );
    assert!(
        err.contains(&format!("127.0.0.1:{}", redis_source.port)),
        "{err}"
    );
    run.fails(
        PASSPHRASE,
        &[
            "redis",
            "backup",
            "--url",
            &format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{closed}"),
        ],
    );
    run.fails("not-the-passphrase-Wr0ng", &["snapshots"]);

    for (origin, text) in daemon_output(
        &run,
        lab.dir.path(),
        (cluster.pgdata.to_str().unwrap(), &kv_dsn(PG_PASSWORD)),
        &redis_url(&redis_source, REDIS_WRONG),
    ) {
        run.collected.add(origin, text);
    }
    // The trace logs really were on (else this test would prove little).
    assert!(
        run.collected
            .texts
            .iter()
            .any(|(o, t)| o.starts_with("stderr") && t.contains("TRACE")),
        "RESILIENCE_LOG=trace must produce trace lines"
    );
    run.collected.assert_clean(&[
        PASSPHRASE,
        "not-the-passphrase-Wr0ng",
        PG_PASSWORD,
        PG_WRONG,
        REDIS_PASSWORD,
        REDIS_WRONG,
        &s3_secret,
    ]);
}
