//! Corruption at the source is caught, not preserved: `resilience pg backup` validates the page
//! checksums of a cluster made with `initdb --data-checksums`, names a page damaged by hand (in
//! its warning, its `--json` report and the catalog record), and refuses the backup with
//! `--fail-on-corrupt-page`. A clean cluster, and one without data checksums, raise no alarm.

mod pg_support;
mod tls_support;

use std::os::unix::fs::FileExt;

use pg_support::{Cluster, Lab};
use resilience_pg::testing::pg_command;
use serde_json::{json, Value};

/// The base backup command for `cluster`, with `extra` arguments.
fn backup_args(lab: &Lab, cluster: &Cluster, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--json",
        "pg",
        "backup",
        "--source",
        &lab.source,
        "--pgdata",
        cluster.pgdata.to_str().unwrap(),
        "--dsn",
        &cluster.dsn(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs the base backup; returns (exit status success, stdout JSON if any, stderr).
fn back_up(lab: &Lab, cluster: &Cluster, extra: &[&str]) -> (bool, Option<Value>, String) {
    let args = backup_args(lab, cluster, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        serde_json::from_str(&stdout).ok(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The catalog records, as `snapshots --json` lists them.
fn records(lab: &Lab) -> Vec<Value> {
    lab.json(&["snapshots"]).as_array().unwrap().clone()
}

/// A table of about 40 pages, checkpointed: every page on disk, older than any later backup.
async fn table_on_disk(cluster: &Cluster) -> String {
    let c = cluster.client().await;
    // One statement per call: VACUUM cannot run in the implicit transaction of a batch.
    for sql in [
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text)",
        "INSERT INTO accounts SELECT i, repeat('o', 300) || i FROM generate_series(1, 1000) i",
        "VACUUM (FREEZE) accounts",
        "CHECKPOINT",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    c.query_one("SELECT pg_relation_filepath('accounts')", &[])
        .await
        .unwrap()
        .get(0)
}

fn stop_cleanly(cluster: &Cluster) {
    let out = pg_command("pg_ctl")
        .arg("-D")
        .arg(&cluster.pgdata)
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_damaged_on_disk_is_named_kept_by_default_and_refused_on_request() {
    let lab = Lab::new();
    let cluster = lab.checksummed_cluster("primary").await;
    let on: String = cluster
        .client()
        .await
        .query_one("SHOW data_checksums", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on, "on");
    let file = table_on_disk(&cluster).await;

    // Damage block 2 in the middle, with the server stopped so that no buffer overwrites it,
    // then start it again without reading the table.
    stop_cleanly(&cluster);
    let path = cluster.pgdata.join(&file);
    assert!(std::fs::metadata(&path).unwrap().len() >= 4 * 8192);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"\xde\xad\xbe\xef\xde\xad\xbe\xef", 2 * 8192 + 4000)
        .unwrap();
    drop(f);
    cluster.start();

    // Refused on request: a failure naming the page, recorded failed.
    let (ok, _, stderr) = back_up(&lab, &cluster, &["--fail-on-corrupt-page"]);
    assert!(!ok, "the backup must be refused: {stderr}");
    assert!(
        stderr.contains(&format!("{file} block 2")) && stderr.contains("1 corrupt page"),
        "{stderr}"
    );
    let list = records(&lab);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "failed");
    assert!(
        list[0]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{file} block 2")),
        "{}",
        list[0]
    );

    // Kept by default: exit 0, a warning, the page in --json and in the catalog record.
    let (ok, doc, stderr) = back_up(&lab, &cluster, &[]);
    assert!(ok, "{stderr}");
    let doc = doc.expect("a JSON report");
    assert_eq!(doc["status"], "succeeded");
    assert!(
        stderr.contains("warning") && stderr.contains(&format!("{file} block 2")),
        "{stderr}"
    );
    let checks = &doc["page_checks"];
    assert_eq!(checks["enabled"], true, "{doc}");
    assert_eq!(checks["corrupt_count"], 1, "{doc}");
    assert_eq!(
        checks["corrupt_pages"],
        json!([{ "file": file, "block": 2 }]),
        "{doc}"
    );
    assert!(checks["pages_checked"].as_u64().unwrap() > 100, "{doc}");
    let record = records(&lab)
        .into_iter()
        .find(|r| r["id"] == doc["id"])
        .unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(
        record["source_metadata"]["page_checks"]["corrupt_pages"],
        json!([{ "file": file, "block": 2 }]),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_checksummed_cluster_reports_no_corrupt_page() {
    let lab = Lab::new();
    let cluster = lab.checksummed_cluster("clean").await;
    table_on_disk(&cluster).await;
    let (ok, doc, stderr) = back_up(&lab, &cluster, &["--fail-on-corrupt-page"]);
    assert!(ok, "{stderr}");
    let doc = doc.unwrap();
    assert!(doc["logical_bytes"].as_u64().unwrap() > 10 << 20, "{doc}");
    let checks = &doc["page_checks"];
    assert_eq!(checks["enabled"], true, "{doc}");
    assert_eq!(checks["corrupt_count"], 0, "{doc}");
    assert_eq!(checks["corrupt_pages"], json!([]), "{doc}");
    assert!(checks["files"].as_u64().unwrap() > 100, "{doc}");
    assert!(checks["pages_checked"].as_u64().unwrap() > 500, "{doc}");
    assert!(!stderr.contains("corrupt"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_without_data_checksums_is_not_validated() {
    let lab = Lab::new();
    let cluster = lab.cluster("plain").await;
    let file = table_on_disk(&cluster).await;
    // Bytes that would fail a checksum mean nothing without data checksums.
    stop_cleanly(&cluster);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(cluster.pgdata.join(&file))
        .unwrap();
    f.write_all_at(b"\xde\xad\xbe\xef", 2 * 8192 + 4000)
        .unwrap();
    drop(f);
    cluster.start();
    let (ok, doc, stderr) = back_up(&lab, &cluster, &["--fail-on-corrupt-page"]);
    assert!(ok, "{stderr}");
    let doc = doc.unwrap();
    // Every file's bytes are stored, checked or not.
    assert!(doc["logical_bytes"].as_u64().unwrap() > 10 << 20, "{doc}");
    assert_eq!(
        doc["page_checks"],
        json!({
            "enabled": false,
            "files": 0,
            "pages_checked": 0,
            "pages_skipped": 0,
            "corrupt_count": 0,
            "corrupt_pages": [],
        }),
        "{doc}"
    );
    assert!(!stderr.contains("corrupt"), "{stderr}");
}
