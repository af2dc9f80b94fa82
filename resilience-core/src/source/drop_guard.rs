//! [`DropGuardReader`]: a content reader that says when nobody reads from it any more.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::EntryReader;

/// An entry's content reader that runs a callback once it is dropped, whether it was read to
/// the end or abandoned: how whoever handed it on learns that nobody reads from it any more.
/// The engine waits for every reader of a walk before it asks the source for its closing
/// entries; a Postgres base backup counts its open data files so that it never stops while one
/// is still read. The callback runs after the inner reader is dropped.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use resilience_core::source::{DropGuardReader, EntryReader};
///
/// let closed = Arc::new(AtomicBool::new(false));
/// let flag = closed.clone();
/// let reader: EntryReader =
///     DropGuardReader::wrap(Box::pin(&b"content"[..]), move || flag.store(true, Ordering::SeqCst));
/// assert!(!closed.load(Ordering::SeqCst));
/// drop(reader);
/// assert!(closed.load(Ordering::SeqCst));
/// ```
pub struct DropGuardReader {
    inner: EntryReader,
    // Declared after `inner`, so dropped after it; never read, only dropped.
    _on_drop: OnDrop,
}

impl DropGuardReader {
    /// `inner`, reading as before, that calls `on_drop` once when it is dropped.
    pub fn wrap(inner: EntryReader, on_drop: impl FnOnce() + Send + 'static) -> EntryReader {
        Box::pin(DropGuardReader {
            inner,
            _on_drop: OnDrop(Some(Box::new(on_drop))),
        })
    }
}

impl AsyncRead for DropGuardReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

/// Runs its callback when dropped.
struct OnDrop(Option<Box<dyn FnOnce() + Send>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(callback) = self.0.take() {
            callback();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// A reader that counts its own drop.
    struct Inner(Arc<AtomicUsize>, &'static [u8]);

    impl AsyncRead for Inner {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.1).poll_read(cx, buf)
        }
    }

    impl Drop for Inner {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn reads_through_and_calls_back_once_after_the_inner_reader_is_gone() {
        let inner_dropped = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (inner_dropped.clone(), calls.clone());
        let mut reader = DropGuardReader::wrap(
            Box::pin(Inner(inner_dropped.clone(), b"some content")),
            move || {
                assert_eq!(seen.load(Ordering::SeqCst), 1, "inner reader dropped first");
                count.fetch_add(1, Ordering::SeqCst);
            },
        );
        let mut read = Vec::new();
        reader.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"some content");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "not before it is dropped");
        drop(reader);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(inner_dropped.load(Ordering::SeqCst), 1);
    }
}
