//! Verified puts against Garage (started by `scripts/test`): the ETag the server computed proves
//! a single or multipart upload without reading it back, and a body damaged on its way to the
//! server is caught and named.

mod common;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use resilience_core::sink::{ByteStream, PutMode, Sink, SinkError};
use resilience_objstore::{open_store, ObjectStoreSink};

/// A store between the sink and Garage that counts reads and can flip a bit of single puts.
#[derive(Debug)]
struct Wiretap {
    inner: Arc<dyn ObjectStore>,
    gets: AtomicU64,
    flip: bool,
}

impl fmt::Display for Wiretap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wiretap({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Wiretap {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let payload = if self.flip {
            let mut body = Bytes::from(payload).to_vec();
            body[1000] ^= 0x10;
            PutPayload::from(body)
        } else {
            payload
        };
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if !options.head {
            self.gets.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

fn body(len: usize, seed: u8) -> Vec<Bytes> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    // Odd-sized pieces, so that part boundaries fall inside them.
    data.chunks(3 << 20 | 17)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn stream(parts: Vec<Bytes>) -> ByteStream {
    futures::stream::iter(parts.into_iter().map(Ok)).boxed()
}

fn sink(flip: bool) -> (Arc<Wiretap>, ObjectStoreSink) {
    let opened = open_store(&common::garage_url("verified"), false).unwrap();
    let tap = Arc::new(Wiretap {
        inner: opened.store,
        gets: AtomicU64::new(0),
        flip,
    });
    let sink = ObjectStoreSink::new(tap.clone(), &opened.prefix, &opened.location);
    (tap, sink)
}

#[tokio::test]
async fn garage_etags_prove_single_and_multipart_uploads_without_a_read() {
    let (tap, sink) = sink(false);
    for (key, len) in [
        ("empty", 0),
        ("small", 100_000),
        ("pack", 17 << 20),
        ("big", 41 << 20),
    ] {
        let n = sink
            .put_stream_verified(key, stream(body(len, 3)), PutMode::Overwrite)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(n, len as u64, "{key}");
        assert_eq!(sink.head(key).await.unwrap().size, len as u64, "{key}");
    }
    assert_eq!(
        tap.gets.load(Ordering::SeqCst),
        0,
        "Garage's ETags (MD5, and MD5 of part MD5s) proved every upload"
    );
    let back = sink.get("big").await.unwrap();
    assert_eq!(back, body(41 << 20, 3).concat());
}

#[tokio::test]
async fn a_body_damaged_on_its_way_to_garage_is_caught_and_named() {
    let (tap, sink) = sink(true);
    let err = sink
        .put_stream_verified("damaged", stream(body(2 << 20, 5)), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(
        tap.gets.load(Ordering::SeqCst),
        1,
        "read back once to decide"
    );
}
