//! Redis' step of a failover ([`resilience_core::failover`]): the newest keyspace backup of a
//! source, from the region's repository (the replica), restored into the region's server.

use async_trait::async_trait;
use resilience_core::failover::{FailoverStep, StepError, StepOutcome};
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::repo::Repository;

use crate::connect::RedisEndpoint;
use crate::target::{RedisTarget, RestoreSettings};

/// Restores the newest succeeded backup of `source` into `endpoint`, replacing keys that
/// exist (the region's server may hold a stale copy). A failover plan runs it once: resumed,
/// the plan skips it, so the writes that followed the failover are never overwritten.
pub struct RestoreNewest {
    /// The region's repository.
    pub repo: Repository,
    /// The source whose newest backup is restored (as the catalog records it).
    pub source: String,
    /// The region's server.
    pub endpoint: RedisEndpoint,
}

#[async_trait]
impl FailoverStep for RestoreNewest {
    fn name(&self) -> String {
        format!("restore redis {}", self.source)
    }

    fn describe(&self) -> String {
        format!(
            "restore the newest backup of {} into {}",
            self.source,
            crate::source::redact(&self.endpoint.url)
        )
    }

    async fn run(&self) -> Result<StepOutcome, StepError> {
        let record = self
            .repo
            .resolve_snapshot("latest", Some(&self.source))
            .await?;
        if record.source.kind != "redis" {
            return Err(format!(
                "the newest backup of {} ({}) is a {} backup, not a Redis keyspace",
                self.source, record.id, record.source.kind
            )
            .into());
        }
        let conn = self.endpoint.connect().await?;
        let target = RedisTarget::new(
            conn,
            RestoreSettings {
                replace: true,
                pipeline: 512,
                ..Default::default()
            },
        );
        self.repo
            .restore(&record.id, &target, RestoreOptions::default())
            .await?;
        let tally = target.tally();
        if tally.refused_count > 0 {
            return Err(format!(
                "{} key(s) refused restoring {} (first: {})",
                tally.refused_count,
                record.id,
                tally
                    .refused
                    .first()
                    .map(|r| format!("{}: {}", r.key, r.reason))
                    .unwrap_or_default()
            )
            .into());
        }
        Ok(StepOutcome::done(format!(
            "backup {} ({}): {} key(s) restored, {} expired",
            record.id,
            record.started_at.to_rfc3339(),
            tally.restored,
            tally.expired
        ))
        .recovered_to(Some(record.started_at)))
    }
}
