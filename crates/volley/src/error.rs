//! The error type of the tokio layer: [`Error`], and [`Timeout`], the step that took
//! too long.

use std::fmt;
use std::io;

use bytes::Bytes;
use volley_proto::{HandshakeError, ProtocolError, SendError};

#[cfg(feature = "proxy")]
use crate::proxy::ProxyError;

/// The most body bytes of a refusal kept in [`Error::Refused`]: 64 KiB, enough for an
/// error page or a JSON error, little enough that a hostile server cannot make the
/// client hold much.
pub const MAX_REFUSAL_BODY: usize = 64 * 1024;

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
    /// The server refused the client's opening handshake: it answered with a status
    /// other than 101 (200 over HTTP/2) that is not a redirect to follow. The answer is
    /// kept for the program to see why: its status, header fields (a 401's
    /// `WWW-Authenticate`, a 429's `Retry-After`) and the start of its body (at most
    /// [`MAX_REFUSAL_BODY`] bytes, what arrived within the handshake timeout). Boxed:
    /// a response is large.
    #[error("the server refused the handshake with status {}", .0.status())]
    Refused(Box<http::Response<Bytes>>),
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
    /// The URL is not a usable ws:// or wss:// URL (or proxy URL).
    #[error("invalid URL: {0}")]
    Url(String),
    /// A proxy refused the tunnel or broke its protocol: its answer. A proxy that cannot
    /// be reached, or that closes the connection, is an [`Error::Io`]. Boxed: the
    /// answer carries text. Feature `proxy`.
    #[cfg(feature = "proxy")]
    #[error(transparent)]
    Proxy(Box<ProxyError>),
    /// TLS failed: in the handshake (an unknown issuer, a certificate for another
    /// name, a peer that does not speak TLS, an alert from the peer) or in building a
    /// configuration (a private key that does not fit). Boxed: the error is large.
    /// Feature `tls`.
    #[cfg(feature = "tls")]
    #[error("TLS error: {0}")]
    Tls(Box<rustls::Error>),
    /// A setting or argument that cannot work, refused before any connection is made
    /// (a TLS configuration together with extra roots, a PEM file without a
    /// certificate, SOCKS5 credentials longer than 255 bytes, a `wss://` URL without
    /// the `tls` feature, …).
    #[error("invalid configuration: {0}")]
    Config(String),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Result<_, Error>` carries the error inline: large payloads are boxed so
    /// that it stays small (tungstenite's went from 136 to 32 bytes).
    #[test]
    fn error_stays_small() {
        assert!(std::mem::size_of::<Error>() <= 32, "{} bytes", std::mem::size_of::<Error>());
    }

    #[test]
    fn messages_say_what_failed() {
        assert_eq!(Error::Timeout(Timeout::TlsHandshake).to_string(), "TLS handshake timed out");
        let refused = http::Response::builder().status(401).body(Bytes::new()).unwrap();
        assert_eq!(
            Error::Refused(Box::new(refused)).to_string(),
            "the server refused the handshake with status 401 Unauthorized"
        );
    }

    #[cfg(feature = "proxy")]
    #[test]
    fn proxy_errors_are_the_proxys_answer() {
        let proxy = ProxyError::Malformed("not HTTP".into());
        assert_eq!(Error::Proxy(Box::new(proxy)).to_string(), "not HTTP");
    }
}
