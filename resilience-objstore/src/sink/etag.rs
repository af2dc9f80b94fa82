//! ETags as S3 computes them: the MD5 of a body sent in one `PUT`, or the MD5 of its parts'
//! MD5s and their count; a copy is proven when the store's ETag is the one computed here.

use bytes::Bytes;

/// The MD5 of each part, in order, from which S3 derives an object's ETag.
#[derive(Default)]
pub(super) struct PartDigests {
    /// Each part's MD5 (one for a single `PUT`).
    pub(super) parts: Vec<[u8; 16]>,
    /// Sent as a multipart upload.
    pub(super) multipart: bool,
}

impl PartDigests {
    /// The ETag S3 gives an object of these parts: the MD5 of the body for a single `PUT`, else
    /// the MD5 of the parts' MD5s followed by `-` and the number of parts.
    pub(super) fn etag(&self) -> String {
        use md5::Digest;
        if !self.multipart {
            return hex::encode(self.parts.first().copied().unwrap_or_else(|| {
                let empty: [u8; 16] = md5::Md5::digest(b"").into();
                empty
            }));
        }
        let mut all = md5::Md5::new();
        for p in &self.parts {
            all.update(p);
        }
        format!("{}-{}", hex::encode(all.finalize()), self.parts.len())
    }
}

/// Whether a normalized ETag has the form of an MD5 (S3's ETag of a single-part upload).
pub(super) fn is_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An ETag as a store returns it, without quotes or a weak marker, lower case.
pub(super) fn normalize_etag(etag: &str) -> String {
    etag.trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// The MD5 of `parts`, one after the other.
pub(super) fn md5_of(parts: &[Bytes]) -> [u8; 16] {
    use md5::Digest;
    let mut h = md5::Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_follow_s3() {
        let empty = PartDigests {
            parts: vec![],
            multipart: false,
        };
        assert_eq!(empty.etag(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(normalize_etag("\"ABC-2\""), "abc-2");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }

    #[test]
    fn only_md5_shaped_etags_stand_for_the_body() {
        assert!(is_md5("d41d8cd98f00b204e9800998ecf8427e"));
        assert!(!is_md5("d41d8cd98f00b204e9800998ecf8427e-2"));
        assert!(!is_md5("0x8dc1234567890ab"));
        assert!(!is_md5("1a2b-3c4d-1000"));
        assert!(!is_md5("z41d8cd98f00b204e9800998ecf8427e"));
    }
}
