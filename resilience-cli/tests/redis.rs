//! Redis end to end against real redis-server instances started here on free loopback ports:
//! standalone servers and a three-primary cluster. Backups through `resilience redis backup`,
//! restores through `resilience redis restore`, checked key by key with `DUMP` and
//! `PEXPIRETIME`.

mod redis_support;
mod tls_support;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use redis_support::*;
use resilience_redis::testing::free_port;
use serde_json::Value as Json;

#[tokio::test(flavor = "multi_thread")]
async fn every_type_round_trips_with_absolute_ttls_standalone_to_cluster_and_back() {
    let mut lab = Lab::new();
    let source = lab.standalone();
    let src = client(&source, false).await;
    fill_every_type(&src, 200).await;
    let before = snapshot_of(&src).await;
    let _: () = src
        .set(
            "gone:soon",
            "x",
            Some(fred::types::Expiration::PX(800)),
            None,
            false,
        )
        .await
        .unwrap();

    let backup = lab.json(&["redis", "backup", "--url", &source]);
    assert_eq!(
        backup["keys"].as_u64().unwrap() as usize,
        before.len() + 1,
        "{backup}"
    );
    // gone:soon expires: the server says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = src.exists("gone:soon").await.unwrap();
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "gone:soon did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Into a three-primary cluster: routed to the right primary.
    let cluster = lab.cluster();
    let id = backup["id"].as_str().unwrap();
    let done = lab.json(&["redis", "restore", id, "--url", &cluster, "--cluster"]);
    assert_eq!(
        done["expired"], 1,
        "the key whose expiry passed is not restored: {done}"
    );
    let cl = client(&cluster, true).await;
    let expected = before.clone();
    let in_cluster = snapshot_of(&cl).await;
    assert_eq!(in_cluster.len(), expected.len());
    for (k, (payload, at)) in &expected {
        let (p2, at2) = &in_cluster[k];
        assert_eq!(at, at2, "expiry of {}", String::from_utf8_lossy(k));
        // Hash-table sets and hashes serialize in table order, which differs between servers:
        // `redis compare` below checks those canonically.
        if !k.starts_with(b"big:hash") && !k.starts_with(b"set:") {
            assert_eq!(payload, p2, "value of {}", String::from_utf8_lossy(k));
        }
    }
    let big: std::collections::HashMap<String, String> = cl.hgetall("big:hash").await.unwrap();
    assert_eq!(big.len(), 20_000);
    assert_eq!(big["f19999"], "v19999");
    let cmp = lab.json(&["redis", "compare", id, "--url", &cluster, "--cluster"]);
    assert_eq!(
        cmp["checked"].as_u64().unwrap() as usize,
        expected.len(),
        "{cmp}"
    );
    assert_eq!(
        cmp["server_keys"].as_u64().unwrap() as usize,
        expected.len(),
        "{cmp}"
    );
    for list in ["missing", "differing", "expiry_differs"] {
        assert_eq!(cmp[list].as_array().unwrap().len(), 0, "{cmp}");
    }
    // A changed value is found and named.
    let _: () = cl.sadd("set:7", "intruder").await.unwrap();
    let out = lab.run(&[
        "--json",
        "redis",
        "compare",
        id,
        "--url",
        &cluster,
        "--cluster",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let cmp: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cmp["differing"], serde_json::json!(["set:7"]), "{cmp}");
    let _: i64 = cl.srem("set:7", "intruder").await.unwrap();

    // And from the cluster (three primaries) back to a standalone server.
    let cluster_backup = lab.json(&["redis", "backup", "--url", &cluster, "--cluster"]);
    assert_eq!(cluster_backup["primaries"], 3);
    assert_eq!(
        cluster_backup["keys"].as_u64().unwrap() as usize,
        expected.len()
    );
    let back = lab.standalone();
    lab.ok(&[
        "redis",
        "restore",
        cluster_backup["id"].as_str().unwrap(),
        "--url",
        &back,
    ]);
    let restored = snapshot_of(&client(&back, false).await).await;
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(restored[b"str:3".as_slice()], expected[b"str:3".as_slice()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_beside_a_busy_writer_keeps_every_key_that_lived_through_it() {
    let mut lab = Lab::new();
    let url = lab.standalone();
    let c = client(&url, false).await;
    let stable: Vec<(String, String)> = (0..30_000)
        .map(|i| (format!("stable:{i}"), format!("v{i}")))
        .collect();
    let _: () = c.mset(stable).await.unwrap();
    let churn: Vec<(String, String)> = (0..30_000)
        .map(|i| (format!("churn:{i}"), "x".into()))
        .collect();
    let _: () = c.mset(churn).await.unwrap();

    // The writer counts its rounds, so the backup starts only once it is writing and the test
    // can tell that it went on writing during the backup.
    let rounds = Arc::new(AtomicU64::new(0));
    let writer = {
        let c = client(&url, false).await;
        let rounds = rounds.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                // New keys, deleted keys and rewritten keys, as fast as it can.
                let _: Result<(), _> = c.set(format!("new:{i}"), i, None, None, false).await;
                let _: Result<i64, _> = c.del(format!("churn:{}", i % 30_000)).await;
                let _: Result<(), _> = c
                    .set(
                        format!("stable:{}", i % 30_000),
                        format!("v{}", i % 30_000),
                        None,
                        None,
                        false,
                    )
                    .await;
                i += 1;
                rounds.store(i, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while rounds.load(Ordering::SeqCst) < 100 {
        assert!(
            Instant::now() < deadline,
            "the writer made {} rounds in 30 s",
            rounds.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = rounds.load(Ordering::SeqCst);
    let backup = lab.json(&["redis", "backup", "--url", &url, "--scan-count", "200"]);
    let during = rounds.load(Ordering::SeqCst) - before;
    writer.abort();
    assert_eq!(backup["status"], "succeeded");
    assert!(during > 0, "the writer wrote nothing during the backup");

    let target = lab.standalone();
    lab.ok(&[
        "redis",
        "restore",
        backup["id"].as_str().unwrap(),
        "--url",
        &target,
        "--match",
        "stable:*",
    ]);
    let t = client(&target, false).await;
    let n: u64 = t.dbsize().await.unwrap();
    assert_eq!(n, 30_000, "every key that existed for the whole scan");
    let v: String = t.get("stable:29999").await.unwrap();
    assert_eq!(v, "v29999");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_is_named_and_the_restore_says_what_it_did() {
    let mut lab = Lab::new();
    let url = lab.standalone();
    let c = client(&url, false).await;
    for i in 0..100 {
        let _: () = c.set(format!("k:{i}"), i, None, None, false).await.unwrap();
    }
    let backup = lab.json(&["redis", "backup", "--url", &url]);
    let id = backup["id"].as_str().unwrap();
    let target = lab.standalone();
    let t = client(&target, false).await;
    let _: () = t
        .set("k:42", "already here", None, None, false)
        .await
        .unwrap();

    let out = lab.run(&["--json", "redis", "restore", id, "--url", &target]);
    assert_eq!(out.status.code(), Some(1));
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["restored"], 99, "{report}");
    assert_eq!(report["refused_count"], 1);
    assert_eq!(report["refused"][0]["key"], "k:42");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("k:42") && err.contains("--replace"), "{err}");
    let kept: String = t.get("k:42").await.unwrap();
    assert_eq!(kept, "already here");

    // With --replace, throttled to 50 keys/s (a burst of one second's worth, then the rate):
    // 100 keys take a second at least.
    let started = Instant::now();
    let report = lab.json(&[
        "redis",
        "restore",
        id,
        "--url",
        &target,
        "--replace",
        "--max-rate",
        "50",
        "--pipeline",
        "10",
    ]);
    assert_eq!(report["restored"], 100);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let replaced: String = t.get("k:42").await.unwrap();
    assert_eq!(replaced, "42");
    let cmp = lab.json(&["redis", "compare", id, "--url", &target]);
    assert_eq!(
        (cmp["snapshot_keys"].as_u64(), cmp["server_keys"].as_u64()),
        (Some(100), Some(100))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rdb_file_is_backed_up_as_one_entry() {
    let mut lab = Lab::new();
    let url = lab.standalone();
    let c = client(&url, false).await;
    let _: () = c.set("a", "b", None, None, false).await.unwrap();
    let _: () = c
        .custom(fred::cmd!("SAVE"), Vec::<String>::new())
        .await
        .unwrap();
    let rdb = lab.dir.path().join("dump.rdb");
    let backup = lab.json(&["redis", "backup-rdb", rdb.to_str().unwrap()]);
    assert_eq!(backup["entries"], 1);
    let out = lab.dir.path().join("out");
    lab.ok(&[
        "restore",
        backup["id"].as_str().unwrap(),
        "--target",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(out.join("dump.rdb")).unwrap(),
        std::fs::read(&rdb).unwrap()
    );
    let bad = lab.dir.path().join("not.rdb");
    std::fs::write(&bad, b"hello world").unwrap();
    let r = lab.run(&["redis", "backup-rdb", bad.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("not an RDB file"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_truncated_rdb_file_is_refused_naming_it() {
    let mut lab = Lab::new();
    let url = lab.standalone();
    let c = client(&url, false).await;
    fill_every_type(&c, 100).await;
    let _: () = c
        .custom(fred::cmd!("SAVE"), Vec::<String>::new())
        .await
        .unwrap();
    let good = std::fs::read(lab.dir.path().join("dump.rdb")).unwrap();
    let version: u32 = std::str::from_utf8(&good[5..9]).unwrap().parse().unwrap();
    assert!(version >= 5, "RDB version {version} has no checksum");
    let n = good.len();
    assert_eq!(good[n - 9], 0xFF, "the EOF opcode before the checksum");
    assert_ne!(&good[n - 8..], &[0; 8], "the server writes a checksum");

    // The file as the server wrote it passes.
    let copy = lab.dir.path().join("copy.rdb");
    std::fs::write(&copy, &good).unwrap();
    let backup = lab.json(&["redis", "backup-rdb", copy.to_str().unwrap()]);
    assert_eq!(backup["status"], "succeeded");

    let mut flipped = good.clone();
    flipped[n / 2] ^= 0x01;
    // A truncated file usually lacks the EOF marker where the checksum should follow ("is
    // truncated"); if the byte there happens to be 0xFF, its "checksum" is wrong instead.
    let cases = [
        ("flipped.rdb", flipped, ["is damaged", "is damaged"]),
        (
            "truncated.rdb",
            good[..n - 20].to_vec(),
            ["is truncated", "is damaged"],
        ),
        (
            "cut-before-crc.rdb",
            good[..n - 8].to_vec(),
            ["is truncated", "is damaged"],
        ),
    ];
    for (name, bytes, says) in cases {
        let path = lab.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = lab.run(&["redis", "backup-rdb", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was backed up: {err}");
        assert!(
            says.iter()
                .any(|s| err.contains(&format!("RDB file {} {s}", path.display()))),
            "{name}: {err}"
        );
    }
    let list = lab.json(&["snapshots"]);
    let statuses: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["succeeded", "failed", "failed", "failed"],
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_through_sentinel_reaches_the_primary() {
    let mut lab = Lab::new();
    let url = lab.standalone();
    let primary_port = url.rsplit(':').next().unwrap().to_owned();
    let c = client(&url, false).await;
    for i in 0..50 {
        let _: () = c.set(format!("s:{i}"), i, None, None, false).await.unwrap();
    }
    // A sentinel watching that primary.
    let port = free_port();
    let conf = lab.dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!("port {port}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {primary_port} 1\n"),
    )
    .unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    lab.servers.push(redis_support::Server {
        child,
        port,
        tls_port: None,
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sentinel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sentinel = format!("redis-sentinel://127.0.0.1:{port}/0?sentinelServiceName=main");
    let backup = lab.json(&["redis", "backup", "--url", &sentinel]);
    assert_eq!(backup["keys"], 50, "{backup}");
    let target = lab.standalone();
    let done = lab.json(&[
        "redis",
        "restore",
        backup["id"].as_str().unwrap(),
        "--url",
        &target,
    ]);
    assert_eq!(done["restored"], 50);
}
