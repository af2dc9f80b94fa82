//! The read-ahead stage: a task pulls entries from the source ahead of the backup loop, decides
//! reuse from the parent snapshot and reads small files concurrently; once every content reader
//! it handed on is done with (each is a [`DropGuardReader`]), it asks the source for its closing
//! entries.

use std::sync::Arc;

use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::parent::ParentCursor;
use super::Shared;
use crate::error::{Error, Result};
use crate::format::snapshot::Content;
use crate::source::entry::{EntryKind, EntryMeta};
use crate::source::{Cutting, DropGuardReader, EntryReader, Vanished};

/// What the read-ahead stage hands the backup loop, in source order.
pub(super) enum Ahead {
    /// Unchanged since the parent: its content (blobs or inline bytes), without reading.
    Reused(EntryMeta, Content),
    /// Content to store, read by the backup loop from the source's reader (a large file);
    /// cut into chunks as the source asked.
    Content(EntryMeta, EntryReader, Cutting),
    /// A small file's content, read ahead whole; cut into chunks as the source asked.
    Read(EntryMeta, Vec<u8>, Cutting),
    /// An entry without content.
    NoContent(EntryMeta),
    /// A file that disappeared before it was read ([`Vanished`]): left out.
    Vanished(EntryMeta),
    /// The source's metadata, after its last entry.
    Finished(crate::source::SourceMetadata),
}

/// Entries in flight in the read-ahead stage, at most (their bytes are bounded by the
/// read-ahead share as well). With 8, the threads reading small files ran out of work between
/// files and were woken again for the next one: 100,000 files of 1–8 KiB, with their chunks
/// sealed in batches, took 2.83–2.94 s to back up with 8 and 2.35–2.61 s with 64 (256 gained
/// nothing more).
const READ_AHEAD_ENTRIES: usize = 64;
/// Batches handed on and not yet taken by the backup loop, at most.
const HANDED_ON: usize = 2;
/// Entries in a batch, at most: the backup loop is woken once a batch, not once an entry (a
/// tree of small files spent a quarter of its CPU time switching threads).
const BATCH_ENTRIES: usize = 128;

/// Entries handed on together, in source order.
pub(super) type Batch = Vec<Result<Ahead>>;

/// Pulls entries from the source ahead of the backup loop: decides reuse from the parent
/// snapshot (so unchanged files are never read) and reads small files concurrently, so a tree
/// of many small files is not read one blocking call at a time. Entries go on in batches: a
/// batch goes as soon as it is full, holds an eighth of the share in small files, holds an
/// entry whose reader streams from the source (a large file: the backup loop starts on it at
/// once), or nothing more is ready. Memory: files of at most
/// `read_ahead_max_file` bytes, half the share being read, and at most half the share handed
/// on ([`HANDED_ON`] batches, the one being built and the one the backup loop works through,
/// an eighth each).
pub(super) fn spawn_read_ahead(
    mut session: Box<dyn crate::source::SourceSession>,
    mut cursor: ParentCursor,
    shared: Arc<Shared>,
    shares: &crate::ops::memory::BackupShares,
) -> (
    tokio::sync::mpsc::Receiver<Batch>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(HANDED_ON);
    let max_file = shares.read_ahead_max_file;
    let reading_budget = (shares.read_ahead_bytes / 2) as u64;
    let batch_budget = (shares.read_ahead_bytes / 8) as u64;
    cursor.order = session.entry_order();
    let task = tokio::spawn(async move {
        let mut inflight: FuturesOrdered<futures::future::BoxFuture<'static, Result<Ahead>>> =
            FuturesOrdered::new();
        // Bytes of the small files being read: in all, and each entry's (with whether its
        // reader streams from the source), in order.
        let mut reading = 0u64;
        let mut sizes = std::collections::VecDeque::new();
        let (mut batch, mut batch_bytes): (Batch, u64) = (Vec::new(), 0);
        let mut done = false;
        // Every content reader handed on holds a clone of `open_readers`; when the last one is
        // read or dropped, `all_read` ends.
        let (open_readers, mut all_read) = tokio::sync::mpsc::channel::<()>(1);
        loop {
            while !done && inflight.len() < READ_AHEAD_ENTRIES && reading < reading_budget {
                let entry = match session.next_entry().await {
                    Ok(Some(entry)) => entry,
                    Ok(None) => {
                        done = true;
                        break;
                    }
                    Err(e) => {
                        inflight.push_back(Box::pin(futures::future::ready(Err(e.into()))));
                        done = true;
                        break;
                    }
                };
                let meta = entry.meta;
                let mut read_size = 0u64;
                let mut streams = false;
                let item: futures::future::BoxFuture<'static, Result<Ahead>> =
                    match (meta.kind, entry.content) {
                        (EntryKind::File, Some(reader)) => {
                            let cutting = session.cutting(&meta);
                            let open = open_readers.clone();
                            let mut reader = DropGuardReader::wrap(reader, move || drop(open));
                            let reuse = match cursor.reusable(&meta, &shared).await {
                                Ok(r) => r,
                                Err(e) => {
                                    inflight.push_back(Box::pin(futures::future::ready(Err(e))));
                                    done = true;
                                    break;
                                }
                            };
                            match reuse {
                                Some(refs) => {
                                    Box::pin(futures::future::ready(Ok(Ahead::Reused(meta, refs))))
                                }
                                None if meta.size <= max_file => {
                                    read_size = meta.size;
                                    Box::pin(async move {
                                        let mut buf = Vec::with_capacity(meta.size as usize + 1);
                                        match reader.read_to_end(&mut buf).await {
                                            Ok(_) => {}
                                            Err(e) if Vanished::is(&e) => {
                                                return Ok(Ahead::Vanished(meta))
                                            }
                                            Err(e) => {
                                                return Err(crate::source::AdapterError::new(
                                                    "read",
                                                    meta.path.to_string(),
                                                    e,
                                                )
                                                .into())
                                            }
                                        }
                                        Ok(Ahead::Read(meta, buf, cutting))
                                    })
                                }
                                None => {
                                    streams = true;
                                    Box::pin(futures::future::ready(Ok(Ahead::Content(
                                        meta, reader, cutting,
                                    ))))
                                }
                            }
                        }
                        _ => Box::pin(futures::future::ready(Ok(Ahead::NoContent(meta)))),
                    };
                reading += read_size;
                sizes.push_back((read_size, streams));
                inflight.push_back(item);
            }
            // What is ready goes into the batch; the batch goes before waiting for more.
            let next = match futures::FutureExt::now_or_never(inflight.next()) {
                Some(next) => next,
                None => {
                    if !send(&tx, &mut batch, &mut batch_bytes).await {
                        return;
                    }
                    inflight.next().await
                }
            };
            match next {
                Some(item) => {
                    let (size, streams) = sizes.pop_front().unwrap_or((0, false));
                    reading -= size;
                    let failed = item.is_err();
                    batch.push(item);
                    batch_bytes += size;
                    if (failed
                        || streams
                        || batch.len() >= BATCH_ENTRIES
                        || batch_bytes >= batch_budget)
                        && (!send(&tx, &mut batch, &mut batch_bytes).await || failed)
                    {
                        return;
                    }
                }
                None => break,
            }
        }
        if !send(&tx, &mut batch, &mut batch_bytes).await {
            return;
        }
        // The walk is over and every entry is on its way: its closing entries come once all
        // content was read, so a source's stop (Postgres' `pg_backup_stop`) follows its last read.
        drop(open_readers);
        let _ = all_read.recv().await;
        match session.closing_entries().await {
            Ok(entries) => {
                for entry in entries {
                    let item = match entry.content {
                        Some(reader) if entry.meta.kind == EntryKind::File => {
                            let cutting = session.cutting(&entry.meta);
                            Ahead::Content(entry.meta, reader, cutting)
                        }
                        _ => Ahead::NoContent(entry.meta),
                    };
                    if tx.send(vec![Ok(item)]).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(vec![Err(e.into())]).await;
                return;
            }
        }
        let finished = session
            .finish()
            .await
            .map(Ahead::Finished)
            .map_err(Error::from);
        let _ = tx.send(vec![finished]).await;
    });
    (rx, task)
}

/// Hands the batch on, if it holds anything; `false` when the backup loop is gone.
async fn send(tx: &tokio::sync::mpsc::Sender<Batch>, batch: &mut Batch, bytes: &mut u64) -> bool {
    if batch.is_empty() {
        return true;
    }
    *bytes = 0;
    tx.send(std::mem::take(batch)).await.is_ok()
}
