//! Running a cluster's server programs (`pg_ctl`) as the owner of its data directory.
//!
//! Postgres refuses to run as root; when this process is root, the programs are started through
//! `setpriv` with the data directory owner's uid and gid.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

use crate::error::PgError;

/// Where the server programs are: `$PG_BIN`, else `pg_config --bindir`, else the Debian layout
/// for the newest installed major version, else the `PATH`.
pub fn find_bindir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("PG_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("pg_ctl").exists() {
                return dir;
            }
        }
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    match versions.last() {
        Some(v) => PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")),
        None => PathBuf::new(),
    }
}

/// A command for program `name` of `bindir`, run as the owner of `pgdata` when we are root.
pub fn command_as_owner(bindir: &Path, name: &str, pgdata: &Path) -> Result<Command, PgError> {
    let program = if bindir.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        bindir.join(name)
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        return Ok(Command::new(program));
    }
    let md = std::fs::metadata(pgdata).map_err(PgError::io("stat", pgdata.display()))?;
    if md.uid() == 0 {
        return Err(PgError::Setup(format!(
            "{} is owned by root; Postgres will not run as root: chown it to the database user",
            pgdata.display()
        )));
    }
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", md.uid()))
        .arg(format!("--regid={}", md.gid()))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    Ok(cmd)
}

/// Runs a command, failing with its output when it fails.
pub async fn run(mut cmd: Command, what: &str) -> Result<Output, PgError> {
    let out = cmd
        .output()
        .await
        .map_err(PgError::io("run", what.to_owned()))?;
    if !out.status.success() {
        return Err(PgError::Setup(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Changes the owner of `path` to that of `like` (when we are root).
pub fn chown_like(path: &Path, like: &Path) -> Result<(), PgError> {
    set_owner(path, like, false)
}

/// Like [`chown_like`], for a symbolic link itself.
pub fn lchown_like(path: &Path, like: &Path) -> Result<(), PgError> {
    set_owner(path, like, true)
}

fn set_owner(path: &Path, like: &Path, link_itself: bool) -> Result<(), PgError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let md = std::fs::metadata(like).map_err(PgError::io("stat", like.display()))?;
    let (uid, gid) = (Some(md.uid()), Some(md.gid()));
    if link_itself {
        std::os::unix::fs::lchown(path, uid, gid)
    } else {
        std::os::unix::fs::chown(path, uid, gid)
    }
    .map_err(PgError::io("chown", path.display()))
}
