//! Whether what a target already holds is an entry's content, found without reading the
//! repository: the held bytes are cut where the entry's blobs are cut and each piece is named
//! with the repository's keyed hash. A resumed restore skips what it already wrote this way,
//! with nothing of its own left in the restored data to recognise it by.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::format::crypto::KeySet;
use crate::format::snapshot::Content;
use crate::source::AdapterError;

/// An entry's content as a snapshot records it, to compare with what a target holds.
///
/// The engine hands one to [`Target::wants`](crate::source::Target::wants) with each entry.
#[derive(Clone, Copy)]
pub struct ContentCheck<'a> {
    keys: &'a KeySet,
    content: &'a Content,
    size: u64,
}

impl std::fmt::Debug for ContentCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentCheck")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<'a> ContentCheck<'a> {
    pub(crate) fn new(keys: &'a KeySet, content: &'a Content, size: u64) -> Self {
        ContentCheck {
            keys,
            content,
            size,
        }
    }

    /// The entry's content length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `held` (the bytes a target holds at `object`, named in errors) is exactly this
    /// entry's content. Reads at most one blob's length at a time and stops at the first
    /// difference; a read error is an error naming `object`, not a difference.
    pub async fn matches<R>(&self, object: &str, mut held: R) -> Result<bool, AdapterError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let read_failed = |e: std::io::Error| AdapterError::new("read", object, e);
        match self.content {
            Content::None => {}
            Content::Inline(data) => {
                let mut piece = vec![0u8; data.len()];
                if !read_full(&mut held, &mut piece)
                    .await
                    .map_err(read_failed)?
                    || piece != *data
                {
                    return Ok(false);
                }
            }
            Content::Blobs(blobs) => {
                let mut piece = Vec::new();
                for blob in blobs {
                    piece.resize(blob.len as usize, 0);
                    if !read_full(&mut held, &mut piece)
                        .await
                        .map_err(read_failed)?
                        || self.keys.blob_id(&piece) != blob.id
                    {
                        return Ok(false);
                    }
                }
            }
        }
        // Exactly the content: nothing may follow it.
        let mut past_end = [0u8; 1];
        Ok(held.read(&mut past_end).await.map_err(read_failed)? == 0)
    }
}

/// Fills `buf`; `false` if the reader ended first.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::BlobRef;

    /// The content of `pieces` as blobs named with `keys`, and its size.
    fn blobs(keys: &KeySet, pieces: &[&[u8]]) -> (Content, u64) {
        let blobs = pieces
            .iter()
            .map(|p| BlobRef {
                id: keys.blob_id(p),
                len: p.len() as u32,
            })
            .collect();
        let size = pieces.iter().map(|p| p.len() as u64).sum();
        (Content::Blobs(blobs), size)
    }

    #[tokio::test]
    async fn only_the_exact_content_matches() {
        let keys = KeySet::generate();
        let (content, size) = blobs(&keys, &[b"hello ", b"world"]);
        let c = ContentCheck::new(&keys, &content, size);
        assert!(c.matches("o", &b"hello world"[..]).await.unwrap());
        assert!(!c.matches("o", &b"hello worle"[..]).await.unwrap());
        assert!(!c.matches("o", &b"hello worl"[..]).await.unwrap());
        assert!(!c.matches("o", &b"hello world!"[..]).await.unwrap());
        assert!(!c.matches("o", &b""[..]).await.unwrap());

        let abc = Content::Inline(b"abc".to_vec());
        let inline = ContentCheck::new(&keys, &abc, 3);
        assert!(inline.matches("o", &b"abc"[..]).await.unwrap());
        assert!(!inline.matches("o", &b"abcd"[..]).await.unwrap());
        let empty = ContentCheck::new(&keys, &Content::None, 0);
        assert!(empty.matches("o", &b""[..]).await.unwrap());
        assert!(!empty.matches("o", &b"x"[..]).await.unwrap());
    }

    #[tokio::test]
    async fn another_repositorys_key_does_not_match() {
        let (ours, other) = (KeySet::generate(), KeySet::generate());
        let (theirs, size) = blobs(&other, &[b"hello"]);
        let forged = ContentCheck::new(&ours, &theirs, size);
        assert!(!forged.matches("o", &b"hello"[..]).await.unwrap());
    }

    #[tokio::test]
    async fn a_read_error_names_the_object() {
        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::Error::other("disk gone")))
            }
        }
        let keys = KeySet::generate();
        let (content, size) = blobs(&keys, &[b"hello"]);
        let e = ContentCheck::new(&keys, &content, size)
            .matches("bucket/k", Failing)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("bucket/k"), "{e}");
    }
}
