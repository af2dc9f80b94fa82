//! Scheduling decisions, as pure functions of the time: when each job runs next, whether a run
//! may start now (backup windows, no overlap), what to do about runs missed while the service
//! was down, and jitter. The runtime loop that a service spawns only asks these questions of an
//! injected [`crate::time::clock::Clock`], so every rule is unit-tested without sleeping.
//!
//! Cron expressions have a seconds field (`sec min hour day-of-month month day-of-week
//! [year]`, e.g. `0 30 2 * * *`) and are evaluated in the job's IANA time zone, so a daily
//! 02:30 job runs at 02:30 local time on both sides of a daylight-saving change (and not at
//! all on a day when 02:30 does not exist, as cron does).

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// What to do about runs that fell due while the service was down or the job was running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    /// Run once as soon as possible, however many were missed.
    #[default]
    RunOnce,
    /// Wait for the next scheduled time.
    Skip,
}

/// A daily window of local time in which a job may start, e.g. `01:00-05:00`; a window whose
/// end is before its start spans midnight (`22:00-04:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First minute of the window.
    pub start: NaiveTime,
    /// End of the window (exclusive).
    pub end: NaiveTime,
}

impl Window {
    /// Whether `t` (local time) is inside.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// A schedule that cannot be used, naming the job and the setting.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A daily window is not `HH:MM-HH:MM`.
    #[error("window {window:?} must be HH:MM-HH:MM")]
    Window {
        /// The window as written.
        window: String,
    },
    /// A cron expression does not parse.
    #[error(
        "job {job}: cron expression {expression:?} does not parse (sec min hour day month weekday)"
    )]
    Cron {
        /// The job.
        job: String,
        /// The expression as written.
        expression: String,
        /// The cron parser's error.
        #[source]
        source: cron::error::Error,
    },
    /// A time zone is not an IANA name.
    #[error("job {job}: unknown time zone {zone:?}")]
    TimeZone {
        /// The job.
        job: String,
        /// The zone as written.
        zone: String,
    },
}

impl FromStr for Window {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, ScheduleError> {
        let malformed = || ScheduleError::Window { window: s.into() };
        let (a, b) = s.split_once('-').ok_or_else(malformed)?;
        let parse = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| malformed());
        let (start, mut end) = (parse(a)?, parse(b)?);
        if end == NaiveTime::from_hms_opt(23, 59, 0).expect("valid") {
            end = NaiveTime::from_hms_nano_opt(23, 59, 59, 1_999_999_999).expect("valid");
        }
        Ok(Window { start, end })
    }
}

/// When a job runs.
#[derive(Clone, Debug)]
pub struct JobSchedule {
    name: String,
    cron: cron::Schedule,
    tz: Tz,
    window: Option<Window>,
    jitter: Duration,
    missed: MissedRuns,
}

impl JobSchedule {
    /// A schedule for job `name` from a cron expression with seconds, in `timezone`.
    pub fn new(name: &str, cron_expr: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let cron = cron::Schedule::from_str(cron_expr).map_err(|source| ScheduleError::Cron {
            job: name.into(),
            expression: cron_expr.into(),
            source,
        })?;
        let tz = Tz::from_str(timezone).map_err(|_| ScheduleError::TimeZone {
            job: name.into(),
            zone: timezone.into(),
        })?;
        Ok(JobSchedule {
            name: name.into(),
            cron,
            tz,
            window: None,
            jitter: Duration::zero(),
            missed: MissedRuns::default(),
        })
    }

    /// Only start inside this daily window (local time).
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = Some(window);
        self
    }

    /// Delay each run by up to this much (deterministic per job and time, so many services do
    /// not hit the store at the same second, and tests can predict it).
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The policy for missed runs.
    pub fn with_missed(mut self, missed: MissedRuns) -> Self {
        self.missed = missed;
        self
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The window, if any.
    pub fn window(&self) -> Option<Window> {
        self.window
    }

    /// Whether a run may start at `t` (inside the window, if there is one).
    pub fn in_window(&self, t: DateTime<Utc>) -> bool {
        self.window
            .is_none_or(|w| w.contains(self.tz.from_utc_datetime(&t.naive_utc()).time()))
    }

    /// The jitter added to the occurrence at `t`.
    pub fn jitter_for(&self, t: DateTime<Utc>) -> Duration {
        let span = self.jitter.num_milliseconds();
        if span <= 0 {
            return Duration::zero();
        }
        let h = blake3::hash(format!("{}@{}", self.name, t.timestamp()).as_bytes());
        let n = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
        Duration::milliseconds((n % (span as u64 + 1)) as i64)
    }

    /// The first cron occurrence strictly after `t` whose local time is inside the window.
    pub fn next_occurrence(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.tz.from_utc_datetime(&t.naive_utc());
        self.cron
            .after(&local)
            .take(100_000)
            .map(|d| d.with_timezone(&Utc))
            .find(|d| self.in_window(*d))
    }

    /// When the run for the occurrence after `t` starts: the occurrence plus its jitter.
    pub fn next_start(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_occurrence(t).map(|o| o + self.jitter_for(o))
    }

    /// When a run must stop to respect the window, for a run started at `start`.
    pub fn window_end_after(&self, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let w = self.window?;
        let local = self.tz.from_utc_datetime(&start.naive_utc());
        let mut day = local.date_naive();
        for _ in 0..3 {
            if let Some(end) = self.tz.from_local_datetime(&day.and_time(w.end)).earliest() {
                let end = end.with_timezone(&Utc);
                if end > start {
                    return Some(end);
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

/// The state of the scheduler: which jobs run, and the next start of each.
#[derive(Debug, Default)]
pub struct SchedulerState {
    next: HashMap<String, DateTime<Utc>>,
    running: HashMap<String, DateTime<Utc>>,
    owed: HashMap<String, bool>,
}

/// A decision of [`SchedulerState::tick`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRun {
    /// The job.
    pub job: String,
    /// When it must stop (its window's end), if it has a window.
    pub stop_at: Option<DateTime<Utc>>,
}

impl SchedulerState {
    /// State for a service starting at `now`, whose jobs last ran at `last_runs` (from the
    /// catalog): a job whose next start after its last run has passed is owed one run under
    /// [`MissedRuns::RunOnce`], and none under [`MissedRuns::Skip`].
    pub fn start(
        jobs: &[JobSchedule],
        last_runs: &HashMap<String, DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut state = SchedulerState::default();
        for job in jobs {
            let missed = last_runs
                .get(job.name())
                .and_then(|last| job.next_start(*last))
                .is_some_and(|due| due <= now);
            if missed && job.missed == MissedRuns::RunOnce {
                state.owed.insert(job.name().into(), true);
            }
            if let Some(n) = job.next_start(now) {
                state.next.insert(job.name().into(), n);
            }
        }
        state
    }

    /// The runs to start at `now`. A job never runs twice at once: an occurrence that falls
    /// due while it runs is owed (run once when it finishes) or dropped, by its policy; a job
    /// owed a run starts only inside its window.
    pub fn tick(&mut self, jobs: &[JobSchedule], now: DateTime<Utc>) -> Vec<StartRun> {
        let mut starts = Vec::new();
        for job in jobs {
            let name = job.name().to_owned();
            let due = self.next.get(&name).is_some_and(|n| *n <= now);
            if due {
                if let Some(n) = job.next_start(now) {
                    self.next.insert(name.clone(), n);
                }
            }
            let owed = self.owed.get(&name).copied().unwrap_or(false);
            if !(due || owed) {
                continue;
            }
            if self.running.contains_key(&name) {
                if due && job.missed == MissedRuns::RunOnce {
                    self.owed.insert(name, true);
                }
                continue;
            }
            if !job.in_window(now) {
                continue;
            }
            self.owed.remove(&name);
            self.running.insert(name.clone(), now);
            starts.push(StartRun {
                job: name,
                stop_at: job.window_end_after(now),
            });
        }
        starts
    }

    /// Records that a job's run ended.
    pub fn finished(&mut self, job: &str) {
        self.running.remove(job);
    }

    /// Whether a job is running.
    pub fn is_running(&self, job: &str) -> bool {
        self.running.contains_key(job)
    }

    /// When a job is next due.
    pub fn next_start_of(&self, job: &str) -> Option<DateTime<Utc>> {
        self.next.get(job).copied()
    }

    /// The earliest time anything is due (to sleep until).
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.next.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn daily_local_time_holds_across_daylight_saving() {
        // Berlin: 2026-03-29 02:00 → 03:00 (no 02:30 that day); 2026-10-25 03:00 → 02:00.
        let job = JobSchedule::new("b", "0 30 2 * * *", "Europe/Berlin").unwrap();
        let runs: Vec<_> =
            std::iter::successors(job.next_start(utc("2026-03-27T00:00:00Z")), |t| {
                job.next_start(*t)
            })
            .take(3)
            .collect();
        assert_eq!(
            runs,
            vec![
                utc("2026-03-27T01:30:00Z"),
                utc("2026-03-28T01:30:00Z"),
                utc("2026-03-30T00:30:00Z")
            ]
        );
        let autumn = job.next_start(utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(autumn, utc("2026-10-25T00:30:00Z"));
        assert_eq!(job.next_start(autumn).unwrap(), utc("2026-10-26T01:30:00Z"));
    }

    #[test]
    fn seconds_field_and_bad_expressions() {
        let job = JobSchedule::new("s", "*/5 * * * * *", "UTC").unwrap();
        assert_eq!(
            job.next_start(utc("2026-01-01T00:00:01Z")).unwrap(),
            utc("2026-01-01T00:00:05Z")
        );
        let cron = JobSchedule::new("x", "not cron", "UTC").unwrap_err();
        assert!(matches!(&cron, ScheduleError::Cron { job, .. } if job == "x"));
        assert!(std::error::Error::source(&cron).is_some());
        let zone = JobSchedule::new("x", "* * * * * *", "Nowhere/City").unwrap_err();
        assert!(matches!(&zone, ScheduleError::TimeZone { zone, .. } if zone == "Nowhere/City"));
    }

    #[test]
    fn windows_limit_starts_and_give_a_stop_time() {
        let w: Window = "22:00-04:00".parse().unwrap();
        let job = JobSchedule::new("w", "0 0 * * * *", "UTC")
            .unwrap()
            .with_window(w);
        assert_eq!(
            job.next_start(utc("2026-01-01T10:00:00Z")).unwrap(),
            utc("2026-01-01T22:00:00Z")
        );
        assert_eq!(
            job.next_start(utc("2026-01-01T23:00:00Z")).unwrap(),
            utc("2026-01-02T00:00:00Z")
        );
        assert_eq!(
            job.next_start(utc("2026-01-02T03:00:00Z")).unwrap(),
            utc("2026-01-02T22:00:00Z")
        );
        assert_eq!(
            job.window_end_after(utc("2026-01-01T23:00:00Z")).unwrap(),
            utc("2026-01-02T04:00:00Z")
        );
        assert!(matches!(
            "25:00-01:00".parse::<Window>(),
            Err(ScheduleError::Window { window }) if window == "25:00-01:00"
        ));
    }

    #[test]
    fn jitter_stays_within_its_bound_and_is_reproducible() {
        let job = JobSchedule::new("j", "0 * * * * *", "UTC")
            .unwrap()
            .with_jitter(Duration::seconds(30));
        let mut t = utc("2026-01-01T00:00:00Z");
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..200 {
            let o = job.next_occurrence(t).unwrap();
            let s = job.next_start(t).unwrap();
            assert!(s >= o && s - o <= Duration::seconds(30), "{o} {s}");
            assert_eq!(job.next_start(t), Some(s));
            distinct.insert((s - o).num_milliseconds());
            t = o;
        }
        assert!(
            distinct.len() > 50,
            "jitter barely varies: {}",
            distinct.len()
        );
    }

    #[test]
    fn a_run_that_outlasts_its_period_never_overlaps_and_owes_one_run() {
        let jobs = vec![JobSchedule::new("slow", "0 * * * * *", "UTC").unwrap()];
        let mut now = utc("2026-01-01T00:00:30Z");
        let mut st = SchedulerState::start(&jobs, &HashMap::new(), now);
        assert!(st.tick(&jobs, now).is_empty());
        now = utc("2026-01-01T00:01:00Z");
        assert_eq!(st.tick(&jobs, now).len(), 1);
        for minute in 2..6 {
            now = utc(&format!("2026-01-01T00:0{minute}:00Z"));
            assert!(st.tick(&jobs, now).is_empty(), "overlapping start at {now}");
        }
        st.finished("slow");
        now += Duration::seconds(10);
        assert_eq!(st.tick(&jobs, now).len(), 1, "one owed run, not four");
        st.finished("slow");
        assert!(st.tick(&jobs, now + Duration::seconds(1)).is_empty());
    }

    #[test]
    fn missed_runs_while_down_run_once_or_are_skipped() {
        let last: HashMap<String, DateTime<Utc>> = [
            ("a".to_string(), utc("2026-01-01T00:00:00Z")),
            ("b".to_string(), utc("2026-01-01T00:00:00Z")),
        ]
        .into();
        let jobs = vec![
            JobSchedule::new("a", "0 0 * * * *", "UTC").unwrap(),
            JobSchedule::new("b", "0 0 * * * *", "UTC")
                .unwrap()
                .with_missed(MissedRuns::Skip),
        ];
        let now = utc("2026-01-01T05:30:00Z");
        let mut st = SchedulerState::start(&jobs, &last, now);
        let started: Vec<_> = st.tick(&jobs, now).into_iter().map(|s| s.job).collect();
        assert_eq!(started, vec!["a".to_string()]);
        assert_eq!(st.next_wakeup(), Some(utc("2026-01-01T06:00:00Z")));
    }
}
