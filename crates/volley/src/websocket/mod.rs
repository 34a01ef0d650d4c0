//! `WebSocket<S>`: one connection over any `AsyncRead + AsyncWrite`, driving the
//! protocol core, as a `Stream` of received messages and a `Sink` of messages to send.
//!
//! The parts: `info` (who and what a connection is), `keepalive` (the ping, idle and
//! lifetime timers), `driver` (reading, corked vectored writes, the end of the
//! connection) and `parked` (what a parked connection keeps, for [`crate::park`]).

mod driver;
mod info;
mod keepalive;
mod parked;

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use volley_proto::handshake::Headers;
use volley_proto::{CloseCode, Connection, DeflateParams, MessageKind, PreparedMessage, Role, State};

use crate::config::{Config, SlowReader};
use crate::error::Error;
use crate::message::Message;

pub use info::ConnectionInfo;
use info::{Addrs, Target};
use keepalive::Keepalive;
#[cfg_attr(not(all(unix, feature = "park")), allow(unused_imports))] // used by `crate::park`
pub(crate) use keepalive::ParkedKeepalive;
#[cfg_attr(not(all(unix, feature = "park")), allow(unused_imports))] // used by `crate::park`
pub(crate) use parked::ParkedSocket;

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
            if let Some(m) = &msg {
                let queue = ready!(self.poll_admit(cx, m))?;
                if let Some(msg) = msg.take().filter(|_| queue) {
                    self.queue(msg)?;
                }
            }
            self.poll_flush_all(cx).map_err(Error::Io)
        })
    }

    /// Queues a message without flushing. When the write buffer is full the
    /// [`SlowReader`] policy decides: wait for it to drain, drop this message, or close.
    /// A pong or a close frame is never held back or dropped by the policy: it is
    /// queued at once, whatever the buffer holds.
    pub fn feed(&mut self, msg: Message) -> impl Future<Output = Result<(), Error>> + '_ {
        let mut msg = Some(msg);
        poll_fn(move |cx| {
            let queue = match &msg {
                Some(m) => ready!(self.poll_admit(cx, m))?,
                None => false,
            };
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

    /// Ready with `true` when `msg` may be queued now, `false` when the slow-reader
    /// policy dropped it: data and pings go through the policy; pongs and close frames
    /// are never held back or dropped by it.
    pub(crate) fn poll_admit(&mut self, cx: &mut Context<'_>, msg: &Message) -> Poll<Result<bool, Error>> {
        if is_policed(msg) {
            self.poll_write_ready(cx)
        } else {
            Poll::Ready(Ok(true))
        }
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
            if is_policed(&item) {
                return Ok(());
            }
            // `poll_ready` counted a drop for a message the policy does not drop.
            this.dropped -= 1;
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

/// Whether the slow-reader policy applies to `msg`: to data and pings, not to pongs
/// and close frames.
fn is_policed(msg: &Message) -> bool {
    !matches!(msg, Message::Pong(_) | Message::Close(_))
}

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

    #[test]
    fn a_running_connection_stays_small() {
        // An idle connection with a task holds this (plus its task): flags such as the
        // read size's boost sit in the padding beside the others. (512 since the
        // protocol's first pending event is kept in place: 48 bytes here rather than a
        // 192-byte queue allocated by the first message and kept while the connection
        // runs.)
        let size = std::mem::size_of::<WebSocket<tokio::net::TcpStream>>();
        assert!(size <= 512, "WebSocket<TcpStream> is {size} bytes");
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
