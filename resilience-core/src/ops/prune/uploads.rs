//! Prune's sweep of unfinished uploads: the multipart uploads (and a local store's staging
//! files) that a writer killed mid-upload leaves behind. No listing shows them, they are never
//! part of the repository, and on S3 their parts are billed until someone aborts them.
//!
//! An upload is discarded once it started longer ago than the grace period (by the store's
//! clock, as plans are judged) and no live lock other than prune's own was taken before it
//! started: a running backup may still complete an upload it began, however long ago, and its
//! lock predates the upload. An upload whose start the store does not say is never discarded.
//! Failures to list or discard are warnings in the report, never a failed prune: the uploads
//! hold no repository data, and the next prune tries again.

use chrono::{DateTime, Utc};

use super::{PruneOptions, PruneReport};
use crate::repo::lock::{LockListing, RepoLock};
use crate::repo::Repository;

impl Repository {
    /// Discards (or, in a dry run, counts) the unfinished uploads that are ripe; records in
    /// `report` what it discarded, what waits and what failed.
    pub(super) async fn discard_unfinished_uploads(
        &self,
        options: &PruneOptions,
        locks: &LockListing,
        lock: &RepoLock,
        grace: chrono::Duration,
        report: &mut PruneReport,
    ) {
        let uploads = match self.sink.unfinished_uploads("").await {
            Ok(uploads) => uploads,
            Err(e) => {
                tracing::warn!(error = %e, "could not list unfinished uploads");
                report
                    .upload_warnings
                    .push(format!("listing unfinished uploads failed: {e}"));
                return;
            }
        };
        let now = self.clock.now();
        // The store's time where it says (an upload's start is the store's time too).
        let cutoff: DateTime<Utc> = locks.store_now.unwrap_or(now) - grace;
        for upload in uploads {
            let name = format!("upload {} of {}", upload.id, upload.key);
            let Some(started) = upload.started else {
                report
                    .waiting_uploads
                    .push(format!("{name}: the store does not say when it started"));
                continue;
            };
            if started > cutoff {
                report
                    .waiting_uploads
                    .push(format!("{name}: younger than the grace period"));
                continue;
            }
            if let Some(l) = locks
                .live_others(Some(lock.key()), now)
                .find(|l| locks.taken_no_later_than(l, Some(started), started))
            {
                report.waiting_uploads.push(format!(
                    "{name}: {} ({} by {}) was taken before it started",
                    l.key, l.info.purpose, l.info.owner
                ));
                continue;
            }
            if options.dry_run {
                report.discarded_uploads += 1;
                continue;
            }
            match self.sink.discard_upload(&upload).await {
                Ok(()) => report.discarded_uploads += 1,
                Err(e) => {
                    tracing::warn!(upload = %upload.id, key = %upload.key, error = %e, "could not discard an unfinished upload");
                    report
                        .upload_warnings
                        .push(format!("discarding {name} failed: {e}"));
                }
            }
        }
    }
}
