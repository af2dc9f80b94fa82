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
use crate::source::{DropGuardReader, EntryReader};

/// What the read-ahead stage hands the backup loop, in source order.
pub(super) enum Ahead {
    /// Unchanged since the parent: its content (blobs or inline bytes), without reading.
    Reused(EntryMeta, Content),
    /// Content to store: read ahead into memory for small files, else the source's reader.
    Content(EntryMeta, EntryReader),
    /// An entry without content.
    NoContent(EntryMeta),
    /// The source's metadata, after its last entry.
    Finished(crate::source::SourceMetadata),
}

/// Files up to this size are read ahead whole, several at once.
const READ_AHEAD_MAX_FILE: u64 = 1 << 20;
/// Entries in flight in the read-ahead stage.
const READ_AHEAD_ENTRIES: usize = 8;

/// Pulls entries from the source ahead of the backup loop: decides reuse from the parent
/// snapshot (so unchanged files are never read) and reads small files concurrently, so a tree
/// of many small files is not read one blocking call at a time. Memory: at most
/// [`READ_AHEAD_ENTRIES`] files of at most [`READ_AHEAD_MAX_FILE`] bytes.
pub(super) fn spawn_read_ahead(
    mut session: Box<dyn crate::source::SourceSession>,
    mut cursor: ParentCursor,
    shared: Arc<Shared>,
) -> (
    tokio::sync::mpsc::Receiver<Result<Ahead>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_ENTRIES);
    cursor.order = session.entry_order();
    let task = tokio::spawn(async move {
        let mut inflight: FuturesOrdered<futures::future::BoxFuture<'static, Result<Ahead>>> =
            FuturesOrdered::new();
        let mut done = false;
        // Every content reader handed on holds a clone of `open_readers`; when the last one is
        // read or dropped, `all_read` ends.
        let (open_readers, mut all_read) = tokio::sync::mpsc::channel::<()>(1);
        loop {
            while !done && inflight.len() < READ_AHEAD_ENTRIES {
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
                let item: futures::future::BoxFuture<'static, Result<Ahead>> =
                    match (meta.kind, entry.content) {
                        (EntryKind::File, Some(reader)) => {
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
                                None if meta.size <= READ_AHEAD_MAX_FILE => Box::pin(async move {
                                    let mut buf = Vec::with_capacity(meta.size as usize + 1);
                                    reader.read_to_end(&mut buf).await.map_err(|e| {
                                        crate::source::AdapterError::new(
                                            "read",
                                            meta.path.to_string(),
                                            e,
                                        )
                                    })?;
                                    let reader: EntryReader = Box::pin(std::io::Cursor::new(buf));
                                    Ok(Ahead::Content(meta, reader))
                                }),
                                None => Box::pin(futures::future::ready(Ok(Ahead::Content(
                                    meta, reader,
                                )))),
                            }
                        }
                        _ => Box::pin(futures::future::ready(Ok(Ahead::NoContent(meta)))),
                    };
                inflight.push_back(item);
            }
            match inflight.next().await {
                Some(item) => {
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
                None => break,
            }
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
                            Ahead::Content(entry.meta, reader)
                        }
                        _ => Ahead::NoContent(entry.meta),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
        let finished = session
            .finish()
            .await
            .map(Ahead::Finished)
            .map_err(Error::from);
        let _ = tx.send(finished).await;
    });
    (rx, task)
}
