//! The error type of the tokio layer: [`Error`], and [`Timeout`], the step that took
//! too long.

use std::fmt;
use std::io;

use volley_proto::{HandshakeError, ProtocolError, SendError};

/// Everything that can go wrong with a WebSocket connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The opening handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server refused the upgrade with this status (returned by the server side
    /// when the application's hook rejected the request).
    #[error("handshake rejected with status {0}")]
    Rejected(u16),
    /// The peer broke the protocol; the connection was failed with the error's close
    /// code.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A command that the connection's state does not allow.
    #[error("cannot send: {0}")]
    Send(#[from] SendError),
    /// A step of the connection took longer than its time limit: which one.
    #[error("{0} timed out")]
    Timeout(Timeout),
    /// The URL is not a usable ws:// or wss:// URL.
    #[error("invalid URL: {0}")]
    Url(String),
    /// The peer read too slowly: the write buffer filled up and the
    /// [`SlowReader::Close`](crate::config::SlowReader::Close) policy closed the
    /// connection with this code.
    #[error("the peer reads too slowly; closed with {0}")]
    SlowReader(volley_proto::CloseCode),
    /// The connection is already closed.
    #[error("connection closed")]
    Closed,
}

/// The step of a connection that took longer than its time limit, in
/// [`Error::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timeout {
    /// Opening the TCP connection, through the proxy's tunnel if there is one
    /// ([`ClientBuilder::connect_timeout`](crate::ClientBuilder::connect_timeout)).
    Connect,
    /// The TLS handshake, client or server side
    /// ([`Config::handshake_timeout`](crate::Config::handshake_timeout)).
    TlsHandshake,
    /// The opening handshake: the HTTP/1.1 Upgrade request and its answer, or the
    /// HTTP/2 handshake and extended CONNECT
    /// ([`Config::handshake_timeout`](crate::Config::handshake_timeout)).
    Handshake,
    /// The closing handshake: the peer neither answered the Close frame nor closed
    /// the connection ([`Config::close_timeout`](crate::Config::close_timeout)).
    Close,
    /// The peer did not answer a keepalive ping
    /// ([`Config::pong_timeout`](crate::Config::pong_timeout)).
    KeepalivePong,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Timeout::Connect => "connect",
            Timeout::TlsHandshake => "TLS handshake",
            Timeout::Handshake => "opening handshake",
            Timeout::Close => "closing handshake",
            Timeout::KeepalivePong => "keepalive pong",
        })
    }
}
