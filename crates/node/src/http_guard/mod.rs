//! Bounds every request head on a connection before hyper reads it.
//!
//! hyper answers what it cannot parse with an empty `400` or `431` and closes a slow head
//! without a word; its one timer also covers the idle time between kept-alive requests.
//! [`Guarded`] wraps the connection's byte stream and follows the request framing itself
//! ([`Framer`]): it holds a request head back until it is complete, parses and checks it
//! (target, header bytes, body framing), and only then lets hyper have it; body bytes pass
//! through as they come. A head that breaks a limit is answered in our JSON and the
//! connection closed, a head that takes longer than the header timeout gets a JSON `408`,
//! and a connection with no request running that stays silent longer than the idle timeout
//! is closed. Requests in flight (long polls, lock waits) are counted by [`Activity`], so
//! neither timer runs while a node is still working on an answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::error::NodeError;

mod framer;

use framer::{Framer, Step};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How long a connection may wait for its parts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a connection's accept, or the first byte of a later head, to its complete head.
    pub header: Duration,
    /// Silence allowed between requests on a kept-alive connection.
    pub idle: Duration,
}

/// Requests of one connection that hyper has handed to the API and not finished answering.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    waiting: Mutex<Option<Waker>>,
}

/// Held while one request is in flight (its answer included).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Activity {
    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn busy(&self, waker: &Waker) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let busy = self.in_flight.load(Ordering::SeqCst) > 0;
        if busy {
            *waiting = Some(waker.clone());
        }
        busy
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Only the last request to end wakes the guard: the waker stays for it.
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(waker) = self.0.waiting.lock().unwrap_or_else(|e| e.into_inner()).take() {
                waker.wake();
            }
        }
    }
}

/// Which wait a connection's timer measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The first request of a new connection.
    First,
    /// Silence between requests.
    Idle,
    /// A head that has begun.
    Head,
}

/// A connection whose request heads are checked before hyper reads them.
pub struct Guarded<T> {
    io: T,
    framer: Framer,
    /// Received, not yet given to hyper.
    pending: Vec<u8>,
    /// How many of `pending`'s first bytes the framer passed.
    passed: usize,
    timeouts: Timeouts,
    activity: Arc<Activity>,
    timer: Option<(Wait, Pin<Box<Sleep>>)>,
    /// Whether any request arrived yet.
    served: bool,
    eof: bool,
    /// An answer being written before the connection closes, and how much of it is out.
    refusal: Option<(Vec<u8>, usize)>,
}

impl<T> Guarded<T> {
    /// Wraps `io`; `activity` must be the one the connection's service counts requests in.
    pub fn new(io: T, timeouts: Timeouts, activity: Arc<Activity>) -> Self {
        Self {
            io,
            framer: Framer::default(),
            pending: Vec::new(),
            passed: 0,
            timeouts,
            activity,
            timer: None,
            served: false,
            eof: false,
            refusal: None,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Guarded<T> {
    /// Writes the refusal out and shuts the connection; ready once it is closed.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((answer, written)) = &mut self.refusal else { return Poll::Ready(Ok(())) };
        while *written < answer.len() {
            match Pin::new(&mut self.io).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        *written = answer.len();
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.eof = true;
                self.pending.clear();
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Whether the wait for the next head ran out (polling the timer registers a wake-up).
    fn head_wait_expired(&mut self, cx: &mut Context<'_>) -> Option<Wait> {
        if !self.framer.at_head() || self.activity.busy(cx.waker()) {
            self.timer = None;
            return None;
        }
        let wait = match (self.pending.is_empty(), self.served) {
            (false, _) => Wait::Head,
            (true, false) => Wait::First,
            (true, true) => Wait::Idle,
        };
        let timer = match &mut self.timer {
            // A head that begins on a new connection keeps the time it had since the accept.
            Some((kind, timer)) if *kind == wait || (*kind == Wait::First && wait == Wait::Head) => timer,
            _ => {
                let limit = if wait == Wait::Idle { self.timeouts.idle } else { self.timeouts.header };
                &mut self.timer.insert((wait, Box::pin(tokio::time::sleep(limit)))).1
            }
        };
        timer.as_mut().poll(cx).is_ready().then_some(wait)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.refusal.is_some() {
                return this.poll_refusal(cx);
            }
            if this.passed > 0 {
                let n = this.passed.min(out.remaining());
                out.put_slice(&this.pending[..n]);
                this.pending.drain(..n);
                this.passed -= n;
                return Poll::Ready(Ok(()));
            }
            let was_at_head = this.framer.at_head();
            match this.framer.step(&this.pending) {
                Step::Pass(n) => {
                    this.passed = n;
                    if was_at_head {
                        this.served = true;
                        this.timer = None;
                    }
                    continue;
                }
                Step::Refuse(refusal) => {
                    this.refusal = Some((refusal.to_http1(), 0));
                    continue;
                }
                Step::NeedMore => {}
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Bytes already received count before any timer: a node that was slow to look
            // (busy, starved) must not refuse a head that arrived in time.
            let mut chunk = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    this.eof = true;
                    continue;
                }
                Poll::Ready(Ok(())) => {
                    this.pending.extend_from_slice(buf.filled());
                    continue;
                }
                Poll::Pending => {}
            }
            match this.head_wait_expired(cx) {
                Some(Wait::Head) => {
                    this.refusal = Some((
                        NodeError::RequestTimeout(format!(
                            "the request head did not arrive within {} ms (HTTP_HEADER_TIMEOUT_MS)",
                            this.timeouts.header.as_millis()
                        ))
                        .to_http1(),
                        0,
                    ));
                }
                // Nothing was asked: close without an answer.
                Some(Wait::First | Wait::Idle) => {
                    this.eof = true;
                    this.pending.clear();
                    return Poll::Ready(Ok(()));
                }
                None => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const GET: &[u8] = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";

    fn guarded(io: tokio::io::DuplexStream, activity: &Arc<Activity>) -> Guarded<tokio::io::DuplexStream> {
        let timeouts = Timeouts { header: Duration::from_millis(50), idle: Duration::from_millis(50) };
        Guarded::new(io, timeouts, activity.clone())
    }

    /// Reads once, as hyper would, giving up after `within` (the guard keeps its state).
    async fn read_once(conn: &mut Guarded<tokio::io::DuplexStream>, within: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(within, conn.read(&mut buf)).await.ok()?.expect("read");
        Some(buf[..n].to_vec())
    }

    #[tokio::test]
    async fn a_head_that_arrived_in_time_is_served_however_late_the_node_looks() {
        let activity = Arc::new(Activity::default());
        let (mut client, server) = tokio::io::duplex(4096);
        let mut conn = guarded(server, &activity);
        // The guard starts waiting for the first head, then the node is busy elsewhere
        // while the head arrives and the timeout passes.
        assert_eq!(read_once(&mut conn, Duration::from_millis(5)).await, None);
        client.write_all(GET).await.expect("write");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(read_once(&mut conn, Duration::from_secs(1)).await.as_deref(), Some(GET));
    }

    #[tokio::test]
    async fn timers_run_only_while_no_request_is_in_flight() {
        let activity = Arc::new(Activity::default());
        let (mut client, server) = tokio::io::duplex(4096);
        let mut conn = guarded(server, &activity);
        client.write_all(GET).await.expect("write");
        assert_eq!(read_once(&mut conn, Duration::from_secs(1)).await.as_deref(), Some(GET));
        // A request in flight for longer than both timeouts: the connection stays open.
        let in_flight = activity.begin();
        assert_eq!(read_once(&mut conn, Duration::from_millis(200)).await, None);
        // Answered: the idle timeout closes it (end of stream, nothing written).
        drop(in_flight);
        assert_eq!(read_once(&mut conn, Duration::from_secs(1)).await, Some(Vec::new()));
        // A head that begins and stalls gets a JSON 408.
        let (mut client, server) = tokio::io::duplex(4096);
        let mut conn = guarded(server, &activity);
        client.write_all(b"GET /health HTTP/1.1\r\n").await.expect("write");
        assert_eq!(read_once(&mut conn, Duration::from_secs(1)).await, Some(Vec::new()));
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read the answer");
        assert!(answer.starts_with("HTTP/1.1 408 ") && answer.contains("request_timeout"), "{answer}");
    }
}
