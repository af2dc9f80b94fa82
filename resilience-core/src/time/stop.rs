//! A stop signal with a reason: how a scheduler tells a running job to stop (at the end of its
//! window, or because the service shuts down), and how the job says why it stopped.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// A cloneable signal that asks a run to stop, carrying the reason.
///
/// ```
/// use resilience_core::time::stop::StopSignal;
/// let service = StopSignal::new();
/// let job = service.child();
/// service.stop("shutdown");
/// assert!(job.is_stopped());
/// assert_eq!(job.reason(), "shutdown");
/// ```
#[derive(Clone, Debug, Default)]
pub struct StopSignal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    parent: Option<Box<StopSignal>>,
}

impl StopSignal {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal that is given when this one is, or on its own (stopping it leaves this one).
    pub fn child(&self) -> StopSignal {
        StopSignal {
            token: self.token.child_token(),
            reason: Arc::default(),
            parent: Some(Box::new(self.clone())),
        }
    }

    /// Gives the signal; the first reason given is kept.
    pub fn stop(&self, reason: impl Into<String>) {
        {
            let mut r = self.reason.lock().expect("stop reason lock poisoned");
            if r.is_none() && !self.token.is_cancelled() {
                *r = Some(reason.into());
            }
        }
        self.token.cancel();
    }

    /// Whether the signal was given (here or on a parent).
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why it was given (`"stopped"` when no reason is known).
    pub fn reason(&self) -> String {
        if let Some(r) = self
            .reason
            .lock()
            .expect("stop reason lock poisoned")
            .clone()
        {
            return r;
        }
        match &self.parent {
            Some(p) if p.is_stopped() => p.reason(),
            _ => "stopped".into(),
        }
    }

    /// Completes when the signal is given.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_stops_with_its_parent_but_not_the_reverse() {
        let parent = StopSignal::new();
        let a = parent.child();
        let b = parent.child();
        a.stop("window 01:00-05:00 ended");
        assert!(a.is_stopped() && !parent.is_stopped() && !b.is_stopped());
        assert_eq!(a.reason(), "window 01:00-05:00 ended");
        parent.stop("shutdown");
        b.stopped().await;
        assert_eq!(b.reason(), "shutdown");
        assert_eq!(a.reason(), "window 01:00-05:00 ended", "first reason kept");
    }
}
