//! Prefetching for `wal-fetch`: while Postgres replays one segment, the next ones are fetched
//! in the background into a spool, so that the next restore_command call finds its segment
//! there and returns at once.
//!
//! The caller that fetched (or was served) segment X writes a [`PrefetchRequest`] for X into
//! the spool and starts a prefetcher if none holds the spool's lock. The prefetcher fetches the
//! `count` segments after X on X's timeline, `parallel` at a time (of which `writing` open and
//! write their segment at once, the earliest first: [`PrefetchOptions`]), each verified
//! exactly as `wal-fetch` verifies it ([`WalArchive::fetch_to_file`]: authenticated, its
//! length and CRC32C, or BLAKE3 in older objects, checked against its header), and writes it
//! whole (renamed into place once written, not synced) as `<name>.<crc32c>`, the CRC32C of
//! what it wrote. A later call serves such a file only after checking it against that CRC32C
//! ([`Spool::take_prefetched`]): a file damaged in the spool, or torn by a crash of the
//! machine, is removed, named, and fetched from the repository instead. Files of other
//! timelines, or before the segment asked for, are stale and removed.
//!
//! Why a CRC32C and not BLAKE3 again: the content was authenticated and checked against its
//! header as it came from the repository; what the served call guards against is local damage
//! (a torn write, a bad block), which a CRC32C catches as Postgres' own WAL records rely on it
//! to. It reads a 16 MiB segment in about 1 ms against BLAKE3's 3.5–7 ms, and the served call
//! is on recovery's critical path: BLAKE3 was 70% of its CPU.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::spool::{cores, crc32c_file, Spool};
use super::{FetchTarget, WalArchive, WalHeader};
use crate::error::PgError;
use crate::lsn::SegmentName;

/// The name of the lock the prefetcher holds on its spool.
pub const PREFETCHER_LOCK: &str = "prefetcher";
/// The spool file holding the latest request.
const REQUEST_FILE: &str = "request";

/// The segment Postgres asked for last, with the cluster's segment size: the prefetcher fetches
/// the segments after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchRequest {
    /// The segment's name.
    pub name: String,
    /// The cluster's segment size (a power of two from 1 MiB to 1 GiB).
    pub segment_size: u64,
}

impl PrefetchRequest {
    /// The request's bytes: `<name> <segment size>\n`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}\n", self.name, self.segment_size).into_bytes()
    }

    /// Reads a request; anything but a segment name and a valid segment size is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > 64 {
            return Err(format!("{} bytes, more than a request holds", bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
        let line = text
            .strip_suffix('\n')
            .ok_or_else(|| "no line end (torn)".to_owned())?;
        let (name, size) = line
            .split_once(' ')
            .ok_or_else(|| "no segment size".to_owned())?;
        let segment_size: u64 = size.parse().map_err(|_| format!("segment size {size:?}"))?;
        if !segment_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&segment_size) {
            return Err(format!("segment size {segment_size}"));
        }
        if size.starts_with('+') || size.starts_with('0') {
            return Err(format!("segment size {size:?}"));
        }
        SegmentName::parse(name, segment_size).ok_or_else(|| format!("segment name {name:?}"))?;
        if name.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(format!("segment name {name:?}"));
        }
        Ok(PrefetchRequest {
            name: name.to_owned(),
            segment_size,
        })
    }

    /// Whether segment `name` can still be asked for after this request: it is on the
    /// requested segment's timeline and after it (anything, if the request names no segment).
    pub fn is_ahead(&self, name: &str) -> bool {
        let Some(asked) = SegmentName::parse(&self.name, self.segment_size) else {
            return true;
        };
        SegmentName::parse(name, self.segment_size)
            .is_some_and(|s| s.timeline == asked.timeline && s.segno > asked.segno)
    }

    /// The `count` segments after the requested one, on its timeline.
    pub fn window(&self, count: usize) -> Vec<String> {
        let Some(seg) = SegmentName::parse(&self.name, self.segment_size) else {
            return Vec::new();
        };
        (1..=count as u64)
            .map(|i| {
                SegmentName {
                    timeline: seg.timeline,
                    segno: seg.segno + i,
                }
                .file_name(self.segment_size)
            })
            .collect()
    }
}

/// A prefetched file's name, `<segment>.<CRC32C, 8 hex digits>`: the segment and the CRC32C;
/// `None` for other files.
fn parse_prefetched(file: &str) -> Option<(&str, u32)> {
    let (name, crc) = file.split_once('.')?;
    if name.len() != 24
        || !name.bytes().all(|b| b.is_ascii_hexdigit())
        || crc.len() != 8
        || !crc.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Some((name, u32::from_str_radix(crc, 16).ok()?))
}

/// Whether `file` is a segment prefetched by an earlier version, `<segment>.<BLAKE3 hex>`.
fn is_prefetched_by_blake3(file: &str) -> bool {
    file.split_once('.').is_some_and(|(name, digest)| {
        name.len() == 24
            && digest.len() == 64
            && (name.bytes().chain(digest.bytes())).all(|b| b.is_ascii_hexdigit())
    })
}

impl Spool {
    /// The prefetched segments present: (name, spool file), by name.
    fn prefetched(&self) -> Result<Vec<(String, String)>, PgError> {
        Ok(self
            .files()?
            .into_iter()
            .filter_map(|f| parse_prefetched(&f).map(|(n, _)| (n.to_owned(), f.clone())))
            .collect())
    }

    /// Moves the prefetched segment `name` to `dest` after checking its bytes against the
    /// CRC32C they were written with: `Some(its length)` if served, `None` if it was not
    /// prefetched. A damaged one is removed and reported ([`PgError::SpoolDamaged`], naming
    /// it), so the caller fetches it from the repository.
    pub fn take_prefetched(&self, name: &str, dest: &Path) -> Result<Option<u64>, PgError> {
        let Some((_, file)) = self.prefetched()?.into_iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        let path = self.path(&file);
        let (_, written) = parse_prefetched(&file).expect("listed as prefetched");
        let (actual, len) =
            crc32c_file(&path, cores()).map_err(PgError::io("read", path.display()))?;
        if actual != written {
            self.remove(&file)?;
            return Err(PgError::SpoolDamaged {
                path: path.display().to_string(),
                reason: format!(
                    "its bytes ({len} of them) have CRC32C {actual:08x}, not the {written:08x} \
                     they were written with"
                ),
            });
        }
        match std::fs::rename(&path, dest) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // Another file system: a copy, whole or not at all.
                let tmp = dest.with_extension("resilience-partial");
                std::fs::copy(&path, &tmp)
                    .and_then(|_| std::fs::rename(&tmp, dest))
                    .map_err(PgError::io("write", dest.display()))?;
                self.remove(&file)?;
            }
            Err(e) => return Err(PgError::io("move into place", dest.display())(e)),
        }
        Ok(Some(len))
    }

    /// Whether segment `name` is prefetched, in place to be taken.
    fn is_prefetched(&self, name: &str) -> Result<bool, PgError> {
        Ok(self.prefetched()?.iter().any(|(n, _)| n == name))
    }

    /// Waits while the prefetcher is writing segment `name` (its temporary file is in the spool
    /// and grew within the last `stall`): `true` once the segment is prefetched, `false` as
    /// soon as nothing is being written for it, the writing stalls or no prefetcher holds the
    /// spool's lock. Recovery's next call would otherwise fetch the same segment a second time
    /// beside the prefetcher, both slower for sharing the machine.
    pub fn wait_for_prefetch(&self, name: &str, stall: Duration) -> Result<bool, PgError> {
        let mut last: Option<(u64, Instant)> = None;
        loop {
            if self.is_prefetched(name)? {
                return Ok(true);
            }
            let writing = self.writing(name)?;
            let Some(size) = writing else {
                // Not being written: unless it was renamed into place between the two looks.
                return self.is_prefetched(name);
            };
            match last {
                Some((seen, since)) if seen == size => {
                    if since.elapsed() >= stall {
                        return Ok(false);
                    }
                }
                _ => last = Some((size, Instant::now())),
            }
            if !self.locked(PREFETCHER_LOCK)? {
                // A killed prefetcher's leftover; but it may have finished just now.
                return self.is_prefetched(name);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes prefetched segments that can no longer be asked for after `asked`: of other
    /// timelines, or not after it.
    pub fn remove_stale_prefetched(&self, asked: &PrefetchRequest) -> Result<(), PgError> {
        if SegmentName::parse(&asked.name, asked.segment_size).is_none() {
            return Ok(());
        }
        // One listing (this runs on every served call).
        for file in self.files()? {
            let stale = match parse_prefetched(&file) {
                Some((name, _)) => !asked.is_ahead(name),
                // Segments an earlier version prefetched, named by their BLAKE3: never served.
                None => is_prefetched_by_blake3(&file),
            };
            if stale {
                self.remove(&file)?;
            }
        }
        Ok(())
    }

    /// Records the latest request for the prefetcher, whole or not at all: a symbolic link
    /// whose target is the request's text, renamed over the last one. A link holds no data
    /// blocks; renaming a regular file over another makes ext4 write the new one back first,
    /// 0.1–0.4 ms on every served call.
    pub fn request_prefetch(&self, request: &PrefetchRequest) -> Result<(), PgError> {
        use std::os::unix::ffi::OsStrExt;
        let tmp = self.temp_path(REQUEST_FILE);
        let text = request.encode();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&text), &tmp)
            .map_err(PgError::io("write", tmp.display()))?;
        let dest = self.path(REQUEST_FILE);
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            PgError::io("rename into place", dest.display())(e)
        })
    }

    /// The latest request, if any; one written as a regular file (by an earlier version) is
    /// read as well.
    fn read_request(&self) -> Result<Option<PrefetchRequest>, PgError> {
        use std::os::unix::ffi::OsStrExt;
        let path = self.path(REQUEST_FILE);
        let bytes = match std::fs::read_link(&path) {
            Ok(target) => target.as_os_str().as_bytes().to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(PgError::io("read", path.display())(e)),
            },
            Err(e) => return Err(PgError::io("read", path.display())(e)),
        };
        PrefetchRequest::decode(&bytes)
            .map(Some)
            .map_err(|reason| PgError::SpoolDamaged {
                path: path.display().to_string(),
                reason,
            })
    }
}

/// How the prefetcher works.
#[derive(Clone, Debug)]
pub struct PrefetchOptions {
    /// Segments fetched ahead of the one asked for.
    pub count: usize,
    /// Fetches at once.
    pub parallel: usize,
    /// Of those, how many open and write their segment at once (the rest are read, and wait
    /// their turn in segment order). By default one per core but one: recovery's replay
    /// (Postgres' startup process, one core) and its restore_command calls wait for none.
    pub writing: usize,
    /// The prefetcher exits once it had nothing to do for this long.
    pub idle: Duration,
    /// How often it reads the request again.
    pub poll: Duration,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        PrefetchOptions {
            count: 8,
            parallel: 4,
            writing: std::thread::available_parallelism().map_or(1, |n| n.get().max(2) - 1),
            idle: Duration::from_secs(5),
            poll: Duration::from_millis(20),
        }
    }
}

/// Runs the prefetcher of `spool` until it has been idle for `options.idle`; returns how many
/// segments it fetched. The caller holds the spool's [`PREFETCHER_LOCK`].
pub async fn run_prefetcher(
    wal: &WalArchive,
    spool: &Spool,
    options: &PrefetchOptions,
) -> Result<u64, PgError> {
    spool.remove_leftovers()?;
    let mut fetched = 0;
    let mut in_flight: HashSet<String> = HashSet::new();
    // Segments found not archived for the current request: not asked again until it changes.
    let mut absent: HashSet<String> = HashSet::new();
    // Segments fetched for the current request: not fetched again until it changes (one taken
    // from the spool by the call it served, before that call asks for the next ones, is gone
    // from the spool but not to be fetched a second time).
    let mut fetched_now: HashSet<String> = HashSet::new();
    let mut last_request: Option<PrefetchRequest> = None;
    let mut tasks: JoinSet<(String, Result<bool, PgError>)> = JoinSet::new();
    let turns = Turns::new(options.writing);
    let mut idle_since = Instant::now();
    loop {
        let request = spool.read_request()?;
        if request != last_request {
            absent.clear();
            fetched_now.clear();
            last_request = request.clone();
            idle_since = Instant::now();
        }
        if let Some(request) = &request {
            // Segments recovery has had meanwhile hold no later one up, however long their
            // objects take to read (a store that stalls).
            turns.leave_line(|name| request.is_ahead(name));
            let present: HashSet<String> =
                spool.prefetched()?.into_iter().map(|(n, _)| n).collect();
            // Past the first segment known not archived, nothing is fetched.
            let window: Vec<String> = request
                .window(options.count)
                .into_iter()
                .take_while(|n| !absent.contains(n))
                .collect();
            for name in window {
                if in_flight.len() >= options.parallel.max(1) {
                    break;
                }
                if present.contains(&name)
                    || in_flight.contains(&name)
                    || fetched_now.contains(&name)
                {
                    continue;
                }
                in_flight.insert(name.clone());
                let (wal, spool, asked) = (wal.clone(), spool.clone(), request.clone());
                // In line for a turn from here, in segment order, before any task runs.
                let in_line = turns.enter(&name);
                tasks.spawn(async move {
                    let got = prefetch_one(&wal, &spool, &name, &asked, in_line).await;
                    (name, got)
                });
            }
        }
        if in_flight.is_empty() {
            if idle_since.elapsed() >= options.idle {
                return Ok(fetched);
            }
            tokio::time::sleep(options.poll).await;
            continue;
        }
        idle_since = Instant::now();
        tokio::select! {
            done = tasks.join_next() => {
                if let Some(done) = done {
                    let (name, got) = done
                        .map_err(|e| PgError::Invalid(format!("a prefetch task failed: {e}")))?;
                    in_flight.remove(&name);
                    match got {
                        Ok(true) => {
                            fetched += 1;
                            fetched_now.insert(name);
                        }
                        Ok(false) => { absent.insert(name); }
                        Err(e) => {
                            // The caller fetches it itself, and reports what fails.
                            tracing::warn!(name, error = %e, "prefetch failed");
                            absent.insert(name);
                        }
                    }
                }
            }
            _ = tokio::time::sleep(options.poll) => {}
        }
    }
}

/// Fetches `name` into the spool, opening and writing it in its turn (`in_line`); `false` if
/// it is not archived. Its temporary file is there from the start, empty until it is written: a
/// call that asks for the segment meanwhile waits for this fetch
/// ([`Spool::wait_for_prefetch`]) rather than fetching it a second time beside it (a recovery's
/// second call came before the prefetcher had read its object, and took 30 ms for it instead
/// of 8).
async fn prefetch_one(
    wal: &WalArchive,
    spool: &Spool,
    name: &str,
    asked: &PrefetchRequest,
    in_line: InLine,
) -> Result<bool, PgError> {
    let (owned, segment_size) = (name.to_owned(), asked.segment_size);
    // The turn is taken once the object is read, and held until the segment is written.
    let ready = move || in_line.take();
    let tmp = spool.temp_path(name);
    std::fs::File::create(&tmp).map_err(PgError::io("create", tmp.display()))?;
    let (dest, written_to) = (spool.path(name), tmp.clone());
    let place = move |header: &WalHeader| {
        if header.size != segment_size {
            return Err(PgError::Invalid(format!(
                "archived segment {owned} holds {} bytes, the cluster's segments {segment_size}",
                header.size
            )));
        }
        Ok(FetchTarget {
            dest,
            tmp: written_to,
            // Not synced: a prefetched file is checked again before it is served, so one torn
            // by a crash is found and fetched anew; a sync would write 16 MiB back per segment
            // while recovery waits.
            durable: false,
            crc32c_in_name: true,
        })
    };
    let fetched = wal.fetch_to_file_when(name, ready, place).await;
    if !matches!(fetched, Ok(Some(_))) {
        // Not archived, refused or failed: nothing to wait for. (A failed write removed it.)
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(fetched?.is_some())
}

/// Turns to open and write prefetched segments: at most `limit` at once, in segment order
/// among the segments in flight. Opening and writing (decrypting, decompressing, checking,
/// writing 16 MiB) is what a prefetch spends its CPU on; with more fetches than cores, each
/// would otherwise share the cores with the later ones and the segment recovery asks for next
/// would be ready no sooner than they (the second call of a recovery waited 57 ms instead of
/// about 20 on two cores). A segment is in line from the start of its fetch
/// ([`Turns::enter`]), not only once its object is read: a later one read first would
/// otherwise go before it.
#[derive(Clone)]
struct Turns {
    inner: Arc<(Mutex<TurnState>, Condvar)>,
}

#[derive(Default)]
struct TurnState {
    limit: usize,
    writing: usize,
    /// Segments in flight that have not had their turn yet.
    in_line: BTreeSet<String>,
}

/// A segment's place in line for a turn; it leaves the line when dropped without taking one
/// (its fetch found nothing, or failed).
struct InLine {
    inner: Arc<(Mutex<TurnState>, Condvar)>,
    name: String,
}

/// A turn to write, given back when dropped.
struct Turn {
    inner: Arc<(Mutex<TurnState>, Condvar)>,
}

impl Turns {
    /// Turns for `limit` writers at once (at least one).
    fn new(limit: usize) -> Self {
        let state = TurnState {
            limit: limit.max(1),
            ..TurnState::default()
        };
        Turns {
            inner: Arc::new((Mutex::new(state), Condvar::new())),
        }
    }

    /// Takes the segments for which `needed` is false out of line: their fetches go on, but
    /// no later segment waits for them.
    fn leave_line(&self, needed: impl Fn(&str) -> bool) {
        let (lock, line_moved) = &*self.inner;
        let mut state = lock.lock().expect("not poisoned");
        let before = state.in_line.len();
        state.in_line.retain(|name| needed(name));
        if state.in_line.len() != before {
            line_moved.notify_all();
        }
    }

    /// Puts segment `name` in line, as its fetch starts.
    fn enter(&self, name: &str) -> InLine {
        let (lock, _) = &*self.inner;
        lock.lock()
            .expect("not poisoned")
            .in_line
            .insert(name.to_owned());
        InLine {
            inner: self.inner.clone(),
            name: name.to_owned(),
        }
    }
}

impl InLine {
    /// Blocks until the segment may be written: a turn is free and no earlier segment is in
    /// line (whether or not this one still is: [`Turns::leave_line`]).
    fn take(self) -> Turn {
        use std::ops::Bound;
        let (lock, line_moved) = &*self.inner;
        let mut state = lock.lock().expect("not poisoned");
        let earlier = (Bound::Unbounded, Bound::Excluded(self.name.as_str()));
        while state.writing >= state.limit
            || state.in_line.range::<str, _>(earlier).next().is_some()
        {
            state = line_moved.wait(state).expect("not poisoned");
        }
        state.in_line.remove(&self.name);
        state.writing += 1;
        // The next in line may take a turn that is still free.
        line_moved.notify_all();
        drop(state);
        Turn {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        let (lock, line_moved) = &*self.inner;
        if lock
            .lock()
            .expect("not poisoned")
            .in_line
            .remove(&self.name)
        {
            line_moved.notify_all();
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (lock, line_moved) = &*self.inner;
        lock.lock().expect("not poisoned").writing -= 1;
        line_moved.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn requests_decode_to_what_was_encoded(
            tl in 1u32.., segno in 0u64..(1 << 32), shift in 20u32..=30,
        ) {
            let segment_size = 1u64 << shift;
            let name = SegmentName { timeline: tl, segno }.file_name(segment_size);
            let r = PrefetchRequest { name, segment_size };
            prop_assert_eq!(PrefetchRequest::decode(&r.encode()), Ok(r.clone()));
            let bytes = r.encode();
            for cut in 0..bytes.len() {
                prop_assert!(PrefetchRequest::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let _ = PrefetchRequest::decode(&bytes);
        }
    }

    #[test]
    fn turns_go_in_segment_order_among_those_in_flight_and_never_to_more_than_the_limit() {
        let turns = Turns::new(1);
        let name = |tail: &str| format!("0000000100000000000000{tail}");
        // In line in segment order as their fetches start.
        let mut lines: Vec<InLine> = ["01", "02", "03", "04"]
            .iter()
            .map(|t| turns.enter(&name(t)))
            .collect();
        let first = lines.remove(0).take();
        let order = Arc::new(Mutex::new(Vec::new()));
        // How many hold a turn now, and the most that ever did.
        let at_once = Arc::new(Mutex::new((0usize, 0usize)));
        // Their objects are read in another order: the latest first.
        let mut waiters = Vec::new();
        for in_line in lines.into_iter().rev() {
            let (order, at_once) = (order.clone(), at_once.clone());
            waiters.push(std::thread::spawn(move || {
                let name = in_line.name.clone();
                let turn = in_line.take();
                {
                    let mut n = at_once.lock().unwrap();
                    n.0 += 1;
                    n.1 = n.1.max(n.0);
                }
                order.lock().unwrap().push(name);
                std::thread::sleep(Duration::from_millis(5));
                at_once.lock().unwrap().0 -= 1;
                drop(turn);
            }));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "none writes while the turn is held"
        );
        drop(first);
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [name("02"), name("03"), name("04")]);
        assert_eq!(
            at_once.lock().unwrap().1,
            1,
            "one turn, one writer at a time"
        );

        // A later segment read first waits for an earlier one in line that is not read yet;
        // one whose fetch found nothing leaves the line, and the next one goes.
        let gone = turns.enter(&name("05"));
        let next = turns.enter(&name("06"));
        let after = std::thread::spawn(move || drop(next.take()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!after.is_finished(), "06 went before 05");
        drop(gone);
        after.join().unwrap();

        // Recovery had 07 elsewhere (its store stalls): 08 no longer waits for it, and 07,
        // read at last, still gets a turn.
        let (stalled, later) = (turns.enter(&name("07")), turns.enter(&name("08")));
        let after = std::thread::spawn(move || drop(later.take()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!after.is_finished(), "08 went before 07");
        let asked = PrefetchRequest {
            name: name("07"),
            segment_size: 16 << 20,
        };
        turns.leave_line(|n| asked.is_ahead(n));
        after.join().unwrap();
        drop(stalled.take());

        // Two turns: two write at once, and a third waits for one of them.
        let turns = Turns::new(2);
        let (a, b, c) = (turns.enter("A"), turns.enter("B"), turns.enter("C"));
        let (a, b) = (a.take(), b.take());
        let third = std::thread::spawn(move || drop(c.take()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!third.is_finished(), "a third writer at once");
        drop(a);
        third.join().unwrap();
        drop(b);
        let state = turns.inner.0.lock().unwrap();
        assert_eq!(state.writing, 0, "every turn given back");
        assert!(state.in_line.is_empty(), "no one left in line");
    }

    #[test]
    fn the_window_follows_the_timeline_across_log_boundaries() {
        let r = PrefetchRequest {
            name: "0000000200000001000000FE".into(),
            segment_size: 16 << 20,
        };
        assert_eq!(
            r.window(3),
            vec![
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        assert!(PrefetchRequest::decode(b"0000000200000001000000FE 1000\n").is_err());
    }

    #[test]
    fn a_call_waits_for_the_segment_the_prefetcher_is_writing_and_only_for_it() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let name = "000000010000000000000002";
        // Generous where the test must not give up (a busy machine may pause the writer), short
        // where it must.
        let (patient, stall) = (Duration::from_secs(10), Duration::from_millis(200));
        // Nothing is being written for it: no wait.
        assert!(!spool.wait_for_prefetch(name, patient).unwrap());

        // A prefetcher (holding the lock) writes it piece by piece, then renames it into place.
        let lock = spool.try_lock(PREFETCHER_LOCK).unwrap().unwrap();
        let content: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
        let tmp = spool.temp_path(name);
        let mut file = std::fs::File::create(&tmp).unwrap();
        let writer = {
            let (spool, content) = (spool.clone(), content.clone());
            std::thread::spawn(move || {
                for piece in content.chunks(32 * 1024) {
                    file.write_all(piece).unwrap();
                    file.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
                let done = spool.path(&format!("{name}.{:08x}", crc32c::crc32c(&content)));
                std::fs::rename(&tmp, done).unwrap();
            })
        };
        // Waited for to the end: `true` only once the segment is in place.
        assert!(spool.wait_for_prefetch(name, patient).unwrap());
        writer.join().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(
            spool.take_prefetched(name, &dest).unwrap(),
            Some(content.len() as u64)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), content);

        // Another segment's file is no reason to wait.
        let other = spool.temp_path("000000010000000000000003");
        std::fs::write(&other, b"partial").unwrap();
        assert!(!spool.wait_for_prefetch(name, patient).unwrap());

        // A write that stands still: given up after the stall.
        let stuck = spool.temp_path(name);
        std::fs::write(&stuck, b"partial").unwrap();
        let started = Instant::now();
        assert!(!spool.wait_for_prefetch(name, stall).unwrap());
        assert!(started.elapsed() >= stall);

        // A killed prefetcher's leftover (nobody holds the lock): not waited for.
        drop(lock);
        let started = Instant::now();
        assert!(!spool
            .wait_for_prefetch(name, Duration::from_secs(60))
            .unwrap());
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn a_damaged_prefetched_segment_is_removed_and_named_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let good: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let crc = format!("{:08x}", crc32c::crc32c(&good));
        spool
            .write_durably(&format!("000000010000000000000002.{crc}"), &good)
            .unwrap();
        // Damage of every kind a crash or a disk leaves: a flipped bit, a torn end, a block
        // of zeros, another segment's bytes.
        let mut flipped = good.clone();
        flipped[1000] ^= 1;
        let mut zeroed = good.clone();
        zeroed[8192..12288].fill(0);
        let damaged: [(&str, &[u8]); 4] = [
            ("000000010000000000000003", &flipped),
            ("000000010000000000000005", &good[..good.len() - 4096]),
            ("000000010000000000000006", &zeroed),
            ("000000010000000000000007", &[7u8; 1000]),
        ];
        for (name, bytes) in damaged {
            spool
                .write_durably(&format!("{name}.{crc}"), bytes)
                .unwrap();
        }
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(
            spool
                .take_prefetched("000000010000000000000002", &dest)
                .unwrap(),
            Some(good.len() as u64)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), good);
        std::fs::remove_file(&dest).unwrap();
        for (name, _) in damaged {
            let err = spool.take_prefetched(name, &dest).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            assert!(err.to_string().contains(&crc), "{err}");
            assert!(!dest.exists(), "{name}: nothing served");
            assert_eq!(spool.take_prefetched(name, &dest).unwrap(), None, "{name}");
        }
        // Names that are not a segment and a CRC32C are not prefetched files.
        for other in [
            format!("000000010000000000000008.{}", blake3::hash(&good).to_hex()),
            "000000010000000000000008.0000000g".to_owned(),
            "00000001000000000000008.00000000".to_owned(),
        ] {
            assert_eq!(parse_prefetched(&other), None, "{other}");
        }
        assert_eq!(
            parse_prefetched("000000010000000000000008.deadBEEF"),
            Some(("000000010000000000000008", 0xdead_beef))
        );
        for n in [
            "000000010000000000000004",
            "000000010000000000000009",
            "000000020000000000000009",
        ] {
            spool.write_durably(&format!("{n}.{crc}"), &good).unwrap();
        }
        let by_blake3 = format!("00000001000000000000000A.{}", blake3::hash(&good).to_hex());
        spool.write_durably(&by_blake3, &good).unwrap();
        spool
            .write_durably("00000001000000000000000A.push", b"{}")
            .unwrap();
        spool
            .remove_stale_prefetched(&PrefetchRequest {
                name: "000000010000000000000004".into(),
                segment_size: 1 << 20,
            })
            .unwrap();
        let files = spool.files().unwrap();
        assert!(!files.contains(&by_blake3), "{files:?}");
        assert!(
            files.contains(&"00000001000000000000000A.push".to_owned()),
            "{files:?}"
        );
        let left: Vec<String> = spool
            .prefetched()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(left, vec!["000000010000000000000009"]);
    }

    #[test]
    fn the_latest_request_is_read_back_whole_in_either_form() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        assert_eq!(spool.read_request().unwrap(), None);
        let asked = |n: &str| PrefetchRequest {
            name: n.into(),
            segment_size: 16 << 20,
        };
        for n in ["000000010000000000000004", "000000020000000000000003"] {
            spool.request_prefetch(&asked(n)).unwrap();
            assert_eq!(spool.read_request().unwrap(), Some(asked(n)));
        }
        // A link, replaced in place: no temporary is left, no data block written.
        let meta = std::fs::symlink_metadata(spool.path(REQUEST_FILE)).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(spool.files().unwrap(), vec![REQUEST_FILE.to_owned()]);
        // A regular file, as an earlier version wrote it.
        std::fs::remove_file(spool.path(REQUEST_FILE)).unwrap();
        spool
            .write_whole(
                REQUEST_FILE,
                &asked("000000010000000000000009").encode(),
                false,
            )
            .unwrap();
        assert_eq!(
            spool.read_request().unwrap(),
            Some(asked("000000010000000000000009"))
        );
        // A torn or foreign one is damage, named.
        std::fs::remove_file(spool.path(REQUEST_FILE)).unwrap();
        std::os::unix::fs::symlink("000000010000000000000009 16777", spool.path(REQUEST_FILE))
            .unwrap();
        let err = spool.read_request().unwrap_err();
        assert!(err.to_string().contains(REQUEST_FILE), "{err}");
    }

    /// A repository over a pausable in-memory store whose WAL archive holds `segment` (1 MiB):
    /// the store, the archive and the segment's content.
    async fn archive_holding(
        segment: &str,
    ) -> (
        Arc<resilience_core::testing::PausableSink>,
        WalArchive,
        Vec<u8>,
    ) {
        use resilience_core::keys::KeyFileProvider;
        use resilience_core::repo::{InitOptions, Repository};
        use resilience_core::sink::MemorySink;
        use resilience_core::testing::PausableSink;
        let sink = Arc::new(PausableSink::new(Arc::new(MemorySink::new())));
        let key = KeyFileProvider::from_key([5; 32]);
        let repo = Repository::init(sink.clone(), &key, InitOptions::default())
            .await
            .unwrap();
        let wal = WalArchive::new(&repo, "main").unwrap();
        let content: Vec<u8> = (0..1u32 << 20).map(|i| (i * 13 % 241) as u8).collect();
        wal.push(segment, content.clone().into()).await.unwrap();
        (sink, wal, content)
    }

    /// The call a prefetched segment served takes it from the spool before it asks for the
    /// next ones: meanwhile the prefetcher, still on the old request, must not fetch it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_taken_from_the_spool_is_not_fetched_again_for_the_same_request() {
        let (asked, coming) = ("000000010000000000000001", "000000010000000000000002");
        let (_sink, wal, content) = archive_holding(coming).await;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        spool
            .request_prefetch(&PrefetchRequest {
                name: asked.into(),
                segment_size: 1 << 20,
            })
            .unwrap();
        let lock = spool.try_lock(PREFETCHER_LOCK).unwrap().unwrap();
        let options = PrefetchOptions {
            count: 1,
            idle: Duration::from_millis(300),
            ..PrefetchOptions::default()
        };
        let prefetcher = {
            let (wal, spool) = (wal.clone(), spool.clone());
            tokio::spawn(async move { run_prefetcher(&wal, &spool, &options).await })
        };
        let poll = PrefetchOptions::default().poll;
        let dest = dir.path().join("RECOVERYXLOG");
        let started = Instant::now();
        while spool.take_prefetched(coming, &dest).unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never prefetched"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        // Ten of the prefetcher's polls on the same request: the segment stays taken.
        tokio::time::sleep(poll * 10).await;
        assert!(spool.prefetched().unwrap().is_empty());
        assert_eq!(spool.writing(coming).unwrap(), None);
        assert_eq!(prefetcher.await.unwrap().unwrap(), 1);
        drop(lock);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_is_marked_as_coming_before_its_object_is_read() {
        let (asked, coming, absent) = (
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
        );
        let (sink, wal, content) = archive_holding(coming).await;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let request = PrefetchRequest {
            name: asked.into(),
            segment_size: 1 << 20,
        };
        spool.request_prefetch(&request).unwrap();
        // The store stands still: no object can be read.
        sink.pause();
        let lock = spool.try_lock(PREFETCHER_LOCK).unwrap().unwrap();
        let options = PrefetchOptions {
            count: 2,
            idle: Duration::from_millis(300),
            ..PrefetchOptions::default()
        };
        let prefetcher = {
            let (wal, spool) = (wal.clone(), spool.clone());
            tokio::spawn(async move { run_prefetcher(&wal, &spool, &options).await })
        };
        // Both segments are marked as being written, empty, while their objects are not read.
        let started = Instant::now();
        while spool.writing(coming).unwrap() != Some(0) || spool.writing(absent).unwrap().is_none()
        {
            assert!(started.elapsed() < Duration::from_secs(60), "never marked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A call for the coming one waits for it (not fetching it a second time), and is
        // served once the store goes on; the one not archived is unmarked, and not waited for.
        let waiter = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || {
                spool.wait_for_prefetch(coming, Duration::from_secs(60))
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiter.is_finished(),
            "a call did not wait for the marked segment"
        );
        sink.resume();
        assert!(waiter.await.unwrap().unwrap());
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(
            spool.take_prefetched(coming, &dest).unwrap(),
            Some(content.len() as u64)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        let started = Instant::now();
        while spool.writing(absent).unwrap().is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never unmarked"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!spool
            .wait_for_prefetch(absent, Duration::from_secs(60))
            .unwrap());
        // As the served call does: the next request is for what it served.
        spool
            .request_prefetch(&PrefetchRequest {
                name: coming.into(),
                segment_size: 1 << 20,
            })
            .unwrap();
        assert_eq!(prefetcher.await.unwrap().unwrap(), 1);
        drop(lock);
    }
}
