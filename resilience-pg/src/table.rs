//! Logical, table-level backup and restore: bring back one table, or one tenant's rows, without
//! a full recovery.
//!
//! A backup opens a `REPEATABLE READ` transaction and exports its snapshot; each table is an
//! entry `<schema>/<table>` whose content is `COPY … TO STDOUT` (text format) read on its own
//! connection inside that same snapshot, so every table is consistent with every other and
//! tables stream without holding one in memory. The column definitions and primary key travel
//! as the entry's attributes. A restore creates the table where it is missing (in the same or
//! another schema) and copies the rows in, in one transaction per table, optionally keeping only
//! rows that match a condition.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};
use resilience_core::source::entry::{EntryKind, EntryMeta, UNKNOWN_SIZE};
use resilience_core::source::{
    AdapterError, ContentCheck, ContentWriter, EntryReader, Source, SourceDescriptor, SourceEntry,
    SourceMetadata, SourceSession, Target,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, CopyInSink};

use crate::base::connect;
use crate::error::describe;

/// A column as the backup saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type, as `format_type` spells it (`numeric(12,2)`, `text[]`).
    pub data_type: String,
    /// `NOT NULL`.
    pub not_null: bool,
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a literal for SQL.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether `schema.table` matches a pattern: `schema.table`, `schema.*`, `*.table`, or a bare
/// table name (any schema).
pub fn matches(pattern: &str, schema: &str, table: &str) -> bool {
    let glob = |p: &str, v: &str| p == "*" || p == v;
    match pattern.split_once('.') {
        Some((s, t)) => glob(s, schema) && glob(t, table),
        None => glob(pattern, table),
    }
}

/// Backs up selected tables of one database.
#[derive(Clone, Debug)]
pub struct PgTableSource {
    dsn: crate::connect::Dsn,
    patterns: Vec<String>,
    id: String,
}

impl PgTableSource {
    /// The tables matching `patterns` (see [`matches`](fn@matches)) in the database `dsn` connects to.
    pub fn new(dsn: impl Into<String>, patterns: Vec<String>) -> Self {
        PgTableSource {
            dsn: crate::connect::Dsn::new(dsn),
            patterns,
            id: "postgres-tables".into(),
        }
    }

    /// Names the source (default `postgres-tables`).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

fn query_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> AdapterError {
    move |e| AdapterError::msg("query", what, describe(&e))
}

fn restore_err(table: &str) -> impl Fn(tokio_postgres::Error) -> AdapterError + '_ {
    move |e| AdapterError::msg("restore", table, describe(&e))
}

#[async_trait]
impl Source for PgTableSource {
    fn descriptor(&self) -> SourceDescriptor {
        SourceDescriptor {
            id: self.id.clone(),
            kind: "postgres-tables".into(),
        }
    }

    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        let client = connect(&self.dsn)
            .await
            .map_err(|e| AdapterError::new("connect", "postgres", e))?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(query_err("BEGIN".into()))?;
        let row = client
            .query_one(
                "SELECT pg_export_snapshot(), current_database(), current_setting('server_version'), now()::text",
                &[],
            )
            .await
            .map_err(query_err("pg_export_snapshot".into()))?;
        let snapshot: String = row.get(0);
        let mut meta = SourceMetadata::new();
        meta.insert("database".into(), row.get::<_, String>(1).into());
        meta.insert("pg_version".into(), row.get::<_, String>(2).into());
        meta.insert("snapshot_time".into(), row.get::<_, String>(3).into());
        let rows = client
            .query(
                "SELECT c.oid, n.nspname, c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' \
                 ORDER BY n.nspname, c.relname",
                &[],
            )
            .await
            .map_err(query_err("pg_class".into()))?;
        let mut tables = VecDeque::new();
        for row in rows {
            let (oid, schema, table): (u32, String, String) = (row.get(0), row.get(1), row.get(2));
            if self.patterns.iter().any(|p| matches(p, &schema, &table)) {
                tables.push_back((oid, schema, table));
            }
        }
        if tables.is_empty() {
            return Err(AdapterError::msg(
                "list",
                format!("tables {:?}", self.patterns),
                "no table matches",
            ));
        }
        let names: Vec<String> = tables.iter().map(|(_, s, t)| format!("{s}.{t}")).collect();
        meta.insert("tables".into(), serde_json::json!(names));
        Ok(Box::new(TableSession {
            client: Arc::new(client),
            dsn: Arc::from(&*self.dsn),
            snapshot: Arc::from(snapshot.as_str()),
            tables,
            meta,
        }))
    }
}

struct TableSession {
    /// The exporting transaction: each table's reader holds it open until it has imported
    /// the snapshot (the engine may read a table after the session has finished).
    client: Arc<Client>,
    dsn: Arc<str>,
    snapshot: Arc<str>,
    tables: VecDeque<(u32, String, String)>,
    meta: SourceMetadata,
}

#[async_trait]
impl SourceSession for TableSession {
    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        let Some((oid, schema, table)) = self.tables.pop_front() else {
            return Ok(None);
        };
        let shown = format!("{schema}.{table}");
        let columns: Vec<Column> = self
            .client
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull \
                 FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
                 ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(query_err(shown.clone()))?
            .iter()
            .map(|r| Column {
                name: r.get(0),
                data_type: r.get(1),
                not_null: r.get(2),
            })
            .collect();
        let primary_key: Option<String> = self
            .client
            .query_opt(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1 AND contype = 'p'",
                &[&oid],
            )
            .await
            .map_err(query_err(shown.clone()))?
            .map(|r| r.get(0));
        let column_list = columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "COPY (SELECT {column_list} FROM {}.{}) TO STDOUT",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert(
            "columns".into(),
            serde_json::to_string(&columns).expect("serializes"),
        );
        if let Some(pk) = primary_key {
            attrs.insert("primary_key".into(), pk);
        }
        let mut path = schema.as_bytes().to_vec();
        path.push(b'/');
        path.extend_from_slice(table.as_bytes());
        let meta = EntryMeta {
            mode: 0o100600,
            attrs,
            ..EntryMeta::file(path, UNKNOWN_SIZE)
        };
        let content = copy_reader(
            self.client.clone(),
            self.dsn.clone(),
            self.snapshot.clone(),
            sql,
            shown,
        );
        Ok(Some(SourceEntry {
            meta,
            content: Some(content),
        }))
    }

    /// The read-only transaction ends (rolls back) when the last reader is done with it.
    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        Ok(std::mem::take(&mut self.meta))
    }
}

/// A reader of one table's `COPY` output that connects only when first read, on its own
/// connection, inside the exported snapshot.
fn copy_reader(
    exporter: Arc<Client>,
    dsn: Arc<str>,
    snapshot: Arc<str>,
    sql: String,
    table: String,
) -> EntryReader {
    let to_io = {
        let table = table.clone();
        move |e: tokio_postgres::Error| {
            std::io::Error::other(format!("COPY of {table}: {}", describe(&e)))
        }
    };
    let open = async move {
        let client = connect(&dsn)
            .await
            .map_err(|e| std::io::Error::other(format!("COPY of {table}: {e}")))?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(&snapshot)
            ))
            .await
            .map_err(to_io.clone())?;
        drop(exporter);
        let stream = client.copy_out(&sql).await.map_err(to_io.clone())?;
        // The client lives as long as the stream, which keeps the connection open.
        Ok::<_, std::io::Error>(stream.map(move |chunk| {
            let _ = &client;
            chunk.map_err(to_io.clone())
        }))
    };
    let stream = futures::stream::once(open).try_flatten();
    Box::pin(tokio_util::io::StreamReader::new(Box::pin(stream)))
}

/// How a table restore treats rows.
#[derive(Clone, Debug, Default)]
pub struct TableRestoreOptions {
    /// Only tables matching these patterns (all when empty).
    pub tables: Vec<String>,
    /// Restore into this schema instead of the original one (created if missing).
    pub into_schema: Option<String>,
    /// Keep only rows matching this SQL condition (`tenant_id = 42`).
    pub row_filter: Option<String>,
}

/// Restores tables backed up by [`PgTableSource`] into a database.
pub struct PgTableTarget {
    dsn: crate::connect::Dsn,
    options: TableRestoreOptions,
}

impl PgTableTarget {
    /// Restores into the database `dsn` connects to.
    pub fn new(dsn: impl Into<String>, options: TableRestoreOptions) -> Self {
        PgTableTarget {
            dsn: crate::connect::Dsn::new(dsn),
            options,
        }
    }

    /// Whether a table entry is one of the tables asked for (all of them when none are named).
    fn selected(&self, schema: &str, table: &str) -> bool {
        self.options.tables.is_empty()
            || self
                .options
                .tables
                .iter()
                .any(|p| matches(p, schema, table))
    }
}

#[async_trait]
impl Target for PgTableTarget {
    /// Tables not asked for are declined, so their rows are never read from the repository.
    async fn wants(&self, meta: &EntryMeta, _: &ContentCheck<'_>) -> Result<bool, AdapterError> {
        let path = String::from_utf8_lossy(meta.path.as_bytes());
        Ok(match path.split_once('/') {
            Some((schema, table)) if meta.kind == EntryKind::File => self.selected(schema, table),
            _ => true,
        })
    }

    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        let path = String::from_utf8_lossy(meta.path.as_bytes()).into_owned();
        let Some((schema, table)) = path.split_once('/') else {
            return Ok(None);
        };
        if meta.kind != EntryKind::File {
            return Ok(None);
        }
        let columns: Vec<Column> = meta
            .attrs
            .get("columns")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| {
                AdapterError::msg("restore", path.clone(), "not a table backup (no columns)")
            })?;
        let target_schema = self.options.into_schema.as_deref().unwrap_or(schema);
        let qualified = format!("{}.{}", quote_ident(target_schema), quote_ident(table));
        let shown = format!("{target_schema}.{table}");
        let err = restore_err(&shown);
        let client = connect(&self.dsn)
            .await
            .map_err(|e| AdapterError::msg("restore", &shown, e.to_string()))?;
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .await
            .map_err(&err)?
            .get(0);
        let mut setup = format!(
            "BEGIN; CREATE SCHEMA IF NOT EXISTS {};",
            quote_ident(target_schema)
        );
        if !exists {
            let mut defs: Vec<String> = columns
                .iter()
                .map(|c| {
                    format!(
                        "{} {}{}",
                        quote_ident(&c.name),
                        c.data_type,
                        if c.not_null { " NOT NULL" } else { "" }
                    )
                })
                .collect();
            if let Some(pk) = meta.attrs.get("primary_key") {
                defs.push(pk.clone());
            }
            setup.push_str(&format!("CREATE TABLE {qualified} ({});", defs.join(", ")));
        }
        let column_list = columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let copy_into = match &self.options.row_filter {
            Some(_) => {
                setup.push_str(&format!(
                    "CREATE TEMP TABLE resilience_rows ON COMMIT DROP AS SELECT {column_list} FROM {qualified} WITH NO DATA;"
                ));
                "resilience_rows".to_owned()
            }
            None => qualified.clone(),
        };
        client.batch_execute(&setup).await.map_err(&err)?;
        let sink = client
            .copy_in(&format!("COPY {copy_into} ({column_list}) FROM STDIN"))
            .await
            .map_err(&err)?;
        let finish_sql = self.options.row_filter.as_ref().map(|cond| {
            format!(
                "INSERT INTO {qualified} ({column_list}) SELECT {column_list} FROM resilience_rows WHERE {cond}"
            )
        });
        Ok(Some(Box::new(CopyWriter {
            client,
            sink: Box::pin(sink),
            finish_sql,
            table: shown.clone(),
        })))
    }

    async fn apply_metadata(&self, _meta: &EntryMeta) -> Result<(), AdapterError> {
        Ok(())
    }

    async fn finish(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

struct CopyWriter {
    client: Client,
    sink: std::pin::Pin<Box<CopyInSink<Bytes>>>,
    finish_sql: Option<String>,
    table: String,
}

#[async_trait]
impl ContentWriter for CopyWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError> {
        self.sink.send(data).await.map_err(restore_err(&self.table))
    }

    async fn complete(mut self: Box<Self>) -> Result<(), AdapterError> {
        let table = self.table.clone();
        let err = restore_err(&table);
        self.sink.as_mut().finish().await.map_err(&err)?;
        if let Some(sql) = &self.finish_sql {
            self.client.batch_execute(sql).await.map_err(&err)?;
        }
        self.client.batch_execute("COMMIT").await.map_err(&err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns() {
        assert!(matches("public.orders", "public", "orders"));
        assert!(matches("public.*", "public", "orders"));
        assert!(matches("*.orders", "billing", "orders"));
        assert!(matches("orders", "billing", "orders"));
        assert!(!matches("public.orders", "billing", "orders"));
        assert!(!matches("order", "public", "orders"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
