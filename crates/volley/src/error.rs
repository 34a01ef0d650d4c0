//! The error type of the tokio layer.

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
    /// The opening or closing handshake took longer than its timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
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
    /// [`WebSocket::split`](crate::WebSocket::split) was called outside a tokio runtime
    /// (it spawns the task that drives the connection).
    #[error("no tokio runtime to run the connection on")]
    NoRuntime,
}
