//! Applying retention decisions to the catalog: expiring backups and legal holds.
//!
//! Expiring a backup writes a catalog revision with status `expired` (the record stays, for
//! the audit trail) and removes its manifest; its data becomes garbage for [`crate::prune`].

use serde::Serialize;

use crate::catalog::{BackupStatus, Catalog};
use crate::error::{Error, Result};
use crate::lock::{LockKind, RepoLock};
use crate::repo::Repository;
use crate::retention::{Action, RetentionPlan};

/// What applying a plan did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ForgetReport {
    /// Backups expired.
    pub expired: Vec<String>,
    /// Backups the plan sends to the cold tier that stay where they are (no cold store given).
    pub cold_pending: Vec<String>,
}

impl Repository {
    /// Expires the backups a plan deletes. Takes the maintenance lock, so two forgets or a
    /// forget and a prune never interleave; backups keep running.
    pub async fn forget(&self, plan: &RetentionPlan) -> Result<ForgetReport> {
        let lock = RepoLock::acquire(self.sink.clone(), self.clock.clone(), LockKind::Maintenance, "forget", None, self.lock_settings).await?;
        let result = self.forget_locked(plan, &lock).await;
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not remove the forget lock; it will expire");
        }
        result
    }

    async fn forget_locked(&self, plan: &RetentionPlan, lock: &RepoLock) -> Result<ForgetReport> {
        let catalog = self.catalog();
        let mut report = ForgetReport::default();
        for d in &plan.decisions {
            match d.action {
                Action::Keep => {}
                Action::Cold => report.cold_pending.push(d.id.clone()),
                Action::Delete => {
                    let Some(mut record) = catalog.get(&d.id).await? else { continue };
                    if record.legal_hold {
                        return Err(Error::Invalid(format!("refusing to expire backup {} under legal hold", d.id)));
                    }
                    if record.status == BackupStatus::Running {
                        return Err(Error::Invalid(format!("refusing to expire running backup {}", d.id)));
                    }
                    lock.check()?;
                    // The manifest goes first: a sink that refuses deletes (append-only) then
                    // changes nothing. An interruption in between leaves a record whose
                    // manifest is gone, which verify names and a second forget finishes.
                    self.sink.delete(&crate::snapshot::manifest_key(&d.id)).await?;
                    if record.status != BackupStatus::Expired {
                        record.revision += 1;
                        record.status = BackupStatus::Expired;
                        record.updated_at = self.clock.now();
                        catalog.put(&record).await?;
                    }
                    report.expired.push(d.id.clone());
                }
            }
        }
        Ok(report)
    }

    /// Places or releases a legal hold on a backup.
    pub async fn set_legal_hold(&self, spec: &str, hold: bool) -> Result<crate::catalog::BackupRecord> {
        let catalog = self.catalog();
        let mut record = match catalog.get(spec).await? {
            Some(r) => r,
            None => self.resolve_snapshot(spec, None).await?,
        };
        if record.legal_hold != hold {
            record.revision += 1;
            record.legal_hold = hold;
            record.updated_at = self.clock.now();
            catalog.put(&record).await?;
        }
        Ok(record)
    }
}
