//! The bytes of a Redis backup entry: a run of key records.
//!
//! ```text
//! key length u32 LE | key | expires at (Unix ms) i64 LE, -1 when persistent | payload length u32 LE | DUMP payload
//! ```
//!
//! Expiry is absolute, so a restore (with `RESTORE … ABSTTL`) gives every key the instant it
//! would have expired at the source, to the millisecond, however long the backup sat in the
//! repository; keys whose instant has passed are not restored.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One key as backed up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's name (binary-safe).
    pub key: Bytes,
    /// When it expires (Unix milliseconds), or `None` when it does not.
    pub expires_at_ms: Option<i64>,
    /// Its value as `DUMP` serialized it.
    pub payload: Bytes,
}

impl KeyRecord {
    /// Appends the record's encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(16 + self.key.len() + self.payload.len());
        out.put_u32_le(self.key.len() as u32);
        out.put_slice(&self.key);
        out.put_i64_le(self.expires_at_ms.unwrap_or(-1));
        out.put_u32_le(self.payload.len() as u32);
        out.put_slice(&self.payload);
    }

    /// The RDB version a payload was written with (the two bytes before its CRC-64).
    pub fn rdb_version(&self) -> Option<u16> {
        let n = self.payload.len();
        (n >= 10).then(|| u16::from_le_bytes([self.payload[n - 10], self.payload[n - 9]]))
    }
}

/// A malformed entry.
#[derive(Debug, thiserror::Error)]
#[error("{entry}: malformed key record: {reason}")]
pub struct BadRecord {
    /// The backup entry the records come from.
    pub entry: String,
    /// What is wrong.
    pub reason: String,
}

/// Decodes records from content that arrives in pieces.
pub struct RecordDecoder {
    entry: String,
    buf: BytesMut,
}

/// The longest key or payload accepted (Redis' own limit for a string is 512 MiB).
const MAX_FIELD: usize = 1 << 30;

impl RecordDecoder {
    /// A decoder for the content of backup entry `entry` (named in its errors).
    pub fn new(entry: impl Into<String>) -> Self {
        RecordDecoder {
            entry: entry.into(),
            buf: BytesMut::new(),
        }
    }

    fn bad(&self, reason: String) -> BadRecord {
        BadRecord {
            entry: self.entry.clone(),
            reason,
        }
    }

    /// Adds a piece of content.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete record, if the content received so far holds one.
    pub fn next_record(&mut self) -> Result<Option<KeyRecord>, BadRecord> {
        let b = &self.buf[..];
        if b.len() < 4 {
            return Ok(None);
        }
        let key_len = u32::from_le_bytes(b[..4].try_into().expect("4")) as usize;
        if key_len > MAX_FIELD {
            return Err(self.bad(format!("key length {key_len}")));
        }
        let at_payload_len = 4 + key_len + 8;
        if b.len() < at_payload_len + 4 {
            return Ok(None);
        }
        let payload_len =
            u32::from_le_bytes(b[at_payload_len..at_payload_len + 4].try_into().expect("4"))
                as usize;
        if payload_len > MAX_FIELD {
            return Err(self.bad(format!("payload length {payload_len}")));
        }
        let total = at_payload_len + 4 + payload_len;
        if b.len() < total {
            return Ok(None);
        }
        let mut rec = self.buf.split_to(total).freeze();
        rec.advance(4);
        let key = rec.split_to(key_len);
        let expires = rec.get_i64_le();
        rec.advance(4);
        Ok(Some(KeyRecord {
            key,
            expires_at_ms: (expires >= 0).then_some(expires),
            payload: rec,
        }))
    }

    /// Checks that nothing but whole records arrived.
    pub fn finish(&self) -> Result<(), BadRecord> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.bad(format!(
                "{} bytes of a truncated record at the end",
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = KeyRecord> {
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::option::of(0i64..i64::MAX),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(k, e, p)| KeyRecord {
                key: k.into(),
                expires_at_ms: e,
                payload: p.into(),
            })
    }

    proptest! {
        #[test]
        fn records_round_trip_in_any_pieces(
            records in proptest::collection::vec(record(), 0..20),
            cut in 1usize..97,
        ) {
            let mut encoded = BytesMut::new();
            for r in &records {
                r.encode(&mut encoded);
            }
            let mut d = RecordDecoder::new("dump");
            let mut out = Vec::new();
            for piece in encoded.chunks(cut) {
                d.push(piece);
                while let Some(r) = d.next_record().unwrap() {
                    out.push(r);
                }
            }
            d.finish().unwrap();
            prop_assert_eq!(out, records);
        }

        #[test]
        fn garbage_is_an_error_or_waits_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = RecordDecoder::new("dump");
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_record() {}
        }
    }

    #[test]
    fn truncation_is_reported() {
        let mut encoded = BytesMut::new();
        KeyRecord {
            key: "k".into(),
            expires_at_ms: None,
            payload: "v".into(),
        }
        .encode(&mut encoded);
        let mut d = RecordDecoder::new("dump");
        d.push(&encoded[..encoded.len() - 1]);
        assert!(d.next_record().unwrap().is_none());
        assert!(d.finish().is_err());
    }
}
