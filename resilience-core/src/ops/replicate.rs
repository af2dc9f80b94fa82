//! Replication of a repository to another store (another region): copy every object the
//! replica lacks, prove each copy, and say how far behind the replica is.
//!
//! Objects are immutable, so replication is a difference of listings. Copies go in the order
//! that keeps the replica consistent at every moment. Side archives (Postgres' WAL) go first:
//! they depend on nothing else, and a standby fed from the replica needs them soonest. Then the
//! order a backup writes in: packs, then indexes, then keys and configuration, then snapshot
//! manifests, then catalog records. A snapshot therefore never appears on the replica before every object it needs, and a copy
//! interrupted at any point is resumed by running again. Copies are streamed (a pack is never
//! whole in memory). Each object's own checksum is checked as it passes (damage is not
//! replicated; it is an error naming the object), and the replica proves what it stored
//! ([`Sink::put_copy`]): between S3 stores, the copy's ETag (the MD5 the replica computed of the
//! bytes it received) must equal the source's (the MD5 the source computed when the object was
//! written), so nothing is hashed twice and nothing is read twice. A copy the store cannot prove
//! that way (directories, memory, Azure, SSE-KMS ETags) is read back and its own checksum
//! checked, as every copy is with [`ReplicateOptions::verify_read_back`]. Nothing is ever
//! deleted on the replica but superseded key-set generations (a change of keys at the source
//! deleted them there; see [`crate::keys::ring::KeyRing::in_force`]); prune runs there on its own.
//! Locks are not copied, nor key-set generations that are not in force at the source.
//!
//! The replica is a complete repository: the same key opens it, and restore and verify work
//! against it. [`replicate`] is the library call a service runs after each backup;
//! [`follow`](crate::ops::follow::follow) repeats it every few seconds, so the replica holds
//! the WAL a standby in the other region replays within seconds of its archiving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::format::object::StreamingChecksum;
use crate::keys::ring::{force_order, KEYSET_PREFIX};
use crate::sink::{ObjectMeta, Sink, SinkError};

/// The order in which prefixes are copied.
const PHASES: &[&str] = &[
    crate::repo::side::SIDE_ARCHIVE_ROOT,
    "data/",
    "index/",
    "keys/",
    "config",
    "snapshots/",
    "prune/",
    "catalog/",
];

/// How to replicate.
#[derive(Clone, Debug)]
pub struct ReplicateOptions {
    /// Objects copied at once.
    pub concurrency: usize,
    /// Only measure the lag; copy nothing.
    pub dry_run: bool,
    /// Also read back in full, and check, the copies the replica store proved by its own digest
    /// of what it received ([`Sink::put_copy`]). Copies it could not prove are always read back.
    pub verify_read_back: bool,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            concurrency: 8,
            dry_run: false,
            verify_read_back: false,
        }
    }
}

/// How far a replica is behind its source.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// Succeeded snapshots of the source whose catalog record the replica lacks.
    pub snapshots: u64,
    /// Bytes of objects the replica lacks.
    pub bytes: u64,
    /// Objects the replica lacks.
    pub objects: u64,
    /// Age of the oldest snapshot not yet replicated (0 when caught up).
    pub seconds: u64,
}

/// What a replication run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicationReport {
    /// Objects copied (and proven on the replica).
    pub copied_objects: u64,
    /// Their bytes.
    pub copied_bytes: u64,
    /// Copies read back from the replica to prove them (the store's digest could not, or
    /// [`ReplicateOptions::verify_read_back`] asked for it).
    pub read_back_objects: u64,
    /// Objects the replica already had.
    pub present_objects: u64,
    /// The lag before the run.
    pub lag_before: Lag,
    /// The lag after the run (zero unless the source grew meanwhile or this was a dry run).
    pub lag_after: Lag,
    /// Wall time.
    #[serde(skip)]
    pub duration: Duration,
}

/// Every object under the repository by key (locks left out).
pub(crate) async fn listing(sink: &dyn Sink) -> Result<HashMap<String, ObjectMeta>> {
    let mut out = HashMap::new();
    let mut stream = sink.list("");
    while let Some(meta) = stream.try_next().await? {
        if !meta.key.starts_with("locks/") {
            out.insert(meta.key.clone(), meta);
        }
    }
    Ok(out)
}

/// The key-set generation in force in a listing: the one the store wrote first (see
/// [`crate::keys::ring::KeyRing::in_force`]).
fn generation_in_force(objects: &HashMap<String, ObjectMeta>) -> Option<String> {
    objects
        .values()
        .filter(|m| m.key.starts_with(KEYSET_PREFIX))
        .min_by(|a, b| force_order(a).cmp(&force_order(b)))
        .map(|m| m.key.clone())
}

/// The source's listing as replication copies it: of the key-set generations, only the one in
/// force (others are an interrupted change of keys, or a writer's forgeries, and are never in
/// force anywhere).
async fn source_listing(sink: &dyn Sink) -> Result<HashMap<String, ObjectMeta>> {
    let mut objects = listing(sink).await?;
    let in_force = generation_in_force(&objects);
    objects.retain(|k, _| !k.starts_with(KEYSET_PREFIX) || Some(k) == in_force.as_ref());
    Ok(objects)
}

/// Brings the source's generation in force into force on the replica too, once it is there:
/// every other generation object on the replica is deleted, the replica's own one in force
/// last (a change of keys at the source deleted them there; nothing else is ever deleted on a
/// replica). Returns how many were deleted.
async fn retire_superseded_generations(
    replica: &dyn Sink,
    in_force: Option<&String>,
) -> Result<u64> {
    let Some(ours) = in_force else {
        return Ok(0);
    };
    let have = listing(replica).await?;
    if !have.contains_key(ours) {
        return Ok(0);
    }
    let mut others: Vec<&ObjectMeta> = have
        .values()
        .filter(|m| m.key.starts_with(KEYSET_PREFIX) && m.key != *ours)
        .collect();
    others.sort_by(|a, b| force_order(b).cmp(&force_order(a)));
    for old in &others {
        match replica.delete(&old.key).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(Error::ReplicaKeySetNotRemoved {
                    generation: old.key.clone(),
                    replica: replica.location(),
                    source: Box::new(e),
                })
            }
        }
    }
    Ok(others.len() as u64)
}

/// Whether `replica` lacks the object `meta` describes (or holds a copy of another size).
fn lacks(replica: &HashMap<String, ObjectMeta>, meta: &ObjectMeta) -> bool {
    replica.get(&meta.key).map(|m| m.size) != Some(meta.size)
}

fn phase_of(key: &str) -> usize {
    PHASES
        .iter()
        .position(|p| key.starts_with(p))
        .unwrap_or(PHASES.len())
}

/// The time a backup id starts with (`20261125T071057Z-…`).
fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// The lag of `replica` behind `source`, from their listings.
fn lag(
    source: &HashMap<String, ObjectMeta>,
    replica: &HashMap<String, ObjectMeta>,
    now: DateTime<Utc>,
) -> Lag {
    let mut lag = Lag::default();
    for meta in source.values().filter(|m| lacks(replica, m)) {
        lag.objects += 1;
        lag.bytes += meta.size;
    }
    // The newest revision of each record decides: a succeeded snapshot is replicated once its
    // record (revision `…-succeeded`) is on the replica.
    let mut newest: HashMap<&str, &str> = HashMap::new();
    for key in source.keys().filter(|k| k.starts_with("catalog/")) {
        if let Some((id, rev)) = key["catalog/".len()..].split_once('/') {
            let e = newest.entry(id).or_insert(rev);
            if rev > *e {
                *e = rev;
            }
        }
    }
    let mut oldest: Option<DateTime<Utc>> = None;
    for (id, rev) in newest {
        if !rev.ends_with("-succeeded") || replica.contains_key(&format!("catalog/{id}/{rev}")) {
            continue;
        }
        lag.snapshots += 1;
        if let Some(t) = id_time(id) {
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    lag.seconds = oldest.map_or(0, |t| (now - t).num_seconds().max(0) as u64);
    lag
}

/// Copies one object, streamed: its own checksum is checked as it passes (a damaged object is
/// never completed on the replica), and the copy is proven, by the replica store's digest where
/// it can ([`Sink::put_copy`]), else (or with `read_back`) by reading it back. Returns the bytes
/// copied and whether the copy was read back.
async fn copy(
    source: &dyn Sink,
    replica: &dyn Sink,
    origin: &ObjectMeta,
    read_back: bool,
) -> Result<(u64, bool)> {
    let key = origin.key.as_str();
    let body = source.get_stream(key).await?;
    let check = Arc::new(Mutex::new(StreamingChecksum::default()));
    let damage: Arc<Mutex<Option<Error>>> = Arc::default();
    let passing = check.clone();
    let verdict = {
        let (check, damage, key, location) =
            (check, damage.clone(), key.to_owned(), source.location());
        futures::stream::once(async move {
            let outcome = check.lock().expect("checksum lock").finish(&key);
            outcome.err().map(|e| {
                let reason = e.to_string();
                *damage.lock().expect("damage lock") = Some(e);
                Err(SinkError::Mismatch {
                    key,
                    location,
                    reason: format!("at the source, not replicated: {reason}"),
                })
            })
        })
        .filter_map(futures::future::ready)
    };
    let checked = body
        .map_ok(move |part| {
            passing.lock().expect("checksum lock").feed(&part);
            part
        })
        .chain(verdict)
        .boxed();
    let copied = match replica.put_copy(key, checked, origin).await {
        Ok(copied) => copied,
        Err(e) => {
            return Err(match damage.lock().expect("damage lock").take() {
                Some(damaged) => damaged,
                None => e.into(),
            })
        }
    };
    if copied.size != origin.size {
        return Err(Error::Corrupt {
            object: format!("{key} in {}", source.location()),
            reason: format!("listed with {} bytes, {} read", origin.size, copied.size),
        });
    }
    let read_back = read_back || !copied.proven;
    if read_back {
        prove_by_reading_back(replica, key, origin.size).await?;
    }
    Ok((copied.size, read_back))
}

/// Attempts at one copy. A streamed copy cannot be resent from its body, so a connection that
/// fails part way is retried here, with a fresh read of the source; damage is never retried.
const COPY_ATTEMPTS: u32 = 3;

/// [`copy`], retried on store and connection failures ([`SinkError::Backend`]).
async fn copy_retrying(
    source: &dyn Sink,
    replica: &dyn Sink,
    origin: &ObjectMeta,
    read_back: bool,
) -> Result<(u64, bool)> {
    let mut attempt = 1;
    loop {
        match copy(source, replica, origin, read_back).await {
            Err(Error::Sink(e @ SinkError::Backend { .. })) if attempt < COPY_ATTEMPTS => {
                tracing::warn!(object = %origin.key, attempt, error = %e, "copy failed, retrying");
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Reads a copy back in full: it must be `size` bytes that end with the checksum of the rest.
async fn prove_by_reading_back(replica: &dyn Sink, key: &str, size: u64) -> Result<()> {
    let mismatch = |reason: String| SinkError::Mismatch {
        key: key.to_owned(),
        location: replica.location(),
        reason,
    };
    let mut back = replica.get_stream(key).await?;
    let mut check = StreamingChecksum::default();
    while let Some(part) = back.try_next().await? {
        check.feed(&part);
    }
    if check.len() != size {
        return Err(mismatch(format!(
            "{} bytes read back, {size} sent (a short write)",
            check.len()
        ))
        .into());
    }
    check
        .finish(key)
        .map_err(|e| mismatch(format!("read back, it fails its checksum: {e}")))?;
    Ok(())
}

/// Copies to `replica` every object of the repository in `source` that it lacks.
pub async fn replicate(
    source: &dyn Sink,
    replica: &dyn Sink,
    options: &ReplicateOptions,
) -> Result<ReplicationReport> {
    let mut have = listing(replica).await?;
    let mut report = replicate_onto(source, replica, &mut have, options).await?;
    if !options.dry_run {
        let src_now = source_listing(source).await?;
        report.lag_after = lag(&src_now, &listing(replica).await?, Utc::now());
    }
    Ok(report)
}

/// One replication pass against `have`, what the replica is known to hold (a listing, kept up
/// to date with what the pass copies, so that a follower need not list the replica again).
/// The report's `lag_after` is measured against `have`, not a new listing.
pub(crate) async fn replicate_onto(
    source: &dyn Sink,
    replica: &dyn Sink,
    have: &mut HashMap<String, ObjectMeta>,
    options: &ReplicateOptions,
) -> Result<ReplicationReport> {
    let started = Instant::now();
    let src = source_listing(source).await?;
    if !src.contains_key("config") {
        return Err(Error::RepositoryNotFound {
            location: source.location(),
        });
    }
    // A repository under an object lock is locked in the replica too: what is copied is
    // written through the lock, as the source's own writes are.
    let object_lock = match crate::repo::Repository::read_config(source).await {
        Ok(config) => config.object_lock,
        Err(Error::Sink(e)) => return Err(e.into()),
        // A `config` this build cannot read is copied as it is.
        Err(_) => None,
    };
    let locked;
    let replica: &dyn Sink = match object_lock {
        Some(lock) => {
            locked = crate::sink::RetainingSink::new(replica, lock);
            &locked
        }
        None => replica,
    };
    let lag_before = lag(&src, have, Utc::now());
    let mut missing: Vec<ObjectMeta> = src.values().filter(|m| lacks(have, m)).cloned().collect();
    missing.sort_by_key(|m| (phase_of(&m.key), m.key.clone()));
    let present_objects = (src.len() - missing.len()) as u64;
    let mut copied_objects = 0;
    let mut copied_bytes = 0;
    let mut read_back_objects = 0;
    if !options.dry_run {
        for phase in 0..=PHASES.len() {
            // Owned keys: a closure over borrowed ones makes the future not `Send` for every
            // lifetime, which a spawned job (the daemon's) needs.
            let objects: Vec<ObjectMeta> = missing
                .iter()
                .filter(|m| phase_of(&m.key) == phase)
                .cloned()
                .collect();
            let copies: Vec<(ObjectMeta, u64, bool)> = futures::stream::iter(objects)
                .map(|origin| async move {
                    let (size, read) =
                        copy_retrying(source, replica, &origin, options.verify_read_back).await?;
                    Ok::<_, Error>((origin, size, read))
                })
                .buffer_unordered(options.concurrency.max(1))
                .try_collect()
                .await?;
            copied_objects += copies.len() as u64;
            copied_bytes += copies.iter().map(|(_, size, _)| size).sum::<u64>();
            read_back_objects += copies.iter().filter(|(_, _, read)| *read).count() as u64;
            for (origin, _, _) in copies {
                have.insert(origin.key.clone(), origin);
            }
            if PHASES.get(phase) == Some(&"keys/") {
                let in_force = generation_in_force(&src);
                let superseded = have
                    .keys()
                    .any(|k| k.starts_with(KEYSET_PREFIX) && Some(k) != in_force.as_ref());
                if superseded {
                    let retired = retire_superseded_generations(replica, in_force.as_ref()).await?;
                    if retired > 0 {
                        tracing::info!(
                            retired,
                            "superseded key-set generations removed from the replica"
                        );
                    }
                    have.retain(|k, _| {
                        !k.starts_with(KEYSET_PREFIX) || Some(k) == in_force.as_ref()
                    });
                }
            }
        }
    }
    let lag_after = lag(&src, have, Utc::now());
    Ok(ReplicationReport {
        copied_objects,
        copied_bytes,
        read_back_objects,
        present_objects,
        lag_before,
        lag_after,
        duration: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{ByteStream, Copied, MemorySink, ObjectMeta, PutMode};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// How [`Tampering`] damages the bytes put through it.
    #[derive(Debug, Clone, Copy)]
    enum Damage {
        /// One bit of the 100th byte flipped, as by a faulty link.
        FlipByte,
        /// The last byte dropped, as by a short write.
        DropLast,
    }

    /// A replica store: it damages the data of streamed puts of packs on their way to the inner
    /// sink (when told to), may claim to prove its copies as S3 does by ETags, and counts reads.
    #[derive(Debug, Default)]
    struct Tampering {
        inner: MemorySink,
        damage: Option<Damage>,
        claims_proof: bool,
        reads: AtomicU64,
        /// How many copies fail, as a dropped connection does, before they succeed.
        failing_copies: AtomicU64,
    }

    impl Tampering {
        fn damaging(damage: Damage) -> Self {
            Tampering {
                damage: Some(damage),
                ..Default::default()
            }
        }
    }

    crate::forward_sink! {
        (impl Sink for Tampering)
        to self.inner: put, get, get_range, head, list, delete, unfinished_uploads,
            discard_upload, retention, set_retention;

        fn location(&self) -> String {
            "tampering://".into()
        }
        async fn put_stream(
            &self,
            key: &str,
            data: ByteStream,
            mode: PutMode,
        ) -> Result<u64, SinkError> {
            let Some(damage) = self.damage.filter(|_| key.starts_with("data/")) else {
                return self.inner.put_stream(key, data, mode).await;
            };
            let whole: Vec<Bytes> = data.try_collect().await?;
            let mut bytes = whole.concat();
            let n = bytes.len() as u64;
            match damage {
                Damage::FlipByte => bytes[100] ^= 0x08,
                Damage::DropLast => {
                    bytes.pop();
                }
            }
            self.inner.put(key, bytes.into(), mode).await?;
            Ok(n)
        }
        async fn put_copy(
            &self,
            key: &str,
            data: ByteStream,
            _origin: &ObjectMeta,
        ) -> Result<Copied, SinkError> {
            let fail = self
                .failing_copies
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err(SinkError::Backend {
                    operation: "put",
                    key: key.to_owned(),
                    location: self.location(),
                    source: "connection reset by peer".into(),
                });
            }
            let size = self.put_stream(key, data, PutMode::Overwrite).await?;
            Ok(Copied {
                size,
                proven: self.claims_proof,
            })
        }
        async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.get_stream(key).await
        }
    }

    async fn repository() -> Arc<MemorySink> {
        use crate::keys::KeyFileProvider;
        use crate::repo::{InitOptions, Repository};
        use crate::testing::{pseudo_random, MemorySource};
        let sink = Arc::new(MemorySink::new());
        let repo = Repository::init(
            sink.clone(),
            &KeyFileProvider::from_key([3; 32]),
            InitOptions {
                pack_size: 1 << 20,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        repo.backup(
            &MemorySource::new("s").file("a", pseudo_random(3 << 20, 9)),
            Default::default(),
        )
        .await
        .unwrap();
        sink
    }

    #[tokio::test]
    async fn a_copy_damaged_in_transit_or_cut_short_is_detected() {
        let source = repository().await;
        for damage in [Damage::FlipByte, Damage::DropLast] {
            let replica = Tampering::damaging(damage);
            let err = replicate(source.as_ref(), &replica, &ReplicateOptions::default())
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("data/") && err.contains("does not hold what was written"),
                "{damage:?}: {err}"
            );
            let snapshots: Vec<_> = replica.list("snapshots/").try_collect().await.unwrap();
            assert!(
                snapshots.is_empty(),
                "{damage:?}: no snapshot after a bad copy"
            );
        }
        // The same source through an honest sink is copied, proven, and caught up.
        let replica = MemorySink::new();
        let report = replicate(
            source.as_ref(),
            &replica,
            &ReplicateOptions {
                verify_read_back: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(report.copied_objects > 3);
        assert_eq!(report.read_back_objects, report.copied_objects);
        assert_eq!(report.lag_after, Lag::default());
    }

    #[tokio::test]
    async fn a_copy_whose_connection_fails_is_retried_and_one_that_keeps_failing_is_named() {
        let source = repository().await;
        let flaky = Tampering {
            failing_copies: AtomicU64::new(2),
            ..Default::default()
        };
        let report = replicate(source.as_ref(), &flaky, &ReplicateOptions::default())
            .await
            .unwrap();
        assert_eq!(
            report.lag_after,
            Lag::default(),
            "caught up despite two failures"
        );

        let down = Tampering {
            failing_copies: AtomicU64::new(u64::MAX),
            ..Default::default()
        };
        let err = replicate(source.as_ref(), &down, &ReplicateOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data/") && err.contains("connection reset"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn copies_the_store_proves_are_not_read_back_unless_asked() {
        let source = repository().await;
        let proving = Tampering {
            claims_proof: true,
            ..Default::default()
        };
        let report = replicate(source.as_ref(), &proving, &ReplicateOptions::default())
            .await
            .unwrap();
        assert!(report.copied_objects > 3);
        assert_eq!(report.read_back_objects, 0);
        assert_eq!(
            proving.reads.load(Ordering::SeqCst),
            0,
            "no second transfer"
        );

        let asked = Tampering {
            claims_proof: true,
            ..Default::default()
        };
        let options = ReplicateOptions {
            verify_read_back: true,
            ..Default::default()
        };
        let report = replicate(source.as_ref(), &asked, &options).await.unwrap();
        assert_eq!(report.read_back_objects, report.copied_objects);
        assert_eq!(asked.reads.load(Ordering::SeqCst), report.copied_objects);

        // Unproven copies are read back whatever the options say.
        let silent = Tampering::default();
        let report = replicate(source.as_ref(), &silent, &ReplicateOptions::default())
            .await
            .unwrap();
        assert_eq!(report.read_back_objects, report.copied_objects);
    }

    #[test]
    fn backup_ids_carry_their_time() {
        let t = id_time("20261125T071057Z-9399418c").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T07:10:57+00:00");
        assert!(id_time("nonsense").is_none());
    }

    fn objects(sizes: &[(&str, u64)]) -> HashMap<String, ObjectMeta> {
        sizes
            .iter()
            .map(|&(key, size)| {
                let meta = ObjectMeta {
                    key: key.to_owned(),
                    size,
                    e_tag: None,
                    last_modified: None,
                };
                (key.to_owned(), meta)
            })
            .collect()
    }

    #[test]
    fn lag_counts_missing_objects_and_unreplicated_snapshots() {
        let src = objects(&[
            ("config", 10),
            ("data/ab/x", 100),
            ("catalog/20261125T000000Z-a/0000000001-running", 5),
            ("catalog/20261125T000000Z-a/0000000002-succeeded", 5),
            ("catalog/20261125T010000Z-b/0000000001-running", 5),
        ]);
        let replica = objects(&[("config", 10), ("data/ab/x", 99)]);
        let now = id_time("20261125T003000Z").unwrap();
        let l = lag(&src, &replica, now);
        assert_eq!(l.snapshots, 1, "b is still running");
        assert_eq!(l.objects, 4, "a truncated copy counts as missing");
        assert_eq!(l.seconds, 1800);
        assert_eq!(lag(&src, &src, now), Lag::default());
    }
}
