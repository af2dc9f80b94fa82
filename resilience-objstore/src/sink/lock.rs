//! S3 Object Lock: an object's retention read from its `HEAD`, set with `PutObjectRetention`.
//!
//! Before the first retention it sets, the sink reads the bucket's Object Lock configuration
//! (`GetObjectLockConfiguration`) once: a bucket created without Object Lock cannot lock
//! anything, and one with a *default* retention would lock every object written, the working
//! objects a repository deletes as it goes (its locks, index files, prune plans) included. Both
//! are refused, naming the bucket and what to change.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use md5::Digest;
use quick_xml::events::Event;
use resilience_core::sink::{LockMode, Retention, SinkError};

use super::ObjectStoreSink;
use crate::streaming_put::StreamingPut;

/// How S3 names a lock mode.
fn s3_mode(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Governance => "GOVERNANCE",
        LockMode::Compliance => "COMPLIANCE",
    }
}

fn parse_mode(text: &str) -> Option<LockMode> {
    match text {
        "GOVERNANCE" => Some(LockMode::Governance),
        "COMPLIANCE" => Some(LockMode::Compliance),
        _ => None,
    }
}

/// A retain-until date as S3 takes it: whole seconds, rounded up (never a moment early).
pub(crate) fn s3_date(until: DateTime<Utc>) -> String {
    let whole = until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0);
    DateTime::<Utc>::from_timestamp(whole, 0)
        .unwrap_or(until)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The body of a `PutObjectRetention`.
pub(crate) fn retention_xml(r: &Retention) -> String {
    format!(
        "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
        s3_mode(r.mode),
        s3_date(r.until)
    )
}

/// What a bucket's Object Lock configuration says: whether it is enabled, and whether it has
/// a default retention rule.
pub(crate) fn parse_lock_configuration(xml: &[u8]) -> Result<(bool, bool), String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let (mut enabled, mut default_rule) = (false, false);
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => match e.local_name().as_ref() {
                b"ObjectLockEnabled" => {
                    enabled =
                        crate::versions::text_of(&mut reader, b"ObjectLockEnabled")? == "Enabled";
                }
                b"DefaultRetention" => default_rule = true,
                _ => {}
            },
            Event::Eof => return Ok((enabled, default_rule)),
            _ => {}
        }
    }
}

impl ObjectStoreSink {
    fn lock_error(&self, operation: &'static str, key: &str, reason: String) -> SinkError {
        SinkError::Backend {
            operation,
            key: key.to_owned(),
            location: self.location.clone(),
            source: reason.into(),
        }
    }

    /// The object's retention, from its `HEAD`.
    pub(super) async fn s3_retention(
        &self,
        s3: &StreamingPut,
        key: &str,
    ) -> Result<Option<Retention>, SinkError> {
        let path = self.path(key);
        let response = s3
            .send_exact(http::Method::HEAD, Some(path.as_ref()), &[])
            .await
            .map_err(|e| self.lock_error("read retention", key, e))?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Err(SinkError::NotFound {
                key: key.to_owned(),
            });
        }
        if !response.status().is_success() {
            return Err(self.lock_error(
                "read retention",
                key,
                format!("HEAD: HTTP {}", response.status()),
            ));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (Some(mode), Some(until)) = (
            header("x-amz-object-lock-mode"),
            header("x-amz-object-lock-retain-until-date"),
        ) else {
            return Ok(None);
        };
        let mode = parse_mode(&mode).ok_or_else(|| {
            self.lock_error("read retention", key, format!("unknown lock mode {mode:?}"))
        })?;
        let until = DateTime::parse_from_rfc3339(&until)
            .map_err(|e| {
                self.lock_error(
                    "read retention",
                    key,
                    format!("retain-until date {until:?}: {e}"),
                )
            })?
            .with_timezone(&Utc);
        Ok(Some(Retention { mode, until }))
    }

    /// Sets the object's retention (`PutObjectRetention`), after checking the bucket once.
    pub(super) async fn s3_set_retention(
        &self,
        s3: &StreamingPut,
        key: &str,
        retention: Retention,
    ) -> Result<(), SinkError> {
        let checked = self
            .lock_checked
            .get_or_init(|| async { self.check_bucket_lock(s3).await })
            .await;
        if let Err(reason) = checked {
            return Err(SinkError::Refused {
                operation: "set retention",
                key: key.to_owned(),
                reason: reason.clone(),
            });
        }
        let body = retention_xml(&retention);
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "content-md5",
            http::HeaderValue::from_str(&md5).expect("base64 is a header value"),
        );
        let path = self.path(key);
        let request = s3
            .prepare_exact(
                http::Method::PUT,
                Some(path.as_ref()),
                &[("retention", "")],
                headers,
            )
            .await
            .map_err(|e| self.lock_error("set retention", key, e))?
            .body(body);
        let idle = s3
            .client()
            .map_err(|e| self.lock_error("set retention", key, e))?
            .idle;
        let response = crate::exact::send_with_retries(request, idle)
            .await
            .map_err(|e| self.lock_error("set retention", key, e))?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Err(SinkError::NotFound {
                key: key.to_owned(),
            });
        }
        if !response.status().is_success() {
            let failure = s3.failure(response).await;
            return Err(self.lock_error(
                "set retention",
                key,
                format!("PutObjectRetention: {failure}"),
            ));
        }
        Ok(())
    }

    /// Whether the bucket can hold the repository's retentions (see the module's text).
    async fn check_bucket_lock(&self, s3: &StreamingPut) -> Result<(), String> {
        let bucket = s3.client().map(|c| c.bucket.clone()).unwrap_or_default();
        let body = match s3
            .send_empty(http::Method::GET, None, &[("object-lock", "")])
            .await
        {
            Ok(body) => body,
            Err(e) if e.contains("ObjectLockConfigurationNotFound") => {
                return Err(format!(
                    "bucket {bucket} has no Object Lock: create the bucket with Object Lock enabled (it cannot be turned on for the objects of an existing one)"
                ))
            }
            Err(e) => return Err(format!("GetObjectLockConfiguration of bucket {bucket}: {e}")),
        };
        match parse_lock_configuration(&body) {
            Ok((true, false)) => Ok(()),
            Ok((false, _)) => Err(format!(
                "bucket {bucket} has no Object Lock: create the bucket with Object Lock enabled"
            )),
            Ok((true, true)) => Err(format!(
                "bucket {bucket} has a default retention rule, which would lock the objects a repository deletes as it goes (locks, index files, prune plans): remove the rule; the repository sets each object's retention itself"
            )),
            Err(e) => Err(format!(
                "the Object Lock configuration of bucket {bucket} does not parse: {e}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_configurations_are_read() {
        let enabled = br#"<?xml version="1.0" encoding="UTF-8"?><ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>"#;
        assert_eq!(parse_lock_configuration(enabled).unwrap(), (true, false));
        let with_rule = br#"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>"#;
        assert_eq!(parse_lock_configuration(with_rule).unwrap(), (true, true));
        assert_eq!(
            parse_lock_configuration(b"<ObjectLockConfiguration/>").unwrap(),
            (false, false)
        );
    }

    proptest! {
        /// A date written as S3 takes it reads back at or after the date, less than a second on.
        #[test]
        fn retain_until_dates_round_up_to_the_second(ms in 0i64..4_000_000_000_000, mode in prop_oneof![Just(LockMode::Governance), Just(LockMode::Compliance)]) {
            let until = DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
            let text = s3_date(until);
            let back = DateTime::parse_from_rfc3339(&text).unwrap().with_timezone(&Utc);
            prop_assert!(back >= until);
            prop_assert!(back - until < chrono::Duration::seconds(1));
            let xml = retention_xml(&Retention { mode, until });
            let wanted = format!("<RetainUntilDate>{text}</RetainUntilDate>");
            prop_assert!(xml.contains(&wanted));
            prop_assert_eq!(parse_mode(s3_mode(mode)), Some(mode));
        }
    }
}
