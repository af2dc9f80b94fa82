//! The `restore_command` by which a restored cluster fetches archived WAL through this very
//! program's `wal-fetch` (`pg restore`, and the drills the CLI runs).

use crate::access;
use crate::cli::Global;
use crate::CliError;

/// Quotes a word for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Segments the restore_command fetches ahead of the one Postgres asks for.
const PREFETCH: u16 = 8;

/// The restore_command the restored cluster runs: this binary's `wal-fetch`, prefetching the
/// next segments, with the same repository and credentials (a key file or password file:
/// Postgres' environment has no passphrase).
pub(crate) fn restore_command(g: &Global, source: &str) -> Result<String, CliError> {
    repository_command(
        g,
        &format!(
            "wal-fetch --source {} --prefetch {PREFETCH} %f %p",
            sh_quote(source)
        ),
    )
}

/// The archive_command a cluster restored from this repository runs to archive into it: this
/// binary's `wal-push`, with the same repository and credentials.
pub(crate) fn archive_command(g: &Global, source: &str) -> Result<String, CliError> {
    repository_command(g, &format!("wal-push --source {} %p", sh_quote(source)))
}

/// This binary with the repository and credentials of `g`, then `tail`.
fn repository_command(g: &Global, tail: &str) -> Result<String, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Usage(format!("cannot locate this program: {e}")))?;
    let url = access::repo_url(g)?;
    let url = match std::path::Path::new(url).canonicalize() {
        Ok(p) if !url.contains("://") => p.display().to_string(),
        _ => url.to_owned(),
    };
    let credential =
        match (&g.key_file, &g.password_file) {
            (Some(k), _) => format!("--key-file {}", sh_quote(&absolute(k)?)),
            (None, Some(p)) => format!("--password-file {}", sh_quote(&absolute(p)?)),
            (None, None) => return Err(CliError::Usage(
                "restoring a cluster needs --key-file (or --password-file): the restored server \
                 runs wal-fetch and wal-push without this shell's environment"
                    .into(),
            )),
        };
    Ok(format!(
        "{} --repo {} {credential} {tail}",
        sh_quote(&exe.display().to_string()),
        sh_quote(&url),
    ))
}

fn absolute(p: &std::path::Path) -> Result<String, CliError> {
    p.canonicalize()
        .map(|p| p.display().to_string())
        .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
