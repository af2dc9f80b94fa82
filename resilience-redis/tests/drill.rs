//! The Redis drill through the library, against a real server: a keyspace backed up, restored
//! into a scratch redis-server, its key count, payloads and expiries compared, the scratch
//! server gone afterwards and the source untouched; and a scratch server that cannot start,
//! failing the drill by name.

mod support;

use fred::prelude::*;
use resilience_core::catalog::Catalog;
use resilience_core::drill::{self, DrillOptions, DrillReport};
use resilience_redis::connect::RedisEndpoint;
use resilience_redis::drill::RedisDrill;
use resilience_redis::source::RedisSource;

fn check<'a>(report: &'a DrillReport, name: &str) -> &'a str {
    let c = report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#?}"));
    assert!(c.ok, "{name} failed: {report:#?}");
    &c.detail
}

fn assert_empty(dir: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?} behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_drill_restores_into_a_scratch_server_and_compares_keys_and_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let server = support::start_server(dir.path());
    let client = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    for i in 0..300 {
        let _: () = client
            .set(format!("s:{i}"), format!("value {i}"), None, None, false)
            .await
            .unwrap();
        let _: () = client
            .hset(format!("h:{i}"), [("a", i.to_string()), ("b", "x".into())])
            .await
            .unwrap();
    }
    let _: () = client
        .set(
            "ttl:key",
            "kept",
            Some(fred::types::Expiration::EX(3600)),
            None,
            false,
        )
        .await
        .unwrap();
    let repo = support::repo().await;
    let source = RedisSource::new(RedisEndpoint {
        url: server.url(),
        cluster: false,
    })
    .with_id("cache");
    let id = repo
        .backup(&source, Default::default())
        .await
        .unwrap()
        .record
        .id;
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let options = DrillOptions {
        scratch_dir: Some(scratch.clone()),
    };

    let report = drill::run(&repo, &RedisDrill::new("cache"), None, &options)
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.snapshot, id);
    let count = check(&report, "key-count");
    assert!(
        count.starts_with("the scratch server holds 601 keys, the snapshot 601"),
        "{count}"
    );
    assert!(check(&report, "keys-restored").starts_with("601 keys restored"));
    let payloads = check(&report, "payloads");
    assert!(
        payloads.starts_with(
            "601 keys checked (every key): 0 missing, 0 differing, 0 with another expiry"
        ),
        "{payloads}"
    );
    assert_empty(&scratch);
    // The scratch server is gone.
    let started = check(&report, "scratch-server");
    let port: u16 = started
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {started}"));
    assert_ne!(port, server.port);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the scratch redis-server on {port} still runs"
    );
    // The source server was not touched.
    let n: u64 = client.dbsize().await.unwrap();
    assert_eq!(n, 601);

    // A sample: one key in 10 compared.
    let report = drill::run(
        &repo,
        &RedisDrill::new("cache").with_sample_every(10),
        None,
        &options,
    )
    .await
    .unwrap();
    assert!(report.ok, "{report:#?}");
    let payloads = check(&report, "payloads");
    assert!(payloads.contains("(1 key in 10): 0 missing"), "{payloads}");
    let checked: u64 = payloads.split(' ').next().unwrap().parse().unwrap();
    assert!((50..=70).contains(&checked), "{payloads}");

    // No server program: the drill fails by name, and is recorded.
    let report = drill::run(
        &repo,
        &RedisDrill::new("cache").with_server_program(dir.path().join("no-redis-server")),
        None,
        &options,
    )
    .await
    .unwrap();
    assert!(!report.ok);
    let failures = report.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].starts_with("scratch-server: cannot start")
            && failures[0].contains("no-redis-server"),
        "{failures:?}"
    );
    assert_empty(&scratch);
    let record = repo.catalog().get(&id).await.unwrap().unwrap();
    let drills: Vec<bool> = record
        .verifications
        .iter()
        .filter_map(DrillReport::from_verification)
        .map(|r| r.ok)
        .collect();
    assert_eq!(drills, vec![true, true, false]);
}
