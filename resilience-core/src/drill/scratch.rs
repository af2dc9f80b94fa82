//! The scratch directory of one drill: made private to its owner, named so that two drills
//! never share one, removed when dropped (also when the drill failed or was cancelled).

use std::path::{Path, PathBuf};

use super::DrillError;

/// A scratch directory, removed with everything in it when dropped.
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Makes `<base>/resilience-drill-<source>-<snapshot>-<pid>-<nanos>` (mode 0700).
    pub(crate) fn create(base: &Path, source: &str, snapshot: &str) -> Result<Self, DrillError> {
        // The process and the time: two drills of one source (two jobs of a daemon, or a
        // daemon and a command) never share a directory.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name: String = format!(
            "resilience-drill-{source}-{}-{}-{nanos:09}",
            snapshot.chars().take(12).collect::<String>(),
            std::process::id()
        )
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
        let path = base.join(name);
        if path.exists() {
            return Err(DrillError::ScratchExists {
                path,
                source_id: source.to_owned(),
            });
        }
        let fail = |operation, path: &Path| {
            let path = path.to_path_buf();
            move |source| DrillError::Scratch {
                operation,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&path).map_err(fail("create", &path))?;
        // Removed from here on, whatever fails.
        let scratch = Scratch { path };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&scratch.path, std::fs::Permissions::from_mode(0o700))
            .map_err(fail("chmod", &scratch.path))?;
        Ok(scratch)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the drill's scratch directory");
        }
    }
}
