//! A conformance suite for [`Catalog`] implementations: a catalog that passes it answers as the
//! repository's own ([`RepoCatalog`](super::RepoCatalog)) does. Core's tests run [`run_all`]
//! against the repository catalog; `resilience-pg`'s against its Postgres catalog.
//!
//! Each check writes records of its own sources (`<check>-…`), so the checks share one catalog;
//! [`run_all`] wants it empty. Records go out of their way for odd input: unicode, emoji, quotes
//! and newlines in labels and errors, nested metadata, nanosecond times, equal start times.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::{
    BackupKind, BackupRecord, BackupStatus, Catalog, CatalogQuery, Salvage, Tier, Verification,
};
use crate::source::SourceDescriptor;

/// Runs every check against an empty catalog.
pub async fn run_all(catalog: &dyn Catalog) {
    round_trip(catalog).await;
    revisions(catalog).await;
    status_precedence_within_a_revision(catalog).await;
    holds_and_verifications(catalog).await;
    queries(catalog).await;
}

/// A start time: `2026-03-01` plus `seconds`, with a nanosecond part.
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        + Duration::seconds(seconds)
        + Duration::nanoseconds(123_456_789)
}

/// A plain succeeded record of revision 1.
fn record(id: &str, source: &str, started_at: DateTime<Utc>) -> BackupRecord {
    BackupRecord {
        id: id.into(),
        revision: 1,
        source: SourceDescriptor {
            id: source.into(),
            kind: "dir".into(),
        },
        kind: BackupKind::Full,
        status: BackupStatus::Succeeded,
        error: None,
        started_at,
        finished_at: Some(started_at + Duration::minutes(5)),
        logical_bytes: 10,
        stored_bytes: 5,
        new_bytes: 5,
        entries: 2,
        manifest_checksum: Some("ab".repeat(32)),
        tier: Tier::Hot,
        labels: BTreeMap::new(),
        legal_hold: false,
        verifications: vec![],
        source_metadata: Default::default(),
        parent: None,
        host: "conformance".into(),
        updated_at: started_at + Duration::minutes(5),
        salvage: None,
    }
}

/// The same record as its next revision.
fn next(r: &BackupRecord) -> BackupRecord {
    BackupRecord {
        revision: r.revision + 1,
        updated_at: r.updated_at + Duration::seconds(1),
        ..r.clone()
    }
}

async fn get(catalog: &dyn Catalog, id: &str) -> BackupRecord {
    catalog
        .get(id)
        .await
        .unwrap_or_else(|e| panic!("get {id}: {e}"))
        .unwrap_or_else(|| panic!("record {id} is missing"))
}

async fn list(catalog: &dyn Catalog, query: &CatalogQuery) -> Vec<BackupRecord> {
    catalog
        .list(query)
        .await
        .unwrap_or_else(|e| panic!("list {query:?}: {e}"))
}

fn ids(records: &[BackupRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn of_source(source: &str) -> CatalogQuery {
    CatalogQuery {
        source: Some(source.into()),
        ..Default::default()
    }
}

/// Every field of a record comes back as it was stored, the optional ones set and unset; an
/// unknown id is `None`.
pub async fn round_trip(catalog: &dyn Catalog) {
    let plain = record("round-trip-plain", "round-trip", at(0));
    let mut full = record("round-trip-full", "round-trip", at(60));
    full.revision = 7;
    full.source.kind = "postgres".into();
    full.kind = BackupKind::Incremental;
    full.status = BackupStatus::Failed;
    full.error = Some("read of \"base/1/2\" failed:\nÜnïcödé 🦀 'quoted' \\ back\tslash".into());
    full.finished_at = None;
    full.logical_bytes = u64::MAX >> 2;
    full.stored_bytes = 1 << 40;
    full.new_bytes = 0;
    full.entries = 0;
    full.manifest_checksum = None;
    full.tier = Tier::Cold;
    full.labels = BTreeMap::from([
        ("team".to_owned(), "storage 🦀".to_owned()),
        ("ünïcödé".to_owned(), "a\"b'c\nd".to_owned()),
        ("empty".to_owned(), String::new()),
    ]);
    full.legal_hold = true;
    full.verifications = vec![
        Verification {
            at: at(120),
            kind: "quick".into(),
            ok: true,
            detail: String::new(),
        },
        Verification {
            at: at(180),
            kind: "full".into(),
            ok: false,
            detail: "pack data/ab/… is damaged".into(),
        },
    ];
    full.source_metadata = BTreeMap::from([
        ("start_lsn".to_owned(), serde_json::json!("0/3000028")),
        ("timeline".to_owned(), serde_json::json!(1)),
        (
            "nested".to_owned(),
            serde_json::json!({"list": [1, "two", null, true], "empty": {}}),
        ),
    ]);
    full.parent = Some("round-trip-plain".into());
    full.host = "höst-1".into();
    full.salvage = Some(Salvage {
        from: "round-trip-plain".into(),
        at: at(240),
        files_left_out: 3,
        paths_left_out: vec!["a/b c".into(), "ü/🦀".into()],
        entries_unreadable: 1,
        tree_lost_after: Some("a/b c".into()),
    });
    for r in [&plain, &full] {
        catalog.put(r).await.unwrap();
    }
    assert_eq!(get(catalog, &plain.id).await, plain);
    assert_eq!(get(catalog, &full.id).await, full);
    assert_eq!(list(catalog, &of_source("round-trip")).await, [plain, full]);
    assert!(catalog.get("round-trip-none").await.unwrap().is_none());
}

/// A higher revision becomes current, for `get` and `list`; a stale put (a lower revision,
/// which a catalog may refuse) leaves it current; `list` shows current revisions only.
pub async fn revisions(catalog: &dyn Catalog) {
    let mut first = record("revisions-a", "revisions", at(0));
    first.status = BackupStatus::Running;
    first.finished_at = None;
    catalog.put(&first).await.unwrap();
    assert_eq!(get(catalog, &first.id).await, first);
    let mut done = next(&first);
    done.status = BackupStatus::Succeeded;
    done.finished_at = Some(at(300));
    catalog.put(&done).await.unwrap();
    assert_eq!(get(catalog, &first.id).await, done);
    let mut later = next(&done);
    later.tier = Tier::Cold;
    later.labels.insert("moved".into(), "yes".into());
    catalog.put(&later).await.unwrap();
    assert_eq!(get(catalog, &first.id).await, later);
    let mut stale = first.clone();
    stale.error = Some("a stale writer".into());
    let _ = catalog.put(&stale).await;
    assert_eq!(get(catalog, &first.id).await, later);
    assert_eq!(
        list(catalog, &of_source("revisions")).await,
        [later.clone()]
    );
    let running = CatalogQuery {
        source: Some("revisions".into()),
        statuses: vec![BackupStatus::Running],
        ..Default::default()
    };
    assert!(
        list(catalog, &running).await.is_empty(),
        "an older revision's status matched"
    );
}

/// Two revisions of one number (a backup's own success and a reaper's guess that it died, or
/// an expiry): the status further along is current, whichever was stored first — `expired`
/// over `succeeded` over `failed` over `running`.
pub async fn status_precedence_within_a_revision(catalog: &dyn Catalog) {
    use BackupStatus::*;
    for (i, (first, second, current)) in [
        (Failed, Succeeded, Succeeded),
        (Succeeded, Failed, Succeeded),
        (Running, Failed, Failed),
        (Expired, Succeeded, Expired),
        (Succeeded, Expired, Expired),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("precedence-{i}");
        let running = BackupRecord {
            status: Running,
            ..record(&id, "precedence", at(i as i64))
        };
        catalog.put(&running).await.unwrap();
        let mut a = next(&running);
        a.status = first;
        let mut b = next(&running);
        b.status = second;
        b.updated_at = a.updated_at + Duration::seconds(1);
        catalog.put(&a).await.unwrap();
        let _ = catalog.put(&b).await;
        let got = get(catalog, &id).await;
        assert_eq!(
            (got.revision, got.status),
            (2, current),
            "{first} then {second}"
        );
        let by_status = CatalogQuery {
            source: Some("precedence".into()),
            statuses: vec![current],
            ..Default::default()
        };
        assert!(
            ids(&list(catalog, &by_status).await).contains(&id.as_str()),
            "{first} then {second}: not listed as {current}"
        );
    }
}

/// Holds and verification history live in revisions: a hold placed, a verification added and
/// a hold released each show in the current record.
pub async fn holds_and_verifications(catalog: &dyn Catalog) {
    let r = record("holds-a", "holds", at(0));
    catalog.put(&r).await.unwrap();
    let mut held = next(&r);
    held.legal_hold = true;
    catalog.put(&held).await.unwrap();
    assert!(get(catalog, &r.id).await.legal_hold);
    let mut verified = next(&held);
    verified.verifications.push(Verification {
        at: at(600),
        kind: "drill".into(),
        ok: true,
        detail: "restored 2 entries".into(),
    });
    catalog.put(&verified).await.unwrap();
    let mut failed = next(&verified);
    failed.verifications.push(Verification {
        at: at(700),
        kind: "full".into(),
        ok: false,
        detail: "blob 12ab… is missing".into(),
    });
    catalog.put(&failed).await.unwrap();
    let got = get(catalog, &r.id).await;
    assert_eq!(got.verifications, failed.verifications);
    assert_eq!(
        got.status,
        BackupStatus::Succeeded,
        "a failed verification is history, not a status"
    );
    assert!(got.legal_hold);
    let mut released = next(&failed);
    released.legal_hold = false;
    catalog.put(&released).await.unwrap();
    assert_eq!(get(catalog, &r.id).await, released);
}

/// Queries by source, status, start time (`since` inclusive, `until` exclusive) and all of
/// them at once; results oldest first, equal start times by id.
pub async fn queries(catalog: &dyn Catalog) {
    let mut records = vec![
        record("queries-b", "queries-x", at(100)),
        record("queries-a", "queries-x", at(100)),
        record("queries-c", "queries-y", at(50)),
        record("queries-d", "queries-x", at(200)),
        record("queries-e", "queries-y", at(300)),
    ];
    records[2].status = BackupStatus::Failed;
    records[3].status = BackupStatus::Running;
    records[3].finished_at = None;
    records[4].status = BackupStatus::Expired;
    for r in &records {
        catalog.put(r).await.unwrap();
    }
    let ours = |found: Vec<BackupRecord>| -> Vec<String> {
        found
            .into_iter()
            .filter(|r| r.id.starts_with("queries-"))
            .map(|r| r.id)
            .collect()
    };
    let q = |source: Option<&str>, statuses: &[BackupStatus], since, until| CatalogQuery {
        source: source.map(str::to_owned),
        statuses: statuses.to_vec(),
        since,
        until,
    };
    use BackupStatus::*;
    let cases: Vec<(CatalogQuery, Vec<&str>)> = vec![
        (
            q(None, &[], None, None),
            vec![
                "queries-c",
                "queries-a",
                "queries-b",
                "queries-d",
                "queries-e",
            ],
        ),
        (
            q(Some("queries-x"), &[], None, None),
            vec!["queries-a", "queries-b", "queries-d"],
        ),
        (q(Some("queries-none"), &[], None, None), vec![]),
        (
            q(None, &[Succeeded], None, None),
            vec!["queries-a", "queries-b"],
        ),
        (
            q(None, &[Failed, Expired], None, None),
            vec!["queries-c", "queries-e"],
        ),
        (
            q(None, &[], Some(at(100)), None),
            vec!["queries-a", "queries-b", "queries-d", "queries-e"],
        ),
        (q(None, &[], None, Some(at(100))), vec!["queries-c"]),
        (
            q(None, &[], Some(at(100)), Some(at(200))),
            vec!["queries-a", "queries-b"],
        ),
        (
            q(
                Some("queries-x"),
                &[Running, Succeeded],
                Some(at(101)),
                Some(at(301)),
            ),
            vec!["queries-d"],
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(ours(list(catalog, &query).await), expected, "{query:?}");
    }
    let all = list(catalog, &CatalogQuery::default()).await;
    assert!(
        all.windows(2)
            .all(|w| (w[0].started_at, &w[0].id) <= (w[1].started_at, &w[1].id)),
        "not oldest first: {:?}",
        ids(&all)
    );
    let mut seen = ids(&all);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), all.len(), "a record listed twice");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::catalog::RepoCatalog;
    use crate::format::crypto::KeySet;
    use crate::sink::MemorySink;

    #[tokio::test]
    async fn the_repository_catalog_conforms() {
        let catalog = RepoCatalog::new(Arc::new(MemorySink::new()), Arc::new(KeySet::generate()));
        super::run_all(&catalog).await;
    }
}
