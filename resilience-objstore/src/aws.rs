//! What the AWS services this crate calls over HTTP (KMS, RDS) share: credentials that wipe
//! their secrets, and the configuration read from the environment — the service's own
//! variables first (`RESILIENCE_<SERVICE>_*`), then the SDKs' `AWS_*` ones.

use object_store::aws::AwsCredential;
use zeroize::{Zeroize, Zeroizing};

/// AWS credentials. `Debug` shows the access key id only.
#[derive(Clone)]
pub struct AwsCredentials {
    /// Access key id (not secret).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AwsCredentials {
    /// These credentials in the form `object_store`'s signer takes, for one request.
    pub(crate) fn for_signing(&self) -> SigningCredential {
        SigningCredential(AwsCredential {
            key_id: self.access_key_id.clone(),
            secret_key: self.secret_access_key.as_str().to_owned(),
            token: self.session_token.as_ref().map(|t| t.as_str().to_owned()),
        })
    }
}

/// An [`AwsCredential`] whose secrets are wiped when it is dropped.
pub(crate) struct SigningCredential(pub(crate) AwsCredential);

impl Drop for SigningCredential {
    fn drop(&mut self) {
        self.0.secret_key.zeroize();
        if let Some(token) = &mut self.0.token {
            token.zeroize();
        }
    }
}

/// The first of `names` set to a non-empty value.
pub(crate) fn var(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The region of `service` (`KMS`, `RDS`): `RESILIENCE_<SERVICE>_REGION`, `AWS_REGION`,
/// `AWS_DEFAULT_REGION`.
pub(crate) fn region(service: &str) -> Result<String, String> {
    let own = format!("RESILIENCE_{service}_REGION");
    var(&[&own, "AWS_REGION", "AWS_DEFAULT_REGION"])
        .ok_or_else(|| format!("no region: set AWS_REGION or {own}"))
}

/// The endpoint of `service` in `region`: `RESILIENCE_<SERVICE>_ENDPOINT`,
/// `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, else
/// `https://<service>.<region>.amazonaws.com`.
pub(crate) fn endpoint(service: &str, region: &str) -> String {
    let own = format!("RESILIENCE_{service}_ENDPOINT");
    let sdk = format!("AWS_ENDPOINT_URL_{service}");
    var(&[&own, &sdk, "AWS_ENDPOINT_URL"]).unwrap_or_else(|| {
        format!(
            "https://{}.{region}.amazonaws.com",
            service.to_ascii_lowercase()
        )
    })
}

/// The credentials of `service`: `RESILIENCE_<SERVICE>_ACCESS_KEY_ID` /
/// `…_SECRET_ACCESS_KEY` / `…_SESSION_TOKEN`, else the `AWS_*` variables of the same names
/// (a session token is taken from the same family as the access key).
pub(crate) fn credentials(service: &str) -> Result<AwsCredentials, String> {
    let own = |what: &str| format!("RESILIENCE_{service}_{what}");
    let access_key_id = var(&[&own("ACCESS_KEY_ID"), "AWS_ACCESS_KEY_ID"])
        .ok_or("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")?;
    let secret = var(&[&own("SECRET_ACCESS_KEY"), "AWS_SECRET_ACCESS_KEY"])
        .ok_or("no secret: set AWS_SECRET_ACCESS_KEY")?;
    let token = if std::env::var_os(own("ACCESS_KEY_ID")).is_some() {
        var(&[&own("SESSION_TOKEN")])
    } else {
        var(&["AWS_SESSION_TOKEN"])
    };
    Ok(AwsCredentials {
        access_key_id,
        secret_access_key: Zeroizing::new(secret),
        session_token: token.map(Zeroizing::new),
    })
}

/// Checks an endpoint URL: `https`, or plain `http` to a loopback address only.
pub(crate) fn checked_endpoint(endpoint: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(endpoint).map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if crate::config::is_loopback(endpoint) => {}
        _ => {
            return Err(format!(
                "endpoint {endpoint}: use https (plain http only to a loopback address)"
            ))
        }
    }
    if url.host_str().is_none() {
        return Err(format!("endpoint {url} has no host"));
    }
    Ok(url)
}
