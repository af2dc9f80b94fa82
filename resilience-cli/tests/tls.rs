//! TLS in transit, against real servers started here with a CA made by the harness: a Postgres
//! cluster with `ssl = on` that refuses plain TCP, and a redis-server with `--tls-port` that
//! wants client certificates. Each is backed up and restored through the CLI with the
//! certificate checked (`sslmode=verify-full`, `rediss://` with `ca_file=`), and a wrong CA is a
//! clear error. S3 (Garage), GCS (fake-gcs-server) and Azure Blob (Azurite) are reached over
//! https through a TLS proxy with the same CA (`ca_file=`, `AWS_CA_BUNDLE`).

mod garage_support;
mod pg_support;
mod redis_support;
mod tls_support;

use std::sync::Arc;

use pg_support::{table_sum, Lab};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tls_support::Pki;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backup_and_restore_over_verified_tls() {
    let lab = Lab::new();
    let pki = Pki::new(&lab.path("pki"));
    pg_support::chown_tree(pki.dir());
    let (client_cert, client_key) = pki.client("tlsuser");
    let primary = lab.tls_cluster("primary", &pki).await;
    assert!(primary.dsn().contains("sslmode=verify-full"));
    let c = primary.client().await;
    c.batch_execute(
        "CREATE ROLE tlsuser LOGIN SUPERUSER;
         CREATE TABLE accounts (id int PRIMARY KEY, owner text);
         INSERT INTO accounts SELECT i, 'owner ' || i FROM generate_series(1, 3000) i;",
    )
    .await
    .unwrap();
    let sum = table_sum(&c, "accounts").await;
    let on_tls: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(on_tls, "the harness's own connection must be TLS");

    // The server refuses plain TCP: what follows cannot have worked without TLS.
    let plain = lab.run(&[
        "pg",
        "table-backup",
        "--dsn",
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
            primary.port
        ),
        "--table",
        "accounts",
    ]);
    assert!(!plain.status.success());
    assert!(
        stderr_of(&plain).contains("no encryption"),
        "{}",
        stderr_of(&plain)
    );

    // A physical base backup over verify-full, then a restore that starts the copy (its
    // recovery polls the restored server, which also accepts only TLS).
    let backup = lab.base_backup(&primary);
    assert_eq!(backup["status"], "succeeded", "{backup}");
    primary.archive_now().await;
    let (mut restored, _report) = lab.restore("restored", &[]);
    restored.dsn_params = primary.dsn_params.clone();
    let rc = restored.client().await;
    assert_eq!(table_sum(&rc, "accounts").await, sum);

    // A table backup and restore as a role that may only log in with a client certificate.
    let cert_dsn = |port: u16| {
        format!(
            "host=localhost port={port} user=tlsuser dbname=postgres sslmode=verify-full \
             sslrootcert={} sslcert={} sslkey={}",
            pki.ca().display(),
            client_cert.display(),
            client_key.display()
        )
    };
    let tables = lab.json(&[
        "pg",
        "table-backup",
        "--dsn",
        &cert_dsn(primary.port),
        "--table",
        "accounts",
    ]);
    assert_eq!(tables["status"], "succeeded", "{tables}");
    lab.json(&[
        "pg",
        "table-restore",
        "latest",
        "--dsn",
        &cert_dsn(restored.port),
        "--into-schema",
        "copy",
    ]);
    assert_eq!(table_sum(&rc, "copy.accounts").await, sum);

    // Without the client certificate the role is refused.
    let no_cert = lab.run(&[
        "pg",
        "table-backup",
        "--dsn",
        &format!(
            "host=localhost port={} user=tlsuser dbname=postgres sslmode=verify-full sslrootcert={}",
            primary.port,
            pki.ca().display()
        ),
        "--table",
        "accounts",
    ]);
    assert!(!no_cert.status.success());
    assert!(
        stderr_of(&no_cert).contains("certificate"),
        "{}",
        stderr_of(&no_cert)
    );

    // A wrong CA is a clear error naming the host and the CA file.
    let wrong = lab.run(&[
        "pg",
        "table-backup",
        "--dsn",
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
            primary.port,
            pki.wrong_ca().display()
        ),
        "--table",
        "accounts",
    ]);
    assert!(!wrong.status.success());
    let text = stderr_of(&wrong);
    assert!(
        text.contains(&format!("127.0.0.1:{}", primary.port))
            && text.contains("not signed by a CA in sslrootcert")
            && text.contains("wrong-ca.crt"),
        "{text}"
    );

    // verify-full checks the name, verify-ca does not.
    let misnamed = |mode: &str| {
        format!(
            "host=wrong.example hostaddr=127.0.0.1 port={} user=postgres dbname=postgres \
             sslmode={mode} sslrootcert={}",
            primary.port,
            pki.ca().display()
        )
    };
    let err = match resilience_pg::connect::connect(&misnamed("verify-full")).await {
        Ok(_) => panic!("verify-full must refuse a certificate for another name"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("does not name the host"), "{err}");
    let c2 = resilience_pg::connect::connect(&misnamed("verify-ca"))
        .await
        .unwrap_or_else(|e| panic!("verify-ca ignores the name: {e}"));
    c2.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_backup_and_restore_over_verified_tls() {
    let lab = redis_support::Lab::new();
    let pki = Pki::new(&lab.dir.path().join("pki"));
    let (cert, key) = pki.client("resilience");
    let tls = redis_support::ServerOptions {
        tls: Some(&pki),
        ..Default::default()
    };
    let source = redis_support::start_server_with(lab.dir.path(), &tls);
    let target = redis_support::start_server_with(lab.dir.path(), &tls);
    // The harness fills and reads the servers on their plain ports.
    let plain = |s: &redis_support::Server| format!("redis://127.0.0.1:{}", s.port);
    let src = redis_support::client(&plain(&source), false).await;
    redis_support::fill_every_type(&src, 20).await;
    let before = redis_support::snapshot_of(&src).await;

    let url = |s: &redis_support::Server, ca: &std::path::Path| {
        format!(
            "rediss://localhost:{}?ca_file={}&cert_file={}&key_file={}",
            s.tls_port.unwrap(),
            ca.display(),
            cert.display(),
            key.display()
        )
    };
    let backup = lab.json(&["redis", "backup", "--url", &url(&source, &pki.ca())]);
    assert_eq!(
        backup["keys"].as_u64().unwrap() as usize,
        before.len(),
        "{backup}"
    );
    // The source id holds neither the TLS files nor anything secret.
    let snapshots = lab.ok(&["--json", "snapshots"]);
    assert!(!snapshots.contains("ca_file"), "{snapshots}");
    let id = backup["id"].as_str().unwrap();
    let done = lab.json(&["redis", "restore", id, "--url", &url(&target, &pki.ca())]);
    assert_eq!(done["restored"].as_u64().unwrap() as usize, before.len());
    let dst = redis_support::client(&plain(&target), false).await;
    let after = redis_support::snapshot_of(&dst).await;
    // Hash-table sets and hashes serialize in table order, which differs between servers:
    // their expiry is compared here, their contents by `redis compare` (over TLS) below.
    let table_ordered = |k: &[u8]| k.starts_with(b"big:hash") || k.starts_with(b"set:");
    let differing: Vec<String> = before
        .iter()
        .filter(|(k, v)| match after.get(*k) {
            Some(a) if table_ordered(k) => a.1 != v.1,
            other => other != Some(v),
        })
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(
        differing.is_empty() && after.len() == before.len(),
        "{} keys before, {} after; differing: {differing:?}",
        before.len(),
        after.len()
    );

    let cmp = lab.json(&["redis", "compare", id, "--url", &url(&target, &pki.ca())]);
    assert_eq!(
        (cmp["checked"].as_u64(), cmp["server_keys"].as_u64()),
        (Some(before.len() as u64), Some(before.len() as u64)),
        "{cmp}"
    );
    assert_eq!(cmp["differing"], serde_json::json!([]), "{cmp}");

    // A wrong CA is a clear error naming the server and the CA file.
    let out = lab.run(&["redis", "backup", "--url", &url(&source, &pki.wrong_ca())]);
    assert!(!out.status.success());
    let text = stderr_of(&out);
    assert!(
        text.contains(&format!("localhost:{}", source.tls_port.unwrap()))
            && text.contains("not signed by a CA in ca_file")
            && text.contains("wrong-ca.crt"),
        "{text}"
    );
    // The server wants a client certificate: without one, the connection is refused.
    let out = lab.run(&[
        "redis",
        "backup",
        "--url",
        &format!(
            "rediss://127.0.0.1:{}?ca_file={}",
            source.tls_port.unwrap(),
            pki.ca().display()
        ),
    ]);
    assert!(!out.status.success(), "no client certificate: refused");
}

/// A TLS-terminating proxy on a free loopback port in front of `upstream` (plain TCP), with the
/// PKI's server certificate (`localhost`, 127.0.0.1); returns its port.
async fn tls_proxy(pki: &Pki, upstream: String) -> u16 {
    let certs = CertificateDer::pem_file_iter(pki.server_cert())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.server_key()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_over_https_with_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = garage_support::Garage::start(&tmp.path().join("garage"), "tls");
    let pki = Pki::new(&tmp.path().join("pki"));
    let upstream = garage.endpoint.trim_start_matches("http://").to_owned();
    let port = tls_proxy(&pki, upstream).await;
    let key_file = tmp.path().join("repo.key");
    let url = |extra: &str| {
        format!(
            "s3://{}/repo?endpoint=https://localhost:{port}&region={}{extra}",
            garage.bucket, garage.region
        )
    };
    let run = |repo: &str, ca_bundle: Option<&std::path::Path>, args: &[&str]| {
        let mut cmd = std::process::Command::new(pg_support::BIN);
        cmd.arg("--repo")
            .arg(repo)
            .arg("--key-file")
            .arg(&key_file)
            .args(args)
            .env_remove("RESILIENCE_REPOSITORY")
            .env_remove("RESILIENCE_PASSWORD");
        garage.with_key(&mut cmd, &garage.admin);
        match ca_bundle {
            Some(path) => cmd.env("AWS_CA_BUNDLE", path),
            None => cmd.env_remove("AWS_CA_BUNDLE"),
        };
        cmd.output().unwrap()
    };
    let ok = |out: std::process::Output, what: &str| {
        assert!(out.status.success(), "{what}: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let with_ca = url(&format!("&ca_file={}", pki.ca().display()));
    ok(
        run(
            &with_ca,
            None,
            &["init", "--key-file", key_file.to_str().unwrap()],
        ),
        "init over https with ca_file=",
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "over https\n".repeat(1000)).unwrap();
    ok(
        run(&with_ca, None, &["backup", "dir", data.to_str().unwrap()]),
        "backup",
    );
    // AWS_CA_BUNDLE does the same.
    let target = tmp.path().join("restored");
    ok(
        run(
            &url(""),
            Some(&pki.ca()),
            &["restore", "latest", "--target", target.to_str().unwrap()],
        ),
        "restore with AWS_CA_BUNDLE",
    );
    assert_eq!(
        std::fs::read_to_string(target.join("f")).unwrap(),
        "over https\n".repeat(1000)
    );
    // Neither, or a wrong CA: the server's certificate is not trusted.
    for (repo, bundle) in [
        (url(""), None),
        (url(&format!("&ca_file={}", pki.wrong_ca().display())), None),
    ] {
        let out = run(&repo, bundle, &["snapshots"]);
        assert!(
            !out.status.success(),
            "{repo}: an untrusted certificate must fail"
        );
        let text = stderr_of(&out);
        assert!(
            text.contains(&format!("https://localhost:{port}/"))
                && text.contains("invalid peer certificate: UnknownIssuer"),
            "{text}"
        );
    }
    let out = run(&url("&ca_file=/nonexistent/ca.pem"), None, &["snapshots"]);
    assert!(
        stderr_of(&out).contains("/nonexistent/ca.pem"),
        "{}",
        stderr_of(&out)
    );
}

/// GCS (fake-gcs-server) and Azure Blob (Azurite) over https, behind a TLS proxy whose
/// certificate a private CA signed: a repository on each is initialized, backed up to and
/// restored from with `ca_file=`; a bucket on each is backed up and restored by exact key (the
/// requests that do not go through object_store trust the same CA); without the CA, or with
/// another, the certificate is refused and the error names the endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn gcs_and_azure_over_https_with_a_private_ca() {
    let var = |v: &str| {
        std::env::var(v).unwrap_or_else(|_| {
            panic!("{v} is not set: run the tests with scripts/test (it starts the servers)")
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let host_port = |endpoint: &str| endpoint.trim_start_matches("http://").to_owned();
    let gcs_port = tls_proxy(&pki, host_port(&var("RESILIENCE_TEST_GCS_ENDPOINT"))).await;
    let azure_port = tls_proxy(&pki, host_port(&var("AZURITE_BLOB_STORAGE_URL"))).await;
    let gcs_bucket = var("RESILIENCE_TEST_GCS_BUCKET");
    let container = var("RESILIENCE_TEST_AZURE_CONTAINER");
    let run_id = std::process::id();
    let key_file = tmp.path().join("repo.key");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "over https\n".repeat(1000)).unwrap();
    let run = |repo: &str, args: &[&str]| {
        let mut cmd = std::process::Command::new(pg_support::BIN);
        cmd.arg("--repo")
            .arg(repo)
            .arg("--key-file")
            .arg(&key_file)
            .args(args)
            .env_remove("RESILIENCE_REPOSITORY")
            .env_remove("RESILIENCE_PASSWORD")
            .env(
                "AZURITE_BLOB_STORAGE_URL",
                format!("https://localhost:{azure_port}"),
            );
        cmd.output().unwrap()
    };
    let ok = |out: std::process::Output, what: &str| {
        assert!(out.status.success(), "{what}: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    // The bucket to back up: a few objects, one whose key object_store cannot name.
    let odd_keys = ["plain.txt", "/lead//dots/../x"];
    for (store, endpoint, url) in [
        (
            "gcs",
            format!("127.0.0.1:{gcs_port}"),
            Box::new(move |path: &str, ca: &str| {
                // 127.0.0.1, not localhost: fake-gcs-server tells its XML API by that host.
                format!("gs://{gcs_bucket}/{path}?endpoint=https://127.0.0.1:{gcs_port}{ca}")
            }) as Box<dyn Fn(&str, &str) -> String>,
        ),
        (
            "azure",
            format!("localhost:{azure_port}"),
            Box::new(move |path: &str, ca: &str| {
                let ca = ca.replacen('&', "?", 1);
                format!("az://{container}/{path}{ca}")
            }),
        ),
    ] {
        let with_ca = format!("&ca_file={}", pki.ca().display());
        let repo = url(&format!("tls-{run_id}/repo"), &with_ca);
        ok(
            run(&repo, &["init", "--key-file", key_file.to_str().unwrap()]),
            &format!("{store}: init over https with ca_file="),
        );
        ok(
            run(&repo, &["backup", "dir", data.to_str().unwrap()]),
            &format!("{store}: backup"),
        );
        let target = tmp.path().join(format!("restored-{store}"));
        ok(
            run(
                &repo,
                &["restore", "latest", "--target", target.to_str().unwrap()],
            ),
            &format!("{store}: restore"),
        );
        assert_eq!(
            std::fs::read_to_string(target.join("f")).unwrap(),
            "over https\n".repeat(1000)
        );

        // A bucket over https, by exact key both ways.
        let source = url(&format!("tls-{run_id}/src"), &with_ca);
        let exact = resilience_objstore::ExactBucket::new(&source).unwrap();
        for key in odd_keys {
            exact
                .put(
                    &format!("tls-{run_id}/src/{key}"),
                    bytes::Bytes::from(key.repeat(100)),
                    &Default::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("{store}: writing {key}: {e}"));
        }
        let backed_up = ok(
            run(&repo, &["--json", "bucket", "backup", &source]),
            &format!("{store}: bucket backup over https"),
        );
        let id = serde_json::from_str::<serde_json::Value>(&backed_up).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let restored_to = url(&format!("tls-{run_id}/dst"), &with_ca);
        ok(
            run(&repo, &["bucket", "restore", &id, &restored_to]),
            &format!("{store}: bucket restore over https"),
        );
        for key in odd_keys {
            let back = exact
                .get(&format!("tls-{run_id}/dst/{key}"), None)
                .await
                .unwrap();
            assert_eq!(
                back.as_deref(),
                Some(key.repeat(100).as_bytes()),
                "{store}: {key}"
            );
        }

        // Without the CA, or with another one, the certificate is refused, naming the endpoint.
        let wrong = format!("&ca_file={}", pki.wrong_ca().display());
        for ca in ["", wrong.as_str()] {
            let out = run(&url(&format!("tls-{run_id}/repo"), ca), &["snapshots"]);
            assert!(
                !out.status.success(),
                "{store} {ca:?}: an untrusted certificate must fail"
            );
            let text = stderr_of(&out);
            assert!(
                text.contains(&endpoint) && text.contains("UnknownIssuer"),
                "{store} {ca:?}: {text}"
            );
        }
    }
}
