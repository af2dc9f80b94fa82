//! Waiting for a snapshot or a server to reach a status: a poll every `poll`, up to a
//! deadline, failing at once on a status it does not come back from.

use std::future::Future;
use std::time::{Duration, Instant};

use super::error::RdsError;

/// How long and how often to wait.
#[derive(Clone, Copy, Debug)]
pub struct WaitPolicy {
    /// Between two polls.
    pub poll: Duration,
    /// The longest wait before giving up.
    pub deadline: Duration,
}

impl Default for WaitPolicy {
    /// A poll every 15 s for up to 4 hours (a large snapshot, or a copy across regions, takes
    /// hours).
    fn default() -> Self {
        WaitPolicy {
            poll: Duration::from_secs(15),
            deadline: Duration::from_secs(4 * 3600),
        }
    }
}

/// Statuses a snapshot or server does not come back from.
const TERMINAL: &[&str] = &[
    "failed",
    "error",
    "incompatible-restore",
    "incompatible-parameters",
    "incompatible-network",
    "inaccessible-encryption-credentials",
    "storage-full",
    "deleted",
];

/// Polls `status` (which returns the object's current value and status) until the status is
/// `wanted`, and returns that value. `object` and `region` name it in errors.
pub async fn until<T, F, Fut>(
    policy: WaitPolicy,
    object: &str,
    region: &str,
    wanted: &str,
    mut status: F,
) -> Result<T, RdsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(T, String), RdsError>>,
{
    let began = Instant::now();
    loop {
        let (value, now) = status().await?;
        if now == wanted {
            return Ok(value);
        }
        if TERMINAL.contains(&now.as_str()) {
            return Err(RdsError::BadState {
                object: object.to_owned(),
                region: region.to_owned(),
                status: now,
                expected: format!("waiting until it is {wanted}"),
            });
        }
        if began.elapsed() + policy.poll > policy.deadline {
            return Err(RdsError::Timeout {
                object: object.to_owned(),
                region: region.to_owned(),
                status: now,
                wanted: wanted.to_owned(),
                waited_seconds: began.elapsed().as_secs(),
            });
        }
        tracing::debug!(object, region, status = %now, wanted, "waiting");
        tokio::time::sleep(policy.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fast() -> WaitPolicy {
        WaitPolicy {
            poll: Duration::from_millis(1),
            deadline: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn returns_once_the_status_is_reached() {
        let polls = AtomicUsize::new(0);
        let v = until(fast(), "snapshot s", "r", "available", || async {
            let n = polls.fetch_add(1, Ordering::Relaxed);
            Ok((n, if n < 2 { "creating" } else { "available" }.to_owned()))
        })
        .await
        .unwrap();
        assert_eq!(v, 2);
    }

    #[tokio::test]
    async fn a_failed_status_ends_the_wait_naming_the_object() {
        let err = until(fast(), "snapshot s", "eu-west-1", "available", || async {
            Ok(((), "failed".to_owned()))
        })
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot s in eu-west-1 is failed: waiting until it is available"
        );
    }

    #[tokio::test]
    async fn the_deadline_ends_the_wait() {
        let policy = WaitPolicy {
            poll: Duration::from_secs(10),
            deadline: Duration::from_secs(1),
        };
        let err = until(policy, "instance i", "r", "available", || async {
            Ok(((), "creating".to_owned()))
        })
        .await
        .unwrap_err();
        assert!(matches!(err, RdsError::Timeout { .. }), "{err}");
    }
}
