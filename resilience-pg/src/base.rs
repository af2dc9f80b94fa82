//! Physical base backups of a co-located cluster.
//!
//! A session is held open from `pg_backup_start(label, fast)` to `pg_backup_stop`; in
//! between, the data directory (and each tablespace, under `pg_tblspc/<oid>/`) is walked in
//! order and streamed through the engine, skipping what Postgres' documentation says a base
//! backup must not contain. `backup_label` and `tablespace_map`, returned by `pg_backup_stop`,
//! become entries after the walk; LSNs, timeline and versions go to the catalog. On a primary
//! the backup then waits, as `pg_backup_stop(true)` would but without its one-second naps,
//! until Postgres has archived the WAL the backup needs ([`crate::archive_wait`]).
//!
//! When the cluster has data checksums on, every page of every relation file read is validated
//! on its way through ([`crate::page_verify`]); corrupt pages are logged and recorded in the
//! catalog ([`BaseBackupInfo::page_checks`]), and with
//! [`PgBaseSource::fail_on_corrupt_page`] they refuse the backup.
//!
//! Reuse of unchanged files: the engine reuses a file of the previous snapshot when its
//! fingerprint (size, mtime, ctime, inode) is unchanged. File times are coarse (a kernel tick),
//! so a file written in the same tick as it was read could look unchanged afterwards. A file
//! modified within [`HOT_WINDOW`] of the backup's start therefore gets no fingerprint: it is
//! read again next time. Changes made after `pg_backup_start` are repaired by WAL replay.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use resilience_core::source::entry::{EntryKind, EntryMeta, EntryPath};
use resilience_core::source::fs::DirSource;
use resilience_core::source::{
    AdapterError, Cutting, DropGuardReader, Source, SourceDescriptor, SourceEntry, SourceMetadata,
    SourceSession,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::archive::DEFAULT_SOURCE;
use crate::lsn::{Lsn, SegmentName};
use crate::page_checksum::{DEFAULT_SEGMENT_BLOCKS, PAGE_SIZE};
use crate::page_verify::{CorruptPagesError, PageCheckReport, PageChecker};

/// Files modified this recently before the backup starts are not trusted to be unchanged next
/// time (see the module documentation).
pub const HOT_WINDOW: Duration = Duration::from_secs(10);

/// Top-level directories whose contents a base backup leaves out (the directories are kept).
const EMPTIED_DIRS: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Top-level files a base backup leaves out.
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "current_logfiles",
    "recovery.signal",
    "standby.signal",
];

/// What the catalog records about a base backup (its `source_metadata`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBackupInfo {
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// `server_version`, e.g. `15.8`.
    pub pg_version: String,
    /// `server_version_num`, e.g. 150008.
    pub pg_version_num: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Where the backup's WAL begins (the checkpoint's redo point).
    pub start_lsn: Lsn,
    /// Where it ends: recovery must replay at least to here to be consistent.
    pub stop_lsn: Lsn,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// The first WAL segment it needs.
    pub start_wal: String,
    /// Server time at `pg_backup_start`.
    pub start_time: DateTime<Utc>,
    /// Server time after `pg_backup_stop`: every transaction that committed before is in it.
    pub stop_time: DateTime<Utc>,
    /// `pg_current_snapshot()` after the stop (`xmin:xmax:xip,…`): which transactions ended
    /// before the backup's end, to pick a backup for a transaction-id target.
    pub stop_snapshot: String,
    /// Tablespace oid → location at backup time.
    #[serde(default)]
    pub tablespaces: HashMap<String, String>,
    /// The data directory backed up.
    pub pgdata: String,
    /// The WAL archive (source name) its WAL goes to.
    pub wal_source: String,
    /// Page checksum validation: whether it ran, and the corrupt pages it found.
    #[serde(default)]
    pub page_checks: PageCheckReport,
}

impl BaseBackupInfo {
    /// The info recorded in a catalog record's metadata, if it is a Postgres base backup.
    pub fn from_metadata(meta: &SourceMetadata) -> Option<Self> {
        let map: serde_json::Map<String, serde_json::Value> =
            meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        serde_json::from_value(serde_json::Value::Object(map)).ok()
    }

    fn to_metadata(&self) -> SourceMetadata {
        match serde_json::to_value(self).expect("serializes") {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => unreachable!("a struct serializes to an object"),
        }
    }

    /// Whether transaction `xid` (64-bit, as `txid_current()` returns) was still unfinished at
    /// the backup's end, so that recovery from this backup can reach its commit.
    pub fn xid_ends_after(&self, xid: u64) -> bool {
        let mut parts = self.stop_snapshot.splitn(3, ':');
        let (Some(_xmin), Some(xmax)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(xmax) = xmax.parse::<u64>() else {
            return false;
        };
        let running: HashSet<u64> = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect();
        xid >= xmax || running.contains(&xid)
    }
}

/// A base backup of a cluster whose data directory is on this host.
#[derive(Clone, Debug)]
pub struct PgBaseSource {
    pgdata: PathBuf,
    dsn: crate::connect::Dsn,
    id: String,
    wal_source: String,
    fast_checkpoint: bool,
    fail_on_corrupt_page: bool,
    archive_timeout: Duration,
}

impl PgBaseSource {
    /// Backs up the cluster at `pgdata`, controlled through a superuser (or `pg_backup`-role)
    /// connection `dsn` (`host=… port=… user=…` or a `postgres://` URL).
    pub fn new(pgdata: impl Into<PathBuf>, dsn: impl Into<String>) -> Self {
        PgBaseSource {
            pgdata: pgdata.into(),
            dsn: crate::connect::Dsn::new(dsn),
            id: DEFAULT_SOURCE.to_owned(),
            wal_source: DEFAULT_SOURCE.to_owned(),
            fast_checkpoint: true,
            fail_on_corrupt_page: false,
            archive_timeout: crate::archive_wait::DEFAULT_ARCHIVE_TIMEOUT,
        }
    }

    /// Names the source (default `postgres`); its WAL archive has the same name unless
    /// [`PgBaseSource::with_wal_source`] says otherwise.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self.wal_source = self.id.clone();
        self
    }

    /// The WAL archive this cluster's `archive_command` pushes to.
    pub fn with_wal_source(mut self, name: impl Into<String>) -> Self {
        self.wal_source = name.into();
        self
    }

    /// Whether `pg_backup_start` asks for an immediate checkpoint (default) or a spread one.
    pub fn fast_checkpoint(mut self, fast: bool) -> Self {
        self.fast_checkpoint = fast;
        self
    }

    /// Whether corrupt pages refuse the backup. By default (`false`) a backup of a cluster
    /// with data checksums on that finds pages with wrong checksums succeeds, logs them
    /// (`tracing::warn!`) and lists them in [`BaseBackupInfo::page_checks`]; with `true` it
    /// fails with a [`CorruptPagesError`] (the source of the [`AdapterError`]) naming them, and
    /// the snapshot is recorded failed.
    pub fn fail_on_corrupt_page(mut self, fail: bool) -> Self {
        self.fail_on_corrupt_page = fail;
        self
    }

    /// How long the backup waits, once stopped, for Postgres to archive the WAL it needs
    /// (default [`crate::archive_wait::DEFAULT_ARCHIVE_TIMEOUT`], 60 s) before it fails
    /// naming the file: a backup whose WAL is not archived cannot be restored.
    pub fn archive_timeout(mut self, timeout: Duration) -> Self {
        self.archive_timeout = timeout;
        self
    }
}

fn setup(message: impl Into<String>) -> AdapterError {
    AdapterError::msg("start", "postgres base backup", message)
}

fn query_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> AdapterError {
    move |e| AdapterError::msg("query", what, crate::error::describe(&e))
}

pub(crate) use crate::connect::connect;

async fn show(client: &Client, setting: &'static str) -> Result<String, AdapterError> {
    let row = client
        .query_one("SELECT current_setting($1)", &[&setting])
        .await
        .map_err(query_err(setting))?;
    Ok(row.get(0))
}

#[async_trait]
impl Source for PgBaseSource {
    fn descriptor(&self) -> SourceDescriptor {
        SourceDescriptor {
            id: self.id.clone(),
            kind: "postgres".into(),
        }
    }

    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        let client = connect(&self.dsn)
            .await
            .map_err(|e| AdapterError::new("connect", "postgres", e))?;
        let version_num: u32 = show(&client, "server_version_num")
            .await?
            .parse()
            .map_err(|_| setup("server_version_num is not a number"))?;
        if version_num < 150000 {
            return Err(setup(format!(
                "Postgres {version_num} is not supported: base backups need Postgres 15 or later"
            )));
        }
        let pg_version = show(&client, "server_version").await?;
        let data_directory = show(&client, "data_directory").await?;
        let ours = std::fs::canonicalize(&self.pgdata)
            .map_err(|e| AdapterError::new("open", self.pgdata.display().to_string(), e))?;
        let theirs = std::fs::canonicalize(&data_directory).unwrap_or_default();
        if ours != theirs {
            return Err(setup(format!(
                "the server's data_directory is {data_directory}, not {}: back up the cluster \
                 on this host that the connection reaches",
                self.pgdata.display()
            )));
        }
        let archive_mode = show(&client, "archive_mode").await?;
        if archive_mode == "off" {
            return Err(setup(
                "archive_mode is off: a base backup cannot be restored without its WAL. Set \
                 archive_mode = on and archive_command = 'resilience --repo … --key-file … \
                 wal-push %p', then restart the server",
            ));
        }
        let wal_segment_size: u64 = client
            .query_one(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'",
                &[],
            )
            .await
            .map_err(query_err("wal_segment_size"))?
            .get::<_, i64>(0) as u64;
        let system_identifier: String = client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(query_err("pg_control_system"))?
            .get(0);
        let page_layout = page_layout(&client).await?;
        let mut tablespaces = HashMap::new();
        for row in client
            .query(
                "SELECT oid::text, pg_tablespace_location(oid) FROM pg_tablespace \
                 WHERE spcname NOT IN ('pg_default', 'pg_global')",
                &[],
            )
            .await
            .map_err(query_err("pg_tablespace"))?
        {
            tablespaces.insert(row.get::<_, String>(0), row.get::<_, String>(1));
        }
        let label = format!("resilience {}", Utc::now().format("%Y-%m-%dT%H:%M:%SZ"));
        let row = client
            .query_one(
                "SELECT pg_backup_start($1, $2)::text, now()",
                &[&label, &self.fast_checkpoint],
            )
            .await
            .map_err(query_err("pg_backup_start"))?;
        let start_lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e: String| setup(e))?;
        let start_time: DateTime<Utc> = row.get(1);
        let inner = DirSource::new(&self.pgdata).start().await?;
        let pages = page_layout.map(|segment_blocks| PageChecker::new(start_lsn, segment_blocks));
        let hot_since = start_time - chrono::Duration::from_std(HOT_WINDOW).expect("small");
        Ok(Box::new(PgSession {
            client,
            pgdata: ours,
            inner,
            tablespace: None,
            pending: Vec::new(),
            open_readers: Arc::new(AtomicUsize::new(0)),
            hot_since_ns: hot_since.timestamp_nanos_opt().unwrap_or(i64::MAX),
            init_forks: None,
            fail_on_corrupt_page: self.fail_on_corrupt_page,
            archive_timeout: self.archive_timeout,
            info: BaseBackupInfo {
                system_identifier,
                pg_version,
                pg_version_num: version_num,
                wal_segment_size,
                start_lsn,
                stop_lsn: start_lsn,
                timeline: 0,
                start_wal: String::new(),
                start_time,
                stop_time: start_time,
                stop_snapshot: String::new(),
                tablespaces,
                pgdata: self.pgdata.display().to_string(),
                wal_source: self.wal_source.clone(),
                page_checks: PageCheckReport {
                    enabled: pages.is_some(),
                    ..Default::default()
                },
            },
            pages,
        }))
    }
}

struct PgSession {
    client: Client,
    pgdata: PathBuf,
    inner: Box<dyn SourceSession>,
    /// The tablespace being walked: its entries' path prefix and its walk.
    tablespace: Option<(Vec<u8>, Box<dyn SourceSession>)>,
    /// Entries produced after the stop (`backup_label`, `tablespace_map`).
    pending: Vec<SourceEntry>,
    /// Content readers handed out and not yet dropped: `pg_backup_stop` waits for none.
    open_readers: Arc<AtomicUsize>,
    hot_since_ns: i64,
    /// The directory last looked at for unlogged relations, and their relfilenodes.
    init_forks: Option<(PathBuf, HashSet<String>)>,
    fail_on_corrupt_page: bool,
    archive_timeout: Duration,
    info: BaseBackupInfo,
    /// Validates relation files' pages, when the cluster has data checksums on.
    pages: Option<PageChecker>,
}

/// What to do with an entry of the walk.
enum Verdict {
    Keep,
    Skip,
}

impl PgSession {
    /// Applies the exclusions to a path relative to the data directory.
    async fn judge(&mut self, meta: &EntryMeta) -> Verdict {
        let path = String::from_utf8_lossy(meta.path.as_bytes()).into_owned();
        let mut components = path.split('/');
        let top = components.next().unwrap_or("");
        let depth = path.split('/').count();
        if depth == 1 && EXCLUDED_FILES.contains(&top) && meta.kind != EntryKind::Dir {
            return Verdict::Skip;
        }
        if depth > 1 && EMPTIED_DIRS.contains(&top) {
            return Verdict::Skip;
        }
        let name = path.rsplit('/').next().unwrap_or("");
        if name == "pg_internal.init" || path.split('/').any(|c| c.starts_with("pgsql_tmp")) {
            return Verdict::Skip;
        }
        if meta.kind == EntryKind::File && is_relation_dir(&path) {
            if is_temp_relation(name) {
                return Verdict::Skip;
            }
            if self.is_unlogged_non_init(&path, name).await {
                return Verdict::Skip;
            }
        }
        Verdict::Keep
    }

    /// An unlogged relation's files, except its init fork, are not backed up (they are reset
    /// from the init fork at the end of recovery).
    async fn is_unlogged_non_init(&mut self, rel_path: &str, name: &str) -> bool {
        let Some(relnode) = relfilenode(name) else {
            return false;
        };
        if name.ends_with("_init") {
            return false;
        }
        let abs = self.abs_path(rel_path);
        let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
        if self.init_forks.as_ref().is_none_or(|(d, _)| *d != dir) {
            let mut forks = HashSet::new();
            if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
                while let Ok(Some(e)) = rd.next_entry().await {
                    if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_suffix("_init")) {
                        forks.insert(n.to_owned());
                    }
                }
            }
            self.init_forks = Some((dir, forks));
        }
        self.init_forks
            .as_ref()
            .is_some_and(|(_, forks)| forks.contains(relnode))
    }

    fn abs_path(&self, rel: &str) -> PathBuf {
        if let Some(rest) = rel.strip_prefix("pg_tblspc/") {
            if let Some((oid, tail)) = rest.split_once('/') {
                if let Some(loc) = self.info.tablespaces.get(oid) {
                    return Path::new(loc).join(tail);
                }
            }
        }
        self.pgdata.join(rel)
    }

    /// Validates the pages of a relation file as the engine reads it.
    fn check_pages(&self, entry: &mut SourceEntry) {
        let Some(pages) = &self.pages else {
            return;
        };
        let Some(content) = entry.content.take() else {
            return;
        };
        let path = String::from_utf8_lossy(entry.meta.path.as_bytes()).into_owned();
        let abs = self.abs_path(&path);
        entry.content = Some(pages.wrap(&path, abs, content));
    }

    /// Counts the entry's content reader as open until it is dropped.
    fn track(&self, entry: &mut SourceEntry) {
        if let Some(content) = entry.content.take() {
            self.open_readers.fetch_add(1, Ordering::SeqCst);
            let open = self.open_readers.clone();
            entry.content = Some(DropGuardReader::wrap(content, move || {
                open.fetch_sub(1, Ordering::SeqCst);
            }));
        }
    }

    /// Marks files modified close to the backup's start as not reusable next time.
    fn cool(&self, meta: &mut EntryMeta) {
        if meta.kind == EntryKind::File && meta.mtime_ns.unwrap_or(i64::MAX) >= self.hot_since_ns {
            meta.fingerprint = None;
        }
    }

    async fn stop(&mut self) -> Result<(), AdapterError> {
        // A standby's backup leaves the wait to Postgres (it waits only with archive_mode =
        // always); a primary's waits below, looking more often than Postgres does.
        let standby: bool = self
            .client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(query_err("pg_is_in_recovery"))?
            .get(0);
        let row = self
            .client
            .query_one(
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop($1)",
                &[&standby],
            )
            .await
            .map_err(query_err("pg_backup_stop"))?;
        let stop_lsn: String = row.get(0);
        let label: String = row.get(1);
        let spcmap: Option<String> = row.get(2);
        let after = self
            .client
            .query_one("SELECT now(), pg_current_snapshot()::text", &[])
            .await
            .map_err(query_err("pg_current_snapshot"))?;
        self.info.stop_time = after.get(0);
        self.info.stop_snapshot = after.get(1);
        self.info.stop_lsn = stop_lsn.parse().map_err(|e: String| setup(e))?;
        self.info.timeline = label_field(&label, "START TIMELINE")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| setup(format!("backup_label has no START TIMELINE: {label:?}")))?;
        self.info.start_wal = SegmentName::containing(
            self.info.timeline,
            self.info.start_lsn,
            self.info.wal_segment_size,
        )
        .file_name(self.info.wal_segment_size);
        if !standby {
            let needed = crate::archive_wait::backup_wal_files(
                self.info.timeline,
                self.info.start_lsn,
                self.info.stop_lsn,
                self.info.wal_segment_size,
            );
            crate::archive_wait::wait_archived(
                self.pgdata.join("pg_wal"),
                &needed,
                self.archive_timeout,
            )
            .await?;
        }
        let owner = std::fs::metadata(&self.pgdata).ok();
        for (name, content) in [("backup_label", Some(label)), ("tablespace_map", spcmap)] {
            let Some(content) = content.filter(|c| !c.is_empty()) else {
                continue;
            };
            let bytes = content.into_bytes();
            self.pending.push(SourceEntry {
                meta: EntryMeta {
                    mode: 0o100600,
                    mtime_ns: self.info.stop_time.timestamp_nanos_opt(),
                    uid: owner.as_ref().map(|m| m.uid()),
                    gid: owner.as_ref().map(|m| m.gid()),
                    ..EntryMeta::file(name, bytes.len() as u64)
                },
                content: Some(Box::pin(std::io::Cursor::new(bytes))),
            });
        }
        Ok(())
    }

    /// Turns the `pg_tblspc/<oid>` symlink (or a symlinked `pg_wal`) into a directory entry
    /// and, for a tablespace, starts walking its location.
    async fn follow_link(&mut self, meta: &mut EntryMeta) -> Result<(), AdapterError> {
        let path = String::from_utf8_lossy(meta.path.as_bytes()).into_owned();
        let target = if let Some(oid) = path.strip_prefix("pg_tblspc/") {
            match self.info.tablespaces.get(oid) {
                Some(loc) => PathBuf::from(loc),
                None => return Ok(()),
            }
        } else if path == "pg_wal" {
            self.pgdata.join("pg_wal")
        } else {
            return Ok(());
        };
        let md = tokio::fs::metadata(&target)
            .await
            .map_err(|e| AdapterError::new("stat", target.display().to_string(), e))?;
        meta.kind = EntryKind::Dir;
        meta.link_target = None;
        meta.mode = md.mode();
        meta.uid = Some(md.uid());
        meta.gid = Some(md.gid());
        if path != "pg_wal" {
            let walk = DirSource::new(&target).start().await?;
            let mut prefix = meta.path.as_bytes().to_vec();
            prefix.push(b'/');
            self.tablespace = Some((prefix, walk));
        }
        Ok(())
    }
}

#[async_trait]
impl SourceSession for PgSession {
    /// Every file of a data directory is made of pages that change in place (relation files,
    /// the SLRUs, the control file) or grows at its end (logs): cut at page-aligned offsets, a
    /// changed page changes the one chunk that holds it, and no CPU goes into searching for
    /// boundaries.
    fn cutting(&self, _meta: &EntryMeta) -> Cutting {
        Cutting::Blocks {
            block: PAGE_SIZE as u32,
        }
    }

    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        loop {
            if let Some((prefix, walk)) = &mut self.tablespace {
                match walk.next_entry().await? {
                    Some(mut entry) => {
                        let mut path = prefix.clone();
                        path.extend_from_slice(entry.meta.path.as_bytes());
                        entry.meta.path = EntryPath(path);
                        if let Verdict::Skip = self.judge(&entry.meta).await {
                            continue;
                        }
                        self.cool(&mut entry.meta);
                        self.check_pages(&mut entry);
                        self.track(&mut entry);
                        return Ok(Some(entry));
                    }
                    None => {
                        self.tablespace = None;
                        continue;
                    }
                }
            }
            match self.inner.next_entry().await? {
                Some(mut entry) => {
                    if let Verdict::Skip = self.judge(&entry.meta).await {
                        continue;
                    }
                    if entry.meta.kind == EntryKind::Symlink {
                        self.follow_link(&mut entry.meta).await?;
                    }
                    self.cool(&mut entry.meta);
                    self.check_pages(&mut entry);
                    self.track(&mut entry);
                    return Ok(Some(entry));
                }
                None => return Ok(None),
            }
        }
    }

    /// Stops the backup (`pg_backup_stop`), which the engine calls only after every file of the
    /// walk was read in full, and hands out the `backup_label` and `tablespace_map` it returns.
    async fn closing_entries(&mut self) -> Result<Vec<SourceEntry>, AdapterError> {
        let still_read = self.open_readers.load(Ordering::SeqCst);
        if still_read > 0 {
            return Err(setup(format!(
                "pg_backup_stop was asked for while {still_read} file(s) of the data directory \
                 were still being read: the backup would not be consistent at its stop point"
            )));
        }
        self.stop().await?;
        Ok(std::mem::take(&mut self.pending))
    }

    /// Waits until every relation file handed out has been read (or dropped unread) when pages
    /// are validated: call it after consuming or dropping every entry's content.
    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        if let Some(pages) = self.pages.take() {
            self.info.page_checks = pages.finish().await;
        }
        let checks = &self.info.page_checks;
        if checks.corrupt_count > 0 {
            if self.fail_on_corrupt_page {
                return Err(AdapterError::new(
                    "check pages",
                    self.info.pgdata.clone(),
                    CorruptPagesError {
                        pgdata: self.info.pgdata.clone(),
                        report: checks.clone(),
                    },
                ));
            }
            tracing::warn!(
                pgdata = %self.info.pgdata,
                corrupt = checks.corrupt_count,
                "{} corrupt page(s) backed up as they are: {}",
                checks.corrupt_count,
                checks.describe_corrupt()
            );
        }
        Ok(self.info.to_metadata())
    }
}

/// The number of pages per relation segment file when the cluster's pages can be validated
/// (data checksums on, 8 KiB pages), else `None`.
async fn page_layout(client: &Client) -> Result<Option<u32>, AdapterError> {
    if show(client, "data_checksums").await? != "on" {
        return Ok(None);
    }
    let block_size = show(client, "block_size").await?;
    if block_size != PAGE_SIZE.to_string() {
        tracing::warn!(
            block_size,
            "data checksums are on, but pages are not 8 KiB: they are not validated"
        );
        return Ok(None);
    }
    let segment_blocks = client
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'segment_size'",
            &[],
        )
        .await
        .map_err(query_err("segment_size"))?
        .get::<_, i64>(0);
    Ok(Some(
        u32::try_from(segment_blocks).unwrap_or(DEFAULT_SEGMENT_BLOCKS),
    ))
}

/// A `KEY: value` line of a backup label.
pub fn label_field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Whether a path is inside a database directory (`base/<db>/` or a tablespace's
/// `pg_tblspc/<oid>/<version dir>/<db>/`), where relation files live.
fn is_relation_dir(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["base", db, _file] => db.bytes().all(|b| b.is_ascii_digit()),
        ["pg_tblspc", _oid, _version, db, _file] => db.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// Temporary relations' files: `t<backend>_<relfilenode>[_fork][.segment]`.
fn is_temp_relation(name: &str) -> bool {
    name.strip_prefix('t')
        .and_then(|r| r.split_once('_'))
        .is_some_and(|(backend, rest)| {
            !backend.is_empty()
                && backend.bytes().all(|b| b.is_ascii_digit())
                && rest.bytes().next().is_some_and(|b| b.is_ascii_digit())
        })
}

/// The relfilenode of a relation file name (`16384`, `16384_fsm`, `16384.1`, `16384_init`).
fn relfilenode(name: &str) -> Option<&str> {
    let end = name
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(name.len());
    (end > 0).then(|| &name[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names() {
        assert!(is_relation_dir("base/5/16384"));
        assert!(is_relation_dir("pg_tblspc/16390/PG_15_202209061/5/16391"));
        assert!(!is_relation_dir("global/1262"));
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t12_16384_fsm"));
        assert!(!is_temp_relation("16384"));
        assert!(!is_temp_relation("t_x"));
        assert_eq!(relfilenode("16384_vm"), Some("16384"));
        assert_eq!(relfilenode("16384.12"), Some("16384"));
        assert_eq!(relfilenode("PG_VERSION"), None);
    }

    #[test]
    fn xid_targets_against_the_stop_snapshot() {
        let info = |snap: &str| BaseBackupInfo {
            system_identifier: "1".into(),
            pg_version: "15".into(),
            pg_version_num: 150000,
            wal_segment_size: 16 << 20,
            start_lsn: Lsn(0),
            stop_lsn: Lsn(0),
            timeline: 1,
            start_wal: String::new(),
            start_time: Utc::now(),
            stop_time: Utc::now(),
            stop_snapshot: snap.into(),
            tablespaces: Default::default(),
            pgdata: String::new(),
            wal_source: "postgres".into(),
            page_checks: Default::default(),
        };
        let b = info("740:745:741,743");
        assert!(!b.xid_ends_after(739));
        assert!(b.xid_ends_after(741));
        assert!(!b.xid_ends_after(742));
        assert!(b.xid_ends_after(745));
        assert!(b.xid_ends_after(900));
        let meta = b.to_metadata();
        assert_eq!(BaseBackupInfo::from_metadata(&meta), Some(b));
    }

    #[test]
    fn label_fields() {
        let label =
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n";
        assert_eq!(label_field(label, "START TIMELINE"), Some("1"));
        assert_eq!(label_field(label, "LABEL"), None);
    }
}
