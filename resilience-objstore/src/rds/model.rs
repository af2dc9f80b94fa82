//! Typed views of RDS answers ([`DbSnapshot`], [`DbServer`]) and of what the catalog records
//! about an RDS snapshot ([`RdsSnapshotRecord`], kept in a backup's `source_metadata`).

use chrono::{DateTime, Utc};
use resilience_core::source::SourceMetadata;
use serde::{Deserialize, Serialize};

use super::xml::Fields;

/// The source kind RDS backups are recorded under.
pub const KIND: &str = "rds";

/// What is snapshotted: a DB instance or an Aurora (or Multi-AZ) DB cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum RdsResource {
    /// A DB instance, by identifier.
    Instance(String),
    /// A DB cluster, by identifier.
    Cluster(String),
}

impl RdsResource {
    /// Its identifier.
    pub fn id(&self) -> &str {
        match self {
            RdsResource::Instance(id) | RdsResource::Cluster(id) => id,
        }
    }

    /// Whether it is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RdsResource::Cluster(_))
    }

    /// The default source id of its backups in the catalog: `rds:<id>`.
    pub fn source_id(&self) -> String {
        format!("rds:{}", self.id())
    }
}

impl std::fmt::Display for RdsResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RdsResource::Instance(id) => write!(f, "DB instance {id}"),
            RdsResource::Cluster(id) => write!(f, "DB cluster {id}"),
        }
    }
}

/// A DB snapshot or DB cluster snapshot, as `Describe*Snapshots` and `Create*`/`Copy*` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbSnapshot {
    /// Its identifier (`rds:…` for automated ones).
    pub identifier: String,
    /// Its ARN.
    pub arn: String,
    /// The instance or cluster it is of.
    pub resource: RdsResource,
    /// `creating`, `available`, `copying`, `failed`, …
    pub status: String,
    /// `manual` or `automated`.
    pub snapshot_type: String,
    /// The engine (`postgres`, `aurora-postgresql`, …).
    pub engine: String,
    /// The engine's version.
    pub engine_version: Option<String>,
    /// Allocated storage, GiB.
    pub allocated_storage_gib: Option<u64>,
    /// When it was taken.
    pub created_at: Option<DateTime<Utc>>,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// The KMS key that encrypts it.
    pub kms_key_id: Option<String>,
}

fn time(fields: &Fields, name: &str) -> Option<DateTime<Utc>> {
    fields
        .get(name)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn required(fields: &Fields, name: &str, what: &str) -> Result<String, String> {
    fields
        .get(name)
        .cloned()
        .ok_or_else(|| format!("a {what} without {name}"))
}

impl DbSnapshot {
    /// From the fields of a `<DBSnapshot>` (`cluster` false) or `<DBClusterSnapshot>` element.
    pub fn from_fields(fields: &Fields, cluster: bool) -> Result<Self, String> {
        let (what, id, arn, of, encrypted) = if cluster {
            (
                "DB cluster snapshot",
                "DBClusterSnapshotIdentifier",
                "DBClusterSnapshotArn",
                "DBClusterIdentifier",
                "StorageEncrypted",
            )
        } else {
            (
                "DB snapshot",
                "DBSnapshotIdentifier",
                "DBSnapshotArn",
                "DBInstanceIdentifier",
                "Encrypted",
            )
        };
        let of = required(fields, of, what)?;
        Ok(DbSnapshot {
            identifier: required(fields, id, what)?,
            arn: fields.get(arn).cloned().unwrap_or_default(),
            resource: if cluster {
                RdsResource::Cluster(of)
            } else {
                RdsResource::Instance(of)
            },
            status: required(fields, "Status", what)?,
            snapshot_type: fields.get("SnapshotType").cloned().unwrap_or_default(),
            engine: fields.get("Engine").cloned().unwrap_or_default(),
            engine_version: fields.get("EngineVersion").cloned(),
            allocated_storage_gib: fields.get("AllocatedStorage").and_then(|v| v.parse().ok()),
            created_at: time(fields, "SnapshotCreateTime"),
            encrypted: fields.get(encrypted).is_some_and(|v| v == "true"),
            kms_key_id: fields.get("KmsKeyId").filter(|k| !k.is_empty()).cloned(),
        })
    }
}

/// A DB instance or DB cluster, as `DescribeDBInstances` / `DescribeDBClusters` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbServer {
    /// The instance or cluster.
    pub resource: RdsResource,
    /// `creating`, `available`, `deleting`, …
    pub status: String,
    /// The engine.
    pub engine: String,
    /// The engine's version.
    pub engine_version: Option<String>,
    /// Allocated storage, GiB.
    pub allocated_storage_gib: Option<u64>,
    /// Where it listens (`host:port`), once it does.
    pub endpoint: Option<String>,
}

impl DbServer {
    /// From the fields of a `<DBInstance>` (`cluster` false) or `<DBCluster>` element.
    pub fn from_fields(fields: &Fields, cluster: bool) -> Result<Self, String> {
        let (resource, status, endpoint) = if cluster {
            let id = required(fields, "DBClusterIdentifier", "DB cluster")?;
            (
                RdsResource::Cluster(id),
                required(fields, "Status", "DB cluster")?,
                fields
                    .get("Endpoint")
                    .map(|h| format!("{h}:{}", fields.get("Port").map_or("", |p| p))),
            )
        } else {
            let id = required(fields, "DBInstanceIdentifier", "DB instance")?;
            (
                RdsResource::Instance(id),
                required(fields, "DBInstanceStatus", "DB instance")?,
                fields
                    .get("Endpoint.Address")
                    .map(|h| format!("{h}:{}", fields.get("Endpoint.Port").map_or("", |p| p))),
            )
        };
        Ok(DbServer {
            resource,
            status,
            engine: fields.get("Engine").cloned().unwrap_or_default(),
            engine_version: fields.get("EngineVersion").cloned(),
            allocated_storage_gib: fields.get("AllocatedStorage").and_then(|v| v.parse().ok()),
            endpoint,
        })
    }
}

/// One copy of a snapshot in one region, as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCopy {
    /// Its region.
    pub region: String,
    /// Its identifier there.
    pub id: String,
    /// Its ARN.
    pub arn: String,
    /// Its status when last seen.
    pub status: String,
    /// The KMS key that encrypts it, if any.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Whether resilience made it (a manual snapshot or a copy), and so deletes it when its
    /// backup expires. Automated snapshots are AWS' to expire (they cannot be deleted).
    pub owned: bool,
}

/// What the catalog records about an RDS snapshot: the `source_metadata` of its backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdsSnapshotRecord {
    /// The instance or cluster snapshotted.
    pub resource: RdsResource,
    /// The snapshot in the resource's region.
    pub snapshot: SnapshotCopy,
    /// Its copy in another region, if one was asked for (its status says whether it was made).
    #[serde(default)]
    pub copy: Option<SnapshotCopy>,
    /// `manual` or `automated`.
    pub snapshot_type: String,
    /// The engine.
    pub engine: String,
    /// The engine's version.
    #[serde(default)]
    pub engine_version: Option<String>,
    /// Allocated storage, GiB.
    #[serde(default)]
    pub allocated_storage_gib: Option<u64>,
    /// When AWS took the snapshot.
    #[serde(default)]
    pub snapshot_created_at: Option<DateTime<Utc>>,
    /// When the snapshots resilience owns were deleted from AWS, after the backup expired.
    #[serde(default)]
    pub aws_deleted_at: Option<DateTime<Utc>>,
}

/// The key under which [`RdsSnapshotRecord`] sits in `source_metadata`.
pub const METADATA_KEY: &str = "rds";

impl RdsSnapshotRecord {
    /// As a backup's `source_metadata` (under [`METADATA_KEY`], with the ARNs also at the top
    /// level for people reading the catalog).
    pub fn to_metadata(&self) -> SourceMetadata {
        let mut m = SourceMetadata::new();
        m.insert(
            METADATA_KEY.into(),
            serde_json::to_value(self).expect("serializes"),
        );
        m.insert("snapshot_arn".into(), self.snapshot.arn.clone().into());
        if let Some(copy) = &self.copy {
            m.insert("copy_arn".into(), copy.arn.clone().into());
        }
        m
    }

    /// From a backup's `source_metadata`; `None` when it has no RDS record.
    pub fn from_metadata(m: &SourceMetadata) -> Result<Option<Self>, String> {
        m.get(METADATA_KEY)
            .map(|v| serde_json::from_value(v.clone()).map_err(|e| e.to_string()))
            .transpose()
    }

    /// The copies resilience owns and that are not deleted yet.
    pub fn owned_copies(&self) -> impl Iterator<Item = &SnapshotCopy> {
        std::iter::once(&self.snapshot)
            .chain(self.copy.as_ref())
            .filter(|c| c.owned && !c.arn.is_empty() && self.aws_deleted_at.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An RDS answer's element, written the way RDS writes it.
    fn snapshot_xml(s: &DbSnapshot, cluster: bool) -> String {
        let esc = |t: &str| quick_xml::escape::escape(t).into_owned();
        let (el, id, arn, of, enc) = if cluster {
            (
                "DBClusterSnapshot",
                "DBClusterSnapshotIdentifier",
                "DBClusterSnapshotArn",
                "DBClusterIdentifier",
                "StorageEncrypted",
            )
        } else {
            (
                "DBSnapshot",
                "DBSnapshotIdentifier",
                "DBSnapshotArn",
                "DBInstanceIdentifier",
                "Encrypted",
            )
        };
        let mut x = format!(
            "<{el}><{id}>{}</{id}><{of}>{}</{of}><Status>{}</Status><SnapshotType>{}</SnapshotType>\
             <Engine>{}</Engine><{arn}>{}</{arn}><{enc}>{}</{enc}><TagList/>",
            esc(&s.identifier),
            esc(s.resource.id()),
            esc(&s.status),
            esc(&s.snapshot_type),
            esc(&s.engine),
            esc(&s.arn),
            s.encrypted
        );
        if let Some(v) = &s.engine_version {
            x += &format!("<EngineVersion>{}</EngineVersion>", esc(v));
        }
        if let Some(g) = s.allocated_storage_gib {
            x += &format!("<AllocatedStorage>{g}</AllocatedStorage>");
        }
        if let Some(t) = s.created_at {
            x += &format!(
                "<SnapshotCreateTime>{}</SnapshotCreateTime>",
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
        if let Some(k) = &s.kms_key_id {
            x += &format!("<KmsKeyId>{}</KmsKeyId>", esc(k));
        }
        x + &format!("</{el}>")
    }

    fn text() -> impl Strategy<Value = String> {
        // Anything XML 1.0 can carry, markup characters included, around printable text.
        "[a-zA-Z0-9:/<>&\"' ._-]{1,24}"
    }

    prop_compose! {
        fn snapshot()(cluster in any::<bool>(), identifier in text(), arn in text(), of in text(),
                      status in text(), snapshot_type in text(), engine in text(),
                      engine_version in proptest::option::of(text()),
                      allocated_storage_gib in proptest::option::of(any::<u64>()),
                      micros in proptest::option::of(0i64..4_000_000_000_000_000),
                      encrypted in any::<bool>(), kms_key_id in proptest::option::of(text()))
                      -> (DbSnapshot, bool) {
            let resource = if cluster { RdsResource::Cluster(of) } else { RdsResource::Instance(of) };
            (DbSnapshot {
                identifier, arn, resource, status, snapshot_type, engine, engine_version,
                allocated_storage_gib,
                created_at: micros.map(|m| DateTime::from_timestamp_micros(m).unwrap()),
                encrypted, kms_key_id,
            }, cluster)
        }
    }

    proptest! {
        /// Any snapshot RDS could describe reads back as it was written, in a list of several.
        #[test]
        fn snapshot_answers_read_back(list in proptest::collection::vec(snapshot(), 1..4)) {
            let cluster = list[0].1;
            let list: Vec<DbSnapshot> = list.into_iter().map(|(mut s, _)| {
                s.resource = if cluster { RdsResource::Cluster(s.resource.id().into()) }
                    else { RdsResource::Instance(s.resource.id().into()) };
                s
            }).collect();
            let el = if cluster { "DBClusterSnapshot" } else { "DBSnapshot" };
            let body: String = list.iter().map(|s| snapshot_xml(s, cluster)).collect();
            let xml = format!(
                "<DescribeResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\"><Result><List>{body}</List></Result></DescribeResponse>"
            );
            let read: Vec<DbSnapshot> = super::super::xml::records(xml.as_bytes(), el)
                .unwrap()
                .iter()
                .map(|f| DbSnapshot::from_fields(f, cluster).unwrap())
                .collect();
            prop_assert_eq!(read, list);
        }

        /// Any RDS record survives the catalog's metadata (JSON) unchanged.
        #[test]
        fn catalog_metadata_round_trips(
            (s, _) in snapshot(), copy in proptest::option::of((text(), text(), any::<bool>())),
            owned in any::<bool>(), deleted in proptest::option::of(0i64..4_000_000_000_000_000),
        ) {
            let record = RdsSnapshotRecord {
                resource: s.resource.clone(),
                snapshot: SnapshotCopy {
                    region: "us-east-1".into(), id: s.identifier.clone(), arn: s.arn.clone(),
                    status: s.status.clone(), kms_key_id: s.kms_key_id.clone(), owned,
                },
                copy: copy.map(|(region, arn, owned)| SnapshotCopy {
                    region, id: s.identifier.clone(), arn, status: "available".into(),
                    kms_key_id: None, owned,
                }),
                snapshot_type: s.snapshot_type.clone(),
                engine: s.engine.clone(),
                engine_version: s.engine_version.clone(),
                allocated_storage_gib: s.allocated_storage_gib,
                snapshot_created_at: s.created_at,
                aws_deleted_at: deleted.map(|m| DateTime::from_timestamp_micros(m).unwrap()),
            };
            let json = serde_json::to_string(&record.to_metadata()).unwrap();
            let back: SourceMetadata = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(RdsSnapshotRecord::from_metadata(&back).unwrap(), Some(record));
        }
    }
}
