//! The backup catalog in a schema of a Postgres database, for compliance queries in SQL.
//!
//! The repository's own catalog stays the catalog of record (it survives with the backups when
//! the database is gone); this one is a queryable copy, filled by [`sync`] after each backup and
//! usable directly through the [`Catalog`] trait. Two tables:
//!
//! - `backups`: the current revision of each record, one column per field compliance asks
//!   about (source, kind, status, times, sizes, tier, legal hold, labels, source metadata) and
//!   the whole record as `jsonb`;
//! - `backup_revisions`: every revision ever stored, append-only, for the audit trail.

use async_trait::async_trait;
use resilience_core::catalog::{BackupRecord, Catalog, CatalogQuery};
use resilience_core::source::AdapterError;
use resilience_core::{Error, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::base::connect;
use crate::error::describe;
use crate::table::quote_ident;

/// The catalog in a Postgres schema.
pub struct PgCatalog {
    client: Client,
    schema: String,
}

fn db_err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Adapter(AdapterError::msg("catalog", what, describe(&e)))
}

impl PgCatalog {
    /// Connects and creates the schema and tables where missing.
    pub async fn connect(dsn: &str, schema: &str) -> Result<Self> {
        let client = connect(dsn)
            .await
            .map_err(|e| Error::Adapter(AdapterError::msg("catalog", "connect", e.to_string())))?;
        let s = quote_ident(schema);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.backups (
                     id text PRIMARY KEY,
                     revision integer NOT NULL,
                     source_id text NOT NULL,
                     source_kind text NOT NULL,
                     kind text NOT NULL,
                     status text NOT NULL,
                     error text,
                     started_at timestamptz NOT NULL,
                     finished_at timestamptz,
                     logical_bytes bigint NOT NULL,
                     stored_bytes bigint NOT NULL,
                     new_bytes bigint NOT NULL,
                     entries bigint NOT NULL,
                     manifest_checksum text,
                     tier text NOT NULL,
                     legal_hold boolean NOT NULL,
                     labels jsonb NOT NULL,
                     source_metadata jsonb NOT NULL,
                     verifications jsonb NOT NULL,
                     host text NOT NULL,
                     updated_at timestamptz NOT NULL,
                     record jsonb NOT NULL);
                 CREATE INDEX IF NOT EXISTS backups_by_source ON {s}.backups (source_id, started_at);
                 CREATE TABLE IF NOT EXISTS {s}.backup_revisions (
                     id text NOT NULL,
                     revision integer NOT NULL,
                     status text NOT NULL,
                     updated_at timestamptz NOT NULL,
                     record jsonb NOT NULL,
                     PRIMARY KEY (id, revision));"
            ))
            .await
            .map_err(db_err("creating the catalog tables"))?;
        Ok(PgCatalog { client, schema: s })
    }
}

/// SQL for the rank of a status `column` in the order that decides which of two revisions of
/// one number is current (`running` < `failed` < `succeeded` < `expired`).
fn status_rank(column: &str) -> String {
    format!("array_position(ARRAY['running', 'failed', 'succeeded', 'expired'], {column})")
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("serializes")
}

fn text<T: serde::Serialize>(v: &T) -> String {
    match json(v) {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

#[async_trait]
impl Catalog for PgCatalog {
    async fn put(&self, r: &BackupRecord) -> Result<()> {
        let s = &self.schema;
        let record = json(r);
        let revision = r.revision as i32;
        let status = text(&r.status);
        let kind = text(&r.kind);
        let tier = text(&r.tier);
        let (logical, stored, new, entries) = (
            r.logical_bytes as i64,
            r.stored_bytes as i64,
            r.new_bytes as i64,
            r.entries as i64,
        );
        let labels = json(&r.labels);
        let metadata = json(&r.source_metadata);
        let verifications = json(&r.verifications);
        self.client
            .execute(
                &format!(
                    "INSERT INTO {s}.backup_revisions (id, revision, status, updated_at, record)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
                ),
                &[&r.id, &revision, &status, &r.updated_at, &record],
            )
            .await
            .map_err(db_err(&r.id))?;
        let params: [&(dyn ToSql + Sync); 22] = [
            &r.id,
            &revision,
            &r.source.id,
            &r.source.kind,
            &kind,
            &status,
            &r.error,
            &r.started_at,
            &r.finished_at,
            &logical,
            &stored,
            &new,
            &entries,
            &r.manifest_checksum,
            &tier,
            &r.legal_hold,
            &labels,
            &metadata,
            &verifications,
            &r.host,
            &r.updated_at,
            &record,
        ];
        let current_rank = status_rank(&format!("{s}.backups.status"));
        let new_rank = status_rank("EXCLUDED.status");
        // Within one revision the status further along is current, whichever came first, as
        // in the repository's catalog (a backup's own success outranks a reaper's guess that
        // it died; an expiry outranks both).
        self.client
            .execute(
                &format!(
                    "INSERT INTO {s}.backups VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                         $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)
                     ON CONFLICT (id) DO UPDATE SET
                         revision = EXCLUDED.revision, status = EXCLUDED.status,
                         error = EXCLUDED.error, finished_at = EXCLUDED.finished_at,
                         logical_bytes = EXCLUDED.logical_bytes,
                         stored_bytes = EXCLUDED.stored_bytes, new_bytes = EXCLUDED.new_bytes,
                         entries = EXCLUDED.entries,
                         manifest_checksum = EXCLUDED.manifest_checksum, tier = EXCLUDED.tier,
                         legal_hold = EXCLUDED.legal_hold, labels = EXCLUDED.labels,
                         source_metadata = EXCLUDED.source_metadata,
                         verifications = EXCLUDED.verifications, host = EXCLUDED.host,
                         updated_at = EXCLUDED.updated_at, record = EXCLUDED.record
                     WHERE ({s}.backups.revision, {current_rank})
                         < (EXCLUDED.revision, {new_rank})"
                ),
                &params,
            )
            .await
            .map_err(db_err(&r.id))?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<BackupRecord>> {
        let row = self
            .client
            .query_opt(
                &format!("SELECT record FROM {}.backups WHERE id = $1", self.schema),
                &[&id],
            )
            .await
            .map_err(db_err(id))?;
        row.map(|r| decode(id, r.get(0))).transpose()
    }

    async fn list(&self, query: &CatalogQuery) -> Result<Vec<BackupRecord>> {
        let statuses: Vec<String> = query.statuses.iter().map(text).collect();
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT id, record FROM {}.backups
                     WHERE ($1::text IS NULL OR source_id = $1)
                       AND (cardinality($2::text[]) = 0 OR status = ANY($2))
                       AND ($3::timestamptz IS NULL OR started_at >= $3)
                       AND ($4::timestamptz IS NULL OR started_at < $4)
                     ORDER BY started_at, id COLLATE \"C\"",
                    self.schema
                ),
                &[&query.source, &statuses, &query.since, &query.until],
            )
            .await
            .map_err(db_err("list"))?;
        rows.into_iter()
            .map(|r| decode(r.get(0), r.get(1)))
            .collect()
    }
}

fn decode(id: &str, value: serde_json::Value) -> Result<BackupRecord> {
    serde_json::from_value(value).map_err(|e| {
        Error::Adapter(AdapterError::msg(
            "catalog",
            id,
            format!("record does not parse: {e}"),
        ))
    })
}

/// Copies every record of `from` whose revision `to` does not have yet; returns how many.
pub async fn sync(from: &dyn Catalog, to: &PgCatalog) -> Result<usize> {
    let mut copied = 0;
    for record in from.list(&CatalogQuery::default()).await? {
        // A revision of the same number with another status may be further along (`put`
        // keeps whichever is).
        let newer = match to.get(&record.id).await? {
            Some(have) => {
                have.revision < record.revision
                    || (have.revision == record.revision && have.status != record.status)
            }
            None => true,
        };
        if newer {
            to.put(&record).await?;
            copied += 1;
        }
    }
    Ok(copied)
}
