//! Split connections: a reader half and a writer half usable from different tasks, and
//! broadcast groups that send one prepared message to many connections.
//!
//! [`WebSocket::split`] hands the connection to a task of its own, which drives it
//! exactly as an unsplit `WebSocket` (keepalive, closing handshake, corked writes) and
//! talks to the halves over channels: no lock is taken on the way of a message. The
//! [`WriteHalf`] is `Clone`, so many tasks (or a [`Broadcast`] group) can send to one
//! connection.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Notify};
use volley_proto::{CloseCode, PreparedMessage};

use crate::config::SlowReader;
use crate::error::Error;
use crate::message::Message;
use crate::websocket::{ConnectionInfo, WebSocket};

/// Messages received and not yet taken by the reader half.
const INBOX: usize = 256;
/// Commands (messages to send) the writer halves may queue before `feed` waits, on top
/// of the byte limit.
const OUTBOX: usize = 1024;

/// What the writer halves ask the connection task to do.
enum Command {
    Message(Message, usize),
    Prepared(PreparedMessage, usize),
    Flush(oneshot::Sender<Result<(), Error>>),
    /// Slow reader: drop what has not started to leave and close with this code.
    Abort(CloseCode),
}

/// State shared by the halves and the connection task.
struct Shared {
    /// Bytes handed to writer halves and not yet passed to the connection.
    queued: AtomicUsize,
    /// Bytes in the connection's own write buffer.
    buffered: AtomicUsize,
    dropped: AtomicU64,
    closed: AtomicBool,
    drained: Notify,
    limit: usize,
    policy: SlowReader,
}

/// The receiving half of a split connection.
#[derive(Debug)]
pub struct ReadHalf {
    rx: mpsc::Receiver<Result<Message, Error>>,
    info: Arc<ConnectionInfo>,
}

/// The sending half of a split connection. Cloning it gives another sender to the same
/// connection.
#[derive(Clone)]
pub struct WriteHalf {
    tx: mpsc::Sender<Command>,
    urgent: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    info: Arc<ConnectionInfo>,
}

impl std::fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteHalf").field("id", &self.info.id()).finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> WebSocket<S> {
    /// Splits the connection into a reader and a writer half, spawning a task on the
    /// current tokio runtime that drives it. Keepalive, the closing handshake and the
    /// slow-reader policy keep working; the task ends with the connection.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        let info = Arc::new(self.info().clone());
        let (limit, policy) = self.write_policy();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            drained: Notify::new(),
            limit,
            policy,
        });
        let (in_tx, in_rx) = mpsc::channel(INBOX);
        let (tx, cmd_rx) = mpsc::channel(OUTBOX);
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(self, cmd_rx, urgent_rx, in_tx, shared.clone()));
        (ReadHalf { rx: in_rx, info: info.clone() }, WriteHalf { tx, urgent, shared, info })
    }
}

/// The connection task.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocket<S>,
    mut cmds: mpsc::Receiver<Command>,
    mut urgent: mpsc::UnboundedReceiver<Command>,
    inbox: mpsc::Sender<Result<Message, Error>>,
    shared: Arc<Shared>,
) {
    // The halves apply the policy; here the connection only waits for its buffer.
    ws.set_write_policy(SlowReader::Wait);
    let mut writers = true;
    let mut reader = true;
    loop {
        tokio::select! {
            biased;
            Some(cmd) = urgent.recv() => handle(&mut ws, cmd, &shared).await,
            cmd = cmds.recv(), if writers => match cmd {
                Some(cmd) => handle(&mut ws, cmd, &shared).await,
                None => writers = false,
            },
            item = ws.recv() => match item {
                Some(item) => {
                    if reader && inbox.send(item).await.is_err() {
                        // Nobody reads any more; keep driving for keepalive and close.
                        reader = false;
                    }
                }
                None => break,
            },
        }
        shared.buffered.store(ws.buffered_amount(), Ordering::Relaxed);
    }
    shared.closed.store(true, Ordering::Release);
    shared.queued.store(0, Ordering::Release);
    shared.buffered.store(0, Ordering::Relaxed);
    shared.drained.notify_waiters();
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>, cmd: Command, shared: &Shared) {
    let done = |len: usize| {
        shared.queued.fetch_sub(len, Ordering::AcqRel);
        shared.drained.notify_waiters();
    };
    match cmd {
        Command::Message(msg, len) => {
            let _ = ws.feed(msg).await;
            done(len);
        }
        Command::Prepared(msg, len) => {
            let _ = ws.feed_prepared(&msg).await;
            done(len);
        }
        Command::Flush(reply) => {
            let _ = reply.send(ws.flush().await);
        }
        Command::Abort(code) => ws.abort_with(code),
    }
}

impl ReadHalf {
    /// Receives the next message; `None` once the connection has closed (the item
    /// before it is the peer's close frame or the error that ended the connection).
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        self.rx.recv().await
    }

    /// The connection's id, addresses, target, headers and agreed protocol.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl futures_core::Stream for ReadHalf {
    type Item = Result<Message, Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// Whether a message of `len` bytes may be queued now.
enum Admit {
    Yes,
    Drop,
    Wait,
}

impl WriteHalf {
    /// The connection's id, addresses, target, headers and agreed protocol.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Bytes queued for sending and not yet written to the transport.
    pub fn buffered_amount(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire) + self.shared.buffered.load(Ordering::Relaxed)
    }

    /// Messages dropped by the [`SlowReader::DropNewest`] policy.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    fn admit(&self, len: usize) -> Result<Admit, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if self.buffered_amount() < self.shared.limit || len == 0 && self.buffered_amount() == 0 {
            return Ok(Admit::Yes);
        }
        match self.shared.policy {
            SlowReader::Wait => Ok(Admit::Wait),
            SlowReader::DropNewest => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(Admit::Drop)
            }
            SlowReader::Close(code) => {
                let _ = self.urgent.send(Command::Abort(code));
                Err(Error::SlowReader(code))
            }
        }
    }

    async fn wait_for_room(&self) -> Result<(), Error> {
        loop {
            let notified = self.shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return Err(Error::Closed);
            }
            if self.buffered_amount() < self.shared.limit {
                return Ok(());
            }
            notified.await;
        }
    }

    async fn enqueue(&self, make: impl FnOnce(usize) -> Command, len: usize) -> Result<(), Error> {
        loop {
            match self.admit(len)? {
                Admit::Yes => break,
                Admit::Drop => return Ok(()),
                Admit::Wait => self.wait_for_room().await?,
            }
        }
        // Reserve first: cancelled here, nothing was queued.
        let permit = self.tx.reserve().await.map_err(|_| Error::Closed)?;
        self.shared.queued.fetch_add(len, Ordering::AcqRel);
        permit.send(make(len));
        Ok(())
    }

    /// Queues a message, applying the connection's [`SlowReader`] policy when its
    /// write buffer is full. It leaves with the next batch the connection writes.
    pub async fn feed(&self, msg: Message) -> Result<(), Error> {
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close(_) => 0,
        };
        if matches!(msg, Message::Close(_)) {
            // Close frames are never dropped by the policy.
            let permit = self.tx.reserve().await.map_err(|_| Error::Closed)?;
            permit.send(Command::Message(msg, 0));
            return Ok(());
        }
        self.enqueue(|len| Command::Message(msg, len), len).await
    }

    /// Queues a prepared message (encoded once for many connections).
    pub async fn feed_prepared(&self, msg: &PreparedMessage) -> Result<(), Error> {
        let msg = msg.clone();
        let len = msg.payload().len();
        self.enqueue(|len| Command::Prepared(msg, len), len).await
    }

    /// Queues a message and waits until everything queued so far is written.
    pub async fn send(&self, msg: Message) -> Result<(), Error> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Waits until everything queued so far is written to the transport.
    pub async fn flush(&self) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        self.tx.send(Command::Flush(reply)).await.map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)?
    }

    /// Starts the closing handshake; the reader half sees its end.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.send(Message::Close(Some(volley_proto::CloseFrame::new(code, reason)))).await
    }

    /// Queues a prepared message without waiting: the broadcast path. Returns `false`
    /// when the message was not queued (the policy dropped it, the connection closed or
    /// is being closed for reading too slowly).
    pub fn try_feed_prepared(&self, msg: &PreparedMessage) -> bool {
        let len = msg.payload().len();
        match self.admit(len) {
            Ok(Admit::Yes) => {}
            Ok(Admit::Wait) => {
                // A broadcast never waits for one slow member.
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Ok(Admit::Drop) | Err(_) => return false,
        }
        match self.tx.try_reserve() {
            Ok(permit) => {
                self.shared.queued.fetch_add(len, Ordering::AcqRel);
                permit.send(Command::Prepared(msg.clone(), len));
                true
            }
            Err(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
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
        let id = member.info.id();
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
        let mut members = self.lock();
        members.retain(|_, m| !m.is_closed());
        members.values().filter(|m| m.try_feed_prepared(msg)).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, WriteHalf>> {
        // A panic while holding the lock cannot leave the map inconsistent (every
        // operation on it is a single call), so a poisoned lock is still usable.
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }
}
