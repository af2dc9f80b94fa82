//! [`LazyFile`]: a file's content reader that opens the file only when it is first read, and
//! reads it on the blocking pool in large blocks.
//!
//! A directory walk hands one to the engine for every file, but the engine reads only the
//! files that changed: an unchanged file costs its `lstat` and nothing more. A small file is
//! opened, read whole and closed in one step.
//!
//! The reads of all lazy files go through one queue, drained by a few threads of the blocking
//! pool that take job after job while there are any: many small reads in flight (the engine
//! reads ahead several files at once) cost a few thread wake-ups, not one per file.

use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::source::Vanished;

/// Bytes read per step, at most.
const BLOCK: usize = 1 << 20;
/// Threads draining the read queue at once, at most: reads of files not in the page cache
/// overlap this much.
const MAX_DRAINERS: usize = 4;

/// What one step of reading returns: the file (`None` once its end was read), the bytes,
/// and whether the end was reached.
type BlockRead = std::io::Result<(Option<std::fs::File>, Vec<u8>, bool)>;
type Job = Box<dyn FnOnce() + Send>;

/// Reads waiting for a thread, and how many threads drain them.
struct ReadQueue {
    state: std::sync::Mutex<(std::collections::VecDeque<Job>, usize)>,
}

static QUEUE: ReadQueue = ReadQueue {
    state: std::sync::Mutex::new((std::collections::VecDeque::new(), 0)),
};

impl ReadQueue {
    /// Queues `job`; starts another draining thread while there are fewer than
    /// [`MAX_DRAINERS`] and more jobs waiting than threads draining.
    fn submit(&'static self, job: Job) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.push_back(job);
        if state.1 < MAX_DRAINERS && state.0.len() > state.1 {
            state.1 += 1;
            drop(state);
            tokio::task::spawn_blocking(move || self.drain());
        }
    }

    fn drain(&self) {
        loop {
            let job = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match state.0.pop_front() {
                    Some(job) => job,
                    None => {
                        state.1 -= 1;
                        return;
                    }
                }
            };
            job();
        }
    }
}

/// Queues one step of reading; its result arrives on the returned receiver.
fn queue_read(
    path: PathBuf,
    file: Option<std::fs::File>,
    buf: Vec<u8>,
    want: usize,
) -> tokio::sync::oneshot::Receiver<BlockRead> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    QUEUE.submit(Box::new(move || {
        // Nobody waits any more (the reader was dropped): the result is dropped too.
        let _ = tx.send(read_block(&path, file, buf, want));
    }));
    rx
}

/// A file read on demand; see the module documentation.
pub struct LazyFile {
    path: PathBuf,
    /// The size the walk saw: the first read asks for that much (plus one byte to see the end).
    size_hint: u64,
    state: State,
}

enum State {
    /// Not opened yet.
    Unopened,
    /// Open; `buf[pos..]` is read and not yet handed on; `eof` once a read returned nothing.
    Open {
        file: Option<std::fs::File>,
        buf: Vec<u8>,
        pos: usize,
        eof: bool,
    },
    /// A read queued or under way.
    Reading(tokio::sync::oneshot::Receiver<BlockRead>),
    /// A read failed: the error was returned; reading again fails again.
    Failed,
}

impl LazyFile {
    /// A reader of the file at `path`, which the walk saw at `size_hint` bytes.
    pub fn new(path: PathBuf, size_hint: u64) -> Self {
        LazyFile {
            path,
            size_hint,
            state: State::Unopened,
        }
    }
}

/// Reads up to `want` bytes (to the end of the file if it comes first) into `buf`, opening
/// `path` first when `file` is `None`; returns the file (closed once at its end), the bytes
/// and whether the end was reached.
fn read_block(
    path: &std::path::Path,
    file: Option<std::fs::File>,
    mut buf: Vec<u8>,
    want: usize,
) -> BlockRead {
    let mut file = match file {
        Some(f) => f,
        None => std::fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                std::io::Error::new(std::io::ErrorKind::NotFound, Vanished)
            } else {
                e
            }
        })?,
    };
    buf.clear();
    buf.reserve_exact(want);
    let n = (&mut file).take(want as u64).read_to_end(&mut buf)?;
    if n < want {
        // A short read before `want` is the end of the file.
        return Ok((None, buf, true));
    }
    Ok((Some(file), buf, false))
}

impl AsyncRead for LazyFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open {
                    buf,
                    pos,
                    eof,
                    file,
                } => {
                    if *pos < buf.len() {
                        let n = out.remaining().min(buf.len() - *pos);
                        out.put_slice(&buf[*pos..*pos + n]);
                        *pos += n;
                        return Poll::Ready(Ok(()));
                    }
                    if *eof || out.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let (file, buf) = (file.take(), std::mem::take(buf));
                    let path = this.path.clone();
                    this.state = State::Reading(queue_read(path, file, buf, BLOCK));
                }
                State::Unopened => {
                    // The whole file in one trip when it is small; one more byte shows its end.
                    let want = (this.size_hint as usize).saturating_add(1).min(BLOCK);
                    let path = this.path.clone();
                    this.state = State::Reading(queue_read(path, None, Vec::new(), want));
                }
                State::Reading(task) => {
                    let done = match Pin::new(task).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(done) => done,
                    };
                    let done = done.unwrap_or_else(|_| {
                        Err(std::io::Error::other(
                            "the read was abandoned by its thread",
                        ))
                    });
                    match done {
                        Ok((file, buf, eof)) => {
                            this.state = State::Open {
                                file,
                                buf,
                                pos: 0,
                                eof,
                            }
                        }
                        Err(e) => {
                            this.state = State::Failed;
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                State::Failed => {
                    return Poll::Ready(Err(std::io::Error::other(format!(
                        "{} failed to read before",
                        this.path.display()
                    ))))
                }
            }
        }
    }
}
