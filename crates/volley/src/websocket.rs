//! `WebSocket<S>`: one connection over any `AsyncRead + AsyncWrite`, driving the
//! protocol core, as a `Stream` of received messages and a `Sink` of messages to send.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Instant, Sleep};
use volley_proto::{CloseCode, Connection, DeflateParams, Event, MessageKind, Role, State};

use crate::config::Config;
use crate::error::Error;
use crate::message::Message;

/// The most chunks gathered into one vectored write.
const MAX_IOVECS: usize = 64;

/// A WebSocket connection after a successful opening handshake.
///
/// Read with [`WebSocket::recv`] (or as a [`Stream`]), write with [`WebSocket::send`],
/// [`WebSocket::feed`] and [`WebSocket::flush`] (or as a [`Sink`]).
///
/// Writes are corked: `feed` only queues a frame, and queued frames go out together,
/// in one vectored write, when the application flushes, when the queue passes the write
/// buffer size, or when `recv` is about to wait for input. An echo loop that `feed`s
/// every message it receives therefore answers a whole batch of input with one write.
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
    config: Config,
    wq: VecDeque<Bytes>,
    wq_len: usize,
    read_eof: bool,
    /// The item to yield once the connection has finished closing.
    last: Option<Result<Message, Error>>,
    close_timer: Option<Pin<Box<Sleep>>>,
    finish: Finish,
    protocol: Option<String>,
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
            .field("role", &self.conn.role())
            .field("state", &self.conn.state())
            .field("protocol", &self.protocol)
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
        let mut conn = Connection::new(role, config.proto.clone());
        if let Some(params) = deflate {
            conn.enable_deflate(params, config.deflate.clone().unwrap_or_default());
        }
        if !leftover.is_empty() {
            conn.receive(leftover);
        }
        WebSocket {
            io,
            conn,
            config,
            wq: VecDeque::new(),
            wq_len: 0,
            read_eof: false,
            last: None,
            close_timer: None,
            finish: Finish::Running,
            protocol,
        }
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
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
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queues a message without flushing, waiting only if the write buffer is full.
    pub async fn feed(&mut self, msg: Message) -> Result<(), Error> {
        poll_fn(|cx| self.poll_write_ready(cx)).await?;
        self.queue(msg)
    }

    /// Queues one fragment of a message (see
    /// [`Connection::send_fragment`](volley_proto::Connection::send_fragment)), so a
    /// large message can be streamed without holding it whole.
    pub async fn feed_fragment(&mut self, kind: MessageKind, data: Bytes, fin: bool) -> Result<(), Error> {
        poll_fn(|cx| self.poll_write_ready(cx)).await?;
        self.conn.send_fragment(kind, data, fin)?;
        self.take_transmits();
        Ok(())
    }

    /// Queues a message that is never compressed, even with permessage-deflate on (for
    /// data that is already compressed).
    pub async fn feed_uncompressed(&mut self, kind: MessageKind, data: Bytes) -> Result<(), Error> {
        poll_fn(|cx| self.poll_write_ready(cx)).await?;
        self.conn.send_uncompressed(kind, data)?;
        self.take_transmits();
        Ok(())
    }

    /// Writes everything queued to the transport.
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

    fn queue(&mut self, msg: Message) -> Result<(), Error> {
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
        self.take_transmits();
        Ok(())
    }

    fn take_transmits(&mut self) {
        while let Some(chunk) = self.conn.poll_transmit() {
            self.wq_len += chunk.len();
            self.wq.push_back(chunk);
        }
    }

    /// Ready when the write queue is below the write buffer size.
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.finish == Finish::Done {
            return Poll::Ready(Err(Error::Closed));
        }
        while self.wq_len >= self.config.write_buffer_size {
            ready!(self.poll_write_queue(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the queue to the transport, gathering chunks into vectored writes.
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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

    fn advance_queue(&mut self, mut n: usize) {
        self.wq_len -= n;
        while n > 0 {
            let Some(front) = self.wq.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.wq.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.take_transmits();
        ready!(self.poll_write_queue(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads once into the core's input buffer: `Ok(0)` at end of stream.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = self.config.read_buffer_size.max(self.conn.input_needed().min(4 << 20));
        let buf = self.conn.input_buffer();
        if buf.capacity() - buf.len() < want / 2 {
            buf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, buf)
    }

    fn arm_close_timer(&mut self) {
        if self.close_timer.is_none() {
            self.close_timer = Some(Box::pin(sleep(self.config.close_timeout)));
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
                        Role::Client if !self.read_eof => Finish::AwaitingEof,
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
            if self.last.is_none() {
                self.last = Some(Err(Error::Timeout("closing handshake")));
            }
            return self.poll_finish(cx);
        }
        Poll::Pending
    }

    /// Polls for the next message (the body of [`WebSocket::recv`] and of the
    /// [`Stream`] implementation).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        loop {
            if self.finish == Finish::Done {
                return Poll::Ready(self.last.take());
            }
            if self.finish != Finish::Running {
                ready!(self.poll_finish(cx));
                continue;
            }
            if let Some(event) = self.conn.poll_event() {
                self.take_transmits();
                let msg = match event {
                    Event::Text(t) => Message::Text(t),
                    Event::Binary(b) => Message::Binary(b),
                    Event::Ping(b) => Message::Ping(b),
                    Event::Pong(b) => Message::Pong(b),
                    Event::Close(frame) => {
                        // After a failure the error stays the last word.
                        if self.last.is_none() {
                            self.last = Some(Ok(Message::Close(frame)));
                        }
                        continue;
                    }
                    Event::Error(e) => {
                        tracing::debug!(error = %e, "connection failed");
                        if self.last.is_none() {
                            self.last = Some(Err(Error::Protocol(e)));
                        }
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
                        if self.last.is_none() {
                            self.last = Some(Err(Error::Timeout("closing handshake")));
                        }
                        self.finish = Finish::ShuttingDown;
                        continue;
                    }
                }
                State::Open => {}
            }
            match self.poll_read_some(cx) {
                Poll::Ready(Ok(0)) => {
                    self.read_eof = true;
                    self.conn.receive_eof();
                }
                Poll::Ready(Ok(_)) => self.conn.receive_buffered(),
                Poll::Ready(Err(e)) => {
                    self.conn.receive_eof();
                    while self.conn.poll_event().is_some() {}
                    self.finish = Finish::Done;
                    self.last = Some(Err(Error::Io(e)));
                }
                Poll::Pending => {
                    // About to wait for input: release idle buffers and send what the
                    // application queued while handling the input so far.
                    self.conn.release_idle_memory();
                    if let Poll::Ready(Err(e)) = self.poll_flush_all(cx) {
                        self.conn.receive_eof();
                        while self.conn.poll_event().is_some() {}
                        self.finish = Finish::Done;
                        self.last = Some(Err(Error::Io(e)));
                        continue;
                    }
                    return Poll::Pending;
                }
            }
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
        self.get_mut().poll_write_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.get_mut().queue(item)
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

/// A deadline helper for handshakes.
pub(crate) async fn with_timeout<T>(
    limit: std::time::Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(Instant::now() + limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(what)),
    }
}
