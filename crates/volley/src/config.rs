//! The tokio layer's configuration: protocol limits plus timeouts and buffer sizes.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use volley_proto::{CloseCode, Config as ProtoConfig, DeflateConfig, RandomSource};

/// What to do when the peer reads slower than the application sends and the write
/// buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowReader {
    /// The send waits until the buffer drains (the default): backpressure reaches the
    /// application.
    Wait,
    /// The new message is dropped (and counted, see `dropped_messages`); the send
    /// returns at once. For live data where the latest value matters, not every value.
    DropNewest,
    /// Queued data not yet started is discarded and the connection is closed with this
    /// code (1008 policy violation or 1013 try again later are usual).
    Close(CloseCode),
}

/// The default protocol configuration, shared: a [`Config`] that keeps it allocates
/// nothing for it.
static DEFAULT_PROTO: LazyLock<Arc<ProtoConfig>> = LazyLock::new(|| {
    let mut proto = ProtoConfig::default();
    proto.buffers = crate::pool::per_thread();
    Arc::new(proto)
});

/// Settings of a WebSocket connection, for both roles. Build it with the setters; each
/// states its default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared by every connection made with this configuration (and its clones):
    /// each connection keeps a reference, not a copy.
    pub(crate) proto: Arc<ProtoConfig>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) write_buffer_size: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) protocols: Vec<String>,
    pub(crate) deflate: Option<DeflateConfig>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) slow_reader: SlowReader,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proto: Arc::clone(&DEFAULT_PROTO),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            write_buffer_size: 128 << 10,
            read_buffer_size: 8 << 10,
            protocols: Vec::new(),
            deflate: Some(DeflateConfig::default()),
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(30),
            idle_timeout: None,
            max_lifetime: None,
            slow_reader: SlowReader::Wait,
        }
    }
}

impl Config {
    /// The default configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest frame payload accepted. Default 16 MiB; larger frames fail the
    /// connection with 1009.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.proto).max_frame_size = bytes;
        self
    }

    /// Largest message accepted. Default 64 MiB; larger messages fail the connection
    /// with 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.proto).max_message_size = bytes;
        self
    }

    /// Largest opening handshake head. Default 16 KiB (431 past it on the server).
    pub fn max_handshake_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.proto).max_handshake_size = bytes;
        self
    }

    /// Most header fields in the opening handshake. Default 64.
    pub fn max_headers(mut self, count: usize) -> Self {
        Arc::make_mut(&mut self.proto).max_headers = count;
        self
    }

    /// Time allowed for the opening handshake. Default 10 s.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// Time allowed for the closing handshake, from our close frame (or the peer's)
    /// to the end of the TCP connection. Default 5 s. Kept in whole milliseconds
    /// (rounded up).
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = t;
        self
    }

    /// Bytes buffered for sending before `send`/`feed` wait for the socket to drain.
    /// Default 128 KiB; at most 4 GiB (larger values are clamped).
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.write_buffer_size = bytes.max(1);
        self
    }

    /// Size of each read from the socket. Default 8 KiB, at most 4 GiB; the buffer is
    /// allocated when data arrives and released while the connection is idle. While
    /// reads come back full (a peer that streams), the size doubles, up to 8 times this
    /// (and no further than 256 KiB, or this size if larger), and it comes back down
    /// once they do not.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes.max(64);
        self
    }

    /// Server: subprotocols this endpoint speaks, in no particular order; the first of
    /// the client's offers found here is selected. Client: subprotocols to offer, in
    /// order of preference.
    pub fn protocols<S: Into<String>>(mut self, protocols: impl IntoIterator<Item = S>) -> Self {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// The source of masking and handshake keys (tests use a fixed one for byte-exact
    /// output). Default: the operating-system-seeded secure generator.
    pub fn random_source(mut self, random: RandomSource) -> Self {
        Arc::make_mut(&mut self.proto).random = random;
        self
    }

    /// permessage-deflate (RFC 7692) settings, or `None` to turn the extension off.
    /// Default: on, with [`DeflateConfig::default`] (12-bit windows, memory level 5,
    /// messages under 64 bytes sent as they are). A server accepts the first offer it
    /// can; a client offers it. The compression state is allocated on first use.
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.deflate = deflate;
        self
    }

    /// Checks the settings (limits and deflate parameters).
    pub fn validate(&self) -> Result<(), volley_proto::ConfigError> {
        self.proto.validate()?;
        if let Some(d) = &self.deflate {
            d.validate()?;
        }
        Ok(())
    }

    /// Interval between keepalive pings, or `None` for no pings. Default 30 s: short
    /// enough to keep NAT and proxy mappings alive, rare enough to cost nothing. Pings
    /// are sent while the connection is being read (`recv`), and each pong gives a
    /// round-trip time ([`WebSocket::rtt`](crate::WebSocket::rtt)).
    pub fn ping_interval(mut self, every: Option<Duration>) -> Self {
        self.ping_interval = every;
        self
    }

    /// How long to wait for the pong to a keepalive ping before the peer is taken for
    /// dead and the connection closed (1011). Default 30 s.
    pub fn pong_timeout(mut self, t: Duration) -> Self {
        self.pong_timeout = t;
        self
    }

    /// Close the connection (1001) when nothing has been received for this long.
    /// Default: none.
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Close the connection (1001) once it has been open this long, so that clients
    /// reconnect (to re-authenticate, or to spread over new servers). Default: none.
    pub fn max_lifetime(mut self, t: Option<Duration>) -> Self {
        self.max_lifetime = t;
        self
    }

    /// What to do when the write buffer ([`Config::write_buffer_size`]) is full because
    /// the peer does not keep up. Default [`SlowReader::Wait`]. The policy applies to
    /// data and pings: a pong or a close frame is queued at once, never held back or
    /// dropped. While the transport is backed up, pings and pongs go
    /// ahead of data that has not started to leave; a close frame never does (nothing
    /// may follow it, so it leaves after the data queued before it).
    ///
    /// When [`SlowReader::Close`] (or a keepalive that finds the peer dead) fails the
    /// connection, everything that has not started to leave is dropped, pongs and a
    /// close frame the application queued included, and the library's close frame
    /// goes next; an application's close frame that had started to leave finishes
    /// instead, so exactly one close frame is always sent.
    pub fn slow_reader(mut self, policy: SlowReader) -> Self {
        self.slow_reader = policy;
        self
    }

    /// The protocol core's configuration.
    pub fn proto(&self) -> &ProtoConfig {
        &self.proto
    }
}
