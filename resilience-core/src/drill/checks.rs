//! Checks every kind of drill makes alike: the restore's own result, sizes against the backup's
//! record, and the helpers they share (an error's causes as one line, a free loopback port for a
//! scratch server).

use crate::catalog::BackupRecord;
use crate::ops::restore::RestoreReport;

use super::DrillCheck;

pub use crate::error::error_chain;

/// The `restore` check of a restore's result: what was restored (every blob's checksum is
/// verified by the restore itself), or the error naming what failed.
pub fn restore_check(result: &Result<RestoreReport, impl std::error::Error>) -> DrillCheck {
    match result {
        Ok(r) => DrillCheck::pass(
            "restore",
            format!(
                "{} entries, {} bytes restored in {:.1} s, every blob's checksum verified",
                r.entries,
                r.bytes,
                r.duration.as_secs_f64()
            ),
        ),
        Err(e) => DrillCheck::fail("restore", error_chain(e)),
    }
}

/// The `size` check: the restored entries and bytes against the record's `entries` and
/// `logical_bytes`.
pub fn size_check(entries: u64, bytes: u64, record: &BackupRecord) -> DrillCheck {
    let detail = format!(
        "{entries} entries and {bytes} bytes restored; the backup recorded {} and {}",
        record.entries, record.logical_bytes
    );
    if entries == record.entries && bytes == record.logical_bytes {
        DrillCheck::pass("size", detail)
    } else {
        DrillCheck::fail("size", detail)
    }
}

/// A free TCP port on the loopback interface, for a scratch server.
pub fn free_loopback_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}
