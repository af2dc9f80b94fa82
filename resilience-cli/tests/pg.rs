//! Postgres end to end, against real PostgreSQL clusters started by the test: base backups
//! through `resilience pg backup`, WAL archived by the built `resilience wal-push` as
//! archive_command, and point-in-time recovery by `resilience pg restore --start`, each
//! compared with checksums of the table taken as the workload ran.

mod pg_support;
mod tls_support;

use std::time::Duration;

use pg_support::{table_sum, Lab};
use tokio_postgres::Client;

async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn now(c: &Client) -> String {
    let row = c
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

async fn restored_sum(cluster: &pg_support::Cluster, table: &str) -> Option<String> {
    table_sum(&cluster.client().await, table).await
}

#[tokio::test(flavor = "multi_thread")]
async fn recovers_to_a_time_a_restore_point_an_lsn_and_an_xid() {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    let c = primary.client().await;
    exec(
        &c,
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint);
         INSERT INTO accounts SELECT i, 'owner ' || i, i * 100 FROM generate_series(1, 5000) i;
         CREATE TABLE audit (id serial PRIMARY KEY, note text);",
    )
    .await;
    let backup = lab.base_backup(&primary);
    assert_eq!(backup["status"], "succeeded", "{backup}");
    assert!(backup["start_lsn"].as_str().unwrap().contains('/'));
    assert!(backup["stop_lsn"].as_str().unwrap() >= backup["start_lsn"].as_str().unwrap());
    assert_eq!(backup["timeline"], 1);

    // After the backup: changes, each followed by a checkpoint of the table's contents.
    exec(
        &c,
        "UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0",
    )
    .await;
    let at_time_sum = table_sum(&c, "accounts").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let time = now(&c).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    exec(
        &c,
        "INSERT INTO accounts SELECT i, 'late ' || i, 1 FROM generate_series(5001, 5100) i",
    )
    .await;
    let at_name_sum = table_sum(&c, "accounts").await;
    exec(&c, "SELECT pg_create_restore_point('before-accident')").await;

    exec(&c, "DELETE FROM accounts WHERE id BETWEEN 100 AND 199").await;
    let xid: i64 = {
        exec(&c, "BEGIN").await;
        exec(&c, "UPDATE accounts SET owner = 'renamed' WHERE id = 42").await;
        let x: i64 = c
            .query_one("SELECT txid_current()", &[])
            .await
            .unwrap()
            .get(0);
        exec(&c, "COMMIT").await;
        x
    };
    let at_xid_sum = table_sum(&c, "accounts").await;

    exec(
        &c,
        "INSERT INTO audit (note) SELECT 'n' || i FROM generate_series(1, 50) i",
    )
    .await;
    exec(&c, "UPDATE accounts SET balance = 0 WHERE id = 1").await;
    let at_lsn_sum = table_sum(&c, "accounts").await;
    let lsn: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);

    // The accident.
    exec(&c, "UPDATE accounts SET balance = -1").await;
    exec(&c, "DROP TABLE accounts").await;
    primary.archive_now().await;

    let check = lab.json(&["pg", "check", "--source", "main"]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");

    let xid = xid.to_string();
    let cases = [
        ("by-time", ["--target-time", &time], at_time_sum),
        ("by-name", ["--target-name", "before-accident"], at_name_sum),
        ("by-xid", ["--target-xid", &xid], at_xid_sum),
        ("by-lsn", ["--target-lsn", &lsn], at_lsn_sum),
    ];
    for (name, target, expected) in cases {
        let (restored, doc) = lab.restore(name, &target);
        assert!(expected.is_some());
        assert_eq!(
            restored_sum(&restored, "accounts").await,
            expected,
            "{name}: {doc}"
        );
        let reached = &doc["reached"];
        assert_eq!(reached["promoted"], true, "{name}: {doc}");
        assert!(reached["lsn"].as_str().is_some(), "{name}: {doc}");
        assert_eq!(doc["backup"], backup["id"]);
    }

    // The catalog, copied into a schema, answers compliance questions in SQL.
    let restored_db = lab.cluster("catalog-db").await;
    let synced = lab.json(&["pg", "catalog-sync", "--dsn", &restored_db.dsn()]);
    assert_eq!(synced["copied"], 1);
    let again = lab.json(&["pg", "catalog-sync", "--dsn", &restored_db.dsn()]);
    assert_eq!(again["copied"], 0, "nothing new the second time");
    let cat = restored_db.client().await;
    let row = cat
        .query_one(
            "SELECT count(*), max(source_metadata->>'stop_lsn'), bool_and(NOT legal_hold)              FROM resilience.backups WHERE source_kind = 'postgres' AND status = 'succeeded'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        backup["stop_lsn"].as_str()
    );
    let revisions: i64 = cat
        .query_one("SELECT count(*) FROM resilience.backup_revisions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        revisions, 1,
        "one revision of the one record (the final one)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recovers_along_a_new_timeline_after_a_promotion() {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    let c = primary.client().await;
    exec(&c, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'a' FROM generate_series(1, 1000) i").await;
    lab.base_backup(&primary);
    exec(
        &c,
        "INSERT INTO t SELECT i, 'b' FROM generate_series(1001, 2000) i",
    )
    .await;
    exec(&c, "SELECT pg_create_restore_point('branch')").await;
    exec(&c, "DELETE FROM t WHERE id > 1500").await;
    primary.archive_now().await;
    drop(c);
    primary.stop();

    // A real recovery: the restored copy is promoted to timeline 2 and keeps archiving.
    let (promoted, doc) = lab.restore_with("branch", &["--target-name", "branch"], false);
    assert_eq!(doc["reached"]["timeline"], 2, "{doc}");
    let c2 = promoted.client().await;
    assert_eq!(
        c2.query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2000
    );
    exec(
        &c2,
        "INSERT INTO t SELECT i, 'tl2' FROM generate_series(2001, 2500) i",
    )
    .await;
    let on_tl2 = table_sum(&c2, "t").await;
    let seg = promoted.archive_now().await;
    assert!(seg.starts_with("00000002"), "{seg}");
    drop(c2);
    promoted.stop();

    let check = lab.json(&["pg", "check", "--source", "main"]);
    let tl2 = check["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["timeline"] == 2)
        .unwrap_or_else(|| panic!("no timeline 2 in {check}"));
    assert!(tl2["latest"].as_str().is_some(), "{check}");
    assert_eq!(tl2["gaps"].as_array().unwrap().len(), 0, "{check}");

    // Recovery to the end of the archive follows timeline 2.
    let (latest, doc) = lab.restore("latest", &[]);
    assert_eq!(restored_sum(&latest, "t").await, on_tl2, "{doc}");
    assert_eq!(doc["reached"]["timeline"], 3, "promoted once more: {doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_segment_is_named_and_never_recovered_past() {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    let c = primary.client().await;
    exec(&c, "CREATE TABLE t (id int PRIMARY KEY)").await;
    lab.base_backup(&primary);
    let mut segments = Vec::new();
    // Segment i holds the commit of row i; the time is taken just before that commit.
    for i in 0..4 {
        let before = now(&c).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        exec(&c, &format!("INSERT INTO t VALUES ({i})")).await;
        segments.push((primary.archive_now().await, before));
    }
    let (lost, _) = &segments[2];
    std::fs::remove_file(lab.wal_object(lost)).unwrap();

    let out = lab.run(&["pg", "check", "--source", "main"]);
    assert_eq!(out.status.code(), Some(3));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(lost.as_str()), "{text}");

    // Past the gap: refused before anything is restored, naming the segment.
    for target in [
        vec![],
        vec!["--target-time".to_owned(), segments[3].1.clone()],
    ] {
        let dir = lab.path("past-gap");
        let mut args = vec![
            "pg",
            "restore",
            "--source",
            "main",
            "--pgdata",
            dir.to_str().unwrap(),
        ];
        args.extend(target.iter().map(String::as_str));
        let out = lab.run(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("WAL gap") && err.contains(lost.as_str()),
            "{err}"
        );
        assert!(!dir.exists(), "nothing restored");
    }

    // Before the gap: recovers exactly to the target (rows 0 only: row 1 committed later).
    let (restored, doc) = lab.restore("before-gap", &["--target-time", &segments[1].1]);
    let c2 = restored.client().await;
    let n: i64 = c2
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_base_backup_stores_only_what_changed_and_tablespaces_come_back() {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    let space = lab.path("space");
    std::fs::create_dir(&space).unwrap();
    pg_support::chown(&space);
    let c = primary.client().await;
    exec(
        &c,
        &format!("CREATE TABLESPACE extra LOCATION '{}'", space.display()),
    )
    .await;
    exec(
        &c,
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
             INSERT INTO big SELECT i, md5(i::text) || md5((i * 3)::text) || md5((i * 7)::text) || md5((i * 11)::text) FROM generate_series(1, 200000) i;
             CREATE TABLE spaced (id int PRIMARY KEY, v text) TABLESPACE extra;
             INSERT INTO spaced SELECT i, 'x' || i FROM generate_series(1, 3000) i;
             CREATE UNLOGGED TABLE scratch (id int); INSERT INTO scratch SELECT generate_series(1, 1000);
             CHECKPOINT;",
    )
    .await;
    // Settle the tables (hint bits, visibility map) so that only the update below changes pages.
    exec(&c, "VACUUM (FREEZE, ANALYZE)").await;
    exec(&c, "CHECKPOINT").await;
    // Files written moments before a backup are always read again (their times are too coarse
    // to prove them unchanged); a real cluster's files are mostly old. Make these old.
    age_files(&primary.pgdata);
    age_files(&space);
    let first = lab.base_backup(&primary);
    exec(&c, "UPDATE big SET pad = 'changed' WHERE id = 10").await;
    let second = lab.base_backup(&primary);
    let (a, b) = (
        first["stored_bytes"].as_u64().unwrap(),
        second["stored_bytes"].as_u64().unwrap(),
    );
    assert!(a > 2 << 20, "first backup stored {a} bytes");
    // The update changes two pages of `big` (the old row's and the new row's), so two of its
    // content-defined chunks are new: 0.5 to 8 MiB each, where they fall depends on the pages'
    // bytes (transaction ids included), so from run to run it is 1 to 3 MiB here, not a fixed
    // share. A quarter of the first backup bounds it with a margin; the 500 reused entries
    // below say the rest was not even read.
    assert!(b * 4 < a, "second backup stored {b} bytes, first {a}");
    assert!(second["reused_entries"].as_u64().unwrap() > 500, "{second}");

    let big = table_sum(&c, "big").await;
    let spaced = table_sum(&c, "spaced").await;
    primary.archive_now().await;

    // WAL from before the first backup is not needed by any backup: expired, and only it.
    let dry = lab.json(&["pg", "expire-wal", "--source", "main", "--dry-run"]);
    let doomed: Vec<String> = dry["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(!doomed.is_empty(), "{dry}");
    assert!(
        lab.wal_object(&doomed[0]).exists(),
        "a dry run deletes nothing"
    );
    let kept_from = first["start_wal"].as_str().unwrap();
    assert_eq!(dry["kept_from"], kept_from);
    assert!(doomed.iter().all(|n| &n[..24] < kept_from), "{dry}");
    let done = lab.json(&["pg", "expire-wal", "--source", "main"]);
    assert_eq!(done["deleted"], dry["deleted"]);
    assert!(!lab.wal_object(&doomed[0]).exists());
    assert!(lab.wal_object(kept_from).exists());
    let check = lab.json(&["pg", "check", "--source", "main"]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    // Throttled to 2 MB/s (a one-second burst, then the rate): the restore takes over a second.
    let (restored, doc) = lab.restore(
        "restored",
        &["--target", "immediate", "--max-rate", "2000000"],
    );
    assert_eq!(doc["backup"], second["id"]);
    assert!(doc["bytes"].as_u64().unwrap() > 30_000_000, "{doc}");
    assert!(doc["restore_ms"].as_u64().unwrap() >= 1000, "{doc}");
    let c2 = restored.client().await;
    assert_eq!(table_sum(&c2, "big").await, big);
    assert_eq!(table_sum(&c2, "spaced").await, spaced);
    // Unlogged tables come back empty, as Postgres defines them after a crash.
    let n: i64 = c2
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

fn age_files(dir: &std::path::Path) {
    let old = filetime::FileTime::from_unix_time(chrono::Utc::now().timestamp() - 3600, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let md = std::fs::symlink_metadata(&path).unwrap();
        if md.is_dir() {
            age_files(&path);
        } else if md.is_file() {
            filetime::set_file_mtime(&path, old).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_push_is_idempotent_refuses_other_bytes_and_fetch_reports_missing_quietly() {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    let seg = primary.archive_now().await;
    let stored = std::fs::read(lab.wal_object(&seg)).unwrap();
    let work = lab.path("work");
    std::fs::create_dir(&work).unwrap();

    // Fetch what Postgres archived; push it again: accepted.
    let fetched = work.join(&seg);
    lab.ok(&[
        "wal-fetch",
        "--source",
        "main",
        &seg,
        fetched.to_str().unwrap(),
    ]);
    let original = std::fs::read(&fetched).unwrap();
    assert_eq!(original.len(), 1 << 20);
    lab.ok(&["wal-push", "--source", "main", fetched.to_str().unwrap()]);

    // Different bytes under the same name: refused, the archived copy kept.
    let mut other = original.clone();
    other[500_000] ^= 0xFF;
    std::fs::write(&fetched, &other).unwrap();
    let out = lab.run(&["wal-push", "--source", "main", fetched.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different content"));
    assert_eq!(std::fs::read(lab.wal_object(&seg)).unwrap(), stored);

    // A segment that is not archived: exit 1 and not a word (Postgres asks for it at the end).
    let out = lab.run(&[
        "wal-fetch",
        "--source",
        "main",
        "0000000100000000000000FF",
        work.join("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A damaged archive: 126, so Postgres stops recovery instead of ending it early.
    let mut damaged = stored.clone();
    damaged[100] ^= 1;
    std::fs::write(lab.wal_object(&seg), &damaged).unwrap();
    let out = lab.run(&[
        "wal-fetch",
        "--source",
        "main",
        &seg,
        work.join("y").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(126));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("wal/main/{seg}")), "{err}");
    assert!(!work.join("y").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_table_and_one_tenants_rows_come_back_while_the_rest_keeps_its_changes() {
    let lab = Lab::new();
    let db = lab.cluster("db").await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE SCHEMA billing;
         CREATE TABLE billing.invoices (id int PRIMARY KEY, tenant_id int NOT NULL, amount numeric(12,2), note text);
         INSERT INTO billing.invoices SELECT i, i % 10, i * 1.25, CASE WHEN i % 3 = 0 THEN NULL ELSE 'line ' || i || E'\\ttab \"q\"' END FROM generate_series(1, 20000) i;
         CREATE TABLE billing.tokens (id int PRIMARY KEY, token bytea, issued timestamptz);
         INSERT INTO billing.tokens SELECT i, sha256(i::text::bytea), '2026-01-01'::timestamptz + i * interval '1 minute' FROM generate_series(1, 3000) i;
         CREATE TABLE public.jobs (id int PRIMARY KEY, state text);
         INSERT INTO public.jobs SELECT i, 'done' FROM generate_series(1, 100) i;",
    )
    .await;
    let tokens_at_backup = table_sum(&c, "billing.tokens").await;
    let tenant_at_backup = c
        .query_one("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM billing.invoices t WHERE tenant_id = 7", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    let backup = lab.json(&[
        "pg",
        "table-backup",
        "--dsn",
        &db.dsn(),
        "--table",
        "billing.*",
    ]);
    assert_eq!(backup["entries"], 2, "only the billing tables: {backup}");

    // Later: new work everywhere, then two accidents.
    exec(
        &c,
        "INSERT INTO billing.invoices VALUES (20001, 3, 9.99, 'after the backup');
         UPDATE public.jobs SET state = 'archived' WHERE id <= 10;
         DROP TABLE billing.tokens;
         DELETE FROM billing.invoices WHERE tenant_id = 7;",
    )
    .await;
    let jobs_now = table_sum(&c, "public.jobs").await;

    let id = backup["id"].as_str().unwrap();
    lab.ok(&[
        "pg",
        "table-restore",
        id,
        "--dsn",
        &db.dsn(),
        "--table",
        "billing.tokens",
    ]);
    lab.ok(&[
        "pg",
        "table-restore",
        id,
        "--dsn",
        &db.dsn(),
        "--table",
        "billing.invoices",
        "--where",
        "tenant_id = 7",
    ]);
    assert_eq!(table_sum(&c, "billing.tokens").await, tokens_at_backup);
    let tenant_now: String = c
        .query_one("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM billing.invoices t WHERE tenant_id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tenant_now, tenant_at_backup);
    let (rows, late): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE id = 20001) FROM billing.invoices",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, late), (20001, 1), "later rows kept");
    assert_eq!(table_sum(&c, "public.jobs").await, jobs_now);

    // Into another schema, for inspection beside the live table.
    lab.ok(&[
        "pg",
        "table-restore",
        id,
        "--dsn",
        &db.dsn(),
        "--table",
        "billing.invoices",
        "--into-schema",
        "inspect",
    ]);
    let n: i64 = c
        .query_one("SELECT count(*) FROM inspect.invoices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20000);
    // A restore that would duplicate rows fails and names the table; nothing half-done.
    let out = lab.run(&[
        "pg",
        "table-restore",
        id,
        "--dsn",
        &db.dsn(),
        "--table",
        "billing.tokens",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("billing.tokens"));
    assert_eq!(table_sum(&c, "billing.tokens").await, tokens_at_backup);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_catalog_keeps_the_newest_revision_and_filters_like_the_repository() {
    use resilience_core::catalog::{BackupKind, BackupRecord, BackupStatus, Catalog, CatalogQuery};
    use resilience_core::source::SourceDescriptor;
    use resilience_pg::catalog::PgCatalog;

    let lab = Lab::new();
    let db = lab.cluster("db").await;
    let cat = PgCatalog::connect(&db.dsn(), "audit trail").await.unwrap();
    let t0 = chrono::Utc::now();
    let record =
        |id: &str, source: &str, revision: u32, status: BackupStatus, minutes: i64| BackupRecord {
            id: id.into(),
            revision,
            source: SourceDescriptor {
                id: source.into(),
                kind: "postgres".into(),
            },
            kind: BackupKind::Full,
            status,
            error: None,
            started_at: t0 + chrono::Duration::minutes(minutes),
            finished_at: None,
            logical_bytes: 10,
            stored_bytes: 5,
            new_bytes: 5,
            entries: 1,
            manifest_checksum: None,
            tier: Default::default(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            legal_hold: revision == 3,
            verifications: vec![],
            source_metadata: Default::default(),
            parent: None,
            host: "h".into(),
            updated_at: t0 + chrono::Duration::seconds(revision as i64),
            salvage: None,
        };
    cat.put(&record("a", "main", 1, BackupStatus::Running, 0))
        .await
        .unwrap();
    cat.put(&record("a", "main", 3, BackupStatus::Succeeded, 0))
        .await
        .unwrap();
    // A late, older revision never replaces a newer one.
    cat.put(&record("a", "main", 2, BackupStatus::Failed, 0))
        .await
        .unwrap();
    cat.put(&record("b", "other", 1, BackupStatus::Succeeded, 5))
        .await
        .unwrap();
    let a = cat.get("a").await.unwrap().unwrap();
    assert_eq!(
        (a.revision, a.status, a.legal_hold),
        (3, BackupStatus::Succeeded, true)
    );
    assert!(cat.get("zzz").await.unwrap().is_none());
    let main = cat
        .list(&CatalogQuery {
            source: Some("main".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        main.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    let later = cat
        .list(&CatalogQuery {
            since: Some(t0 + chrono::Duration::minutes(1)),
            statuses: vec![BackupStatus::Succeeded],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        later.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    let c = db.client().await;
    let revisions: i64 = c
        .query_one(
            "SELECT count(*) FROM \"audit trail\".backup_revisions WHERE id = 'a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(revisions, 3, "every revision is kept for the audit trail");
}
