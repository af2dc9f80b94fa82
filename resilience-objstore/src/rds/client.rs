//! The RDS Query API over HTTP: form-encoded `Action=…` requests, signed with SigV4 as the KMS
//! provider signs its own ([`object_store`]'s [`AwsAuthorizer`], service `rds`, the body's
//! SHA-256 included), and XML answers read into typed views ([`super::DbSnapshot`],
//! [`super::DbServer`]).
//!
//! Configuration, first match wins: endpoint `RESILIENCE_RDS_ENDPOINT`, `AWS_ENDPOINT_URL_RDS`,
//! `AWS_ENDPOINT_URL`, else `https://rds.<region>.amazonaws.com`; region
//! `RESILIENCE_RDS_REGION`, `AWS_REGION`, `AWS_DEFAULT_REGION`; credentials
//! `RESILIENCE_RDS_ACCESS_KEY_ID` / `…_SECRET_ACCESS_KEY` / `…_SESSION_TOKEN`, else the
//! `AWS_*` variables of the same names. A client for another region ([`RdsClient::in_region`])
//! keeps the credentials and takes that region's endpoint (an endpoint set in the environment
//! serves every region, as moto's does).

use bytes::Bytes;
use object_store::aws::AwsAuthorizer;
use object_store::client::HttpRequestBody;

use super::error::RdsError;
use super::model::{DbServer, DbSnapshot, RdsResource};
use super::xml;
use crate::aws::{self, AwsCredentials};

/// The API version every request names.
const API_VERSION: &str = "2014-10-31";

/// Where and how to reach RDS in one region.
#[derive(Clone, Debug)]
pub struct RdsConfig {
    /// Endpoint URL (`https://rds.<region>.amazonaws.com` by default).
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Credentials.
    pub credentials: AwsCredentials,
}

impl RdsConfig {
    /// Configuration from the environment (see the module documentation); `region`, when
    /// given, overrides the environment's.
    pub fn from_env(region: Option<&str>) -> Result<Self, RdsError> {
        let region = match region {
            Some(r) => r.to_owned(),
            None => aws::region("RDS").map_err(RdsError::Config)?,
        };
        Ok(RdsConfig {
            endpoint: aws::endpoint("RDS", &region),
            credentials: aws::credentials("RDS").map_err(RdsError::Config)?,
            region,
        })
    }
}

/// The form-encoded body of `action` with `params`.
fn form_body(action: &str, params: &[(&str, &str)]) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action)
        .append_pair("Version", API_VERSION);
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.finish()
}

/// A client of RDS in one region.
#[derive(Clone, Debug)]
pub struct RdsClient {
    config: RdsConfig,
    url: url::Url,
    http: reqwest::Client,
}

impl RdsClient {
    /// A client for `config`. Plain `http://` endpoints are accepted only on loopback.
    pub fn new(config: RdsConfig) -> Result<Self, RdsError> {
        let url = aws::checked_endpoint(&config.endpoint).map_err(RdsError::Config)?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| RdsError::Config(format!("HTTP client: {e}")))?;
        Ok(RdsClient { config, url, http })
    }

    /// A client configured from the environment, in `region` or the environment's.
    pub fn from_env(region: Option<&str>) -> Result<Self, RdsError> {
        Self::new(RdsConfig::from_env(region)?)
    }

    /// Its region.
    pub fn region(&self) -> &str {
        &self.config.region
    }

    /// A client of RDS in `region`, with the same credentials. An endpoint other than AWS'
    /// own for this client's region (set in the environment or given in code, as moto's) serves
    /// every region and is kept; otherwise `region`'s own endpoint is used.
    pub fn in_region(&self, region: &str) -> Result<Self, RdsError> {
        let default = |r: &str| format!("https://rds.{r}.amazonaws.com");
        let endpoint = if self.config.endpoint == default(&self.config.region) {
            default(region)
        } else {
            self.config.endpoint.clone()
        };
        Self::new(RdsConfig {
            endpoint,
            region: region.to_owned(),
            credentials: self.config.credentials.clone(),
        })
    }

    /// One call: `action` with `params`, about `object`; the answer's XML.
    async fn call(
        &self,
        action: &'static str,
        object: &str,
        params: &[(&str, &str)],
    ) -> Result<Bytes, RdsError> {
        let body = Bytes::from(form_body(action, params));
        let headers = self
            .signed_headers(&body)
            .map_err(|message| RdsError::Answer {
                action,
                object: object.to_owned(),
                message,
            })?;
        tracing::debug!(action, object, region = %self.config.region, "RDS call");
        let request_error = |source| RdsError::Request {
            action,
            object: object.to_owned(),
            endpoint: self.config.endpoint.clone(),
            source,
        };
        let resp = self
            .http
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| request_error(e.without_url()))?;
        let status = resp.status();
        let text = resp.bytes().await.map_err(request_error)?;
        if !status.is_success() {
            let (code, message) = xml::error(&text).unwrap_or_else(|| {
                (
                    "error".into(),
                    String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned(),
                )
            });
            return Err(RdsError::Aws {
                action,
                object: object.to_owned(),
                region: self.config.region.clone(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        Ok(text)
    }

    /// The headers of a request carrying `body`, signed (body included).
    fn signed_headers(&self, body: &Bytes) -> Result<http::HeaderMap, String> {
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.url.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(HttpRequestBody::from(body.clone()))
            .map_err(|e| format!("the request: {e}"))?;
        let credential = self.config.credentials.for_signing();
        AwsAuthorizer::new(&credential.0, "rds", &self.config.region).authorize(&mut request, None);
        Ok(request.into_parts().0.headers)
    }

    /// The `element`s of an answer, each read by `read`.
    fn parse<T>(
        action: &'static str,
        object: &str,
        answer: &[u8],
        element: &str,
        read: impl Fn(&xml::Fields) -> Result<T, String>,
    ) -> Result<Vec<T>, RdsError> {
        let answer_error = |message| RdsError::Answer {
            action,
            object: object.to_owned(),
            message,
        };
        xml::records(answer, element)
            .map_err(answer_error)?
            .iter()
            .map(|f| read(f).map_err(answer_error))
            .collect()
    }

    fn one<T>(action: &'static str, object: &str, mut list: Vec<T>) -> Result<T, RdsError> {
        if list.is_empty() {
            return Err(RdsError::Answer {
                action,
                object: object.to_owned(),
                message: "no record in the answer".into(),
            });
        }
        Ok(list.swap_remove(0))
    }

    /// Takes a manual snapshot of `resource` named `snapshot_id`.
    pub async fn create_snapshot(
        &self,
        resource: &RdsResource,
        snapshot_id: &str,
    ) -> Result<DbSnapshot, RdsError> {
        let object = format!("snapshot {snapshot_id} of {resource}");
        let (action, params, element) = match resource {
            RdsResource::Instance(id) => (
                "CreateDBSnapshot",
                [
                    ("DBInstanceIdentifier", id.as_str()),
                    ("DBSnapshotIdentifier", snapshot_id),
                ],
                "DBSnapshot",
            ),
            RdsResource::Cluster(id) => (
                "CreateDBClusterSnapshot",
                [
                    ("DBClusterIdentifier", id.as_str()),
                    ("DBClusterSnapshotIdentifier", snapshot_id),
                ],
                "DBClusterSnapshot",
            ),
        };
        let answer = self.call(action, &object, &params).await?;
        let cluster = resource.is_cluster();
        let list = Self::parse(action, &object, &answer, element, |f| {
            DbSnapshot::from_fields(f, cluster)
        })?;
        Self::one(action, &object, list)
    }

    /// The snapshot `snapshot_id` (an identifier, or an ARN for shared ones) of an instance
    /// (`cluster` false) or a cluster.
    pub async fn describe_snapshot(
        &self,
        snapshot_id: &str,
        cluster: bool,
    ) -> Result<DbSnapshot, RdsError> {
        let object = format!("snapshot {snapshot_id}");
        let (action, key, element) = if cluster {
            (
                "DescribeDBClusterSnapshots",
                "DBClusterSnapshotIdentifier",
                "DBClusterSnapshot",
            )
        } else {
            ("DescribeDBSnapshots", "DBSnapshotIdentifier", "DBSnapshot")
        };
        let answer = self.call(action, &object, &[(key, snapshot_id)]).await?;
        let list = Self::parse(action, &object, &answer, element, |f| {
            DbSnapshot::from_fields(f, cluster)
        })?;
        Self::one(action, &object, list)
    }

    /// The snapshots of `resource` of type `snapshot_type` (`manual`, `automated`).
    pub async fn list_snapshots(
        &self,
        resource: &RdsResource,
        snapshot_type: &str,
    ) -> Result<Vec<DbSnapshot>, RdsError> {
        let object = format!("the {snapshot_type} snapshots of {resource}");
        let (action, key, element) = match resource {
            RdsResource::Instance(_) => {
                ("DescribeDBSnapshots", "DBInstanceIdentifier", "DBSnapshot")
            }
            RdsResource::Cluster(_) => (
                "DescribeDBClusterSnapshots",
                "DBClusterIdentifier",
                "DBClusterSnapshot",
            ),
        };
        let mut all = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut params = vec![
                (key, resource.id()),
                ("SnapshotType", snapshot_type),
                ("MaxRecords", "100"),
            ];
            if let Some(m) = &marker {
                params.push(("Marker", m.as_str()));
            }
            let answer = self.call(action, &object, &params).await?;
            let cluster = resource.is_cluster();
            all.extend(Self::parse(action, &object, &answer, element, |f| {
                DbSnapshot::from_fields(f, cluster)
            })?);
            // The page's marker is a direct child of the result, beside the list.
            let result = format!("{action}Result");
            marker = xml::records(&answer, &result)
                .ok()
                .and_then(|r| r.into_iter().next())
                .and_then(|f| f.get("Marker").cloned())
                .filter(|m| !m.is_empty());
            if marker.is_none() {
                return Ok(all);
            }
        }
    }

    /// Copies `source` (a snapshot in another region, by ARN) into this client's region as
    /// `target_id`, encrypted with `kms_key_id` of this region when given. No `PreSignedUrl`
    /// is sent: AWS needs one only between AWS GovCloud (US) regions (the SDKs' `SourceRegion`
    /// is how they make it; it is not an API parameter).
    pub async fn copy_snapshot(
        &self,
        source: &DbSnapshot,
        target_id: &str,
        kms_key_id: Option<&str>,
    ) -> Result<DbSnapshot, RdsError> {
        let cluster = source.resource.is_cluster();
        let object = format!(
            "copy {target_id} in {} of snapshot {}",
            self.config.region, source.arn
        );
        let (action, from, to, element) = if cluster {
            (
                "CopyDBClusterSnapshot",
                "SourceDBClusterSnapshotIdentifier",
                "TargetDBClusterSnapshotIdentifier",
                "DBClusterSnapshot",
            )
        } else {
            (
                "CopyDBSnapshot",
                "SourceDBSnapshotIdentifier",
                "TargetDBSnapshotIdentifier",
                "DBSnapshot",
            )
        };
        let mut params = vec![
            (from, source.arn.as_str()),
            (to, target_id),
            ("CopyTags", "true"),
        ];
        if let Some(k) = kms_key_id {
            params.push(("KmsKeyId", k));
        }
        let answer = self.call(action, &object, &params).await?;
        let list = Self::parse(action, &object, &answer, element, |f| {
            DbSnapshot::from_fields(f, cluster)
        })?;
        Self::one(action, &object, list)
    }

    /// Deletes the snapshot `snapshot_id`.
    pub async fn delete_snapshot(&self, snapshot_id: &str, cluster: bool) -> Result<(), RdsError> {
        let object = format!("snapshot {snapshot_id}");
        let (action, key) = if cluster {
            ("DeleteDBClusterSnapshot", "DBClusterSnapshotIdentifier")
        } else {
            ("DeleteDBSnapshot", "DBSnapshotIdentifier")
        };
        self.call(action, &object, &[(key, snapshot_id)])
            .await
            .map(|_| ())
    }

    /// Restores `snapshot` into the new instance or cluster `into` (of the snapshot's kind).
    pub async fn restore(&self, snapshot: &DbSnapshot, into: &str) -> Result<DbServer, RdsError> {
        let cluster = snapshot.resource.is_cluster();
        let object = format!(
            "restore of snapshot {} into {}",
            snapshot.identifier,
            if cluster { "cluster" } else { "instance" }
        );
        let object = format!("{object} {into}");
        let (action, params, element) = if cluster {
            (
                "RestoreDBClusterFromSnapshot",
                vec![
                    ("DBClusterIdentifier", into),
                    ("SnapshotIdentifier", snapshot.arn.as_str()),
                    ("Engine", snapshot.engine.as_str()),
                ],
                "DBCluster",
            )
        } else {
            (
                "RestoreDBInstanceFromDBSnapshot",
                vec![
                    ("DBInstanceIdentifier", into),
                    ("DBSnapshotIdentifier", snapshot.arn.as_str()),
                ],
                "DBInstance",
            )
        };
        let answer = self.call(action, &object, &params).await?;
        let list = Self::parse(action, &object, &answer, element, |f| {
            DbServer::from_fields(f, cluster)
        })?;
        Self::one(action, &object, list)
    }

    /// The instance or cluster `resource`.
    pub async fn describe_server(&self, resource: &RdsResource) -> Result<DbServer, RdsError> {
        let object = resource.to_string();
        let (action, key, element) = match resource {
            RdsResource::Instance(_) => {
                ("DescribeDBInstances", "DBInstanceIdentifier", "DBInstance")
            }
            RdsResource::Cluster(_) => ("DescribeDBClusters", "DBClusterIdentifier", "DBCluster"),
        };
        let answer = self.call(action, &object, &[(key, resource.id())]).await?;
        let cluster = resource.is_cluster();
        let list = Self::parse(action, &object, &answer, element, |f| {
            DbServer::from_fields(f, cluster)
        })?;
        Self::one(action, &object, list)
    }

    /// Deletes the instance or cluster `resource` without a final snapshot.
    pub async fn delete_server(&self, resource: &RdsResource) -> Result<(), RdsError> {
        let object = resource.to_string();
        let (action, key) = match resource {
            RdsResource::Instance(_) => ("DeleteDBInstance", "DBInstanceIdentifier"),
            RdsResource::Cluster(_) => ("DeleteDBCluster", "DBClusterIdentifier"),
        };
        self.call(
            action,
            &object,
            &[(key, resource.id()), ("SkipFinalSnapshot", "true")],
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    /// The signature covers the form body's SHA-256, for service `rds` in the client's region.
    #[test]
    fn requests_are_signed_for_rds_with_the_body_hash() {
        let client = RdsClient::new(RdsConfig {
            endpoint: "http://127.0.0.1:5000".into(),
            region: "eu-west-1".into(),
            credentials: AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: Zeroizing::new("secret".into()),
                session_token: None,
            },
        })
        .unwrap();
        let body = Bytes::from_static(b"Action=DescribeDBSnapshots&Version=2014-10-31");
        let headers = client.signed_headers(&body).unwrap();
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        use sha2::Digest;
        assert_eq!(
            header("x-amz-content-sha256"),
            hex::encode(sha2::Sha256::digest(&body))
        );
        let date = &header("x-amz-date")[..8];
        assert!(header("authorization").starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{date}/eu-west-1/rds/aws4_request"
        )));
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let err = RdsClient::new(RdsConfig {
            endpoint: "http://rds.example.com".into(),
            region: "eu-west-1".into(),
            credentials: AwsCredentials {
                access_key_id: "a".into(),
                secret_access_key: Zeroizing::new("b".into()),
                session_token: None,
            },
        })
        .unwrap_err();
        assert!(err.to_string().contains("use https"), "{err}");
    }
}
