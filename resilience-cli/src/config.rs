//! The daemon's configuration file (TOML): the repository, the HTTP server, the sources with
//! their schedules and promises, and the other jobs (verify, prune, replicate, drill).
//!
//! ```toml
//! [repository]
//! url = "/var/backups/repo"          # or s3://bucket/prefix?endpoint=…&region=…
//! password_file = "/etc/resilience/pass"
//! [server]
//! listen = "127.0.0.1:9187"
//! [[source]]
//! name = "docs"
//! kind = "dir"                       # dir | postgres | redis | bucket | rds
//! path = "/srv/docs"
//! schedule = "*/5 * * * * *"         # cron with seconds
//! timezone = "UTC"
//! window = "00:00-23:59"
//! rpo = "1h"
//! retention = { keep_last = 7 }
//! ```
//!
//! Secrets never live in the file itself: the passphrase comes from `password_file` (or the
//! `RESILIENCE_PASSWORD` variable), and DSNs and URLs may name their passwords through the
//! stores' usual mechanisms (`.pgpass`, `PGPASSWORD`).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::Duration;
use resilience_core::error::error_chain;
use resilience_core::retention::{KeepRules, RetentionDuration};
use resilience_core::time::schedule::{JobSchedule, MissedRuns, Window};
use serde::Deserialize;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where the backups go.
    pub repository: RepositoryConfig,
    /// The metrics and health endpoint.
    #[serde(default)]
    pub server: ServerConfig,
    /// What is backed up (`[[source]]`).
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Other scheduled jobs (`[[job]]`).
    #[serde(default, rename = "job")]
    pub jobs: Vec<JobConfig>,
    /// Warm standbys whose replay lag `/metrics` shows (`[[standby]]`).
    #[serde(default, rename = "standby")]
    pub standbys: Vec<StandbyConfig>,
    /// The regions `resilience failover --to NAME` can move the service to (`[[region]]`).
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionConfig>,
}

/// `[[region]]`: what a failover to this region brings up, and how to fence it when it is the
/// old one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Its name (`failover --to NAME`).
    pub name: String,
    /// Its repository (the replica `replicate --follow` keeps), opened with `[repository]`'s
    /// key; failovers to it are journaled there.
    pub repository: String,
    /// Its Postgres.
    #[serde(default)]
    pub postgres: Option<RegionPostgres>,
    /// Its Redis, restored from the newest backup of `source` in its repository.
    #[serde(default)]
    pub redis: Option<RegionRedis>,
    /// Its cluster, for the traffic switch.
    #[serde(default)]
    pub kubernetes: Option<RegionKubernetes>,
}

/// `[region.postgres]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPostgres {
    /// The standby's data directory on this host (made by `pg standby`); without a cluster
    /// there, the newest base backup is restored into it and recovered to the end of the WAL.
    pub pgdata: PathBuf,
    /// Its port.
    pub port: u16,
    /// The WAL archive and source name (default `postgres`).
    #[serde(default)]
    pub source: Option<String>,
    /// The user to connect as (default: the data directory's owner).
    #[serde(default)]
    pub user: Option<String>,
    /// How to reach this region's Postgres from elsewhere, to fence it when a failover moves
    /// away from this region (a superuser; give `connect_timeout`).
    #[serde(default)]
    pub dsn: Option<String>,
    /// Directory of pg_ctl.
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
    /// Queries run on the new primary after the failover; each must return a row.
    #[serde(default)]
    pub checks: Vec<RegionCheck>,
    /// Seconds the promotion (or recovery) may take (default 600).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// A named check query.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionCheck {
    /// Its name, in the report.
    pub name: String,
    /// The SQL.
    pub sql: String,
}

/// `[region.redis]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionRedis {
    /// This region's server (`redis://host:port`).
    pub url: String,
    /// The source whose newest backup is restored into it.
    pub source: String,
}

/// `[region.kubernetes]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionKubernetes {
    /// The kubeconfig context of this region's cluster.
    pub context: String,
    /// The service's namespace.
    pub namespace: String,
    /// The Service pointed at the region after a failover to it.
    pub service: String,
    /// The writer Deployment (default: the service's name).
    #[serde(default)]
    pub deployment: Option<String>,
    /// Its replicas after a failover to this region (default 1).
    #[serde(default)]
    pub replicas: Option<i32>,
    /// The kubeconfig (default: `KUBECONFIG`, else `~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

/// `[[standby]]`: a warm standby (made by `resilience pg standby`) watched for
/// `resilience_standby_replay_lag_seconds`, `resilience_standby_in_recovery` and
/// `resilience_standby_up`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    /// Its name, the metrics' `standby` label.
    pub name: String,
    /// Connection to it (`host=… port=… user=…` or a `postgres://` URL).
    pub dsn: String,
    /// How often it is asked (default `5s`).
    #[serde(default)]
    pub every: Option<RetentionDuration>,
}

/// `[repository]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// The repository URL or path.
    pub url: String,
    /// File holding the passphrase (else `RESILIENCE_PASSWORD`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Key file (64 hex digits), instead of a passphrase.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// AWS KMS key id or ARN that unwraps a key copy (credentials from the usual AWS variables).
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Vault transit key that unwraps a key copy (`VAULT_ADDR`, `VAULT_TOKEN` or AppRole).
    #[serde(default)]
    pub vault_transit_key: Option<String>,
    /// The cold tier, for retention's lifecycle moves.
    #[serde(default)]
    pub cold_url: Option<String>,
    /// Refuse deletes and overwrites from this host (prune then runs elsewhere).
    #[serde(default)]
    pub append_only: bool,
}

impl RepositoryConfig {
    /// The options that open this repository, as the command line's flags would.
    pub fn options(&self) -> resilience_objstore::RepositoryOptions {
        resilience_objstore::RepositoryOptions {
            location: self.url.clone(),
            key: resilience_objstore::KeyOptions {
                password_file: self.password_file.clone(),
                key_file: self.key_file.clone(),
                kms_key_id: self.kms_key_id.clone(),
                vault_transit_key: self.vault_transit_key.clone(),
            },
            cold: self.cold_url.clone(),
            append_only: self.append_only,
            max_rate: None,
        }
    }
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of `/metrics` and `/health` (a loopback address unless `allow_remote`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve on a non-loopback address (behind your own authentication).
    #[serde(default)]
    pub allow_remote: bool,
    /// URL that receives a JSON POST on a failure, an RPO breach and a recovery.
    #[serde(default)]
    pub webhook: Option<String>,
    /// The shape of what is posted to `webhook`: the events themselves, or alerts as
    /// Alertmanager's `POST /api/v2/alerts` takes them (point `webhook` there).
    #[serde(default)]
    pub webhook_format: WebhookFormat,
}

/// The shape of webhook posts.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// One event per post: `{event, source | job, at, detail}`.
    #[default]
    Events,
    /// An array of one Alertmanager alert per post.
    Alertmanager,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            allow_remote: false,
            webhook: None,
            webhook_format: WebhookFormat::Events,
        }
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:9187".parse().expect("a valid address")
}

/// The kind of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A directory (`path`).
    Dir,
    /// A Postgres cluster (`pgdata` and `dsn`): base backups.
    Postgres,
    /// A Redis server or cluster (`url`).
    Redis,
    /// A bucket or prefix (`url`).
    Bucket,
    /// An AWS RDS instance (`instance`) or Aurora cluster (`db_cluster`): snapshots.
    Rds,
}

impl SourceKind {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Dir => "dir",
            SourceKind::Postgres => "postgres",
            SourceKind::Redis => "redis",
            SourceKind::Bucket => "bucket",
            SourceKind::Rds => "rds",
        }
    }
}

/// When a job runs: the keys every `[[source]]` and `[[job]]` share (serde's `flatten` would
/// lose `deny_unknown_fields`, so both carry the keys and lend them out as a `Timing`).
#[derive(Clone, Copy, Debug)]
pub struct Timing<'a> {
    /// Cron expression with a seconds field.
    pub schedule: &'a str,
    /// IANA time zone.
    pub timezone: &'a str,
    /// Daily start window.
    pub window: Option<&'a str>,
    /// Jitter.
    pub jitter: Option<RetentionDuration>,
    /// Missed-run policy.
    pub missed: MissedRuns,
}

fn default_timezone() -> String {
    "UTC".into()
}

impl Timing<'_> {
    /// The schedule of job `name`.
    pub fn job_schedule(&self, name: &str) -> Result<JobSchedule, String> {
        let mut s = JobSchedule::new(name, self.schedule, self.timezone)
            .map_err(|e| error_chain(&e))?
            .with_missed(self.missed)
            .with_jitter(self.jitter.map_or(Duration::zero(), |j| j.to_chrono()));
        if let Some(w) = self.window {
            s = s.with_window(
                w.parse::<Window>()
                    .map_err(|e| format!("job {name}: {e}"))?,
            );
        }
        Ok(s)
    }
}

/// `[[source]]`: one thing to back up, its backup job, and its promises.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The source id in the catalog (and the backup job's name).
    pub name: String,
    /// What it is.
    pub kind: SourceKind,
    /// `dir`: the directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `postgres`: the data directory.
    #[serde(default)]
    pub pgdata: Option<PathBuf>,
    /// `postgres`: the connection string.
    #[serde(default)]
    pub dsn: Option<String>,
    /// `redis`: `redis://…`; `bucket`: `s3://…`, `gs://…`, `az://…`, `file://…`.
    #[serde(default)]
    pub url: Option<String>,
    /// `redis`: the URL names a cluster node.
    #[serde(default)]
    pub cluster: bool,
    /// `rds`: the DB instance snapshotted.
    #[serde(default)]
    pub instance: Option<String>,
    /// `rds`: the Aurora (or Multi-AZ) DB cluster snapshotted, instead of an instance.
    #[serde(default)]
    pub db_cluster: Option<String>,
    /// `rds`: its region (default: `RESILIENCE_RDS_REGION`, `AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// `rds`: record the newest automated snapshot instead of taking a manual one.
    #[serde(default)]
    pub automated: bool,
    /// `rds`: copy each snapshot to this region.
    #[serde(default)]
    pub copy_to_region: Option<String>,
    /// `rds`: the KMS key of `copy_to_region` that encrypts the copies.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Cron expression with a seconds field (`sec min hour day month weekday`).
    pub schedule: String,
    /// IANA time zone of the schedule and window.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Daily window in which runs may start (`HH:MM-HH:MM`); a run still going at its end is
    /// stopped (and a backup recorded failed).
    #[serde(default)]
    pub window: Option<String>,
    /// Random delay of up to this much after each scheduled time (`30s`, `5m`).
    #[serde(default)]
    pub jitter: Option<RetentionDuration>,
    /// What to do about runs missed while the daemon was down: `run_once` (default) or `skip`.
    #[serde(default)]
    pub missed: MissedRuns,
    /// Recovery point objective: the oldest its newest backup may be before `/health` fails.
    pub rpo: RetentionDuration,
    /// Retention rules (the `forget` policy keys), applied by `prune` jobs.
    #[serde(default)]
    pub retention: Option<KeepRules>,
    /// Limit its backups' repository writes (and reads) to this many bytes per second.
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// Labels recorded with each backup.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How its drills check a restored copy.
    #[serde(default)]
    pub drill: DrillConfig,
}

/// How a drill compares a query's result on the restored copy with the figure taken at backup
/// time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// The same text.
    #[default]
    Equal,
    /// A number at least as large (tables that only grow, restored to a later point).
    AtLeast,
}

/// One SQL check of a Postgres drill.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryCheck {
    /// The check's name (in reports and in the backup's labels, `drill.query.<name>`).
    pub name: String,
    /// A query returning one value (e.g. `select count(*) from jobs`).
    pub sql: String,
    /// How to compare.
    #[serde(default)]
    pub compare: Compare,
}

/// `[source.drill]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// `postgres`: queries run at backup time and again on the restored copy.
    #[serde(default)]
    pub queries: Vec<QueryCheck>,
    /// `redis`: compare every Nth key's payload (1 = every key; default 1).
    #[serde(default)]
    pub sample_every: Option<u64>,
    /// Where scratch copies go (default: the system's temporary directory).
    #[serde(default)]
    pub scratch_dir: Option<PathBuf>,
    /// `rds`: restore the copy in this region (default: the snapshot in its own region).
    #[serde(default)]
    pub region: Option<String>,
    /// `rds`: seconds between two status polls while the scratch instance comes up
    /// (default 15).
    #[serde(default)]
    pub poll_seconds: Option<u64>,
}

/// The kind of a `[[job]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// `verify` (quick, or `full = true`), recorded in the catalog.
    Verify,
    /// Apply every source's retention, then prune.
    Prune,
    /// Replicate the repository to `to`.
    Replicate,
    /// Drill `source` (or every source).
    Drill,
    /// A failover drill to `region`: its sources restored from its repository into scratch
    /// copies and checked, its Kubernetes objects read; production untouched.
    Failover,
}

/// `[[job]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Its name (default: the kind, with the source or target).
    #[serde(default)]
    pub name: Option<String>,
    /// What it does.
    pub kind: JobKind,
    /// Cron expression with a seconds field (`sec min hour day month weekday`).
    pub schedule: String,
    /// IANA time zone of the schedule and window.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Daily window in which runs may start (`HH:MM-HH:MM`); a run still going at its end is
    /// stopped (and a backup recorded failed).
    #[serde(default)]
    pub window: Option<String>,
    /// Random delay of up to this much after each scheduled time (`30s`, `5m`).
    #[serde(default)]
    pub jitter: Option<RetentionDuration>,
    /// What to do about runs missed while the daemon was down: `run_once` (default) or `skip`.
    #[serde(default)]
    pub missed: MissedRuns,
    /// `drill`: the source (default: every source).
    #[serde(default)]
    pub source: Option<String>,
    /// `replicate`: the replica's URL.
    #[serde(default)]
    pub to: Option<String>,
    /// `failover`: the `[[region]]` drilled.
    #[serde(default)]
    pub region: Option<String>,
    /// `verify`: decrypt and re-hash every blob.
    #[serde(default)]
    pub full: bool,
    /// `replicate`: bytes per second.
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// `replicate`: follow the repository (a pass every `interval`, WAL first) instead of
    /// copying once per scheduled run; the schedule then only restarts a follower that stopped
    /// (a window's end, an error).
    #[serde(default)]
    pub follow: bool,
    /// `replicate` with `follow`: from the start of one pass to the next (default `2s`).
    #[serde(default)]
    pub interval: Option<RetentionDuration>,
}

impl SourceConfig {
    /// When it runs.
    pub fn timing(&self) -> Timing<'_> {
        Timing {
            schedule: &self.schedule,
            timezone: &self.timezone,
            window: self.window.as_deref(),
            jitter: self.jitter,
            missed: self.missed,
        }
    }
}

impl JobConfig {
    /// When it runs.
    pub fn timing(&self) -> Timing<'_> {
        Timing {
            schedule: &self.schedule,
            timezone: &self.timezone,
            window: self.window.as_deref(),
            jitter: self.jitter,
            missed: self.missed,
        }
    }

    /// The job's name.
    pub fn job_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let kind = match self.kind {
            JobKind::Verify => "verify",
            JobKind::Prune => "prune",
            JobKind::Replicate => "replicate",
            JobKind::Drill => "drill",
            JobKind::Failover => "failover-drill",
        };
        if let Some(r) = &self.region {
            return format!("{kind}:{r}");
        }
        match (&self.source, &self.to) {
            (Some(s), _) => format!("{kind}:{s}"),
            (None, Some(t)) => format!("{kind}:{t}"),
            _ => kind.to_owned(),
        }
    }
}

impl DaemonConfig {
    /// Reads and checks a file; errors name the file and what is wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and checks a document.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: DaemonConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Result<&SourceConfig, String> {
        self.sources.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<_> = self.sources.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no source named {name:?} in the config (sources: {})",
                names.join(", ")
            )
        })
    }

    fn validate(&self) -> Result<(), String> {
        if !self.server.allow_remote && !self.server.listen.ip().is_loopback() {
            return Err(format!(
                "server.listen {} is not a loopback address: /metrics and /health have no \
                 authentication; set server.allow_remote = true to serve there anyway",
                self.server.listen
            ));
        }
        let mut names = HashSet::new();
        for s in &self.sources {
            if s.name.is_empty() || !names.insert(s.name.clone()) {
                return Err(format!("source name {:?} is empty or used twice", s.name));
            }
            let need = |key: &str, present: bool| {
                if present {
                    Ok(())
                } else {
                    Err(format!(
                        "source {}: kind {} needs `{key}`",
                        s.name,
                        s.kind.as_str()
                    ))
                }
            };
            match s.kind {
                SourceKind::Dir => need("path", s.path.is_some())?,
                SourceKind::Postgres => {
                    need("pgdata", s.pgdata.is_some())?;
                    need("dsn", s.dsn.is_some())?;
                }
                SourceKind::Redis | SourceKind::Bucket => need("url", s.url.is_some())?,
                SourceKind::Rds => {
                    if s.instance.is_some() == s.db_cluster.is_some() {
                        return Err(format!(
                            "source {}: kind rds needs `instance` or `db_cluster` (one of them)",
                            s.name
                        ));
                    }
                    if s.kms_key_id.is_some() && s.copy_to_region.is_none() {
                        return Err(format!(
                            "source {}: `kms_key_id` encrypts the copy: it needs `copy_to_region`",
                            s.name
                        ));
                    }
                }
            }
            if s.kind != SourceKind::Rds
                && (s.instance.is_some()
                    || s.db_cluster.is_some()
                    || s.copy_to_region.is_some()
                    || s.kms_key_id.is_some()
                    || s.automated)
            {
                return Err(format!(
                    "source {}: `instance`, `db_cluster`, `automated`, `copy_to_region` and \
                     `kms_key_id` are for kind rds, not {}",
                    s.name,
                    s.kind.as_str()
                ));
            }
            if s.rpo.as_secs() <= 0 {
                return Err(format!("source {}: rpo must be above zero", s.name));
            }
            s.timing().job_schedule(&s.name)?;
            if s.drill.sample_every == Some(0) {
                return Err(format!(
                    "source {}: drill.sample_every must be 1 or more",
                    s.name
                ));
            }
        }
        let mut regions = HashSet::new();
        for r in &self.regions {
            if r.name.is_empty() || !regions.insert(&r.name) {
                return Err(format!("region name {:?} is empty or used twice", r.name));
            }
        }
        let mut standbys = HashSet::new();
        for s in &self.standbys {
            if s.name.is_empty() || !standbys.insert(&s.name) {
                return Err(format!("standby name {:?} is empty or used twice", s.name));
            }
            if s.every.is_some_and(|e| e.as_secs() <= 0) {
                return Err(format!("standby {}: every must be at least 1s", s.name));
            }
        }
        for j in &self.jobs {
            let name = j.job_name();
            if !names.insert(name.clone()) {
                return Err(format!(
                    "job name {name:?} is used twice (give the job a `name`)"
                ));
            }
            j.timing().job_schedule(&name)?;
            if let Some(s) = &j.source {
                self.source(s).map_err(|e| format!("job {name}: {e}"))?;
            }
            if j.kind == JobKind::Replicate && j.to.is_none() {
                return Err(format!("job {name}: kind replicate needs `to`"));
            }
            match (&j.region, j.kind) {
                (None, JobKind::Failover) => {
                    return Err(format!("job {name}: kind failover needs `region`"))
                }
                (Some(r), JobKind::Failover) => {
                    if !self.regions.iter().any(|x| &x.name == r) {
                        return Err(format!("job {name}: no [[region]] named {r:?}"));
                    }
                }
                (Some(_), _) => return Err(format!("job {name}: `region` is for kind failover")),
                (None, _) => {}
            }
            if (j.follow || j.interval.is_some()) && j.kind != JobKind::Replicate {
                return Err(format!(
                    "job {name}: `follow` and `interval` are for kind replicate"
                ));
            }
            if j.interval.is_some_and(|i| i.as_secs() <= 0) {
                return Err(format!("job {name}: interval must be at least 1s"));
            }
            if j.interval.is_some() && !j.follow {
                return Err(format!("job {name}: `interval` needs `follow = true`"));
            }
            if j.kind == JobKind::Prune && self.repository.append_only {
                return Err(format!(
                    "job {name}: prune deletes, and repository.append_only forbids it \
                     (run prune from a maintenance host)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [repository]
        url = "/var/backups/repo"
        password_file = "/etc/resilience/pass"
        [server]
        listen = "127.0.0.1:9187"
        [[source]]
        name = "docs"
        kind = "dir"
        path = "/srv/docs"
        schedule = "*/5 * * * * *"
        timezone = "UTC"
        window = "00:00-23:59"
        rpo = "1h"
        retention = { keep_last = 7 }
        [[source]]
        name = "billing"
        kind = "postgres"
        pgdata = "/var/lib/postgresql/15/main"
        dsn = "host=127.0.0.1 user=postgres"
        schedule = "0 0 2 * * *"
        timezone = "Europe/Berlin"
        jitter = "5m"
        missed = "skip"
        rpo = "26h"
        [source.drill]
        queries = [{ name = "jobs", sql = "select count(*) from jobs", compare = "at_least" }]
        [[job]]
        kind = "verify"
        schedule = "0 0 * * * *"
        full = true
        [[job]]
        kind = "drill"
        source = "billing"
        schedule = "0 0 4 * * Sun"
        [[job]]
        kind = "replicate"
        to = "s3://backups-b/billing"
        schedule = "0 * * * * *"
        follow = true
        interval = "2s"
        [[job]]
        kind = "failover"
        region = "b"
        schedule = "0 0 5 * * Sun"
        [[standby]]
        name = "billing-b"
        dsn = "host=10.1.0.7 port=5433 user=postgres"
        [[region]]
        name = "b"
        repository = "s3://backups-b/billing?endpoint=https://s3.eu-central-1.amazonaws.com&region=eu-central-1"
        [region.postgres]
        pgdata = "/srv/pg-standby"
        port = 5433
        [region.redis]
        url = "redis://10.1.0.7:6379"
        source = "cache"
        [region.kubernetes]
        context = "cluster-b"
        namespace = "billing"
        service = "billing-db"
    "#;

    #[test]
    fn the_documented_example_parses() {
        let c = DaemonConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.sources[0].retention.as_ref().unwrap().keep_last, Some(7));
        assert_eq!(c.sources[1].missed, MissedRuns::Skip);
        assert_eq!(c.sources[1].drill.queries[0].compare, Compare::AtLeast);
        assert_eq!(c.jobs[1].job_name(), "drill:billing");
        assert!(c.jobs[2].follow);
        assert_eq!(c.standbys[0].name, "billing-b");
        assert_eq!(c.jobs[3].job_name(), "failover-drill:b");
        assert_eq!(c.regions[0].postgres.as_ref().unwrap().port, 5433);
        assert_eq!(
            c.regions[0].kubernetes.as_ref().unwrap().context,
            "cluster-b"
        );
        assert_eq!(c.jobs[2].interval.map(|i| i.as_secs()), Some(2));
        assert_eq!(c.server.listen.port(), 9187);
    }

    #[test]
    fn mistakes_are_named() {
        let bad =
            |from: &str, to: &str| DaemonConfig::parse(&EXAMPLE.replacen(from, to, 1)).unwrap_err();
        assert!(bad("path = \"/srv/docs\"", "").contains("kind dir needs `path`"));
        assert!(bad("*/5 * * * * *", "every minute").contains("cron"));
        assert!(bad("timezone = \"UTC\"", "timezone = \"Mars/Base\"").contains("time zone"));
        assert!(bad("00:00-23:59", "9-5").contains("HH:MM-HH:MM"));
        assert!(bad("127.0.0.1:9187", "0.0.0.0:9187").contains("loopback"));
        assert!(bad("rpo = \"1h\"", "rpo = \"1 hour\"").contains("rpo"));
        assert!(bad("name = \"billing\"", "name = \"docs\"").contains("used twice"));
        assert!(bad("source = \"billing\"", "source = \"nope\"").contains("no source named"));
        assert!(bad("keep_last = 7", "keep_lots = 7").contains("keep_lots"));
        assert!(bad("kind = \"dir\"", "kind = \"ftp\"").contains("ftp"));
        assert!(bad("follow = true", "").contains("`interval` needs `follow = true`"));
        assert!(bad("interval = \"2s\"", "interval = \"0s\"").contains("at least 1s"));
        assert!(bad("full = true", "full = true\nfollow = true").contains("for kind replicate"));
        assert!(bad("region = \"b\"", "region = \"z\"").contains("no [[region]] named \"z\""));
        assert!(bad("region = \"b\"", "").contains("kind failover needs `region`"));
        assert!(bad("full = true", "full = true\nregion = \"b\"").contains("for kind failover"));
    }

    const RDS: &str = r#"
        [repository]
        url = "/var/backups/repo"
        [[source]]
        name = "orders"
        kind = "rds"
        instance = "orders-db"
        region = "eu-west-1"
        copy_to_region = "eu-central-1"
        kms_key_id = "alias/backups"
        schedule = "0 0 3 * * *"
        rpo = "26h"
        retention = { keep_daily = 7 }
        [source.drill]
        region = "eu-central-1"
        poll_seconds = 30
        [[source]]
        name = "ledger"
        kind = "rds"
        db_cluster = "ledger-aurora"
        automated = true
        schedule = "0 0 4 * * *"
        rpo = "26h"
    "#;

    #[test]
    fn rds_sources_parse() {
        let c = DaemonConfig::parse(RDS).unwrap();
        let orders = c.source("orders").unwrap();
        assert_eq!(orders.kind, SourceKind::Rds);
        assert_eq!(orders.instance.as_deref(), Some("orders-db"));
        assert_eq!(orders.copy_to_region.as_deref(), Some("eu-central-1"));
        assert_eq!(orders.kms_key_id.as_deref(), Some("alias/backups"));
        assert_eq!(orders.drill.region.as_deref(), Some("eu-central-1"));
        assert_eq!(orders.drill.poll_seconds, Some(30));
        let ledger = c.source("ledger").unwrap();
        assert_eq!(ledger.db_cluster.as_deref(), Some("ledger-aurora"));
        assert!(ledger.automated);
    }

    #[test]
    fn rds_sources_are_validated() {
        let both = RDS.replace(
            "instance = \"orders-db\"",
            "instance = \"orders-db\"\n        db_cluster = \"x\"",
        );
        assert_eq!(
            DaemonConfig::parse(&both).unwrap_err(),
            "source orders: kind rds needs `instance` or `db_cluster` (one of them)"
        );
        let key_alone = RDS.replace("copy_to_region = \"eu-central-1\"", "");
        assert_eq!(
            DaemonConfig::parse(&key_alone).unwrap_err(),
            "source orders: `kms_key_id` encrypts the copy: it needs `copy_to_region`"
        );
        let on_dir = RDS.replace(
            "kind = \"rds\"\n        instance = \"orders-db\"",
            "kind = \"dir\"\n        path = \"/srv\"\n        instance = \"orders-db\"",
        );
        let err = DaemonConfig::parse(&on_dir).unwrap_err();
        assert!(err.contains("are for kind rds, not dir"), "{err}");
    }
}
