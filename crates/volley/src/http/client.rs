//! The RFC 8441 client: a WebSocket over an HTTP/2 stream, opened with an extended
//! CONNECT on a connection of its own (TLS with ALPN `h2` for `wss://`, HTTP/2 with
//! prior knowledge for `ws://`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use ::http::header::{HeaderName, HeaderValue};
use ::http::{Method, StatusCode, Version};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use volley_proto::handshake::Headers;
use volley_proto::{deflate, ExtensionOffer, HandshakeError, Role};

use super::{hyper_error, UpgradedIo, ALPN_H2};
use crate::client::{parse_url, tls_config_conflict, ClientBuilder, Target};
use crate::config::Config;
use crate::error::{Error, Timeout, MAX_REFUSAL_BODY};
use crate::tls;
use crate::websocket::{with_timeout, WebSocket};

/// `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441 §3).
const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// A client configuration for HTTP/2 over TLS: [`tls::client_config`] with ALPN `h2`
/// only.
pub fn h2_client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let mut config = tls::client_config(roots);
    Arc::make_mut(&mut config).alpn_protocols = vec![ALPN_H2.to_vec()];
    config
}

/// [`h2_client_config`] with the default roots, built once and shared.
fn default_h2_client_config() -> Arc<ClientConfig> {
    static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    DEFAULT.get_or_init(|| h2_client_config(tls::default_roots())).clone()
}

impl ClientBuilder {
    /// The TLS configuration for `wss://` over HTTP/2: ALPN `h2` only.
    fn h2_tls_config(&self) -> Result<Arc<ClientConfig>, Error> {
        match (&self.tls_config, self.root_certificates.is_empty()) {
            (Some(config), true) => {
                let mut config = config.clone();
                if config.alpn_protocols != [ALPN_H2] {
                    Arc::make_mut(&mut config).alpn_protocols = vec![ALPN_H2.to_vec()];
                }
                Ok(config)
            }
            (Some(_), false) => Err(tls_config_conflict()),
            (None, true) => Ok(default_h2_client_config()),
            (None, false) => Ok(h2_client_config(tls::roots_with(&self.root_certificates)?)),
        }
    }

    /// Opens a WebSocket over HTTP/2 (RFC 8441) on a connection of its own (feature
    /// `hyper`): `wss://` runs HTTP/2 over TLS (the server must select ALPN `h2`;
    /// certificate checked against the URL's host), `ws://` runs HTTP/2 with prior
    /// knowledge (h2c) over TCP. The TCP connection is opened as for
    /// [`connect`](ClientBuilder::connect) (proxy, happy eyeballs, connect timeout);
    /// then HTTP/2 starts, the client waits for the server's SETTINGS and sends the
    /// extended CONNECT with the builder's header fields, subprotocols and extensions.
    /// Redirects are not followed. Errors:
    /// - the server did not select `h2` in ALPN, or its SETTINGS lack
    ///   `SETTINGS_ENABLE_CONNECT_PROTOCOL` (it does not do WebSockets over HTTP/2):
    ///   [`Error::Io`] of kind `Unsupported`, saying which;
    /// - the server answered with another status than 200: [`Error::Refused`], with
    ///   the answer (status, header fields, the start of the body);
    /// - a subprotocol or extension that was not offered: as for HTTP/1.1.
    ///
    /// The TLS handshake, the HTTP/2 handshake and the CONNECT each get the handshake
    /// timeout. The HTTP/2 connection serves this one WebSocket and ends with it.
    pub async fn connect_h2(self) -> Result<(WebSocket<UpgradedIo>, ::http::Response<()>), Error> {
        let (builder, target) = self.with_url_credentials()?;
        let tls = if target.tls { Some((builder.h2_tls_config()?, tls::server_name(&target.host)?)) } else { None };
        let limit = builder.config.handshake_timeout;
        let tcp = builder.open_tcp(&target).await?;
        let addrs = (tcp.peer_addr().ok(), tcp.local_addr().ok());
        match tls {
            None => run(builder, tcp, target, addrs, |io| io).await,
            Some((config, name)) => {
                let connector = TlsConnector::from(config);
                let no_h2 = || {
                    unsupported(format!("{}: the server does not speak HTTP/2 over TLS (ALPN h2)", target.host_header))
                };
                let stream = with_timeout!(limit, Timeout::TlsHandshake, async {
                    connector.connect(name, tcp).await.map_err(|e| match tls::handshake_error(e) {
                        Error::Tls(e)
                            if *e == rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol) =>
                        {
                            no_h2()
                        }
                        e => e,
                    })
                })?;
                // A server that ignores ALPN is refused here.
                if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                    return Err(no_h2());
                }
                run(builder, stream, target, addrs, |io| io).await
            }
        }
    }

    /// Runs HTTP/2 and the extended CONNECT over a transport that is already connected
    /// (and, for `wss://`, already TLS with `h2` agreed): the URL gives only the
    /// `:scheme`, `:authority` and `:path`. Feature `hyper`.
    pub async fn handshake_h2<S>(self, io: S) -> Result<(WebSocket<UpgradedIo>, ::http::Response<()>), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = parse_url(&self.url)?;
        run(self, io, target, (None, None), |io| io).await
    }
}

/// HTTP/2 and the extended CONNECT over `io`, for `builder`'s request; the
/// WebSocket's transport is `wrap`ped, its addresses recorded.
pub(crate) async fn run<S, T>(
    builder: ClientBuilder,
    io: S,
    target: Target,
    (remote, local): (Option<SocketAddr>, Option<SocketAddr>),
    wrap: impl FnOnce(UpgradedIo) -> T,
) -> Result<(WebSocket<T>, ::http::Response<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let ClientBuilder { config, headers, .. } = builder;
    let request = connect_request(&target, &config, &headers)?;
    // A refusal's body is read until the end of the handshake timeout.
    let deadline = Instant::now() + config.handshake_timeout;
    let mut response = with_timeout!(config.handshake_timeout, Timeout::Handshake, async {
        let (settings_tx, settings_rx) = oneshot::channel();
        let io = TokioIo::new(SettingsSniffer::new(io, settings_tx));
        let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(hyper_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
            }
        });
        // The server's first frame is its SETTINGS (RFC 9113 §3.4); without
        // SETTINGS_ENABLE_CONNECT_PROTOCOL it would reset the CONNECT stream, or
        // take it for a proxy request.
        match settings_rx.await {
            Ok(Settings::ConnectProtocol) => {}
            Ok(Settings::NoConnectProtocol) => {
                return Err(unsupported(format!(
                    "{}: the server does not accept WebSockets over HTTP/2: its SETTINGS lack \
                     SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)",
                    target.host_header
                )))
            }
            Ok(Settings::NotHttp2) => {
                return Err(unsupported(format!(
                    "{}: the server did not start HTTP/2 (its first frame is not SETTINGS): \
                     it does not speak HTTP/2 with prior knowledge",
                    target.host_header
                )))
            }
            Err(_) => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the HTTP/2 connection ended before the server's SETTINGS",
                )))
            }
        }
        sender.ready().await.map_err(hyper_error)?;
        sender.send_request(request).await.map_err(hyper_error)
    })?;
    if response.status() != StatusCode::OK {
        return Err(refusal(response, deadline).await);
    }
    let headers = response.headers();
    let protocol = match headers.get("sec-websocket-protocol") {
        None => None,
        Some(v) => {
            let p = v.to_str().map_err(|_| HandshakeError::MalformedHeader("Sec-WebSocket-Protocol"))?.trim();
            if !config.protocols.iter().any(|o| o == p) {
                return Err(HandshakeError::Protocol(p.to_string()).into());
            }
            Some(p.to_string())
        }
    };
    let mut values = Vec::new();
    for v in headers.get_all("sec-websocket-extensions") {
        values.push(v.to_str().map_err(|_| HandshakeError::MalformedHeader("Sec-WebSocket-Extensions"))?);
    }
    let extensions = ExtensionOffer::parse_all(values)?;
    let params = crate::client::accept_extensions(&extensions, &config)?;
    let fields = Headers::from_pairs(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let upgraded = hyper::upgrade::on(&mut response).await.map_err(hyper_error)?;
    let ws = WebSocket::from_handshaken(wrap(TokioIo::new(upgraded)), Role::Client, config, &[], protocol, params)
        .with_handshake_info(&target.path, fields, extensions, Version::HTTP_2)
        .with_addrs(remote, local);
    let (parts, _) = response.into_parts();
    Ok((ws, ::http::Response::from_parts(parts, ())))
}

/// [`Error::Refused`] with a refusal's status, header fields and the start of its body:
/// what arrives before `deadline`, at most [`MAX_REFUSAL_BODY`] bytes.
async fn refusal(response: ::http::Response<Incoming>, deadline: Instant) -> Error {
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    let read = async {
        while data.len() < MAX_REFUSAL_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(chunk) = frame.data_ref() {
                        data.extend_from_slice(chunk);
                    }
                }
                _ => break,
            }
        }
    };
    // The deadline ends the body early: what came by then is kept.
    let _ = tokio::time::timeout_at(deadline, read).await;
    data.truncate(MAX_REFUSAL_BODY);
    Error::Refused(Box::new(::http::Response::from_parts(parts, Bytes::from(data))))
}

/// The extended CONNECT request (RFC 8441 §4-5).
fn connect_request(
    target: &Target,
    config: &Config,
    extra: &[(String, String)],
) -> Result<::http::Request<Empty<Bytes>>, Error> {
    let scheme = if target.tls { "https" } else { "http" };
    let uri: ::http::Uri = format!("{scheme}://{}{}", target.host_header, target.path)
        .parse()
        .map_err(|e| Error::Url(format!("{}{}: {e}", target.host_header, target.path)))?;
    let mut req = ::http::Request::new(Empty::new());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    req.extensions_mut().insert(Protocol::from_static("websocket"));
    let h = req.headers_mut();
    h.insert("sec-websocket-version", HeaderValue::from_static("13"));
    if !config.protocols.is_empty() {
        for p in &config.protocols {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                return Err(HandshakeError::InvalidHeader(format!("Sec-WebSocket-Protocol: {p}")).into());
            }
        }
        let list = config.protocols.join(", ");
        let value = HeaderValue::from_str(&list).map_err(|_| HandshakeError::InvalidHeader(list.clone()))?;
        h.insert("sec-websocket-protocol", value);
    }
    if let Some(dc) = &config.deflate {
        let offer = deflate::client_offer(dc).to_header_value();
        let value = HeaderValue::from_str(&offer).map_err(|_| HandshakeError::InvalidHeader(offer.clone()))?;
        h.insert("sec-websocket-extensions", value);
    }
    for (n, v) in extra {
        let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| HandshakeError::InvalidHeader(n.clone()))?;
        let value = HeaderValue::from_str(v).map_err(|_| HandshakeError::InvalidHeader(n.clone()))?;
        h.append(name, value);
    }
    Ok(req)
}

fn unsupported(message: String) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::Unsupported, message))
}

/// What the server's first frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settings {
    /// SETTINGS with `SETTINGS_ENABLE_CONNECT_PROTOCOL` = 1.
    ConnectProtocol,
    /// SETTINGS without it.
    NoConnectProtocol,
    /// Not a SETTINGS frame: the peer does not speak HTTP/2.
    NotHttp2,
}

/// A transport that watches the first frame the server sends, its SETTINGS, and reports
/// whether `SETTINGS_ENABLE_CONNECT_PROTOCOL` is 1. hyper applies the settings but does
/// not say when they have arrived; this tells the client when it may send an extended
/// CONNECT, and that it may not, at once.
struct SettingsSniffer<S> {
    io: S,
    /// The frame header (9 bytes) as far as read.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the SETTINGS frame still to come.
    remaining: usize,
    /// The setting being read (6 bytes: identifier, value).
    entry: [u8; 6],
    entry_len: usize,
    enabled: bool,
    /// Taken when the answer is known; then the transport only passes bytes through.
    report: Option<oneshot::Sender<Settings>>,
}

impl<S> SettingsSniffer<S> {
    fn new(io: S, report: oneshot::Sender<Settings>) -> Self {
        SettingsSniffer {
            io,
            header: [0; 9],
            header_len: 0,
            remaining: 0,
            entry: [0; 6],
            entry_len: 0,
            enabled: false,
            report: Some(report),
        }
    }

    fn finish(&mut self, settings: Settings) {
        if let Some(report) = self.report.take() {
            let _ = report.send(settings);
        }
    }

    fn inspect(&mut self, mut data: &[u8]) {
        while self.report.is_some() && !data.is_empty() {
            if self.header_len < self.header.len() {
                let n = (self.header.len() - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                data = &data[n..];
                if self.header_len == self.header.len() {
                    let h = self.header;
                    let (kind, flags) = (h[3], h[4]);
                    // Anything but a SETTINGS frame (type 4) without ACK is not an
                    // HTTP/2 server's preface.
                    if kind != 4 || flags & 1 != 0 {
                        self.finish(Settings::NotHttp2);
                        return;
                    }
                    self.remaining = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    if self.remaining == 0 {
                        self.finish(Settings::NoConnectProtocol);
                    }
                }
                continue;
            }
            let n = (self.entry.len() - self.entry_len).min(self.remaining).min(data.len());
            self.entry[self.entry_len..self.entry_len + n].copy_from_slice(&data[..n]);
            self.entry_len += n;
            self.remaining -= n;
            data = &data[n..];
            if self.entry_len == self.entry.len() {
                let e = self.entry;
                let id = u16::from_be_bytes([e[0], e[1]]);
                if id == SETTINGS_ENABLE_CONNECT_PROTOCOL {
                    self.enabled = u32::from_be_bytes([e[2], e[3], e[4], e[5]]) == 1;
                }
                self.entry_len = 0;
            }
            if self.remaining == 0 {
                self.finish(if self.enabled { Settings::ConnectProtocol } else { Settings::NoConnectProtocol });
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SettingsSniffer<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.report.is_some() {
            this.inspect(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SettingsSniffer<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Opens a WebSocket over HTTP/2 (RFC 8441) with the default configuration: see
/// [`ClientBuilder::connect_h2`].
pub async fn connect_h2(url: &str) -> Result<(WebSocket<UpgradedIo>, ::http::Response<()>), Error> {
    ClientBuilder::new(url).connect_h2().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(bytes: &[u8], chunk: usize) -> Option<Settings> {
        let (tx, mut rx) = oneshot::channel();
        let mut s = SettingsSniffer::new((), tx);
        for c in bytes.chunks(chunk) {
            s.inspect(c);
        }
        rx.try_recv().ok()
    }

    #[test]
    fn settings_are_read_in_any_chunks() {
        // SETTINGS with MAX_CONCURRENT_STREAMS = 100 and ENABLE_CONNECT_PROTOCOL = 1,
        // followed by a PING.
        let mut frame = vec![0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 8, 0, 0, 0, 1];
        frame.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        for chunk in 1..frame.len() {
            assert_eq!(sniff(&frame, chunk), Some(Settings::ConnectProtocol), "chunk {chunk}");
        }
        frame[20] = 0;
        assert_eq!(sniff(&frame, 5), Some(Settings::NoConnectProtocol));
        assert_eq!(sniff(&[0, 0, 0, 4, 0, 0, 0, 0, 0], 9), Some(Settings::NoConnectProtocol), "empty SETTINGS");
        assert_eq!(sniff(&[0, 0, 0, 4, 1, 0, 0, 0, 0], 9), Some(Settings::NotHttp2), "a SETTINGS ACK first");
        assert_eq!(sniff(&[0, 0, 8, 6, 0], 9), None, "incomplete");
        assert_eq!(sniff(b"HTTP/1.1 400 Bad Request\r\n", 4), Some(Settings::NotHttp2), "HTTP/1.1");
    }
}
