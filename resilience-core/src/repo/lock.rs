//! Repository locks that stay correct on stores without conditional writes, across pauses and
//! across clients whose clocks disagree.
//!
//! A lock is an object `locks/<random id>` holding who took it, for what, and for how long; its
//! holder rewrites it (a heartbeat) every quarter of its time to live. Backups take *shared*
//! locks; prune and forget take the *maintenance* lock, catalog read-modify-writes the
//! *catalog* lock, key rotation the *exclusive* one.
//!
//! **Whose clock.** A lock is live while the store's own time of its last write (the object's
//! last-modified time) is less than its time to live ago, "now" being the newest last-modified
//! time in the same listing: the observer's own lock, just written. Client clocks never
//! compare with each other, so a client whose clock is minutes off judges locks like every other.
//! Locks written by older versions (without `ttl_ms`) and stores that give no times fall back
//! to the writer's `expires_at` against the reader's clock.
//!
//! **Lapse.** The holder counts, on its own monotonic clock, the time since it *sent* the last
//! write the store acknowledged. Past three quarters of the time to live (a pause, a stalled
//! disk, a store that retries for minutes) the lock is lapsed for good: the heartbeat stops (a
//! lapsed lock is never brought back, since others may have acted on its lapse) and
//! [`RepoLock::check`] fails. A holder commits only after a check made *after* its commit
//! became visible, so whatever it committed was visible while every observer still saw its lock.
//!
//! Taking a lock never relies on create-only puts (Garage ignores them): the taker writes its
//! lock, waits a settle delay, and lists; if a conflicting live lock is there, it removes its own
//! and backs off. Two racing takers can both back off (and retry), but never both proceed. A
//! lock whose holder died expires after its time to live, or at once when the holder ran in
//! this host's PID namespace and its process is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::format::object;
use crate::sink::{PutMode, Sink};
use crate::time::clock::Clock;

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
    /// One at a time, beside shared and maintenance locks: read-modify-writes of catalog
    /// records (legal holds, verification and drill records, expiry), so that none is lost.
    Catalog,
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
    /// When it was taken, by the holder's clock (informative).
    pub created_at: DateTime<Utc>,
    /// When it lapses unless refreshed, by the holder's clock: what older versions judge by.
    pub expires_at: DateTime<Utc>,
    /// How long it lives after each write, by the store's clock, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The holder's PID namespace (`pid:[inode]`): a PID is judged only within the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
    /// When the store first wrote the lock, as its holder read it back (set by heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_store_at: Option<DateTime<Utc>>,
}

impl LockInfo {
    /// True when the holder ran on this host, in this PID namespace, and its process is gone
    /// (a backup killed with SIGKILL releases nothing). A holder in another container with the
    /// same host name, or a lock that does not say its namespace, is never judged by its PID.
    pub fn holder_is_gone(&self) -> bool {
        let Some((host, pid)) = self.owner.rsplit_once(':') else {
            return false;
        };
        if host != host_name() {
            return false;
        }
        match (&self.pid_namespace, pid_namespace()) {
            (Some(theirs), Some(ours)) if *theirs == ours => {}
            _ => return false,
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

/// A lock as a listing found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedLock {
    /// The lock object's key.
    pub key: String,
    /// What it says.
    pub info: LockInfo,
    /// When the store last wrote it (the holder's last heartbeat), by the store's clock.
    pub modified: Option<DateTime<Utc>>,
}

/// Every lock of a repository as one listing saw them, and the store's time of that listing.
#[derive(Clone, Debug, Default)]
pub struct LockListing {
    /// The locks (damaged ones are left out, with a warning).
    pub locks: Vec<ListedLock>,
    /// The newest last-modified time among them: a lower bound of the store's time when it
    /// listed (the lister's own lock was just written), `None` when the store gives no times.
    pub store_now: Option<DateTime<Utc>>,
}

impl LockListing {
    /// Whether `lock` is in force: written less than its time to live ago by the store's
    /// clock (or, for locks of older versions, not past `expires_at` by `client_now`), and not
    /// held by a process of this host and namespace that is gone.
    pub fn is_live(&self, lock: &ListedLock, client_now: DateTime<Utc>) -> bool {
        if lock.info.holder_is_gone() {
            return false;
        }
        match (lock.modified, self.store_now, lock.info.ttl_ms) {
            (Some(modified), Some(now), Some(ttl)) => {
                now - modified < chrono::Duration::milliseconds(ttl as i64)
            }
            _ => lock.info.expires_at > client_now,
        }
    }

    /// The live locks other than `mine`.
    pub fn live_others<'a>(
        &'a self,
        mine: Option<&'a str>,
        client_now: DateTime<Utc>,
    ) -> impl Iterator<Item = &'a ListedLock> + 'a {
        self.locks
            .iter()
            .filter(move |l| Some(l.key.as_str()) != mine && self.is_live(l, client_now))
    }

    /// Whether `lock` was taken no later than an object the store wrote at `store_at` (or,
    /// without store times, that the writer stamped `client_at`). Unknown counts as before.
    pub fn taken_no_later_than(
        &self,
        lock: &ListedLock,
        store_at: Option<DateTime<Utc>>,
        client_at: DateTime<Utc>,
    ) -> bool {
        let created = lock
            .info
            .created_store_at
            .or(lock.info.ttl_ms.and(lock.modified));
        match (created, store_at) {
            (Some(created), Some(at)) => created <= at,
            (None, Some(_)) if lock.info.ttl_ms.is_some() => true,
            _ => lock.info.created_at <= client_at,
        }
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
pub async fn list_locks(sink: &dyn Sink) -> Result<LockListing> {
    let metas: Vec<_> = sink.list("locks/").try_collect().await?;
    let mut listing = LockListing::default();
    for meta in metas {
        let bytes = match sink.get(&meta.key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        listing.store_now = listing.store_now.max(meta.last_modified);
        match object::check_checksum(&meta.key, &bytes)
            .ok()
            .and_then(|body| serde_json::from_slice::<LockInfo>(body).ok())
        {
            Some(info) => listing.locks.push(ListedLock {
                key: meta.key,
                info,
                modified: meta.last_modified,
            }),
            None => tracing::warn!(lock = %meta.key, "ignoring a damaged lock object"),
        }
    }
    Ok(listing)
}

fn encode(info: &LockInfo) -> bytes::Bytes {
    let mut body = serde_json::to_vec(info).expect("lock serializes");
    object::append_checksum(&mut body);
    body.into()
}

/// The holder's view of its lock: when it last sent a write the store acknowledged, and
/// whether the lock has lapsed.
struct Lease {
    ttl: Duration,
    last_sent: Mutex<Instant>,
    lapsed: AtomicBool,
}

impl Lease {
    /// How long after the last acknowledged write was sent the holder still trusts its lock:
    /// three quarters of the time to live, leaving a quarter for the store's and the
    /// observers' view of time.
    fn window(&self) -> Duration {
        self.ttl * 3 / 4
    }

    fn since_last_write(&self) -> Duration {
        self.last_sent.lock().expect("lease lock").elapsed()
    }

    /// Whether the lock has lapsed; once it has, it stays lapsed.
    fn has_lapsed(&self) -> bool {
        if self.lapsed.load(Ordering::SeqCst) {
            return true;
        }
        if self.since_last_write() >= self.window() {
            self.lapsed.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    fn acknowledged(&self, sent: Instant) {
        let mut last = self.last_sent.lock().expect("lease lock");
        if !self.lapsed.load(Ordering::SeqCst) && sent > *last {
            *last = sent;
        }
    }

    fn deadline(&self) -> Instant {
        *self.last_sent.lock().expect("lease lock") + self.window()
    }
}

/// A held lock. Release it with [`RepoLock::release`]; dropping it stops the heartbeat and
/// leaves the object to expire.
pub struct RepoLock {
    sink: Arc<dyn Sink>,
    key: String,
    lease: Arc<Lease>,
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
        (Exclusive, _) | (_, Exclusive) | (Maintenance, Maintenance) | (Catalog, Catalog)
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
        let deadline = Instant::now() + settings.wait;
        loop {
            match Self::try_acquire(&sink, &clock, kind, purpose, &backup_id, settings).await {
                Ok(lock) => return Ok(lock),
                Err(Error::Locked { .. }) if Instant::now() < deadline => {
                    // Back off for three to six settle delays (0.45–0.9 s by default), at
                    // random, so that racers that both backed off do not collide again.
                    let base = settings.settle.max(Duration::from_millis(1)) * 3;
                    let jitter = rand::rngs::OsRng.next_u32() as f64 / u32::MAX as f64;
                    tokio::time::sleep(base + base.mul_f64(jitter)).await;
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
        let mut id = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let key = format!("locks/{}", hex::encode(id));
        let now = clock.now();
        let ttl = chrono::Duration::from_std(settings.ttl).expect("ttl fits");
        let mut info = LockInfo {
            kind,
            owner: format!("{}:{}", host_name(), std::process::id()),
            purpose: purpose.to_owned(),
            backup_id: backup_id.clone(),
            created_at: now,
            expires_at: now + ttl,
            ttl_ms: Some(settings.ttl.as_millis() as u64),
            pid_namespace: pid_namespace(),
            created_store_at: None,
        };
        // Ours is written first and the conflict check made on a listing that holds it: its
        // store time is the listing's "now", by which the others' ages are judged.
        let sent = Instant::now();
        let written = async {
            sink.put(&key, encode(&info), PutMode::Create).await?;
            tokio::time::sleep(settings.settle).await;
            list_locks(sink.as_ref()).await
        };
        let listing = match written.await {
            Ok(listing) => listing,
            // The put may have been stored though its answer was lost (a retry of it then finds
            // it "already there": the key is random, so it is ours), or the listing failed: take
            // ours back, so that a failed attempt leaves no lock for others to wait out.
            Err(e) => {
                if let Err(d) = sink.delete(&key).await {
                    tracing::warn!(lock = %key, error = %d, "cannot remove the lock of a failed attempt; it expires with its time to live");
                }
                return Err(e);
            }
        };
        if let Some(other) = listing
            .live_others(Some(&key), clock.now())
            .find(|l| conflicts(kind, &l.info))
        {
            let holder = other.info.describe(&other.key);
            sink.delete(&key).await?;
            return Err(Error::Locked {
                location: sink.location(),
                holder,
            });
        }
        info.created_store_at = listing
            .locks
            .iter()
            .find(|l| l.key == key)
            .and_then(|l| l.modified);
        let lease = Arc::new(Lease {
            ttl: settings.ttl,
            last_sent: Mutex::new(sent),
            lapsed: AtomicBool::new(false),
        });
        let heartbeat = tokio::spawn(heartbeat(
            sink.clone(),
            clock.clone(),
            key.clone(),
            info,
            lease.clone(),
        ));
        Ok(RepoLock {
            sink: sink.clone(),
            key,
            lease,
            heartbeat,
        })
    }

    /// The lock object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Fails if the lock has lapsed: more than three quarters of its time to live has passed
    /// since the holder sent the last write the store acknowledged (the process was paused, or
    /// the store too slow), so another process may already consider it gone. Called *after*
    /// a commit became visible, an `Ok` proves the commit was visible while the lock held.
    pub fn check(&self) -> Result<()> {
        self.checker().check()
    }

    /// A handle that checks this lock (see [`RepoLock::check`]) from other tasks.
    pub fn checker(&self) -> LockCheck {
        LockCheck {
            lease: self.lease.clone(),
            key: self.key.clone(),
            location: self.sink.location(),
        }
    }

    /// Stops the heartbeat and removes the lock.
    pub async fn release(self) -> Result<()> {
        self.heartbeat.abort();
        self.sink.delete(&self.key).await?;
        Ok(())
    }
}

/// Checks whether a held lock has lapsed, from any task (see [`RepoLock::check`]).
#[derive(Clone)]
pub struct LockCheck {
    lease: Arc<Lease>,
    key: String,
    location: String,
}

impl std::fmt::Debug for LockCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockCheck").field("key", &self.key).finish()
    }
}

impl LockCheck {
    /// Fails with [`Error::LockLapsed`] once the lock has lapsed.
    pub fn check(&self) -> Result<()> {
        if self.lease.has_lapsed() {
            return Err(Error::LockLapsed {
                location: self.location.clone(),
                lock: self.key.clone(),
                detail: format!(
                    "its last refresh was sent {:.1} s ago, past {:.1} s of its {:.0} s lifetime (the process was paused or the store did not answer); other processes may have treated it as gone",
                    self.lease.since_last_write().as_secs_f64(),
                    self.lease.window().as_secs_f64(),
                    self.lease.ttl.as_secs_f64()
                ),
            });
        }
        Ok(())
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Rewrites the lock every quarter of its time to live (retrying every half second after a
/// failure), each write bounded by the time the lease has left. Once the lease has lapsed it
/// stops: a lapsed lock is never refreshed again.
async fn heartbeat(
    sink: Arc<dyn Sink>,
    clock: Arc<dyn Clock>,
    key: String,
    mut info: LockInfo,
    lease: Arc<Lease>,
) {
    let period = lease.ttl / 4;
    let ttl = chrono::Duration::from_std(lease.ttl).expect("ttl fits");
    let mut wait = period;
    loop {
        tokio::time::sleep(wait).await;
        if lease.has_lapsed() {
            tracing::error!(lock = %key, "lock lapsed: not refreshing it");
            return;
        }
        info.expires_at = clock.now() + ttl;
        let sent = Instant::now();
        let put = sink.put(&key, encode(&info), PutMode::Overwrite);
        match tokio::time::timeout_at(lease.deadline(), put).await {
            Ok(Ok(())) => {
                lease.acknowledged(sent);
                wait = period;
            }
            Ok(Err(e)) => {
                tracing::warn!(lock = %key, error = %e, "lock heartbeat failed; retrying");
                wait = Duration::from_millis(500).min(period);
            }
            Err(_) => wait = Duration::ZERO,
        }
    }
}

/// The name of this host, as recorded in locks and catalog records.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned())
}

/// This process's PID namespace (`pid:[inode]`), where the system says.
pub fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;
    use crate::time::clock::SystemClock;

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
        assert!(list_locks(sink.as_ref()).await.unwrap().locks.is_empty());
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
        let clock = Arc::new(crate::time::clock::ManualClock::new(Utc::now()));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let sink: Arc<dyn Sink> = Arc::new(MemorySink::with_clock(dyn_clock.clone()));
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
