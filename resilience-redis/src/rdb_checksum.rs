//! The CRC64 check of an RDB file, made while its bytes flow to the repository.
//!
//! Since RDB version 5 a file ends with the end-of-file opcode `0xFF` and the CRC64 of every
//! byte before the checksum (Redis' `src/crc64.c`: the Jones polynomial, reflected, no final
//! xor), as 8 little-endian bytes; a stored 0 means the server ran with `rdbchecksum no`.
//! [`ChecksumReader`] passes the file's bytes through unchanged, keeping only the last 9 bytes
//! aside, and fails the read at the end of the file if the checksum does not match: a damaged
//! or truncated RDB file is never stored as a good backup.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crc::{Crc, Digest, CRC_64_REDIS};
use tokio::io::{AsyncRead, ReadBuf};

/// Redis' CRC64 (`CRC-64/REDIS`: check value 0xe9c6d914c4b8d9ca for `123456789`).
pub static REDIS_CRC64: Crc<u64> = Crc::<u64>::new(&CRC_64_REDIS);

/// The first RDB version whose files end with a checksum.
pub const FIRST_CHECKSUMMED_VERSION: u32 = 5;

/// The RDB end-of-file opcode, just before the checksum.
const EOF_OPCODE: u8 = 0xFF;

/// The end of a checksummed file: the EOF opcode and the 8-byte checksum.
const TAIL: usize = 9;

/// Redis' CRC64 of `data`.
pub fn crc64(data: &[u8]) -> u64 {
    REDIS_CRC64.checksum(data)
}

/// An RDB file that fails its check.
#[derive(Debug, thiserror::Error)]
pub enum RdbCheckError {
    /// The stored checksum is not that of the content.
    #[error(
        "RDB file {file} is damaged: its stored CRC64 is {stored:#018x}, its content gives \
         {computed:#018x}; it is not backed up (take a new one with BGSAVE)"
    )]
    Mismatch {
        /// The file.
        file: String,
        /// The checksum in its last 8 bytes.
        stored: u64,
        /// The checksum of the bytes before them.
        computed: u64,
    },
    /// The file does not end with the end-of-file opcode and a checksum.
    #[error(
        "RDB file {file} is truncated: it does not end with the end-of-file marker and its \
         checksum; it is not backed up (was it still being written?)"
    )]
    Truncated {
        /// The file.
        file: String,
    },
}

/// Passes an RDB file's bytes through and checks its CRC64 at the end (see the module
/// documentation); the read that reaches the end fails with an [`RdbCheckError`] (as an
/// `InvalidData` I/O error) when the check fails.
pub struct ChecksumReader<R> {
    inner: R,
    file: String,
    /// `None` once the end is reached (or for files without a checksum).
    digest: Option<Digest<'static, u64>>,
    /// The last bytes seen, not yet added to the digest.
    tail: [u8; TAIL],
    tail_len: usize,
}

impl<R: AsyncRead + Unpin> ChecksumReader<R> {
    /// Checks `inner`, the content of RDB file `file` of format `version` (files older than
    /// version 5 carry no checksum and pass unchecked).
    pub fn new(inner: R, file: impl Into<String>, version: u32) -> Self {
        ChecksumReader {
            inner,
            file: file.into(),
            digest: (version >= FIRST_CHECKSUMMED_VERSION).then(|| REDIS_CRC64.digest()),
            tail: [0; TAIL],
            tail_len: 0,
        }
    }

    /// Adds `data` to what was seen, digesting all but the last [`TAIL`] bytes.
    fn feed(&mut self, data: &[u8]) {
        let Some(digest) = &mut self.digest else {
            return;
        };
        let total = self.tail_len + data.len();
        if total <= TAIL {
            self.tail[self.tail_len..total].copy_from_slice(data);
            self.tail_len = total;
            return;
        }
        let leaving = total - TAIL;
        let from_tail = leaving.min(self.tail_len);
        digest.update(&self.tail[..from_tail]);
        let from_data = leaving - from_tail;
        digest.update(&data[..from_data]);
        let mut tail = [0u8; TAIL];
        for (slot, &b) in tail.iter_mut().zip(
            self.tail[from_tail..self.tail_len]
                .iter()
                .chain(&data[from_data..]),
        ) {
            *slot = b;
        }
        self.tail = tail;
        self.tail_len = TAIL;
    }

    /// The verdict at the end of the file.
    fn finish(&mut self) -> Result<(), RdbCheckError> {
        let Some(mut digest) = self.digest.take() else {
            return Ok(());
        };
        if self.tail_len < TAIL || self.tail[0] != EOF_OPCODE {
            return Err(RdbCheckError::Truncated {
                file: self.file.clone(),
            });
        }
        let stored = u64::from_le_bytes(self.tail[1..].try_into().expect("8 bytes"));
        if stored == 0 {
            // Written with `rdbchecksum no`.
            return Ok(());
        }
        digest.update(&self.tail[..1]);
        let computed = digest.finalize();
        if computed == stored {
            Ok(())
        } else {
            Err(RdbCheckError::Mismatch {
                file: self.file.clone(),
                stored,
                computed,
            })
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ChecksumReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if new.is_empty() && buf.remaining() > 0 {
            this.finish()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        } else {
            this.feed(new);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn known_answer() {
        assert_eq!(crc64(b"123456789"), 0xe9c6d914c4b8d9ca);
        assert_eq!(crc64(b""), 0);
    }

    /// An RDB-shaped file: header, payload, EOF opcode, checksum.
    fn rdb(payload: &[u8]) -> Vec<u8> {
        let mut f = b"REDIS0011".to_vec();
        f.extend_from_slice(payload);
        f.push(EOF_OPCODE);
        let sum = crc64(&f);
        f.extend_from_slice(&sum.to_le_bytes());
        f
    }

    /// A reader that hands out its bytes in the given sizes, cycling.
    struct Pieces(Vec<u8>, usize, Vec<usize>, usize);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let step = self.2[self.3 % self.2.len()];
            self.3 += 1;
            let at = self.1;
            let n = step.min(self.0.len() - at).min(buf.remaining());
            buf.put_slice(&self.0[at..at + n]);
            self.1 += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn read(data: &[u8], steps: Vec<usize>, version: u32) -> io::Result<Vec<u8>> {
        let mut r =
            ChecksumReader::new(Pieces(data.to_vec(), 0, steps, 0), "/srv/dump.rdb", version);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn damage_and_truncation_are_named() {
        let good = rdb(b"\xfe\x00\xfb\x01\x00\x00\x01a\x01b");
        assert_eq!(block_on(read(&good, vec![3], 11)).unwrap(), good);
        let mut bad = good.clone();
        bad[12] ^= 0x01;
        let e = block_on(read(&bad, vec![4096], 11)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string().contains("RDB file /srv/dump.rdb is damaged"),
            "{e}"
        );
        let e = block_on(read(&good[..good.len() - 5], vec![4096], 11)).unwrap_err();
        assert!(e.to_string().contains("/srv/dump.rdb is truncated"), "{e}");
        let e = block_on(read(&good[..5], vec![1], 11)).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // A stored 0: written with `rdbchecksum no`.
        let mut unchecked = good.clone();
        let n = unchecked.len();
        unchecked[n - 8..].fill(0);
        unchecked[12] ^= 0x01;
        assert!(block_on(read(&unchecked, vec![7], 11)).is_ok());
        // Version 4 files carry no checksum.
        assert!(block_on(read(&bad, vec![7], 4)).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_crc_of_data_and_its_crc_is_zero(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut with = data.clone();
            with.extend_from_slice(&crc64(&data).to_le_bytes());
            prop_assert_eq!(crc64(&with), 0);
        }

        #[test]
        fn checked_in_any_read_sizes(
            payload in proptest::collection::vec(any::<u8>(), 0..3000),
            steps in proptest::collection::vec(1usize..40, 1..6),
            flip in any::<proptest::sample::Index>(),
        ) {
            let good = rdb(&payload);
            prop_assert_eq!(block_on(read(&good, steps.clone(), 11)).unwrap(), good.clone());
            let mut bad = good.clone();
            let at = flip.index(bad.len());
            bad[at] ^= 0x80;
            prop_assert!(block_on(read(&bad, steps, 11)).is_err(), "flip at {}", at);
        }
    }
}
