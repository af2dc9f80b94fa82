//! RDS and Aurora snapshots as backups, against moto's RDS and KMS
//! (`RESILIENCE_TEST_MOTO_ENDPOINT`, started by `scripts/test`; these tests fail, not skip,
//! without it). moto keeps metadata only: there is no database behind an instance, so what a
//! restore holds cannot be checked here — these tests check what RDS says (snapshots, copies,
//! their KMS keys, instances and their status) and what the catalog records.
//!
//! Every test makes instances and clusters of its own (moto's state is shared by the tests
//! running at once), in regions us-east-1 and eu-west-1.

use std::process::Command;
use std::sync::Arc;

use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery};
use resilience_core::drill::{self, DrillOptions};
use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{self, KeepRules, StandardPolicy};
use resilience_core::sink::MemorySink;
use resilience_objstore::rds::{
    delete_expired_snapshots, pending_deletions, rds_record, restore, take_snapshot, RdsClient,
    RdsConfig, RdsDrill, RdsError, RdsResource, RdsSource, SnapshotOptions, WaitPolicy,
};
use resilience_objstore::AwsCredentials;
use zeroize::Zeroizing;

const HOME: &str = "us-east-1";
const AWAY: &str = "eu-west-1";

fn moto() -> String {
    std::env::var("RESILIENCE_TEST_MOTO_ENDPOINT").expect(
        "RESILIENCE_TEST_MOTO_ENDPOINT is not set: run the tests through scripts/test, or \
         start moto with scripts/moto.sh start DIR and source DIR/env",
    )
}

/// Runs `code` with boto3 (which moto installs) against moto; `c(service, region)` makes a
/// client. Returns its stdout, trimmed.
fn boto(code: &str) -> String {
    let prelude = "import boto3, sys\n\
        def c(svc, region): return boto3.client(svc, endpoint_url=sys.argv[1], \
        region_name=region, aws_access_key_id='moto', aws_secret_access_key='moto')\n";
    let out = Command::new("python3")
        .args(["-c", &format!("{prelude}{code}"), &moto()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}\n{code}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A name no other test (or earlier run on the same moto) uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}", nanos % 1_000_000_000_000)
}

fn create_instance(id: &str) {
    boto(&format!(
        "c('rds', '{HOME}').create_db_instance(DBInstanceIdentifier='{id}', \
         DBInstanceClass='db.t3.micro', Engine='postgres', AllocatedStorage=20, \
         MasterUsername='app', MasterUserPassword='password1', BackupRetentionPeriod=7)"
    ));
}

fn create_cluster(id: &str) {
    boto(&format!(
        "c('rds', '{HOME}').create_db_cluster(DBClusterIdentifier='{id}', \
         Engine='aurora-postgresql', MasterUsername='app', MasterUserPassword='password1')"
    ));
}

/// A KMS key in `region`; its ARN.
fn kms_key(region: &str) -> String {
    boto(&format!(
        "print(c('kms', '{region}').create_key(Description='rds copies')['KeyMetadata']['Arn'])"
    ))
}

fn client(region: &str) -> RdsClient {
    RdsClient::new(RdsConfig {
        endpoint: moto(),
        region: region.into(),
        credentials: AwsCredentials {
            access_key_id: "moto".into(),
            secret_access_key: Zeroizing::new("moto".into()),
            session_token: None,
        },
    })
    .unwrap()
}

fn fast() -> WaitPolicy {
    WaitPolicy {
        poll: std::time::Duration::from_millis(100),
        deadline: std::time::Duration::from_secs(120),
    }
}

fn source(resource: RdsResource, copy: Option<(&str, &str)>, automated: bool) -> RdsSource {
    RdsSource::new(
        client(HOME),
        resource,
        SnapshotOptions {
            automated,
            copy_to_region: copy.map(|(r, _)| r.to_owned()),
            kms_key_id: copy.map(|(_, k)| k.to_owned()),
            wait: fast(),
        },
    )
}

async fn repo() -> Repository {
    Repository::init(
        Arc::new(MemorySink::new()),
        &KeyFileProvider::from_key([7; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap()
}

/// Whether the snapshot `id` exists in `region`.
async fn exists(region: &str, id: &str, cluster: bool) -> bool {
    match client(region).describe_snapshot(id, cluster).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => panic!("describe {id}: {e}"),
    }
}

#[tokio::test]
async fn an_instance_snapshot_is_recorded_with_its_copy_encrypted_in_another_region() {
    let db = unique("orders");
    create_instance(&db);
    let key = kms_key(AWAY);
    let repo = repo().await;
    let src = source(RdsResource::Instance(db.clone()), Some((AWAY, &key)), false);
    let report = take_snapshot(&repo, &src, Default::default(), None)
        .await
        .unwrap();
    let r = &report.record;
    assert_eq!(r.source.id, format!("rds:{db}"));
    assert_eq!(r.source.kind, "rds");
    assert_eq!(r.status, BackupStatus::Succeeded);
    assert_eq!(r.entries, 0);
    assert!(r.finished_at.unwrap() >= r.started_at);
    let rds = rds_record(r).unwrap();
    assert_eq!(rds.resource, RdsResource::Instance(db.clone()));
    assert_eq!(rds.snapshot_type, "manual");
    assert_eq!(rds.engine, "postgres");
    assert_eq!(rds.allocated_storage_gib, Some(20));
    assert!(rds.snapshot.owned);
    assert_eq!(rds.snapshot.region, HOME);
    assert_eq!(rds.snapshot.status, "available");
    assert!(
        rds.snapshot.arn.starts_with("arn:aws:rds:us-east-1:"),
        "{}",
        rds.snapshot.arn
    );
    assert_eq!(r.source_metadata["snapshot_arn"], rds.snapshot.arn.as_str());
    let copy = rds.copy.as_ref().expect("a copy");
    assert_eq!(copy.region, AWAY);
    assert!(
        copy.arn.starts_with("arn:aws:rds:eu-west-1:"),
        "{}",
        copy.arn
    );
    assert_eq!(copy.kms_key_id.as_deref(), Some(key.as_str()));
    assert_eq!(r.source_metadata["copy_arn"], copy.arn.as_str());
    // RDS in the other region says the same.
    let there = client(AWAY)
        .describe_snapshot(&copy.id, false)
        .await
        .unwrap();
    assert_eq!(there.kms_key_id.as_deref(), Some(key.as_str()));
    assert!(there.encrypted);
    assert_eq!(there.status, "available");
    // The record in the catalog is the one returned.
    let stored = repo.catalog().get(&r.id).await.unwrap().unwrap();
    assert_eq!(rds_record(&stored).unwrap(), rds);
}

#[tokio::test]
async fn a_cluster_snapshot_is_recorded_and_copied() {
    let cl = unique("aurora");
    create_cluster(&cl);
    let key = kms_key(AWAY);
    let repo = repo().await;
    let src = source(RdsResource::Cluster(cl.clone()), Some((AWAY, &key)), false);
    let report = take_snapshot(&repo, &src, Default::default(), None)
        .await
        .unwrap();
    let rds = rds_record(&report.record).unwrap();
    assert_eq!(rds.resource, RdsResource::Cluster(cl.clone()));
    assert_eq!(rds.engine, "aurora-postgresql");
    assert!(
        rds.snapshot.arn.contains(":cluster-snapshot:"),
        "{}",
        rds.snapshot.arn
    );
    let copy = rds.copy.unwrap();
    assert!(exists(AWAY, &copy.id, true).await);
    assert!(exists(HOME, &rds.snapshot.id, true).await);
}

/// moto cannot copy an automated snapshot across regions (it reads the snapshot's name from
/// the ARN's last `:` field, which drops the `rds:` of an automated snapshot's name), so the
/// copy of an automated snapshot is not tested here; its identifier is
/// (`copies_of_automated_snapshots_get_a_valid_identifier`).
#[tokio::test]
async fn automated_picks_the_newest_automated_snapshot_and_expiry_leaves_it_to_aws() {
    let db = unique("auto");
    create_instance(&db);
    // moto makes one automated snapshot when an instance with a backup retention period is
    // created (and no more: it has no backup window): that one must be picked.
    let automated = client(HOME)
        .list_snapshots(&RdsResource::Instance(db.clone()), "automated")
        .await
        .unwrap();
    assert_eq!(automated.len(), 1, "{automated:?}");
    assert!(automated[0].identifier.starts_with("rds:"));
    let repo = repo().await;
    let src = source(RdsResource::Instance(db.clone()), None, true);
    let report = take_snapshot(&repo, &src, Default::default(), None)
        .await
        .unwrap();
    let rds = rds_record(&report.record).unwrap();
    assert_eq!(rds.snapshot.id, automated[0].identifier);
    assert_eq!(rds.snapshot_type, "automated");
    assert!(
        !rds.snapshot.owned,
        "an automated snapshot is AWS' to expire"
    );
    // No manual snapshot was taken.
    assert!(client(HOME)
        .list_snapshots(&RdsResource::Instance(db.clone()), "manual")
        .await
        .unwrap()
        .is_empty());

    // Expired: nothing for resilience to delete, and the automated snapshot stays.
    let second = take_snapshot(
        &repo,
        &source(RdsResource::Instance(db.clone()), None, false),
        Default::default(),
        None,
    )
    .await
    .unwrap();
    let policy = StandardPolicy {
        default: KeepRules {
            keep_last: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let plan = retention::plan(&policy, &records, repo.clock().now());
    let forgot = repo.forget(&plan).await.unwrap();
    assert_eq!(forgot.expired, vec![report.record.id.clone()]);
    assert!(pending_deletions(&repo).await.unwrap().is_empty());
    let aws = delete_expired_snapshots(&repo, &client(HOME))
        .await
        .unwrap();
    assert!(aws.deleted.is_empty() && aws.failed.is_empty(), "{aws:?}");
    assert!(exists(HOME, &rds.snapshot.id, false).await);
    assert!(
        exists(
            HOME,
            &rds_record(&second.record).unwrap().snapshot.id,
            false
        )
        .await
    );
}

#[tokio::test]
async fn forget_expires_old_snapshots_in_both_regions_keeps_held_ones_and_finishes_after_a_kill() {
    let db = unique("ledger");
    create_instance(&db);
    let key = kms_key(AWAY);
    let repo = repo().await;
    let src = source(RdsResource::Instance(db.clone()), Some((AWAY, &key)), false);
    let mut taken = Vec::new();
    for _ in 0..4 {
        let report = take_snapshot(&repo, &src, Default::default(), None)
            .await
            .unwrap();
        taken.push((
            report.record.id.clone(),
            rds_record(&report.record).unwrap(),
        ));
    }
    // The oldest is held.
    repo.set_legal_hold(&taken[0].0, true).await.unwrap();
    let policy = StandardPolicy {
        default: KeepRules {
            keep_last: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let plan = retention::plan(&policy, &records, repo.clock().now());
    let forgot = repo.forget(&plan).await.unwrap();
    let mut expired = forgot.expired.clone();
    expired.sort();
    let mut want = vec![taken[1].0.clone(), taken[2].0.clone()];
    want.sort();
    assert_eq!(expired, want);

    // Killed here: the catalog says expired, AWS still has every snapshot.
    for (_, rds) in &taken {
        assert!(exists(HOME, &rds.snapshot.id, false).await);
    }
    assert_eq!(pending_deletions(&repo).await.unwrap().len(), 2);
    // One of them is already gone (deleted by hand): that is fine.
    client(AWAY)
        .delete_snapshot(&taken[1].1.copy.as_ref().unwrap().id, false)
        .await
        .unwrap();

    // The next forget finishes.
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let plan = retention::plan(&policy, &records, repo.clock().now());
    repo.forget(&plan).await.unwrap();
    let aws = delete_expired_snapshots(&repo, &client(HOME))
        .await
        .unwrap();
    assert_eq!(aws.deleted.len(), 3, "{aws:?}");
    assert_eq!(aws.already_gone.len(), 1, "{aws:?}");
    assert!(aws.failed.is_empty(), "{aws:?}");
    for (_, rds) in &taken[1..3] {
        assert!(!exists(HOME, &rds.snapshot.id, false).await);
        assert!(!exists(AWAY, &rds.copy.as_ref().unwrap().id, false).await);
    }
    for (_, rds) in [&taken[0], &taken[3]] {
        assert!(exists(HOME, &rds.snapshot.id, false).await);
        assert!(exists(AWAY, &rds.copy.as_ref().unwrap().id, false).await);
    }
    // Recorded: nothing left to do, and a third run does nothing.
    assert!(pending_deletions(&repo).await.unwrap().is_empty());
    let again = delete_expired_snapshots(&repo, &client(HOME))
        .await
        .unwrap();
    assert!(again.deleted.is_empty() && again.already_gone.is_empty());
    let expired_record = repo.catalog().get(&taken[1].0).await.unwrap().unwrap();
    assert_eq!(expired_record.status, BackupStatus::Expired);
    assert!(rds_record(&expired_record)
        .unwrap()
        .aws_deleted_at
        .is_some());
}

#[tokio::test]
async fn restore_makes_a_new_instance_from_the_snapshot_or_its_copy() {
    let db = unique("shop");
    create_instance(&db);
    let key = kms_key(AWAY);
    let repo = repo().await;
    let src = source(RdsResource::Instance(db.clone()), Some((AWAY, &key)), false);
    let report = take_snapshot(&repo, &src, Default::default(), None)
        .await
        .unwrap();
    let rds = rds_record(&report.record).unwrap();
    let home = unique("shop-restored");
    let server = restore(
        &client(HOME),
        &report.record.id,
        &rds,
        None,
        &home,
        Some(fast()),
    )
    .await
    .unwrap();
    assert_eq!(server.resource, RdsResource::Instance(home.clone()));
    assert_eq!(server.status, "available");
    assert_eq!(server.engine, "postgres");
    let seen = client(HOME)
        .describe_server(&RdsResource::Instance(home.clone()))
        .await
        .unwrap();
    assert_eq!(seen.status, "available");
    // From the copy in the other region.
    let away = unique("shop-away");
    let server = restore(
        &client(HOME),
        &report.record.id,
        &rds,
        Some(AWAY),
        &away,
        Some(fast()),
    )
    .await
    .unwrap();
    assert_eq!(server.status, "available");
    assert!(client(AWAY)
        .describe_server(&RdsResource::Instance(away.clone()))
        .await
        .is_ok());
    // A region with no copy is refused, naming the regions there are.
    let err = restore(
        &client(HOME),
        &report.record.id,
        &rds,
        Some("ap-south-1"),
        "x",
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no copy in ap-south-1"), "{err}");
}

#[tokio::test]
async fn the_rds_drill_passes_and_leaves_no_instance_behind() {
    let db = unique("drilled");
    create_instance(&db);
    let repo = repo().await;
    let src = source(RdsResource::Instance(db.clone()), None, false);
    let report = take_snapshot(&repo, &src, Default::default(), None)
        .await
        .unwrap();
    let drill = RdsDrill::new(format!("rds:{db}"), client(HOME)).with_wait(fast());
    let result = drill::run(&repo, &drill, None, &DrillOptions::default())
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.checks);
    let names: Vec<&str> = result.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["restore", "engine", "storage", "snapshot",],
        "{:?}",
        result.checks
    );
    assert_eq!(result.snapshot, report.record.id);
    // The scratch instance is gone.
    let scratch: Vec<String> = boto(&format!(
        "print('\\n'.join(i['DBInstanceIdentifier'] for i in c('rds', '{HOME}').describe_db_instances()['DBInstances']))"
    ))
    .lines()
    .filter(|l| l.starts_with("resilience-drill-"))
    .map(str::to_owned)
    .collect();
    let digits: String = report
        .record
        .id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    assert!(
        !scratch
            .iter()
            .any(|s| s.contains(&digits.to_ascii_lowercase())),
        "left behind: {scratch:?}"
    );
    // Recorded in the catalog like any drill.
    let record = repo
        .catalog()
        .get(&report.record.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        record
            .verifications
            .iter()
            .any(|v| v.kind == "drill" && v.ok),
        "{:?}",
        record.verifications
    );
}

#[tokio::test]
async fn an_unknown_instance_is_named_with_aws_error_code() {
    let repo = repo().await;
    let src = source(RdsResource::Instance("no-such-db".into()), None, false);
    let err = take_snapshot(&repo, &src, Default::default(), None)
        .await
        .unwrap_err();
    let text = resilience_core::error::error_chain(&err);
    assert!(text.contains("no-such-db"), "{text}");
    assert!(text.contains("DBInstanceNotFound"), "{text}");
    // Recorded failed; no snapshot was made, so no RDS record.
    let failed = repo
        .catalog()
        .list(&CatalogQuery {
            statuses: vec![BackupStatus::Failed],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]
        .error
        .as_deref()
        .unwrap()
        .contains("DBInstanceNotFound"));
    let code = client(HOME)
        .describe_server(&RdsResource::Instance("no-such-db".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(&code, RdsError::Aws { .. }) && code.is_not_found(),
        "{code}"
    );
}

#[tokio::test]
async fn a_copy_that_fails_leaves_a_failed_record_naming_the_snapshot_which_forget_deletes() {
    let db = unique("halfway");
    create_instance(&db);
    let repo = repo().await;
    let bad_key = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000";
    let src = source(
        RdsResource::Instance(db.clone()),
        Some((AWAY, bad_key)),
        false,
    );
    let err = take_snapshot(&repo, &src, Default::default(), None)
        .await
        .unwrap_err();
    let text = resilience_core::error::error_chain(&err);
    assert!(text.contains("KMSKeyNotAccessibleFault"), "{text}");
    let made = src.made().expect("the snapshot was made");
    assert!(text.contains(&made.snapshot.id), "{text}");
    assert!(exists(HOME, &made.snapshot.id, false).await);
    let failed = repo
        .catalog()
        .list(&CatalogQuery {
            statuses: vec![BackupStatus::Failed],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    let rds = rds_record(&failed[0]).expect("the failed record names the snapshot");
    assert_eq!(rds.snapshot.id, made.snapshot.id);
    assert!(rds.copy.is_none());
    // Never a succeeded record for it.
    assert!(repo
        .catalog()
        .list(&CatalogQuery {
            statuses: vec![BackupStatus::Succeeded],
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty());
    // Retention expires failed backups; their snapshots go with them.
    let policy = StandardPolicy {
        default: KeepRules {
            keep_last: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    repo.forget(&retention::plan(&policy, &records, repo.clock().now()))
        .await
        .unwrap();
    let aws = delete_expired_snapshots(&repo, &client(HOME))
        .await
        .unwrap();
    assert_eq!(aws.deleted.len(), 1, "{aws:?}");
    assert!(!exists(HOME, &made.snapshot.id, false).await);
}
