//! AWS Signature Version 4 for S3 requests that name an exact key.
//!
//! `object_store`'s signer ([`object_store::aws::AwsAuthorizer`]) reads the request's path
//! through a URL parser, which removes `.` and `..` segments: a request for the key `a/./b`
//! would be signed for `a/b`. Requests by exact key ([`crate::s3_exact`]) are signed here
//! instead, for the path the server signs: the bucket and the decoded key, each byte but the
//! unreserved ones and `/` percent-encoded, nothing removed. Everything else follows the
//! specification: the canonical query is sorted and encoded, `host` and every header sent are
//! signed, and the payload is `UNSIGNED-PAYLOAD` unless its hash is given.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use object_store::aws::AwsCredential;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// What SigV4 leaves unencoded in a query name or value: the unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What SigV4 leaves unencoded in an S3 path: the unreserved characters and `/`.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// The payload hash of a request whose body is not hashed.
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The canonical path of `key` in `bucket`: `/bucket/key`, encoded as SigV4 encodes an S3
/// path (no segment removed, `/` kept).
pub(crate) fn canonical_path(bucket: &str, key: &str) -> String {
    format!(
        "/{}/{}",
        utf8_percent_encode(bucket, PATH),
        utf8_percent_encode(key, PATH)
    )
}

/// The canonical query of `pairs` (sorted by name, then value; names and values encoded), which
/// is also what the request sends.
pub(crate) fn canonical_query(pairs: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            (
                utf8_percent_encode(k, UNRESERVED).to_string(),
                utf8_percent_encode(v, UNRESERVED).to_string(),
            )
        })
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// One request to sign.
pub(crate) struct Request<'a> {
    /// `GET`, `HEAD`, `PUT`…
    pub method: &'a str,
    /// The `Host` header as sent (`host:port` for a port that is not the scheme's default).
    pub host: &'a str,
    /// The canonical path ([`canonical_path`]).
    pub path: &'a str,
    /// The canonical query ([`canonical_query`]).
    pub query: &'a str,
    /// The hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload: &'a str,
}

/// Signs `request`: adds `x-amz-date`, `x-amz-content-sha256`, the session token if any and
/// `authorization` to `headers`, signing `host` and every header in `headers`.
pub(crate) fn sign(
    credential: &AwsCredential,
    region: &str,
    request: &Request<'_>,
    headers: &mut http::HeaderMap,
    now: DateTime<Utc>,
) {
    let date_time = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let value = |s: &str| http::HeaderValue::from_str(s).expect("an ASCII header value");
    headers.insert("x-amz-date", value(&date_time));
    headers.insert("x-amz-content-sha256", value(request.payload));
    if let Some(token) = &credential.token {
        headers.insert("x-amz-security-token", value(token));
    }
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| *name != http::header::AUTHORIZATION)
        .map(|(name, v)| {
            let text = String::from_utf8_lossy(v.as_bytes());
            (
                name.as_str().to_owned(),
                text.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    signed.push(("host".into(), request.host.to_owned()));
    signed.sort();
    let names = signed
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = signed.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{names}\n{}",
        request.method, request.path, request.query, request.payload
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", credential.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    headers.insert(
        http::header::AUTHORIZATION,
        value(&format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}",
            credential.key_id
        )),
    );
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> AwsCredential {
        AwsCredential {
            key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        }
    }

    /// The `GET Object` example of the S3 SigV4 documentation (virtual-hosted style, so the
    /// path has no bucket).
    #[test]
    fn the_documented_example_signs_alike() {
        let mut headers = http::HeaderMap::new();
        headers.insert("range", "bytes=0-9".parse().unwrap());
        let now = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        sign(
            &credential(),
            "us-east-1",
            &Request {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: "",
                payload: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            },
            &mut headers,
            now,
        );
        assert_eq!(
            headers["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// For a key a URL parser leaves alone, the signature is `object_store`'s.
    #[test]
    fn a_plain_key_is_signed_as_object_store_signs_it() {
        let credential = credential();
        let mut theirs = http::Request::builder()
            .method("GET")
            .uri("http://127.0.0.1:3900/bucket/a%20b/c%2Bd?list-type=2&prefix=a%2Fb")
            .body(object_store::client::HttpRequestBody::empty())
            .unwrap();
        object_store::aws::AwsAuthorizer::new(&credential, "s3", "garage")
            .with_sign_payload(false)
            .authorize(&mut theirs, None);
        let date = theirs.headers()["x-amz-date"].to_str().unwrap();
        let now = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc();
        let mut ours = http::HeaderMap::new();
        sign(
            &credential,
            "garage",
            &Request {
                method: "GET",
                host: "127.0.0.1:3900",
                path: &canonical_path("bucket", "a b/c+d"),
                query: &canonical_query(&[("prefix", "a/b"), ("list-type", "2")]),
                payload: UNSIGNED_PAYLOAD,
            },
            &mut ours,
            now,
        );
        assert_eq!(ours["authorization"], theirs.headers()["authorization"]);
    }

    #[test]
    fn dot_segments_and_empty_segments_are_kept() {
        assert_eq!(canonical_path("b", "/a//./../c"), "/b//a//./../c");
        assert_eq!(canonical_path("b", "a\u{1}b"), "/b/a%01b");
    }
}
