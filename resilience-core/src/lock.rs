//! Repository locks that stay correct on stores without conditional writes.
//!
//! A lock is an object `locks/<random id>` holding who took it, for what, and until when; its
//! holder rewrites it (a heartbeat) well before it expires. Backups take *shared* locks; prune
//! and other deleting maintenance take the *exclusive* one.
//!
//! Taking a lock never relies on create-only puts (Garage ignores them): the taker lists the
//! live locks, writes its own, waits a settle delay, and lists again; if a conflicting lock
//! appeared in between, it removes its own and backs off. Two racing takers can both back off
//! (and retry), but never both proceed. A lock whose holder died expires after its time to live.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::object;
use crate::sink::{PutMode, Sink};

/// Shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// Many at once (backups, restores).
    Shared,
    /// Alone (key rotation, rewrites): excludes every other lock.
    Exclusive,
    /// One at a time (prune, forget), beside shared locks: backups keep running.
    Maintenance,
}

/// What a lock object says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Shared or exclusive.
    pub kind: LockKind,
    /// `host:pid` of the holder.
    pub owner: String,
    /// What the holder is doing (`backup`, `prune`…).
    pub purpose: String,
    /// The backup it protects, if any.
    #[serde(default)]
    pub backup_id: Option<String>,
    /// When it was taken.
    pub created_at: DateTime<Utc>,
    /// When it lapses unless refreshed.
    pub expires_at: DateTime<Utc>,
}

impl LockInfo {
    /// Whether it is still in force at `now`: not expired, and not held by a process of this
    /// host that no longer exists (a backup killed with SIGKILL releases nothing).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at > now && !self.holder_is_gone()
    }

    /// True when the holder ran on this host and its process is gone.
    pub fn holder_is_gone(&self) -> bool {
        let Some((host, pid)) = self.owner.rsplit_once(':') else {
            return false;
        };
        if host != host_name() {
            return false;
        }
        match pid.parse::<u32>() {
            Ok(pid) if pid == std::process::id() => false,
            Ok(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => false,
        }
    }

    fn describe(&self, key: &str) -> String {
        format!(
            "{:?} lock {key} held by {} for {} until {}",
            self.kind, self.owner, self.purpose, self.expires_at
        )
    }
}

/// Timing of the lock protocol.
#[derive(Clone, Copy, Debug)]
pub struct LockSettings {
    /// How long a lock lives without a heartbeat.
    pub ttl: Duration,
    /// How long to wait between writing a lock and checking for racers.
    pub settle: Duration,
    /// How long to keep retrying while a conflicting lock is held.
    pub wait: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings {
            ttl: Duration::from_secs(120),
            settle: Duration::from_millis(150),
            wait: Duration::from_secs(0),
        }
    }
}

/// Reads every lock in the repository (damaged ones are skipped with a warning).
pub async fn list_locks(sink: &dyn Sink) -> Result<Vec<(String, LockInfo)>> {
    let keys: Vec<String> = sink.list("locks/").map_ok(|m| m.key).try_collect().await?;
    let mut out = Vec::new();
    for key in keys {
        let bytes = match sink.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        match object::check_checksum(&key, &bytes)
            .ok()
            .and_then(|body| serde_json::from_slice::<LockInfo>(body).ok())
        {
            Some(info) => out.push((key, info)),
            None => tracing::warn!(lock = %key, "ignoring a damaged lock object"),
        }
    }
    Ok(out)
}

fn encode(info: &LockInfo) -> bytes::Bytes {
    let mut body = serde_json::to_vec(info).expect("lock serializes");
    object::append_checksum(&mut body);
    body.into()
}

/// A held lock. Release it with [`RepoLock::release`]; dropping it stops the heartbeat and
/// leaves the object to expire.
pub struct RepoLock {
    sink: Arc<dyn Sink>,
    key: String,
    lost: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLock").field("key", &self.key).finish()
    }
}

fn conflicts(want: LockKind, other: &LockInfo) -> bool {
    use LockKind::*;
    matches!(
        (want, other.kind),
        (Exclusive, _) | (_, Exclusive) | (Maintenance, Maintenance)
    )
}

impl RepoLock {
    /// Takes a lock of `kind` on the repository in `sink`.
    pub async fn acquire(
        sink: Arc<dyn Sink>,
        clock: Arc<dyn Clock>,
        kind: LockKind,
        purpose: &str,
        backup_id: Option<String>,
        settings: LockSettings,
    ) -> Result<RepoLock> {
        let deadline = tokio::time::Instant::now() + settings.wait;
        loop {
            match Self::try_acquire(&sink, &clock, kind, purpose, &backup_id, settings).await {
                Ok(lock) => return Ok(lock),
                Err(Error::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                    let jitter = rand::rngs::OsRng.next_u32() % 500;
                    tokio::time::sleep(Duration::from_millis(500 + jitter as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_acquire(
        sink: &Arc<dyn Sink>,
        clock: &Arc<dyn Clock>,
        kind: LockKind,
        purpose: &str,
        backup_id: &Option<String>,
        settings: LockSettings,
    ) -> Result<RepoLock> {
        let find_conflict = |locks: &[(String, LockInfo)], mine: Option<&str>| {
            let now = clock.now();
            locks
                .iter()
                .find(|(k, l)| Some(k.as_str()) != mine && l.is_live(now) && conflicts(kind, l))
                .map(|(k, l)| l.describe(k))
        };
        if let Some(holder) = find_conflict(&list_locks(sink.as_ref()).await?, None) {
            return Err(Error::Locked {
                location: sink.location(),
                holder,
            });
        }
        let mut id = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let key = format!("locks/{}", hex::encode(id));
        let now = clock.now();
        let ttl = chrono::Duration::from_std(settings.ttl).expect("ttl fits");
        let info = LockInfo {
            kind,
            owner: format!("{}:{}", host_name(), std::process::id()),
            purpose: purpose.to_owned(),
            backup_id: backup_id.clone(),
            created_at: now,
            expires_at: now + ttl,
        };
        sink.put(&key, encode(&info), PutMode::Create).await?;
        tokio::time::sleep(settings.settle).await;
        if let Some(holder) = find_conflict(&list_locks(sink.as_ref()).await?, Some(&key)) {
            sink.delete(&key).await?;
            return Err(Error::Locked {
                location: sink.location(),
                holder,
            });
        }
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat(
            sink.clone(),
            clock.clone(),
            key.clone(),
            info,
            ttl,
            lost.clone(),
        ));
        Ok(RepoLock {
            sink: sink.clone(),
            key,
            lost,
            heartbeat,
        })
    }

    /// The lock object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Fails if the heartbeat could not refresh the lock in time (another process may now
    /// consider it expired): the holder must not commit work that relied on it.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::Locked {
                location: self.sink.location(),
                holder: format!("our lock {} lapsed: its heartbeat failed", self.key),
            });
        }
        Ok(())
    }

    /// Stops the heartbeat and removes the lock.
    pub async fn release(self) -> Result<()> {
        self.heartbeat.abort();
        self.sink.delete(&self.key).await?;
        Ok(())
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

async fn heartbeat(
    sink: Arc<dyn Sink>,
    clock: Arc<dyn Clock>,
    key: String,
    mut info: LockInfo,
    ttl: chrono::Duration,
    lost: Arc<AtomicBool>,
) {
    let period = (ttl / 4).to_std().unwrap_or(Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        info.expires_at = clock.now() + ttl;
        let mut ok = false;
        for _ in 0..3 {
            if sink
                .put(&key, encode(&info), PutMode::Overwrite)
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !ok {
            tracing::error!(lock = %key, "lock heartbeat failed");
            lost.store(true, Ordering::SeqCst);
        }
    }
}

/// The name of this host, as recorded in locks and catalog records.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::sink::MemorySink;

    fn quick() -> LockSettings {
        LockSettings {
            ttl: Duration::from_secs(60),
            settle: Duration::from_millis(1),
            wait: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn shared_locks_coexist_and_exclusive_waits_for_them() {
        let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let a = RepoLock::acquire(
            sink.clone(),
            clock.clone(),
            LockKind::Shared,
            "backup",
            None,
            quick(),
        )
        .await
        .unwrap();
        let b = RepoLock::acquire(
            sink.clone(),
            clock.clone(),
            LockKind::Shared,
            "backup",
            None,
            quick(),
        )
        .await
        .unwrap();
        let err = RepoLock::acquire(
            sink.clone(),
            clock.clone(),
            LockKind::Exclusive,
            "prune",
            None,
            quick(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        a.release().await.unwrap();
        b.release().await.unwrap();
        let x = RepoLock::acquire(
            sink.clone(),
            clock.clone(),
            LockKind::Exclusive,
            "prune",
            None,
            quick(),
        )
        .await
        .unwrap();
        assert!(RepoLock::acquire(
            sink.clone(),
            clock.clone(),
            LockKind::Shared,
            "backup",
            None,
            quick()
        )
        .await
        .is_err());
        x.release().await.unwrap();
        assert!(list_locks(sink.as_ref()).await.unwrap().is_empty());
        let m = RepoLock::acquire(
            sink.clone(),
            clock.clone(),
            LockKind::Maintenance,
            "prune",
            None,
            quick(),
        )
        .await
        .unwrap();
        let s = RepoLock::acquire(
            sink.clone(),
            clock.clone(),
            LockKind::Shared,
            "backup",
            None,
            quick(),
        )
        .await
        .unwrap();
        assert!(RepoLock::acquire(
            sink.clone(),
            clock.clone(),
            LockKind::Maintenance,
            "prune",
            None,
            quick()
        )
        .await
        .is_err());
        m.release().await.unwrap();
        s.release().await.unwrap();
    }

    #[tokio::test]
    async fn racing_exclusive_takers_never_both_win() {
        for _ in 0..20 {
            let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let s = LockSettings {
                settle: Duration::from_millis(20),
                ..quick()
            };
            let (a, b) = tokio::join!(
                RepoLock::acquire(
                    sink.clone(),
                    clock.clone(),
                    LockKind::Exclusive,
                    "a",
                    None,
                    s
                ),
                RepoLock::acquire(
                    sink.clone(),
                    clock.clone(),
                    LockKind::Exclusive,
                    "b",
                    None,
                    s
                ),
            );
            assert!(!(a.is_ok() && b.is_ok()));
        }
    }

    #[tokio::test]
    async fn expired_lock_of_a_dead_holder_is_ignored() {
        let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
        let clock = Arc::new(crate::clock::ManualClock::new(Utc::now()));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let dead = RepoLock::acquire(
            sink.clone(),
            dyn_clock.clone(),
            LockKind::Exclusive,
            "prune",
            None,
            quick(),
        )
        .await
        .unwrap();
        std::mem::forget(dead);
        assert!(RepoLock::acquire(
            sink.clone(),
            dyn_clock.clone(),
            LockKind::Shared,
            "b",
            None,
            quick()
        )
        .await
        .is_err());
        clock.advance(chrono::Duration::seconds(61));
        RepoLock::acquire(
            sink.clone(),
            dyn_clock,
            LockKind::Shared,
            "b",
            None,
            quick(),
        )
        .await
        .unwrap();
    }
}
