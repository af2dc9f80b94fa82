//! Taking a backup: entries from a [`Source`] are chunked, hashed, deduplicated, compressed,
//! sealed and packed; the snapshot and its catalog record become visible only after every pack
//! and index they depend on is durable.
//!
//! Memory stays bounded whatever the data: a bounded window of chunks is in flight, packs are
//! uploaded with bounded concurrency, and the tree is written as it is produced.

mod packer;
mod parent;
mod pipeline;
mod read_ahead;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::packer::Packer;
use self::parent::ParentCursor;
use self::pipeline::Pipeline;
use self::read_ahead::{spawn_read_ahead, Ahead};
use crate::catalog::{BackupKind, BackupRecord, BackupStatus, Catalog, CatalogQuery};
use crate::error::{Error, Result};
use crate::format::blob::BlobId;
use crate::format::chunker::Chunker;
use crate::format::crypto::KeySet;
use crate::format::index::{Index, PackRecord};
use crate::format::object::{self, ObjectKind};
use crate::format::pack;
use crate::format::snapshot::{self, Content, Manifest};
use crate::ops::memory::BackupShares;
use crate::ops::progress::Progress;
use crate::repo::lock::{self, LockKind, RepoLock};
use crate::repo::{self, Repository};
use crate::source::Source;
use crate::time::stop::StopSignal;

/// How to take a backup.
#[derive(Clone)]
pub struct BackupOptions {
    /// Labels recorded with the backup.
    pub labels: BTreeMap<String, String>,
    /// Reuse unchanged entries of the latest succeeded snapshot of the same source.
    pub use_parent: bool,
    /// Batches of chunks hashed, compressed and sealed at once: a chunk of a large file makes
    /// a batch alone, the chunks of small files go in runs of up to 64 (256 KiB), so a tree of
    /// small files keeps every core busy without a trip between threads for each file.
    pub chunk_concurrency: usize,
    /// Packs uploaded at once, at most (the memory budget may allow fewer).
    pub upload_concurrency: usize,
    /// Bytes the backup may hold at once: its buffers (read-ahead, chunks, packs being filled
    /// and uploaded) and a reserve for what they do not count, whatever the size of the data:
    /// [`crate::ops::memory`] says how it is shared. Default
    /// [`crate::ops::memory::DEFAULT_MEMORY`] (64 MiB).
    pub memory: usize,
    /// Progress reports.
    pub progress: Option<Arc<dyn Progress>>,
    /// When given, the backup stops at this signal and is recorded failed ("interrupted").
    pub stop: Option<StopSignal>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        BackupOptions {
            labels: BTreeMap::new(),
            use_parent: true,
            chunk_concurrency: cores * 2,
            upload_concurrency: 2,
            memory: crate::ops::memory::DEFAULT_MEMORY,
            progress: None,
            stop: None,
        }
    }
}

/// What a backup did.
#[derive(Clone, Debug)]
pub struct BackupReport {
    /// The snapshot's catalog record, as finally written.
    pub record: BackupRecord,
    /// Entries whose content was reused from the parent without reading.
    pub reused_entries: u64,
    /// Wall time.
    pub duration: Duration,
}

/// What the stages of one backup share: the repository, what it already holds, and the lock.
struct Shared {
    repo: Repository,
    /// The keys this whole backup seals with, read once its lock is held: a change of keys
    /// made meanwhile (another task re-reading them) never splits a pack between two keys.
    keys: Arc<KeySet>,
    dedup: Mutex<Dedup>,
    /// The backup's lock: no index file is written once it has lapsed.
    lock: lock::LockCheck,
}

/// The blobs the repository holds and the ones this backup claimed, so each is stored once.
struct Dedup {
    index: Index,
    /// Blobs this backup is storing whose packs are not in `index` yet; a pack's blobs leave
    /// the set when the pack is indexed (every few packs), so it holds a few packs' worth of
    /// ids, not every blob of the backup (a hash set costs 33–75 bytes an id; keeping every id
    /// of a first backup of a million 1–8 KiB files cost 26–29 MiB of its peak RSS).
    claimed: HashSet<BlobId>,
    /// Packs holding blobs this backup deduplicated against (or wrote): each must still exist
    /// when the snapshot commits.
    used_packs: HashSet<pack::PackId>,
}

impl Repository {
    /// Backs up `source` into a new snapshot.
    pub async fn backup(
        &self,
        source: &dyn Source,
        options: BackupOptions,
    ) -> Result<BackupReport> {
        let started = Instant::now();
        let started_at = self.clock.now();
        let id = repo::new_backup_id(started_at);
        let descriptor = source.descriptor();
        let lock = self
            .lock_fresh(LockKind::Shared, "backup", Some(id.clone()))
            .await?;
        if let Err(e) = self.reap_interrupted().await {
            tracing::warn!(error = %e, "could not mark interrupted backups failed");
        }
        let catalog = self.catalog();
        let mut record = BackupRecord {
            id: id.clone(),
            revision: 1,
            source: descriptor.clone(),
            kind: BackupKind::Full,
            status: BackupStatus::Running,
            error: None,
            started_at,
            finished_at: None,
            logical_bytes: 0,
            stored_bytes: 0,
            new_bytes: 0,
            entries: 0,
            manifest_checksum: None,
            tier: Default::default(),
            labels: options.labels.clone(),
            legal_hold: false,
            verifications: Vec::new(),
            source_metadata: Default::default(),
            parent: None,
            host: lock::host_name(),
            updated_at: started_at,
            salvage: None,
        };
        if let Err(e) = catalog.put(&record).await {
            // Nothing of the backup is written yet (its record at most, which then stays
            // `running` with no live lock, as after a crash): give the lock back rather than
            // leave it to expire.
            if let Err(e) = lock.release().await {
                tracing::warn!(error = %e, "could not remove the backup lock; it will expire");
            }
            return Err(e);
        }
        let outcome = match &options.stop {
            None => self.run_backup(source, &options, &mut record, &lock).await,
            Some(stop) => {
                // Dropping the unfinished run leaves at most unindexed packs, which the next
                // backup adopts or prune collects: the same state as a crash, never a
                // snapshot that claims more than is stored.
                tokio::select! {
                    biased;
                    _ = stop.stopped() => Err(Error::Interrupted {
                        operation: format!("backup {id}"),
                        reason: stop.reason(),
                    }),
                    r = self.run_backup(source, &options, &mut record, &lock) => r,
                }
            }
        };
        // The manifest is visible now; the backup counts only if the lock still held after
        // that (so no prune could have judged the lock gone and collected what it wrote).
        let outcome = match outcome {
            Ok(reused) => match lock.check() {
                Ok(()) => Ok(reused),
                Err(lapsed) => {
                    let manifest = snapshot::manifest_key(&id);
                    if let Err(e) = self.sink.delete(&manifest).await {
                        tracing::warn!(error = %e, %manifest, "could not remove the manifest of a backup whose lock lapsed");
                    }
                    Err(lapsed)
                }
            },
            // Whatever failed after the lock lapsed (a pack that a prune removed meanwhile, …)
            // is a symptom: the lapse is the cause, and what the error names.
            Err(e) => match lock.check() {
                Err(Error::LockLapsed {
                    location,
                    lock,
                    detail,
                }) => Err(Error::LockLapsed {
                    location,
                    lock,
                    detail: format!("{detail}; the backup then failed: {e}"),
                }),
                _ => Err(e),
            },
        };
        record.revision += 1;
        record.finished_at = Some(self.clock.now());
        record.updated_at = self.clock.now();
        let result = match outcome {
            Ok(reused) => {
                record.status = BackupStatus::Succeeded;
                // A failure here is the backup's (the lock is released below all the same).
                catalog.put(&record).await.map(|()| BackupReport {
                    record: record.clone(),
                    reused_entries: reused,
                    duration: started.elapsed(),
                })
            }
            Err(e) => {
                record.status = BackupStatus::Failed;
                record.error = Some(crate::error::error_chain(&e));
                // A reaper that judged this backup gone may have written this revision's
                // `failed` already: the real cause then goes in the next revision.
                let mut recorded = catalog.put(&record).await;
                if let Err(Error::Sink(crate::sink::SinkError::AlreadyExists { .. })) = &recorded {
                    if let Ok(Some(current)) = catalog.get(&id).await {
                        record.revision = current.revision + 1;
                        recorded = catalog.put(&record).await;
                    }
                }
                if let Err(e2) = recorded {
                    tracing::warn!(error = %e2, backup = %id, "could not record the failure");
                }
                Err(e)
            }
        };
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not remove the backup lock; it will expire");
        }
        result
    }

    async fn run_backup(
        &self,
        source: &dyn Source,
        options: &BackupOptions,
        record: &mut BackupRecord,
        lock: &RepoLock,
    ) -> Result<u64> {
        // The intact index files only: a damaged one's packs are found by the listing of
        // unindexed packs just below (adopted and indexed again by this backup), so `data/` is
        // listed once.
        let mut index = self.load_intact_index().await?.index;
        // Packs a prune condemned are not adopted: the prune decides their fate. (A damaged
        // plan's packs may be: no prune runs that plan, which `repair index` removes.)
        let (plans, _) = self.readable_prune_plans().await?;
        let condemned: HashSet<crate::format::pack::PackId> = plans
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|r| r.id))
            .collect();
        let adopted: Vec<PackRecord> = self
            .unindexed_packs(&index)
            .await?
            .into_iter()
            .filter(|p| !condemned.contains(&p.id))
            .collect();
        for p in &adopted {
            index.add_pack(p);
        }
        let parent = if options.use_parent {
            self.latest_for_source(&record.source.id).await?
        } else {
            None
        };
        let cursor = match &parent {
            Some(parent) => {
                let cursor = ParentCursor::open(self, parent, &index, &plans).await?;
                record.parent = Some(parent.id.clone());
                record.kind = BackupKind::Incremental;
                cursor
            }
            None => ParentCursor::none(),
        };
        let keys = self.keys();
        let shared = Arc::new(Shared {
            repo: self.clone(),
            keys: keys.clone(),
            dedup: Mutex::new(Dedup {
                index,
                claimed: HashSet::new(),
                used_packs: HashSet::new(),
            }),
            lock: lock.checker(),
        });
        let shares = BackupShares::of(
            options.memory,
            self.config.pack_size as usize,
            self.config.chunker.max_size as usize,
        );
        let mut packer = Packer::new(
            shared.clone(),
            options.upload_concurrency.min(shares.uploads),
        );
        packer.unindexed = adopted;
        let mut pipeline = Pipeline::new(
            shared.clone(),
            options.chunk_concurrency,
            shares.chunk_bytes,
        );
        let mut chunker = Chunker::new(self.config.chunker, keys.chunker_seed());

        // On failure, the uploads still in flight settle before the error is returned: a
        // backup that returned writes nothing more (a full disk is freed of its staging files
        // before the caller's next step, say a prune).
        let packed: Result<_> = async {
            let mut reused = 0u64;
            let session = source.start().await?;
            let (mut ahead, reader_task) = spawn_read_ahead(session, cursor, shared.clone(), &shares);
            let mut source_metadata = None;
            loop {
              let batch = match ahead.try_recv() {
                  Ok(batch) => batch,
                  Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
                  Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                      // Nothing more read yet: the chunks gathered meanwhile go to the CPU
                      // threads rather than wait for the next files to fill their batch.
                      pipeline.send_gathered(&mut packer).await?;
                      match ahead.recv().await {
                          Some(batch) => batch,
                          None => break,
                      }
                  }
              };
              for item in batch {
                match item? {
                    Ahead::Reused(meta, content) => {
                        reused += 1;
                        if let Some(p) = &options.progress {
                            p.entry(&meta);
                            p.bytes(meta.size);
                        }
                        pipeline.add_entry(meta, content, &mut packer).await?;
                    }
                    Ahead::Content(meta, reader, cutting) => {
                        if let Some(p) = &options.progress {
                            p.entry(&meta);
                        }
                        pipeline
                            .store_content(
                                reader,
                                meta,
                                cutting,
                                &mut chunker,
                                &mut packer,
                                options.progress.as_ref(),
                            )
                            .await?;
                    }
                    Ahead::Read(meta, data, cutting) => {
                        if let Some(p) = &options.progress {
                            p.entry(&meta);
                        }
                        pipeline
                            .store_read(
                                meta,
                                data,
                                cutting,
                                &mut chunker,
                                &mut packer,
                                options.progress.as_ref(),
                            )
                            .await?;
                    }
                    Ahead::NoContent(meta) => {
                        if let Some(p) = &options.progress {
                            p.entry(&meta);
                        }
                        pipeline.add_entry(meta, Content::None, &mut packer).await?;
                    }
                    Ahead::Vanished(meta) => {
                        tracing::debug!(entry = %meta.path, "left out: it vanished before it was read");
                    }
                    Ahead::Finished(metadata) => source_metadata = Some(metadata),
                }
              }
            }
            let _ = reader_task.await;
            let source_metadata = source_metadata.ok_or_else(|| Error::SourceUnfinished {
                source_id: record.source.id.clone(),
            })?;
            pipeline.finish(&mut packer).await?;
            packer.finish().await?;
            Ok((source_metadata, reused))
        }
        .await;
        let (source_metadata, reused) = match packed {
            Ok(packed) => packed,
            Err(e) => {
                packer.settle().await;
                return Err(e);
            }
        };
        self.check_used_packs_exist(&shared).await?;
        lock.check()?;

        let finished_at = self.clock.now();
        let manifest = Manifest {
            format: snapshot::SNAPSHOT_FORMAT,
            id: record.id.clone(),
            source: record.source.clone(),
            started_at: record.started_at,
            finished_at,
            entries: pipeline.entries,
            logical_bytes: pipeline.logical_bytes,
            tree: std::mem::take(&mut pipeline.tree_refs),
            source_metadata: source_metadata.clone(),
            labels: record.labels.clone(),
            parent: record.parent.clone(),
        };
        let key = snapshot::manifest_key(&record.id);
        let sealed = object::seal_object(
            &keys,
            ObjectKind::Snapshot,
            &key,
            &serde_json::to_vec(&manifest).expect("manifest serializes"),
        );
        let checksum = object::stored_checksum(&sealed).expect("has checksum");
        let manifest_len = sealed.len() as u64;
        self.sink
            .put(&key, sealed.into(), crate::sink::PutMode::Create)
            .await?;

        record.entries = pipeline.entries;
        record.logical_bytes = pipeline.logical_bytes;
        record.new_bytes = pipeline.new_bytes;
        record.stored_bytes = packer.stored_bytes + manifest_len;
        record.manifest_checksum = Some(checksum);
        record.source_metadata = source_metadata;
        Ok(reused)
    }

    /// Fails, naming it, if a pack this backup deduplicated against is gone (a prune
    /// collected it while an index file still named it): committing would reference lost data.
    async fn check_used_packs_exist(&self, shared: &Shared) -> Result<()> {
        use futures::TryStreamExt;
        let used =
            std::mem::take(&mut shared.dedup.lock().expect("dedup lock poisoned").used_packs);
        if used.is_empty() {
            return Ok(());
        }
        let mut present: HashSet<pack::PackId> = HashSet::with_capacity(used.len());
        let mut listing = self.sink.list("data/");
        while let Some(meta) = listing.try_next().await? {
            if let Some(id) = pack::pack_id_from_key(&meta.key).filter(|id| used.contains(id)) {
                present.insert(id);
            }
        }
        match used.iter().find(|id| !present.contains(*id)) {
            None => Ok(()),
            Some(missing) => Err(Error::corrupt(
                pack::pack_key(missing),
                "this backup deduplicated against it, but it is gone (collected by a prune while an index still named it): nothing was committed; run `resilience repair index` and back up again",
            )),
        }
    }

    /// Marks `running` backups whose process is gone (no live lock names them) as failed. A
    /// backup judged gone that was only paused cannot commit afterwards: its own lock check
    /// finds the lapse, and should it have committed first, its `succeeded` revision outranks
    /// this `failed` one of the same number ([`crate::catalog`]).
    pub async fn reap_interrupted(&self) -> Result<usize> {
        let catalog = self.catalog();
        let running = catalog
            .list(&CatalogQuery {
                statuses: vec![BackupStatus::Running],
                ..Default::default()
            })
            .await?;
        if running.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let locks = lock::list_locks(self.sink.as_ref()).await?;
        let live: HashSet<String> = locks
            .live_others(None, now)
            .filter_map(|l| l.info.backup_id.clone())
            .collect();
        let mut reaped = 0;
        for mut r in running.into_iter().filter(|r| !live.contains(&r.id)) {
            r.revision += 1;
            r.status = BackupStatus::Failed;
            r.error = Some("interrupted: its process stopped before it finished".into());
            r.updated_at = now;
            catalog.put(&r).await?;
            reaped += 1;
        }
        Ok(reaped)
    }
}
