//! Byte-rate limits, so a restore does not saturate disks or links.
//!
//! [`RateLimiter`] is a token bucket shared by everything that should count against one
//! budget; [`ThrottledSink`] applies one to a sink's reads and writes. Time is measured with
//! tokio's clock, so tests run under `tokio::time::pause()` without sleeping for real.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::sink::{ByteStream, Copied, ObjectMeta, PutMode, Sink, SinkError};

/// A token bucket of bytes per second with a burst of one second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        RateLimiter {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Waits until `bytes` may pass. Larger requests than the burst pass once the bucket has
    /// paid for them, so the average rate holds.
    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let mut state = self.state.lock().await;
            let now = Instant::now();
            let (tokens, last) = *state;
            let refilled =
                (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
            let left = refilled - bytes as f64;
            *state = (left, now);
            if left >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-left / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// `data`, each part let through once the limiter allows its bytes.
fn throttle_stream(data: ByteStream, limiter: Arc<RateLimiter>) -> ByteStream {
    data.then(move |part| {
        let limiter = limiter.clone();
        async move {
            if let Ok(b) = &part {
                limiter.acquire(b.len() as u64).await;
            }
            part
        }
    })
    .boxed()
}

/// A sink whose transfers (puts and gets) count against a [`RateLimiter`].
///
/// ```
/// use std::sync::Arc;
/// use resilience_core::sink::MemorySink;
/// use resilience_core::sink::throttle::{RateLimiter, ThrottledSink};
/// let sink = ThrottledSink::new(MemorySink::new(), Arc::new(RateLimiter::new(50 << 20)));
/// ```
#[derive(Debug)]
pub struct ThrottledSink<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S: Sink> ThrottledSink<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limiter: Arc<RateLimiter>) -> Self {
        ThrottledSink { inner, limiter }
    }
}

crate::forward_sink! {
    (impl<S: Sink> Sink for ThrottledSink<S>)
    to self.inner: location, head, list, delete, unfinished_uploads, discard_upload, retention,
        set_retention;

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        self.limiter.acquire(data.len() as u64).await;
        self.inner.put(key, data, mode).await
    }

    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        let throttled = throttle_stream(data, self.limiter.clone());
        self.inner.put_stream(key, throttled, mode).await
    }

    async fn put_copy(
        &self,
        key: &str,
        data: ByteStream,
        origin: &ObjectMeta,
    ) -> Result<Copied, SinkError> {
        let throttled = throttle_stream(data, self.limiter.clone());
        self.inner.put_copy(key, throttled, origin).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        let data = self.inner.get(key).await?;
        self.limiter.acquire(data.len() as u64).await;
        Ok(data)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SinkError> {
        self.limiter
            .acquire(range.end.saturating_sub(range.start))
            .await;
        self.inner.get_range(key, range).await
    }

    async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError> {
        let limiter = self.limiter.clone();
        Ok(self
            .inner
            .get_stream(key)
            .await?
            .then(move |part| {
                let limiter = limiter.clone();
                async move {
                    if let Ok(b) = &part {
                        limiter.acquire(b.len() as u64).await;
                    }
                    part
                }
            })
            .boxed())
    }
}

/// Both sinks limited to one shared budget of `bytes_per_second` (a copy's reads of one and
/// writes to the other, together).
pub fn share_budget(
    a: Arc<dyn Sink>,
    b: Arc<dyn Sink>,
    bytes_per_second: u64,
) -> (Arc<dyn Sink>, Arc<dyn Sink>) {
    let limiter = Arc::new(RateLimiter::new(bytes_per_second.max(1)));
    (
        Arc::new(ThrottledSink::new(a, limiter.clone())),
        Arc::new(ThrottledSink::new(b, limiter)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;

    #[tokio::test(start_paused = true)]
    async fn the_average_rate_holds_without_real_sleeping() {
        let limiter = Arc::new(RateLimiter::new(1000));
        let start = Instant::now();
        for _ in 0..10 {
            limiter.acquire(500).await;
        }
        // 5000 bytes at 1000 B/s with a 1000-byte burst: 4 s.
        let elapsed = start.elapsed().as_secs_f64();
        assert!((3.9..4.2).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_sink_paces_its_transfers() {
        let sink = ThrottledSink::new(MemorySink::new(), Arc::new(RateLimiter::new(1 << 20)));
        let start = Instant::now();
        for i in 0..4 {
            sink.put(
                &format!("k{i}"),
                Bytes::from(vec![0u8; 1 << 20]),
                PutMode::Create,
            )
            .await
            .unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((2.9..3.2).contains(&elapsed), "{elapsed}");
        assert_eq!(sink.get("k0").await.unwrap().len(), 1 << 20);
    }
}
