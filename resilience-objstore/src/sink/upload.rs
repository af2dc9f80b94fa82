//! How a body becomes an object: one `PUT` up to [`SINGLE_PUT_MAX`], else a multipart upload in
//! parts of [`PART_SIZE`], a few in flight at once, hashing what is sent when asked to (see
//! [`super::etag`]). A failed stream aborts the upload.

use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use object_store::{PutOptions, PutPayload};
use resilience_core::sink::{ByteStream, PutMode, SinkError};

use super::etag::{md5_of, PartDigests};
use super::ObjectStoreSink;

/// Objects up to this size are written with one `PUT` (S3's ETag is then the MD5 of the body,
/// and one request costs less than four); larger ones in parts, so that memory stays bounded.
pub(super) const SINGLE_PUT_MAX: usize = 32 << 20;
/// Part size of multipart uploads (S3 requires at least 5 MiB but for the last part).
pub(super) const PART_SIZE: usize = 8 << 20;
/// Parts in flight per upload.
const PART_CONCURRENCY: usize = 4;

/// Bytes gathered from a stream, cut into parts of exactly [`PART_SIZE`] without copying.
#[derive(Default)]
pub(super) struct PartBuffer {
    chunks: std::collections::VecDeque<Bytes>,
    len: usize,
}

impl PartBuffer {
    fn push(&mut self, b: Bytes) {
        self.len += b.len();
        self.chunks.push_back(b);
    }

    /// The first `n` bytes (at most what is held), as chunks.
    fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut want = n.min(self.len);
        self.len -= want;
        while want > 0 {
            let first = &mut self.chunks[0];
            if first.len() <= want {
                want -= first.len();
                out.extend(self.chunks.pop_front());
            } else {
                out.push(first.split_to(want));
                want = 0;
            }
        }
        out
    }
}

/// What an upload sent, and what the store said it stored.
pub(super) struct Uploaded {
    /// Bytes sent.
    pub(super) size: u64,
    /// The digests of what was sent, when it was hashed.
    pub(super) sent: Option<PartDigests>,
    /// The ETag the store gave the object.
    pub(super) stored_etag: Option<String>,
}

impl ObjectStoreSink {
    /// Uploads a stream: one `PUT` if it ends within [`SINGLE_PUT_MAX`] bytes, else in parts,
    /// hashing what it sends (MD5, as S3 computes ETags) if `hash`. A stream error aborts the
    /// upload: nothing is left behind.
    pub(super) async fn upload(
        &self,
        key: &str,
        mut data: ByteStream,
        mode: PutMode,
        hash: bool,
    ) -> Result<Uploaded, SinkError> {
        let mut buffer = PartBuffer::default();
        while buffer.len <= SINGLE_PUT_MAX {
            match data.try_next().await? {
                Some(b) => buffer.push(b),
                None => {
                    let size = buffer.len as u64;
                    let chunks = buffer.take(buffer.len);
                    let sent = hash.then(|| PartDigests {
                        parts: vec![md5_of(&chunks)],
                        multipart: false,
                    });
                    let stored_etag = self
                        .put_one(key, chunks.into_iter().collect(), mode)
                        .await?;
                    return Ok(Uploaded {
                        size,
                        sent,
                        stored_etag,
                    });
                }
            }
        }
        let mut upload = self
            .store
            .put_multipart_opts(
                &self.path(key),
                object_store::PutMultipartOptions {
                    attributes: self.put_attributes.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error("put", key, e))?;
        let result = self.send_parts(key, &mut *upload, buffer, data, hash).await;
        match result {
            Ok((size, sent)) => {
                let done = upload
                    .complete()
                    .await
                    .map_err(|e| self.error("put", key, e))?;
                Ok(Uploaded {
                    size,
                    sent,
                    stored_etag: done.e_tag,
                })
            }
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Sends `buffer` and the rest of `data` as parts of an upload, a few at once, hashing each
    /// part if `hash`.
    async fn send_parts(
        &self,
        key: &str,
        upload: &mut dyn object_store::MultipartUpload,
        mut buffer: PartBuffer,
        mut data: ByteStream,
        hash: bool,
    ) -> Result<(u64, Option<PartDigests>), SinkError> {
        let mut sent = PartDigests {
            parts: Vec::new(),
            multipart: true,
        };
        let mut size = 0u64;
        let mut in_flight: futures::stream::FuturesUnordered<object_store::UploadPart> =
            futures::stream::FuturesUnordered::new();
        let mut ended = false;
        loop {
            while !ended && buffer.len < PART_SIZE {
                match data.try_next().await? {
                    Some(b) => buffer.push(b),
                    None => ended = true,
                }
            }
            if buffer.len == 0 {
                break;
            }
            let part = buffer.take(PART_SIZE);
            if hash {
                sent.parts.push(md5_of(&part));
            }
            size += part.iter().map(|b| b.len() as u64).sum::<u64>();
            while in_flight.len() >= PART_CONCURRENCY {
                if let Some(r) = in_flight.next().await {
                    let r: object_store::Result<()> = r;
                    r.map_err(|e| self.error("put", key, e))?;
                }
            }
            in_flight.push(upload.put_part(part.into_iter().collect()));
        }
        while let Some(r) = in_flight.next().await {
            let r: object_store::Result<()> = r;
            r.map_err(|e| self.error("put", key, e))?;
        }
        Ok((size, hash.then_some(sent)))
    }

    /// One `PUT` of a whole object; returns the ETag the store gave it.
    pub(super) async fn put_one(
        &self,
        key: &str,
        payload: PutPayload,
        mode: PutMode,
    ) -> Result<Option<String>, SinkError> {
        let opts = PutOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
            },
            attributes: self.put_attributes.clone(),
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(key), payload.clone(), opts)
            .await
        {
            Ok(r) => Ok(r.e_tag),
            // Stores without conditional puts: check, then write (a guard, not a lock).
            Err(object_store::Error::NotImplemented) if mode == PutMode::Create => {
                if self.exists(key).await? {
                    return Err(SinkError::AlreadyExists {
                        key: key.to_owned(),
                    });
                }
                let r = self
                    .store
                    .put_opts(
                        &self.path(key),
                        payload,
                        PutOptions {
                            attributes: self.put_attributes.clone(),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| self.error("put", key, e))?;
                Ok(r.e_tag)
            }
            Err(e) => Err(self.error("put", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_cut_exactly_without_losing_a_byte() {
        let mut b = PartBuffer::default();
        for i in 0..50u8 {
            b.push(Bytes::from(vec![i; 1 + i as usize * 7]));
        }
        let total = b.len;
        let mut seen = Vec::new();
        while b.len > 0 {
            let part = b.take(100);
            let n: usize = part.iter().map(Bytes::len).sum();
            assert!(n == 100 || b.len == 0, "{n}");
            seen.extend(part.iter().flat_map(|p| p.iter().copied()));
        }
        assert_eq!(seen.len(), total);
        let expected: Vec<u8> = (0..50u8)
            .flat_map(|i| std::iter::repeat_n(i, 1 + i as usize * 7))
            .collect();
        assert_eq!(seen, expected);
    }
}
