//! The scheduler a service spawns on its tokio runtime: it asks [`crate::time::schedule`] when each
//! job is due, starts it (never twice at once), tells it to stop at the end of its window,
//! keeps a board of every job's last runs for health reports and metrics, and on shutdown
//! stops the running jobs and waits for them to record how they ended.
//!
//! Time comes from the injected [`Clock`], so with a [`crate::time::clock::ManualClock`] a test
//! moves time forward and watches jobs start, without sleeping.
//!
//! ```
//! use std::sync::Arc;
//! use resilience_core::time::clock::SystemClock;
//! use resilience_core::time::schedule::JobSchedule;
//! use resilience_core::time::scheduler::{JobOutcome, ScheduledJob, Scheduler};
//! use resilience_core::time::stop::StopSignal;
//!
//! struct Hello;
//! #[async_trait::async_trait]
//! impl ScheduledJob for Hello {
//!     async fn run(&self, _stop: StopSignal) -> JobOutcome {
//!         Ok("said hello".into())
//!     }
//! }
//! # async fn demo() {
//! let every_minute = JobSchedule::new("hello", "0 * * * * *", "Europe/Berlin").unwrap();
//! let scheduler = Scheduler::new(Arc::new(SystemClock)).job(every_minute, Arc::new(Hello));
//! let board = scheduler.board();
//! let shutdown = StopSignal::new();
//! let task = tokio::spawn(scheduler.run(shutdown.clone()));
//! // … serve board.snapshot() on a health endpoint; at SIGTERM:
//! shutdown.stop("SIGTERM");
//! task.await.unwrap();
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::time::clock::Clock;
use crate::time::schedule::{JobSchedule, SchedulerState};
use crate::time::stop::StopSignal;

/// How a run ended: a one-line summary, or what failed (the board keeps the error's text and
/// its causes').
pub type JobOutcome = Result<String, crate::sink::BoxError>;

/// Something the scheduler runs.
#[async_trait]
pub trait ScheduledJob: Send + Sync {
    /// Runs once. The job must return soon after `stop` is given (end of its window, or
    /// shutdown), recording an interrupted backup as failed.
    async fn run(&self, stop: StopSignal) -> JobOutcome;
}

/// What the scheduler knows about a job's runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JobStatus {
    /// When the running run started, if one runs.
    pub running_since: Option<DateTime<Utc>>,
    /// When the last run started.
    pub last_start: Option<DateTime<Utc>>,
    /// When the last successful run ended.
    pub last_success: Option<DateTime<Utc>>,
    /// When the last failed run ended.
    pub last_failure: Option<DateTime<Utc>>,
    /// What the last failed run reported.
    pub last_error: Option<String>,
    /// What the last successful run reported.
    pub last_summary: Option<String>,
    /// Wall time of the last run, in seconds.
    pub last_duration_seconds: Option<f64>,
    /// Runs that succeeded.
    pub successes: u64,
    /// Runs that failed.
    pub failures: u64,
    /// When the next run is due.
    pub next_run: Option<DateTime<Utc>>,
}

/// The jobs' statuses, shared between the scheduler and whoever reports on them.
#[derive(Debug, Default)]
pub struct JobBoard {
    jobs: Mutex<BTreeMap<String, JobStatus>>,
}

impl JobBoard {
    /// Every job's status, by job name.
    pub fn snapshot(&self) -> BTreeMap<String, JobStatus> {
        self.jobs.lock().expect("job board lock poisoned").clone()
    }

    /// One job's status.
    pub fn get(&self, job: &str) -> Option<JobStatus> {
        self.jobs
            .lock()
            .expect("job board lock poisoned")
            .get(job)
            .cloned()
    }

    fn update(&self, job: &str, f: impl FnOnce(&mut JobStatus)) {
        f(self
            .jobs
            .lock()
            .expect("job board lock poisoned")
            .entry(job.to_owned())
            .or_default())
    }
}

struct Finished {
    job: String,
    outcome: JobOutcome,
    duration: f64,
}

/// Runs jobs on their schedules until told to shut down.
pub struct Scheduler {
    clock: Arc<dyn Clock>,
    schedules: Vec<JobSchedule>,
    jobs: HashMap<String, Arc<dyn ScheduledJob>>,
    last_runs: HashMap<String, DateTime<Utc>>,
    board: Arc<JobBoard>,
}

impl Scheduler {
    /// A scheduler without jobs, reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Scheduler {
            clock,
            schedules: Vec::new(),
            jobs: HashMap::new(),
            last_runs: HashMap::new(),
            board: Arc::default(),
        }
    }

    /// Adds a job (its name is the schedule's).
    pub fn job(mut self, schedule: JobSchedule, job: Arc<dyn ScheduledJob>) -> Self {
        self.board.update(schedule.name(), |_| {});
        self.jobs.insert(schedule.name().to_owned(), job);
        self.schedules.push(schedule);
        self
    }

    /// When each job last ran before this service started (from the catalog), so that runs
    /// missed while it was down are run once or skipped, by each job's policy.
    pub fn last_runs(mut self, last_runs: HashMap<String, DateTime<Utc>>) -> Self {
        self.last_runs = last_runs;
        self
    }

    /// The board of job statuses, to report from while the scheduler runs.
    pub fn board(&self) -> Arc<JobBoard> {
        self.board.clone()
    }

    /// Runs until `shutdown` is given; then stops the running jobs (with the shutdown's
    /// reason) and returns once each has ended and its status is on the board.
    pub async fn run(self, shutdown: StopSignal) {
        let now = self.clock.now();
        let mut state = SchedulerState::start(&self.schedules, &self.last_runs, now);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut running: HashMap<String, (StopSignal, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        loop {
            let now = self.clock.now();
            for start in state.tick(&self.schedules, now) {
                let name = start.job.clone();
                let job = self.jobs[&name].clone();
                let stop = shutdown.child();
                if let Some(at) = start.stop_at {
                    let (clock, window_stop) = (self.clock.clone(), stop.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = clock.sleep_until(at) => window_stop.stop(format!("its window ended at {at}")),
                            _ = window_stop.stopped() => {}
                        }
                    });
                }
                self.board.update(&name, |s| {
                    s.running_since = Some(now);
                    s.last_start = Some(now);
                });
                tracing::info!(job = %name, "job started");
                let (tx, run_stop) = (done_tx.clone(), stop.clone());
                let handle = tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = job.run(run_stop.clone()).await;
                    // Ends the window timer, if any, without touching the job's outcome.
                    run_stop.stop("finished");
                    let _ = tx.send(Finished {
                        job: name,
                        outcome,
                        duration: started.elapsed().as_secs_f64(),
                    });
                });
                running.insert(start.job, (stop, handle));
            }
            self.publish_next_runs(&state);
            let wake = state.next_wakeup();
            tokio::select! {
                biased;
                _ = shutdown.stopped() => break,
                Some(done) = done_rx.recv() => {
                    running.remove(&done.job);
                    state.finished(&done.job);
                    self.record(done);
                }
                _ = async {
                    match wake {
                        Some(at) => self.clock.sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
        let reason = shutdown.reason();
        tracing::info!(%reason, jobs = running.len(), "scheduler stopping");
        for (name, (stop, handle)) in running {
            stop.stop(reason.clone());
            if let Err(e) = handle.await {
                tracing::error!(job = %name, error = %e, "job task panicked");
                self.board.update(&name, |s| {
                    s.running_since = None;
                    s.failures += 1;
                    s.last_error = Some(format!("panicked: {e}"));
                });
            }
        }
        while let Ok(done) = done_rx.try_recv() {
            self.record(done);
        }
    }

    fn publish_next_runs(&self, state: &SchedulerState) {
        for s in &self.schedules {
            let next = state.next_start_of(s.name());
            self.board.update(s.name(), |st| st.next_run = next);
        }
    }

    fn record(&self, done: Finished) {
        let now = self.clock.now();
        let ok = done.outcome.is_ok();
        metrics::counter!(
            "resilience_job_runs_total",
            "job" => done.job.clone(),
            "result" => if ok { "success" } else { "failure" }
        )
        .increment(1);
        match &done.outcome {
            Ok(summary) => tracing::info!(job = %done.job, %summary, "job succeeded"),
            Err(error) => {
                tracing::warn!(job = %done.job, error = %crate::error::error_chain(error.as_ref()), "job failed")
            }
        }
        self.board.update(&done.job, |s| {
            s.running_since = None;
            s.last_duration_seconds = Some(done.duration);
            match done.outcome {
                Ok(summary) => {
                    s.successes += 1;
                    s.last_success = Some(now);
                    s.last_summary = Some(summary);
                }
                Err(error) => {
                    s.failures += 1;
                    s.last_failure = Some(now);
                    s.last_error = Some(crate::error::error_chain(error.as_ref()));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use chrono::Duration;

    use super::*;
    use crate::time::clock::ManualClock;
    use crate::time::schedule::Window;

    /// Reports each start on a channel and runs until released (or stopped).
    struct Probe {
        started: mpsc::UnboundedSender<DateTime<Utc>>,
        clock: Arc<ManualClock>,
        release: Arc<tokio::sync::Semaphore>,
    }

    #[async_trait]
    impl ScheduledJob for Probe {
        async fn run(&self, stop: StopSignal) -> JobOutcome {
            let _ = self.started.send(self.clock.now());
            tokio::select! {
                permit = self.release.acquire() => {
                    permit.expect("open").forget();
                    Ok("done".into())
                }
                _ = stop.stopped() => Err(format!("interrupted: {}", stop.reason()).into()),
            }
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    struct Rig {
        clock: Arc<ManualClock>,
        started: mpsc::UnboundedReceiver<DateTime<Utc>>,
        release: Arc<tokio::sync::Semaphore>,
        board: Arc<JobBoard>,
        shutdown: StopSignal,
        task: tokio::task::JoinHandle<()>,
    }

    /// A scheduler with one probe job, started (it has read the clock) before it returns.
    async fn rig(schedule: JobSchedule, start: &str) -> Rig {
        let clock = Arc::new(ManualClock::new(utc(start)));
        let (tx, started) = mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let probe = Probe {
            started: tx,
            clock: clock.clone(),
            release: release.clone(),
        };
        let scheduler = Scheduler::new(clock.clone()).job(schedule, Arc::new(probe));
        let board = scheduler.board();
        let shutdown = StopSignal::new();
        let task = tokio::spawn(scheduler.run(shutdown.clone()));
        settle().await;
        Rig {
            clock,
            started,
            release,
            board,
            shutdown,
            task,
        }
    }

    async fn next_start(rx: &mut mpsc::UnboundedReceiver<DateTime<Utc>>) -> DateTime<Utc> {
        tokio::time::timeout(StdDuration::from_secs(5), rx.recv())
            .await
            .expect("a run started")
            .expect("channel open")
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    async fn wait_for(board: &JobBoard, job: &str, f: impl Fn(&JobStatus) -> bool) -> JobStatus {
        for _ in 0..500 {
            if let Some(s) = board.get(job).filter(|s| f(s)) {
                return s;
            }
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
        panic!("job {job} never reached the state: {:?}", board.get(job));
    }

    #[tokio::test]
    async fn jobs_start_when_the_clock_reaches_them_and_never_overlap() {
        let job = JobSchedule::new("j", "0 * * * * *", "UTC").unwrap();
        let mut r = rig(job, "2026-01-01T00:00:30Z").await;
        assert!(r.started.try_recv().is_err(), "nothing due yet");
        r.clock.set(utc("2026-01-01T00:01:00Z"));
        assert_eq!(
            next_start(&mut r.started).await,
            utc("2026-01-01T00:01:00Z")
        );
        // Three more periods pass while the run holds on: no second run starts.
        for m in 2..5 {
            r.clock.set(utc(&format!("2026-01-01T00:0{m}:00Z")));
            settle().await;
            assert!(
                r.started.try_recv().is_err(),
                "overlapping run at minute {m}"
            );
        }
        r.release.add_permits(1);
        // The missed occurrences are owed as one run, started at once.
        assert_eq!(
            next_start(&mut r.started).await,
            utc("2026-01-01T00:04:00Z")
        );
        r.release.add_permits(1);
        let s = wait_for(&r.board, "j", |s| s.successes == 2).await;
        assert_eq!(s.failures, 0);
        assert_eq!(s.next_run, Some(utc("2026-01-01T00:05:00Z")));
        settle().await;
        assert!(r.started.try_recv().is_err(), "exactly one owed run");
        r.shutdown.stop("test over");
        r.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_run_is_stopped_at_its_windows_end_and_recorded_failed() {
        let job = JobSchedule::new("w", "0 0 * * * *", "UTC")
            .unwrap()
            .with_window("01:00-02:00".parse::<Window>().unwrap());
        let mut r = rig(job, "2026-01-01T00:30:00Z").await;
        r.clock.set(utc("2026-01-01T01:00:00Z"));
        assert_eq!(
            next_start(&mut r.started).await,
            utc("2026-01-01T01:00:00Z")
        );
        r.clock.set(utc("2026-01-01T01:59:59Z"));
        settle().await;
        assert_eq!(
            r.board.get("w").unwrap().failures,
            0,
            "still inside its window"
        );
        r.clock.set(utc("2026-01-01T02:00:00Z"));
        let s = wait_for(&r.board, "w", |s| s.failures == 1).await;
        let error = s.last_error.unwrap();
        assert!(error.contains("window ended"), "{error}");
        assert_eq!(s.successes, 0);
        // The next start is inside the next day's window.
        assert_eq!(s.next_run, Some(utc("2026-01-02T01:00:00Z")));
        r.shutdown.stop("test over");
        r.task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_the_running_job_and_waits_for_its_outcome() {
        let job = JobSchedule::new("s", "*/10 * * * * *", "UTC").unwrap();
        let mut r = rig(job, "2026-01-01T00:00:05Z").await;
        r.clock.advance(Duration::seconds(5));
        next_start(&mut r.started).await;
        r.shutdown.stop("SIGTERM");
        tokio::time::timeout(StdDuration::from_secs(5), r.task)
            .await
            .expect("scheduler returned")
            .unwrap();
        let s = r.board.get("s").unwrap();
        assert_eq!((s.successes, s.failures), (0, 1));
        assert_eq!(s.running_since, None);
        assert!(s.last_error.unwrap().contains("SIGTERM"));
    }

    #[tokio::test]
    async fn a_missed_run_while_down_runs_once_at_start() {
        let job = JobSchedule::new("m", "0 0 * * * *", "UTC").unwrap();
        let clock = Arc::new(ManualClock::new(utc("2026-01-01T05:30:00Z")));
        let (tx, mut started) = mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Semaphore::new(10));
        let probe = Probe {
            started: tx,
            clock: clock.clone(),
            release,
        };
        let scheduler = Scheduler::new(clock.clone())
            .job(job, Arc::new(probe))
            .last_runs([("m".to_string(), utc("2026-01-01T01:00:00Z"))].into());
        let shutdown = StopSignal::new();
        let task = tokio::spawn(scheduler.run(shutdown.clone()));
        assert_eq!(next_start(&mut started).await, utc("2026-01-01T05:30:00Z"));
        settle().await;
        assert!(started.try_recv().is_err(), "one catch-up run, not four");
        shutdown.stop("test over");
        task.await.unwrap();
    }
}
