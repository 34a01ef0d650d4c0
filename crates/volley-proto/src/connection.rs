//! The WebSocket connection after the opening handshake: frame decoding, message
//! reassembly, control frames, the closing handshake and the send path.
//!
//! A [`Connection`] never touches a socket or a clock. The driver feeds it bytes with
//! `receive*`, gives it commands with `send_*`, and takes its output with
//! [`Connection::poll_transmit`] and [`Connection::poll_event`]. **After any input or
//! command, drain events, then transmits.** Replies the core makes on its own (pongs, the
//! close echo, the close frame that fails a connection) are queued when the event that
//! causes them is polled, so they leave in input order, after whatever the application
//! sent in answer to the events before them.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::config::{Buffers, Config};
use crate::deflate::{Compressor, Decompressor, DeflateConfig, DeflateParams, InflateError};
use crate::error::{ProtocolError, SendError};
use crate::frame::close::ClosePayloadError;
pub use crate::frame::MessageKind;
use crate::frame::{apply_mask, CloseCode, CloseFrame, FrameHeader, OpCode};
use crate::prepared::PreparedMessage;
use crate::utf8::{Utf8Bytes, Utf8Validator};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The end that accepted the connection: it receives masked frames and sends
    /// unmasked ones.
    Server,
    /// The end that opened the connection: it masks every frame it sends.
    Client,
}

/// The connection's state (RFC 6455 §4-§7 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// A close frame was sent; waiting for the peer's.
    Closing,
    /// Both close frames were exchanged, or the transport ended. A server now closes
    /// the TCP connection; a client waits for the server to close it (§7.1.1).
    Closed,
}

/// Something the peer did, handed to the application by [`Connection::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A whole text message, validated as UTF-8.
    Text(Utf8Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// A ping. The pong is queued when this event is polled.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The peer's close frame (`None` for an empty body). If the application had not
    /// sent a close frame, the echo with the same code is queued when this is polled.
    Close(Option<CloseFrame>),
    /// The peer broke the protocol, or the transport ended without a closing handshake.
    /// For protocol faults a close frame with [`ProtocolError::close_code`] is queued
    /// when this is polled.
    Error(ProtocolError),
}

/// Work whose side effects happen when the application polls it, in input order.
#[derive(Debug)]
enum Pending {
    Event(Event),
    Ping(Bytes),
    Close(Option<CloseFrame>),
    Fail(ProtocolError),
    /// The peer's close frame was invalid: the handshake is over all the same.
    InvalidClose,
    Eof,
}

/// What the input produced and [`Connection::poll_event`] has not handed out yet, in
/// order. The first is kept in place: most reads produce one event, and a
/// `VecDeque` allocates room for four (192 bytes) with its first, which then stays
/// with the connection as long as it runs (and, freed when it is parked, leaves holes
/// among the longer-lived blocks allocated beside it).
#[derive(Debug, Default)]
struct PendingQueue {
    first: Option<Pending>,
    rest: VecDeque<Pending>,
}

impl PendingQueue {
    fn push_back(&mut self, p: Pending) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(p);
        } else {
            self.rest.push_back(p);
        }
    }

    fn pop_front(&mut self) -> Option<Pending> {
        self.first.take().or_else(|| self.rest.pop_front())
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }
}

/// The frame decoder's position in the input.
#[derive(Debug, Clone, Copy)]
enum Rx {
    /// Waiting for a frame header.
    Header,
    /// Inside a frame's payload.
    Payload(RxFrame),
    /// Skipping the rest of a frame after a fault.
    Skip(u64),
    /// Ignoring all input: the peer's close frame was received, the stream cannot be
    /// framed any more, or the transport ended.
    Discard,
}

#[derive(Debug, Clone, Copy)]
struct RxFrame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: usize,
    /// Payload bytes already unmasked (and, for text, validated) in place.
    done: usize,
    /// Whether the payload belongs to a text message.
    text: bool,
}

/// Frames queued for the transport.
#[derive(Debug, Default)]
struct Outbox {
    chunks: VecDeque<Bytes>,
    buf: BytesMut,
    queued: usize,
}

/// The batch buffer's first size, and the largest it grows to at once.
const BATCH_MIN: usize = 4 << 10;
const BATCH_MAX: usize = 256 << 10;

impl Outbox {
    #[inline]
    fn reserve(&mut self, need: usize, buffers: &Buffers) {
        if self.buf.capacity() - self.buf.len() < need {
            self.grow(need, buffers);
        }
    }

    #[inline(never)]
    fn grow(&mut self, need: usize, buffers: &Buffers) {
        if self.buf.capacity() == 0 {
            if let Some(buf) = buffers.take() {
                self.buf = buf;
                if self.buf.capacity() >= need {
                    return;
                }
            }
        }
        let filled = self.buf.len();
        if filled > 0 {
            // Growing the buffer would copy the frames it holds: they are queued as a
            // chunk of their own instead, and the batch goes on in a new buffer twice
            // their size (the old one is no longer the only owner of its allocation,
            // so `reserve` allocates anew without copying anything).
            self.chunks.push_back(self.buf.split().freeze());
        }
        self.buf.reserve(need.max(BATCH_MIN).max(filled.saturating_mul(2).min(BATCH_MAX)));
    }

    fn push(&mut self, header: FrameHeader, payload: &[u8], shared: Option<&Bytes>, config: &Config) {
        let (inline_max, buffers) = (config.inline_payload_size, &config.buffers);
        let hlen = header.encoded_len();
        self.queued += hlen + payload.len();
        if let Some(key) = header.mask {
            self.reserve(hlen + payload.len(), buffers);
            header.encode(&mut self.buf);
            let start = self.buf.len();
            self.buf.extend_from_slice(payload);
            apply_mask(&mut self.buf[start..], key, 0);
        } else if payload.len() <= inline_max || shared.is_none() {
            self.reserve(hlen + payload.len(), buffers);
            header.encode(&mut self.buf);
            self.buf.extend_from_slice(payload);
        } else {
            self.reserve(hlen, buffers);
            header.encode(&mut self.buf);
            self.chunks.push_back(self.buf.split().freeze());
            if let Some(b) = shared {
                self.chunks.push_back(b.clone());
            }
        }
    }

    /// Queues an already-encoded frame: small ones are copied into the batch buffer,
    /// large ones queued by reference.
    fn push_encoded(&mut self, header: &Bytes, payload: &Bytes, config: &Config) {
        self.queued += header.len() + payload.len();
        if payload.len() <= config.inline_payload_size {
            self.reserve(header.len() + payload.len(), &config.buffers);
            self.buf.extend_from_slice(header);
            self.buf.extend_from_slice(payload);
        } else {
            if !self.buf.is_empty() {
                self.chunks.push_back(self.buf.split().freeze());
            }
            self.chunks.push_back(header.clone());
            self.chunks.push_back(payload.clone());
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        let chunk = match self.chunks.pop_front() {
            Some(c) => c,
            None if !self.buf.is_empty() => self.buf.split().freeze(),
            None => return None,
        };
        self.queued -= chunk.len();
        Some(chunk)
    }
}

/// One WebSocket connection's protocol state, from the end of the opening handshake to
/// the end of the closing handshake. See the module docs for the driving loop.
///
/// ```
/// use volley_proto::{Config, Connection, Event, Role};
///
/// let mut server = Connection::new(Role::Server, Config::default());
/// // A masked "Hello" from RFC 6455 §5.7.
/// server.receive(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
/// let Some(Event::Text(text)) = server.poll_event() else { panic!() };
/// assert_eq!(text, "Hello");
/// server.send_text(text).unwrap();
/// let out = server.poll_transmit().unwrap();
/// assert_eq!(&out[..], &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
/// ```
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Arc<Config>,
    state: State,
    rbuf: BytesMut,
    rx: Rx,
    /// A peer's fault was found: only a close frame still matters in the input.
    rx_failed: bool,
    rx_eof: bool,
    /// The fragmented message being reassembled.
    message: Option<BytesMut>,
    /// Size so far of the message being received, for the message limit.
    message_size: u64,
    /// Kind of the message being received, if fragmented.
    message_kind: Option<MessageKind>,
    rx_utf8: Utf8Validator,
    pending: PendingQueue,
    out: Outbox,
    /// Control frames queued ahead of data while `control_priority` is on (allocated
    /// the first time one is, and released when idle).
    ctrl: Option<Box<Outbox>>,
    control_priority: bool,
    close_sent: bool,
    close_received: bool,
    failed: bool,
    tx_fragment: Option<MessageKind>,
    tx_utf8: Utf8Validator,
    /// RSV bits (as in the first header byte: 0x40, 0x20, 0x10) that negotiated
    /// extensions define.
    allowed_rsv: u8,
    deflate: Option<Box<Deflate>>,
    /// The message being received is compressed (RSV1 on its first frame).
    rx_compressed: bool,
    /// The fragmented message being sent is compressed.
    tx_compressed: bool,
}

/// An open connection with nothing in flight, reduced to what it must remember: its
/// role, configuration and permessage-deflate state (codec contexts included). What
/// [`Connection::park`] keeps while the transport has no task; [`ParkedConnection::resume`]
/// makes it a [`Connection`] again.
#[derive(Debug)]
pub struct ParkedConnection {
    config: Arc<Config>,
    deflate: Option<Box<Deflate>>,
    role: Role,
    allowed_rsv: u8,
}

impl ParkedConnection {
    /// The connection again, exactly as it was parked.
    pub fn resume(self) -> Connection {
        let mut conn = Connection::with_shared_config(self.role, self.config);
        conn.allowed_rsv = self.allowed_rsv;
        conn.deflate = self.deflate;
        conn
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The frame [`Connection::send_prepared`] would queue for `msg` on this
    /// connection, as its header and payload, without resuming it: a server's frame is
    /// one of the prepared ones, chosen by the connection's permessage-deflate
    /// parameters. `None` for a client, whose frames are each masked with a key of
    /// their own.
    pub fn prepared_frame<'m>(&self, msg: &'m PreparedMessage) -> Option<(&'m Bytes, &'m Bytes)> {
        if self.role == Role::Client {
            return None;
        }
        Some(server_frame(self.deflate.as_deref(), msg))
    }
}

/// A server's frame for a prepared message: the compressed one where the connection's
/// permessage-deflate parameters allow it and the payload is worth compressing, the
/// plain one otherwise.
fn server_frame<'m>(deflate: Option<&Deflate>, msg: &'m PreparedMessage) -> (&'m Bytes, &'m Bytes) {
    match deflate {
        Some(d) if msg.payload().len() >= d.config.threshold => {
            msg.compressed_for(&d.params).unwrap_or_else(|| msg.plain())
        }
        _ => msg.plain(),
    }
}

/// permessage-deflate state: the agreed parameters and the codec halves, made on
/// first use.
#[derive(Debug)]
struct Deflate {
    params: DeflateParams,
    config: DeflateConfig,
    compressor: Option<Compressor>,
    decompressor: Option<Decompressor>,
}

impl Deflate {
    /// Compresses a message or fragment in this endpoint's direction. Without context
    /// takeover the compressor is dropped after each message: making a new one costs
    /// about what resetting does, and an idle connection then holds nothing.
    fn compress(&mut self, role: Role, data: &[u8], fin: bool) -> Bytes {
        let (bits, no_takeover) = match role {
            Role::Server => (self.params.server_max_window_bits, self.params.server_no_context_takeover),
            Role::Client => (self.params.client_max_window_bits, self.params.client_no_context_takeover),
        };
        let config = &self.config;
        let c = self.compressor.get_or_insert_with(|| Compressor::new(bits, config.level, config.mem_level));
        let out = c.compress(data, fin);
        if fin && no_takeover {
            self.compressor = None;
        }
        out
    }

    /// Inflates a frame of a message in the peer's direction, likewise dropping the
    /// decompressor after each message without context takeover.
    fn inflate(
        &mut self,
        role: Role,
        payload: &[u8],
        fin: bool,
        out: &mut BytesMut,
        limit: usize,
        utf8: Option<&mut Utf8Validator>,
    ) -> Result<(), InflateError> {
        let (bits, no_takeover) = match role {
            Role::Server => (self.params.client_max_window_bits, self.params.client_no_context_takeover),
            Role::Client => (self.params.server_max_window_bits, self.params.server_no_context_takeover),
        };
        let d = self.decompressor.get_or_insert_with(|| Decompressor::new(bits));
        let result = d.inflate(payload, fin, out, limit, utf8);
        if fin && no_takeover {
            self.decompressor = None;
        }
        result
    }
}

impl Connection {
    /// A connection in the [`State::Open`] state for `role`.
    pub fn new(role: Role, config: Config) -> Self {
        Connection::with_shared_config(role, Arc::new(config))
    }

    /// [`Connection::new`] with a configuration shared among connections: each keeps
    /// a reference to it (8 bytes) rather than a copy.
    pub fn with_shared_config(role: Role, config: Arc<Config>) -> Self {
        Connection {
            role,
            config,
            state: State::Open,
            rbuf: BytesMut::new(),
            rx: Rx::Header,
            rx_failed: false,
            rx_eof: false,
            message: None,
            message_size: 0,
            message_kind: None,
            rx_utf8: Utf8Validator::new(),
            pending: PendingQueue::default(),
            out: Outbox::default(),
            ctrl: None,
            control_priority: false,
            close_sent: false,
            close_received: false,
            failed: false,
            tx_fragment: None,
            tx_utf8: Utf8Validator::new(),
            allowed_rsv: 0,
            deflate: None,
            rx_compressed: false,
            tx_compressed: false,
        }
    }

    /// Turns on permessage-deflate with the parameters agreed in the handshake (see
    /// [`crate::deflate`]). Call it before any frame is exchanged.
    pub fn enable_deflate(&mut self, params: DeflateParams, config: DeflateConfig) {
        self.allowed_rsv |= 0x40;
        self.deflate = Some(Box::new(Deflate { params, config, compressor: None, decompressor: None }));
    }

    /// The agreed permessage-deflate parameters, if the extension is on.
    pub fn deflate_params(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref().map(|d| &d.params)
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether a close frame was sent (by the application, as an echo, or to fail the
    /// connection): no more frames may be sent.
    pub fn is_close_sent(&self) -> bool {
        self.close_sent
    }

    /// Whether the peer's close frame was received.
    pub fn is_close_received(&self) -> bool {
        self.close_received
    }

    // ---- input -------------------------------------------------------------------

    /// Feeds bytes read from the transport (copying them into the input buffer).
    pub fn receive(&mut self, data: &[u8]) {
        if matches!(self.rx, Rx::Discard) {
            return;
        }
        self.rbuf.extend_from_slice(data);
        self.process();
    }

    /// The input buffer, for a driver that reads from its transport straight into it
    /// (no copy); call [`Connection::receive_buffered`] after appending to it. Frame
    /// payloads are split off this buffer without copying. After
    /// [`Connection::release_idle_memory`] it is a buffer from the configuration's
    /// [`Buffers`], when it has one, or else empty with no capacity.
    pub fn input_buffer(&mut self) -> &mut BytesMut {
        if self.rbuf.capacity() == 0 {
            if let Some(buf) = self.config.buffers.take() {
                self.rbuf = buf;
            }
        }
        &mut self.rbuf
    }

    /// Processes bytes a driver appended to [`Connection::input_buffer`].
    pub fn receive_buffered(&mut self) {
        self.process();
    }

    /// How many more input bytes the frame in progress needs (0 when between frames),
    /// so a driver can size its reads.
    pub fn input_needed(&self) -> usize {
        match self.rx {
            Rx::Payload(f) => f.len.saturating_sub(self.rbuf.len()),
            _ => 0,
        }
    }

    /// Reports that the transport's read side ended.
    pub fn receive_eof(&mut self) {
        if self.rx_eof {
            return;
        }
        self.rx_eof = true;
        self.rx = Rx::Discard;
        self.rbuf = BytesMut::new();
        self.pending.push_back(Pending::Eof);
    }

    /// Releases buffers that hold no data, so an idle connection costs a few hundred
    /// bytes. Drivers call it when a read would block. The buffers go to the
    /// configuration's [`Buffers`] (the tokio layer keeps the last few per thread for
    /// the next connection that reads or writes there); without a pool they are freed.
    pub fn release_idle_memory(&mut self) {
        // An empty buffer may still hold a reference to a shared allocation (what is
        // left of it after payloads were split off), so it is replaced even when its
        // own capacity is zero.
        if self.rbuf.is_empty() {
            self.config.buffers.give(std::mem::take(&mut self.rbuf));
        }
        if self.out.buf.is_empty() {
            self.config.buffers.give(std::mem::take(&mut self.out.buf));
        }
        if self.ctrl.as_ref().is_some_and(|c| c.queued == 0) {
            self.ctrl = None;
        }
    }

    /// Whether the connection is open with nothing in flight: no input buffered or
    /// half-decoded, no event waiting to be polled, no output waiting to be taken, no
    /// message half-received or half-sent, and no close frame either way. Only then can
    /// it be [parked](Connection::park).
    pub fn is_quiescent(&self) -> bool {
        self.state == State::Open
            && !self.close_sent
            && !self.close_received
            && !self.failed
            && !self.rx_failed
            && !self.rx_eof
            && matches!(self.rx, Rx::Header)
            && self.rbuf.is_empty()
            && self.message.is_none()
            && self.message_kind.is_none()
            && self.pending.is_empty()
            && self.transmit_len() == 0
            && self.tx_fragment.is_none()
    }

    /// Reduces a [quiescent](Connection::is_quiescent) connection to a
    /// [`ParkedConnection`] (about a fifth of the size, with no buffers), or hands it
    /// back unchanged if it is not quiescent.
    #[allow(clippy::result_large_err)] // the error is the connection itself, handed back
    pub fn park(self) -> Result<ParkedConnection, Connection> {
        if !self.is_quiescent() {
            return Err(self);
        }
        Ok(ParkedConnection {
            config: self.config,
            deflate: self.deflate,
            role: self.role,
            allowed_rsv: self.allowed_rsv,
        })
    }

    /// Fails the connection because of a peer's fault: decoding stops (except to find
    /// the peer's close frame) and the fault is queued for the application.
    fn fail(&mut self, err: ProtocolError) {
        if !self.rx_failed {
            self.rx_failed = true;
            self.message = None;
            self.pending.push_back(Pending::Fail(err));
        }
    }

    fn process(&mut self) {
        loop {
            match self.rx {
                Rx::Discard => {
                    self.rbuf.clear();
                    return;
                }
                Rx::Skip(n) => {
                    let k = n.min(self.rbuf.len() as u64);
                    self.rbuf.advance(k as usize);
                    if k < n {
                        self.rx = Rx::Skip(n - k);
                        return;
                    }
                    self.rx = Rx::Header;
                }
                Rx::Header => match FrameHeader::parse(&self.rbuf) {
                    Ok(None) => return,
                    Err(_) => {
                        self.fail(ProtocolError::InvalidLength);
                        self.rx = Rx::Discard;
                    }
                    Ok(Some((h, n))) => {
                        self.rbuf.advance(n);
                        self.rx = if self.rx_failed {
                            self.after_failure_header(&h)
                        } else {
                            let rx = self.check_header(&h);
                            if self.rx_failed && h.opcode == OpCode::Close.as_u8() {
                                // A malformed close frame is still the peer's close.
                                self.pending.push_back(Pending::InvalidClose);
                                Rx::Discard
                            } else {
                                rx
                            }
                        };
                    }
                },
                Rx::Payload(mut f) => {
                    let avail = self.rbuf.len().min(f.len);
                    if avail > f.done {
                        let chunk = &mut self.rbuf[f.done..avail];
                        if let Some(key) = f.mask {
                            apply_mask(chunk, key, f.done);
                        }
                        if f.text && self.rx_utf8.feed(chunk).is_err() {
                            // §8.1: "When an endpoint is to interpret a byte stream as
                            // UTF-8 but finds that the byte stream is not, in fact, a valid
                            // UTF-8 stream, that endpoint MUST _Fail the WebSocket
                            // Connection_." We do so at the first invalid byte.
                            self.fail(ProtocolError::InvalidUtf8);
                            self.rx = Rx::Skip(f.len as u64);
                            continue;
                        }
                        f.done = avail;
                    }
                    if avail < f.len {
                        self.rx = Rx::Payload(f);
                        return;
                    }
                    let payload = self.rbuf.split_to(f.len).freeze();
                    self.rx = Rx::Header;
                    if self.rx_failed {
                        self.after_failure_frame(f, payload);
                    } else {
                        self.on_frame(f, payload);
                    }
                }
            }
        }
    }

    /// Validates a header and decides what to do with the payload.
    fn check_header(&mut self, h: &FrameHeader) -> Rx {
        let skip = Rx::Skip(h.payload_len);
        let Some(opcode) = OpCode::from_u8(h.opcode) else {
            self.fail(ProtocolError::ReservedOpcode(h.opcode));
            return skip;
        };
        let rsv = (u8::from(h.rsv1) << 6) | (u8::from(h.rsv2) << 5) | (u8::from(h.rsv3) << 4);
        if rsv & !self.allowed_rsv != 0 {
            // §5.2: "If a nonzero value is received and none of the negotiated extensions
            // defines the meaning of such a nonzero value, the receiving endpoint MUST
            // _Fail the WebSocket Connection_."
            self.fail(ProtocolError::ReservedBits);
            return skip;
        }
        if h.rsv1 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
            // RFC 7692 §6: the "Per-Message Compressed" bit is set on the first frame of a
            // message only: "An endpoint MUST NOT set the RSV1 bit" on control frames or
            // on continuation frames.
            self.fail(ProtocolError::ReservedBits);
            return skip;
        }
        if opcode.is_control() {
            // §5.5: "All control frames MUST have a payload length of 125 bytes or less
            // and MUST NOT be fragmented."
            if !h.fin {
                self.fail(ProtocolError::FragmentedControlFrame);
                return skip;
            }
            if h.payload_len > 125 {
                self.fail(ProtocolError::ControlFrameTooLong(h.payload_len));
                return skip;
            }
        }
        match (self.role, h.mask.is_some()) {
            // §5.1: "The server MUST close the connection upon receiving a frame that is
            // not masked" and "A client MUST close a connection if it detects a masked
            // frame."
            (Role::Server, false) => {
                self.fail(ProtocolError::UnmaskedFrame);
                return skip;
            }
            (Role::Client, true) => {
                self.fail(ProtocolError::MaskedFrame);
                return skip;
            }
            _ => {}
        }
        let text = match opcode {
            OpCode::Continuation => match self.message_kind {
                Some(kind) => kind == MessageKind::Text,
                None => {
                    self.fail(ProtocolError::UnexpectedContinuation);
                    return skip;
                }
            },
            OpCode::Text | OpCode::Binary => {
                if self.message_kind.is_some() {
                    self.fail(ProtocolError::ExpectedContinuation);
                    return skip;
                }
                self.message_size = 0;
                self.rx_utf8.reset();
                self.rx_compressed = h.rsv1;
                opcode == OpCode::Text
            }
            _ => false,
        };
        if h.payload_len > self.config.max_frame_size as u64 {
            self.fail(ProtocolError::FrameTooBig { size: h.payload_len, max: self.config.max_frame_size });
            return skip;
        }
        if !opcode.is_control() {
            let size = self.message_size + h.payload_len;
            if size > self.config.max_message_size as u64 {
                self.fail(ProtocolError::MessageTooBig { size, max: self.config.max_message_size });
                return skip;
            }
            self.message_size = size;
        }
        Rx::Payload(RxFrame {
            opcode,
            fin: h.fin,
            mask: h.mask,
            // Fits: bounded by max_frame_size, a usize, or by 125 for control frames.
            len: h.payload_len as usize,
            done: 0,
            text: text && !self.rx_compressed,
        })
    }

    /// After a fault, only the peer's close frame matters: it completes the closing
    /// handshake. Everything else is skipped.
    fn after_failure_header(&mut self, h: &FrameHeader) -> Rx {
        if h.opcode == OpCode::Close.as_u8() && h.payload_len <= 125 {
            Rx::Payload(RxFrame {
                opcode: OpCode::Close,
                fin: true,
                mask: h.mask,
                len: h.payload_len as usize,
                done: 0,
                text: false,
            })
        } else {
            Rx::Skip(h.payload_len)
        }
    }

    fn after_failure_frame(&mut self, f: RxFrame, payload: Bytes) {
        if f.opcode == OpCode::Close {
            self.rx = Rx::Discard;
            let frame = CloseFrame::parse(&payload).ok().flatten();
            self.pending.push_back(Pending::Close(frame));
        }
    }

    fn on_frame(&mut self, f: RxFrame, payload: Bytes) {
        match f.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation if self.rx_compressed => {
                let kind = match (f.opcode, self.message_kind) {
                    (OpCode::Text, _) | (OpCode::Continuation, Some(MessageKind::Text)) => MessageKind::Text,
                    _ => MessageKind::Binary,
                };
                self.on_compressed_frame(kind, f.fin, &payload);
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let kind = if f.text { MessageKind::Text } else { MessageKind::Binary };
                let data = match (f.opcode, self.message.take()) {
                    (OpCode::Continuation, Some(mut m)) => {
                        m.extend_from_slice(&payload);
                        if !f.fin {
                            self.message = Some(m);
                            return;
                        }
                        m.freeze()
                    }
                    (_, _) if !f.fin => {
                        self.message_kind = Some(kind);
                        self.message = Some(BytesMut::from(&payload[..]));
                        return;
                    }
                    (_, _) => payload,
                };
                self.message_kind = None;
                let event = match kind {
                    MessageKind::Text => {
                        if self.rx_utf8.finish().is_err() {
                            self.fail(ProtocolError::InvalidUtf8);
                            return;
                        }
                        Event::Text(Utf8Bytes::from_validated(data))
                    }
                    MessageKind::Binary => Event::Binary(data),
                };
                self.pending.push_back(Pending::Event(event));
            }
            OpCode::Ping => self.pending.push_back(Pending::Ping(payload)),
            OpCode::Pong => self.pending.push_back(Pending::Event(Event::Pong(payload))),
            OpCode::Close => match CloseFrame::parse(&payload) {
                Ok(frame) => {
                    self.rx = Rx::Discard;
                    self.pending.push_back(Pending::Close(frame));
                }
                Err(e) => {
                    self.fail(match e {
                        ClosePayloadError::InvalidUtf8 => ProtocolError::InvalidUtf8,
                        ClosePayloadError::OneByte => ProtocolError::InvalidClosePayload,
                        ClosePayloadError::InvalidCode(c) => ProtocolError::InvalidCloseCode(c),
                    });
                    // It is still the peer's close frame: once ours answers it, the
                    // closing handshake is complete and the server may close the TCP
                    // connection without waiting for another.
                    self.rx = Rx::Discard;
                    self.pending.push_back(Pending::InvalidClose);
                }
            },
        }
    }

    /// Inflates a frame of a compressed message into the message buffer.
    fn on_compressed_frame(&mut self, kind: MessageKind, fin: bool, payload: &[u8]) {
        let mut buf = self.message.take().unwrap_or_default();
        let max = self.config.max_message_size;
        let role = self.role;
        let Some(deflate) = self.deflate.as_mut() else { return };
        let utf8 = (kind == MessageKind::Text).then_some(&mut self.rx_utf8);
        match deflate.inflate(role, payload, fin, &mut buf, max, utf8) {
            Ok(()) => {}
            Err(InflateError::TooBig) => {
                return self.fail(ProtocolError::MessageTooBig { size: buf.len() as u64, max });
            }
            Err(InflateError::Corrupt) => return self.fail(ProtocolError::InvalidCompressedData),
            Err(InflateError::Utf8) => return self.fail(ProtocolError::InvalidUtf8),
        }
        if !fin {
            self.message_kind = Some(kind);
            self.message = Some(buf);
            return;
        }
        self.message_kind = None;
        let data = buf.freeze();
        let event = match kind {
            MessageKind::Text => {
                if self.rx_utf8.finish().is_err() {
                    return self.fail(ProtocolError::InvalidUtf8);
                }
                Event::Text(Utf8Bytes::from_validated(data))
            }
            MessageKind::Binary => Event::Binary(data),
        };
        self.pending.push_back(Pending::Event(event));
    }

    // ---- output ------------------------------------------------------------------

    /// The next event, carrying out the reply it calls for (see [`Event`]).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Event(e) => return Some(e),
                Pending::Ping(data) => {
                    // §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong
                    // frame in response ... unless it already received a Close frame."
                    if !self.close_sent {
                        self.push_control(OpCode::Pong, &data);
                    }
                    return Some(Event::Ping(data));
                }
                Pending::Close(frame) => {
                    self.close_received = true;
                    if !self.close_sent {
                        // §5.5.1: "the endpoint typically echos the status code it
                        // received."
                        let payload = frame.as_ref().map(|f| CloseFrame::new(f.code, "").encode());
                        self.push_close(payload.unwrap_or_default());
                    }
                    self.state = State::Closed;
                    return Some(Event::Close(frame));
                }
                Pending::Fail(err) => {
                    self.failed = true;
                    if !self.close_sent {
                        self.push_close(CloseFrame::new(err.close_code(), "").encode());
                    }
                    if !self.close_received {
                        self.state = State::Closing;
                    }
                    return Some(Event::Error(err));
                }
                Pending::InvalidClose => {
                    self.close_received = true;
                    self.state = State::Closed;
                }
                Pending::Eof => {
                    let was = self.state;
                    self.state = State::Closed;
                    if was != State::Closed && !self.failed {
                        return Some(Event::Error(ProtocolError::AbnormalClosure));
                    }
                }
            }
        }
        None
    }

    /// The next chunk of bytes to write to the transport. Chunks are ordered; a driver
    /// may gather several into one vectored write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit_control().or_else(|| self.out.pop())
    }

    /// Like [`Connection::poll_transmit`], but only control frames queued with
    /// [`Connection::set_control_priority`] on: what a driver writes ahead of its backlog.
    #[must_use]
    pub fn poll_transmit_control(&mut self) -> Option<Bytes> {
        self.ctrl.as_mut()?.pop()
    }

    /// Bytes queued for the transport and not yet taken by `poll_transmit`.
    pub fn transmit_len(&self) -> usize {
        self.out.queued + self.ctrl.as_ref().map_or(0, |c| c.queued)
    }

    /// While on, control frames (pongs, pings, close frames) are queued apart from data
    /// and handed out first, so a driver whose transport is backed up can write them
    /// ahead of data it has not started writing. Off by default: then every frame leaves
    /// in the order it was made, which keeps replies behind the answers the application
    /// gave to earlier messages.
    pub fn set_control_priority(&mut self, on: bool) {
        self.control_priority = on;
    }

    /// Tells the core that a close frame was sent on this connection by another
    /// encoder (the writer half of a split connection): it must not echo the peer's
    /// close, and the connection is closing.
    pub fn note_close_sent(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.state = if self.close_received { State::Closed } else { State::Closing };
        }
    }

    /// Queues a prepared message (see [`PreparedMessage`]): a
    /// server reuses its encoded frame, compressed or not, by reference count; a client
    /// (which must mask every frame) encodes it as usual.
    pub fn send_prepared(&mut self, msg: &PreparedMessage) -> Result<(), SendError> {
        self.check_open()?;
        if self.tx_fragment.is_some() {
            return Err(SendError::FragmentInProgress);
        }
        if self.role == Role::Client {
            let opcode = msg.opcode();
            let compress = self.deflate.is_some();
            return self.send_message(opcode, msg.payload(), compress);
        }
        let frame = server_frame(self.deflate.as_deref(), msg);
        self.out.push_encoded(frame.0, frame.1, &self.config);
        Ok(())
    }

    // ---- commands ----------------------------------------------------------------

    fn mask(&self) -> Option<[u8; 4]> {
        match self.role {
            Role::Client => Some(self.config.random.mask_key()),
            Role::Server => None,
        }
    }

    fn push(&mut self, opcode: OpCode, fin: bool, payload: &[u8], shared: Option<&Bytes>) {
        self.push_rsv(opcode, fin, false, payload, shared);
    }

    fn push_rsv(&mut self, opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8], shared: Option<&Bytes>) {
        let header = FrameHeader {
            fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode: opcode.as_u8(),
            mask: self.mask(),
            payload_len: payload.len() as u64,
        };
        self.out.push(header, payload, shared, &self.config);
    }

    fn push_control(&mut self, opcode: OpCode, payload: &[u8]) {
        if self.control_priority {
            let header = FrameHeader {
                fin: true,
                rsv1: false,
                rsv2: false,
                rsv3: false,
                opcode: opcode.as_u8(),
                mask: self.mask(),
                payload_len: payload.len() as u64,
            };
            self.ctrl.get_or_insert_default().push(header, payload, None, &self.config);
        } else {
            self.push(opcode, true, payload, None);
        }
    }

    fn push_close(&mut self, payload: Bytes) {
        self.close_sent = true;
        // Never with control priority: §5.5.1 "The application MUST NOT send any more
        // data frames after sending a Close frame", so the close frame follows every
        // data frame queued before it, and is the last frame this connection queues.
        self.push(OpCode::Close, true, &payload, None);
    }

    fn check_open(&self) -> Result<(), SendError> {
        if self.close_sent {
            Err(SendError::Closed)
        } else {
            Ok(())
        }
    }

    fn send_message(&mut self, opcode: OpCode, payload: &Bytes, compress: bool) -> Result<(), SendError> {
        self.check_open()?;
        if self.tx_fragment.is_some() {
            return Err(SendError::FragmentInProgress);
        }
        let role = self.role;
        match self.deflate.as_mut() {
            Some(d) if compress && payload.len() >= d.config.threshold => {
                let compressed = d.compress(role, payload, true);
                self.push_rsv(opcode, true, true, &compressed, Some(&compressed));
            }
            _ => self.push(opcode, true, payload, Some(payload)),
        }
        Ok(())
    }

    /// Queues a message that is never compressed, even when permessage-deflate is on
    /// (for data that is already compressed, or to save time on a hot path).
    pub fn send_uncompressed(&mut self, kind: MessageKind, data: impl Into<Bytes>) -> Result<(), SendError> {
        let data = data.into();
        let opcode = match kind {
            MessageKind::Text => {
                Utf8Bytes::try_from(data.clone()).map_err(|_| SendError::InvalidUtf8)?;
                OpCode::Text
            }
            MessageKind::Binary => OpCode::Binary,
        };
        self.send_message(opcode, &data, false)
    }

    /// Queues a text message in one frame.
    pub fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), SendError> {
        let payload = text.into().into_bytes();
        self.send_message(OpCode::Text, &payload, true)
    }

    /// Queues a binary message in one frame.
    pub fn send_binary(&mut self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_message(OpCode::Binary, &data.into(), true)
    }

    /// Queues one fragment of a message, so a large message can be streamed without
    /// holding it whole. The first call starts a message of `kind`; later calls continue
    /// it (with the same `kind`) until one with `fin` set ends it. Text fragments are
    /// checked as a UTF-8 stream; a fragment that breaks it is refused and not sent.
    /// Control frames (ping, pong, close) may be sent between fragments.
    pub fn send_fragment(&mut self, kind: MessageKind, data: impl Into<Bytes>, fin: bool) -> Result<(), SendError> {
        self.check_open()?;
        let data = data.into();
        let opcode = match self.tx_fragment {
            Some(k) if k != kind => return Err(SendError::FragmentInProgress),
            Some(_) => OpCode::Continuation,
            None => {
                self.tx_utf8.reset();
                match kind {
                    MessageKind::Text => OpCode::Text,
                    MessageKind::Binary => OpCode::Binary,
                }
            }
        };
        if kind == MessageKind::Text {
            let mut v = self.tx_utf8.clone();
            v.feed(&data).map_err(|_| SendError::InvalidUtf8)?;
            if fin {
                v.finish().map_err(|_| SendError::InvalidUtf8)?;
            }
            self.tx_utf8 = v;
        }
        if opcode != OpCode::Continuation {
            // A fragmented message is compressed whole or not at all, whatever the size
            // of its first fragment.
            self.tx_compressed = self.deflate.is_some();
        }
        self.tx_fragment = if fin { None } else { Some(kind) };
        let role = self.role;
        match self.deflate.as_mut() {
            Some(d) if self.tx_compressed => {
                let compressed = d.compress(role, &data, fin);
                let first = opcode != OpCode::Continuation;
                self.push_rsv(opcode, fin, first, &compressed, Some(&compressed));
            }
            _ => self.push(opcode, fin, &data, Some(&data)),
        }
        Ok(())
    }

    /// Queues a ping (payload at most 125 bytes).
    pub fn send_ping(&mut self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_control(OpCode::Ping, data.into())
    }

    /// Queues an unsolicited pong (payload at most 125 bytes); pongs that answer pings
    /// are sent by the core itself.
    pub fn send_pong(&mut self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_control(OpCode::Pong, data.into())
    }

    fn send_control(&mut self, opcode: OpCode, data: Bytes) -> Result<(), SendError> {
        self.check_open()?;
        check_control_payload(data.len())?;
        self.push_control(opcode, &data);
        Ok(())
    }

    /// Queues a close frame again, for a driver that discarded the close frame it had
    /// taken from [`Connection::poll_transmit`] before any of it was written (a driver
    /// that drops its unsent backlog to close a peer that reads too slowly). The state
    /// does not change: a close frame was sent, as far as the protocol goes, and this
    /// one replaces it on the wire. An error when no close frame was sent, or when
    /// `code` and `reason` may not be sent.
    pub fn resend_close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !self.close_sent {
            return Err(SendError::NoCloseSent);
        }
        check_close(code, reason)?;
        self.push_close(CloseFrame::new(code, reason).encode());
        Ok(())
    }

    /// Starts the closing handshake with a code and a reason (at most 123 bytes).
    /// Nothing may be sent after it. Use [`CloseCode::NORMAL`] for an ordinary close.
    pub fn send_close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.check_open()?;
        check_close(code, reason)?;
        self.push_close(CloseFrame::new(code, reason).encode());
        self.state = if self.close_received { State::Closed } else { State::Closing };
        Ok(())
    }
}

/// Whether a ping or pong payload of `len` bytes may be sent: §5.5 "All control frames
/// MUST have a payload length of 125 bytes or less". The check
/// [`Connection::send_ping`] and [`Connection::send_pong`] make, for a driver that
/// validates a command before handing it to the connection later (a split writer).
pub fn check_control_payload(len: usize) -> Result<(), SendError> {
    if len > 125 {
        return Err(SendError::ControlFrameTooLong(len));
    }
    Ok(())
}

/// Whether a close frame with `code` and `reason` may be sent: a code valid on the wire
/// (not 1005, 1006, 1015 or unassigned) and a reason of at most 123 bytes, so that the
/// payload fits the 125 bytes of a control frame. The check [`Connection::send_close`]
/// makes.
pub fn check_close(code: CloseCode, reason: &str) -> Result<(), SendError> {
    if !code.is_valid_on_wire() {
        return Err(SendError::InvalidCloseCode(code.0));
    }
    if reason.len() > 123 {
        return Err(SendError::ControlFrameTooLong(reason.len() + 2));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
