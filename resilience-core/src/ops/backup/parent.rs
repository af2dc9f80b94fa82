//! The parent snapshot: the latest succeeded snapshot of the same source, whose tree is walked
//! alongside the new entries so that an unchanged entry reuses its content without being read.

use chrono::{DateTime, Utc};

use super::Shared;
use crate::catalog::{BackupRecord, BackupStatus, Catalog, CatalogQuery};
use crate::error::Result;
use crate::format::index::{Index, PackRecord};
use crate::format::snapshot::{Content, TreeRecord};
use crate::ops::restore::TreeReader;
use crate::repo::Repository;
use crate::source::entry::{EntryKind, EntryMeta};

/// Walks the parent snapshot's tree alongside the new entries, to reuse unchanged content.
pub(super) struct ParentCursor {
    reader: Option<TreeReader>,
    current: Option<TreeRecord>,
    /// The source's order, which its previous snapshot's tree is in too.
    pub(super) order: crate::source::EntryOrder,
}

impl ParentCursor {
    /// No parent: every entry is read.
    pub(super) fn none() -> Self {
        ParentCursor {
            reader: None,
            current: None,
            order: Default::default(),
        }
    }

    /// The tree of `parent`, its blobs found in `index` or in the packs of the running prunes'
    /// `plans`.
    pub(super) async fn open(
        repo: &Repository,
        parent: &BackupRecord,
        index: &Index,
        plans: &[(String, DateTime<Utc>, Vec<PackRecord>)],
    ) -> Result<Self> {
        let manifest = repo.load_manifest(parent).await?;
        // The parent's tree is only read: it may also be found in packs a running prune
        // condemned (never deduplicated against).
        let mut in_plans = Index::new();
        plans
            .iter()
            .flat_map(|(_, _, p)| p.iter())
            .for_each(|p| in_plans.add_pack(p));
        let locations = manifest
            .tree
            .iter()
            .map(|r| {
                let mut copies = index.copies(&r.id);
                copies.extend(in_plans.copies(&r.id));
                (*r, copies)
            })
            .collect();
        let mut cursor = ParentCursor::none();
        cursor.reader = Some(TreeReader::from_locations(repo.clone(), locations));
        Ok(cursor)
    }

    /// The parent's content for an entry whose fingerprint is unchanged: its blobs, or its
    /// inline bytes for small content (which is then not read again either).
    async fn find(&mut self, meta: &EntryMeta) -> Result<Option<Content>> {
        let Some(fingerprint) = &meta.fingerprint else {
            return Ok(None);
        };
        loop {
            if self.current.is_none() {
                let Some(reader) = self.reader.as_mut() else {
                    return Ok(None);
                };
                self.current = reader.next().await?;
                if self.current.is_none() {
                    self.reader = None;
                    return Ok(None);
                }
            }
            let cur = self.current.as_ref().expect("set above");
            match self.order.cmp(&cur.meta.path, &meta.path) {
                std::cmp::Ordering::Less => self.current = None,
                std::cmp::Ordering::Greater => return Ok(None),
                std::cmp::Ordering::Equal => {
                    let same = cur.meta.kind == EntryKind::File
                        && cur.meta.size == meta.size
                        && cur.meta.fingerprint.as_ref() == Some(fingerprint);
                    return Ok(same.then(|| cur.content.clone()));
                }
            }
        }
    }

    /// The parent's content for an unchanged entry, if every blob of it is still indexed (a
    /// blob in a condemned pack is stored again instead).
    pub(super) async fn reusable(
        &mut self,
        meta: &EntryMeta,
        shared: &Shared,
    ) -> Result<Option<Content>> {
        Ok(self.find(meta).await?.filter(|content| match content {
            Content::Blobs(refs) => {
                let dedup = shared.dedup.lock().expect("dedup lock poisoned");
                refs.iter().all(|r| dedup.index.contains(&r.id))
            }
            _ => true,
        }))
    }
}

impl Repository {
    /// The latest succeeded snapshot of a source.
    pub async fn latest_for_source(&self, source_id: &str) -> Result<Option<BackupRecord>> {
        Ok(self
            .catalog()
            .list(&CatalogQuery {
                source: Some(source_id.to_owned()),
                statuses: vec![BackupStatus::Succeeded],
                ..Default::default()
            })
            .await?
            .pop())
    }
}
