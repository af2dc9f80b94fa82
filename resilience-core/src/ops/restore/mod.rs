//! Restoring a snapshot into a [`Target`], and reading trees and blobs back.
//!
//! Blob reads run in parallel (ranged reads of packs, decryption on the CPU threads) while
//! the target receives each entry's content in order; memory is bounded by the read window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{stream, StreamExt};

use crate::catalog::BackupRecord;
use crate::error::{Error, Result};
use crate::format::blob::{self, BlobId};
use crate::format::index::{BlobLocation, Index};
use crate::format::pack;
use crate::format::snapshot::{BlobRef, Content, TreeDecoder, TreeRecord};
use crate::ops::memory::RestoreShares;
use crate::ops::progress::Progress;
use crate::repo::Repository;
use crate::source::{ContentCheck, ContentWriter, Target};

mod batch;
use batch::Item;

/// Entries whose [`Target::wants`] is asked ahead of the one being written.
const WANTS_AHEAD: usize = 16;

/// How to restore.
#[derive(Clone)]
pub struct RestoreOptions {
    /// Blob reads in flight, at most (the memory budget may allow fewer).
    pub concurrency: usize,
    /// Bytes the restore may hold at once, whatever the size of the data: a quarter of it for
    /// the blobs read ahead of the target ([`crate::ops::memory::RestoreShares`]), the rest for
    /// the target's writes, the tree and the reserve. Default
    /// [`crate::ops::memory::DEFAULT_MEMORY`] (64 MiB).
    pub memory: usize,
    /// Progress reports.
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            concurrency: 16,
            memory: crate::ops::memory::DEFAULT_MEMORY,
            progress: None,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot: String,
    /// Entries written (those the target wanted).
    pub entries: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Wall time.
    pub duration: Duration,
}

/// Reads one blob: a ranged read of its pack, then decryption, decompression and re-hashing on
/// the CPU threads (`ops::cpu`).
pub async fn read_blob(repo: &Repository, id: BlobId, loc: BlobLocation) -> Result<Bytes> {
    let key = pack::pack_key(&loc.pack);
    let end = loc.offset as u64 + loc.length as u64;
    let sealed = repo.sink.get_range(&key, loc.offset as u64..end).await?;
    let keys = repo.keys.holding(Some(loc.key_id)).await?;
    crate::ops::cpu::run("blob decoding", move || {
        blob::decode_blob(&keys, loc.key_id, loc.kind, &id, loc.raw_len, &sealed, &key)
    })
    .await?
}

/// Reads one blob from the first of `copies` that reads back authentic: a copy that is damaged
/// or gone is passed over with a warning naming it. `BlobMissing` when there is no copy; the
/// first copy's error when none reads.
pub async fn read_blob_from(
    repo: &Repository,
    id: BlobId,
    copies: Vec<BlobLocation>,
) -> Result<Bytes> {
    let mut first_error = None;
    for loc in copies {
        match read_blob(repo, id, loc).await {
            Ok(bytes) => {
                if let Some(e) = &first_error {
                    tracing::warn!(blob = %id, error = %e, used = %pack::pack_key(&loc.pack), "a copy of a blob does not read back; another copy was used");
                }
                return Ok(bytes);
            }
            Err(e) if e.is_damage() => {
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(first_error.unwrap_or(Error::BlobMissing { blob: id.to_hex() }))
}

/// Streams the records of a snapshot's tree, reading one tree blob ahead.
pub struct TreeReader {
    repo: Repository,
    blobs: VecDeque<(BlobRef, Vec<BlobLocation>)>,
    next_blob: Option<tokio::task::JoinHandle<Result<Bytes>>>,
    decoder: TreeDecoder,
    object: String,
}

impl TreeReader {
    /// A reader of the tree made of `tree` blobs, located with `index`.
    pub fn new(repo: Repository, index: &Index, tree: &[BlobRef]) -> Self {
        Self::from_locations(
            repo,
            tree.iter().map(|r| (*r, index.copies(&r.id))).collect(),
        )
    }

    /// A reader of tree blobs whose locations are already resolved.
    pub fn from_locations(repo: Repository, blobs: VecDeque<(BlobRef, Vec<BlobLocation>)>) -> Self {
        let mut reader = TreeReader {
            repo,
            blobs,
            next_blob: None,
            decoder: TreeDecoder::new(),
            object: "tree".into(),
        };
        reader.prefetch();
        reader
    }

    fn prefetch(&mut self) {
        if let Some((r, loc)) = self.blobs.pop_front() {
            let repo = self.repo.clone();
            self.object = format!("tree blob {}", r.id);
            self.next_blob = Some(tokio::spawn(async move {
                read_blob_from(&repo, r.id, loc).await
            }));
        }
    }

    /// The next record, or `None` at the end of the tree.
    pub async fn next(&mut self) -> Result<Option<TreeRecord>> {
        loop {
            if let Some(rec) = self.decoder.next_record(&self.object)? {
                return Ok(Some(rec));
            }
            let Some(handle) = self.next_blob.take() else {
                self.decoder.finish(&self.object)?;
                return Ok(None);
            };
            let piece = handle.await.map_err(Error::task("tree read"))??;
            self.prefetch();
            self.decoder.feed(&piece);
        }
    }
}

/// The index a restore reads with. A blob that no index file lists (an index file was lost:
/// readers cannot tell without listing `data/`) makes it read, once, the tables of every pack
/// that no index file lists, and look there: derived state costs time, never a restore.
struct RestoreIndex {
    repo: Repository,
    index: Index,
    unlisted: tokio::sync::OnceCell<Index>,
}

impl RestoreIndex {
    /// Every copy of blob `id` the index files know, or else the copy a pack no index file
    /// lists holds; `BlobMissing` when there is none.
    async fn copies(&self, id: &BlobId) -> Result<Vec<BlobLocation>> {
        let known = self.index.copies(id);
        if !known.is_empty() {
            return Ok(known);
        }
        let unlisted = self
            .unlisted
            .get_or_try_init(|| async {
                let packs = self.repo.unindexed_packs(&self.index).await?;
                if !packs.is_empty() {
                    tracing::warn!(
                        packs = packs.len(),
                        "a blob is in no index file: reading it from the packs no index file \
                         lists; run `resilience repair index`"
                    );
                }
                let mut index = Index::new();
                for p in &packs {
                    index.add_pack(p);
                }
                index.compact();
                Ok::<Index, Error>(index)
            })
            .await?;
        let copies = unlisted.copies(id);
        if copies.is_empty() {
            return Err(Error::BlobMissing { blob: id.to_hex() });
        }
        Ok(copies)
    }

    /// A reader of `record`'s tree, its blobs located through [`RestoreIndex::copies`].
    async fn tree_reader(&self, record: &BackupRecord) -> Result<TreeReader> {
        let manifest = self.repo.load_manifest(record).await?;
        let mut blobs = VecDeque::with_capacity(manifest.tree.len());
        for r in &manifest.tree {
            blobs.push_back((*r, self.copies(&r.id).await?));
        }
        Ok(TreeReader::from_locations(self.repo.clone(), blobs))
    }
}

enum Step {
    Begin(TreeRecord),
    /// A blob's content, and its share of the read budget (given back when dropped).
    Piece(Bytes, Option<tokio::sync::OwnedSemaphorePermit>),
    End,
}

/// The read budget is counted in units of this many bytes.
const PERMIT_BYTES: usize = 64 << 10;

/// The units of the read budget a batch holding `bytes` (read and opened) takes, at most all
/// of them: a batch larger than the budget is read alone.
fn permits_for(bytes: u64, total: u32) -> u32 {
    bytes.div_ceil(PERMIT_BYTES as u64).clamp(1, total as u64) as u32
}

impl Repository {
    /// A reader of a succeeded snapshot's tree.
    pub async fn tree_reader(&self, record: &BackupRecord, index: &Index) -> Result<TreeReader> {
        let manifest = self.load_manifest(record).await?;
        Ok(TreeReader::new(self.clone(), index, &manifest.tree))
    }

    /// Restores snapshot `spec` (`latest`, an id or a unique prefix) into `target`.
    pub async fn restore(
        &self,
        spec: &str,
        target: &dyn Target,
        options: RestoreOptions,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        self.refresh_keys().await?;
        let record = self.resolve_snapshot(spec, None).await?;
        if record.tier != self.tier {
            return match &self.cold {
                Some(cold) if record.tier == cold.tier => {
                    Box::pin(cold.restore(&record.id, target, options)).await
                }
                _ => Err(Error::TierNotAttached {
                    operation: "restore",
                    backup: record.id.clone(),
                    tier: record.tier,
                }),
            };
        }
        let index = Arc::new(RestoreIndex {
            repo: self.clone(),
            index: self.load_read_index().await?,
            unlisted: tokio::sync::OnceCell::new(),
        });
        let mut tree = index.tree_reader(&record).await?;
        let keys = self.keys();

        let read_bytes = RestoreShares::of(options.memory).read_bytes;
        let permits_total = (read_bytes / PERMIT_BYTES).max(1) as u32;
        let budget = Arc::new(tokio::sync::Semaphore::new(permits_total as usize));

        // Pass 1: content. A stream of steps, blobs read in batches running ahead in a bounded
        // window; the target says which entries it wants first, so the others are never read.
        let items = stream::unfold(Some(tree), |state| async move {
            let mut reader = state?;
            match reader.next().await {
                Ok(Some(rec)) => Some((Ok(rec), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .map(|rec: Result<TreeRecord>| {
            let keys = keys.clone();
            async move {
                let rec = rec?;
                let check = ContentCheck::new(&keys, &rec.content, rec.meta.size);
                let wanted = target.wants(&rec.meta, &check).await?;
                Ok((rec, wanted))
            }
        })
        .buffered(WANTS_AHEAD)
        .flat_map(|rec: Result<(TreeRecord, bool)>| {
            let plans: Vec<Result<StepPlan>> = match rec {
                Err(e) => vec![Err(e)],
                Ok((_, false)) => Vec::new(),
                Ok((rec, true)) => {
                    let blobs: Vec<BlobRef> = rec.content.blobs().to_vec();
                    let mut v = vec![Ok(StepPlan::Begin(rec))];
                    v.extend(blobs.into_iter().map(|b| Ok(StepPlan::Blob(b))));
                    v.push(Ok(StepPlan::End));
                    v
                }
            };
            stream::iter(plans)
        })
        // Every blob located (an in-memory lookup, unless an index file was lost).
        .then(|plan| {
            let index = index.clone();
            async move {
                Ok(match plan? {
                    StepPlan::Begin(rec) => Item::Begin(rec),
                    StepPlan::End => Item::End,
                    StepPlan::Blob(r) => Item::Blob(r, index.copies(&r.id).await?),
                })
            }
        });
        // Each batch's bytes are reserved in order, before its read starts, and given back once
        // the target took its last piece: reads ahead stay within the budget, and a batch
        // waiting for bytes never holds back one before it.
        let steps = batch::batches(items)
            .then(|batch| {
                let budget = budget.clone();
                async move {
                    let batch = batch?;
                    let permit = match batch.bytes() {
                        0 => None,
                        bytes => Some(
                            budget
                                .clone()
                                .acquire_many_owned(permits_for(bytes, permits_total))
                                .await
                                .map_err(|_| Error::Internal {
                                    operation: "restore",
                                    detail: "the read budget was closed",
                                })?,
                        ),
                    };
                    Ok::<_, Error>((batch, permit))
                }
            })
            .map(|planned| {
                let repo = self.clone();
                async move {
                    let (batch, permit) = planned?;
                    batch::read(repo, batch, permit).await
                }
            })
            .buffered(options.concurrency.max(1))
            .flat_map(|steps: Result<Vec<Step>>| {
                stream::iter(match steps {
                    Ok(steps) => steps.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                })
            });
        futures::pin_mut!(steps);

        let (mut entries, mut bytes) = (0u64, 0u64);
        let mut writer: Option<Box<dyn ContentWriter>> = None;
        while let Some(step) = steps.next().await {
            match step? {
                Step::Begin(rec) => {
                    entries += 1;
                    if let Some(p) = &options.progress {
                        p.entry(&rec.meta);
                    }
                    let mut w = target.create(&rec.meta).await?;
                    if let (Some(w), Content::Inline(data)) = (w.as_mut(), &rec.content) {
                        bytes += data.len() as u64;
                        w.write(Bytes::copy_from_slice(data)).await?;
                    }
                    writer = w;
                }
                Step::Piece(data, _permit) => {
                    let w = writer.as_mut().ok_or(Error::Internal {
                        operation: "restore",
                        detail: "content without an open entry",
                    })?;
                    bytes += data.len() as u64;
                    if let Some(p) = &options.progress {
                        p.bytes(data.len() as u64);
                    }
                    w.write(data).await?;
                }
                Step::End => {
                    if let Some(w) = writer.take() {
                        w.complete().await?;
                    }
                }
            }
        }

        // Pass 2: metadata that writing content would disturb (directory times, modes).
        tree = index.tree_reader(&record).await?;
        while let Some(rec) = tree.next().await? {
            target.apply_metadata(&rec.meta).await?;
        }
        target.finish().await?;
        Ok(RestoreReport {
            snapshot: record.id,
            entries,
            bytes,
            duration: started.elapsed(),
        })
    }
}

enum StepPlan {
    Begin(TreeRecord),
    Blob(BlobRef),
    End,
}
