//! `WebSocket<S>`: one connection over any `AsyncRead + AsyncWrite`, driving the
//! protocol core, as a `Stream` of received messages and a `Sink` of messages to send.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, sleep_until, Instant, Sleep};
use volley_proto::handshake::Headers;
use volley_proto::{
    CloseCode, Connection, DeflateParams, Event, MessageKind, ParkedConnection, PreparedMessage, Role, State,
};

use crate::config::{Config, SlowReader};
use crate::error::Error;
use crate::message::Message;

/// The most chunks gathered into one vectored write.
const MAX_IOVECS: usize = 64;

/// Reads grow to at most `read_buffer_size << MAX_READ_BOOST` while the input keeps
/// filling them (a peer that streams), so it is taken in fewer, larger reads, and each
/// read's replies in fewer writes; sparse input keeps reads, and the buffers that
/// received messages keep alive, at `read_buffer_size`.
const MAX_READ_BOOST: u8 = 3;

/// Growing reads stop here (a `read_buffer_size` set larger is used as it is).
const MAX_GROWN_READ: usize = 256 << 10;

/// A WebSocket connection after a successful opening handshake.
///
/// Read with [`WebSocket::recv`] (or as a [`Stream`]), write with [`WebSocket::send`],
/// [`WebSocket::feed`] and [`WebSocket::flush`] (or as a [`Sink`]).
///
/// Writes are corked: `feed` only queues a frame, and queued frames go out together,
/// in one vectored write, when the application flushes, when the queue passes the write
/// buffer size, or when `recv` has handled the input it has and is about to read more.
/// An echo loop that `feed`s every message it receives therefore answers each read's
/// batch of messages with one write, before it reads again.
///
/// Received pings are answered and the peer's close frame echoed automatically. The
/// stream ends (`None`) after the closing handshake; its last item is the peer's
/// [`Message::Close`], or the [`Error`] that ended the connection. By then the close
/// frames have been flushed and the TCP connection shut down (the server closes it
/// first; a client waits for the server to, up to the close timeout), so dropping the
/// `WebSocket` after the stream ends loses nothing.
pub struct WebSocket<S> {
    io: S,
    conn: Connection,
    limits: Limits,
    wq: VecDeque<Bytes>,
    wq_len: usize,
    /// The front chunk of `wq` is partly written: nothing may go before it.
    front_partial: bool,
    read_eof: bool,
    /// The item to yield once the connection has finished closing (boxed: it is set
    /// once, at the end, and an open connection should not carry its space).
    last: Option<Box<Result<Message, Error>>>,
    close_timer: Option<Pin<Box<Sleep>>>,
    finish: Finish,
    info: ConnectionInfo,
    user_data: http::Extensions,
    /// Allocated only when keepalive pings, an idle timeout or a lifetime is set.
    keepalive: Option<Box<Keepalive>>,
    dropped: u64,
    /// `Sink::poll_ready` decided the next message is dropped.
    drop_next: bool,
    /// The peer stopped answering: do not wait for anything from it.
    dead: bool,
    /// Reads ask for `read_buffer_size << read_boost` bytes: the size doubles after a
    /// read that filled the room it had, and halves after one that used less than
    /// half, within [`MAX_READ_BOOST`].
    read_boost: u8,
}

/// Who and what a connection is: an id unique in the process, addresses, the request
/// target and headers, what the handshake agreed on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    id: u64,
    addrs: Addrs,
    target: Target,
    headers: Headers,
    /// The agreed subprotocol, extensions and HTTP version, allocated only when they
    /// are not the plain ones (none, none, HTTP/1.1).
    agreed: Option<Box<Agreed>>,
}

/// What a handshake agreed on beyond plain WebSocket over HTTP/1.1.
#[derive(Debug, Clone)]
struct Agreed {
    protocol: Option<Box<str>>,
    extensions: Box<[volley_proto::ExtensionOffer]>,
    http_version: http::Version,
}

impl Agreed {
    fn is_plain(&self) -> bool {
        self.protocol.is_none() && self.extensions.is_empty() && self.http_version == http::Version::HTTP_11
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A connection's two addresses: inline when both are IPv4 or unknown (16 bytes, where
/// two `Option<SocketAddr>` take 64), boxed otherwise.
#[derive(Debug, Clone)]
enum Addrs {
    /// The remote's and the local address and port; bit 0 of `known` says the remote
    /// address is known, bit 1 the local one.
    V4 {
        ips: [[u8; 4]; 2],
        ports: [u16; 2],
        known: u8,
    },
    Other(Box<[Option<SocketAddr>; 2]>),
}

impl Default for Addrs {
    fn default() -> Self {
        Addrs::V4 { ips: [[0; 4]; 2], ports: [0; 2], known: 0 }
    }
}

/// A request target: inline up to [`Target::INLINE`] bytes (most WebSocket paths fit),
/// boxed past that. A small allocation that lives as long as its connection pins a
/// page of the heap that would otherwise go back to the allocator.
#[derive(Clone)]
enum Target {
    Inline { len: u8, bytes: [u8; Target::INLINE] },
    Boxed(Box<str>),
}

impl Target {
    /// The longest target kept inline: 22 bytes make the whole 24.
    const INLINE: usize = 22;

    fn new(target: &str) -> Self {
        match u8::try_from(target.len()) {
            Ok(len) if target.len() <= Target::INLINE => {
                let mut bytes = [0; Target::INLINE];
                bytes[..target.len()].copy_from_slice(target.as_bytes());
                Target::Inline { len, bytes }
            }
            _ => Target::Boxed(target.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str`, cut at its end: always UTF-8.
            Target::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            Target::Boxed(s) => s,
        }
    }
}

impl Default for Target {
    fn default() -> Self {
        Target::new("")
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Addrs {
    fn new(remote: Option<SocketAddr>, local: Option<SocketAddr>) -> Self {
        let mut inline = Addrs::default();
        if let Addrs::V4 { ips, ports, known } = &mut inline {
            for (i, addr) in [remote, local].into_iter().enumerate() {
                match addr {
                    None => {}
                    Some(SocketAddr::V4(a)) => {
                        (ips[i], ports[i]) = (a.ip().octets(), a.port());
                        *known |= 1 << i;
                    }
                    Some(SocketAddr::V6(_)) => return Addrs::Other(Box::new([remote, local])),
                }
            }
        }
        inline
    }

    /// The remote and the local address.
    fn get(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        match self {
            Addrs::V4 { ips, ports, known } => {
                let at = |i: usize| {
                    (known & (1 << i) != 0).then(|| SocketAddr::V4(SocketAddrV4::new(ips[i].into(), ports[i])))
                };
                (at(0), at(1))
            }
            Addrs::Other(a) => (a[0], a[1]),
        }
    }
}

impl ConnectionInfo {
    fn new(protocol: Option<String>) -> Self {
        let mut info = ConnectionInfo {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addrs: Addrs::default(),
            target: Target::default(),
            headers: Headers::default(),
            agreed: None,
        };
        info.change_agreed(|a| a.protocol = protocol.map(String::into_boxed_str));
        info
    }

    /// Changes what was agreed, allocating only for what is not plain.
    fn change_agreed(&mut self, change: impl FnOnce(&mut Agreed)) {
        let mut agreed = self.agreed.take().unwrap_or_else(|| {
            Box::new(Agreed { protocol: None, extensions: Box::default(), http_version: http::Version::HTTP_11 })
        });
        change(&mut agreed);
        self.agreed = (!agreed.is_plain()).then_some(agreed);
    }

    /// A number unique among the connections of this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's address, when the transport has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.addrs.get().0
    }

    /// This end's address, when the transport has one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addrs.get().1
    }

    /// The request target, path and query (`/chat?room=1`).
    pub fn target(&self) -> &str {
        self.target.as_str()
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        let target = self.target.as_str();
        target.split_once('?').map_or(target, |(p, _)| p)
    }

    /// The query part of the target without `?`, if any (`room=1`).
    pub fn query(&self) -> Option<&str> {
        self.target.as_str().split_once('?').map(|(_, q)| q)
    }

    /// The handshake headers: the request's on a server, the response's on a client.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The agreed subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.agreed.as_ref()?.protocol.as_deref()
    }

    /// The agreed extensions, as they appeared in the server's answer.
    pub fn extensions(&self) -> &[volley_proto::ExtensionOffer] {
        self.agreed.as_ref().map_or(&[], |a| &a.extensions)
    }

    /// The HTTP version the WebSocket runs over (HTTP/1.1, or HTTP/2 with RFC 8441).
    pub fn http_version(&self) -> http::Version {
        self.agreed.as_ref().map_or(http::Version::HTTP_11, |a| a.http_version)
    }
}

/// Keepalive, idle and lifetime timers, with their state and settings.
struct Keepalive {
    /// Fires for the next ping, or at the pong deadline when a ping is out.
    ping_timer: Option<Pin<Box<Sleep>>>,
    idle_timer: Option<Pin<Box<Sleep>>>,
    lifetime_timer: Option<Pin<Box<Sleep>>>,
    state: KeepaliveState,
}

/// What the timers go by, the same running and parked.
#[derive(Clone, Copy)]
struct KeepaliveState {
    /// When the outstanding ping left; its payload is `seq`.
    outstanding: Option<Instant>,
    seq: u64,
    rtt: Option<Duration>,
    last_read: Instant,
    ping_interval: Option<Duration>,
    pong_timeout: Duration,
    idle_timeout: Option<Duration>,
}

impl Keepalive {
    /// The timers `config` asks for, or `None` when it asks for none.
    fn new(config: &Config) -> Option<Box<Self>> {
        if config.ping_interval.is_none() && config.idle_timeout.is_none() && config.max_lifetime.is_none() {
            return None;
        }
        Some(Box::new(Keepalive {
            ping_timer: config.ping_interval.map(|d| Box::pin(sleep(d))),
            idle_timer: config.idle_timeout.map(|d| Box::pin(sleep(d))),
            lifetime_timer: config.max_lifetime.map(|d| Box::pin(sleep(d))),
            state: KeepaliveState {
                outstanding: None,
                seq: 0,
                rtt: None,
                last_read: Instant::now(),
                ping_interval: config.ping_interval,
                pong_timeout: config.pong_timeout,
                idle_timeout: config.idle_timeout,
            },
        }))
    }

    /// Drops the timers, keeping when each one is due.
    #[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
    fn park(self) -> ParkedKeepalive {
        let at = |t: Option<Pin<Box<Sleep>>>| t.map(|t| t.deadline());
        ParkedKeepalive {
            ping_at: at(self.ping_timer),
            idle_at: at(self.idle_timer),
            lifetime_at: at(self.lifetime_timer),
            state: self.state,
        }
    }
}

/// A parked connection's [`Keepalive`]: the timers' deadlines, without the timers. A
/// tokio timer that has been polled holds the waker of its task, and with it the
/// memory of the task that ended when the connection was parked. Kept apart from the
/// [`ParkedSocket`] (the parking stores it in its own table), so that connections
/// without timers do not pay for it and connections with timers do not each
/// allocate it.
#[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
pub(crate) struct ParkedKeepalive {
    ping_at: Option<Instant>,
    idle_at: Option<Instant>,
    lifetime_at: Option<Instant>,
    state: KeepaliveState,
}

#[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
impl ParkedKeepalive {
    /// The timers again, due when they were.
    fn resume(self) -> Keepalive {
        let timer = |at: Option<Instant>| at.map(|at| Box::pin(sleep_until(at)));
        Keepalive {
            ping_timer: timer(self.ping_at),
            idle_timer: timer(self.idle_at),
            lifetime_timer: timer(self.lifetime_at),
            state: self.state,
        }
    }

    /// The earliest keepalive, idle or lifetime deadline: the connection must be
    /// running by then, even if the peer sends nothing.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        [self.ping_at, self.idle_at, self.lifetime_at].into_iter().flatten().min()
    }
}

/// The settings every running connection consults, copied out of its [`Config`] so
/// that each connection does not keep the whole configuration (subprotocols,
/// compression settings, handshake limits) for its whole life. The timers' settings
/// live with the timers, in [`Keepalive`].
///
/// Stored in 16 bytes: sizes are clamped to 4 GiB, and the close timeout is kept in
/// whole milliseconds, rounded up (clamped to about 49 days).
#[derive(Debug, Clone, Copy)]
struct Limits {
    write_buffer_size: u32,
    read_buffer_size: u32,
    slow_reader: SlowReader,
    close_timeout_ms: u32,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let ms = c.close_timeout.as_micros().div_ceil(1000);
        Limits {
            write_buffer_size: clamp(c.write_buffer_size),
            read_buffer_size: clamp(c.read_buffer_size),
            slow_reader: c.slow_reader,
            close_timeout_ms: u32::try_from(ms).unwrap_or(u32::MAX),
        }
    }
}

impl Limits {
    fn write_buffer_size(&self) -> usize {
        self.write_buffer_size as usize
    }

    fn close_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.close_timeout_ms))
    }
}

/// Progress of the end of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Running,
    Flushing,
    AwaitingEof,
    ShuttingDown,
    Done,
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("id", &self.info.id)
            .field("role", &self.conn.role())
            .field("state", &self.conn.state())
            .field("protocol", &self.info.protocol())
            .field("buffered", &self.wq_len)
            .finish()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wraps a transport on which the opening handshake has already completed.
    /// `leftover` holds any bytes read past the handshake head.
    /// `deflate` holds the permessage-deflate parameters if the handshake agreed on them
    /// (they are used with the configuration's deflate settings).
    pub fn from_handshaken(
        io: S,
        role: Role,
        config: Config,
        leftover: &[u8],
        protocol: Option<String>,
        deflate: Option<DeflateParams>,
    ) -> Self {
        let mut conn = Connection::with_shared_config(role, Arc::clone(&config.proto));
        if let Some(params) = deflate {
            conn.enable_deflate(params, config.deflate.clone().unwrap_or_default());
        }
        if !leftover.is_empty() {
            conn.receive(leftover);
        }
        let (limits, keepalive) = (Limits::from(&config), Keepalive::new(&config));
        WebSocket::running(io, conn, limits, ConnectionInfo::new(protocol), http::Extensions::new(), keepalive, 0)
    }

    /// Records the handshake details in [`WebSocket::info`] (the accept and connect
    /// functions do this; a custom handshake may too).
    pub fn with_handshake_info(
        mut self,
        target: &str,
        headers: Headers,
        extensions: Vec<volley_proto::ExtensionOffer>,
        http_version: http::Version,
    ) -> Self {
        self.info.target = Target::new(target);
        self.info.headers = headers;
        self.info.change_agreed(|a| {
            a.extensions = extensions.into_boxed_slice();
            a.http_version = http_version;
        });
        self
    }

    /// Records the transport's addresses in [`WebSocket::info`] (a `None` keeps what is
    /// already known).
    pub fn with_addrs(mut self, remote: Option<SocketAddr>, local: Option<SocketAddr>) -> Self {
        let (r, l) = self.info.addrs.get();
        self.info.addrs = Addrs::new(remote.or(r), local.or(l));
        self
    }

    /// The connection's id, addresses, target, headers and agreed protocol and
    /// extensions.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Frees the handshake's request headers kept for [`ConnectionInfo::headers`]
    /// (typically 100 to 500 bytes), for a server that has read what it needs from them
    /// (in the accept hook, or just after) and holds many connections, parked ones
    /// especially. `info().headers()` is empty afterwards; the rest of the info stays.
    pub fn drop_request_headers(&mut self) {
        self.info.headers = Headers::default();
    }

    /// Typed data the application attaches to this connection (user id, session...).
    pub fn user_data(&self) -> &http::Extensions {
        &self.user_data
    }

    /// Mutable access to the connection's typed user data.
    pub fn user_data_mut(&mut self) -> &mut http::Extensions {
        &mut self.user_data
    }

    /// Moves the handshake details out, leaving only the id (for log lines): the split
    /// halves share one copy of them.
    pub(crate) fn take_info(&mut self) -> ConnectionInfo {
        let mut light = ConnectionInfo {
            id: self.info.id,
            addrs: Addrs::default(),
            target: Target::default(),
            headers: Headers::default(),
            agreed: None,
        };
        light.change_agreed(|a| a.http_version = self.info.http_version());
        std::mem::replace(&mut self.info, light)
    }

    /// Puts back the handshake details [`WebSocket::take_info`] moved out.
    pub(crate) fn restore_info(&mut self, info: ConnectionInfo) {
        self.info = info;
    }

    pub(crate) fn write_policy(&self) -> (usize, SlowReader) {
        (self.limits.write_buffer_size(), self.limits.slow_reader)
    }

    pub(crate) fn set_write_policy(&mut self, policy: SlowReader) {
        self.limits.slow_reader = policy;
    }

    /// Fails the connection on the library's own initiative (a slow reader, a peer that
    /// stopped answering pings): drops everything queued that has not started to leave
    /// and closes with `code` and `reason` right behind the chunk being written.
    ///
    /// What is dropped: data, pings and pongs, and a close frame the application had
    /// queued behind that data. A close frame is never lost: one that had started to
    /// leave finishes; one that had not is replaced by this close frame (with the
    /// code that says why the connection is failed).
    pub(crate) fn abort_with(&mut self, code: CloseCode, reason: &str) {
        let discarded_close = self.abort_queue();
        if !self.conn.is_close_sent() {
            let _ = self.conn.send_close(code, reason);
        } else if discarded_close {
            let _ = self.conn.resend_close(code, reason);
        }
        self.take_transmits();
    }

    /// Whether a close frame has been queued on this connection (by the application,
    /// as the echo of the peer's, or by the library): nothing more may be sent.
    pub(crate) fn is_close_sent(&self) -> bool {
        self.conn.is_close_sent()
    }

    /// The latest round-trip time measured from a keepalive ping and its pong.
    pub fn rtt(&self) -> Option<Duration> {
        self.keepalive.as_ref().and_then(|k| k.state.rtt)
    }

    /// Messages dropped by the [`SlowReader::DropNewest`] policy.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.info.protocol()
    }

    /// The permessage-deflate parameters, if the handshake agreed on the extension.
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.conn.deflate_params()
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.conn.role()
    }

    /// The protocol state.
    pub fn state(&self) -> State {
        self.conn.state()
    }

    /// Bytes queued for sending and not yet written to the transport.
    pub fn buffered_amount(&self) -> usize {
        self.wq_len + self.conn.transmit_len()
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Receives the next message; `None` once the connection has closed.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Queues a message and flushes it (and everything queued before it).
    pub fn send(&mut self, msg: Message) -> impl Future<Output = Result<(), Error>> + '_ {
        // Written with `poll_fn` rather than as an `async fn`: an application's
        // connection future embeds this one, and an `async fn` would hold the message
        // twice (its argument and the local it moves into) beside its await states.
        let mut msg = Some(msg);
        poll_fn(move |cx| {
            if msg.is_some() {
                let queue = ready!(self.poll_write_ready(cx))?;
                if let Some(msg) = msg.take().filter(|_| queue) {
                    self.queue(msg)?;
                }
            }
            self.poll_flush_all(cx).map_err(Error::Io)
        })
    }

    /// Queues a message without flushing. When the write buffer is full the
    /// [`SlowReader`] policy decides: wait for it to drain, drop this message, or close.
    pub fn feed(&mut self, msg: Message) -> impl Future<Output = Result<(), Error>> + '_ {
        let mut msg = Some(msg);
        poll_fn(move |cx| {
            let queue = ready!(self.poll_write_ready(cx))?;
            match msg.take() {
                Some(msg) if queue => Poll::Ready(self.queue(msg)),
                _ => Poll::Ready(Ok(())),
            }
        })
    }

    /// Queues a prepared message (encoded, and compressed, once for many connections;
    /// see [`PreparedMessage`]), under the same write-buffer policy as `feed`.
    pub async fn feed_prepared(&mut self, msg: &PreparedMessage) -> Result<(), Error> {
        if poll_fn(|cx| self.poll_write_ready(cx)).await? {
            self.queue_prepared(msg)?;
        }
        Ok(())
    }

    pub(crate) fn queue_prepared(&mut self, msg: &PreparedMessage) -> Result<(), Error> {
        self.conn.send_prepared(msg)?;
        self.take_transmits();
        Ok(())
    }

    /// Queues one fragment of a message (see
    /// [`Connection::send_fragment`](volley_proto::Connection::send_fragment)), so a
    /// large message can be streamed without holding it whole.
    ///
    /// A fragment is never dropped (the rest of its message would be meaningless): under
    /// [`SlowReader::DropNewest`] it waits for room, as under [`SlowReader::Wait`];
    /// under [`SlowReader::Close`] a full buffer closes the connection.
    pub async fn feed_fragment(&mut self, kind: MessageKind, data: Bytes, fin: bool) -> Result<(), Error> {
        poll_fn(|cx| self.poll_room(cx, false)).await?;
        self.conn.send_fragment(kind, data, fin)?;
        self.take_transmits();
        Ok(())
    }

    /// Queues a message that is never compressed, even with permessage-deflate on (for
    /// data that is already compressed).
    pub async fn feed_uncompressed(&mut self, kind: MessageKind, data: Bytes) -> Result<(), Error> {
        if poll_fn(|cx| self.poll_write_ready(cx)).await? {
            self.conn.send_uncompressed(kind, data)?;
            self.take_transmits();
        }
        Ok(())
    }

    /// Writes everything queued to the transport: awaiting it is awaiting the drain of
    /// the write buffer ([`WebSocket::buffered_amount`] reaches 0).
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_flush_all(cx)).await.map_err(Error::Io)
    }

    /// Starts the closing handshake with `code` and `reason`, then waits for it to
    /// complete (messages still arriving are discarded) or for the close timeout.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        if !self.conn.is_close_sent() {
            self.conn.send_close(code, reason)?;
            self.take_transmits();
        }
        while let Some(item) = self.recv().await {
            item?;
        }
        Ok(())
    }

    pub(crate) fn queue(&mut self, msg: Message) -> Result<(), Error> {
        match msg {
            Message::Text(t) => self.conn.send_text(t)?,
            Message::Binary(b) => self.conn.send_binary(b)?,
            Message::Ping(b) => self.conn.send_ping(b)?,
            Message::Pong(b) => self.conn.send_pong(b)?,
            Message::Close(frame) => {
                let (code, reason) = match &frame {
                    Some(f) => (f.code, f.reason.as_str()),
                    None => (CloseCode::NORMAL, ""),
                };
                self.conn.send_close(code, reason)?;
            }
        }
        // The frame stays in the core's batch buffer, where the frames fed after it are
        // appended: the next write takes the whole batch as one chunk.
        Ok(())
    }

    fn take_transmits(&mut self) {
        // Control frames queued with priority (the transport is backed up) go right
        // behind the chunk being written, ahead of data that has not started.
        let mut at = usize::from(self.front_partial);
        while let Some(chunk) = self.conn.poll_transmit_control() {
            self.wq_len += chunk.len();
            self.wq.insert(at.min(self.wq.len()), chunk);
            at += 1;
        }
        while let Some(chunk) = self.conn.poll_transmit() {
            self.wq_len += chunk.len();
            self.wq.push_back(chunk);
        }
    }

    /// Ready with `true` when a message may be queued, `false` when the slow-reader
    /// policy dropped it.
    pub(crate) fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        self.poll_room(cx, true)
    }

    /// Ready when there is room in the write buffer, applying the slow-reader policy
    /// when there is none: ready with `false` when [`SlowReader::DropNewest`] drops the
    /// message, unless it may not be dropped (`droppable` false: it waits for room).
    fn poll_room(&mut self, cx: &mut Context<'_>, droppable: bool) -> Poll<Result<bool, Error>> {
        if self.finish == Finish::Done || self.dead {
            return Poll::Ready(Err(Error::Closed));
        }
        if self.buffered_amount() < self.limits.write_buffer_size() {
            return Poll::Ready(Ok(true));
        }
        let written = self.poll_write_backlog(cx);
        if let Poll::Ready(Err(e)) = written {
            return Poll::Ready(Err(Error::Io(e)));
        }
        if self.buffered_amount() < self.limits.write_buffer_size() {
            return Poll::Ready(Ok(true));
        }
        match self.limits.slow_reader {
            SlowReader::Wait => Poll::Pending,
            SlowReader::DropNewest if !droppable => Poll::Pending,
            SlowReader::DropNewest => {
                self.dropped += 1;
                tracing::debug!(id = self.info.id, dropped = self.dropped, "write buffer full: message dropped");
                Poll::Ready(Ok(false))
            }
            SlowReader::Close(code) => {
                tracing::debug!(id = self.info.id, %code, "write buffer full: closing");
                self.abort_with(code, "");
                Poll::Ready(Err(Error::SlowReader(code)))
            }
        }
    }

    /// Discards everything queued that has not started to leave (all but a partly
    /// written front chunk); true when that discarded a close frame.
    fn abort_queue(&mut self) -> bool {
        // A close frame is the last frame a connection queues (nothing may follow it),
        // and it fits in one chunk: it survives only if it has been written already
        // (the queues are empty) or is in the partly written chunk that stays.
        let nothing_after_front = self.conn.transmit_len() == 0 && self.wq.len() <= usize::from(self.front_partial);
        let discarded_close = self.conn.is_close_sent() && !nothing_after_front;
        while self.conn.poll_transmit().is_some() {}
        let keep = usize::from(self.front_partial);
        while self.wq.len() > keep {
            if let Some(c) = self.wq.pop_back() {
                self.wq_len -= c.len();
            }
        }
        self.conn.set_control_priority(true);
        discarded_close
    }

    /// Writes the queue to the transport, gathering chunks into vectored writes.
    fn poll_write_queue_inner(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wq.is_empty() {
            let n = if self.wq.len() > 1 && self.io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (slot, chunk) in slices.iter_mut().zip(self.wq.iter()) {
                    *slot = IoSlice::new(chunk);
                    count += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?
            } else {
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.wq[0]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance_queue(n);
        }
        Poll::Ready(Ok(()))
    }

    /// `poll_write_queue`, noting whether the transport is backed up: while it is,
    /// control frames are queued with priority.
    fn poll_write_backlog(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.take_transmits();
        let r = self.poll_write_queue_inner(cx);
        self.conn.set_control_priority(r.is_pending());
        r
    }

    fn advance_queue(&mut self, mut n: usize) {
        self.wq_len -= n;
        while n > 0 {
            let Some(front) = self.wq.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.wq.pop_front();
                self.front_partial = false;
            } else {
                front.advance(n);
                self.front_partial = true;
                n = 0;
            }
        }
    }

    pub(crate) fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // `poll_write_backlog` takes the core's output first.
        ready!(self.poll_write_backlog(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Runs the keepalive, idle and lifetime timers.
    fn poll_timers(&mut self, cx: &mut Context<'_>) {
        let Some(k) = self.keepalive.as_deref_mut() else {
            return;
        };
        let now = Instant::now();
        let mut sent_ping = false;
        if let Some(t) = k.ping_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                if k.state.outstanding.is_some() {
                    // The peer did not answer the last ping in time: it is gone.
                    k.ping_timer = None;
                    tracing::debug!(id = self.info.id, "pong timeout: closing");
                    self.dead = true;
                    self.abort_with(CloseCode::INTERNAL_ERROR, "keepalive timeout");
                    self.set_last(Err(Error::Timeout(crate::error::Timeout::KeepalivePong)));
                    self.finish = Finish::Flushing;
                    return;
                }
                k.state.seq += 1;
                self.conn.set_control_priority(true);
                if self.conn.send_ping(Bytes::copy_from_slice(&k.state.seq.to_be_bytes())).is_ok() {
                    k.state.outstanding = Some(now);
                    t.as_mut().reset(now + k.state.pong_timeout);
                    let _ = t.as_mut().poll(cx);
                } else {
                    k.ping_timer = None;
                }
                self.conn.set_control_priority(!self.wq.is_empty());
                sent_ping = true;
            }
        }
        let mut close = None;
        if let (Some(t), Some(idle)) = (k.idle_timer.as_mut(), k.state.idle_timeout) {
            if t.as_mut().poll(cx).is_ready() {
                let due = k.state.last_read + idle;
                if due > now {
                    t.as_mut().reset(due);
                    let _ = t.as_mut().poll(cx);
                } else {
                    k.idle_timer = None;
                    close = Some("idle timeout");
                }
            }
        }
        if let Some(t) = k.lifetime_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                k.lifetime_timer = None;
                close = close.or(Some("connection lifetime reached"));
            }
        }
        if sent_ping {
            self.take_transmits();
        }
        if let Some(reason) = close {
            self.local_close(CloseCode::GOING_AWAY, reason);
        }
    }

    /// Records the stream's last item, unless one is already recorded (after a
    /// failure the error stays the last word).
    fn set_last(&mut self, last: Result<Message, Error>) {
        if self.last.is_none() {
            self.last = Some(Box::new(last));
        }
    }

    /// Starts the closing handshake on the library's own initiative.
    pub(crate) fn local_close(&mut self, code: CloseCode, reason: &str) {
        tracing::debug!(id = self.info.id, %code, reason, "closing");
        if !self.conn.is_close_sent() {
            let _ = self.conn.send_close(code, reason);
            self.take_transmits();
        }
    }

    fn on_pong(&mut self, payload: &[u8]) {
        let Some(k) = self.keepalive.as_deref_mut() else {
            return;
        };
        if let Some(at) = k.state.outstanding {
            if payload == k.state.seq.to_be_bytes() {
                k.state.rtt = Some(at.elapsed());
                k.state.outstanding = None;
                if let (Some(t), Some(every)) = (k.ping_timer.as_mut(), k.state.ping_interval) {
                    t.as_mut().reset(at + every);
                }
            }
        }
    }

    /// Reads once into the core's input buffer: `Ok(0)` at end of stream.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let base = self.limits.read_buffer_size as usize;
        let size = base.saturating_mul(1 << self.read_boost).min(base.max(MAX_GROWN_READ));
        let want = size.max(self.conn.input_needed().min(4 << 20));
        let buf = self.conn.input_buffer();
        if buf.capacity() - buf.len() < want / 2 {
            buf.reserve(want);
        }
        // A read takes no more than asked, even where the buffer grew by more.
        let room = (buf.capacity() - buf.len()).min(want);
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut BufMut::limit(&mut *buf, room));
        if let Poll::Ready(Ok(n)) = read {
            if n >= room.min(size) {
                self.read_boost = (self.read_boost + 1).min(MAX_READ_BOOST);
            } else if n < size / 2 {
                self.read_boost = self.read_boost.saturating_sub(1);
            }
        }
        read
    }

    /// The transport failed: the connection is over, with the error as its last item
    /// (events not yet taken are dropped).
    fn transport_failed(&mut self, e: io::Error) {
        self.conn.receive_eof();
        while self.conn.poll_event().is_some() {}
        self.finish = Finish::Done;
        self.last = Some(Box::new(Err(Error::Io(e))));
    }

    fn arm_close_timer(&mut self) {
        if self.close_timer.is_none() {
            self.close_timer = Some(Box::pin(sleep(self.limits.close_timeout())));
        }
    }

    fn close_timer_expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.close_timer {
            Some(t) => t.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    /// Ends the connection: flush, then (server) shut down or (client) wait for the
    /// server to close first, all within the close timeout.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.arm_close_timer();
        loop {
            match self.finish {
                Finish::Running | Finish::Flushing => {
                    self.finish = Finish::Flushing;
                    match self.poll_flush_all(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => {
                            self.finish = Finish::Done;
                            continue;
                        }
                        Poll::Pending => return self.pending_or_timeout(cx),
                    }
                    // §7.1.1: "the underlying TCP connection, in most normal cases, SHOULD
                    // be closed first by the server ... the client SHOULD wait for the
                    // server to close the connection".
                    self.finish = match self.conn.role() {
                        Role::Client if !self.read_eof && !self.dead => Finish::AwaitingEof,
                        _ => Finish::ShuttingDown,
                    };
                }
                Finish::AwaitingEof => match self.poll_read_some(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.read_eof = true;
                        self.finish = Finish::ShuttingDown;
                    }
                    Poll::Ready(Ok(_)) => {
                        // Anything after the closing handshake is discarded.
                        self.conn.input_buffer().clear();
                    }
                    Poll::Pending => return self.pending_or_timeout(cx),
                },
                Finish::ShuttingDown => match Pin::new(&mut self.io).poll_shutdown(cx) {
                    Poll::Ready(_) => self.finish = Finish::Done,
                    Poll::Pending => return self.pending_or_timeout(cx),
                },
                Finish::Done => {
                    self.close_timer = None;
                    self.conn.release_idle_memory();
                    self.wq.clear();
                    self.wq_len = 0;
                    return Poll::Ready(());
                }
            }
        }
    }

    fn pending_or_timeout(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.close_timer_expired(cx) {
            tracing::debug!("closing handshake timed out");
            // Give up on the peer, but still shut our side down; if even that cannot
            // finish, just stop.
            self.finish = if self.finish == Finish::ShuttingDown { Finish::Done } else { Finish::ShuttingDown };
            self.set_last(Err(Error::Timeout(crate::error::Timeout::Close)));
            return self.poll_finish(cx);
        }
        Poll::Pending
    }

    /// Polls for the next message (the body of [`WebSocket::recv`] and of the
    /// [`Stream`] implementation).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        loop {
            if self.finish == Finish::Done {
                return Poll::Ready(self.last.take().map(|last| *last));
            }
            if self.finish != Finish::Running {
                ready!(self.poll_finish(cx));
                continue;
            }
            if let Some(event) = self.conn.poll_event() {
                // Replies the core made (a pong, a close echo) stay in its batch buffer
                // with the application's answers until the next write takes them.
                let msg = match event {
                    Event::Text(t) => Message::Text(t),
                    Event::Binary(b) => Message::Binary(b),
                    Event::Ping(b) => Message::Ping(b),
                    Event::Pong(b) => {
                        self.on_pong(&b);
                        Message::Pong(b)
                    }
                    Event::Close(frame) => {
                        // After a failure the error stays the last word.
                        self.set_last(Ok(Message::Close(frame)));
                        continue;
                    }
                    Event::Error(e) => {
                        tracing::debug!(error = %e, "connection failed");
                        self.set_last(Err(Error::Protocol(e)));
                        continue;
                    }
                    _ => continue,
                };
                return Poll::Ready(Some(Ok(msg)));
            }
            match self.conn.state() {
                State::Closed => {
                    ready!(self.poll_finish(cx));
                    continue;
                }
                State::Closing => {
                    self.arm_close_timer();
                    if self.close_timer_expired(cx) {
                        self.set_last(Err(Error::Timeout(crate::error::Timeout::Close)));
                        self.finish = Finish::ShuttingDown;
                        continue;
                    }
                }
                State::Open => {}
            }
            self.poll_timers(cx);
            if self.finish != Finish::Running {
                continue;
            }
            // Before reading more, send what the application queued while handling the
            // input read so far: the replies to one read do not wait behind the next
            // (with a peer that streams without pause, that could be until the write
            // buffer fills), and the peer can work on them while this side reads. A
            // transport that cannot take them yet does not hold up the read.
            if self.buffered_amount() > 0 {
                if let Poll::Ready(Err(e)) = self.poll_flush_all(cx) {
                    self.transport_failed(e);
                    continue;
                }
            }
            match self.poll_read_some(cx) {
                Poll::Ready(Ok(0)) => {
                    self.read_eof = true;
                    self.conn.receive_eof();
                }
                Poll::Ready(Ok(_)) => {
                    if let Some(k) = self.keepalive.as_deref_mut().filter(|k| k.idle_timer.is_some()) {
                        k.state.last_read = Instant::now();
                    }
                    self.conn.receive_buffered();
                }
                Poll::Ready(Err(e)) => self.transport_failed(e),
                Poll::Pending => {
                    // About to wait for input: release idle buffers and send what the
                    // application queued while handling the input so far.
                    self.conn.release_idle_memory();
                    if let Poll::Ready(Err(e)) = self.poll_flush_all(cx) {
                        self.transport_failed(e);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// What a [quiescent](WebSocket::is_quiescent) connection keeps while parked (see
/// [`crate::park`]): everything but its transport, its (empty) buffers, queues and
/// close state, and its timers (a [`ParkedKeepalive`], kept apart).
#[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
pub(crate) struct ParkedSocket {
    conn: ParkedConnection,
    limits: Limits,
    info: ConnectionInfo,
    user_data: http::Extensions,
    dropped: u64,
}

#[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
impl ParkedSocket {
    /// The connection again, on `io`, with its timers, as it was parked.
    pub(crate) fn resume<S>(self, io: S, keepalive: Option<ParkedKeepalive>) -> WebSocket<S> {
        let ParkedSocket { conn, limits, info, user_data, dropped } = self;
        let keepalive = keepalive.map(|k| Box::new(k.resume()));
        WebSocket::running(io, conn.resume(), limits, info, user_data, keepalive, dropped)
    }
}

impl<S> WebSocket<S> {
    /// A running connection with empty queues, from what it keeps for its whole life
    /// (a new one, or one coming back from parking).
    fn running(
        io: S,
        conn: Connection,
        limits: Limits,
        info: ConnectionInfo,
        user_data: http::Extensions,
        keepalive: Option<Box<Keepalive>>,
        dropped: u64,
    ) -> Self {
        WebSocket {
            io,
            conn,
            limits,
            wq: VecDeque::new(),
            wq_len: 0,
            front_partial: false,
            read_eof: false,
            last: None,
            close_timer: None,
            finish: Finish::Running,
            info,
            user_data,
            keepalive,
            dropped,
            drop_next: false,
            dead: false,
            read_boost: 0,
        }
    }

    /// Whether the connection is open with nothing in flight: no input read and not
    /// yet handed out, no message half-received or half-sent, nothing queued for the
    /// transport, and no closing handshake under way. Only such a connection can be
    /// [parked](crate::park::Parking::park). After `recv` has waited for input, a
    /// connection whose writes all went out is quiescent.
    pub fn is_quiescent(&self) -> bool {
        self.finish == Finish::Running
            && self.wq.is_empty()
            && !self.read_eof
            && !self.dead
            && !self.drop_next
            && self.last.is_none()
            && self.close_timer.is_none()
            && self.conn.is_quiescent()
    }

    /// Splits a quiescent connection into its transport, what it must remember and
    /// its timers' state, or hands it back unchanged.
    #[allow(clippy::result_large_err)] // the error is the connection itself, handed back
    #[allow(clippy::type_complexity)]
    #[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
    pub(crate) fn park(self) -> Result<(S, ParkedSocket, Option<ParkedKeepalive>), Self> {
        if !self.is_quiescent() {
            return Err(self);
        }
        let WebSocket { io, conn, limits, info, user_data, keepalive, dropped, .. } = self;
        let conn = conn.park().expect("checked quiescent");
        let keepalive = keepalive.map(|k| k.park());
        Ok((io, ParkedSocket { conn, limits, info, user_data, dropped }, keepalive))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.drop_next = !ready!(this.poll_write_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        let this = self.get_mut();
        if std::mem::take(&mut this.drop_next) {
            return Ok(());
        }
        this.queue(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_all(cx).map_err(Error::Io)
    }

    /// Sends a close frame (1000) if none was sent, and flushes. The closing handshake
    /// completes as the stream is read to its end.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if !this.conn.is_close_sent() && this.finish == Finish::Running {
            this.conn.send_close(CloseCode::NORMAL, "")?;
        }
        this.poll_flush_all(cx).map_err(Error::Io)
    }
}

/// Awaits a handshake step for at most `limit`: `Error::Timeout(what)` past it.
///
/// A macro rather than an `async fn`: a function taking the step's future by value
/// would keep it twice (as its argument, and inside the timeout it moves into), in a
/// future that every connection holds through its handshake.
macro_rules! with_timeout {
    ($limit:expr, $what:expr, $fut:expr $(,)?) => {
        match tokio::time::timeout_at(tokio::time::Instant::now() + $limit, $fut).await {
            Ok(r) => r,
            Err(_) => Err($crate::error::Error::Timeout($what)),
        }
    };
}
pub(crate) use with_timeout;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_share_their_configuration_and_changes_stay_local() {
        let config = Config::new().max_message_size(1 << 20);
        let ws = |c: &Config| {
            let (io, _) = tokio::io::duplex(64);
            WebSocket::from_handshaken(io, Role::Server, c.clone(), &[], None, None)
        };
        let (a, b) = (ws(&config), ws(&config));
        assert!(std::ptr::eq(a.conn.config(), b.conn.config()), "one copy for both");
        assert_eq!(a.conn.config().max_message_size, 1 << 20);
        // Changing a clone changes neither the original nor the defaults.
        let other = config.clone().max_message_size(7);
        assert_eq!(ws(&other).conn.config().max_message_size, 7);
        assert_eq!(ws(&config).conn.config().max_message_size, 1 << 20);
        let default = volley_proto::Config::default().max_message_size;
        assert_eq!(ws(&Config::new()).conn.config().max_message_size, default);
        assert_ne!(default, 1 << 20);
    }

    #[tokio::test]
    async fn the_agreed_protocol_extensions_and_http_version_come_back_as_given() {
        let ws = |protocol: Option<&str>, extensions: Vec<volley_proto::ExtensionOffer>| {
            let (io, _) = tokio::io::duplex(64);
            WebSocket::from_handshaken(io, Role::Server, Config::new(), &[], protocol.map(String::from), None)
                .with_handshake_info("/", Headers::default(), extensions, http::Version::HTTP_11)
        };
        let offer = volley_proto::ExtensionOffer { name: "x-test".into(), params: vec![("a".into(), None)] };
        let both = ws(Some("chat"), vec![offer.clone()]);
        assert_eq!((both.info().protocol(), both.info().extensions()), (Some("chat"), &[offer.clone()][..]));
        let ext = ws(None, vec![offer.clone()]);
        assert_eq!((ext.info().protocol(), ext.info().extensions()), (None, &[offer][..]));
        let proto = ws(Some("chat"), vec![]);
        assert_eq!((proto.info().protocol(), proto.info().extensions()), (Some("chat"), &[][..]));
        let neither = ws(None, vec![]);
        assert!(neither.info().protocol().is_none() && neither.info().extensions().is_empty());
        assert!(neither.info().agreed.is_none(), "nothing allocated");
        assert_eq!(neither.info().http_version(), http::Version::HTTP_11);
        let (io, _) = tokio::io::duplex(64);
        let h2 = WebSocket::from_handshaken(io, Role::Server, Config::new(), &[], None, None).with_handshake_info(
            "/",
            Headers::default(),
            vec![],
            http::Version::HTTP_2,
        );
        assert_eq!((h2.info().http_version(), h2.info().protocol()), (http::Version::HTTP_2, None));
        assert!(std::mem::size_of::<ConnectionInfo>() <= 72);
    }

    #[test]
    fn a_running_connection_stays_small() {
        // An idle connection with a task holds this (plus its task): flags such as the
        // read size's boost sit in the padding beside the others.
        let size = std::mem::size_of::<WebSocket<tokio::net::TcpStream>>();
        assert!(size <= 464, "WebSocket<TcpStream> is {size} bytes");
    }

    #[test]
    fn targets_of_any_length_come_back_as_given() {
        let long = "/".repeat(200);
        for t in ["", "/", "/chat?room=1", "/exactly/twenty-two/bb", "/twenty-three/bytes/abc", "/é/ü?q=ß", &long] {
            let target = Target::new(t);
            assert_eq!(target.as_str(), t);
            assert_eq!(matches!(target, Target::Inline { .. }), t.len() <= Target::INLINE, "{t}");
            assert_eq!(format!("{target:?}"), format!("{t:?}"));
        }
        assert!(std::mem::size_of::<Target>() <= 24, "{}", std::mem::size_of::<Target>());
    }

    #[test]
    fn addresses_of_either_family_come_back_as_given() {
        let v4: SocketAddr = "192.0.2.7:443".parse().unwrap();
        let v4b: SocketAddr = "127.0.0.1:51000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1%3]:8080".parse().unwrap();
        for (remote, local) in [
            (None, None),
            (Some(v4), Some(v4b)),
            (Some(v4), None),
            (None, Some(v4b)),
            (Some(v6), Some(v4b)),
            (Some(v4), Some(v6)),
            (Some(v6), None),
        ] {
            let addrs = Addrs::new(remote, local);
            assert_eq!(addrs.get(), (remote, local));
            let v4_only = [remote, local].iter().flatten().all(|a| a.is_ipv4());
            assert_eq!(matches!(addrs, Addrs::V4 { .. }), v4_only, "{remote:?} {local:?}");
        }
        assert!(std::mem::size_of::<Addrs>() <= 16);
    }

    #[test]
    fn limits_round_the_close_timeout_up_and_clamp_sizes() {
        let config = Config::new()
            .close_timeout(Duration::from_micros(1500))
            .write_buffer_size(5 << 30)
            .read_buffer_size(16 << 10);
        let limits = Limits::from(&config);
        assert_eq!(limits.close_timeout(), Duration::from_millis(2), "a sub-millisecond part rounds up, never to 0");
        assert_eq!(limits.write_buffer_size(), u32::MAX as usize);
        assert_eq!(limits.read_buffer_size, 16 << 10);
        let forever = Limits::from(&Config::new().close_timeout(Duration::from_secs(u64::MAX)));
        assert_eq!(forever.close_timeout(), Duration::from_millis(u64::from(u32::MAX)));
    }
}
