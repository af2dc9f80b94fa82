//! Walks a directory tree depth first, children sorted by name, so entries come in
//! [`crate::source::entry::EntryPath::walk_cmp`] order and a backup can reuse unchanged files of the
//! previous snapshot without reading them. Memory is bounded by the depth times the largest
//! directory listing.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::source::entry::{EntryKind, EntryMeta, EntryPath};
use crate::source::{
    AdapterError, Source, SourceDescriptor, SourceEntry, SourceMetadata, SourceSession,
};

/// Backs up a directory tree.
///
/// ```no_run
/// use resilience_core::source::fs::DirSource;
/// let source = DirSource::new("/srv/exports").with_id("exports");
/// ```
#[derive(Clone, Debug)]
pub struct DirSource {
    root: PathBuf,
    id: Option<String>,
}

impl DirSource {
    /// A source for the tree under `root` (the root itself is not an entry).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirSource {
            root: root.into(),
            id: None,
        }
    }

    /// Names the source (default: `dir:<absolute path>`).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

#[async_trait]
impl Source for DirSource {
    fn descriptor(&self) -> SourceDescriptor {
        let id = self.id.clone().unwrap_or_else(|| {
            let abs = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
            format!("dir:{}", abs.display())
        });
        SourceDescriptor {
            id,
            kind: "dir".into(),
        }
    }

    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        let shown = self.root.display().to_string();
        let meta = tokio::fs::metadata(&self.root).await.map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_owned(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
                _ => e.to_string(),
            };
            AdapterError::msg("open", shown.clone(), why)
        })?;
        if !meta.is_dir() {
            return Err(AdapterError::msg("open", shown, "is not a directory"));
        }
        let root = tokio::fs::canonicalize(&self.root)
            .await
            .map_err(|e| AdapterError::new("open", shown.clone(), e))?;
        let listing = list_dir(&root).await?;
        Ok(Box::new(DirSession {
            root,
            stack: vec![(Vec::new(), listing)],
            files: 0,
            dirs: 0,
            bytes: 0,
        }))
    }
}

async fn list_dir(dir: &Path) -> Result<std::vec::IntoIter<OsString>, AdapterError> {
    let d = dir.to_path_buf();
    let names = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<OsString>> {
        let mut names: Vec<OsString> = std::fs::read_dir(&d)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    })
    .await
    .map_err(|e| AdapterError::new("list", dir.display().to_string(), e))?
    .map_err(|e| AdapterError::new("list", dir.display().to_string(), e))?;
    Ok(names.into_iter())
}

struct DirSession {
    root: PathBuf,
    /// Relative path of each open directory and its remaining children.
    stack: Vec<(Vec<u8>, std::vec::IntoIter<OsString>)>,
    files: u64,
    dirs: u64,
    bytes: u64,
}

#[async_trait]
impl SourceSession for DirSession {
    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        loop {
            let Some((dir, names)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(name) = names.next() else {
                self.stack.pop();
                continue;
            };
            let mut rel = dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let abs = self.root.join(std::ffi::OsStr::from_bytes(&rel));
            let shown = abs.display().to_string();
            let md = match tokio::fs::symlink_metadata(&abs).await {
                Ok(md) => md,
                // Vanished between listing and reading: it was not there to back up.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(AdapterError::new("stat", shown, e)),
            };
            let ft = md.file_type();
            let kind = if ft.is_file() {
                EntryKind::File
            } else if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::Other
            };
            let mut meta = EntryMeta {
                path: EntryPath(rel.clone()),
                kind,
                size: if kind == EntryKind::File { md.len() } else { 0 },
                mode: md.mode(),
                mtime_ns: Some(md.mtime() * 1_000_000_000 + md.mtime_nsec()),
                uid: Some(md.uid()),
                gid: Some(md.gid()),
                link_target: None,
                fingerprint: None,
                attrs: Default::default(),
            };
            if ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device() {
                meta.attrs
                    .insert("special".into(), format!("{:o}", md.mode() & 0o170000));
            }
            let mut content = None;
            match kind {
                EntryKind::File => {
                    meta.fingerprint = Some(format!(
                        "{}:{}:{}:{}",
                        md.len(),
                        meta.mtime_ns.unwrap_or(0),
                        md.ctime() * 1_000_000_000 + md.ctime_nsec(),
                        md.ino()
                    ));
                    let file = match tokio::fs::File::open(&abs).await {
                        Ok(file) => file,
                        // Removed since it was listed (a dropped table's file): not there.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(AdapterError::new("open", shown, e)),
                    };
                    content = Some(Box::pin(file) as crate::source::EntryReader);
                    self.files += 1;
                    self.bytes += md.len();
                }
                EntryKind::Dir => {
                    let listing = list_dir(&abs).await?;
                    self.stack.push((rel, listing));
                    self.dirs += 1;
                }
                EntryKind::Symlink => {
                    let target = tokio::fs::read_link(&abs)
                        .await
                        .map_err(|e| AdapterError::new("readlink", shown, e))?;
                    meta.link_target = Some(target.as_os_str().as_bytes().to_vec());
                }
                EntryKind::Other => {}
            }
            return Ok(Some(SourceEntry { meta, content }));
        }
    }

    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        let mut m = SourceMetadata::new();
        m.insert("root".into(), self.root.display().to_string().into());
        m.insert("files".into(), self.files.into());
        m.insert("dirs".into(), self.dirs.into());
        m.insert("bytes".into(), self.bytes.into());
        Ok(m)
    }
}
