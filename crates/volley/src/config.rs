//! The tokio layer's configuration: protocol limits plus timeouts and buffer sizes.

use std::time::Duration;

use volley_proto::{Config as ProtoConfig, DeflateConfig, RandomSource};

/// Settings of a WebSocket connection, for both roles. Build it with the setters; each
/// states its default.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) proto: ProtoConfig,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) write_buffer_size: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) protocols: Vec<String>,
    pub(crate) deflate: Option<DeflateConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proto: ProtoConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            write_buffer_size: 128 << 10,
            read_buffer_size: 8 << 10,
            protocols: Vec::new(),
            deflate: Some(DeflateConfig::default()),
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
        self.proto.max_frame_size = bytes;
        self
    }

    /// Largest message accepted. Default 64 MiB; larger messages fail the connection
    /// with 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.proto.max_message_size = bytes;
        self
    }

    /// Largest opening handshake head. Default 16 KiB (431 past it on the server).
    pub fn max_handshake_size(mut self, bytes: usize) -> Self {
        self.proto.max_handshake_size = bytes;
        self
    }

    /// Most header fields in the opening handshake. Default 64.
    pub fn max_headers(mut self, count: usize) -> Self {
        self.proto.max_headers = count;
        self
    }

    /// Time allowed for the opening handshake. Default 10 s.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// Time allowed for the closing handshake, from our close frame (or the peer's)
    /// to the end of the TCP connection. Default 5 s.
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = t;
        self
    }

    /// Bytes buffered for sending before `send`/`feed` wait for the socket to drain.
    /// Default 128 KiB.
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.write_buffer_size = bytes.max(1);
        self
    }

    /// Size of each read from the socket. Default 8 KiB; the buffer is allocated when
    /// data arrives and released while the connection is idle.
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
        self.proto.random = random;
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

    /// The protocol core's configuration.
    pub fn proto(&self) -> &ProtoConfig {
        &self.proto
    }
}
