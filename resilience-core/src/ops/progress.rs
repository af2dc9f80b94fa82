//! Progress reports from long operations, for progress bars and metrics.

use crate::source::entry::EntryMeta;

/// Receives progress of a backup or restore. Implementations must be cheap: they are called
/// for every entry and every read.
pub trait Progress: Send + Sync {
    /// An entry is being processed.
    fn entry(&self, meta: &EntryMeta) {
        let _ = meta;
    }

    /// `n` more bytes of content were processed.
    fn bytes(&self, n: u64) {
        let _ = n;
    }
}
