//! Printing results: one JSON document on stdout for scripts, or text for people.

use resilience_core::catalog::BackupRecord;
use serde_json::{json, Value};

/// `println!` for what a command reports on standard output, but a reader that went away
/// (`resilience snapshots | head -1`) ends the process quietly, with status 141 as a shell
/// reports a process killed by SIGPIPE, where `println!` panics with a backtrace. (The CLI
/// cannot let SIGPIPE kill it instead: its network connections' vectored writes raise it too.)
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// The status of a process whose standard output's reader went away: 128 + SIGPIPE.
const READER_GONE: i32 = 128 + libc::SIGPIPE;

/// Writes one line to standard output: see [`outln!`]. Any other failure to write panics,
/// naming it, as `println!` does.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(READER_GONE),
        Err(e) => panic!("failed printing to stdout: {e}"),
    }
}

/// Prints `value` as one pretty-printed JSON document on stdout.
pub fn print_json(value: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}

/// Prints `value` as one JSON line on stdout (for a stream of documents, one per event).
pub fn print_json_line(value: &Value) {
    outln!(
        "{}",
        serde_json::to_string(value).expect("JSON values serialize")
    );
}

/// Where a Postgres cluster stands, for people: `LSN 0/3000148, last commit 2026-…` (with
/// `none` when no commit was replayed), and `, now on timeline N` where known.
pub fn replay_point(
    lsn: Option<impl std::fmt::Display>,
    commit: Option<chrono::DateTime<chrono::Utc>>,
    timeline: Option<u32>,
    none: &str,
) -> String {
    format!(
        "LSN {}, last commit {}{}",
        lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
        commit
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| none.into()),
        timeline
            .map(|t| format!(", now on timeline {t}"))
            .unwrap_or_default()
    )
}

/// A byte count for people: `512 B`, `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A catalog record as scripts see it (`snapshots --json`, `hold --json`); times in RFC 3339.
pub fn record_json(r: &BackupRecord) -> Value {
    json!({
        "id": r.id,
        "source": r.source.id,
        "source_kind": r.source.kind,
        "kind": r.kind,
        "status": r.status,
        "error": r.error,
        "started_at": r.started_at.to_rfc3339(),
        "finished_at": r.finished_at.map(|t| t.to_rfc3339()),
        "entries": r.entries,
        "logical_bytes": r.logical_bytes,
        "new_bytes": r.new_bytes,
        "stored_bytes": r.stored_bytes,
        "manifest_checksum": r.manifest_checksum,
        "tier": r.tier,
        "legal_hold": r.legal_hold,
        "verifications": r.verifications,
        "labels": r.labels,
        "parent": r.parent,
        "host": r.host,
        "source_metadata": r.source_metadata,
        "salvaged_from": r.salvage.as_ref().map(|s| &s.from),
        "salvage": r.salvage,
    })
}

/// A restore's report as scripts see it.
pub fn restore_json(report: &resilience_core::ops::restore::RestoreReport) -> Value {
    json!({
        "snapshot": report.snapshot,
        "entries": report.entries,
        "bytes": report.bytes,
        "duration_ms": report.duration.as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    }
}
