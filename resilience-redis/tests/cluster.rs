//! A cluster resharding under a keyspace backup and restore, and a server that dies under a
//! backup, against real redis-servers.
//!
//! The backup and the restore send their commands on connections of their own to each
//! primary, as the slot map stood when they connected. A key whose slot has moved since answers
//! `MOVED` (or `ASK` mid-migration): that key must be done again on its new owner, never lost
//! nor failed. These tests move a slot at the worst moment: after the restore read the slot map,
//! and between a backup's `SCAN` of a page and its `DUMP`s. A server killed mid-backup must
//! fail the backup with an error naming the node, not end it short.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use resilience_core::source::{Source, SourceEntry};
use resilience_redis::connect::RedisEndpoint;
use resilience_redis::record::RecordDecoder;
use resilience_redis::source::RedisSource;
use resilience_redis::target::{RedisTarget, RestoreSettings};
use resilience_redis::testing::{start_cluster, TestServer};
use tokio::io::AsyncReadExt;

/// `redis-cli -p PORT ARGS…`; its output, which must not be an error.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli must be installed (Debian package redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !text.starts_with("ERR") && !text.starts_with("(error)"),
        "redis-cli -p {port} {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn node_id(port: u16) -> String {
    cli(port, &["cluster", "myid"])
}

fn slot_of(port: u16, key: &str) -> u16 {
    cli(port, &["cluster", "keyslot", key]).parse().unwrap()
}

/// The node of `nodes` that owns `slot`, from `CLUSTER SHARDS`' cousin `CLUSTER NODES`.
fn owner(nodes: &[TestServer], slot: u16) -> usize {
    let table = cli(nodes[0].port, &["cluster", "nodes"]);
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port: u16 = fields[1]
            .split(['@', ':'])
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap();
        let owns = fields[8..].iter().any(|range| {
            let mut ends = range.split('-').map(|s| s.parse::<u16>());
            match (ends.next(), ends.next()) {
                (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                (Some(Ok(a)), None) => a == slot,
                _ => false,
            }
        });
        if owns {
            return nodes.iter().position(|n| n.port == port).unwrap();
        }
    }
    panic!("no node owns slot {slot}: {table}")
}

/// Hands `slot` from node `from` to node `to` on every node, migrating its keys first.
fn move_slot(nodes: &[TestServer], slot: u16, from: usize, to: usize) {
    let (src, dst) = (nodes[from].port, nodes[to].port);
    let s = slot.to_string();
    cli(dst, &["cluster", "setslot", &s, "importing", &node_id(src)]);
    cli(src, &["cluster", "setslot", &s, "migrating", &node_id(dst)]);
    loop {
        let keys = cli(src, &["cluster", "getkeysinslot", &s, "100"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let dst_port = dst.to_string();
        let mut args = vec!["migrate", "127.0.0.1", &dst_port, "", "0", "5000", "keys"];
        args.extend(keys);
        assert_eq!(cli(src, &args), "OK");
    }
    let to_id = node_id(dst);
    cli(dst, &["cluster", "setslot", &s, "node", &to_id]);
    cli(src, &["cluster", "setslot", &s, "node", &to_id]);
    for (i, n) in nodes.iter().enumerate() {
        if i != from && i != to {
            cli(n.port, &["cluster", "setslot", &s, "node", &to_id]);
        }
    }
    assert_eq!(owner(nodes, slot), to);
}

/// How many `MOVED` replies `port` has given (`INFO errorstats`).
fn moved_replies(port: u16) -> u64 {
    let info = cli(port, &["info", "errorstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("errorstat_MOVED:count="))
        .map_or(0, |n| n.trim().parse().unwrap())
}

async fn cluster_client(node: &TestServer) -> Client {
    let c = Builder::from_config(
        Config::from_url(&format!("redis-cluster://127.0.0.1:{}", node.port)).unwrap(),
    )
    .build()
    .unwrap();
    c.init().await.unwrap();
    c
}

fn cluster_endpoint(node: &TestServer) -> RedisEndpoint {
    RedisEndpoint {
        url: node.url(),
        cluster: true,
    }
}

/// The records of one backup entry.
async fn records_of(entry: SourceEntry) -> Vec<resilience_redis::record::KeyRecord> {
    let mut bytes = Vec::new();
    entry
        .content
        .expect("a keys entry has content")
        .read_to_end(&mut bytes)
        .await
        .unwrap();
    let mut decoder = RecordDecoder::new(entry.meta.path.to_string());
    decoder.push(&bytes);
    let mut out = Vec::new();
    while let Some(r) = decoder.next_record().unwrap() {
        out.push(r);
    }
    decoder.finish().unwrap();
    out
}

/// A hash tag whose slot node 0 (the lowest port, the first primary a backup scans) owns.
fn tag_on_first_node(nodes: &[TestServer]) -> (String, u16) {
    (0..)
        .map(|i| format!("{{t{i}}}"))
        .map(|tag| {
            let slot = slot_of(nodes[0].port, &tag);
            (tag, slot)
        })
        .find(|(_, slot)| owner(nodes, *slot) == 0)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_moved_after_the_restore_read_the_slot_map_is_restored_on_its_new_owner() {
    let dir = tempfile::tempdir().unwrap();
    let source_server = support::start_server(dir.path());
    let mut nodes = start_cluster(dir.path(), 3);
    nodes.sort_by_key(|n| n.port);
    let (tag, slot) = tag_on_first_node(&nodes);

    let src = Builder::from_config(Config::from_url(&source_server.url()).unwrap())
        .build()
        .unwrap();
    src.init().await.unwrap();
    for i in 0..300 {
        let _: () = src
            .set(
                format!("{tag}:{i}"),
                format!("moved {i}"),
                None,
                None,
                false,
            )
            .await
            .unwrap();
        let _: () = src
            .set(
                format!("other:{i}"),
                format!("stays {i}"),
                None,
                None,
                false,
            )
            .await
            .unwrap();
    }
    let repo = support::repo().await;
    let id = repo
        .backup(
            &RedisSource::new(RedisEndpoint {
                url: source_server.url(),
                cluster: false,
            }),
            Default::default(),
        )
        .await
        .unwrap()
        .record
        .id;

    // The target reads the slot map now; the tag's slot (still empty) moves after.
    let target = RedisTarget::new(
        cluster_endpoint(&nodes[1]).connect().await.unwrap(),
        RestoreSettings {
            pipeline: 64,
            ..Default::default()
        },
    );
    move_slot(&nodes, slot, 0, 2);
    let moved_before = moved_replies(nodes[0].port);

    repo.restore(&id, &target, Default::default())
        .await
        .unwrap();

    let tally = target.tally();
    assert_eq!((tally.restored, tally.refused_count), (600, 0), "{tally:?}");
    assert!(
        moved_replies(nodes[0].port) > moved_before,
        "the old owner was never asked: the test did not exercise the redirection"
    );
    let s = slot.to_string();
    assert_eq!(
        cli(nodes[2].port, &["cluster", "countkeysinslot", &s]),
        "300"
    );
    assert_eq!(cli(nodes[0].port, &["cluster", "countkeysinslot", &s]), "0");
    let c = cluster_client(&nodes[0]).await;
    for i in 0..300 {
        let moved: String = c.get(format!("{tag}:{i}")).await.unwrap();
        assert_eq!(moved, format!("moved {i}"));
        let stays: String = c.get(format!("other:{i}")).await.unwrap();
        assert_eq!(stays, format!("stays {i}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_whose_slot_moves_between_scan_and_dump_are_backed_up_from_their_new_owner() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3);
    nodes.sort_by_key(|n| n.port);
    let (tag, slot) = tag_on_first_node(&nodes);
    let c = cluster_client(&nodes[0]).await;
    const KEYS: usize = 2000;
    for i in 0..KEYS {
        let _: () = c
            .set(
                format!("{tag}:{i}"),
                format!("value {i}"),
                None,
                None,
                false,
            )
            .await
            .unwrap();
    }
    let mut expected = BTreeMap::new();
    for i in 0..KEYS {
        let key = format!("{tag}:{i}");
        let payload: Bytes = c.dump(key.as_str()).await.unwrap();
        expected.insert(Bytes::from(key), payload);
    }

    // One key per entry, ten per page: the backup stops at its first keys, a page of keys
    // read from `SCAN` and not yet dumped, while nobody takes its entries.
    let mut source = RedisSource::new(cluster_endpoint(&nodes[0]));
    source.scan_count = 10;
    source.batch_bytes = 1;
    let mut session = source.start().await.unwrap();
    let first = session.next_entry().await.unwrap().expect("a first entry");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved_before = moved_replies(nodes[0].port);
    // The slot moves (node 2 is scanned after node 0), keys and all.
    move_slot(&nodes, slot, 0, 2);

    let mut backed_up: BTreeMap<Bytes, Vec<Bytes>> = BTreeMap::new();
    let mut entries = vec![first];
    while let Some(e) = session.next_entry().await.unwrap() {
        entries.push(e);
    }
    for e in entries {
        for r in records_of(e).await {
            backed_up.entry(r.key).or_default().push(r.payload);
        }
    }
    session.finish().await.unwrap();

    assert!(
        moved_replies(nodes[0].port) > moved_before,
        "no DUMP was redirected: the test did not exercise the redirection"
    );
    assert_eq!(
        backed_up.len(),
        KEYS,
        "every key, from one node or the other"
    );
    for (key, payloads) in &backed_up {
        for p in payloads {
            assert_eq!(Some(p), expected.get(key), "{key:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_backup_fails_the_backup_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = support::start_server(dir.path());
    let c = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    for i in 0..5000 {
        let _: () = c.set(format!("k:{i}"), i, None, None, false).await.unwrap();
    }
    let mut source = RedisSource::new(RedisEndpoint {
        url: server.url(),
        cluster: false,
    });
    source.scan_count = 10;
    source.batch_bytes = 1;
    let mut session = source.start().await.unwrap();
    let mut entries = vec![session.next_entry().await.unwrap().expect("a first entry")];
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let err = loop {
        match session.next_entry().await {
            Ok(Some(e)) => entries.push(e),
            Ok(None) => panic!(
                "the backup ended as if complete after {} entries, with the server gone",
                entries.len()
            ),
            Err(e) => break e.to_string(),
        }
    };
    assert!(entries.len() < 5000, "{} entries", entries.len());
    assert!(
        err.contains(&format!("127.0.0.1:{}", server.port)),
        "the error names the node: {err}"
    );
}
