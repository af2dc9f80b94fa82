//! AWS Signature Version 4 for the few JSON-RPC calls the KMS provider makes.
//!
//! Hand-written on `hmac` and `sha2` (already in the build through `object_store`) rather than
//! `aws-sigv4`, whose current releases need a newer Rust than this workspace's MSRV and bring the
//! `aws-smithy-*` runtime along. It signs one shape only — a POST with a body, no query string —
//! and is checked against a signature computed by botocore (the AWS SDK for Python).

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// AWS credentials. `Debug` shows the access key id only.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id (not secret).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The headers to add to a POST of `body` to `host` (with `:port` when not the default) at
/// path `/`, already carrying `headers` (lower-case names), so that AWS accepts it:
/// `x-amz-date`, `x-amz-security-token` when there is one, and `authorization`.
pub fn sign_post(
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    service: &str,
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    all.push(("host".into(), host.to_owned()));
    all.push(("x-amz-date".into(), amz_date.clone()));
    if let Some(token) = &credentials.session_token {
        all.push(("x-amz-security-token".into(), token.as_str().to_owned()));
    }
    all.sort();
    let signed_headers = all
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = all.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical_request = format!(
        "POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(body)
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_secret = Zeroizing::new(format!("AWS4{}", credentials.secret_access_key.as_str()));
    let k_date = Zeroizing::new(hmac(k_secret.as_bytes(), date.as_bytes()));
    let k_region = Zeroizing::new(hmac(&k_date, region.as_bytes()));
    let k_service = Zeroizing::new(hmac(&k_region, service.as_bytes()));
    let k_signing = Zeroizing::new(hmac(&k_service, b"aws4_request"));
    let signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()));
    let mut out = vec![("x-amz-date".to_owned(), amz_date)];
    if let Some(token) = &credentials.session_token {
        out.push(("x-amz-security-token".to_owned(), token.as_str().to_owned()));
    }
    out.push((
        "authorization".to_owned(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected signature was computed by botocore's `SigV4Auth` for the same request.
    #[test]
    fn matches_botocore() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: Some(Zeroizing::new("SESSIONTOKEN".into())),
        };
        let now = DateTime::parse_from_rfc3339("2026-11-25T09:21:08Z")
            .unwrap()
            .with_timezone(&Utc);
        let out = sign_post(
            "127.0.0.1:5000",
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", "TrentService.GenerateDataKey"),
            ],
            br#"{"KeyId":"alias/test","KeySpec":"AES_256"}"#,
            &creds,
            "us-east-1",
            "kms",
            now,
        );
        let auth = &out.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261125/us-east-1/kms/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=1933fda0254385a2f3dc02e1aa0a4e1d8e04c839374b683dacd833f160b4776c"
        );
        assert!(!format!("{creds:?}").contains("EXAMPLEKEY"));
    }
}
