//! A fault-injecting HTTP proxy for the S3 tests: it listens on `127.0.0.1` (an ephemeral port)
//! and forwards every request, headers untouched (the `Host` a request was signed for
//! included), to an upstream S3 server (Garage); per request, a seeded [`FaultSchedule`] decides
//! whether it fails instead, and how:
//!
//! | fault | what the client sees |
//! | --- | --- |
//! | [`Fault::InternalError`] | `500` with an S3 `InternalError` XML body (not forwarded) |
//! | [`Fault::SlowDown`] | `503` with an S3 `SlowDown` XML body (not forwarded) |
//! | [`Fault::ResetBeforeResponse`] | the connection reset (RST) before any response: half the time the request was not forwarded (dropped while it was sent), half the time it was forwarded and applied (the answer is lost) |
//! | [`Fault::ResetMidBody`] | the response's headers and part of its body, then a reset |
//! | [`Fault::TruncatedBody`] | the headers with the full `Content-Length`, part of the body, then a clean close |
//! | [`Fault::Delay`] | the answer, after a short delay |
//! | [`Fault::Stall`] | nothing more after the headers or before them, for longer than the client's request timeout, then a reset |
//!
//! A response without a body (a `HEAD`, an empty one) cannot be cut mid-body: a reset or a cut
//! there becomes [`Fault::ResetBeforeResponse`] (forwarded), and is counted as that; a stall
//! stalls before it. A body without a `Content-Length` (chunked) is reset rather than truncated
//! (a cleanly ended chunked body would be a complete, shorter answer, which no S3 server sends).
//!
//! The schedule draws from `StdRng::seed_from_u64(seed)` in the order requests arrive: the same
//! seed gives the same sequence of faults; with requests in flight at once, which of them gets
//! which fault may differ between runs.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// What the proxy does to one request instead of forwarding it faithfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// `500 InternalError`.
    InternalError,
    /// `503 SlowDown`.
    SlowDown,
    /// The connection reset before the response.
    ResetBeforeResponse,
    /// The connection reset after the headers, part way through the body.
    ResetMidBody,
    /// The body cut short under its full `Content-Length`, then the connection closed.
    TruncatedBody,
    /// The answer after a short delay.
    Delay,
    /// No answer (or no more of it) for longer than the client waits, then a reset.
    Stall,
}

impl Fault {
    /// Every fault, in the order the schedule weighs them.
    pub const ALL: [Fault; 7] = [
        Fault::InternalError,
        Fault::SlowDown,
        Fault::ResetBeforeResponse,
        Fault::ResetMidBody,
        Fault::TruncatedBody,
        Fault::Delay,
        Fault::Stall,
    ];

    fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).expect("listed")
    }
}

/// The seed of a test run: `RESILIENCE_TEST_SEED` if set, else `default`. Printed, so a
/// failure reproduces with `RESILIENCE_TEST_SEED=<seed>`.
pub fn test_seed(default: u64) -> u64 {
    let seed = std::env::var("RESILIENCE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("fault schedule seed {seed} (RESILIENCE_TEST_SEED={seed} reproduces it)");
    seed
}

/// What the schedule decided for one request.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    /// The fault, or `None` to forward faithfully.
    pub fault: Option<Fault>,
    /// For body faults: the share of the body sent before the cut.
    pub cut: f64,
    /// For [`Fault::Delay`]: how long.
    pub delay: Duration,
    /// For [`Fault::ResetBeforeResponse`]: whether the request reaches the server first.
    pub forward_first: bool,
    /// For [`Fault::Stall`]: after the headers and part of the body (else before the headers).
    pub mid_body: bool,
}

/// Which requests fail and how: a fault with probability `rate`, its kind drawn by weight
/// ([`Fault::Stall`], the slow one, a quarter as often as each other), all from a seeded
/// `StdRng`.
pub struct FaultSchedule {
    rng: StdRng,
    rate: f64,
    max_delay: Duration,
    /// Every fault of this kind (whatever was drawn).
    only: Option<Fault>,
}

impl FaultSchedule {
    /// Faults at `rate` (0 to 1), drawn from `seed`.
    pub fn new(seed: u64, rate: f64) -> Self {
        FaultSchedule {
            rng: StdRng::seed_from_u64(seed),
            rate,
            max_delay: Duration::from_millis(150),
            only: None,
        }
    }

    /// `fault` on every request.
    pub fn always(seed: u64, fault: Fault) -> Self {
        FaultSchedule {
            only: Some(fault),
            ..FaultSchedule::new(seed, 1.0)
        }
    }

    /// The next request's fate. Every call draws the same numbers, so the sequence depends only
    /// on the seed and the rate.
    pub fn next(&mut self) -> Decision {
        const WEIGHTS: [u32; 7] = [4, 4, 4, 4, 4, 4, 1];
        let hit: f64 = self.rng.gen();
        let mut pick = self.rng.gen_range(0..WEIGHTS.iter().sum::<u32>());
        let cut: f64 = self.rng.gen();
        let delay = self.max_delay.mul_f64(self.rng.gen());
        let forward_first: bool = self.rng.gen();
        let mid_body: bool = self.rng.gen();
        let mut fault = Fault::ALL[0];
        for (f, w) in Fault::ALL.iter().zip(WEIGHTS) {
            if pick < w {
                fault = *f;
                break;
            }
            pick -= w;
        }
        Decision {
            fault: (hit < self.rate).then_some(self.only.unwrap_or(fault)),
            cut,
            delay,
            forward_first,
            mid_body,
        }
    }
}

/// What the proxy has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received.
    pub requests: u64,
    /// Faults injected, by kind (as applied), in [`Fault::ALL`] order.
    pub faults: [u64; 7],
}

impl Counts {
    /// Faults of every kind.
    pub fn total_faults(&self) -> u64 {
        self.faults.iter().sum()
    }

    /// Faults of one kind.
    pub fn of(&self, fault: Fault) -> u64 {
        self.faults[fault.index()]
    }

    /// Adds another proxy's counts.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        for (a, b) in self.faults.iter_mut().zip(other.faults) {
            *a += b;
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} faults (",
            self.requests,
            self.total_faults()
        )?;
        for (i, fault) in Fault::ALL.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{fault:?} {}", self.faults[i])?;
        }
        write!(f, ")")
    }
}

struct Shared {
    upstream: SocketAddr,
    schedule: Mutex<FaultSchedule>,
    /// Faults are injected only while on.
    on: AtomicBool,
    counts: Mutex<Counts>,
    /// How long a stall lasts (longer than the client's request timeout).
    stall: Duration,
    /// The faults injected, in order: `(request number, method, path, fault)`.
    log: Mutex<Vec<(u64, String, String, Fault)>>,
}

/// The proxy, serving until dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// A proxy to the S3 server at `upstream` (`http://127.0.0.1:PORT`), injecting faults as
    /// `schedule` decides; a stall lasts `stall`.
    pub async fn start(upstream: &str, schedule: FaultSchedule, stall: Duration) -> FaultProxy {
        let authority = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the fault proxy forwards to plain http, not {upstream}"))
            .trim_end_matches('/');
        let upstream: SocketAddr = tokio::net::lookup_host(authority)
            .await
            .unwrap_or_else(|e| panic!("upstream {authority}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("upstream {authority}: no address"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            upstream,
            schedule: Mutex::new(schedule),
            on: AtomicBool::new(true),
            counts: Mutex::new(Counts::default()),
            stall,
            log: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// The endpoint to give clients: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Injects faults (`true`, the default) or forwards everything faithfully.
    pub fn set_faults(&self, on: bool) {
        self.shared.on.store(on, Ordering::SeqCst);
    }

    /// What it has seen so far.
    pub fn counts(&self) -> Counts {
        self.shared.counts.lock().unwrap().clone()
    }

    /// The faults injected since the last call, one line each, for a failure message.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.log.lock().unwrap())
            .into_iter()
            .map(|(n, method, path, fault)| format!("#{n} {method} {path}: {fault:?}"))
            .collect()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let reset = Arc::new(AtomicBool::new(false));
            let io = Resettable {
                stream,
                reset: reset.clone(),
            };
            let service = service_fn(move |req| {
                let (shared, reset) = (shared.clone(), reset.clone());
                async move { handle(&shared, &reset, req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        });
    }
}

/// A client connection that is reset (RST, not FIN) when dropped once `reset` is set.
struct Resettable {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for Resettable {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Resettable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Resettable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.reset.load(Ordering::SeqCst) {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            // No FIN: the drop resets the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn full(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("response")
}

fn s3_error(status: StatusCode, code: &str, message: &str, path: &str, n: u64) -> Response<Body> {
    full(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Resource>{path}</Resource><RequestId>fault-{n}</RequestId></Error>"
        ),
    )
}

/// The error that makes hyper drop a connection without answering.
#[derive(Debug)]
struct Injected(&'static str);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "injected fault: {}", self.0)
    }
}

impl std::error::Error for Injected {}

async fn handle(
    shared: &Shared,
    reset: &Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Injected> {
    let decision = shared.schedule.lock().unwrap().next();
    let fault = decision.fault.filter(|_| shared.on.load(Ordering::SeqCst));
    let n = {
        let mut counts = shared.counts.lock().unwrap();
        counts.requests += 1;
        counts.requests
    };
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let count = |applied: Fault| {
        shared.counts.lock().unwrap().faults[applied.index()] += 1;
        shared
            .log
            .lock()
            .unwrap()
            .push((n, method.clone(), path.clone(), applied));
    };
    let Some(fault) = fault else {
        return Ok(forward(shared, req).await);
    };
    match fault {
        Fault::InternalError | Fault::SlowDown => {
            count(fault);
            // Read the request body first, so the client reads the answer rather than failing
            // to send the rest of its body.
            let _ = req.into_body().collect().await;
            Ok(if fault == Fault::SlowDown {
                s3_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SlowDown",
                    "Please reduce your request rate.",
                    &path,
                    n,
                )
            } else {
                s3_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                    &path,
                    n,
                )
            })
        }
        Fault::ResetBeforeResponse => {
            count(fault);
            if decision.forward_first {
                let _ = forward(shared, req).await;
            }
            reset.store(true, Ordering::SeqCst);
            Err(Injected("reset before the response"))
        }
        Fault::Delay => {
            count(fault);
            tokio::time::sleep(decision.delay).await;
            Ok(forward(shared, req).await)
        }
        Fault::ResetMidBody | Fault::TruncatedBody | Fault::Stall => {
            let is_head = req.method() == hyper::Method::HEAD;
            let response = forward(shared, req).await;
            let length = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let bodiless = is_head || length == Some(0) || response.status().is_informational();
            if fault == Fault::Stall && (!decision.mid_body || bodiless) {
                count(Fault::Stall);
                tokio::time::sleep(shared.stall).await;
                reset.store(true, Ordering::SeqCst);
                return Err(Injected("stalled before the response"));
            }
            if bodiless {
                // Nothing to cut: reset instead (the request was applied).
                count(Fault::ResetBeforeResponse);
                reset.store(true, Ordering::SeqCst);
                return Err(Injected("reset before a bodiless response"));
            }
            let fault = if fault == Fault::TruncatedBody && length.is_none() {
                Fault::ResetMidBody
            } else {
                fault
            };
            count(fault);
            let keep = length.map(|l| (l as f64 * decision.cut) as u64);
            Ok(cut_body(response, fault, keep, shared.stall, reset))
        }
    }
}

/// The response with its body cut after `keep` bytes (all of a body of unknown length but its
/// last frame), then ended as `fault` says.
fn cut_body(
    response: Response<Body>,
    fault: Fault,
    keep: Option<u64>,
    stall: Duration,
    reset: &Arc<AtomicBool>,
) -> Response<Body> {
    // The reset flag is shared with the connection; the body sets it when it cuts.
    let reset = reset.clone();
    let (parts, body) = response.into_parts();
    let state = (body, keep, false);
    let stream = futures::stream::unfold(state, move |(mut body, mut left, done)| {
        let reset = reset.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if left == Some(0) {
                    break;
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        let Ok(mut data) = frame.into_data() else {
                            continue;
                        };
                        if let Some(l) = left {
                            if data.len() as u64 >= l {
                                data.truncate(l as usize);
                                left = Some(0);
                            } else {
                                left = Some(l - data.len() as u64);
                            }
                        } else {
                            // Unknown length: pass this frame, cut at the next.
                            left = Some(0);
                        }
                        if data.is_empty() {
                            continue;
                        }
                        return Some((Ok(Frame::data(data)), (body, left, false)));
                    }
                    Some(Err(e)) => return Some((Err(e), (body, left, true))),
                    None => break,
                }
            }
            // Let what was sent leave before the cut.
            tokio::time::sleep(Duration::from_millis(20)).await;
            match fault {
                Fault::TruncatedBody => None,
                Fault::Stall => {
                    tokio::time::sleep(stall).await;
                    reset.store(true, Ordering::SeqCst);
                    Some((
                        Err(std::io::Error::other(Injected("stalled mid-body"))),
                        (body, left, true),
                    ))
                }
                _ => {
                    reset.store(true, Ordering::SeqCst);
                    Some((
                        Err(std::io::Error::other(Injected("reset mid-body"))),
                        (body, left, true),
                    ))
                }
            }
        }
    });
    Response::from_parts(parts, StreamBody::new(stream).boxed_unsync())
}

/// Forwards a request to the upstream server on a fresh connection; a `502` if it cannot.
async fn forward(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    match try_forward(shared.upstream, req).await {
        Ok(r) => r.map(|b| b.map_err(std::io::Error::other).boxed_unsync()),
        Err(e) => full(
            StatusCode::BAD_GATEWAY,
            format!("fault proxy: upstream failed: {e}"),
        ),
    }
}

async fn try_forward(
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}
