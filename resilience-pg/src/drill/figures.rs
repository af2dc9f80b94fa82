//! The figures a Postgres drill compares: queries run on the source at backup time, recorded as
//! the backup's labels ([`backup_figures`]), and run again on the restored copy ([`compare`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use resilience_core::catalog::BackupRecord;
use resilience_core::drill::DrillCheck;
use resilience_core::jobs::BackupFigures;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The label prefix of the figures a Postgres backup records for its drills
/// (`drill.query.<name>`).
pub const QUERY_LABEL: &str = "drill.query.";

/// The label prefix recording why a figure could not be taken at backup time
/// (`drill.query_error.<name>`).
pub const QUERY_ERROR_LABEL: &str = "drill.query_error.";

/// How a drill compares a query's result on the restored copy with the figure taken at backup
/// time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compare {
    /// The same text.
    #[default]
    Equal,
    /// A number at least as large (tables that only grow, restored to a later point).
    AtLeast,
}

/// One SQL check of a Postgres drill: a query returning one value, run at backup time and again
/// on the restored copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillQuery {
    /// The check's name (in reports, as `query:<name>`, and in the backup's labels).
    pub name: String,
    /// A query returning one value (`select count(*) from jobs`).
    pub sql: String,
    /// How the two results are compared.
    pub compare: Compare,
}

impl DrillQuery {
    /// A query whose result on the copy must equal the figure taken at backup time.
    pub fn equal(name: impl Into<String>, sql: impl Into<String>) -> Self {
        DrillQuery {
            name: name.into(),
            sql: sql.into(),
            compare: Compare::Equal,
        }
    }

    /// A query whose numeric result on the copy must be at least the figure taken at backup
    /// time.
    pub fn at_least(name: impl Into<String>, sql: impl Into<String>) -> Self {
        DrillQuery {
            compare: Compare::AtLeast,
            ..DrillQuery::equal(name, sql)
        }
    }

    fn label(&self) -> String {
        format!("{QUERY_LABEL}{}", self.name)
    }

    fn error_label(&self) -> String {
        format!("{QUERY_ERROR_LABEL}{}", self.name)
    }
}

/// The single value `sql` returns, as text (`NULL` for a null).
pub(super) async fn value(client: &Client, sql: &str) -> Result<String, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| crate::describe(&e))?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .ok_or_else(|| "the query returned no row".to_owned())
}

/// The figures of a Postgres drill's queries, taken on the source at each backup: hand it to
/// [`resilience_core::jobs::BackupJob::with_figures`] so the backups a service schedules carry
/// what its drills compare.
#[derive(Clone, Debug)]
pub struct QueryFigures {
    dsn: String,
    queries: Vec<DrillQuery>,
}

impl QueryFigures {
    /// Runs `queries` on the server at `dsn`.
    pub fn new(dsn: impl Into<String>, queries: Vec<DrillQuery>) -> Self {
        QueryFigures {
            dsn: dsn.into(),
            queries,
        }
    }
}

#[async_trait]
impl BackupFigures for QueryFigures {
    async fn take(&self) -> BTreeMap<String, String> {
        backup_figures(&self.dsn, &self.queries).await
    }
}

/// Runs each query on the cluster at `dsn` (connecting as [`crate::connect::connect`] does:
/// libpq's `sslmode` up to `verify-full`, client certificates) and returns the labels a backup
/// records for its drills: `drill.query.<name>` with the value.
///
/// Give them to the backup ([`resilience_core::ops::backup::BackupOptions::labels`]), taken just
/// before it starts. A query that fails does not fail the backup (a broken check must not cost a
/// backup): its error is recorded as `drill.query_error.<name>`, and the drill that finds no
/// figure fails, quoting it.
///
/// ```no_run
/// use resilience_core::ops::backup::BackupOptions;
/// use resilience_pg::{base::PgBaseSource, drill::{backup_figures, DrillQuery}};
/// # async fn demo(repo: resilience_core::repo::Repository) -> Result<(), resilience_pg::PgError> {
/// let dsn = "host=/run/postgresql user=postgres";
/// let queries = [DrillQuery::at_least("jobs", "select count(*) from jobs")];
/// let options = BackupOptions { labels: backup_figures(dsn, &queries).await, ..Default::default() };
/// repo.backup(&PgBaseSource::new("/var/lib/postgresql/15/main", dsn), options).await?;
/// # Ok(()) }
/// ```
pub async fn backup_figures(dsn: &str, queries: &[DrillQuery]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if queries.is_empty() {
        return labels;
    }
    let client = match crate::connect::connect(dsn).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect to take the drill figures");
            for q in queries {
                labels.insert(q.error_label(), format!("cannot connect: {e}"));
            }
            return labels;
        }
    };
    for q in queries {
        match value(&client, &q.sql).await {
            Ok(v) => {
                labels.insert(q.label(), v);
            }
            Err(e) => {
                tracing::warn!(query = %q.name, error = %e, "drill figure not taken");
                labels.insert(q.error_label(), e);
            }
        }
    }
    labels
}

/// The `query:<name>` check: a query's result on the copy (or why it failed) against the
/// figure `record` holds.
pub(super) fn compare(
    q: &DrillQuery,
    record: &BackupRecord,
    found: Result<String, String>,
) -> DrillCheck {
    let name = format!("query:{}", q.name);
    let Some(figure) = record.labels.get(&q.label()) else {
        let why = record
            .labels
            .get(&q.error_label())
            .map(|e| format!(": taking it failed: {e}"))
            .unwrap_or_else(|| {
                ": the backup was not made with this query configured (its figure is taken by \
                 backup_figures, as a daemon's backups do)"
                    .into()
            });
        return DrillCheck::fail(
            name,
            format!(
                "no figure for {:?} in backup {} (label {}){why}",
                q.name,
                record.id,
                q.label()
            ),
        );
    };
    let found = match found {
        Ok(v) => v,
        Err(e) => return DrillCheck::fail(name, format!("{:?} failed on the copy: {e}", q.sql)),
    };
    match q.compare {
        Compare::Equal => {
            let detail = format!("{found} on the copy, {figure} at backup time (equal expected)");
            if found == *figure {
                DrillCheck::pass(name, detail)
            } else {
                DrillCheck::fail(name, detail)
            }
        }
        Compare::AtLeast => match (found.trim().parse::<f64>(), figure.trim().parse::<f64>()) {
            (Ok(f), Ok(b)) => {
                let detail =
                    format!("{found} on the copy, {figure} at backup time (at least expected)");
                if f >= b {
                    DrillCheck::pass(name, detail)
                } else {
                    DrillCheck::fail(name, detail)
                }
            }
            _ => DrillCheck::fail(
                name,
                format!(
                    "compare = at_least needs numbers: {found:?} on the copy, {figure:?} at \
                     backup time"
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(labels: &[(&str, &str)]) -> BackupRecord {
        let mut r: BackupRecord =
            resilience_core::testing::record_at("r1", "main", chrono::Utc::now());
        r.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        r
    }

    #[test]
    fn a_figure_is_compared_as_asked_and_a_missing_one_fails_naming_why() {
        let r = record(&[
            ("drill.query.jobs", "1000"),
            ("drill.query_error.broken", "ERROR: no such table"),
        ]);
        let jobs = DrillQuery::at_least("jobs", "select count(*) from jobs");
        assert!(compare(&jobs, &r, Ok("1500".into())).ok);
        assert!(!compare(&jobs, &r, Ok("999".into())).ok);
        assert!(!compare(&jobs, &r, Ok("many".into())).ok);
        let eq = DrillQuery::equal("jobs", "select count(*) from jobs");
        assert!(!compare(&eq, &r, Ok("1500".into())).ok);
        assert!(compare(&eq, &r, Ok("1000".into())).ok);
        let failed = compare(&eq, &r, Err("ERROR: gone".into()));
        assert!(!failed.ok && failed.detail.contains("gone"), "{failed:?}");
        let broken = compare(&DrillQuery::equal("broken", "x"), &r, Ok("1".into()));
        assert!(!broken.ok && broken.detail.contains("no such table"));
        let late = compare(&DrillQuery::equal("late", "x"), &r, Ok("1".into()));
        assert!(!late.ok && late.detail.contains("no figure"), "{late:?}");
    }
}
