//! A restore's reads in batches: blobs that follow one another in the restore's order and lie
//! side by side in one pack are read with one ranged read and opened in one trip to the CPU
//! threads. A tree of a million small files is then a few thousand reads, not a million (each
//! of which opened a pack, read it and woke two threads).
//!
//! A blob of a batch that does not read back authentic is read again alone, from every copy
//! the index knows ([`super::read_blob_from`]): batching changes the cost, never the outcome.

use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{Error, Result};
use crate::format::blob::{self, BlobId};
use crate::format::index::BlobLocation;
use crate::format::pack::{self, PackId};
use crate::format::snapshot::{BlobRef, TreeRecord};
use crate::repo::Repository;

use super::Step;

/// Stored bytes one batch's read covers, at most (a blob larger than this is read alone).
const MAX_SPAN: u64 = 1 << 20;
/// Plaintext bytes of one batch, at most (likewise).
const MAX_RAW: u64 = 1 << 20;
/// Bytes between two blobs of a batch that are read and dropped (blobs of other files, or
/// deduplicated ones), at most.
const MAX_GAP: u64 = 32 << 10;
/// Entries of one batch, at most: a run of directories or empty files is not held back.
const MAX_ITEMS: usize = 1024;

/// One step of a restore, before its content is read.
pub(super) enum Item {
    /// An entry starts.
    Begin(TreeRecord),
    /// A blob of its content, and every copy of it the index knows (the first is read).
    Blob(BlobRef, Vec<BlobLocation>),
    /// The entry ends.
    End,
}

/// The part of a pack a batch reads.
#[derive(Clone, Copy)]
struct Span {
    pack: PackId,
    start: u64,
    end: u64,
}

/// Consecutive items whose blobs are read with one ranged read.
#[derive(Default)]
pub(super) struct Batch {
    items: Vec<Item>,
    span: Option<Span>,
    raw: u64,
}

impl Batch {
    /// Whether `item` can join the batch.
    fn fits(&self, item: &Item) -> bool {
        if self.items.len() >= MAX_ITEMS {
            return false;
        }
        let (Item::Blob(_, copies), Some(span)) = (item, &self.span) else {
            return true;
        };
        let Some(loc) = copies.first() else {
            return false;
        };
        let (at, end) = (loc.offset as u64, loc.offset as u64 + loc.length as u64);
        loc.pack == span.pack
            && at >= span.end
            && at - span.end <= MAX_GAP
            && end - span.start <= MAX_SPAN
            && self.raw + loc.raw_len as u64 <= MAX_RAW
    }

    fn push(&mut self, item: Item) {
        if let Item::Blob(_, copies) = &item {
            if let Some(loc) = copies.first() {
                let (at, end) = (loc.offset as u64, loc.offset as u64 + loc.length as u64);
                match &mut self.span {
                    Some(span) => span.end = end,
                    None => {
                        self.span = Some(Span {
                            pack: loc.pack,
                            start: at,
                            end,
                        })
                    }
                }
                self.raw += loc.raw_len as u64;
            }
        }
        self.items.push(item);
    }

    /// The bytes the batch holds while it is read and opened: what it reads, and what that
    /// opens to. Zero for a batch without content.
    pub(super) fn bytes(&self) -> u64 {
        self.span.map_or(0, |s| s.end - s.start) + self.raw
    }
}

/// Groups `items` into batches, in order; an error comes in its place, after the batch before
/// it (the restore stops at it).
pub(super) fn batches<S>(items: S) -> impl Stream<Item = Result<Batch>> + Send
where
    S: Stream<Item = Result<Item>> + Send,
{
    stream::unfold(Box::pin(items.peekable()), |mut items| async move {
        let mut batch = Batch::default();
        loop {
            let fits = match items.as_mut().peek().await {
                None => break,
                Some(Err(_)) if !batch.items.is_empty() => break,
                Some(Err(_)) => {
                    let Some(Err(e)) = items.next().await else {
                        unreachable!("the item peeked is an error")
                    };
                    return Some((Err(e), items));
                }
                Some(Ok(item)) => batch.fits(item),
            };
            if !fits && !batch.items.is_empty() {
                break;
            }
            let Some(Ok(item)) = items.next().await else {
                unreachable!("the item peeked is there")
            };
            batch.push(item);
        }
        (!batch.items.is_empty()).then_some((Ok(batch), items))
    })
}

/// Reads and opens a batch's blobs: the restore's steps for its items, in order. `permit` (the
/// batch's share of the read budget) goes with its last piece of content.
pub(super) async fn read(
    repo: Repository,
    batch: Batch,
    mut permit: Option<OwnedSemaphorePermit>,
) -> Result<Vec<Step>> {
    let mut opened = match batch.span {
        Some(span) => open_span(&repo, &batch.items, span).await,
        None => Vec::new(),
    }
    .into_iter();
    let pieces = batch
        .items
        .iter()
        .filter(|i| matches!(i, Item::Blob(..)))
        .count();
    let (mut steps, mut seen) = (Vec::with_capacity(batch.items.len()), 0);
    for item in batch.items {
        steps.push(match item {
            Item::Begin(rec) => Step::Begin(rec),
            Item::End => Step::End,
            Item::Blob(r, copies) => {
                seen += 1;
                let data = match opened.next() {
                    Some(Ok(data)) => data,
                    // Not read (the span's read failed) or not authentic: alone, from every
                    // copy, as an unbatched read would.
                    Some(Err(e)) if !e.is_damage() => return Err(e),
                    _ => super::read_blob_from(&repo, r.id, copies).await?,
                };
                Step::Piece(data, if seen == pieces { permit.take() } else { None })
            }
        });
    }
    Ok(steps)
}

/// The span's blobs, opened on the CPU threads: one result per blob of `items`, or none at all
/// when the span does not read (every blob is then read alone).
async fn open_span(repo: &Repository, items: &[Item], span: Span) -> Vec<Result<Bytes>> {
    let key = pack::pack_key(&span.pack);
    let Ok(sealed) = repo.sink.get_range(&key, span.start..span.end).await else {
        return Vec::new();
    };
    // One per blob item, in order; `None` for one without a copy.
    let blobs: Vec<(BlobId, Option<BlobLocation>)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Blob(r, copies) => Some((r.id, copies.first().copied())),
            _ => None,
        })
        .collect();
    let mut keys = repo.keys();
    for loc in blobs.iter().filter_map(|(_, loc)| loc.as_ref()) {
        if keys.data_key(loc.key_id).is_none() {
            match repo.keys.holding(Some(loc.key_id)).await {
                Ok(k) => keys = k,
                Err(_) => return Vec::new(),
            }
        }
    }
    crate::ops::cpu::run("blob decoding", move || {
        blobs
            .iter()
            .map(|(id, loc)| {
                let loc = loc.ok_or(Error::BlobMissing { blob: id.to_hex() })?;
                let from = (loc.offset as u64 - span.start) as usize;
                let sealed = &sealed[from..from + loc.length as usize];
                blob::decode_blob(&keys, loc.key_id, loc.kind, id, loc.raw_len, sealed, &key)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::blob::BlobKind;

    fn blob(pack: u8, offset: u32, length: u32) -> Result<Item> {
        let loc = BlobLocation {
            pack: BlobId([pack; 32]),
            key_id: 1,
            kind: BlobKind::Data,
            offset,
            length,
            raw_len: length * 2,
        };
        Ok(Item::Blob(
            BlobRef {
                id: BlobId([offset as u8; 32]),
                len: length * 2,
            },
            vec![loc],
        ))
    }

    /// The shape of each batch: `B` a blob, `E` an end, `!` an error.
    async fn shapes(items: Vec<Result<Item>>) -> Vec<String> {
        batches(stream::iter(items))
            .map(|b| match b {
                Err(_) => "!".to_string(),
                Ok(b) => b
                    .items
                    .iter()
                    .map(|i| match i {
                        Item::Begin(_) => 'S',
                        Item::Blob(..) => 'B',
                        Item::End => 'E',
                    })
                    .collect(),
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn blobs_side_by_side_in_one_pack_are_read_together_and_nothing_else_is() {
        // Adjacent, then a gap within the limit: one batch.
        assert_eq!(
            shapes(vec![
                blob(1, 0, 100),
                blob(1, 100, 100),
                Ok(Item::End),
                blob(1, 30 << 10, 10)
            ])
            .await,
            ["BBEB"]
        );
        // Another pack, a gap too wide, a blob behind the last: a new batch each time.
        assert_eq!(
            shapes(vec![
                blob(1, 0, 100),
                blob(2, 100, 100),
                blob(2, 100 + 100 + (33 << 10), 1),
                blob(2, 0, 1)
            ])
            .await,
            ["B", "B", "B", "B"]
        );
        // A read of more than MAX_SPAN stored bytes, or of more than MAX_RAW plaintext bytes.
        assert_eq!(
            shapes(vec![blob(1, 0, 600 << 10), blob(1, 600 << 10, 500 << 10)]).await,
            ["B", "B"]
        );
        assert_eq!(
            shapes(vec![blob(1, 0, 300 << 10), blob(1, 300 << 10, 300 << 10)]).await,
            ["B", "B"]
        );
        // A blob larger than a batch is read alone, with the items around it.
        assert_eq!(
            shapes(vec![Ok(Item::End), blob(1, 0, 4 << 20), Ok(Item::End)]).await,
            ["EBE"]
        );
        // Entries without content are not held back for ever.
        let ends: Vec<Result<Item>> = (0..MAX_ITEMS + 1).map(|_| Ok(Item::End)).collect();
        assert_eq!(shapes(ends).await.len(), 2);
    }

    #[tokio::test]
    async fn an_error_comes_in_its_place_after_the_batch_before_it() {
        let err = || Err(crate::error::Error::BlobMissing { blob: "x".into() });
        assert_eq!(
            shapes(vec![
                blob(1, 0, 10),
                blob(1, 10, 10),
                err(),
                blob(1, 20, 10)
            ])
            .await,
            ["BB", "!", "B"]
        );
        assert_eq!(shapes(vec![err()]).await, ["!"]);
        let mut two = Box::pin(batches(stream::iter(vec![blob(1, 0, 10), blob(1, 20, 10)])));
        let batch = two.next().await.unwrap().unwrap();
        // What it reads (30 bytes, the gap with them) and what that opens to (40).
        assert_eq!(batch.bytes(), 70);
    }
}
