//! A conformance suite for [`Sink`] implementations: a store that passes it works with the
//! engine. Each adapter's tests run [`run_all`] against its real backend.
//!
//! It goes out of its way for odd input: empty objects, keys with spaces, unicode, emoji and
//! percent signs, deep prefixes, ranges at and past the end, listings past a page boundary.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{PutMode, Sink, SinkError};

/// What the store under test can promise.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// Create-only puts fail on an existing object (Garage ignores conditional writes).
    pub enforces_create: bool,
    /// Objects to write for the listing test (S3 pages at 1000).
    pub listing_size: usize,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            enforces_create: true,
            listing_size: 1100,
        }
    }
}

/// Runs every check under `prefix` (so several runs can share a store).
pub async fn run_all(sink: &dyn Sink, prefix: &str, caps: Capabilities) {
    put_get_head_delete(sink, prefix).await;
    create_only(sink, prefix, caps).await;
    ranges(sink, prefix).await;
    odd_keys(sink, prefix).await;
    listing(sink, prefix, caps).await;
    streams(sink, prefix).await;
    missing_objects(sink, prefix).await;
    nothing_left_unfinished(sink, prefix).await;
}

/// Round trip of put, get, head and delete, including an empty object.
pub async fn put_get_head_delete(sink: &dyn Sink, prefix: &str) {
    let key = format!("{prefix}basic/object");
    sink.put(&key, Bytes::from_static(b"hello"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(sink.get(&key).await.unwrap(), Bytes::from_static(b"hello"));
    assert_eq!(sink.head(&key).await.unwrap().size, 5);
    sink.put(&key, Bytes::from_static(b"replaced"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(
        sink.get(&key).await.unwrap(),
        Bytes::from_static(b"replaced")
    );
    let empty = format!("{prefix}basic/empty");
    sink.put(&empty, Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(sink.get(&empty).await.unwrap().len(), 0);
    assert_eq!(sink.head(&empty).await.unwrap().size, 0);
    sink.delete(&key).await.unwrap();
    assert!(sink.get(&key).await.unwrap_err().is_not_found());
    sink.delete(&key)
        .await
        .expect("deleting a missing object succeeds");
    // A large object (multipart where the store has it) round-trips.
    let big: Vec<u8> = (0..(20 << 20) as u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let big_key = format!("{prefix}basic/big");
    sink.put(&big_key, Bytes::from(big.clone()), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(sink.head(&big_key).await.unwrap().size, big.len() as u64);
    assert!(sink.get(&big_key).await.unwrap() == big);
}

/// Create-only puts.
pub async fn create_only(sink: &dyn Sink, prefix: &str, caps: Capabilities) {
    let key = format!("{prefix}create/once");
    sink.put(&key, Bytes::from_static(b"first"), PutMode::Create)
        .await
        .unwrap();
    let second = sink
        .put(&key, Bytes::from_static(b"second"), PutMode::Create)
        .await;
    if caps.enforces_create {
        assert!(
            matches!(second, Err(SinkError::AlreadyExists { .. })),
            "{second:?}"
        );
        assert_eq!(sink.get(&key).await.unwrap(), Bytes::from_static(b"first"));
    }
}

/// Ranged reads, at the edges and past the end.
pub async fn ranges(sink: &dyn Sink, prefix: &str) {
    let key = format!("{prefix}ranges/r");
    sink.put(&key, Bytes::from_static(b"0123456789"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        sink.get_range(&key, 0..3).await.unwrap(),
        Bytes::from_static(b"012")
    );
    assert_eq!(
        sink.get_range(&key, 7..10).await.unwrap(),
        Bytes::from_static(b"789")
    );
    assert_eq!(
        sink.get_range(&key, 4..5).await.unwrap(),
        Bytes::from_static(b"4")
    );
    assert!(
        sink.get_range(&key, 5..20).await.is_err(),
        "a range past the end is an error"
    );
    assert!(sink
        .get_range(&format!("{prefix}ranges/none"), 0..1)
        .await
        .unwrap_err()
        .is_not_found());
}

/// Keys with spaces, unicode, emoji, percent signs and deep prefixes.
pub async fn odd_keys(sink: &dyn Sink, prefix: &str) {
    let keys = [
        "odd/with space",
        "odd/ünïcödé",
        "odd/emoji-🦀",
        "odd/per%cent%20x",
        "odd/a/b/c/d/e/f/g/deep",
        "odd/plus+and=equals",
    ];
    for (i, k) in keys.iter().enumerate() {
        let key = format!("{prefix}{k}");
        sink.put(&key, Bytes::from(vec![i as u8; i + 1]), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(sink.get(&key).await.unwrap().len(), i + 1, "{key}");
    }
    let mut listed: Vec<String> = sink
        .list(&format!("{prefix}odd/"))
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    let mut expected: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

/// Listing by prefix returns exactly the objects under it, across page boundaries.
pub async fn listing(sink: &dyn Sink, prefix: &str, caps: Capabilities) {
    let n = caps.listing_size;
    futures::stream::iter(0..n)
        .map(|i| async move {
            sink.put(
                &format!("{prefix}list/many/{i:05}"),
                Bytes::from_static(b"x"),
                PutMode::Create,
            )
            .await
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    sink.put(
        &format!("{prefix}list/manyother"),
        Bytes::from_static(b"y"),
        PutMode::Create,
    )
    .await
    .unwrap();
    sink.put(
        &format!("{prefix}listx"),
        Bytes::from_static(b"z"),
        PutMode::Create,
    )
    .await
    .unwrap();
    let listed: Vec<_> = sink
        .list(&format!("{prefix}list/many/"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), n);
    assert!(listed
        .iter()
        .all(|m| m.key.starts_with(&format!("{prefix}list/many/")) && m.size == 1));
    let all: Vec<_> = sink
        .list(&format!("{prefix}list/"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), n + 1);
    let none: Vec<_> = sink
        .list(&format!("{prefix}nothing-here/"))
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());
}

/// Streamed puts and gets of several MiB.
pub async fn streams(sink: &dyn Sink, prefix: &str) {
    let key = format!("{prefix}stream/s");
    let parts: Vec<Result<Bytes, SinkError>> = (0..7u8)
        .map(|i| Ok(Bytes::from(vec![i; 3 << 20])))
        .collect();
    let n = sink
        .put_stream(&key, futures::stream::iter(parts).boxed(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(n, 21 << 20);
    assert_eq!(sink.head(&key).await.unwrap().size, 21 << 20);
    let mut total = 0usize;
    let mut stream = sink.get_stream(&key).await.unwrap();
    let mut first_bytes = Vec::new();
    while let Some(part) = stream.try_next().await.unwrap() {
        total += part.len();
        if first_bytes.len() < 4 {
            first_bytes.extend_from_slice(&part[..part.len().min(4)]);
        }
    }
    assert_eq!(total, 21 << 20);
    assert_eq!(first_bytes[0], 0);
    assert_eq!(
        sink.get_range(&key, (6 << 20)..(6 << 20) + 1)
            .await
            .unwrap()[0],
        2
    );
}

/// Missing objects are `NotFound`.
pub async fn missing_objects(sink: &dyn Sink, prefix: &str) {
    let key = format!("{prefix}missing/none");
    assert!(sink.get(&key).await.unwrap_err().is_not_found());
    assert!(sink.head(&key).await.unwrap_err().is_not_found());
    assert!(sink
        .get_stream(&key)
        .await
        .err()
        .is_some_and(|e| e.is_not_found()));
}

/// A streamed put whose stream fails after several parts fails, stores no object and leaves no
/// unfinished upload behind (the store's parts or staging file are discarded with it).
pub async fn nothing_left_unfinished(sink: &dyn Sink, prefix: &str) {
    let key = format!("{prefix}unfinished/failed");
    let parts: Vec<Result<Bytes, SinkError>> = (0..6u8)
        .map(|i| {
            if i < 5 {
                Ok(Bytes::from(vec![i; 8 << 20]))
            } else {
                Err(SinkError::Backend {
                    operation: "read",
                    key: "the source".into(),
                    location: "conformance".into(),
                    source: "the source broke off".into(),
                })
            }
        })
        .collect();
    let failed = sink
        .put_stream(
            &key,
            futures::stream::iter(parts).boxed(),
            PutMode::Overwrite,
        )
        .await;
    assert!(failed.is_err(), "a put whose stream failed succeeded");
    assert!(sink.head(&key).await.unwrap_err().is_not_found());
    let left = sink.unfinished_uploads(prefix).await.unwrap();
    assert!(
        left.iter().all(|u| u.key != key),
        "a failed put left an unfinished upload: {left:?}"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use futures::stream::BoxStream;

    use super::super::{ByteStream, MemorySink, ObjectMeta};
    use super::*;

    #[tokio::test]
    async fn memory_sink_conforms() {
        super::run_all(&MemorySink::new(), "", Default::default()).await;
    }

    /// A store with only the required methods, whose streams come in small, uneven parts: the
    /// provided `put`, `get`, `get_range` and `put_copy` must conform on their own.
    #[derive(Debug, Default)]
    struct RequiredOnly(MemorySink);

    #[async_trait]
    impl Sink for RequiredOnly {
        fn location(&self) -> String {
            "required-only://".into()
        }
        async fn put_stream(
            &self,
            key: &str,
            data: ByteStream,
            mode: PutMode,
        ) -> Result<u64, SinkError> {
            self.0.put_stream(key, data, mode).await
        }
        async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError> {
            let parts = self.0.get_stream(key).await?.map_ok(|part| {
                let piece = (part.len() / 3).max(1);
                let pieces: Vec<Result<Bytes, SinkError>> = (0..part.len())
                    .step_by(piece)
                    .map(|i| Ok(part.slice(i..(i + piece).min(part.len()))))
                    .collect();
                futures::stream::iter(pieces)
            });
            Ok(parts.try_flatten().boxed())
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta, SinkError> {
            self.0.head(key).await
        }
        fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, SinkError>> {
            self.0.list(prefix)
        }
        async fn delete(&self, key: &str) -> Result<(), SinkError> {
            self.0.delete(key).await
        }
    }

    #[tokio::test]
    async fn the_provided_methods_conform_over_the_required_ones() {
        let sink = RequiredOnly::default();
        super::run_all(&sink, "", Default::default()).await;
        // Ranges that start and end inside parts, span parts, and lie past the end.
        sink.put("r", Bytes::from_static(b"0123456789"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(sink.get_range("r", 2..8).await.unwrap(), "234567");
        assert_eq!(sink.get_range("r", 10..10).await.unwrap(), "");
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 5..4;
        for bad in [8..11, 11..12, reversed] {
            let err = sink.get_range("r", bad.clone()).await.unwrap_err();
            assert!(
                matches!(err, SinkError::BadRange { size: 10, .. }),
                "{bad:?}: {err:?}"
            );
        }
        let origin = sink.head("r").await.unwrap();
        let data = sink.get_stream("r").await.unwrap();
        let copied = sink.put_copy("copy", data, &origin).await.unwrap();
        assert_eq!((copied.size, copied.proven), (10, false));
        assert_eq!(sink.get("copy").await.unwrap(), "0123456789");
    }

    #[tokio::test]
    async fn the_wrappers_conform_over_a_memory_sink() {
        use crate::sink::throttle::{RateLimiter, ThrottledSink};
        use crate::testing::{FaultySink, PausableSink};
        let limiter = Arc::new(RateLimiter::new(1 << 40));
        run_all(
            &ThrottledSink::new(MemorySink::new(), limiter),
            "",
            Default::default(),
        )
        .await;
        run_all(
            &FaultySink::new(MemorySink::new(), -1),
            "",
            Default::default(),
        )
        .await;
        run_all(
            &PausableSink::new(Arc::new(MemorySink::new())),
            "",
            Default::default(),
        )
        .await;
        let shared: Arc<dyn Sink> = Arc::new(MemorySink::new());
        run_all(&shared, "", Default::default()).await;
    }
}
