//! Copies proven by ETags against Garage (started by `scripts/test`): the ETag the server
//! computed proves a single or multipart copy without reading it back (and a single-part copy
//! of an S3 object without hashing it here), and a body damaged on its way to the server is
//! left unproven, so that the caller reads it back.

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
use resilience_core::sink::{ByteStream, ObjectMeta as Origin, Sink};
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

/// An origin as another S3 store lists the object: its size and its ETag (the MD5 of the body).
fn s3_origin(key: &str, parts: &[Bytes]) -> Origin {
    use md5::Digest;
    let mut md5 = md5::Md5::new();
    parts.iter().for_each(|p| md5.update(p));
    Origin {
        key: key.to_owned(),
        size: parts.iter().map(|p| p.len() as u64).sum(),
        e_tag: Some(format!("\"{}\"", hex::encode(md5.finalize()))),
        last_modified: None,
    }
}

#[tokio::test]
async fn garage_etags_prove_single_and_multipart_copies_without_a_read() {
    let (tap, sink) = sink(false);
    for (key, len) in [
        ("empty", 0),
        ("small", 100_000),
        ("pack", 17 << 20),
        ("big", 41 << 20),
    ] {
        let parts = body(len, 3);
        let from_s3 = s3_origin(key, &parts);
        // The same object from a store whose ETags say nothing about the body (local files).
        let from_files = Origin {
            e_tag: Some("\"1a2b-3c4d-1000\"".into()),
            ..from_s3.clone()
        };
        for origin in [from_s3, from_files] {
            let copied = sink
                .put_copy(key, stream(parts.clone()), &origin)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(copied.size, len as u64, "{key}");
            assert!(copied.proven, "{key} from {:?}", origin.e_tag);
            assert_eq!(sink.head(key).await.unwrap().size, len as u64, "{key}");
        }
    }
    assert_eq!(
        tap.gets.load(Ordering::SeqCst),
        0,
        "Garage's ETags (MD5, and MD5 of part MD5s) proved every copy"
    );
    let back = sink.get("big").await.unwrap();
    assert_eq!(back, body(41 << 20, 3).concat());
    // Garage lists the MD5 as the ETag, so a listed object is an origin for the next copy.
    let listed = sink.head("pack").await.unwrap();
    let copied = sink
        .put_copy("pack-copy", stream(body(17 << 20, 3)), &listed)
        .await
        .unwrap();
    assert!(
        copied.proven,
        "a copy of a listed Garage object is proven by its ETag"
    );
}

#[tokio::test]
async fn a_body_damaged_on_its_way_to_garage_is_left_unproven() {
    let (tap, sink) = sink(true);
    let parts = body(2 << 20, 5);
    let from_s3 = s3_origin("damaged", &parts);
    let unknown = Origin {
        e_tag: None,
        ..from_s3.clone()
    };
    for origin in [from_s3, unknown] {
        let copied = sink
            .put_copy("damaged", stream(parts.clone()), &origin)
            .await
            .unwrap();
        assert!(
            !copied.proven,
            "damaged in transit, from {:?}",
            origin.e_tag
        );
    }
    assert_eq!(
        tap.gets.load(Ordering::SeqCst),
        0,
        "the caller reads back, not the sink"
    );
}

#[tokio::test]
async fn an_origin_etag_that_is_not_the_md5_of_its_body_proves_nothing() {
    // SSE-KMS objects have MD5-shaped ETags that are not the MD5 of the body.
    let (_, sink) = sink(false);
    let parts = body(1 << 20, 9);
    let origin = Origin {
        e_tag: Some("\"0123456789abcdef0123456789abcdef\"".into()),
        ..s3_origin("kms", &parts)
    };
    let copied = sink.put_copy("kms", stream(parts), &origin).await.unwrap();
    assert!(!copied.proven);
}

/// The sink as the CLI opens it: copies of S3 objects go out streamed, in one `PUT` each.
fn opened(name: &str) -> Arc<dyn Sink> {
    resilience_objstore::open_sink(&common::garage_url(name)).unwrap()
}

#[tokio::test]
async fn streamed_copies_of_any_size_are_single_puts_proven_by_their_etag() {
    let sink = opened("streamed");
    for (key, len) in [
        ("empty", 0),
        ("odd dir/naïve +1", 1000),
        ("pack", 17 << 20),
        ("big", 41 << 20),
    ] {
        let parts = body(len, 7);
        let origin = s3_origin(key, &parts);
        let copied = sink
            .put_copy(key, stream(parts.clone()), &origin)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(copied.size, len as u64, "{key}");
        assert!(
            copied.proven,
            "{key}: one PUT, so the ETag is the MD5 of the body"
        );
        // Read back through object_store: the streamed PUT used the same key.
        assert_eq!(sink.get(key).await.unwrap(), parts.concat(), "{key}");
    }
}

#[tokio::test]
async fn a_streamed_copy_cut_short_leaves_nothing_and_names_the_object() {
    let sink = opened("cut");
    let parts = body(9 << 20, 2);
    let origin = s3_origin("cut", &parts);
    // The source's read fails part way.
    let failing = futures::stream::iter(vec![
        Ok(parts[0].clone()),
        Err(resilience_core::sink::SinkError::NotFound {
            key: "the-source-object".into(),
        }),
    ])
    .boxed();
    let err = sink.put_copy("cut", failing, &origin).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cut") && text.contains("the-source-object"),
        "{text}"
    );
    // The source ends early.
    let short = stream(parts[..2].to_vec());
    let err = sink.put_copy("cut", short, &origin).await.unwrap_err();
    assert!(err.to_string().contains("cut"), "{err}");
    assert!(
        sink.head("cut").await.unwrap_err().is_not_found(),
        "no object from a body cut short"
    );
}
