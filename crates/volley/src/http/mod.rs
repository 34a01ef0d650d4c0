//! WebSockets inside HTTP servers and over HTTP/2 (feature `hyper`; the axum extractor
//! also needs feature `axum`).
//!
//! A WebSocket starts as an HTTP request in one of two ways, and everything here handles
//! both:
//!
//! - HTTP/1.1 (RFC 6455 §4): `GET` with `Upgrade: websocket`, answered with
//!   `101 Switching Protocols`; the TCP (or TLS) connection then carries the WebSocket.
//! - HTTP/2 (RFC 8441): an extended `CONNECT` with `:protocol websocket`, answered with
//!   `200`; one HTTP/2 stream then carries the WebSocket, next to other requests and
//!   other WebSockets on the same connection. The server must have announced
//!   `SETTINGS_ENABLE_CONNECT_PROTOCOL` (hyper:
//!   `auto::Builder::http2().enable_connect_protocol()`, which [`Server`] and
//!   `axum::serve` do). Framing is unchanged, masking included (RFC 8441 §5).
//!
//! The pieces:
//!
//! - [`upgrade`]: checks a hyper (or any `http::Request`) request, runs the same hook as
//!   [`ServerBuilder::hook`](crate::ServerBuilder::hook), and returns the response to
//!   send plus an [`UpgradeFut`] that resolves to the [`WebSocket`] once hyper hands
//!   the connection (or stream) over. A request that is not a valid WebSocket request,
//!   or that the hook refuses, gives an [`UpgradeError`], which knows the HTTP response
//!   to send ([`UpgradeError::into_http_response`]).
//! - [`Server`] and [`serve_connection`]: serve one connection with hyper-util's
//!   automatic HTTP/1.1 + HTTP/2 builder, upgrades and extended CONNECT on, calling a
//!   handler for each WebSocket and an optional fallback for the other requests.
//! - `WebSocketUpgrade` (feature `axum`): the axum extractor, for HTTP/1.1 and HTTP/2.
//! - [`connect_h2`] and [`ClientBuilder::connect_h2`](crate::ClientBuilder::connect_h2):
//!   the RFC 8441 client, over TLS with ALPN `h2` for `wss://`, or HTTP/2 with prior
//!   knowledge (h2c) for `ws://`.
//!
//! Every [`WebSocket`] made here records its HTTP version in
//! [`ConnectionInfo::http_version`](crate::ConnectionInfo::http_version).
//!
//! A hyper service that upgrades WebSocket requests and answers the others itself:
//!
//! ```no_run
//! use volley::http::{is_websocket_request, upgrade, Body};
//!
//! async fn handle(
//!     mut req: http::Request<hyper::body::Incoming>,
//! ) -> Result<http::Response<Body>, std::convert::Infallible> {
//!     if !is_websocket_request(&req) {
//!         return Ok(http::Response::new(Body::from("hello")));
//!     }
//!     match upgrade(&mut req, volley::Config::new(), |_, _| Ok(())) {
//!         Ok((response, websocket)) => {
//!             tokio::spawn(async move {
//!                 let Ok(mut ws) = websocket.await else { return };
//!                 while let Some(Ok(msg)) = ws.recv().await {
//!                     if msg.is_data() && ws.send(msg).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             });
//!             Ok(response)
//!         }
//!         Err(e) => Ok(e.into_http_response()),
//!     }
//! }
//! ```
//!
//! Serve it with `hyper_util::server::conn::auto::Builder`, calling
//! `.http2().enable_connect_protocol()` for HTTP/2 and `serve_connection_with_upgrades`
//! for HTTP/1.1, or let [`Server`] do all of that.

#[cfg(feature = "axum")]
mod axum;
pub(crate) mod client;
mod server;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{Extensions, Method, StatusCode, Uri, Version};
use bytes::Bytes;
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use volley_proto::handshake::{Headers, Request, Response};
use volley_proto::{DeflateParams, ExtensionOffer, HandshakeError, Role};

use crate::config::Config;
use crate::error::Error;
use crate::server::{HandshakeRequest, Rejection};
use crate::websocket::WebSocket;

#[cfg(feature = "axum")]
pub use self::axum::WebSocketUpgrade;
pub use self::client::{connect_h2, h2_client_config};
pub use self::server::{serve_connection, with_h2_alpn, Server};
/// hyper 1, as used here (for `hyper::ext::Protocol`, the server and client
/// connection builders).
pub use hyper;
/// hyper-util, as used here (`TokioIo`, `TokioExecutor`, the automatic server builder).
pub use hyper_util;

/// The ALPN protocol of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The body of the responses made here: a whole body in memory (empty for a successful
/// upgrade).
pub type Body = http_body_util::Full<Bytes>;

/// The transport of a WebSocket handed over by hyper: the HTTP/1.1 connection after the
/// 101, or the HTTP/2 stream after the 200.
pub type UpgradedIo = TokioIo<hyper::upgrade::Upgraded>;

/// Whether `req` asks for a WebSocket: an HTTP/1.1 request with an `Upgrade` header
/// containing `websocket`, or an HTTP/2 `CONNECT` with `:protocol` `websocket`. It does
/// not check the rest (that is [`upgrade`]'s job); use it to route WebSocket requests
/// apart from the others.
pub fn is_websocket_request<B>(req: &::http::Request<B>) -> bool {
    wants_websocket(req.method(), req.version(), req.headers(), req.extensions())
}

fn wants_websocket(method: &Method, version: Version, headers: &HeaderMap, extensions: &Extensions) -> bool {
    if version >= Version::HTTP_2 {
        method == Method::CONNECT
            && extensions.get::<Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
    } else {
        headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
    }
}

/// Upgrades an HTTP request to a WebSocket: HTTP/1.1 `GET` with `Upgrade: websocket`
/// (checked as [`ServerBuilder`](crate::ServerBuilder) checks it), or HTTP/2 extended
/// `CONNECT` (RFC 8441: `:protocol websocket`, `Sec-WebSocket-Version: 13`).
///
/// As with [`ServerBuilder`](crate::ServerBuilder), the response first gets the
/// client's first subprotocol found in [`Config::protocols`] and permessage-deflate if
/// the client offered it and the configuration allows it; then the hook sees the checked request (for HTTP/2 its
/// `Host` is the `:authority`) and may edit the response or refuse with a
/// [`Rejection`].
///
/// On success, send the returned response (101 for HTTP/1.1, 200 for HTTP/2) and await
/// the [`UpgradeFut`] apart from the service (spawn it): hyper hands the connection over
/// only after the response has left. Hyper must serve the connection with upgrades
/// (`serve_connection_with_upgrades`) for HTTP/1.1, and with
/// `enable_connect_protocol` for HTTP/2.
///
/// On failure nothing is upgraded; send [`UpgradeError::into_http_response`]: 426 with
/// `Upgrade: websocket` for an HTTP/1.1 request without it, 405 for another method, 400
/// for a malformed request, the rejection's status, header fields and body when the hook
/// refused. Check [`is_websocket_request`] first to serve other requests differently.
pub fn upgrade<B, F>(
    req: &mut ::http::Request<B>,
    config: Config,
    hook: F,
) -> Result<(::http::Response<Body>, UpgradeFut), UpgradeError>
where
    F: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection>,
{
    let version = req.version();
    let request = check(req.method(), req.uri(), version, req.headers(), req.extensions())?;
    let remote = remote_addr(req.extensions());
    let checked = Checked::new(request, version, req.extensions_mut())?;
    let (response, fut) = checked.respond(config, remote, hook)?;
    Ok((response, fut.with_addrs(remote, None)))
}

/// The peer's address, as a request extension: [`Server`] inserts it into every request
/// it serves from [`Server::serve_tcp`] or [`Server::serve_connection_from`], and
/// [`upgrade`] hands it to the hook ([`HandshakeRequest::remote_addr`]) and the
/// WebSocket's [`info`](WebSocket::info). With another server, insert it yourself
/// (axum's `ConnectInfo<SocketAddr>` is read too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// The peer's address from the request's extensions: [`RemoteAddr`], or axum's
/// `ConnectInfo<SocketAddr>`.
pub(crate) fn remote_addr(extensions: &Extensions) -> Option<SocketAddr> {
    let ours = extensions.get::<RemoteAddr>().map(|r| r.0);
    #[cfg(feature = "axum")]
    let ours = ours.or_else(|| extensions.get::<::axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0));
    ours
}

/// Checks a request head against RFC 6455 §4.2.1 (HTTP/1.1) or RFC 8441 §4-5 (HTTP/2).
fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<Request, UpgradeError> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let fail = |e: HandshakeError| UpgradeError { kind: Kind::Handshake(e), version };
    if version < Version::HTTP_2 {
        let fields = Headers::from_pairs(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
        return Request::from_http1(method.as_str(), target, version >= Version::HTTP_11, fields).map_err(fail);
    }
    if method != Method::CONNECT {
        return Err(fail(HandshakeError::Method(method.to_string())));
    }
    if !wants_websocket(method, version, headers, extensions) {
        return Err(fail(HandshakeError::Upgrade));
    }
    // HTTP/2 has no Host field: :authority stands for it (RFC 9113 §8.3.1), so that
    // `Request::host` works the same for both versions.
    let host = match (headers.contains_key(header::HOST), uri.authority()) {
        (false, Some(authority)) => Some(("host", authority.as_str().as_bytes())),
        _ => None,
    };
    let fields = Headers::from_pairs(host.into_iter().chain(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))));
    Request::from_http2_connect(target, fields).map_err(fail)
}

/// A checked request, with the means to take over its connection.
struct Checked {
    request: Request,
    on_upgrade: OnUpgrade,
    version: Version,
}

impl Checked {
    /// Takes hyper's upgrade handle out of the request's extensions (it is there when
    /// hyper serves the connection with upgrades, or the HTTP/2 request is a CONNECT).
    fn new(request: Request, version: Version, extensions: &mut Extensions) -> Result<Checked, UpgradeError> {
        let on_upgrade = extensions.remove::<OnUpgrade>().ok_or(UpgradeError { kind: Kind::NotUpgradable, version })?;
        Ok(Checked { request, on_upgrade, version })
    }

    /// Negotiates subprotocol and compression, runs the hook, and builds the answer.
    fn respond<F>(
        self,
        config: Config,
        remote: Option<SocketAddr>,
        hook: F,
    ) -> Result<(::http::Response<Body>, UpgradeFut), UpgradeError>
    where
        F: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection>,
    {
        let Checked { request, on_upgrade, version } = self;
        let request = HandshakeRequest::new(request, remote);
        let (mut response, params) = crate::server::negotiate(&request, &config);
        if let Err(rejection) = hook(&request, &mut response) {
            return Err(UpgradeError { kind: Kind::Rejected(rejection), version });
        }
        let http_response = success_response(&response, version);
        let pending = Pending {
            config,
            target: request.target().to_string(),
            headers: request.headers().clone(),
            protocol: response.protocol().map(str::to_string),
            extensions: response.extensions().to_vec(),
            params,
            version,
            remote,
            local: None,
        };
        Ok((http_response, UpgradeFut { on_upgrade, pending: Some(Box::new(pending)) }))
    }
}

/// The 101 (HTTP/1.1) or 200 (HTTP/2) answer for `response`.
fn success_response(response: &Response, version: Version) -> ::http::Response<Body> {
    let mut res = ::http::Response::new(Body::default());
    if version < Version::HTTP_2 {
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    }
    let h = res.headers_mut();
    if version < Version::HTTP_2 {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        append(h, "sec-websocket-accept", response.accept_key());
    }
    if let Some(p) = response.protocol() {
        append(h, "sec-websocket-protocol", p);
    }
    if !response.extensions().is_empty() {
        let list: Vec<String> = response.extensions().iter().map(ExtensionOffer::to_header_value).collect();
        append(h, "sec-websocket-extensions", &list.join(", "));
    }
    for (n, v) in response.headers() {
        append(h, n, v);
    }
    res
}

/// Appends a header field. The values come from the handshake types, which only accept
/// tokens as names and values without control characters, so the conversion cannot
/// fail in practice; a field that would not convert is left out rather than sent
/// mangled.
fn append(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
        headers.append(n, v);
    }
}

/// What the WebSocket needs once hyper hands the transport over.
struct Pending {
    config: Config,
    target: String,
    headers: Headers,
    protocol: Option<String>,
    extensions: Vec<ExtensionOffer>,
    params: Option<DeflateParams>,
    version: Version,
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
}

/// The second half of [`upgrade`]: resolves to the [`WebSocket`] once hyper has sent the
/// response and handed the connection (HTTP/1.1) or the stream (HTTP/2) over, or to an
/// [`Error::Io`] if the connection ended first. Await it apart from the service that
/// returns the response (spawn it), or it never resolves.
#[must_use = "the WebSocket comes from awaiting the UpgradeFut"]
pub struct UpgradeFut {
    on_upgrade: OnUpgrade,
    pending: Option<Box<Pending>>,
}

impl UpgradeFut {
    /// The HTTP version the WebSocket will run over (`HTTP_11` or `HTTP_2`).
    pub fn http_version(&self) -> Version {
        self.pending.as_ref().map_or(Version::HTTP_11, |p| p.version)
    }

    /// Records the connection's addresses in the WebSocket's
    /// [`info`](WebSocket::info) (a `None` keeps what is known: [`upgrade`] fills the
    /// remote address in from axum's `ConnectInfo<SocketAddr>` when it is there).
    pub fn with_addrs(mut self, remote: Option<SocketAddr>, local: Option<SocketAddr>) -> Self {
        if let Some(p) = self.pending.as_mut() {
            p.remote = remote.or(p.remote);
            p.local = local.or(p.local);
        }
        self
    }
}

impl fmt::Debug for UpgradeFut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeFut").field("http_version", &self.http_version()).finish_non_exhaustive()
    }
}

impl Future for UpgradeFut {
    type Output = Result<WebSocket<UpgradedIo>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let upgraded = ready!(Pin::new(&mut self.on_upgrade).poll(cx));
        let Some(p) = self.pending.take() else {
            return Poll::Ready(Err(Error::Closed));
        };
        let upgraded = upgraded.map_err(hyper_error)?;
        let ws = WebSocket::from_handshaken(TokioIo::new(upgraded), Role::Server, p.config, &[], p.protocol, p.params)
            .with_handshake_info(&p.target, p.headers, p.extensions, p.version)
            .with_addrs(p.remote, p.local);
        Poll::Ready(Ok(ws))
    }
}

/// A hyper error as an [`Error::Io`] (its kind is `Other`; the hyper error is the
/// source).
pub(crate) fn hyper_error(e: hyper::Error) -> Error {
    Error::Io(io::Error::other(e))
}

/// Why [`upgrade`] (or the axum extractor) did not upgrade a request, with the HTTP
/// response that says so ([`UpgradeError::into_http_response`]).
#[derive(Debug)]
pub struct UpgradeError {
    kind: Kind,
    version: Version,
}

#[derive(Debug)]
enum Kind {
    /// Not a valid WebSocket request.
    Handshake(HandshakeError),
    /// The application's hook refused it.
    Rejected(Rejection),
    /// A valid request on a connection hyper cannot hand over (served without
    /// upgrades).
    NotUpgradable,
}

impl UpgradeError {
    /// The HTTP status of the answer: the handshake error's (426, 405, 400, 431), the
    /// rejection's, or 500 when hyper cannot hand the connection over (an HTTP/1.1
    /// connection served without `serve_connection_with_upgrades`).
    pub fn status(&self) -> StatusCode {
        match &self.kind {
            // HTTP/2 has no Upgrade: a CONNECT for another protocol is just a bad request.
            Kind::Handshake(HandshakeError::Upgrade) if self.version >= Version::HTTP_2 => StatusCode::BAD_REQUEST,
            Kind::Handshake(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            Kind::Rejected(r) => StatusCode::from_u16(r.parts().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Kind::NotUpgradable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The handshake error, when the request was not a valid WebSocket request.
    pub fn handshake_error(&self) -> Option<&HandshakeError> {
        match &self.kind {
            Kind::Handshake(e) => Some(e),
            _ => None,
        }
    }

    /// The hook's refusal, when the hook refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match &self.kind {
            Kind::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// The HTTP version of the request.
    pub fn http_version(&self) -> Version {
        self.version
    }

    /// The response to send: [`UpgradeError::status`] with a plain-text body, plus
    /// `Sec-WebSocket-Version: 13` for a version mismatch, `Upgrade: websocket` with
    /// 426, `Allow` with 405; or the rejection's status, header fields and body.
    pub fn into_http_response(self) -> ::http::Response<Body> {
        let status = self.status();
        let (fields, body): (Vec<(&str, &str)>, String) = match &self.kind {
            Kind::Handshake(e) => {
                let h2 = self.version >= Version::HTTP_2;
                let fields = match e {
                    HandshakeError::Version(_) => vec![("sec-websocket-version", "13")],
                    HandshakeError::Upgrade if !h2 => vec![("upgrade", "websocket"), ("sec-websocket-version", "13")],
                    HandshakeError::Method(_) => vec![("allow", if h2 { "CONNECT" } else { "GET" })],
                    _ => Vec::new(),
                };
                (fields, format!("{e}\n"))
            }
            Kind::Rejected(r) => {
                let (_, fields, body) = r.parts();
                (fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(), body.to_string())
            }
            Kind::NotUpgradable => (Vec::new(), format!("{self}\n")),
        };
        let mut res = ::http::Response::new(Body::from(body));
        *res.status_mut() = status;
        let h = res.headers_mut();
        for (n, v) in fields {
            append(h, n, v);
        }
        if !h.contains_key(header::CONTENT_TYPE) {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        }
        res
    }
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Handshake(e) => write!(f, "not a valid WebSocket request: {e}"),
            Kind::Rejected(r) => write!(f, "WebSocket request rejected with status {}", r.parts().0),
            Kind::NotUpgradable => {
                f.write_str("the connection cannot be upgraded (HTTP/1.1 must be served with upgrades)")
            }
        }
    }
}

impl std::error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

impl From<UpgradeError> for Error {
    /// [`Error::Handshake`] for an invalid request, [`Error::Rejected`] for a refusal,
    /// [`Error::Io`] when the connection cannot be upgraded.
    fn from(e: UpgradeError) -> Error {
        let message = e.to_string();
        match e.kind {
            Kind::Handshake(h) => Error::Handshake(h),
            Kind::Rejected(r) => Error::Rejected(r.parts().0),
            Kind::NotUpgradable => Error::Io(io::Error::other(message)),
        }
    }
}
