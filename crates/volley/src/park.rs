//! Parking: idle connections held without a task each, and handed back when their peer
//! sends something or a keepalive deadline comes.
//!
//! A running connection is a tokio task holding the application's future, the
//! [`WebSocket`] and tokio's registration of the socket: about 1.7 KB for an idle echo
//! connection. A server with many connections that are mostly silent (notifications,
//! presence, dashboards) can [`park`](Parking::park) them instead. The socket moves to
//! the parking's own poller (one per [`Parking`], waited on by one thread of its own);
//! what stays in memory is the connection's protocol state, limits, info,
//! user data and a value of the application's choice, in one slot. The application's
//! task ends.
//!
//! When the peer sends anything (a message, a ping, a close frame, or just closes the
//! socket), or when the connection's ping, idle or lifetime timer is due, the connection
//! is handed back by [`Parking::woken`] with its value, exactly as it was parked, and the
//! application spawns a task for it again. [`Parking::send`] writes a message to a parked
//! connection where it is (a publication to many idle connections costs each a write,
//! not a task); [`Parking::take`] unparks one at once.
//!
//! ```no_run
//! use std::time::Duration;
//! use tokio::net::TcpStream;
//! use volley::park::{ParkError, Parking};
//! use volley::WebSocket;
//!
//! /// Echoes, and parks the connection after 5 s without a message.
//! async fn serve(mut ws: WebSocket<TcpStream>, parking: Parking<()>) -> Result<(), volley::Error> {
//!     loop {
//!         match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await {
//!             Ok(Some(msg)) => {
//!                 let msg = msg?;
//!                 if msg.is_data() {
//!                     ws.feed(msg).await?;
//!                 }
//!             }
//!             Ok(None) => return Ok(()),
//!             // `recv` is cancel-safe: nothing is lost by the timeout.
//!             Err(_) => match parking.park(ws, ()) {
//!                 Ok(_) => return Ok(()),
//!                 // Something is still in flight (a write the socket has not taken).
//!                 Err(ParkError::Busy(back, ())) => ws = back,
//!                 Err(ParkError::Io(e, ())) => return Err(e.into()),
//!             },
//!         }
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let parking = Parking::new()?;
//! let p = parking.clone();
//! tokio::spawn(async move {
//!     while let Ok((ws, ())) = p.woken().await {
//!         tokio::spawn(serve(ws, p.clone()));
//!     }
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let parking = parking.clone();
//!     tokio::spawn(async move { serve(volley::accept(tcp).await?, parking).await });
//! }
//! # }
//! ```
//!
//! A parking made [with a keeper](Parking::with_keeper) also keeps an application's own
//! keepalive in place: when a parked connection's deadline comes, the [`Keeper`] may
//! have a message (a protocol-level ping) written to it where it is, and a small
//! message from its peer (the pong) may be handled where it is, without a task.
//!
//! Only a [quiescent](WebSocket::is_quiescent) connection parks: open, with every
//! received message handed out, every queued write taken by the socket, and nothing
//! waiting to be read in the socket. Plain TCP
//! connections only (a TLS session's state is far larger than what parking saves).
//! Dropping the last handle to a [`Parking`] closes the connections it holds without a
//! closing handshake; [`Parking::wake_all`] hands them all back first, to close them
//! properly. Unix only.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::websocket::{ParkedKeepalive, ParkedSocket, WebSocket};
use crate::PreparedMessage;

/// How many readiness events one poll of the parking's poller takes.
const EVENTS: usize = 256;

/// The most slices one vectored write of [`Parking::send_all`] is given.
const MAX_IOVECS: usize = 64;

/// Frames up to this many bytes in all are copied into one buffer and sent with one
/// `send` rather than written piecewise with `writev`.
const COPY_UP_TO: usize = 16 * 1024;

/// The largest frame a parked connection's peer may send that is read in place (see
/// [`Keeper::received`]): a 7-bit length, a mask, and the payload.
const IN_PLACE_PAYLOAD: usize = 125;
const IN_PLACE_FRAME: usize = 2 + 4 + IN_PLACE_PAYLOAD;

/// How long after the earliest deadline the poller's thread waits before handling
/// what is due: the deadlines that fall within it are handled in the same wakeup. With
/// many parked connections whose keepalives are due at scattered instants, one wakeup
/// per deadline would cost a thread switch each.
const TIMER_SLACK: Duration = Duration::from_millis(20);

/// The token of the poller's waker (parked sockets use their slot number).
const WAKER: Token = Token(usize::MAX);

/// A set of parked connections, each with a value of type `T` (see the
/// [module docs](self)). Cheap to clone: clones share the set. When the last clone is
/// dropped, the poller's thread ends and the connections still parked are closed.
pub struct Parking<T> {
    handle: Arc<Handle<T>>,
}

impl<T> Clone for Parking<T> {
    fn clone(&self) -> Self {
        Parking { handle: Arc::clone(&self.handle) }
    }
}

impl<T> fmt::Debug for Parking<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.handle.core.lock();
        f.debug_struct("Parking")
            .field("parked", &st.parked)
            .field("woken", &st.woken.len())
            .field("deadlines", &st.deadlines.len())
            .finish()
    }
}

/// Names a parked connection, for [`Parking::take`]. A connection parked again gets a
/// new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParkedId {
    key: u32,
    generation: u32,
}

/// Why [`Parking::park`] did not park a connection.
// The connection is handed back by value: boxing it would allocate on the path that
// goes on serving it.
#[allow(clippy::large_enum_variant)]
pub enum ParkError<T> {
    /// The connection is not [quiescent](WebSocket::is_quiescent): it is handed back
    /// unchanged, with the value, to be served on.
    Busy(WebSocket<TcpStream>, T),
    /// The socket could not be moved to the parking's poller: the connection is lost
    /// (its socket closed); the value is handed back.
    Io(io::Error, T),
}

impl<T> fmt::Debug for ParkError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkError::Busy(ws, _) => f.debug_tuple("Busy").field(&ws.info().id()).finish(),
            ParkError::Io(e, _) => f.debug_tuple("Io").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for ParkError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkError::Busy(..) => f.write_str("the connection has data in flight and cannot be parked"),
            ParkError::Io(e, _) => write!(f, "parking the connection failed: {e}"),
        }
    }
}

impl<T> std::error::Error for ParkError<T> {}

/// What [`Parking::send`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The socket took the whole frame: the connection stays parked.
    Written,
    /// The socket took part of the frame or none of it (its send buffer is full, or
    /// it failed): the connection left the parking with the rest of the frame queued,
    /// and is handed back through [`Parking::woken`]; serving it writes the rest
    /// before anything else.
    HandedBack,
    /// Nothing was written: no connection is parked as this id (it was handed back
    /// or taken), or it is a client's connection (whose frames are masked each with a
    /// key of its own). Take it back to send it the message.
    NotParked,
}

/// What a parking asks its application about the connections it holds, so that some
/// of their traffic is handled where they are rather than by handing them back (see
/// [`Parking::with_keeper`]): typically a protocol-level keepalive, whose ping is due
/// at the deadline given to [`Parking::park_until`] and whose pong is a small message.
///
/// Both methods run on the parking's poller thread with its lock held: they must be
/// quick and must not block or call back into the parking. Connections with the
/// library's own timers (a WebSocket keepalive, an idle timeout or a lifetime) are
/// never passed to them: those are handed back as without a keeper.
pub trait Keeper<T>: Send + Sync {
    /// The deadline of the connection holding `value` has come: what to do with it.
    fn due(&self, value: &mut T) -> Due;

    /// The connection's peer sent one complete, unfragmented, uncompressed data
    /// message of at most 125 bytes (`text`: valid UTF-8), and nothing else yet:
    /// whether it is handled. Handled, it is consumed and the connection stays
    /// parked; not handled, nothing is consumed and the connection is handed back to
    /// read it as usual.
    fn received(&self, value: &mut T, text: bool, payload: &[u8]) -> bool;
}

/// What [`Keeper::due`] decides for a parked connection whose deadline came.
#[derive(Debug, Clone)]
pub enum Due {
    /// Hand it back through [`Parking::woken`], as without a keeper.
    Wake,
    /// Keep it parked, sending nothing, until this deadline (if any) or its peer
    /// speaks. A deadline that has already passed hands it back.
    Keep(Option<Instant>),
    /// Write this message to it in place and keep it parked until the deadline (if
    /// any) or its peer speaks. If its socket does not take the whole frame at once,
    /// the connection is handed back with the rest queued, as with [`Parking::send`].
    Send(Arc<PreparedMessage>, Option<Instant>),
}

/// What the handles own: dropping the last one stops the poller's thread.
struct Handle<T> {
    core: Arc<Core<T>>,
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.core.shutdown.store(true, Ordering::Release);
        let _ = self.core.waker.wake();
    }
}

/// What the handles and the poller's thread share.
struct Core<T> {
    registry: mio::Registry,
    waker: mio::Waker,
    state: Mutex<State<T>>,
    /// Signalled when connections are handed back, or when the poller failed.
    notify: Notify,
    shutdown: AtomicBool,
    keeper: Option<Box<dyn Keeper<T>>>,
}

impl<T> Core<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No method panics halfway through a change, so the state stays consistent
        // even if a panic elsewhere poisoned the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A deadline in the parking's heap, in eight bytes (an `Instant` takes sixteen, and
/// the heap holds one per parked connection with timers): microseconds since the first
/// one this process made, rounded up, so that a deadline is never early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(u64);

impl Tick {
    fn origin() -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now)
    }

    fn from(at: Instant) -> Tick {
        let micros = at.saturating_duration_since(Tick::origin()).as_nanos().div_ceil(1000);
        Tick(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    fn instant(self) -> Instant {
        Tick::origin() + Duration::from_micros(self.0)
    }
}

struct State<T> {
    slots: Slots<T>,
    free: Vec<u32>,
    /// Keepalive deadlines of parked connections, earliest first; entries whose slot
    /// has moved on (another generation) are skipped.
    deadlines: BinaryHeap<Reverse<(Tick, u32, u32)>>,
    /// Connections handed back and not yet taken by `woken`.
    woken: VecDeque<Entry<T>>,
    parked: usize,
    /// The deadline the poller's thread waits until, if any.
    timer_at: Option<Instant>,
    /// Why the poller's thread stopped, once it has.
    failed: Option<io::Error>,
    /// Where [`Parking::send_all`] lays small frames end to end, for one `send`.
    scratch: Vec<u8>,
}

/// The poller's token of a connection parked in slot `key` as `generation`: both,
/// where a token has room for them (64-bit targets), so that a readiness event that
/// arrives after the connection left its slot is not taken for the next one's.
fn token(key: usize, generation: u32) -> Token {
    #[cfg(target_pointer_width = "64")]
    return Token(((generation as usize) << 32) | key);
    #[cfg(not(target_pointer_width = "64"))]
    {
        let _ = generation;
        Token(key)
    }
}

/// The slot and, where the token carries it, the generation that a token names.
fn slot_of(token: Token) -> (usize, Option<u32>) {
    #[cfg(target_pointer_width = "64")]
    return (token.0 & 0xffff_ffff, Some((token.0 >> 32) as u32));
    #[cfg(not(target_pointer_width = "64"))]
    (token.0, None)
}

/// Slots in chunks of [`Slots::CHUNK`] that never move: growing neither copies the
/// parked connections nor frees a large block (which the allocator could keep, and
/// keep resident). The timers' state of parked connections that have timers is in a
/// table beside each chunk, made when the first of them parks there: a parking
/// whose connections have no timers has none, and one whose connections have timers
/// does not allocate them one by one.
struct Slots<T> {
    chunks: Vec<Vec<Slot<T>>>,
    timers: Vec<Vec<Option<ParkedKeepalive>>>,
}

impl<T> Slots<T> {
    const CHUNK: usize = 1024;

    fn new() -> Self {
        Slots { chunks: Vec::new(), timers: Vec::new() }
    }

    /// Puts a connection in the empty slot `key`; returns the slot's generation.
    fn fill(&mut self, key: usize, entry: Entry<T>) -> u32 {
        let Entry { io, socket, timers, value, unsent } = entry;
        debug_assert!(unsent.is_none(), "a connection parks with nothing unsent");
        let slot = self.get_mut(key).expect("a slot found free or just made");
        (slot.io, slot.parked) = (Some(io), Some((socket, value)));
        let generation = slot.generation;
        if let Some(timers) = timers {
            let chunk = key / Self::CHUNK;
            if self.timers.len() <= chunk {
                self.timers.resize_with(chunk + 1, Vec::new);
            }
            let table = &mut self.timers[chunk];
            if table.capacity() == 0 {
                // Reserved whole, so that it never moves; its pages are touched only
                // as its entries are used.
                table.reserve_exact(Self::CHUNK);
            }
            let i = key % Self::CHUNK;
            if table.len() <= i {
                table.resize_with(i + 1, || None);
            }
            table[i] = Some(timers);
        }
        generation
    }

    /// Takes the connection out of slot `key`, with its timers, and moves the slot on
    /// to its next generation.
    fn empty(&mut self, key: usize) -> Option<Entry<T>> {
        let slot = self.get_mut(key)?;
        let (io, (socket, value)) = (slot.io.take()?, slot.parked.take()?);
        slot.generation = slot.generation.wrapping_add(1);
        let timers = self.timers.get_mut(key / Self::CHUNK).and_then(|t| t.get_mut(key % Self::CHUNK)?.take());
        Some(Entry { io, socket, timers, value, unsent: None })
    }

    /// Whether the connection in slot `key` has the library's timers.
    fn has_timers(&self, key: usize) -> bool {
        self.timers.get(key / Self::CHUNK).and_then(|t| t.get(key % Self::CHUNK)).is_some_and(Option::is_some)
    }

    /// The generation the empty slot `key` gives the connection parked in it next.
    fn generation(&self, key: usize) -> u32 {
        self.get(key).map_or(0, |s| s.generation)
    }

    /// Whether slot `key` still holds the connection parked as `generation`.
    fn holds(&self, key: u32, generation: u32) -> bool {
        self.get(key as usize).is_some_and(|s| s.generation == generation && s.io.is_some())
    }

    fn len(&self) -> usize {
        // Every chunk but the last is full.
        self.chunks.last().map_or(0, |last| (self.chunks.len() - 1) * Self::CHUNK + last.len())
    }

    fn get(&self, key: usize) -> Option<&Slot<T>> {
        self.chunks.get(key / Self::CHUNK)?.get(key % Self::CHUNK)
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut Slot<T>> {
        self.chunks.get_mut(key / Self::CHUNK)?.get_mut(key % Self::CHUNK)
    }

    /// A new empty slot; returns its key.
    fn push(&mut self) -> usize {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => chunk.push(Slot::EMPTY),
            _ => {
                let mut chunk = Vec::with_capacity(Self::CHUNK);
                chunk.push(Slot::EMPTY);
                self.chunks.push(chunk);
            }
        }
        self.len() - 1
    }
}

/// One parked connection, or none. Its fields are laid out flat (rather than as an
/// `Option<Entry<T>>`) so that the generation fits beside the socket's descriptor.
struct Slot<T> {
    generation: u32,
    io: Option<std::net::TcpStream>,
    parked: Option<(ParkedSocket, T)>,
}

impl<T> Slot<T> {
    const EMPTY: Self = Slot { generation: 0, io: None, parked: None };
}

struct Entry<T> {
    io: std::net::TcpStream,
    socket: ParkedSocket,
    timers: Option<ParkedKeepalive>,
    value: T,
    /// The rest of a frame [`Parking::send`] wrote in part (`true`: some of it left),
    /// to be written first once the connection is served again.
    unsent: Option<(Bytes, bool)>,
}

impl<T> State<T> {
    /// Takes a parked connection out of its slot and off the poller.
    fn unpark(&mut self, key: usize, registry: &mio::Registry) -> Option<Entry<T>> {
        let entry = self.slots.empty(key)?;
        let _ = registry.deregister(&mut SourceFd(&entry.io.as_raw_fd()));
        self.free.push(key as u32);
        self.parked -= 1;
        Some(entry)
    }

    /// Hands back the connection in slot `key` after a write of `frames` that its
    /// socket took only the first `written` bytes of: the rest goes first once it is
    /// served again.
    fn hand_back_unsent(&mut self, key: usize, frames: &[&Bytes], written: usize, registry: &mio::Registry) {
        let mut rest = BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum::<usize>() - written);
        unsent(frames, written).for_each(|part| rest.extend_from_slice(part));
        if let Some(mut entry) = self.unpark(key, registry) {
            entry.unsent = Some((rest.freeze(), written > 0));
            self.woken.push_back(entry);
        }
    }

    /// Hands back every connection whose deadline has come, but those the keeper
    /// keeps.
    fn expire(&mut self, now: Instant, registry: &mio::Registry, keeper: Option<&dyn Keeper<T>>) {
        while let Some(&Reverse((at, key, generation))) = self.deadlines.peek() {
            if at.instant() > now {
                break;
            }
            self.deadlines.pop();
            if !self.slots.holds(key, generation) {
                continue;
            }
            if let Some(keeper) = keeper {
                if self.keep(key as usize, generation, now, keeper, registry) {
                    continue;
                }
            }
            if let Some(entry) = self.unpark(key as usize, registry) {
                self.woken.push_back(entry);
            }
        }
    }

    /// Asks the keeper about the connection in slot `key`, whose deadline has come;
    /// writes what it asks to have written. Whether the connection was dealt with:
    /// kept, or handed back with part of that write.
    fn keep(
        &mut self,
        key: usize,
        generation: u32,
        now: Instant,
        keeper: &dyn Keeper<T>,
        registry: &mio::Registry,
    ) -> bool {
        if self.slots.has_timers(key) {
            return false;
        }
        let State { slots, scratch, deadlines, .. } = self;
        let Some(Slot { io: Some(io), parked: Some((socket, value)), .. }) = slots.get_mut(key) else {
            return false;
        };
        let (msg, next) = match keeper.due(value) {
            Due::Wake => return false,
            Due::Keep(next) => (None, next),
            Due::Send(msg, next) => (Some(msg), next),
        };
        if next.is_some_and(|at| at <= now) {
            return false;
        }
        if let Some(msg) = msg {
            let Some((header, payload)) = socket.prepared_frame(&msg) else {
                return false;
            };
            let frames = [header, payload];
            let total = header.len() + payload.len();
            let written = write_frames(io, &frames, total, scratch);
            if written < total {
                self.hand_back_unsent(key, &frames, written, registry);
                return true;
            }
        }
        if let Some(at) = next {
            deadlines.push(Reverse((Tick::from(at), key as u32, generation)));
        }
        true
    }

    /// Reads in place what the peer of the connection in slot `key` sent, when it is
    /// one small data message the keeper handles (see [`Keeper::received`]). Whether
    /// the connection stays parked.
    fn read_in_place(&mut self, key: usize, keeper: &dyn Keeper<T>) -> bool {
        if self.slots.has_timers(key) {
            return false;
        }
        let Some(Slot { io: Some(io), parked: Some((socket, value)), .. }) = self.slots.get_mut(key) else {
            return false;
        };
        if !socket.is_server() {
            return false;
        }
        // One byte more than the largest frame read in place: a frame followed by
        // anything is left to the connection's task.
        let mut buf = [0u8; IN_PLACE_FRAME + 1];
        let n = match io.peek(&mut buf) {
            Ok(n) => n,
            // Nothing to read after all (an event for input already consumed).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        };
        let Some((text, len)) = small_frame(&buf[..n]) else {
            return false;
        };
        let (head, rest) = buf.split_at_mut(6);
        let payload = &mut rest[..len];
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= head[2 + i % 4]);
        if text && std::str::from_utf8(payload).is_err() {
            return false;
        }
        if !keeper.received(value, text, payload) {
            return false;
        }
        // Consumed: the peeked bytes are in the socket's buffer, and nothing else
        // reads the socket while it is parked.
        let mut left = 6 + len;
        while left > 0 {
            match (&*io).read(&mut buf[..left]) {
                Ok(0) => return false,
                Ok(k) => left -= k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        // More came meanwhile: its task reads it.
        !has_input(io)
    }

    /// The earliest deadline of a connection still parked.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, key, generation))) = self.deadlines.peek() {
            if self.slots.holds(key, generation) {
                return Some(at.instant());
            }
            self.deadlines.pop();
        }
        None
    }
}

/// The poller's thread: waits for parked sockets to become readable or for the next
/// deadline, and hands those connections back.
fn run_poller<T>(mut poller: mio::Poll, core: Arc<Core<T>>) {
    let mut events = Events::with_capacity(EVENTS);
    let result = loop {
        let timeout = {
            let mut st = core.lock();
            let at = st.next_deadline();
            st.timer_at = at;
            at.map(|at| (at + TIMER_SLACK).saturating_duration_since(Instant::now()))
        };
        if core.shutdown.load(Ordering::Acquire) {
            break Ok(());
        }
        match poller.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
        let mut st = core.lock();
        let before = st.woken.len();
        for event in events.iter().filter(|e| e.token() != WAKER) {
            // An event read before the lock was taken may be for a connection that
            // has been handed back since, and its slot given to another: that one is
            // not woken (its peer did not speak).
            let (key, generation) = slot_of(event.token());
            if generation.is_some_and(|g| !st.slots.holds(key as u32, g)) {
                continue;
            }
            if let Some(keeper) = core.keeper.as_deref() {
                if st.read_in_place(key, keeper) {
                    continue;
                }
            }
            if let Some(entry) = st.unpark(key, &core.registry) {
                st.woken.push_back(entry);
            }
        }
        st.expire(Instant::now(), &core.registry, core.keeper.as_deref());
        let woke = st.woken.len() > before;
        drop(st);
        if woke {
            core.notify.notify_one();
        }
    };
    let mut st = core.lock();
    // Close what is still parked (and what was never taken): nobody will serve it.
    let slots = std::mem::replace(&mut st.slots, Slots::new());
    let woken = std::mem::take(&mut st.woken);
    st.parked = 0;
    st.failed = Some(match result {
        Ok(()) => io::Error::other("the parking was dropped"),
        Err(e) => {
            tracing::warn!(error = %e, "the parking's poller failed: parked connections closed");
            e
        }
    });
    drop(st);
    drop((slots, woken));
    core.notify.notify_waiters();
    core.notify.notify_one();
}

impl<T: Send + 'static> Parking<T> {
    /// An empty parking, with its poller's thread.
    pub fn new() -> io::Result<Self> {
        Self::build(None)
    }

    /// An empty parking whose connections' deadlines and small messages from their
    /// peers go to `keeper` first (see [`Keeper`]): a protocol-level keepalive kept
    /// without waking the connections.
    pub fn with_keeper(keeper: impl Keeper<T> + 'static) -> io::Result<Self> {
        Self::build(Some(Box::new(keeper)))
    }

    fn build(keeper: Option<Box<dyn Keeper<T>>>) -> io::Result<Self> {
        let poller = mio::Poll::new()?;
        let registry = poller.registry().try_clone()?;
        let waker = mio::Waker::new(poller.registry(), WAKER)?;
        let core = Arc::new(Core {
            registry,
            waker,
            state: Mutex::new(State {
                slots: Slots::new(),
                free: Vec::new(),
                deadlines: BinaryHeap::new(),
                woken: VecDeque::new(),
                parked: 0,
                timer_at: None,
                failed: None,
                scratch: Vec::new(),
            }),
            notify: Notify::new(),
            shutdown: AtomicBool::new(false),
            keeper,
        });
        let thread_core = Arc::clone(&core);
        std::thread::Builder::new().name("volley-parking".into()).spawn(move || run_poller(poller, thread_core))?;
        Ok(Parking { handle: Arc::new(Handle { core }) })
    }
}

impl<T> Parking<T> {
    fn core(&self) -> &Core<T> {
        &self.handle.core
    }

    /// Connections held: parked, or handed back and not yet taken by
    /// [`Parking::woken`].
    pub fn len(&self) -> usize {
        let st = self.core().lock();
        st.parked + st.woken.len()
    }

    /// Whether no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parks a [quiescent](WebSocket::is_quiescent) connection with `value` until its
    /// peer sends something or one of its timers is due; see [`Parking::woken`]. Call
    /// it inside the tokio runtime that runs the connection.
    ///
    /// A connection with something in flight is handed back as [`ParkError::Busy`]:
    /// serve it on (typically, wait for its next message or for its writes to go out)
    /// and try again later.
    #[allow(clippy::result_large_err)] // see `ParkError`
    pub fn park(&self, ws: WebSocket<TcpStream>, value: T) -> Result<ParkedId, ParkError<T>> {
        self.park_until(ws, value, None)
    }

    /// [`park`](Parking::park)s a connection that is also handed back through
    /// [`Parking::woken`] at `wake_at` (if it is still parked then): for the
    /// application's own timers, such as a protocol-level ping or a token's expiry.
    ///
    /// The deadline lives in the parking's own timer heap, with the keepalive ones:
    /// a connection parked and taken back many times leaves no deadlines behind.
    /// Deadlines are handled up to 20 ms late, so that those due close together are
    /// handled in one wakeup of the poller's thread.
    #[allow(clippy::result_large_err)] // see `ParkError`
    pub fn park_until(
        &self,
        ws: WebSocket<TcpStream>,
        value: T,
        wake_at: Option<Instant>,
    ) -> Result<ParkedId, ParkError<T>> {
        let (io, socket, timers) = match ws.park() {
            Ok(parts) => parts,
            Err(ws) => return Err(ParkError::Busy(ws, value)),
        };
        let deadline = match (timers.as_ref().and_then(ParkedKeepalive::deadline), wake_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let io = match io.into_std() {
            Ok(io) => io,
            Err(e) => return Err(ParkError::Io(e, value)),
        };
        // Input the runtime has not reported yet (a connection handed back because its
        // peer spoke, and asked to park again before its task was told the socket is
        // readable): parked, it would be handed back at once, again and again, and the
        // input never read. Served on, it is read.
        if has_input(&io) {
            return match TcpStream::from_std(io) {
                Ok(io) => Err(ParkError::Busy(socket.resume(io, timers), value)),
                Err(e) => Err(ParkError::Io(e, value)),
            };
        }
        let core = self.core();
        let mut st = core.lock();
        if let Some(e) = &st.failed {
            return Err(ParkError::Io(io::Error::new(e.kind(), e.to_string()), value));
        }
        let key = match st.free.pop() {
            Some(key) => key as usize,
            None if st.slots.len() < u32::MAX as usize => st.slots.push(),
            None => return Err(ParkError::Io(io::Error::other("too many parked connections"), value)),
        };
        // Registered under the lock: the poller's thread cannot see the socket ready
        // before its slot is filled. A socket that is already readable is reported at
        // once.
        let generation = st.slots.generation(key);
        let token = token(key, generation);
        if let Err(e) = core.registry.register(&mut SourceFd(&io.as_raw_fd()), token, Interest::READABLE) {
            st.free.push(key as u32);
            return Err(ParkError::Io(e, value));
        }
        let filled = st.slots.fill(key, Entry { io, socket, timers, value, unsent: None });
        debug_assert_eq!(filled, generation);
        st.parked += 1;
        if let Some(at) = deadline {
            st.deadlines.push(Reverse((Tick::from(at), key as u32, generation)));
            if st.timer_at.is_none_or(|t| at < t) {
                st.timer_at = Some(at);
                let _ = core.waker.wake();
            }
            // Deadlines of unparked connections are dropped lazily; keep them bounded.
            if st.deadlines.len() > 2 * st.parked + 1024 {
                let State { deadlines, slots, .. } = &mut *st;
                deadlines.retain(|&Reverse((_, k, g))| slots.holds(k, g));
            }
        }
        Ok(ParkedId { key: key as u32, generation })
    }

    /// Unparks the connection `id` at once, if it is still parked: to send it
    /// something. Call it inside the tokio runtime. `None` if it was already handed
    /// back, or if its socket cannot rejoin the runtime (then it is closed).
    pub fn take(&self, id: ParkedId) -> Option<(WebSocket<TcpStream>, T)> {
        let core = self.core();
        let entry = {
            let mut st = core.lock();
            if !st.slots.holds(id.key, id.generation) {
                return None;
            }
            st.unpark(id.key as usize, &core.registry)?
        };
        resume(entry)
    }

    /// Writes a message to the connection parked as `id` without taking it back,
    /// when its socket takes the whole frame at once: a publication to many idle
    /// connections costs each of them a write, not a task. See [`Sent`] for what
    /// happens otherwise. The frame is the prepared one the connection's
    /// permessage-deflate parameters call for, as with
    /// [`WebSocket::feed_prepared`].
    ///
    /// The write happens under the parking's lock (with one lock for all its
    /// connections, several threads sending to one parking take turns).
    pub fn send(&self, id: ParkedId, msg: &PreparedMessage) -> Sent {
        self.send_all(id, std::slice::from_ref(msg))
    }

    /// [`send`](Parking::send)s several messages, one frame each, in as few writes as
    /// the socket allows (one, typically). The messages may be owned or shared
    /// (`Arc<PreparedMessage>`, `Cow<PreparedMessage>`): a message prepared once for
    /// many connections is sent to each without copying or encoding it again.
    pub fn send_all<M: Borrow<PreparedMessage>>(&self, id: ParkedId, msgs: &[M]) -> Sent {
        let core = self.core();
        let mut st = core.lock();
        if !st.slots.holds(id.key, id.generation) {
            return Sent::NotParked;
        }
        let key = id.key as usize;
        let State { slots, scratch, .. } = &mut *st;
        let Some(Slot { io: Some(io), parked: Some((socket, _)), .. }) = slots.get(key) else {
            return Sent::NotParked;
        };
        let mut frames = Vec::with_capacity(msgs.len() * 2);
        for msg in msgs {
            let Some((header, payload)) = socket.prepared_frame(msg.borrow()) else {
                return Sent::NotParked;
            };
            frames.push(header);
            frames.push(payload);
        }
        let total: usize = frames.iter().map(|f| f.len()).sum();
        let written = write_frames(io, &frames, total, scratch);
        if written == total {
            return Sent::Written;
        }
        st.hand_back_unsent(key, &frames, written, &core.registry);
        drop(st);
        core.notify.notify_one();
        Sent::HandedBack
    }

    /// Hands every parked connection back through [`Parking::woken`]: before a
    /// shutdown, to close each one with a closing handshake.
    pub fn wake_all(&self) {
        let core = self.core();
        let mut st = core.lock();
        for key in 0..st.slots.len() {
            if let Some(entry) = st.unpark(key, &core.registry) {
                st.woken.push_back(entry);
            }
        }
        drop(st);
        core.notify.notify_one();
    }

    /// The next connection whose peer sent something (or closed), or whose ping, idle
    /// or lifetime timer is due, with its value. Typically one task runs it in a loop
    /// that spawns a task for each connection it returns; several tasks may. Call it
    /// inside the tokio runtime. An error means the poller stopped: the parking cannot
    /// go on.
    pub async fn woken(&self) -> io::Result<(WebSocket<TcpStream>, T)> {
        let core = self.core();
        loop {
            let notified = core.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut st = core.lock();
                match st.woken.pop_front() {
                    Some(entry) => Some((entry, !st.woken.is_empty())),
                    None => match &st.failed {
                        Some(e) => return Err(io::Error::new(e.kind(), e.to_string())),
                        None => None,
                    },
                }
            };
            match next {
                Some((entry, more)) => {
                    if more {
                        // Let another waiting task take the next one.
                        core.notify.notify_one();
                    }
                    if let Some(back) = resume(entry) {
                        return Ok(back);
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// Writes `frames` (`total` bytes) to the non-blocking socket until it is all written
/// or the socket takes no more; returns how many bytes went.
///
/// Small frames (the common case: a publication or two) are copied end to end into
/// `scratch` and go in one `send`, which costs the kernel less than a `writev` of the
/// pieces (no iovec to import, no file position to look up).
fn write_frames(mut io: &std::net::TcpStream, frames: &[&Bytes], total: usize, scratch: &mut Vec<u8>) -> usize {
    let copied = total <= COPY_UP_TO;
    if copied {
        scratch.clear();
        frames.iter().for_each(|f| scratch.extend_from_slice(f));
    }
    let mut written = 0;
    while written < total {
        let result = if copied {
            io.write(&scratch[written..])
        } else {
            let slices: Vec<IoSlice<'_>> = unsent(frames, written).take(MAX_IOVECS).map(IoSlice::new).collect();
            io.write_vectored(&slices)
        };
        match result {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Full (or failed): the rest goes with the connection's task, which waits
            // for room (or finds the failure).
            Err(_) => break,
        }
    }
    written
}

/// The message of `bytes` when they are exactly one frame a parked connection's peer
/// may have read in place: final, no extension bits, text or binary, masked, with a
/// 7-bit length (at most 125 bytes), and nothing after it. Its kind (`true`: text)
/// and payload length. Anything else is left to the protocol's parser, which reports
/// what is wrong with it.
fn small_frame(bytes: &[u8]) -> Option<(bool, usize)> {
    let [b0, b1, ..] = *bytes else { return None };
    let text = match b0 {
        0x81 => true,
        0x82 => false,
        _ => return None,
    };
    let len = usize::from(b1 & 0x7f);
    (b1 & 0x80 != 0 && len <= IN_PLACE_PAYLOAD && bytes.len() == 6 + len).then_some((text, len))
}

/// Whether the (non-blocking) socket has bytes to read, or its peer closed it: one
/// `recv(MSG_PEEK)`.
fn has_input(io: &std::net::TcpStream) -> bool {
    match io.peek(&mut [0u8; 1]) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// What is left of `frames` once their first `written` bytes have gone.
fn unsent<'a>(frames: &'a [&'a Bytes], mut written: usize) -> impl Iterator<Item = &'a [u8]> {
    frames.iter().filter_map(move |f| {
        if written >= f.len() {
            written -= f.len();
            return None;
        }
        let part = &f[written..];
        written = 0;
        Some(part)
    })
}

/// Puts a handed-back socket back on the runtime.
fn resume<T>(entry: Entry<T>) -> Option<(WebSocket<TcpStream>, T)> {
    let Entry { io, socket, timers, value, unsent } = entry;
    match TcpStream::from_std(io) {
        Ok(io) => {
            let mut ws = socket.resume(io, timers);
            if let Some((rest, started)) = unsent {
                ws.queue_unsent(rest, started);
            }
            Some((ws, value))
        }
        Err(e) => {
            tracing::debug!(error = %e, "a parked connection could not rejoin the runtime: dropped");
            None
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// A parked connection without compression (the compression contexts, when
    /// negotiated, are behind a pointer) and without timers (those are in the chunk's
    /// table) fits the slot size the docs give; the exact figures, which change with
    /// tokio's and the standard library's types, are in docs/PERFORMANCE.md.
    #[test]
    fn a_deadline_is_never_early_and_at_most_a_microsecond_late() {
        let origin = super::Tick::origin();
        for nanos in [0, 1, 999, 1000, 1001, 25_000_000_123] {
            let at = origin + std::time::Duration::from_nanos(nanos);
            let back = super::Tick::from(at).instant();
            assert!(back >= at && back - at < std::time::Duration::from_micros(1), "{nanos}");
        }
        assert_eq!(std::mem::size_of::<(super::Tick, u32, u32)>(), 16);
    }

    #[test]
    fn a_parked_connection_fits_in_a_136_byte_slot() {
        let slot = std::mem::size_of::<super::Slot<()>>();
        assert!(slot <= 136, "Slot<()> is {slot} bytes");
        // And the timers' state, for a connection that has timers.
        let timers = std::mem::size_of::<Option<super::ParkedKeepalive>>();
        assert!(timers <= 152, "Option<ParkedKeepalive> is {timers} bytes");
    }
}
