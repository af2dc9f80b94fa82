//! AWS KMS as a key provider: envelope encryption with `GenerateDataKey` and `Decrypt`.
//!
//! Wrapping asks KMS for a data key (`GenerateDataKey`, AES_256): its plaintext is the
//! key-encryption key that seals the copy locally, and its ciphertext blob is stored in the
//! copy's parameters with the key's id and ARN. Unwrapping is one `Decrypt` of that blob. So
//! opening a repository costs one KMS call per run — never one per blob (the key set is
//! unwrapped once, then everything is local) — and the KEK never leaves this process in clear.
//!
//! Configuration, first match wins: the key id or ARN given; endpoint
//! `RESILIENCE_KMS_ENDPOINT`, `AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`, else
//! `https://kms.<region>.amazonaws.com`; region `RESILIENCE_KMS_REGION`, `AWS_REGION`,
//! `AWS_DEFAULT_REGION`; credentials `RESILIENCE_KMS_ACCESS_KEY_ID` /
//! `RESILIENCE_KMS_SECRET_ACCESS_KEY` / `RESILIENCE_KMS_SESSION_TOKEN`, else the `AWS_*`
//! variables of the same names. (The `RESILIENCE_KMS_*` names let KMS and S3 use different
//! accounts or endpoints in one process.)
//!
//! Requests are signed with `object_store`'s own SigV4 signer ([`AwsAuthorizer`]), the body's
//! SHA-256 included, as KMS requires.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::aws::AwsAuthorizer;
use object_store::client::HttpRequestBody;
use resilience_core::keys::SecretKey;
use resilience_core::keys::{KeyProvider, WrappedKey};
use resilience_core::{Error, Result};
use serde_json::json;
use zeroize::Zeroizing;

use crate::aws;
pub use crate::aws::AwsCredentials;

use super::name_copy;

/// The provider name stored in copies.
pub const PROVIDER: &str = "aws-kms";

/// Where and how to reach KMS.
#[derive(Clone, Debug)]
pub struct KmsConfig {
    /// The KMS key: id, ARN, or `alias/…`.
    pub key_id: String,
    /// Endpoint URL (`https://kms.<region>.amazonaws.com` by default).
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Credentials.
    pub credentials: AwsCredentials,
}

fn config_error(message: impl Into<String>) -> Error {
    Error::KeyProvider {
        provider: PROVIDER.into(),
        message: message.into(),
    }
}

impl KmsConfig {
    /// Configuration for `key_id` from the environment (see the module documentation).
    pub fn from_env(key_id: &str) -> Result<Self> {
        let region = aws::region("KMS").map_err(config_error)?;
        let endpoint = aws::endpoint("KMS", &region);
        let credentials = aws::credentials("KMS").map_err(config_error)?;
        Ok(KmsConfig {
            key_id: key_id.to_owned(),
            endpoint,
            region,
            credentials,
        })
    }
}

/// AWS KMS key provider. Counts its calls ([`KmsProvider::calls`]).
#[derive(Debug)]
pub struct KmsProvider {
    config: KmsConfig,
    url: url::Url,
    client: reqwest::Client,
    calls: AtomicU64,
}

impl KmsProvider {
    /// A provider for `config`. Plain `http://` endpoints are accepted only on loopback.
    pub fn new(config: KmsConfig) -> Result<Self> {
        let url = aws::checked_endpoint(&config.endpoint).map_err(config_error)?;
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| config_error(format!("HTTP client: {e}")))?;
        Ok(KmsProvider {
            config,
            url,
            client,
            calls: AtomicU64::new(0),
        })
    }

    /// A provider for `key_id` configured from the environment.
    pub fn from_env(key_id: &str) -> Result<Self> {
        Self::new(KmsConfig::from_env(key_id)?)
    }

    /// How many KMS requests this provider has made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// One KMS JSON call (`TrentService.<action>`).
    async fn call(&self, action: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let body = Bytes::from(serde_json::to_vec(&body).expect("serializes"));
        let signed = self.signed_headers(action, &body)?;
        let req = self
            .client
            .post(self.url.clone())
            .headers(signed)
            .body(body);
        self.calls.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(action, key = %self.config.key_id, "KMS call");
        let resp = req.send().await.map_err(|e| {
            config_error(format!(
                "{action} at {}: {}",
                self.config.endpoint,
                e.without_url()
            ))
        })?;
        let status = resp.status();
        let text = resp
            .bytes()
            .await
            .map_err(|e| config_error(format!("{action}: reading the answer: {e}")))?;
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        if !status.is_success() {
            let kind = value
                .get("__type")
                .and_then(|v| v.as_str())
                .unwrap_or("error");
            let message = value
                .get("message")
                .or_else(|| value.get("Message"))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            return Err(config_error(format!(
                "{action} with key {} failed: HTTP {status}, {kind}: {message}",
                self.config.key_id
            )));
        }
        Ok(value)
    }

    /// The headers of a KMS `action` request carrying `body`, signed (body included).
    fn signed_headers(&self, action: &str, body: &Bytes) -> Result<http::HeaderMap> {
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")
            .header("x-amz-target", format!("TrentService.{action}"))
            .body(HttpRequestBody::from(body.clone()))
            .map_err(|e| config_error(format!("{action}: the request: {e}")))?;
        let credential = self.config.credentials.for_signing();
        // With no digest given, the signer hashes the body: KMS refuses `UNSIGNED-PAYLOAD`.
        AwsAuthorizer::new(&credential.0, "kms", &self.config.region).authorize(&mut request, None);
        Ok(request.into_parts().0.headers)
    }

    fn matches(&self, copy: &WrappedKey) -> bool {
        let want = self.config.key_id.as_str();
        let p = |k: &str| copy.params.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let (id, arn) = (p("key_id"), p("key_arn"));
        want == id || want == arn || arn.ends_with(&format!("/{want}"))
    }
}

fn b64(value: &serde_json::Value, field: &str, action: &str) -> Result<Zeroizing<Vec<u8>>> {
    let text = value
        .get(field)
        .and_then(|v| v.as_str())
        .ok_or_else(|| config_error(format!("{action}: the answer has no {field}")))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Zeroizing::new)
        .map_err(|e| config_error(format!("{action}: {field} is not base64: {e}")))
}

fn kek_from(bytes: &[u8], action: &str) -> Result<SecretKey> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| config_error(format!("{action}: the data key is not 32 bytes")))?;
    Ok(SecretKey(arr))
}

#[async_trait]
impl KeyProvider for KmsProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn wrap(&self, secret: &[u8], now: DateTime<Utc>) -> Result<WrappedKey> {
        let answer = self
            .call(
                "GenerateDataKey",
                json!({ "KeyId": self.config.key_id, "KeySpec": "AES_256" }),
            )
            .await?;
        let kek = kek_from(
            &b64(&answer, "Plaintext", "GenerateDataKey")?,
            "GenerateDataKey",
        )?;
        let blob = answer
            .get("CiphertextBlob")
            .and_then(|v| v.as_str())
            .ok_or_else(|| config_error("GenerateDataKey: the answer has no CiphertextBlob"))?;
        let arn = answer
            .get("KeyId")
            .and_then(|v| v.as_str())
            .unwrap_or(&self.config.key_id);
        let params = json!({
            "key_id": self.config.key_id,
            "key_arn": arn,
            "encrypted_kek": blob,
        });
        Ok(WrappedKey::seal(PROVIDER, &kek, secret, params, now))
    }

    async fn unwrap(&self, copy: &WrappedKey) -> Result<Option<Zeroizing<Vec<u8>>>> {
        if !self.matches(copy) {
            return Ok(None);
        }
        let blob = copy
            .params
            .get("encrypted_kek")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Corrupt {
                object: copy.object_name(),
                reason: "KMS copy without encrypted_kek".into(),
            })?;
        let key = copy.params.get("key_arn").and_then(|v| v.as_str());
        let answer = self
            .call(
                "Decrypt",
                json!({ "CiphertextBlob": blob, "KeyId": key.unwrap_or(&self.config.key_id) }),
            )
            .await
            .map_err(|e| name_copy(e, copy))?;
        let kek = kek_from(&b64(&answer, "Plaintext", "Decrypt")?, "Decrypt")?;
        Ok(copy.open(&kek))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> KmsProvider {
        KmsProvider::new(KmsConfig {
            key_id: "alias/test".into(),
            endpoint: "http://127.0.0.1:5000".into(),
            region: "us-east-1".into(),
            credentials: AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: Zeroizing::new(
                    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
                ),
                session_token: Some(Zeroizing::new("SESSIONTOKEN".into())),
            },
        })
        .unwrap()
    }

    /// KMS refuses `UNSIGNED-PAYLOAD`: the signature covers the body's SHA-256, and the headers
    /// the call depends on.
    #[test]
    fn requests_are_signed_with_the_body_hash() {
        let body = Bytes::from_static(br#"{"KeyId":"alias/test","KeySpec":"AES_256"}"#);
        let headers = provider().signed_headers("GenerateDataKey", &body).unwrap();
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            header("x-amz-content-sha256"),
            "a80a7e43585666e76d8aba4ca009deee7e948fdde8aab3331068f13908555ffc"
        );
        assert_eq!(header("host"), "127.0.0.1:5000");
        assert_eq!(header("x-amz-target"), "TrentService.GenerateDataKey");
        assert_eq!(header("x-amz-security-token"), "SESSIONTOKEN");
        let auth = header("authorization");
        let date = &header("x-amz-date")[..8];
        assert!(
            auth.starts_with(&format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{date}/us-east-1/kms/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;\
                 x-amz-security-token;x-amz-target, Signature="
            )),
            "{auth}"
        );
    }

    /// The signature is the one botocore (the AWS SDK for Python, installed with moto by
    /// `scripts/test`) computes for the same request at the same time, the body's SHA-256
    /// included.
    #[test]
    fn the_signature_is_the_one_botocore_computes() {
        const BOTOCORE: &str = r#"
import datetime, hashlib, sys
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
date, body = sys.argv[1:3]
when = datetime.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
botocore.auth.get_current_datetime = lambda: when
request = AWSRequest(method="POST", url="http://127.0.0.1:5000/", data=body.encode(), headers={
    "content-type": "application/x-amz-json-1.1",
    "x-amz-target": "TrentService.GenerateDataKey",
    "x-amz-content-sha256": hashlib.sha256(body.encode()).hexdigest(),
})
credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "SESSIONTOKEN")
botocore.auth.SigV4Auth(credentials, "kms", "us-east-1").add_auth(request)
print(request.headers["Authorization"])
"#;
        let body = r#"{"KeyId":"alias/test","KeySpec":"AES_256"}"#;
        let headers = provider()
            .signed_headers("GenerateDataKey", &Bytes::from_static(body.as_bytes()))
            .unwrap();
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        let out = std::process::Command::new("python3")
            .args(["-c", BOTOCORE])
            .args([header("x-amz-date").as_str(), body])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "botocore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            header("authorization")
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let text = format!("{:?}", provider());
        assert!(text.contains("AKIDEXAMPLE"), "{text}");
        assert!(
            !text.contains("EXAMPLEKEY") && !text.contains("SESSIONTOKEN"),
            "{text}"
        );
    }
}
