//! Driving a connection's I/O: reading into the core, corked vectored writes with
//! control frames ahead of a backlog, the slow-reader policy, and the end of the
//! connection (flush, shutdown, the close timeout).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Instant};
use volley_proto::{CloseCode, Event, Role, State};

use super::{Finish, WebSocket};
use crate::config::SlowReader;
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

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
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

    pub(super) fn take_transmits(&mut self) {
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
    pub(super) fn poll_room(&mut self, cx: &mut Context<'_>, droppable: bool) -> Poll<Result<bool, Error>> {
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

    /// Records the stream's last item, unless one is already recorded (after a
    /// failure the error stays the last word).
    pub(super) fn set_last(&mut self, last: Result<Message, Error>) {
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
    /// [`Stream`](futures_core::Stream) implementation).
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
