//! Applying retention decisions: expiring backups, moving them between the hot and the cold
//! tier, and legal holds.
//!
//! Expiring a backup writes a catalog revision with status `expired` (the record stays, for
//! the audit trail) and removes its manifest; its data becomes garbage for [`crate::ops::prune`].

use serde::Serialize;

use crate::catalog::{BackupStatus, Catalog};
use crate::error::{Error, Result};
use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::Repository;
use crate::retention::{Action, RetentionPlan};
use crate::sink::PutMode;

/// The journal object an expiry writes before it deletes a backup's manifest, and removes
/// once the backup's record says `expired`.
pub(crate) fn expiry_journal_key(id: &str) -> String {
    format!("expiring/{id}")
}

/// Removes a lock, leaving it to expire if the store refuses.
pub(crate) async fn release_quietly(lock: RepoLock, what: &str) {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not remove the {what} lock; it will expire");
    }
}

/// What applying a plan did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ForgetReport {
    /// Backups expired.
    pub expired: Vec<String>,
    /// Backups moved to the cold tier.
    pub moved_cold: Vec<String>,
    /// Backups the plan sends to the cold tier that stay where they are (no cold store given).
    pub cold_pending: Vec<String>,
    /// Backups whose record says `failed` or `expired` but whose manifest is still there:
    /// marked expired, their manifest (and so their data) left in place. Forget deletes only
    /// the manifests of backups it sees succeeded, so a forged or mistaken status never
    /// deletes data; such a snapshot can be reviewed and restored.
    pub manifests_left: Vec<String>,
    /// Backups the plan expires that stay, because a revision of their record places a legal
    /// hold (whatever the current revision says: only releasing the hold, which deletes those
    /// revisions, lets them go).
    pub kept_held: Vec<String>,
    /// Backups the plan expires that stay, because their current record disagrees with their
    /// manifest on what was backed up or when (a forged or damaged revision: the retention
    /// decision was made on facts the snapshot does not bear out).
    pub kept_disagreeing: Vec<String>,
    /// Backups the plan expires whose manifest the store's object lock still holds: they stay
    /// `succeeded` and restorable, with all their data, until the date; a forget after it
    /// expires them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_locked: Vec<LockedBackup>,
}

/// A backup that retention expires and the store's object lock keeps until a date.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockedBackup {
    /// The backup.
    pub id: String,
    /// Its manifest's retain-until date.
    pub until: chrono::DateTime<chrono::Utc>,
}

impl Repository {
    /// Expires the backups a plan deletes. Takes the maintenance lock, so two forgets or a
    /// forget and a prune never interleave; backups keep running.
    pub async fn forget(&self, plan: &RetentionPlan) -> Result<ForgetReport> {
        let lock = self
            .lock_fresh(LockKind::Maintenance, "forget", None)
            .await?;
        let result = match self.lock_catalog("forget").await {
            Ok(catalog_lock) => {
                let result = self.forget_locked(plan, &lock, &catalog_lock).await;
                release_quietly(catalog_lock, "catalog").await;
                result
            }
            Err(e) => Err(e),
        };
        release_quietly(lock, "forget").await;
        result
    }

    /// Takes the catalog lock, which serializes read-modify-writes of catalog records (holds,
    /// verification and drill records, expiry) so that none is lost; waits up to a minute (or
    /// the repository's lock wait, if longer) for another holder.
    pub(crate) async fn lock_catalog(&self, purpose: &str) -> Result<RepoLock> {
        let settings = crate::repo::lock::LockSettings {
            wait: self
                .lock_settings
                .wait
                .max(std::time::Duration::from_secs(60)),
            ..self.lock_settings
        };
        RepoLock::acquire(
            self.sink.clone(),
            self.clock.clone(),
            LockKind::Catalog,
            purpose,
            None,
            settings,
        )
        .await
    }

    /// Records a drill in its snapshot's verification history, under the catalog lock.
    pub async fn record_drill(&self, report: &crate::drill::DrillReport) -> Result<()> {
        let lock = self.lock_catalog("drill").await?;
        let result = match lock.check() {
            Ok(()) => crate::drill::record(&self.catalog(), report, self.clock.now()).await,
            Err(e) => Err(e),
        };
        release_quietly(lock, "catalog").await;
        result
    }

    async fn forget_locked(
        &self,
        plan: &RetentionPlan,
        lock: &RepoLock,
        catalog_lock: &RepoLock,
    ) -> Result<ForgetReport> {
        let catalog = self.catalog();
        let mut report = ForgetReport::default();
        for d in &plan.decisions {
            match d.action {
                Action::Keep => {}
                Action::Cold => match &self.cold {
                    Some(_) => {
                        let record = catalog.get(&d.id).await?;
                        if record.is_some_and(|r| {
                            r.tier != crate::catalog::Tier::Cold
                                && r.status == BackupStatus::Succeeded
                        }) {
                            lock.check()?;
                            catalog_lock.check()?;
                            self.move_to_cold(&d.id).await?;
                            report.moved_cold.push(d.id.clone());
                        }
                    }
                    None => report.cold_pending.push(d.id.clone()),
                },
                Action::Delete => {
                    let Some(mut record) = catalog.get(&d.id).await? else {
                        continue;
                    };
                    let holds = catalog.hold_revisions(&d.id).await?;
                    if record.legal_hold || !holds.is_empty() {
                        tracing::warn!(backup = %d.id, revisions = ?holds, "not expiring a backup under legal hold");
                        report.kept_held.push(d.id.clone());
                        continue;
                    }
                    if record.status == BackupStatus::Running {
                        return Err(Error::BackupStatus {
                            refused: "refusing to expire it",
                            backup: d.id.clone(),
                            status: record.status,
                        });
                    }
                    lock.check()?;
                    catalog_lock.check()?;
                    // The manifest goes first: a sink that refuses deletes (append-only) then
                    // changes nothing but a journal object. The journal, written before it,
                    // says an expiry is under way: an interruption before the `expired`
                    // revision leaves a record whose manifest is gone, which verify reports
                    // as an expiry to finish (not as damage) and a second forget finishes.
                    let store = if record.tier == self.tier {
                        self
                    } else {
                        self.cold
                            .as_deref()
                            .filter(|c| c.tier == record.tier)
                            .ok_or_else(|| Error::TierNotAttached {
                                operation: "expire",
                                backup: d.id.clone(),
                                tier: record.tier,
                            })?
                    };
                    let manifest = crate::format::snapshot::manifest_key(&d.id);
                    if record.status == BackupStatus::Succeeded {
                        if let Some(why) = store.disagreement_with_manifest(&record).await? {
                            tracing::warn!(backup = %d.id, %why, "not expiring a backup whose record disagrees with its manifest");
                            report.kept_disagreeing.push(d.id.clone());
                            continue;
                        }
                        let journal = expiry_journal_key(&d.id);
                        store
                            .sink
                            .put(
                                &journal,
                                d.id.clone().into_bytes().into(),
                                PutMode::Overwrite,
                            )
                            .await?;
                        // Already gone after a forget interrupted past this point.
                        match store.delete_quietly(&manifest).await {
                            Ok(()) => {}
                            // Under the store's object lock: planned, its data stays until
                            // then. The journal stays too, so maintenance no longer extends
                            // the manifest's retention, and a forget after the date finishes.
                            Err(Error::Sink(e)) if e.locked_until().is_some() => {
                                let until = e.locked_until().expect("checked");
                                tracing::info!(backup = %d.id, %until, "not expiring a backup under object lock yet");
                                report.kept_locked.push(LockedBackup {
                                    id: d.id.clone(),
                                    until,
                                });
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    } else {
                        match store.sink.head(&manifest).await {
                            Ok(_) => {
                                tracing::warn!(backup = %d.id, status = %record.status, "its record says it is not restorable, but its manifest is there: left in place");
                                report.manifests_left.push(d.id.clone());
                            }
                            Err(e) if e.is_not_found() => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if record.status != BackupStatus::Expired {
                        record.revision += 1;
                        record.status = BackupStatus::Expired;
                        record.updated_at = self.clock.now();
                        if !std::ptr::eq(store, self) {
                            store.catalog().put(&record).await?;
                        }
                        catalog.put(&record).await?;
                    }
                    store.delete_quietly(&expiry_journal_key(&d.id)).await?;
                    report.expired.push(d.id.clone());
                }
            }
        }
        Ok(report)
    }

    /// What `record` says that its manifest does not (source, kind of source, start time, or a
    /// finish before the manifest's), if anything. A manifest that is gone or damaged is no disagreement: expiring
    /// such a backup deletes nothing more.
    async fn disagreement_with_manifest(
        &self,
        record: &crate::catalog::BackupRecord,
    ) -> Result<Option<String>> {
        let key = crate::format::snapshot::manifest_key(&record.id);
        let bytes = match self.sink.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let manifest = match self.open_manifest(&key, &bytes) {
            Ok(m) => m,
            Err(Error::Corrupt { .. } | Error::UnsupportedFormat { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut differences = Vec::new();
        if manifest.source != record.source {
            differences.push(format!(
                "source {} ({}) vs {} ({})",
                record.source.id, record.source.kind, manifest.source.id, manifest.source.kind
            ));
        }
        if manifest.started_at != record.started_at {
            differences.push(format!(
                "started {} vs {}",
                record.started_at, manifest.started_at
            ));
        }
        // The record is finished after the manifest is written, never before.
        if record.finished_at.is_some_and(|f| f < manifest.finished_at) {
            differences.push(format!(
                "finished {:?} vs {}",
                record.finished_at, manifest.finished_at
            ));
        }
        Ok((!differences.is_empty()).then(|| {
            format!(
                "the record says {}; the manifest says otherwise",
                differences.join(", ")
            )
        }))
    }

    /// Places or releases a legal hold on a backup. Releasing writes a revision without the
    /// hold and then deletes every revision that places it: a hold is in force while any such
    /// revision is present, so a writer that can only add objects cannot lift one. Releasing
    /// therefore needs the maintenance credential (delete permission); without it the release
    /// fails, naming the revision that stays, and the hold stays in force.
    pub async fn set_legal_hold(
        &self,
        spec: &str,
        hold: bool,
    ) -> Result<crate::catalog::BackupRecord> {
        let lock = self.lock_catalog("legal hold").await?;
        let result = self.set_legal_hold_locked(spec, hold, &lock).await;
        release_quietly(lock, "catalog").await;
        result
    }

    async fn set_legal_hold_locked(
        &self,
        spec: &str,
        hold: bool,
        lock: &RepoLock,
    ) -> Result<crate::catalog::BackupRecord> {
        let catalog = self.catalog();
        let mut record = match catalog.get(spec).await? {
            Some(r) => r,
            None => self.resolve_snapshot(spec, None).await?,
        };
        match record.status {
            BackupStatus::Succeeded => {}
            BackupStatus::Running if !hold => {}
            status => {
                if hold {
                    return Err(Error::BackupStatus {
                        refused: "cannot place a legal hold on it",
                        backup: record.id.clone(),
                        status,
                    });
                }
            }
        }
        if record.legal_hold != hold {
            record.revision += 1;
            record.legal_hold = hold;
            record.updated_at = self.clock.now();
            lock.check()?;
            catalog.put(&record).await?;
        }
        if !hold {
            for key in catalog.hold_revisions(&record.id).await? {
                lock.check()?;
                catalog
                    .delete_revision(&key)
                    .await
                    .map_err(|e| Error::HoldNotReleased {
                        backup: record.id.clone(),
                        revision: key.clone(),
                        source: Box::new(e),
                    })?;
            }
        }
        Ok(record)
    }
}

/// What moving a snapshot between tiers copied.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TierMove {
    /// The snapshot.
    pub snapshot: String,
    /// Packs copied (those the destination already had are not).
    pub packs_copied: usize,
    /// Bytes copied.
    pub bytes_copied: u64,
}

impl Repository {
    /// Attaches the cold tier kept in `sink` (another bucket, a cheaper storage class),
    /// initializing it with this repository's configuration and wrapped keys if it is empty.
    pub async fn attach_cold(
        mut self,
        sink: std::sync::Arc<dyn crate::sink::Sink>,
    ) -> Result<Repository> {
        match Repository::read_config(sink.as_ref()).await {
            Ok(cfg) if cfg.id == self.config.id => {}
            Ok(cfg) => {
                return Err(Error::NotColdTier {
                    location: sink.location(),
                    found: cfg.id,
                    expected: self.config.id.clone(),
                })
            }
            Err(Error::RepositoryNotFound { .. }) => {
                use futures::TryStreamExt;
                let keys: Vec<String> = self
                    .sink
                    .list("keys/")
                    .map_ok(|m| m.key)
                    .try_collect()
                    .await?;
                for key in keys.iter().map(String::as_str).chain(["config"]) {
                    let bytes = self.sink.get(key).await?;
                    crate::format::object::check_checksum(key, &bytes)?;
                    crate::repo::put_idempotent(sink.as_ref(), key, bytes).await?;
                }
            }
            Err(e) => return Err(e),
        }
        let cold = Repository {
            sink,
            config: self.config.clone(),
            keys: self.keys.clone(),
            clock: self.clock.clone(),
            lock_settings: self.lock_settings,
            tier: crate::catalog::Tier::Cold,
            cold: None,
        };
        self.cold = Some(std::sync::Arc::new(cold));
        Ok(self)
    }

    /// The attached cold tier.
    pub fn cold_tier(&self) -> Option<&Repository> {
        self.cold.as_deref()
    }

    /// Moves a snapshot to the attached cold tier: copies the packs it needs that the cold store
    /// lacks (checking each checksum), indexes them there, copies its manifest and catalog
    /// record, and only then records the new tier and removes the hot manifest (a later hot
    /// prune frees what no hot snapshot needs).
    pub async fn move_to_cold(&self, spec: &str) -> Result<TierMove> {
        let cold = self.cold.clone().ok_or(Error::NoColdTier)?;
        self.move_between_into(spec, &cold, crate::catalog::Tier::Cold, &self.catalog())
            .await
    }

    /// Brings a snapshot back from the cold tier to the hot one.
    pub async fn move_to_hot(&self, spec: &str) -> Result<TierMove> {
        let cold = self.cold.clone().ok_or(Error::NoColdTier)?;
        let hot = Repository {
            cold: None,
            ..self.clone()
        };
        cold.move_between_into(spec, &hot, crate::catalog::Tier::Hot, &self.catalog())
            .await
    }

    /// Copies snapshot `spec` from this store to `to`; `home` is the catalog of record (the
    /// hot one, which is either this store's or `to`'s).
    async fn move_between_into(
        &self,
        spec: &str,
        to: &Repository,
        tier: crate::catalog::Tier,
        home: &crate::catalog::RepoCatalog,
    ) -> Result<TierMove> {
        use futures::TryStreamExt;
        use std::collections::BTreeMap;
        let mut record = home
            .get(spec)
            .await?
            .ok_or_else(|| Error::SnapshotNotFound {
                id: spec.to_owned(),
            })?;
        if record.tier == tier {
            // A move interrupted after the catalog said so leaves the source's manifest: the
            // destination holds its copy, so it goes now.
            let manifest_key = crate::format::snapshot::manifest_key(&record.id);
            match to.sink.head(&manifest_key).await {
                Ok(_) => self.sink.delete(&manifest_key).await?,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(TierMove {
                snapshot: record.id,
                ..Default::default()
            });
        }
        if record.status != BackupStatus::Succeeded {
            return Err(Error::BackupStatus {
                refused: "only succeeded backups move between tiers",
                backup: record.id.clone(),
                status: record.status,
            });
        }
        let manifest_key = crate::format::snapshot::manifest_key(&record.id);
        let manifest = self.load_manifest(&record).await?;
        let manifest_bytes = self.sink.get(&manifest_key).await?;
        let index = self.load_read_index().await?;
        let mut needed: BTreeMap<crate::format::pack::PackId, crate::format::index::PackRecord> =
            BTreeMap::new();
        let mut add = |id: &crate::format::blob::BlobId| -> Result<()> {
            let loc = index
                .lookup(id)
                .ok_or(Error::BlobMissing { blob: id.to_hex() })?;
            let size = index
                .packs()
                .iter()
                .find(|p| p.id == loc.pack)
                .map(|p| p.size)
                .unwrap_or(0);
            let rec = needed
                .entry(loc.pack)
                .or_insert_with(|| crate::format::index::PackRecord {
                    id: loc.pack,
                    size,
                    key_id: loc.key_id,
                    blobs: Vec::new(),
                });
            if !rec.blobs.iter().any(|b| b.id == *id) {
                rec.blobs.push(crate::format::pack::PackedBlob {
                    id: *id,
                    kind: loc.kind,
                    offset: loc.offset,
                    length: loc.length,
                    raw_len: loc.raw_len,
                });
            }
            Ok(())
        };
        for r in &manifest.tree {
            add(&r.id)?;
        }
        let mut tree = crate::ops::restore::TreeReader::new(self.clone(), &index, &manifest.tree);
        while let Some(rec) = tree.next().await? {
            for b in rec.content.blobs() {
                add(&b.id)?;
            }
        }
        let present: std::collections::HashMap<String, u64> = to
            .sink
            .list("data/")
            .map_ok(|m| (m.key, m.size))
            .try_collect()
            .await?;
        let mut moved = TierMove {
            snapshot: record.id.clone(),
            ..Default::default()
        };
        for p in needed.values() {
            let key = crate::format::pack::pack_key(&p.id);
            if present.get(&key) == Some(&p.size) {
                continue;
            }
            let bytes = self.sink.get(&key).await?;
            crate::format::object::check_checksum(&key, &bytes)?;
            let len = bytes.len() as u64;
            crate::repo::put_idempotent(to.sink.as_ref(), &key, bytes).await?;
            let written = to.sink.head(&key).await?;
            if written.size != len {
                return Err(Error::corrupt(
                    format!("{} in {}", key, to.sink.location()),
                    "copy has the wrong size",
                ));
            }
            moved.packs_copied += 1;
            moved.bytes_copied += len;
        }
        let packs: Vec<_> = needed.into_values().collect();
        to.write_index(&packs).await?;
        crate::repo::put_idempotent(to.sink.as_ref(), &manifest_key, manifest_bytes).await?;
        // The catalog of record is one of the two stores' catalogs: the destination learns of
        // the move first, then the source, so each store's prune sees its own snapshots. A move
        // interrupted between the two left the destination's revision: it is adopted, not
        // written again.
        match to.catalog().get(&record.id).await? {
            Some(theirs) if theirs.revision > record.revision && theirs.tier == tier => {
                record = theirs;
            }
            theirs => {
                record.revision = record.revision.max(theirs.map_or(0, |r| r.revision)) + 1;
                record.tier = tier;
                record.updated_at = self.clock.now();
                to.catalog().put(&record).await?;
            }
        }
        self.catalog().put(&record).await?;
        self.sink.delete(&manifest_key).await?;
        Ok(moved)
    }
}
