//! Split connections: a reader half and a writer half usable from different tasks, and
//! broadcast groups that send one prepared message to many connections.
//!
//! [`WebSocket::split`] hands the connection to a task of its own, which drives it
//! exactly as an unsplit `WebSocket` (keepalive, closing handshake, corked writes). The
//! halves talk to it through two queues under one lock that is held only to push or pop
//! (never across an await or a system call), and the queues give their memory back
//! whenever they empty. The [`WriteHalf`] is `Clone`, so many tasks (or a [`Broadcast`]
//! group) can send to one connection.
//!
//! Cancel safety, for `tokio::select!`:
//! - [`ReadHalf::recv`] is cancel-safe: a message is either returned or stays queued.
//! - [`WriteHalf::feed`] and [`WriteHalf::send`] are cancel-safe: cancelled before they
//!   return, the message was not queued at all; once queued, it leaves whole. No frame
//!   is ever half-written because a future was dropped.
//! - [`WriteHalf::flush`] is cancel-safe: cancelling it only stops the waiting.
//!
//! The unsplit [`WebSocket`] is cancel-safe too: `recv` keeps partial input inside the
//! connection, and `feed`/`flush` keep queued frames in its write queue.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Notify};
use volley_proto::{CloseCode, PreparedMessage};

use crate::config::SlowReader;
use crate::error::Error;
use crate::message::Message;
use crate::websocket::{ConnectionInfo, WebSocket};

/// Messages received and not yet taken by the reader half: past this many, the
/// connection task stops reading (TCP pushes back on the peer).
const INBOX: usize = 256;
/// Commands (messages to send) the writer halves may queue before `feed` waits, on top
/// of the byte limit.
const OUTBOX: usize = 1024;

/// What the writer halves ask the connection task to do.
enum Command {
    Message(Message, usize),
    Prepared(PreparedMessage, usize),
    Flush(oneshot::Sender<Result<(), Error>>),
}

/// State shared by the halves and the connection task.
///
/// One short-held lock guards the queues both ways. They are plain `VecDeque`s that
/// give their memory back whenever their consumer is about to wait, so an idle split
/// connection holds no queue memory at all (channels keep blocks of slots allocated for
/// their whole life, which for a broadcast to thousands of mostly idle members was most
/// of each member's memory).
struct Shared {
    inner: Mutex<Inner>,
    /// Woken when the writers may find room: commands were taken, buffered bytes were
    /// written, or the connection ended.
    drained: Notify,
    info: ConnectionInfo,
    limit: usize,
    policy: SlowReader,
}

#[derive(Default)]
struct Inner {
    /// Messages from the writer halves, in order.
    commands: VecDeque<Command>,
    /// Slow reader: drop what has not started to leave and close with this code,
    /// ahead of any command.
    abort: Option<CloseCode>,
    /// Received items the reader half has not taken.
    inbox: VecDeque<Result<Message, Error>>,
    /// Bytes in `commands`.
    queued: usize,
    /// Bytes in the connection's own write buffer, as of its last step.
    buffered: usize,
    dropped: u64,
    /// The connection task has ended.
    closed: bool,
    /// The reader half has been dropped: received items are discarded.
    reader_gone: bool,
    /// The connection task, waiting for a command or for room in the inbox.
    driver: Option<Waker>,
    /// The reader half, waiting for an item.
    reader: Option<Waker>,
}

impl Inner {
    /// Records the connection's write buffer; true when it shrank (room for writers).
    fn set_buffered(&mut self, buffered: usize) -> bool {
        let freed = buffered < self.buffered;
        self.buffered = buffered;
        freed
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent between statements that can
        // panic (none allocate halfway through an update), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a message of `len` bytes fits under the byte limit.
    fn has_room(&self, inner: &Inner, len: usize) -> bool {
        let used = inner.queued + inner.buffered;
        used < self.limit || len == 0 && used == 0
    }
}

/// Wakes the waker taken from the shared state, after the lock is released.
fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The receiving half of a split connection.
pub struct ReadHalf {
    shared: Arc<Shared>,
}

/// The sending half of a split connection. Cloning it gives another sender to the same
/// connection.
#[derive(Clone)]
pub struct WriteHalf {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReadHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadHalf").field("id", &self.shared.info.id()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteHalf").field("id", &self.shared.info.id()).finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> WebSocket<S> {
    /// Splits the connection into a reader and a writer half, spawning a task on the
    /// current tokio runtime that drives it. Keepalive, the closing handshake and the
    /// slow-reader policy keep working; the task ends with the connection.
    pub fn split(mut self) -> (ReadHalf, WriteHalf) {
        let info = self.take_info();
        let (limit, policy) = self.write_policy();
        // The halves apply the policy; the connection itself only waits for its buffer.
        self.set_write_policy(SlowReader::Wait);
        let shared = Arc::new(Shared { inner: Mutex::default(), drained: Notify::new(), info, limit, policy });
        tokio::spawn(Driver { ws: self, shared: shared.clone(), current: None });
        (ReadHalf { shared: shared.clone() }, WriteHalf { shared })
    }
}

/// One thing for the connection task to do.
enum Step {
    Abort(CloseCode),
    Command(Command),
    Received(Option<Result<Message, Error>>),
}

/// The connection task. It is written as a plain future rather than an `async fn`,
/// whose state would hold the connection twice (a moved-in argument keeps its own slot)
/// next to the state of every await: this way each split connection's task is about
/// the size of the connection.
struct Driver<S> {
    ws: WebSocket<S>,
    shared: Arc<Shared>,
    /// A command taken from the queue that waits for room in the connection's buffer
    /// (a message) or for the buffer to be written (a flush).
    current: Option<Command>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Driver<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some(cmd) = this.current.take() {
                let Poll::Ready(taken) = this.run(cmd, cx) else {
                    return Poll::Pending;
                };
                this.progress(taken);
                continue;
            }
            match ready!(next_step(&mut this.ws, &this.shared, cx)) {
                Step::Abort(code) => {
                    this.ws.abort_with(code);
                    this.progress(0);
                }
                Step::Command(cmd) => this.current = Some(cmd),
                Step::Received(Some(item)) => {
                    let mut inner = this.shared.lock();
                    // The connection writes what is queued before each read, so a
                    // message may come with room freed for the writers.
                    let freed = inner.set_buffered(this.ws.buffered_amount());
                    if inner.reader_gone {
                        drop(inner);
                    } else {
                        inner.inbox.push_back(item);
                        let reader = inner.reader.take();
                        drop(inner);
                        wake(reader);
                    }
                    if freed {
                        this.shared.drained.notify_waiters();
                    }
                }
                Step::Received(None) => {
                    this.finish();
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    /// Hands a command to the connection; ready with the queued bytes it accounted
    /// for. Pending, it keeps the command for the next poll.
    fn run(&mut self, cmd: Command, cx: &mut Context<'_>) -> Poll<usize> {
        match cmd {
            Command::Message(msg, len) => match self.ws.poll_write_ready(cx) {
                Poll::Ready(Ok(true)) => {
                    let _ = self.ws.queue(msg);
                    Poll::Ready(len)
                }
                // The connection has ended (or, never with its `Wait` policy, dropped it).
                Poll::Ready(_) => Poll::Ready(len),
                Poll::Pending => {
                    self.current = Some(Command::Message(msg, len));
                    Poll::Pending
                }
            },
            Command::Prepared(msg, len) => match self.ws.poll_write_ready(cx) {
                Poll::Ready(Ok(true)) => {
                    let _ = self.ws.queue_prepared(&msg);
                    Poll::Ready(len)
                }
                Poll::Ready(_) => Poll::Ready(len),
                Poll::Pending => {
                    self.current = Some(Command::Prepared(msg, len));
                    Poll::Pending
                }
            },
            Command::Flush(reply) => match self.ws.poll_flush_all(cx) {
                Poll::Ready(r) => {
                    let _ = reply.send(r.map_err(Error::Io));
                    Poll::Ready(0)
                }
                Poll::Pending => {
                    self.current = Some(Command::Flush(reply));
                    Poll::Pending
                }
            },
        }
    }

    /// Accounts for a handled command and wakes the writers waiting for room.
    fn progress(&mut self, taken: usize) {
        let mut inner = self.shared.lock();
        inner.queued -= taken;
        inner.buffered = self.ws.buffered_amount();
        drop(inner);
        self.shared.drained.notify_waiters();
    }

    /// The connection has ended: the halves learn it.
    fn finish(&mut self) {
        let mut inner = self.shared.lock();
        inner.closed = true;
        inner.queued = 0;
        inner.buffered = 0;
        inner.abort = None;
        // Pending flushes learn that the connection is gone.
        let commands = std::mem::take(&mut inner.commands);
        let reader = inner.reader.take();
        drop(inner);
        drop(commands);
        wake(reader);
        self.shared.drained.notify_waiters();
    }
}

/// The next step for the connection task: an abort, then the writers' commands in
/// order, then the connection's own progress (input, keepalive, writing its buffer).
fn next_step<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    shared: &Shared,
    cx: &mut Context<'_>,
) -> Poll<Step> {
    let mut inner = shared.lock();
    if let Some(code) = inner.abort.take() {
        return Poll::Ready(Step::Abort(code));
    }
    if let Some(cmd) = inner.commands.pop_front() {
        return Poll::Ready(Step::Command(cmd));
    }
    if inner.commands.capacity() > 0 {
        inner.commands = VecDeque::new();
    }
    register(&mut inner.driver, cx);
    let inbox_full = !inner.reader_gone && inner.inbox.len() >= INBOX;
    drop(inner);
    if inbox_full {
        // The reader half wakes this task when it takes an item.
        return Poll::Pending;
    }
    let polled = ws.poll_recv(cx);
    if polled.is_pending() {
        // The connection may have written part of its buffer before waiting.
        let buffered = ws.buffered_amount();
        let mut inner = shared.lock();
        let freed = inner.set_buffered(buffered);
        drop(inner);
        if freed {
            shared.drained.notify_waiters();
        }
    }
    polled.map(Step::Received)
}

impl ReadHalf {
    /// Receives the next message; `None` once the connection has closed (the item
    /// before it is the peer's close frame or the error that ended the connection).
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message (the body of [`ReadHalf::recv`] and of the `Stream`
    /// implementation).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        let mut inner = self.shared.lock();
        if let Some(item) = inner.inbox.pop_front() {
            // The connection task stops reading while the inbox is full.
            let driver = if inner.inbox.len() + 1 == INBOX { inner.driver.take() } else { None };
            drop(inner);
            wake(driver);
            return Poll::Ready(Some(item));
        }
        if inner.closed {
            return Poll::Ready(None);
        }
        if inner.inbox.capacity() > 0 {
            inner.inbox = VecDeque::new();
        }
        register(&mut inner.reader, cx);
        Poll::Pending
    }

    /// The connection's id, addresses, target, headers and agreed protocol.
    pub fn info(&self) -> &ConnectionInfo {
        &self.shared.info
    }
}

impl Drop for ReadHalf {
    fn drop(&mut self) {
        // Nobody reads any more: the connection keeps running (keepalive, writes, the
        // closing handshake) and discards what arrives.
        let mut inner = self.shared.lock();
        inner.reader_gone = true;
        let inbox = std::mem::take(&mut inner.inbox);
        let driver = inner.driver.take();
        drop(inner);
        drop(inbox);
        wake(driver);
    }
}

impl futures_core::Stream for ReadHalf {
    type Item = Result<Message, Error>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

/// What happened to a message offered without waiting.
enum Offer {
    Queued,
    /// Dropped under [`SlowReader::DropNewest`] (and counted).
    Dropped,
    /// Not queued now, so handed back: the command bound is reached, or the byte limit
    /// under [`SlowReader::Wait`].
    Full(Command),
    /// Not queued, ever: the connection has ended, or is being closed as a slow reader.
    Refused(Error),
}

impl WriteHalf {
    /// The connection's id, addresses, target, headers and agreed protocol.
    pub fn info(&self) -> &ConnectionInfo {
        &self.shared.info
    }

    /// Bytes queued for sending and not yet written to the transport.
    pub fn buffered_amount(&self) -> usize {
        let inner = self.shared.lock();
        inner.queued + inner.buffered
    }

    /// Messages dropped by the [`SlowReader::DropNewest`] policy (and by a
    /// [`Broadcast`] that found the member's buffer full).
    pub fn dropped_messages(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Queues the command if there is room, applying the slow-reader policy when the
    /// byte limit is reached (`policed`; a close frame or a flush only waits for the
    /// command bound).
    fn offer(&self, cmd: Command, len: usize, policed: bool) -> Offer {
        let shared = &*self.shared;
        let mut inner = shared.lock();
        if inner.closed {
            return Offer::Refused(Error::Closed);
        }
        if inner.commands.len() >= OUTBOX {
            return Offer::Full(cmd);
        }
        if !policed || shared.has_room(&inner, len) {
            inner.queued += len;
            inner.commands.push_back(cmd);
            let driver = inner.driver.take();
            drop(inner);
            wake(driver);
            return Offer::Queued;
        }
        match shared.policy {
            SlowReader::Wait => Offer::Full(cmd),
            SlowReader::DropNewest => {
                inner.dropped += 1;
                Offer::Dropped
            }
            SlowReader::Close(code) => {
                inner.abort.get_or_insert(code);
                let driver = inner.driver.take();
                drop(inner);
                wake(driver);
                Offer::Refused(Error::SlowReader(code))
            }
        }
    }

    /// Queues a command, waiting for room as the policy says. Cancel-safe: the command
    /// is queued whole in one step, or not at all.
    async fn enqueue(&self, mut cmd: Command, len: usize, policed: bool) -> Result<(), Error> {
        loop {
            let notified = self.shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.offer(cmd, len, policed) {
                Offer::Queued | Offer::Dropped => return Ok(()),
                Offer::Refused(e) => return Err(e),
                Offer::Full(back) => cmd = back,
            }
            notified.await;
        }
    }

    /// Queues a message, applying the connection's [`SlowReader`] policy when its
    /// write buffer is full. It leaves with the next batch the connection writes.
    pub async fn feed(&self, msg: Message) -> Result<(), Error> {
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close(_) => 0,
        };
        // Close frames are never dropped by the policy.
        let policed = !matches!(msg, Message::Close(_));
        self.enqueue(Command::Message(msg, len), len, policed).await
    }

    /// Queues a prepared message (encoded once for many connections).
    pub async fn feed_prepared(&self, msg: &PreparedMessage) -> Result<(), Error> {
        let len = msg.payload().len();
        self.enqueue(Command::Prepared(msg.clone(), len), len, true).await
    }

    /// Queues a message and waits until everything queued so far is written.
    pub async fn send(&self, msg: Message) -> Result<(), Error> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Waits until everything queued so far is written to the transport.
    pub async fn flush(&self) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        self.enqueue(Command::Flush(reply), 0, false).await?;
        done.await.map_err(|_| Error::Closed)?
    }

    /// Starts the closing handshake; the reader half sees its end.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.send(Message::Close(Some(volley_proto::CloseFrame::new(code, reason)))).await
    }

    /// Queues a prepared message without waiting: the broadcast path. Returns `false`
    /// when the message was not queued (the buffer is full, the connection closed or
    /// is being closed for reading too slowly).
    pub fn try_feed_prepared(&self, msg: &PreparedMessage) -> bool {
        matches!(self.try_offer_prepared(msg), Offer::Queued)
    }

    fn try_offer_prepared(&self, msg: &PreparedMessage) -> Offer {
        let len = msg.payload().len();
        let offer = self.offer(Command::Prepared(msg.clone(), len), len, true);
        if let Offer::Full(_) = offer {
            // A broadcast never waits for one slow member.
            self.shared.lock().dropped += 1;
        }
        offer
    }
}

/// A group of connections that receive the same messages, each encoded (and
/// compressed, see [`PreparedMessage::with_deflate`]) once for all of them.
///
/// Sending never waits for a slow member: a member whose write buffer is full loses the
/// message (or is closed, under [`SlowReader::Close`]). Members whose connection ended
/// are removed on the next send.
#[derive(Debug, Default)]
pub struct Broadcast {
    members: Mutex<HashMap<u64, WriteHalf>>,
}

impl Broadcast {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection (by its writer half); returns its id.
    pub fn join(&self, member: WriteHalf) -> u64 {
        let id = member.info().id();
        self.lock().insert(id, member);
        id
    }

    /// Removes a connection.
    pub fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the group is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Sends `msg` to every member; returns how many queued it.
    pub fn send(&self, msg: &PreparedMessage) -> usize {
        let mut queued = 0;
        self.lock().retain(|_, m| match m.try_offer_prepared(msg) {
            Offer::Queued => {
                queued += 1;
                true
            }
            Offer::Full(_) | Offer::Dropped => true,
            Offer::Refused(_) => !m.is_closed(),
        });
        queued
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, WriteHalf>> {
        // A panic while holding the lock cannot leave the map inconsistent (every
        // operation on it is a single call), so a poisoned lock is still usable.
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }
}
