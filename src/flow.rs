//! Flow control: backpressure instead of disconnection (DESIGN.md).
//!
//! - `Budget`/`Credit`: every frame read from a socket costs credit (its
//!   size plus a fixed overhead) from its connection's window and from the
//!   node's total window; the credit travels with the frame and is given
//!   back when the work for it is done. `Gated` wraps a socket's frame
//!   stream and stops reading while no credit is left, so TCP slows the
//!   sender down instead of the node closing it.
//! - `Outbox`: a connection's pending output, bounded in bytes. The hub
//!   pushes frames; a writer task (`spawn_writer`) moves them to the socket.
//!   Past `high_water` the connection is congested (its own reading pauses;
//!   the hub stops taking new client work while a server link is
//!   congested); past `limit` a push fails and the peer is closed as a slow
//!   consumer. A write that makes no progress for `write_timeout` ends the
//!   writer (a socket frozen at the TCP level).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason, Message};
use bytestring::ByteString;
use futures_util::{Sink, SinkExt, Stream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, Pause};

/// What a frame costs beyond its bytes: the parsed message, queues, ids.
pub const FRAME_OVERHEAD: usize = 256;

/// The node's total window of work in flight, shared by every connection.
#[derive(Clone, Debug)]
pub struct Budget {
    total: Arc<Semaphore>,
    total_bytes: usize,
}

impl Budget {
    pub fn new(total_bytes: usize) -> Budget {
        let total_bytes = total_bytes.clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            total: Arc::new(Semaphore::new(total_bytes)),
            total_bytes,
        }
    }

    /// Bytes of the total window free now (for tests and status).
    pub fn available(&self) -> usize {
        self.total.available_permits()
    }

    /// A window for one connection, drawing on this budget too.
    pub fn window(&self, bytes: usize) -> Window {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Window {
            conn: Arc::new(Semaphore::new(bytes)),
            conn_bytes: bytes,
            budget: self.clone(),
        }
    }
}

/// One connection's window of work in flight.
#[derive(Clone, Debug)]
pub struct Window {
    conn: Arc<Semaphore>,
    conn_bytes: usize,
    budget: Budget,
}

impl Window {
    /// Bytes of this connection's window free now.
    pub fn available(&self) -> usize {
        self.conn.available_permits()
    }

    /// What a frame of `len` bytes costs, capped so that one frame always
    /// fits (a frame larger than the window would wait forever).
    fn cost(&self, len: usize) -> (u32, u32) {
        let c = len.saturating_add(FRAME_OVERHEAD);
        (
            c.min(self.conn_bytes) as u32,
            c.min(self.budget.total_bytes) as u32,
        )
    }

    fn try_take(&self, len: usize) -> Option<Credit> {
        let (c, t) = self.cost(len);
        let conn = self.conn.clone().try_acquire_many_owned(c).ok()?;
        let total = self.budget.total.clone().try_acquire_many_owned(t).ok()?;
        Some(Credit {
            _permits: Some((conn, total)),
        })
    }

    /// Credit for a frame of `len` bytes, once there is room.
    pub fn take(&self, len: usize) -> impl Future<Output = Credit> + Send + 'static {
        let (c, t) = self.cost(len);
        let (conn, total) = (self.conn.clone(), self.budget.total.clone());
        async move {
            // The connection's own window first, so one connection waiting
            // for the total holds at most one frame's worth of it.
            let conn = conn.acquire_many_owned(c).await;
            let total = total.acquire_many_owned(t).await;
            match (conn, total) {
                (Ok(conn), Ok(total)) => Credit {
                    _permits: Some((conn, total)),
                },
                // The semaphores are never closed.
                _ => Credit::none(),
            }
        }
    }
}

/// Credit for one frame's work; given back when dropped.
#[derive(Debug)]
#[must_use = "dropping the credit ends the work it pays for"]
pub struct Credit {
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Credit {
    /// Credit that holds nothing (frames the node makes itself, tests).
    pub fn none() -> Credit {
        Credit { _permits: None }
    }
}

/// Answers of this size or more are big: they may not take the budget's
/// last `BIG_HEADROOM` bytes, which stay for small answers (so an honest
/// get is not held up behind a flood of reads of a big record).
pub const BIG_ANSWER_BYTES: usize = 64 * 1024;
/// Share of the output budget only small answers may use.
pub const BIG_HEADROOM: usize = 1 << 20;

/// Bytes of answers to reads (get, crdtGet, query) pending in all outboxes
/// together. Each per-connection outbox is bounded too, but thousands of
/// askers that never read would each hold their own limit; answers wait
/// here for room instead, holding their request's credit, so the asker's
/// window fills and its socket stops being read. The hub closes holders
/// that make no progress while others wait (`Hub::reclaim_output`).
#[derive(Clone, Debug)]
pub struct OutputBudget {
    inner: Arc<OutputShared>,
}

#[derive(Debug)]
struct OutputShared {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
    /// Answers waiting for room now.
    waiting: std::sync::atomic::AtomicUsize,
    freed: Notify,
}

impl OutputBudget {
    pub fn new(limit: usize) -> OutputBudget {
        OutputBudget {
            inner: Arc::new(OutputShared {
                limit: limit.max(1),
                used: Default::default(),
                waiting: Default::default(),
                freed: Notify::new(),
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.inner.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers waiting for room now.
    pub fn waiting(&self) -> usize {
        self.inner
            .waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn try_reserve(&self, len: usize) -> Option<Reservation> {
        use std::sync::atomic::Ordering;
        let cap = if len >= BIG_ANSWER_BYTES {
            self.inner.limit.saturating_sub(BIG_HEADROOM)
        } else {
            self.inner.limit
        };
        let mut used = self.inner.used.load(Ordering::Relaxed);
        loop {
            // One answer always fits in an empty budget.
            if used > 0 && used + len > cap {
                return None;
            }
            match self.inner.used.compare_exchange_weak(
                used,
                used + len,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: self.clone(),
                        len,
                        waited: false,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    /// `len` bytes of the budget, once there is room.
    pub fn reserve(&self, len: usize) -> impl Future<Output = Reservation> + Send + 'static {
        let budget = self.clone();
        async move {
            if let Some(r) = budget.try_reserve(len) {
                return r;
            }
            use std::sync::atomic::Ordering;
            budget.inner.waiting.fetch_add(1, Ordering::Relaxed);
            let mut r = loop {
                let freed = budget.inner.freed.notified();
                tokio::pin!(freed);
                // Registered before the check, so a release between the
                // check and the wait is not missed.
                freed.as_mut().enable();
                if let Some(r) = budget.try_reserve(len) {
                    break r;
                }
                freed.await;
            };
            budget.inner.waiting.fetch_sub(1, Ordering::Relaxed);
            r.waited = true;
            r
        }
    }
}

/// Bytes of the output budget held by one queued answer; given back when
/// its frame goes to the socket or is dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: OutputBudget,
    len: usize,
    waited: bool,
}

impl Reservation {
    /// Whether it had to wait for room (a backpressure pause).
    pub fn waited(&self) -> bool {
        self.waited
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let inner = &self.budget.inner;
        inner
            .used
            .fetch_sub(self.len, std::sync::atomic::Ordering::AcqRel);
        if inner.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            inner.freed.notify_waiters();
        }
    }
}

/// A frame stream that stops reading while its connection has no credit
/// left, or while its own output is congested (it asks faster than it
/// reads). Yields each item with the credit it took.
pub struct Gated<S: Stream, F> {
    inner: S,
    window: Window,
    outbox: Outbox,
    cost: F,
    /// A frame read, waiting for its credit.
    waiting: Option<(Option<S::Item>, CreditFuture)>,
    /// Why reading is paused now (each pause is counted once).
    paused: Option<Pause>,
}

type CreditFuture = Pin<Box<dyn Future<Output = Credit> + Send>>;

impl<S: Stream, F> Gated<S, F> {
    pub fn new(inner: S, window: Window, outbox: Outbox, cost: F) -> Self {
        Gated {
            inner,
            window,
            outbox,
            cost,
            waiting: None,
            paused: None,
        }
    }

    fn pause(&mut self, why: Pause) {
        if self.paused != Some(why) {
            self.paused = Some(why);
            if let Some(m) = &self.outbox.metrics {
                m.backpressure_pauses.inc(why);
            }
        }
    }

    /// An item goes on: counted as received if it has a payload.
    fn pass(&mut self, len: usize) {
        self.paused = None;
        if let (Some(m), true) = (&self.outbox.metrics, len > 0) {
            m.frames_received.inc();
            m.received_bytes.inc_by(len as u64);
        }
    }
}

impl<S, F> Stream for Gated<S, F>
where
    S: Stream + Unpin,
    S::Item: Unpin,
    F: Fn(&S::Item) -> usize + Unpin,
{
    type Item = (S::Item, Credit);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some((item, fut)) = this.waiting.as_mut() {
            let credit = std::task::ready!(fut.as_mut().poll(cx));
            let item = item.take();
            this.waiting = None;
            if let Some(item) = item {
                this.pass((this.cost)(&item));
                return Poll::Ready(Some((item, credit)));
            }
        }
        if !this.outbox.poll_uncongested(cx) {
            this.pause(Pause::OutputCongested);
            return Poll::Pending;
        }
        let Some(item) = std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) else {
            return Poll::Ready(None);
        };
        let len = (this.cost)(&item);
        if let Some(credit) = this.window.try_take(len) {
            this.pass(len);
            return Poll::Ready(Some((item, credit)));
        }
        // Read, but wait for room before handing it on (and before reading
        // the next one): the socket is not read meanwhile.
        let mut fut: CreditFuture = Box::pin(this.window.take(len));
        match fut.as_mut().poll(cx) {
            Poll::Ready(credit) => {
                this.pass(len);
                Poll::Ready(Some((item, credit)))
            }
            Poll::Pending => {
                this.pause(Pause::Window);
                this.waiting = Some((Some(item), fut));
                Poll::Pending
            }
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    #[error("slow consumer: more than {limit} bytes of output pending")]
    Full { limit: usize },
    #[error("connection closing")]
    Closed,
}

/// Limits of one outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Pending bytes past which the connection counts as congested.
    pub high_water: usize,
    /// Pending bytes a push may not exceed: the peer is not reading.
    pub limit: usize,
    /// A write with no progress for this long ends the connection.
    pub write_timeout: Duration,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            high_water: 1 << 20,
            limit: 8 << 20,
            write_timeout: Duration::from_secs(30),
        }
    }
}

enum Out {
    /// A text frame, and the output budget it holds while queued.
    Text(ByteString, Option<Reservation>),
    Ping,
    Pong(bytes::Bytes),
}

struct OutboxState {
    queue: VecDeque<Out>,
    bytes: usize,
    close: Option<CloseReason>,
    closed: bool,
    congested: bool,
    /// Whether congestion pauses the connection's reader (not for server
    /// links: two servers each waiting for the other to read would
    /// deadlock; the hub holds back client work for them instead).
    gate_reads: bool,
    /// The connection's reader, paused while congested.
    reader: Option<Waker>,
    /// Called once output falls to half the high-water mark.
    on_drained: Option<Box<dyn FnOnce() + Send>>,
    /// When the writer last took a frame, or the queue last became
    /// non-empty: how long a non-empty queue has made no progress.
    progress: std::time::Instant,
}

/// A connection's pending output, bounded in bytes. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    state: Arc<Mutex<OutboxState>>,
    writer: Arc<Notify>,
    limits: OutboxLimits,
    /// Counts what its writer sends and what its reader waits for.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("pending", &self.pending_bytes())
            .finish()
    }
}

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Outbox {
        Outbox {
            state: Arc::new(Mutex::new(OutboxState {
                queue: VecDeque::new(),
                bytes: 0,
                close: None,
                closed: false,
                congested: false,
                gate_reads: true,
                reader: None,
                on_drained: None,
                progress: std::time::Instant::now(),
            })),
            writer: Arc::new(Notify::new()),
            limits,
            metrics: None,
        }
    }

    /// Counts frames and bytes sent, and read pauses, into `metrics`.
    pub fn metered(mut self, metrics: Arc<Metrics>) -> Outbox {
        self.metrics = Some(metrics);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        // A panic while holding this lock leaves only counters behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// Queues a text frame. Refused (and nothing queued) when the pending
    /// output would pass the limit: the caller closes the slow consumer.
    pub fn push(&self, text: ByteString) -> Result<(), OutboxError> {
        self.push_held(text, None)
    }

    /// `push`, the frame holding `held` of the node's output budget until
    /// the writer takes it.
    pub fn push_held(
        &self,
        text: ByteString,
        held: Option<Reservation>,
    ) -> Result<(), OutboxError> {
        let mut s = self.lock();
        if s.closed || s.close.is_some() {
            return Err(OutboxError::Closed);
        }
        let len = text.len();
        // One frame always fits in an empty outbox.
        if s.bytes > 0 && s.bytes + len > self.limits.limit {
            return Err(OutboxError::Full {
                limit: self.limits.limit,
            });
        }
        s.bytes += len;
        if s.bytes > self.limits.high_water {
            s.congested = true;
        }
        if s.queue.is_empty() {
            s.progress = std::time::Instant::now();
        }
        s.queue.push_back(Out::Text(text, held));
        drop(s);
        self.writer.notify_one();
        Ok(())
    }

    /// Queues a websocket ping (heartbeat) or pong (answer to a ping).
    pub fn push_ping(&self) {
        self.push_control(Out::Ping);
    }

    pub fn push_pong(&self, payload: bytes::Bytes) {
        self.push_control(Out::Pong(payload));
    }

    fn push_control(&self, out: Out) {
        let mut s = self.lock();
        // Control frames are tiny; the reader's credit bounds how many.
        if !s.closed && s.close.is_none() {
            s.queue.push_back(out);
            drop(s);
            self.writer.notify_one();
        }
    }

    /// Drops what is pending and sends a close frame next.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.close_with(code, reason, false);
    }

    /// Sends what is already queued, then the close frame; nothing queued
    /// after. For a close that must not lose a frame just pushed: a pong
    /// before a duplicate or self close is the dialer's proof of who we are.
    pub fn close_after_pending(&self, code: CloseCode, reason: &str) {
        self.close_with(code, reason, true);
    }

    fn close_with(&self, code: CloseCode, reason: &str, keep_pending: bool) {
        let mut s = self.lock();
        if s.closed || s.close.is_some() {
            return;
        }
        if keep_pending {
            s.close = Some(CloseReason {
                code,
                description: Some(truncate_reason(reason)),
            });
            drop(s);
            self.writer.notify_one();
            return;
        }
        s.queue.clear();
        s.bytes = 0;
        s.close = Some(CloseReason {
            code,
            description: Some(truncate_reason(reason)),
        });
        Self::uncongest(&mut s);
        drop(s);
        self.writer.notify_one();
    }

    /// The connection is gone: the writer stops, pending output is freed.
    pub fn shut(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.queue.clear();
        s.bytes = 0;
        Self::uncongest(&mut s);
        drop(s);
        self.writer.notify_one();
    }

    fn uncongest(s: &mut OutboxState) {
        s.congested = false;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
        if let Some(f) = s.on_drained.take() {
            f();
        }
    }

    pub fn pending_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// How long pending output has waited with the writer taking none
    /// (zero when nothing is pending).
    pub fn stalled_for(&self) -> Duration {
        let s = self.lock();
        if s.bytes == 0 {
            Duration::ZERO
        } else {
            s.progress.elapsed()
        }
    }

    pub fn is_congested(&self) -> bool {
        self.lock().congested
    }

    /// Runs `f` once the output falls to half the high-water mark (at once
    /// if it is not congested). Replaces an earlier callback.
    pub fn on_drained(&self, f: Box<dyn FnOnce() + Send>) {
        let mut s = self.lock();
        if s.congested {
            s.on_drained = Some(f);
        } else {
            drop(s);
            f();
        }
    }

    /// From now on congestion does not pause this connection's reading
    /// (a server link).
    pub fn never_pause_reads(&self) {
        let mut s = self.lock();
        s.gate_reads = false;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// True when the reader may go on; else registers it to be woken.
    fn poll_uncongested(&self, cx: &mut Context<'_>) -> bool {
        let mut s = self.lock();
        if s.congested && s.gate_reads {
            s.reader = Some(cx.waker().clone());
            false
        } else {
            true
        }
    }

    /// Takes every text frame queued (tests and in-process peers).
    pub fn take_texts(&self) -> Vec<ByteString> {
        let mut s = self.lock();
        let mut out = vec![];
        let mut kept = VecDeque::new();
        while let Some(o) = s.queue.pop_front() {
            match o {
                Out::Text(t, _) => out.push(t),
                other => kept.push_back(other),
            }
        }
        s.queue = kept;
        s.bytes = 0;
        Self::uncongest(&mut s);
        out
    }

    /// The close frame queued, if any (tests).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close.clone()
    }

    /// The writer's next item; None once the connection is gone or closed.
    async fn next(&self) -> Option<Message> {
        loop {
            let notified = self.writer.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some(out) = s.queue.pop_front() {
                    if s.queue.is_empty() {
                        // An idle socket keeps no queue (the next push
                        // allocates a small one again).
                        s.queue = VecDeque::new();
                    }
                    let msg = match out {
                        Out::Text(t, _held) => {
                            s.bytes -= t.len();
                            s.progress = std::time::Instant::now();
                            if s.congested && s.bytes <= self.limits.high_water / 2 {
                                Self::uncongest(&mut s);
                            }
                            Message::Text(t)
                        }
                        Out::Ping => Message::Ping(bytes::Bytes::new()),
                        Out::Pong(p) => Message::Pong(p),
                    };
                    return Some(msg);
                }
                if let Some(reason) = s.close.take() {
                    s.closed = true;
                    return Some(Message::Close(Some(reason)));
                }
            }
            notified.await;
        }
    }
}

/// Websocket close reasons may hold at most 123 bytes.
pub const MAX_CLOSE_REASON: usize = 123;

pub fn truncate_reason(reason: &str) -> String {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason[..cut].to_owned()
}

/// How a writer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterEnd {
    /// Closed by us (close frame sent) or the connection went away.
    Done,
    /// A write made no progress within the write timeout.
    Stalled,
    /// The socket refused a write.
    Failed,
}

/// Moves `outbox`'s frames to `sink` until the connection closes; then
/// calls `done` with how it ended. Frames are fed without a flush each and
/// flushed when the outbox runs empty.
pub fn spawn_writer<S>(outbox: Outbox, mut sink: S, done: impl FnOnce(WriterEnd) + 'static)
where
    S: Sink<Message> + Unpin + 'static,
{
    let timeout = outbox.limits.write_timeout;
    actix_rt::spawn(async move {
        let end = loop {
            let Some(msg) = outbox.next().await else {
                break WriterEnd::Done;
            };
            let is_close = matches!(msg, Message::Close(_));
            if let (Some(m), Message::Text(t)) = (&outbox.metrics, &msg) {
                m.frames_sent.inc();
                m.sent_bytes.inc_by(t.len() as u64);
            }
            // Boxed: a timer held inline would make every idle socket's
            // writer task carry one (hundreds of bytes) while it waits.
            match Box::pin(tokio::time::timeout(timeout, sink.feed(msg))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break WriterEnd::Failed,
                Err(_) => break WriterEnd::Stalled,
            }
            if is_close || outbox.lock().queue.is_empty() {
                match Box::pin(tokio::time::timeout(timeout, sink.flush())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break WriterEnd::Failed,
                    Err(_) => break WriterEnd::Stalled,
                }
            }
            if is_close {
                let _ = Box::pin(tokio::time::timeout(timeout, sink.close())).await;
                break WriterEnd::Done;
            }
        };
        outbox.shut();
        done(end);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn limits(high: usize, limit: usize) -> OutboxLimits {
        OutboxLimits {
            high_water: high,
            limit,
            write_timeout: Duration::from_secs(1),
        }
    }

    #[actix_rt::test]
    async fn answers_wait_for_output_room_and_small_ones_keep_headroom() {
        let budget = OutputBudget::new(BIG_HEADROOM + 2 * BIG_ANSWER_BYTES);
        let big = BIG_ANSWER_BYTES;
        let a = budget.reserve(big).await;
        let b = budget.reserve(big).await;
        assert!(!a.waited() && !b.waited());
        // A third big answer would eat into the headroom: it waits...
        let third = actix_rt::spawn(budget.reserve(big));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while budget.waiting() == 0 {
            assert!(std::time::Instant::now() < deadline, "never waited");
            tokio::task::yield_now().await;
        }
        // ...while small ones still fit, up to the whole budget.
        let small = budget.reserve(BIG_ANSWER_BYTES - 1).await;
        assert!(!small.waited());
        assert_eq!(budget.used(), 3 * big - 1);
        // A frame queued holds its room until the writer takes it.
        let outbox = Outbox::new(limits(1 << 30, 1 << 30));
        outbox
            .push_held(ByteString::from("x"), Some(a))
            .expect("pushed");
        assert_eq!(budget.used(), 3 * big - 1);
        assert!(outbox.next().await.is_some());
        assert_eq!(budget.used(), 2 * big - 1);
        // Still no room for a big one outside the headroom, until:
        drop(small);
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("woken when room was freed")
            .unwrap();
        assert!(third.waited());
        assert_eq!(budget.waiting(), 0);
        drop((b, third));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn pending_output_counts_as_stalled_until_the_writer_takes_some() {
        let outbox = Outbox::new(limits(1 << 20, 1 << 20));
        assert_eq!(outbox.stalled_for(), Duration::ZERO);
        outbox.push(ByteString::from("a")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while outbox.stalled_for() < Duration::from_millis(20) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        outbox.take_texts();
        assert_eq!(outbox.stalled_for(), Duration::ZERO);
    }

    #[test]
    fn an_outbox_refuses_past_its_limit_and_congests_past_high_water() {
        let o = Outbox::new(limits(10, 20));
        o.push("12345678".into()).unwrap();
        assert!(!o.is_congested());
        o.push("12345".into()).unwrap();
        assert!(o.is_congested(), "13 > high water 10");
        assert_eq!(
            o.push("12345678".into()),
            Err(OutboxError::Full { limit: 20 }),
            "21 > limit 20"
        );
        assert_eq!(o.pending_bytes(), 13, "a refused frame is not kept");
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = drained.clone();
        o.on_drained(Box::new(move || {
            d.store(true, std::sync::atomic::Ordering::SeqCst)
        }));
        assert_eq!(o.take_texts().len(), 2);
        assert!(drained.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!o.is_congested());
    }

    #[test]
    fn one_frame_larger_than_the_limit_still_goes_to_an_empty_outbox() {
        let o = Outbox::new(limits(2, 4));
        o.push("123456".into()).unwrap();
        assert!(o.push("1".into()).is_err());
    }

    #[test]
    fn close_drops_pending_output_and_later_pushes() {
        let o = Outbox::new(limits(10, 100));
        o.push("abc".into()).unwrap();
        o.close(CloseCode::Policy, &"x".repeat(500));
        assert_eq!(o.pending_bytes(), 0);
        assert_eq!(o.push("more".into()), Err(OutboxError::Closed));
        let reason = o.close_reason().unwrap();
        assert_eq!(reason.description.unwrap().len(), MAX_CLOSE_REASON);
    }

    #[test]
    fn close_after_pending_sends_the_queue_first() {
        let o = Outbox::new(limits(10, 100));
        o.push("pong".into()).unwrap();
        o.close_after_pending(CloseCode::Policy, "duplicate");
        assert_eq!(o.push("more".into()), Err(OutboxError::Closed));
        let texts = o.take_texts();
        assert_eq!(texts, vec![ByteString::from("pong")], "the pong is kept");
        assert_eq!(o.close_reason().unwrap().code, CloseCode::Policy);
    }

    #[actix::test]
    async fn a_writer_sends_the_pending_pong_before_the_close_frame() {
        let o = Outbox::new(limits(10, 100));
        o.push("pong".into()).unwrap();
        o.close_after_pending(CloseCode::Policy, "duplicate");
        let mut sent = vec![];
        while let Some(m) = o.next().await {
            sent.push(m);
        }
        assert!(
            matches!(&sent[0], Message::Text(t) if t == "pong"),
            "{sent:?}"
        );
        assert!(
            matches!(&sent[1], Message::Close(Some(r)) if r.code == CloseCode::Policy),
            "{sent:?}"
        );
        assert_eq!(sent.len(), 2);
    }

    #[actix::test]
    async fn the_gate_stops_reading_until_credit_comes_back() {
        let budget = Budget::new(1 << 20);
        let window = budget.window(3 * (10 + FRAME_OVERHEAD));
        let metrics = Arc::new(Metrics::new());
        let outbox = Outbox::new(OutboxLimits::default()).metered(metrics.clone());
        let polled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = polled.clone();
        let frames = futures_util::stream::iter((0..10).map(move |i| {
            p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            format!("frame-{i:04}")
        }));
        let mut gated = Gated::new(frames, window.clone(), outbox, |s: &String| s.len());
        let mut held = vec![];
        for _ in 0..3 {
            held.push(gated.next().await.unwrap());
        }
        // The window is full: the next poll reads one frame, then waits.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut gated).poll_next(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll_next(&mut cx).is_pending());
        assert_eq!(
            polled.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "no read past the one frame waiting for room"
        );
        assert_eq!(
            metrics.backpressure_pauses.get(Pause::Window),
            1,
            "one pause, however often it is polled"
        );
        assert_eq!(metrics.frames_received.get(), 3, "handed on so far");
        drop(held.remove(0));
        let (next, _credit) = gated.next().await.unwrap();
        assert_eq!(next, "frame-0003", "order kept");
        assert_eq!(metrics.frames_received.get(), 4);
        assert_eq!(metrics.received_bytes.get(), 40);
        assert_eq!(budget.available(), (1 << 20) - 3 * (10 + FRAME_OVERHEAD));
    }

    #[actix::test]
    async fn the_gate_pauses_while_the_connections_output_is_congested() {
        let budget = Budget::new(1 << 20);
        let outbox = Outbox::new(limits(4, 100));
        outbox.push("123456".into()).unwrap();
        let frames = futures_util::stream::iter(vec!["a".to_string()]);
        let mut gated = Gated::new(
            frames,
            budget.window(1 << 16),
            outbox.clone(),
            |s: &String| s.len(),
        );
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut gated).poll_next(&mut cx).is_pending());
        outbox.take_texts();
        assert_eq!(gated.next().await.unwrap().0, "a");
    }

    #[actix::test]
    async fn a_writer_that_cannot_write_gives_up_after_the_timeout() {
        tokio::time::pause();
        // A sink that never accepts anything: a peer frozen at the TCP level.
        struct Frozen;
        impl Sink<Message> for Frozen {
            type Error = ();
            fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
                Poll::Pending
            }
            fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), ()> {
                Ok(())
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
                Poll::Pending
            }
            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
                Poll::Pending
            }
        }
        let outbox = Outbox::new(limits(10, 100));
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn_writer(outbox.clone(), Frozen, move |end| {
            let _ = tx.send(end);
        });
        outbox.push("hello".into()).unwrap();
        assert_eq!(rx.await.unwrap(), WriterEnd::Stalled);
        assert_eq!(outbox.push("more".into()), Err(OutboxError::Closed));
    }
}
