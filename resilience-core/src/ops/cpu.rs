//! The threads for CPU-bound work — hashing, compressing, encrypting chunks as a backup seals
//! them and as a restore opens them: one per core, shared by every operation of the process.
//!
//! Kept off tokio's blocking pool, which is for waiting on I/O: there each piece of work took
//! the pool's lock and woke one of up to 512 threads, and on the 2-core bench machine a
//! directory backup of 1.4 GB spent its time switching between eight of them (143% CPU,
//! 2.38 s); on two threads of their own it runs at 160% (1.98 s). Work sent here must never
//! wait for other work sent here.

use std::sync::OnceLock;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("resilience-cpu-{i}"))
            // A panic drops the work's sender: its operation fails with an error and the
            // process goes on (rayon's default would abort it).
            .panic_handler(|_| tracing::error!("CPU-bound work panicked"))
            .build()
            .expect("the CPU threads start")
    })
}

/// Starts `work` on the CPU threads; its result arrives on the receiver (which reports an
/// error if `work` panicked).
pub(crate) fn spawn<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> oneshot::Receiver<T> {
    let (done, result) = oneshot::channel();
    pool().spawn(move || {
        // Whoever waited may have gone (a failed operation): then nobody wants the result.
        let _ = done.send(work());
    });
    result
}

/// The result of work started with [`spawn`]; an error naming `operation` if it panicked.
pub(crate) async fn finished<T>(
    operation: &'static str,
    result: oneshot::Receiver<T>,
) -> Result<T> {
    result.await.map_err(|_| Error::Internal {
        operation,
        detail: "CPU-bound work ended without a result",
    })
}

/// Runs `work` on the CPU threads and waits for its result.
pub(crate) async fn run<T: Send + 'static>(
    operation: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    finished(operation, spawn(work)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_returns_its_result_and_a_panic_is_an_error_not_an_abort() {
        assert_eq!(run("test", || 6 * 7).await.unwrap(), 42);
        let err = run("test", || -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(err.to_string().contains("without a result"), "{err}");
        // The threads survive it.
        assert_eq!(run("test", || 1).await.unwrap(), 1);
    }
}
