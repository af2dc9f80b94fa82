//! Keyspace backup and restore through the library alone (no `resilience` binary), against real
//! redis-servers: keys of every type (binary names and values, absolute expiries, big values)
//! backed up by [`RedisSource`], restored by [`RedisTarget`] into a second server and compared
//! key by key (`DUMP` payload, or the members where the encoding's order is the server's own,
//! and `PEXPIRETIME` to the millisecond), a key that expired in between left out; and a restore
//! into a server that already holds one of the keys: refused and named without `replace`,
//! overwritten with it, other keys left alone, a key already there with the same value and expiry
//! not refused, and a pattern restoring only what it matches.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use fred::types::Value;
use resilience_core::catalog::{BackupStatus, Catalog};
use resilience_redis::connect::RedisEndpoint;
use resilience_redis::source::RedisSource;
use resilience_redis::target::{RedisTarget, RestoreSettings};

async fn client(server: &support::Server) -> Client {
    client_at(&server.url()).await
}

async fn client_at(url: &str) -> Client {
    let c = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

fn endpoint(server: &support::Server) -> RedisEndpoint {
    RedisEndpoint {
        url: server.url(),
        cluster: false,
    }
}

async fn target(server: &support::Server, settings: RestoreSettings) -> RedisTarget {
    RedisTarget::new(endpoint(server).connect().await.unwrap(), settings)
}

/// A restore of snapshot `id` into `server` without `replace`, which must fail: the target
/// (for its tally) and the error's text.
async fn failed_restore(
    repo: &resilience_core::repo::Repository,
    id: &str,
    server: &support::Server,
) -> (RedisTarget, String) {
    let t = target(
        server,
        RestoreSettings {
            pipeline: 16,
            ..Default::default()
        },
    )
    .await;
    let err = repo
        .restore(id, &t, Default::default())
        .await
        .unwrap_err()
        .to_string();
    (t, err)
}

/// A command fred has no typed method for here (the dev-dependency's features leave lists,
/// sets, sorted sets and streams out).
async fn cmd(c: &Client, name: &'static str, args: Vec<Value>) -> Value {
    c.custom(fred::cmd!(name), args)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn v(s: impl AsRef<[u8]>) -> Value {
    Value::Bytes(Bytes::copy_from_slice(s.as_ref()))
}

/// Every key with its `DUMP` payload and `PEXPIRETIME` (-1 when persistent).
async fn snapshot_of(c: &Client) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let mut out = BTreeMap::new();
    let mut cursor = "0".to_owned();
    loop {
        let page: Value = c.scan_page(cursor, "*", Some(500), None).await.unwrap();
        let Value::Array(mut parts) = page else {
            panic!("SCAN reply {page:?}")
        };
        let Some(Value::Array(keys)) = parts.pop() else {
            panic!("SCAN reply without keys")
        };
        cursor = parts.pop().and_then(|c| c.as_string()).unwrap();
        for k in keys {
            let k = k.as_bytes().unwrap().to_vec();
            let dump: Option<Bytes> = c.dump(k.as_slice()).await.unwrap();
            let at: i64 = c.pexpire_time(k.as_slice()).await.unwrap();
            out.insert(k, (dump.expect("the key vanished").to_vec(), at));
        }
        if cursor == "0" {
            return out;
        }
    }
}

/// The value of a key whose `DUMP` order depends on the server (hash tables): its members (or
/// field/value pairs), sorted.
async fn members(c: &Client, key: &[u8]) -> Vec<Vec<u8>> {
    let kind = cmd(c, "TYPE", vec![v(key)]).await.as_string().unwrap();
    let reply = match kind.as_str() {
        "set" => cmd(c, "SMEMBERS", vec![v(key)]).await,
        "hash" => cmd(c, "HGETALL", vec![v(key)]).await,
        other => panic!("{other} is not a hash-table type"),
    };
    let Value::Array(items) = reply else {
        panic!("{reply:?}")
    };
    let mut items: Vec<Vec<u8>> = match kind.as_str() {
        "set" => items
            .iter()
            .map(|i| i.as_bytes().unwrap().to_vec())
            .collect(),
        _ => items
            .chunks(2)
            .map(|p| {
                [
                    p[0].as_bytes().unwrap(),
                    b"=".as_slice(),
                    p[1].as_bytes().unwrap(),
                ]
                .concat()
            })
            .collect(),
    };
    items.sort();
    items
}

/// A string holding every byte value, and a name that is not UTF-8.
const BINARY_KEY: &[u8] = b"bin:\x00\xff\xfe\r\n key";

/// Writes keys of every type; returns the keys whose `DUMP` is in hash-table order.
async fn fill_every_type(c: &Client, n: usize) -> Vec<Vec<u8>> {
    let in_an_hour = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let mut unordered = Vec::new();
    for i in 0..n {
        let _: () = c
            .set(format!("str:{i}"), format!("value {i}"), None, None, false)
            .await
            .unwrap();
        let _: () = c
            .set(format!("int:{i}"), i as i64 * 1000, None, None, false)
            .await
            .unwrap();
        let _: () = c
            .hset(
                format!("hash:{i}"),
                [("f1", "v1"), ("f2", i.to_string().as_str())],
            )
            .await
            .unwrap();
        cmd(
            c,
            "RPUSH",
            vec![v(format!("list:{i}")), v("a"), v("b"), v("c")],
        )
        .await;
        cmd(
            c,
            "SADD",
            vec![v(format!("iset:{i}")), v("1"), v("2"), v("300")],
        )
        .await;
        let set = format!("sset:{i}");
        cmd(c, "SADD", vec![v(&set), v("x"), v("y"), v(format!("z{i}"))]).await;
        unordered.push(set.into_bytes());
        cmd(
            c,
            "ZADD",
            vec![
                v(format!("zset:{i}")),
                v("1.5"),
                v("one"),
                v("2.5"),
                v("two"),
            ],
        )
        .await;
        cmd(
            c,
            "XADD",
            vec![
                v(format!("stream:{i}")),
                v("*"),
                v("field"),
                v(i.to_string()),
            ],
        )
        .await;
        cmd(c, "SETBIT", vec![v(format!("bits:{i}")), v("77"), v("1")]).await;
        cmd(
            c,
            "PFADD",
            vec![v(format!("hll:{i}")), v("a"), v("b"), v("c")],
        )
        .await;
        if i % 3 == 0 {
            let _: () = c
                .pexpire_at(format!("str:{i}"), in_an_hour + i as i64, None)
                .await
                .unwrap();
            let _: () = c
                .pexpire_at(format!("hash:{i}"), in_an_hour + 7, None)
                .await
                .unwrap();
            cmd(
                c,
                "PEXPIREAT",
                vec![v(format!("zset:{i}")), v((in_an_hour + 11).to_string())],
            )
            .await;
        }
    }
    // Binary names and values, one of them expiring.
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let _: () = c
        .set(
            BINARY_KEY,
            Value::Bytes(all_bytes.into()),
            None,
            None,
            false,
        )
        .await
        .unwrap();
    cmd(
        c,
        "HSET",
        vec![v(b"bin:hash\x00\x01"), v(b"\x00"), v(b"\xff\x00\xff")],
    )
    .await;
    let _: () = c
        .pexpire_at(b"bin:hash\x00\x01".as_slice(), in_an_hour + 99, None)
        .await
        .unwrap();
    cmd(c, "RPUSH", vec![v(b"bin:list\x80"), v(b"\x00"), v(b"")]).await;
    // Big ones: a hash-table hash, and a 1 MiB string.
    let fields: Vec<(String, String)> = (0..2_000)
        .map(|i| (format!("f{i}"), format!("v{i}")))
        .collect();
    let _: () = c.hset("big:hash", fields).await.unwrap();
    unordered.push(b"big:hash".to_vec());
    let _: () = c
        .set("big:string", "z".repeat(1 << 20), None, None, false)
        .await
        .unwrap();
    unordered
}

/// Polls until `key` is gone from the server (its expiry passed), for at most `within`.
async fn wait_until_gone(c: &Client, key: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n: i64 = c.exists(key).await.unwrap();
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{key} did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_round_trips_through_the_library_with_payloads_and_absolute_expiries() {
    let dir = tempfile::tempdir().unwrap();
    let source_server = support::start_server(dir.path());
    let src = client(&source_server).await;
    let unordered = fill_every_type(&src, 40).await;
    let before = snapshot_of(&src).await;
    assert_eq!(before.len(), 40 * 10 + 5);
    assert!(before.values().any(|(_, at)| *at > 0), "some keys expire");
    // A key that is backed up and expires before the restore.
    let _: () = src
        .set(
            "gone:soon",
            "x",
            Some(fred::types::Expiration::PX(3_000)),
            None,
            false,
        )
        .await
        .unwrap();

    let repo = support::repo().await;
    let mut source = RedisSource::new(endpoint(&source_server)).with_id("cache");
    source.scan_count = 50;
    // One key per entry: the record's entry count is the key count.
    source.batch_bytes = 1;
    let report = repo.backup(&source, Default::default()).await.unwrap();
    let record = report.record;
    let keys = before.len() as u64 + 1;
    assert_eq!(record.status, BackupStatus::Succeeded);
    assert_eq!(
        (record.source.kind.as_str(), record.source.id.as_str()),
        ("redis", "cache")
    );
    assert_eq!(record.entries, keys);
    let meta = &record.source_metadata;
    assert_eq!(meta["keys"], keys, "{meta:?}");
    assert_eq!(meta["vanished_during_scan"], 0u64, "{meta:?}");
    assert_eq!(meta["primaries"], 1u64);
    assert_eq!(meta["cluster"], false);
    assert_eq!(meta["db"], 0u64);
    let version: String = src
        .info::<String>(Some(fred::types::InfoKind::Server))
        .await
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        .unwrap();
    assert_eq!(meta["redis_version"], version.as_str());
    let sum: u64 = before
        .iter()
        .map(|(k, (p, _))| (k.len() + p.len()) as u64)
        .sum();
    assert!(meta["bytes"].as_u64().unwrap() > sum, "{meta:?}");
    assert_eq!(
        repo.catalog()
            .get(&record.id)
            .await
            .unwrap()
            .unwrap()
            .entries,
        keys
    );
    wait_until_gone(&src, "gone:soon", Duration::from_secs(10)).await;

    // Into a second server.
    let other = support::start_server(dir.path());
    let target = target(
        &other,
        RestoreSettings {
            pipeline: 64,
            ..Default::default()
        },
    )
    .await;
    let restored = repo
        .restore(&record.id, &target, Default::default())
        .await
        .unwrap();
    assert_eq!(restored.entries, keys);
    let tally = target.tally();
    assert_eq!(
        (
            tally.restored,
            tally.expired,
            tally.filtered,
            tally.refused_count
        ),
        (keys - 1, 1, 0, 0),
        "{tally:?}"
    );
    assert!(tally.refused.is_empty());

    let dst = client(&other).await;
    let after = snapshot_of(&dst).await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the same keys, and not the expired one"
    );
    let mut compared = 0;
    for (k, (payload, at)) in &before {
        let shown = String::from_utf8_lossy(k);
        let (p2, at2) = &after[k];
        assert_eq!(at, at2, "expiry of {shown}");
        if unordered.contains(k) {
            assert_eq!(
                members(&src, k).await,
                members(&dst, k).await,
                "members of {shown}"
            );
        } else {
            assert_eq!(payload, p2, "DUMP of {shown}");
            compared += 1;
        }
    }
    assert_eq!(compared, before.len() - unordered.len());
    let ttl: i64 = dst.pttl("str:0").await.unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&ttl),
        "an hour, less the test's time: {ttl}"
    );
    let bin: Bytes = dst.get(BINARY_KEY).await.unwrap();
    assert_eq!(bin.len(), 1000);
    assert!(bin.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));
    let big: Bytes = dst.get("big:string").await.unwrap();
    assert_eq!(big.len(), 1 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_already_on_the_target_is_refused_and_named_unless_replace_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let source_server = support::start_server(dir.path());
    let src = client(&source_server).await;
    for i in 0..100 {
        let _: () = src
            .set(format!("k:{i}"), i, None, None, false)
            .await
            .unwrap();
    }
    let repo = support::repo().await;
    let id = repo
        .backup(
            &RedisSource::new(endpoint(&source_server)),
            Default::default(),
        )
        .await
        .unwrap()
        .record
        .id;
    let before = snapshot_of(&src).await;

    let other = support::start_server(dir.path());
    let dst = client(&other).await;
    let _: () = dst
        .set("k:42", "already here", None, None, false)
        .await
        .unwrap();
    let _: () = dst.set("mine", "kept", None, None, false).await.unwrap();

    // Without replace: every other key restored, the one refused, the restore an error.
    let (t, err) = failed_restore(&repo, &id, &other).await;
    assert!(err.starts_with("RESTORE of k:42 failed: "), "{err}");
    assert!(
        err.contains("(the key exists: restore with `replace` set, `--replace` on the command line, to overwrite it)"),
        "{err}"
    );
    assert!(
        err.ends_with("; 1 key(s) refused in all, 99 restored, 0 already identical, 0 expired, 0 filtered out"),
        "{err}"
    );
    let tally = t.tally();
    assert_eq!(
        (
            tally.restored,
            tally.refused_count,
            tally.expired,
            tally.filtered
        ),
        (99, 1, 0, 0),
        "{tally:?}"
    );
    assert_eq!(tally.refused.len(), 1);
    assert_eq!(tally.refused[0].key, "k:42");
    assert!(
        tally.refused[0].reason.contains("already exists"),
        "{tally:?}"
    );
    let kept: String = dst.get("k:42").await.unwrap();
    assert_eq!(kept, "already here");
    let n: u64 = dst.dbsize().await.unwrap();
    assert_eq!(n, 101);

    // With replace: every key restored, the existing one overwritten, the others left alone.
    let t = target(
        &other,
        RestoreSettings {
            replace: true,
            pipeline: 16,
            ..Default::default()
        },
    )
    .await;
    repo.restore(&id, &t, Default::default()).await.unwrap();
    let tally = t.tally();
    assert_eq!((tally.restored, tally.refused_count), (100, 0), "{tally:?}");
    let replaced: String = dst.get("k:42").await.unwrap();
    assert_eq!(replaced, "42");
    let mine: String = dst.get("mine").await.unwrap();
    assert_eq!(mine, "kept");

    // Again without replace: the keys are there as the backup holds them, so none is refused,
    // but one whose expiry differs from the backup's is.
    let _: bool = dst.pexpire("k:7", 600_000, None).await.unwrap();
    let (t, err) = failed_restore(&repo, &id, &other).await;
    assert!(err.starts_with("RESTORE of k:7 failed: "), "{err}");
    let tally = t.tally();
    assert_eq!(
        (tally.restored, tally.identical, tally.refused_count),
        (0, 99, 1),
        "{tally:?}"
    );
    let _: bool = dst.persist("k:7").await.unwrap();
    let mut after = snapshot_of(&dst).await;
    assert!(after.remove(b"mine".as_slice()).is_some());
    assert_eq!(after, before);

    // A pattern: only matching keys, the others counted as filtered out.
    let third = support::start_server(dir.path());
    let t = target(
        &third,
        RestoreSettings {
            pattern: Some("k:1?".into()),
            pipeline: 16,
            ..Default::default()
        },
    )
    .await;
    repo.restore(&id, &t, Default::default()).await.unwrap();
    let tally = t.tally();
    assert_eq!((tally.restored, tally.filtered), (10, 90), "{tally:?}");
    let restored: Vec<Vec<u8>> = snapshot_of(&client(&third).await)
        .await
        .into_keys()
        .collect();
    let mut expected: Vec<Vec<u8>> = (10..20).map(|i| format!("k:{i}").into_bytes()).collect();
    expected.sort();
    assert_eq!(restored, expected);
}

/// The backup and the restore reach the server on connections of their own: those log in with
/// the URL's password and use its database too. Keys of another database are neither backed up
/// nor touched.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_and_a_database_in_the_url_hold_for_backup_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let options = support::ServerOptions {
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let source_server = resilience_redis::testing::start_server(dir.path(), &options);
    let target_server = resilience_redis::testing::start_server(dir.path(), &options);
    let url = |server: &support::Server, db: u8| {
        format!("redis://:s3cret@127.0.0.1:{}/{db}", server.port)
    };
    let src3 = client_at(&url(&source_server, 3)).await;
    let src0 = client_at(&url(&source_server, 0)).await;
    for i in 0..2500 {
        let _: () = src3
            .set(format!("k:{i}"), format!("v{i}"), None, None, false)
            .await
            .unwrap();
    }
    let _: () = src0
        .set("elsewhere", "db 0", None, None, false)
        .await
        .unwrap();
    let dst5 = client_at(&url(&target_server, 5)).await;
    let dst0 = client_at(&url(&target_server, 0)).await;
    let _: () = dst0
        .set("k:7", "db 0's own", None, None, false)
        .await
        .unwrap();

    let repo = support::repo().await;
    let endpoint = |url: String| RedisEndpoint {
        url,
        cluster: false,
    };
    let record = repo
        .backup(
            &RedisSource::new(endpoint(url(&source_server, 3))),
            Default::default(),
        )
        .await
        .unwrap()
        .record;
    assert_eq!(record.source_metadata["keys"], 2500);
    let target = RedisTarget::new(
        endpoint(url(&target_server, 5)).connect().await.unwrap(),
        RestoreSettings {
            pipeline: 100,
            ..Default::default()
        },
    );
    repo.restore(&record.id, &target, Default::default())
        .await
        .unwrap();
    assert_eq!(snapshot_of(&dst5).await, snapshot_of(&src3).await);
    let n: u64 = dst5.dbsize().await.unwrap();
    assert_eq!(n, 2500);
    let own: String = dst0.get("k:7").await.unwrap();
    assert_eq!(own, "db 0's own");
    let n: u64 = dst0.dbsize().await.unwrap();
    assert_eq!(n, 1, "only db 0's own key in the target's db 0");
}

/// A backup that holds a key twice (`SCAN` returned it twice: a rehash, a resharding) restores
/// without `replace`: the second copy finds the first in place, identical, and is counted so.
/// Two copies that differ are a refusal, named, as any existing key of other bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_held_twice_by_a_backup_restores_without_replace() {
    use resilience_core::testing::MemorySource;
    use resilience_redis::record::KeyRecord;

    let dir = tempfile::tempdir().unwrap();
    let source_server = support::start_server(dir.path());
    let src = client(&source_server).await;
    let _: () = src.set("twice", "same", None, None, false).await.unwrap();
    let _: () = src
        .set("changed", "before", None, None, false)
        .await
        .unwrap();
    let dump = |key: &'static str| {
        let src = src.clone();
        async move {
            let payload: Bytes = src.dump(key).await.unwrap();
            KeyRecord {
                key: Bytes::from_static(key.as_bytes()),
                expires_at_ms: None,
                payload,
            }
        }
    };
    let (twice, before) = (dump("twice").await, dump("changed").await);
    let _: () = src
        .set("changed", "after", None, None, false)
        .await
        .unwrap();
    let after = dump("changed").await;

    let mut same_twice = bytes::BytesMut::new();
    twice.encode(&mut same_twice);
    twice.encode(&mut same_twice);
    let mut differing = bytes::BytesMut::new();
    before.encode(&mut differing);
    after.encode(&mut differing);
    let repo = support::repo().await;
    let id = |source: MemorySource| {
        let repo = &repo;
        async move {
            repo.backup(&source, Default::default())
                .await
                .unwrap()
                .record
                .id
        }
    };
    let same_id = id(MemorySource::new("redis:same").file("keys-0", same_twice.freeze())).await;
    let differing_id =
        id(MemorySource::new("redis:differing").file("keys-0", differing.freeze())).await;

    let other = support::start_server(dir.path());
    let dst = client(&other).await;
    let t = target(&other, RestoreSettings::default()).await;
    repo.restore(&same_id, &t, Default::default())
        .await
        .unwrap();
    let tally = t.tally();
    assert_eq!(
        (tally.restored, tally.identical, tally.refused_count),
        (1, 1, 0),
        "{tally:?}"
    );
    let value: String = dst.get("twice").await.unwrap();
    assert_eq!(value, "same");

    let (t, err) = failed_restore(&repo, &differing_id, &other).await;
    assert!(err.starts_with("RESTORE of changed failed: "), "{err}");
    let tally = t.tally();
    assert_eq!(
        (tally.restored, tally.identical, tally.refused_count),
        (1, 0, 1),
        "{tally:?}"
    );
    let value: String = dst.get("changed").await.unwrap();
    assert_eq!(
        value, "before",
        "the first copy stays; the other is refused, not written"
    );
}
