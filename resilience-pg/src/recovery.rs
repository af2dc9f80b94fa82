//! Point-in-time recovery: pick the base backup that ends before the target, make sure the
//! WAL to reach the target is archived, restore the backup, write the recovery settings, and
//! (when asked) start the cluster, wait for recovery to end and report the point reached.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use resilience_core::ops::restore::{RestoreOptions, RestoreReport};
use resilience_core::repo::Repository;
use serde::Serialize;

use crate::archive::WalArchive;
use crate::base::connect;
use crate::check::{self, BaseBackup, Timelines};
use crate::cluster;
use crate::error::PgError;
use crate::lsn::{Lsn, SegmentName};
use crate::pgdata_target::{PgDataTarget, PENDING_CONTROL};

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    /// Stop as soon as the backup is consistent (its end).
    Immediate,
    /// Stop after the last transaction that committed at or before this time.
    Time(DateTime<Utc>),
    /// Stop after this WAL position.
    Lsn(Lsn),
    /// Stop after this transaction commits (64-bit id, as `txid_current()` returns).
    Xid(u64),
    /// Stop at this named restore point.
    Name(String),
    /// Never stop: a warm standby replays all archived WAL and waits for more, following new
    /// timelines, until it is promoted ([`crate::standby`]). Written as `standby.signal`.
    Standby,
}

/// What the server does when it reaches the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetAction {
    /// End recovery and accept writes on a new timeline.
    #[default]
    Promote,
    /// Stay in recovery, paused, read-only (inspect, then promote by hand).
    Pause,
}

impl TargetAction {
    fn setting(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
        }
    }
}

/// How to recover.
#[derive(Clone)]
pub struct RecoveryOptions {
    /// Where to stop.
    pub target: RecoveryTarget,
    /// What to do there.
    pub action: TargetAction,
    /// The shell command Postgres runs to fetch WAL (`%f` and `%p` are Postgres' placeholders).
    pub restore_command: String,
    /// `recovery_target_timeline`: `latest`, `current` or a number ([`default_timeline`]).
    pub target_timeline: String,
    /// Port for the restored cluster (written to its settings).
    pub port: Option<u16>,
    /// Whether the restored cluster keeps archiving (on for a real recovery; off for a drill,
    /// so a copy never pushes WAL into the production archive).
    pub archive: bool,
    /// Restore settings (concurrency, progress).
    pub restore: RestoreOptions,
    /// Where each tablespace (by oid) goes; others go to `<pgdata>.tablespaces/<oid>`.
    pub tablespaces: HashMap<String, PathBuf>,
    /// Complete an interrupted restore into `pgdata` ([`crate::pgdata_target`]): files whose
    /// bytes already match are skipped. Without it, `pgdata` must be empty or missing.
    pub resume: bool,
    /// Replaces the backup's `archive_command` (with [`archive`](Self::archive)): a standby in
    /// another region archives into its own region's repository once promoted, not into the
    /// old primary's.
    pub archive_command: Option<String>,
}

/// A planned recovery: the backup and what it will replay.
#[derive(Clone, Debug)]
pub struct RecoveryPlan {
    /// The base backup chosen.
    pub backup: BaseBackup,
    /// The last archived segment recovery can reach from it without a gap.
    pub last_segment: Option<String>,
}

/// Picks the newest base backup that ends before `target` and checks that the WAL from its
/// start to the target (as far as it can be located) is archived without a gap.
///
/// `target_timeline` is what `recovery_target_timeline` will say: `latest`, `current` or a
/// number; the gap check follows that timeline.
pub async fn plan(
    repo: &Repository,
    wal: &WalArchive,
    target: &RecoveryTarget,
    target_timeline: &str,
) -> Result<RecoveryPlan, PgError> {
    let backups = check::base_backups(repo, wal.source()).await?;
    if backups.is_empty() {
        return Err(PgError::Invalid(format!(
            "no succeeded base backup uses WAL archive {:?}",
            wal.source()
        )));
    }
    let mut target_lsn = None;
    let fits = |b: &&BaseBackup| -> bool {
        match target {
            RecoveryTarget::Latest
            | RecoveryTarget::Standby
            | RecoveryTarget::Immediate
            | RecoveryTarget::Name(_) => true,
            RecoveryTarget::Time(t) => b.info.stop_time <= *t,
            RecoveryTarget::Lsn(l) => b.info.stop_lsn <= *l,
            RecoveryTarget::Xid(x) => b.info.xid_ends_after(*x),
        }
    };
    let chosen = match target {
        RecoveryTarget::Name(name) => {
            let points = wal.restore_points().await?;
            match points.iter().find(|p| p.name == *name) {
                Some(p) => {
                    target_lsn = Some(p.lsn);
                    backups.iter().rev().find(|b| b.info.stop_lsn <= p.lsn)
                }
                None => {
                    tracing::warn!(name, "restore point not found in the archived WAL; recovering from the newest backup");
                    backups.last()
                }
            }
        }
        RecoveryTarget::Lsn(l) => {
            target_lsn = Some(*l);
            backups.iter().rev().find(fits)
        }
        _ => backups.iter().rev().find(fits),
    };
    let Some(backup) = chosen.cloned() else {
        let oldest = &backups[0];
        return Err(PgError::Invalid(format!(
            "no base backup ends before the target {target:?}: the oldest, {}, ends at {} (LSN {})",
            oldest.record.id, oldest.info.stop_time, oldest.info.stop_lsn
        )));
    };
    let size = backup.info.wal_segment_size;
    let timelines = Timelines::load(wal).await?;
    let present: std::collections::BTreeSet<SegmentName> =
        wal.segments(size).await?.into_values().flatten().collect();
    let timeline = match target_timeline {
        "latest" => timelines.newest_descendant(backup.info.timeline),
        "current" => backup.info.timeline,
        n => n.parse().map_err(|_| {
            PgError::Invalid(format!(
                "recovery target timeline {n:?}: expected latest, current or a number"
            ))
        })?,
    };
    if timelines
        .lineage_end(timeline, backup.info.timeline)
        .is_none()
    {
        return Err(PgError::Invalid(format!(
            "timeline {timeline} does not descend from timeline {} of base backup {}",
            backup.info.timeline, backup.record.id
        )));
    }
    let start = SegmentName::containing(backup.info.timeline, backup.info.start_lsn, size);
    let stop = backup.info.stop_lsn.0 / size;
    // The newest segment recovery along `timeline` would use: a segment of another timeline at
    // the same position (the old timeline's copy of the segment a promotion branched in, or an
    // abandoned timeline that went on) is not on the way, and is no reason to report the
    // segment it stands for as a gap when it is simply not archived yet (the end of the WAL).
    let newest = present
        .iter()
        .filter(|s| timelines.owner(timeline, s.segno, size) == s.timeline)
        .map(|s| s.segno)
        .max()
        .unwrap_or(stop)
        .max(stop);
    let run = check::reach(&timelines, &present, timeline, start.segno, newest, size);
    let last = run.last;
    let name = |s: SegmentName| s.file_name(size);
    if last.is_none_or(|l| l.segno < stop) {
        return Err(PgError::WalGap(format!(
            "base backup {} needs WAL from {} to {}, but segment {} is not archived",
            backup.record.id,
            backup.info.start_lsn,
            backup.info.stop_lsn,
            run.gap.map(name).unwrap_or_default()
        )));
    }
    if let Some(gap) = run.gap {
        let last = last.expect("checked above");
        let past_gap = match target {
            RecoveryTarget::Immediate => false,
            RecoveryTarget::Latest | RecoveryTarget::Standby => true,
            RecoveryTarget::Lsn(_) | RecoveryTarget::Name(_) => {
                target_lsn.is_some_and(|l| l.0 / size >= gap.segno)
            }
            RecoveryTarget::Time(t) => {
                let reachable =
                    check::latest_commit_at(wal, &timelines, timeline, last, stop, size).await?;
                reachable.is_none_or(|r| *t > r)
            }
            // Where a transaction committed is not known without replaying: stop at the gap.
            RecoveryTarget::Xid(_) => true,
        };
        if past_gap {
            return Err(PgError::WalGap(format!(
                "the target {target:?} lies past a gap in the WAL archive: segment {} is \
                 missing, so recovery from base backup {} cannot go beyond segment {}. Choose \
                 an earlier target, or restore the missing segment",
                name(gap),
                backup.record.id,
                name(last)
            )));
        }
    }
    Ok(RecoveryPlan {
        backup,
        last_segment: last.map(name),
    })
}

/// The timeline to recover along when none is named: the newest for a recovery to the end of
/// the archive; the base backup's own for a target, which names a point in the history the
/// backup belongs to (a later branch, say a restored copy promoted earlier, may never reach it).
pub fn default_timeline(target: &RecoveryTarget) -> &'static str {
    match target {
        RecoveryTarget::Latest | RecoveryTarget::Standby => "latest",
        _ => "current",
    }
}

/// Restores the planned backup into `pgdata` (created; must be empty, unless
/// [`RecoveryOptions::resume`] completes an interrupted restore) and writes the recovery
/// settings. Each tablespace is moved to its own directory (never its original location, which
/// may belong to the running cluster) and linked from `pg_tblspc/`.
///
/// Postgres cannot start on the directory until this returns: `global/pg_control` is moved into
/// place last, after the file system is synced ([`crate::pgdata_target`]).
pub async fn prepare(
    repo: &Repository,
    plan: &RecoveryPlan,
    pgdata: &Path,
    options: &RecoveryOptions,
) -> Result<RestoreReport, PgError> {
    if options.resume {
        unplace_tablespaces(pgdata, &plan.backup.info, &options.tablespaces)?;
    } else if PgDataTarget::interrupted(pgdata) {
        return Err(PgError::Setup(format!(
            "{} holds an interrupted restore ({PENDING_CONTROL} and no global/pg_control): \
             restore again with resume (`--resume`) to complete it, or into an empty directory",
            pgdata.display()
        )));
    }
    let report = repo
        .restore(
            &plan.backup.record.id,
            &PgDataTarget::new(pgdata, options.resume),
            options.restore.clone(),
        )
        .await?;
    // The data directory itself is not an entry: give it the mode and owner Postgres demands.
    set_mode(pgdata, 0o700)?;
    cluster::chown_like(pgdata, &pgdata.join("PG_VERSION"))?;
    place_tablespaces(pgdata, &plan.backup.info, &options.tablespaces)?;
    write_recovery_settings(pgdata, options)?;
    PgDataTarget::seal(pgdata)?;
    Ok(report)
}

/// Where tablespace `oid` is placed.
fn tablespace_location(pgdata: &Path, oid: &str, map: &HashMap<String, PathBuf>) -> PathBuf {
    match map.get(oid) {
        Some(d) => d.clone(),
        None => {
            let mut name = pgdata.as_os_str().to_owned();
            name.push(".tablespaces");
            PathBuf::from(name).join(oid)
        }
    }
}

/// Undoes [`place_tablespaces`] of an interrupted restore, so that resuming it writes into
/// `pg_tblspc/<oid>` again (a restore never writes through a symlink): each link to its placed
/// location is removed and the directory moved back.
fn unplace_tablespaces(
    pgdata: &Path,
    info: &crate::base::BaseBackupInfo,
    map: &HashMap<String, PathBuf>,
) -> Result<(), PgError> {
    for oid in info.tablespaces.keys() {
        let link = pgdata.join("pg_tblspc").join(oid);
        let dest = tablespace_location(pgdata, oid, map);
        if !link.is_symlink() {
            continue;
        }
        if std::fs::read_link(&link).ok().as_deref() != Some(dest.as_path()) {
            return Err(PgError::Setup(format!(
                "{} is a link, but not to {}, where this restore places tablespace {oid}",
                link.display(),
                dest.display()
            )));
        }
        std::fs::remove_file(&link).map_err(PgError::io("remove", link.display()))?;
        if dest.is_dir() {
            std::fs::rename(&dest, &link).map_err(PgError::io("rename", dest.display()))?;
        }
    }
    Ok(())
}

/// Moves each restored `pg_tblspc/<oid>` directory to its location and links it there.
fn place_tablespaces(
    pgdata: &Path,
    info: &crate::base::BaseBackupInfo,
    map: &HashMap<String, PathBuf>,
) -> Result<(), PgError> {
    for oid in info.tablespaces.keys() {
        let restored = pgdata.join("pg_tblspc").join(oid);
        if !restored.is_dir() || restored.is_symlink() {
            continue;
        }
        let dest = tablespace_location(pgdata, oid, map);
        if dest.exists()
            && std::fs::read_dir(&dest)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(PgError::Setup(format!(
                "tablespace {oid} would be restored to {}, which is not empty",
                dest.display()
            )));
        }
        if let Some(parent) = dest.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(PgError::io("create", parent.display()))?;
                set_mode(parent, 0o700)?;
                cluster::chown_like(parent, pgdata)?;
            }
        }
        if dest.exists() {
            std::fs::remove_dir(&dest).map_err(PgError::io("remove", dest.display()))?;
        }
        std::fs::rename(&restored, &dest).map_err(|e| {
            PgError::Setup(format!(
                "moving tablespace {oid} from {} to {}: {e} (choose a location on the same file system)",
                restored.display(),
                dest.display()
            ))
        })?;
        std::os::unix::fs::symlink(&dest, &restored)
            .map_err(PgError::io("link", restored.display()))?;
        cluster::lchown_like(&restored, pgdata)?;
    }
    Ok(())
}

/// Writes `recovery.signal` (`standby.signal` for a standby) and appends the recovery settings to `postgresql.auto.conf`;
/// creates the directories a base backup leaves empty.
pub fn write_recovery_settings(pgdata: &Path, options: &RecoveryOptions) -> Result<(), PgError> {
    for dir in ["pg_wal", "pg_wal/archive_status"] {
        let p = pgdata.join(dir);
        if !p.exists() {
            std::fs::create_dir(&p).map_err(PgError::io("create", p.display()))?;
            set_mode(&p, 0o700)?;
            cluster::chown_like(&p, pgdata)?;
        }
    }
    // The links are made already; the map would name the original locations.
    let map = pgdata.join("tablespace_map");
    if map.exists() {
        std::fs::rename(&map, pgdata.join("tablespace_map.restored"))
            .map_err(PgError::io("rename", map.display()))?;
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut lines = vec![
        format!(
            "# Written by resilience pg restore at {}",
            Utc::now().to_rfc3339()
        ),
        format!("restore_command = {}", quote(&options.restore_command)),
        format!(
            "recovery_target_timeline = {}",
            quote(&options.target_timeline)
        ),
    ];
    match &options.target {
        RecoveryTarget::Latest | RecoveryTarget::Standby => {}
        RecoveryTarget::Immediate => lines.push("recovery_target = 'immediate'".into()),
        RecoveryTarget::Time(t) => lines.push(format!(
            "recovery_target_time = {}",
            quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        )),
        RecoveryTarget::Lsn(l) => lines.push(format!("recovery_target_lsn = '{l}'")),
        RecoveryTarget::Xid(x) => lines.push(format!("recovery_target_xid = '{x}'")),
        RecoveryTarget::Name(n) => lines.push(format!("recovery_target_name = {}", quote(n))),
    }
    if !matches!(
        options.target,
        RecoveryTarget::Latest | RecoveryTarget::Standby
    ) {
        lines.push(format!(
            "recovery_target_action = '{}'",
            options.action.setting()
        ));
    }
    if options.target == RecoveryTarget::Standby {
        // A segment not yet in the repository is asked for again after this long (Postgres'
        // default, 5 s, would add up to 5 s to the standby's lag; a miss costs one HEAD).
        lines.push("wal_retrieve_retry_interval = '1s'".into());
    }
    if let Some(port) = options.port {
        lines.push(format!("port = {port}"));
    }
    if !options.archive {
        lines.push("archive_mode = 'off'".into());
    } else if let Some(command) = &options.archive_command {
        lines.push(format!("archive_command = {}", quote(command)));
    }
    let conf = pgdata.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&conf)
        .map_err(PgError::io("open", conf.display()))?;
    writeln!(f, "\n{}", lines.join("\n")).map_err(PgError::io("write", conf.display()))?;
    f.sync_all().map_err(PgError::io("sync", conf.display()))?;
    cluster::chown_like(&conf, pgdata)?;
    let signal = pgdata.join(match options.target {
        RecoveryTarget::Standby => "standby.signal",
        _ => "recovery.signal",
    });
    std::fs::write(&signal, b"").map_err(PgError::io("write", signal.display()))?;
    set_mode(&signal, 0o600)?;
    cluster::chown_like(&signal, pgdata)?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PgError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(PgError::io("chmod", path.display()))
}

/// Where recovery ended.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryOutcome {
    /// The last WAL position replayed.
    pub lsn: Option<Lsn>,
    /// The commit time of the last transaction replayed.
    pub commit_time: Option<DateTime<Utc>>,
    /// The timeline the cluster is on now.
    pub timeline: Option<u32>,
    /// Whether it was promoted (else paused at the target).
    pub promoted: bool,
    /// Postgres' own words on where it stopped ("recovery stopping before commit of …").
    pub stop_message: Option<String>,
    /// How long from start to the end of recovery.
    pub recovery_seconds: f64,
}

/// How to start the restored cluster.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// The server programs' directory ([`cluster::find_bindir`]).
    pub bindir: PathBuf,
    /// The port it listens on (the recovery settings should say the same).
    pub port: u16,
    /// The user to connect as to watch recovery.
    pub user: String,
    /// How long recovery may take.
    pub timeout: Duration,
}

/// The log file `start` writes the server's output to.
pub fn log_path(pgdata: &Path) -> PathBuf {
    pgdata.join("resilience-recovery.log")
}

/// Starts the restored cluster, waits for recovery to reach its target (promoted, or paused),
/// and reports where it stopped. A recovery that ends before its target is an error quoting
/// the server's log.
pub async fn start(
    pgdata: &Path,
    options: &StartOptions,
    action: TargetAction,
) -> Result<RecoveryOutcome, PgError> {
    start_until(pgdata, options, Until::Recovered(action)).await
}

/// What [`start_until`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Until {
    /// Recovery reached its target and took this action there.
    Recovered(TargetAction),
    /// A standby is consistent (it accepts read-only connections) and replaying.
    Replaying,
}

/// Starts the restored cluster and waits for `until`.
pub(crate) async fn start_until(
    pgdata: &Path,
    options: &StartOptions,
    until: Until,
) -> Result<RecoveryOutcome, PgError> {
    let began = std::time::Instant::now();
    let log = log_path(pgdata);
    std::fs::write(&log, b"").map_err(PgError::io("create", log.display()))?;
    cluster::chown_like(&log, pgdata)?;
    let mut cmd = cluster::command_as_owner(&options.bindir, "pg_ctl", pgdata)?;
    cmd.arg("start")
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .arg("-W")
        .arg("-o")
        .arg(format!("-p {}", options.port));
    cluster::run(cmd, "pg_ctl start").await?;
    let dsn = format!(
        "host=127.0.0.1 port={} user={} dbname=postgres connect_timeout=5",
        options.port, options.user
    );
    let deadline = began + options.timeout;
    let mut seen_running = false;
    loop {
        if std::time::Instant::now() > deadline {
            return Err(PgError::Recovery(format!(
                "{} within {:?}; the server is still running, see {}",
                match until {
                    Until::Recovered(_) => "recovery did not finish",
                    Until::Replaying => "the standby did not reach a consistent state",
                },
                options.timeout,
                log.display()
            )));
        }
        let running = postmaster_running(pgdata);
        seen_running |= running;
        // pg_ctl -W returns before the server writes its pid file.
        let starting = !seen_running && began.elapsed() < Duration::from_secs(30);
        if !running && !starting {
            return Err(PgError::Recovery(format!(
                "the server stopped during recovery: {}",
                fatal_lines(&log)
            )));
        }
        if let Ok(client) = connect(&dsn).await {
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), \
                     CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END",
                    &[],
                )
                .await;
            if let Ok(row) = row {
                let in_recovery: bool = row.get(0);
                let pause: String = row.get(1);
                let done = match until {
                    Until::Recovered(action) => {
                        !in_recovery || (action == TargetAction::Pause && pause == "paused")
                    }
                    Until::Replaying if !in_recovery => {
                        return Err(PgError::Recovery(format!(
                            "the standby left recovery by itself (promoted, or a \
                             recovery target in its settings): {}",
                            fatal_lines(&log)
                        )))
                    }
                    Until::Replaying => true,
                };
                if done {
                    let row = client
                        .query_one(
                            "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), \
                             CASE WHEN pg_is_in_recovery() THEN NULL \
                             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
                            &[],
                        )
                        .await
                        .map_err(PgError::pg("reading the point recovery reached"))?;
                    let lsn: Option<String> = row.get(0);
                    let timeline: Option<i32> = row.get(2);
                    return Ok(RecoveryOutcome {
                        lsn: lsn.and_then(|l| l.parse().ok()),
                        commit_time: row.get(1),
                        timeline: timeline.map(|t| t as u32),
                        promoted: !in_recovery,
                        stop_message: stop_message(&log),
                        recovery_seconds: began.elapsed().as_secs_f64(),
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops a cluster started by [`start`] (fast shutdown).
pub async fn stop(pgdata: &Path, bindir: &Path) -> Result<(), PgError> {
    let mut cmd = cluster::command_as_owner(bindir, "pg_ctl", pgdata)?;
    cmd.arg("stop").arg("-D").arg(pgdata).arg("-m").arg("fast");
    cluster::run(cmd, "pg_ctl stop").await.map(|_| ())
}

fn postmaster_running(pgdata: &Path) -> bool {
    let Ok(pid_file) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = pid_file
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn fatal_lines(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FATAL") || l.contains("PANIC") || l.contains("recovery stopping"))
        .collect();
    if lines.is_empty() {
        format!("see {}", log.display())
    } else {
        lines.join("; ")
    }
}

fn stop_message(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| {
            l.contains("recovery stopping") || l.contains("consistent recovery state reached")
        })
        .map(|l| l.split_once("LOG:").map_or(l, |(_, m)| m).trim().to_owned())
}
