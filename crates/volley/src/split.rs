//! Split connections: a reader half and a writer half usable from different tasks, and
//! broadcast groups that send one prepared message to many connections.
//!
//! [`WebSocket::split`] hands the connection to a task of its own, which drives it
//! exactly as an unsplit `WebSocket` (keepalive, closing handshake, corked writes). The
//! halves talk to it through two queues under one lock that is held only to push or pop
//! (never across an await or a system call), and the queues give their memory back
//! whenever they empty. The [`WriteHalf`] is `Clone`, so many tasks (or a [`Broadcast`]
//! group) can send to one connection, and a `Sink` of messages. The task keeps reading,
//! answering pings and running the keepalive while a writer waits for room; once the
//! reader half and every writer half are dropped it closes the connection (1001) after
//! what was queued, and ends. [`ReadHalf::reunite`] gives the connection back.
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

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Notify};
use volley_proto::{CloseCode, PreparedMessage, SendError};

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
    /// The transport's type, for [`ReadHalf::reunite`].
    transport: TypeId,
}

/// The connection handed back to [`ReadHalf::reunite`], or `None` when the reader half
/// holds messages it has not handed out.
type Reunited = Option<Box<dyn Any + Send>>;

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
    /// A close frame was queued by a writer, or sent by the connection itself (the
    /// echo of the peer's, a keepalive or slow-reader close): nothing more may be sent.
    close_queued: bool,
    /// The reader half has been dropped: received items are discarded.
    reader_gone: bool,
    /// Writer halves alive; when none is and the reader half is gone, the connection
    /// closes on its own.
    writers: usize,
    /// The connection task, waiting for a command or for room in the inbox.
    driver: Option<Waker>,
    /// The reader half, waiting for an item.
    reader: Option<Waker>,
    /// Writer halves used as a `Sink`, waiting for room (allocated only while some do).
    sinks: Vec<Waker>,
    /// [`ReadHalf::reunite`] asks for the connection back.
    reunite: Option<oneshot::Sender<Reunited>>,
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

    /// Wakes every writer waiting for room (call without the lock held).
    fn wake_writers(&self) {
        self.drained.notify_waiters();
        let sinks = std::mem::take(&mut self.lock().sinks);
        for w in sinks {
            w.wake();
        }
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
///
/// Dropping it leaves the connection running for the writer halves (what arrives is
/// discarded); when the reader half and every writer half are gone, the connection
/// closes (1001, going away) on its own.
pub struct ReadHalf {
    shared: Arc<Shared>,
}

/// The sending half of a split connection. Cloning it gives another sender to the same
/// connection.
///
/// It checks each message as the unsplit [`WebSocket`] does, and reports a message it
/// cannot send as an error: a ping or pong payload over 125 bytes, a close frame with
/// a code that may not be sent or a reason over 123 bytes
/// ([`Error::Send`]); anything after a close frame ([`SendError::Closed`]); anything
/// once the connection has ended ([`Error::Closed`]).
pub struct WriteHalf {
    shared: Arc<Shared>,
    /// The flush under way through the `Sink` implementation.
    sink_flush: Option<oneshot::Receiver<Result<(), Error>>>,
}

impl Clone for WriteHalf {
    fn clone(&self) -> Self {
        self.shared.lock().writers += 1;
        WriteHalf { shared: self.shared.clone(), sink_flush: None }
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.writers -= 1;
        // The last half gone: the connection task closes the connection.
        let driver = if inner.writers == 0 && inner.reader_gone { inner.driver.take() } else { None };
        drop(inner);
        wake(driver);
    }
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
    /// slow-reader policy keep working while either half waits; the task ends with the
    /// connection, and the connection closes (1001, going away) once both halves and
    /// every clone of the writer are dropped.
    ///
    /// An error ([`Error::NoRuntime`]) outside a tokio runtime.
    pub fn split(mut self) -> Result<(ReadHalf, WriteHalf), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let info = self.take_info();
        let (limit, policy) = self.write_policy();
        // The halves apply the policy; the connection itself only waits for its buffer.
        self.set_write_policy(SlowReader::Wait);
        let inner = Inner {
            commands: VecDeque::new(),
            abort: None,
            inbox: VecDeque::new(),
            queued: 0,
            buffered: 0,
            dropped: 0,
            closed: false,
            close_queued: self.is_close_sent(),
            reader_gone: false,
            writers: 1,
            driver: None,
            reader: None,
            sinks: Vec::new(),
            reunite: None,
        };
        let transport = TypeId::of::<S>();
        let shared = Shared { inner: Mutex::new(inner), drained: Notify::new(), info, limit, policy, transport };
        let shared = Arc::new(shared);
        runtime.spawn(Driver { ws: Some(self), shared: shared.clone(), current: None, orphaned: false });
        Ok((ReadHalf { shared: shared.clone() }, WriteHalf { shared, sink_flush: None }))
    }
}

/// The connection task. It is written as a plain future rather than an `async fn`,
/// whose state would hold the connection twice (a moved-in argument keeps its own slot)
/// next to the state of every await: this way each split connection's task is about
/// the size of the connection.
///
/// Each poll hands the writers' commands to the connection for as long as it takes
/// them without waiting, then polls the connection's input, which also runs its
/// keepalive and idle timers, the closing handshake and the writing of its buffer.
/// A command that waits (for room in the buffer, or for a flush) never stops the
/// reading: a peer that streams at us while we stream at it is still read, pings are
/// still answered, and a peer that stops reading is still timed out.
struct Driver<S> {
    /// The connection; `None` once handed back to [`ReadHalf::reunite`].
    ws: Option<WebSocket<S>>,
    shared: Arc<Shared>,
    /// A command taken from the queue that waits for room in the connection's buffer
    /// (a message) or for the buffer to be written (a flush).
    current: Option<Command>,
    /// Every half is gone: the connection is closing on its own.
    orphaned: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Future for Driver<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.reunite() {
                return Poll::Ready(());
            }
            let inbox_full = this.hand_over(cx);
            if inbox_full {
                // Nothing is read until the reader half takes an item (it wakes this
                // task), but the buffer keeps going out and the writers keep going in.
                if this.ws().buffered_amount() > 0 {
                    let _ = this.ws().poll_flush_all(cx);
                }
                if this.retry_current(cx) {
                    continue;
                }
                this.sync();
                return Poll::Pending;
            }
            match this.ws().poll_recv(cx) {
                Poll::Ready(Some(item)) => this.deliver(item),
                Poll::Ready(None) => {
                    this.finish();
                    return Poll::Ready(());
                }
                Poll::Pending => {
                    // The connection wrote what it could before waiting, which may
                    // have made room for the command in hand.
                    if this.retry_current(cx) {
                        continue;
                    }
                    this.sync();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Driver<S> {
    fn ws(&mut self) -> &mut WebSocket<S> {
        // Taken only by `reunite`, after which the task is never polled again.
        self.ws.as_mut().expect("the connection is taken only when the task ends")
    }

    /// The connection's buffered bytes, and whether it has sent a close frame.
    fn write_state(&mut self) -> (usize, bool) {
        let ws = self.ws();
        (ws.buffered_amount(), ws.is_close_sent())
    }

    /// Hands the connection back to [`ReadHalf::reunite`] if it asks, with what the
    /// writers queued; true when the task is over. While the reader half holds
    /// messages it has not handed out, the answer is no (they would be lost).
    fn reunite(&mut self) -> bool {
        let mut inner = self.shared.lock();
        let Some(reply) = inner.reunite.take() else {
            return false;
        };
        if !inner.inbox.is_empty() {
            drop(inner);
            let _ = reply.send(None);
            return false;
        }
        inner.closed = true;
        let commands = std::mem::take(&mut inner.commands);
        drop(inner);
        let current = self.current.take();
        let mut ws = self.ws.take().expect("the connection is taken only once");
        for cmd in current.into_iter().chain(commands) {
            // Queued whatever the room: the unsplit connection writes it.
            let _ = match cmd {
                Command::Message(msg, _) => ws.queue(msg),
                Command::Prepared(msg, _) => ws.queue_prepared(&msg),
                Command::Flush(_) => Ok(()),
            };
        }
        ws.set_write_policy(self.shared.policy);
        ws.restore_info(self.shared.info.clone());
        if let Err(back) = reply.send(Some(Box::new(ws))) {
            // `reunite` was cancelled: the connection goes with it.
            drop(back);
        }
        true
    }

    /// Hands an abort, then the writers' commands in order, to the connection for as
    /// long as it takes them; once every half is gone, the rest of the queue and a
    /// close frame. True when the inbox is full (the connection must not read).
    fn hand_over(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let cmd = {
                let mut inner = self.shared.lock();
                if let Some(code) = inner.abort.take() {
                    drop(inner);
                    self.ws().abort_with(code, "");
                    self.progress(0);
                    continue;
                }
                if !self.orphaned && inner.reader_gone && inner.writers == 0 {
                    self.orphaned = true;
                }
                let next = match self.current.take() {
                    Some(cmd) => Some(cmd),
                    None => inner.commands.pop_front(),
                };
                match next {
                    Some(cmd) => cmd,
                    None => {
                        if inner.commands.capacity() > 0 {
                            inner.commands = VecDeque::new();
                        }
                        register(&mut inner.driver, cx);
                        let inbox_full = !inner.reader_gone && inner.inbox.len() >= INBOX;
                        drop(inner);
                        if self.orphaned && !self.ws().is_close_sent() {
                            // Nobody can read or write any more: close, after what the
                            // writers queued (the close timeout bounds the rest).
                            self.ws().local_close(CloseCode::GOING_AWAY, "");
                            self.progress(0);
                        }
                        return inbox_full;
                    }
                }
            };
            match self.run(cmd, cx) {
                Poll::Ready(taken) => self.progress(taken),
                Poll::Pending => {
                    // Wait for room, but keep reading meanwhile.
                    let mut inner = self.shared.lock();
                    register(&mut inner.driver, cx);
                    return !inner.reader_gone && inner.inbox.len() >= INBOX;
                }
            }
        }
    }

    /// Hands a command to the connection; ready with the queued bytes it accounted
    /// for. Pending, it keeps the command for the next poll.
    fn run(&mut self, cmd: Command, cx: &mut Context<'_>) -> Poll<usize> {
        let (queued, len) = match cmd {
            Command::Flush(reply) => {
                return match self.ws().poll_flush_all(cx) {
                    Poll::Ready(r) => {
                        let _ = reply.send(r.map_err(Error::Io));
                        Poll::Ready(0)
                    }
                    Poll::Pending => {
                        self.current = Some(Command::Flush(reply));
                        Poll::Pending
                    }
                };
            }
            // Once every half is gone, what was queued goes in without waiting for
            // room: nobody is left to wait, and the close timeout bounds the rest.
            cmd if !self.orphaned => match ready_for(self.ws(), &cmd, cx) {
                Poll::Ready(Ok(_)) => match cmd {
                    Command::Message(msg, len) => (self.ws().queue(msg), len),
                    Command::Prepared(msg, len) => (self.ws().queue_prepared(&msg), len),
                    Command::Flush(_) => unreachable!("handled above"),
                },
                // The connection has ended: the command goes nowhere.
                Poll::Ready(Err(_)) => return Poll::Ready(command_len(&cmd)),
                Poll::Pending => {
                    self.current = Some(cmd);
                    return Poll::Pending;
                }
            },
            Command::Message(msg, len) => (self.ws().queue(msg), len),
            Command::Prepared(msg, len) => (self.ws().queue_prepared(&msg), len),
        };
        if let Err(e) = queued {
            // Checked by the writer, so only the connection's own state refuses it:
            // a close frame went out (the echo of the peer's, or ours) in between.
            tracing::debug!(id = self.shared.info.id(), error = %e, "message not sent");
        }
        Poll::Ready(len)
    }

    /// Tries the command in hand once more; true when it was handed over.
    fn retry_current(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(cmd) = self.current.take() else {
            return false;
        };
        match self.run(cmd, cx) {
            Poll::Ready(taken) => {
                self.progress(taken);
                true
            }
            Poll::Pending => false,
        }
    }

    /// Hands a received item to the reader half (or drops it, if it is gone).
    fn deliver(&mut self, item: Result<Message, Error>) {
        let (buffered, close_sent) = self.write_state();
        let mut inner = self.shared.lock();
        // The connection writes what is queued before each read, so a message may come
        // with room freed for the writers.
        let freed = inner.set_buffered(buffered);
        inner.close_queued |= close_sent;
        if inner.reader_gone {
            drop(inner);
        } else {
            inner.inbox.push_back(item);
            let reader = inner.reader.take();
            drop(inner);
            wake(reader);
        }
        if freed {
            self.shared.wake_writers();
        }
    }

    /// Accounts for a handled command and wakes the writers waiting for room.
    fn progress(&mut self, taken: usize) {
        let (buffered, close_sent) = self.write_state();
        let mut inner = self.shared.lock();
        inner.queued -= taken;
        inner.buffered = buffered;
        inner.close_queued |= close_sent;
        drop(inner);
        self.shared.wake_writers();
    }

    /// Records the connection's state before the task waits: the buffer may have been
    /// written in part, and a close frame may have gone out.
    fn sync(&mut self) {
        let (buffered, close_sent) = self.write_state();
        let mut inner = self.shared.lock();
        let freed = inner.set_buffered(buffered);
        inner.close_queued |= close_sent;
        drop(inner);
        if freed {
            self.shared.wake_writers();
        }
    }

    /// The connection has ended: the halves learn it.
    fn finish(&mut self) {
        let mut inner = self.shared.lock();
        inner.closed = true;
        inner.close_queued = true;
        inner.queued = 0;
        inner.buffered = 0;
        inner.abort = None;
        // Pending flushes learn that the connection is gone.
        let commands = std::mem::take(&mut inner.commands);
        let reader = inner.reader.take();
        drop(inner);
        drop(commands);
        self.current = None;
        wake(reader);
        self.shared.wake_writers();
    }
}

/// Whether the connection takes a message command now: a pong or a close frame at
/// once, anything else when there is room in its buffer.
fn ready_for<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    cmd: &Command,
    cx: &mut Context<'_>,
) -> Poll<Result<bool, Error>> {
    match cmd {
        Command::Message(msg, _) => ws.poll_admit(cx, msg),
        _ => ws.poll_write_ready(cx),
    }
}

/// The bytes a command accounts for in [`Inner::queued`].
fn command_len(cmd: &Command) -> usize {
    match cmd {
        Command::Message(_, len) | Command::Prepared(_, len) => *len,
        Command::Flush(_) => 0,
    }
}

impl ReadHalf {
    /// Puts the halves back together into the connection they were split from, with
    /// everything the writers queued still to be sent. `S` is the connection's
    /// transport type.
    ///
    /// Fails, handing both halves back, when they come from different connections,
    /// when `S` is not the transport type, when other clones of the writer half exist,
    /// when the connection has ended, or while this reader half holds received
    /// messages it has not handed out (receive them first). Cancelling the future
    /// after it has asked for the connection drops the connection.
    pub async fn reunite<S: Send + 'static>(self, write: WriteHalf) -> Result<WebSocket<S>, ReuniteError> {
        let refused = |read, write, why| Err(ReuniteError { read, write, why });
        if !Arc::ptr_eq(&self.shared, &write.shared) {
            return refused(self, write, "the halves come from different connections");
        }
        if self.shared.transport != TypeId::of::<S>() {
            return refused(self, write, "the connection's transport is of another type");
        }
        let answer = {
            let mut inner = self.shared.lock();
            if inner.closed {
                drop(inner);
                return refused(self, write, "the connection has ended");
            }
            if inner.writers > 1 {
                drop(inner);
                return refused(self, write, "other clones of the writer half exist");
            }
            let (reply, answer) = oneshot::channel();
            inner.reunite = Some(reply);
            let driver = inner.driver.take();
            drop(inner);
            wake(driver);
            answer
        };
        match answer.await {
            Ok(Some(ws)) => match ws.downcast::<WebSocket<S>>() {
                Ok(ws) => Ok(*ws),
                Err(_) => unreachable!("the transport type was checked"),
            },
            Ok(None) => refused(self, write, "the reader half holds messages it has not handed out"),
            Err(_) => refused(self, write, "the connection has ended"),
        }
    }

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
        // closing handshake) and discards what arrives; with no writer left either,
        // it closes.
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

/// [`ReadHalf::reunite`] could not put the halves back together: why, and the halves.
pub struct ReuniteError {
    /// The reader half, as it was.
    pub read: ReadHalf,
    /// The writer half, as it was.
    pub write: WriteHalf,
    why: &'static str,
}

impl std::fmt::Debug for ReuniteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReuniteError").field("why", &self.why).finish_non_exhaustive()
    }
}

impl std::fmt::Display for ReuniteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reunite the halves: {}", self.why)
    }
}

impl std::error::Error for ReuniteError {}

/// What happened to a message offered without waiting.
enum Offer {
    Queued,
    /// Dropped under [`SlowReader::DropNewest`] (and counted).
    Dropped,
    /// Not queued now, so handed back: the command bound is reached, or the byte limit
    /// under [`SlowReader::Wait`].
    Full(Command),
    /// Not queued, ever: the message may not be sent, the connection has ended, or it
    /// is being closed as a slow reader.
    Refused(Error),
}

/// How a command is offered to the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// A data message or a ping: the slow-reader policy applies at the byte limit.
    Policed,
    /// A close frame or a flush: it waits only for the command bound.
    Unpoliced,
    /// Queued whatever the bounds (a `Sink`'s `start_send` after `poll_ready`).
    Forced,
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
    /// byte limit is reached (see [`Admit`]).
    fn offer(&self, cmd: Command, len: usize, admit: Admit) -> Offer {
        let shared = &*self.shared;
        let mut inner = shared.lock();
        if inner.closed {
            return Offer::Refused(Error::Closed);
        }
        let is_close = matches!(cmd, Command::Message(Message::Close(_), _));
        if inner.close_queued && !matches!(cmd, Command::Flush(_)) {
            return Offer::Refused(Error::Send(SendError::Closed));
        }
        if admit != Admit::Forced && inner.commands.len() >= OUTBOX {
            return Offer::Full(cmd);
        }
        if admit != Admit::Policed || shared.has_room(&inner, len) {
            inner.queued += len;
            inner.close_queued |= is_close;
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
    async fn enqueue(&self, mut cmd: Command, len: usize, admit: Admit) -> Result<(), Error> {
        loop {
            let notified = self.shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.offer(cmd, len, admit) {
                Offer::Queued | Offer::Dropped => return Ok(()),
                Offer::Refused(e) => return Err(e),
                Offer::Full(back) => cmd = back,
            }
            notified.await;
        }
    }

    /// Checks a message as sending it would, and says how it is admitted to the queue.
    fn admit(msg: &Message) -> Result<(Admit, usize), Error> {
        msg.check()?;
        Ok(match msg {
            Message::Text(t) => (Admit::Policed, t.len()),
            Message::Binary(b) | Message::Ping(b) => (Admit::Policed, b.len()),
            // Pongs and close frames are never held back or dropped by the policy.
            Message::Pong(b) => (Admit::Unpoliced, b.len()),
            Message::Close(_) => (Admit::Unpoliced, 0),
        })
    }

    /// Queues a message, applying the connection's [`SlowReader`] policy when its
    /// write buffer is full. It leaves with the next batch the connection writes.
    pub async fn feed(&self, msg: Message) -> Result<(), Error> {
        let (admit, len) = Self::admit(&msg)?;
        self.enqueue(Command::Message(msg, len), len, admit).await
    }

    /// Queues a prepared message (encoded once for many connections).
    pub async fn feed_prepared(&self, msg: &PreparedMessage) -> Result<(), Error> {
        let len = msg.payload().len();
        self.enqueue(Command::Prepared(msg.clone(), len), len, Admit::Policed).await
    }

    /// Queues a message and waits until everything queued so far is written.
    pub async fn send(&self, msg: Message) -> Result<(), Error> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Waits until everything queued so far is written to the transport.
    pub async fn flush(&self) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        self.enqueue(Command::Flush(reply), 0, Admit::Unpoliced).await?;
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
        let offer = self.offer(Command::Prepared(msg.clone(), len), len, Admit::Policed);
        if let Offer::Full(_) = offer {
            // A broadcast never waits for one slow member.
            self.shared.lock().dropped += 1;
        }
        offer
    }

    /// Ready when a message offered now would be queued (or dropped or refused by the
    /// policy) without waiting; registers for a wake-up otherwise.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut inner = self.shared.lock();
        if inner.closed {
            return Poll::Ready(Err(Error::Closed));
        }
        let room = self.shared.has_room(&inner, 1) || self.shared.policy != SlowReader::Wait;
        if inner.commands.len() < OUTBOX && room {
            return Poll::Ready(Ok(()));
        }
        if !inner.sinks.iter().any(|w| w.will_wake(cx.waker())) {
            inner.sinks.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A writer half is a `Sink` of messages: `poll_ready` waits for room in the write
/// buffer (or lets the [`SlowReader`] policy decide), `start_send` queues (checking the
/// message as `feed` does), `poll_flush` waits for everything queued to be written and
/// `poll_close` sends a close frame (1000) unless one was queued, then flushes.
impl futures_sink::Sink<Message> for WriteHalf {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.poll_room(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), Error> {
        let (admit, len) = Self::admit(&msg)?;
        let offer = match self.offer(Command::Message(msg, len), len, admit) {
            // `poll_ready` found room; another clone may have taken it since, and the
            // message is queued all the same, as the `Sink` contract asks.
            Offer::Full(cmd) => self.offer(cmd, len, Admit::Forced),
            offer => offer,
        };
        match offer {
            Offer::Refused(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        loop {
            if let Some(done) = this.sink_flush.as_mut() {
                let r = ready!(Pin::new(done).poll(cx));
                this.sink_flush = None;
                return Poll::Ready(r.unwrap_or(Err(Error::Closed)));
            }
            ready!(this.poll_room(cx))?;
            let (reply, done) = oneshot::channel();
            match this.offer(Command::Flush(reply), 0, Admit::Forced) {
                Offer::Refused(e) => return Poll::Ready(Err(e)),
                _ => this.sink_flush = Some(done),
            }
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.sink_flush.is_none() && !this.shared.lock().close_queued {
            ready!(this.poll_room(cx))?;
            if let Offer::Refused(e) = this.offer(Command::Message(Message::Close(None), 0), 0, Admit::Forced) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(this).poll_flush(cx)
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
