//! [`MaybeTlsStream`], the transport of a client connection: plain TCP, TLS (feature
//! `tls`) or an HTTP/2 stream (feature `hyper`).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The transport of a client connection: plain TCP for `ws://`, TLS over TCP for
/// `wss://` (feature `tls`), or (feature `hyper`, when `ClientBuilder::http2`
/// allows it and the server selects ALPN `h2`) an HTTP/2 stream over TLS. It reads and
/// writes (vectored writes included) through whichever it is.
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream {
    /// A `ws://` connection.
    Plain(TcpStream),
    /// A `wss://` connection (boxed: the TLS state is large). Feature `tls`.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A `wss://` WebSocket over HTTP/2 (RFC 8441): one stream of an HTTP/2 connection
    /// over TLS, which hyper drives in a task of its own.
    #[cfg(feature = "hyper")]
    H2(Box<crate::http::UpgradedIo>),
}

impl MaybeTlsStream {
    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(_) => false,
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(_) => true,
            // Only `wss://` URLs take HTTP/2, chosen by ALPN.
            #[cfg(feature = "hyper")]
            MaybeTlsStream::H2(_) => true,
        }
    }

    /// The TCP connection underneath (addresses, socket options); `None` over HTTP/2,
    /// where the connection belongs to hyper.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTlsStream::Plain(tcp) => Some(tcp),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(tls) => Some(tls.get_ref().0),
            #[cfg(feature = "hyper")]
            MaybeTlsStream::H2(_) => None,
        }
    }

    /// The TLS session, for `wss://` over HTTP/1.1: negotiated ALPN protocol, protocol
    /// version, cipher suite, the server's certificates. `None` for `ws://`, and over
    /// HTTP/2, where the session belongs to hyper (the WebSocket's
    /// [`info`](crate::WebSocket::info) tells the HTTP version).
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&rustls::ClientConnection> {
        match self {
            MaybeTlsStream::Tls(tls) => Some(tls.get_ref().1),
            _ => None,
        }
    }
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(feature = "hyper")]
            MaybeTlsStream::H2(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(feature = "hyper")]
            MaybeTlsStream::H2(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(feature = "hyper")]
            MaybeTlsStream::H2(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
            #[cfg(feature = "hyper")]
            MaybeTlsStream::H2(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(feature = "hyper")]
            MaybeTlsStream::H2(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(feature = "hyper")]
            MaybeTlsStream::H2(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
