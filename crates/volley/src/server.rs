//! The server side: [`ServerBuilder`] (and [`accept`] for the defaults) reads and checks
//! the opening handshake on any transport, TLS and TCP set-up included, lets the
//! application accept or reject it, and answers.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use volley_proto::handshake::{server::reject_response, Request, Response};
use volley_proto::{deflate, DeflateParams, HandshakeError, Role};

use tokio::net::TcpStream;

use crate::config::Config;
use crate::error::Error;
#[cfg(feature = "tls")]
use crate::tls::{ServerTlsStream, TlsAcceptor};
use crate::websocket::{with_timeout, WebSocket};

/// A refusal of an upgrade request: an HTTP status, header fields and a body.
#[derive(Debug, Clone)]
pub struct Rejection {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Rejection {
    /// A refusal with `status` (for example 403 for a foreign Origin, 401 without
    /// credentials).
    pub fn new(status: u16) -> Self {
        Rejection { status, headers: Vec::new(), body: String::new() }
    }

    /// Adds a header field to the refusal.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the plain-text body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// The status, header fields and body, for HTTP stacks that build their own response
    /// (`volley::http`).
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (u16, &[(String, String)], &str) {
        (self.status, &self.headers, &self.body)
    }

    fn encode(&self) -> Vec<u8> {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        reject_response(self.status, &headers, &self.body)
    }
}

/// The opening handshake's request as a hook sees it: the checked [`Request`] (path,
/// query, header fields, Origin, cookies, offered subprotocols and extensions, all
/// through `Deref`: `req.origin()`, `req.header("Cookie")`), and the peer's address,
/// which the runtime knows and the sans-I/O core does not.
///
/// ```
/// # use volley::{HandshakeRequest, Rejection, Response};
/// fn only_local(req: &HandshakeRequest, _resp: &mut Response) -> Result<(), Rejection> {
///     match req.remote_addr() {
///         Some(addr) if addr.ip().is_loopback() && req.path() == "/chat" => Ok(()),
///         _ => Err(Rejection::new(403)),
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct HandshakeRequest {
    request: Request,
    remote_addr: Option<SocketAddr>,
}

impl HandshakeRequest {
    /// The checked `request`, sent by the peer at `remote_addr` (`None` if the
    /// transport does not tell): to call a hook outside a server, in a test say.
    pub fn new(request: Request, remote_addr: Option<SocketAddr>) -> Self {
        HandshakeRequest { request, remote_addr }
    }

    /// The address of the peer that sent the request, when known: the socket's with
    /// [`ServerBuilder::accept_tcp`] (and the `volley::http` server's TCP and
    /// `RemoteAddr` paths), or the one given to [`ServerBuilder::remote_addr`].
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }
}

impl Deref for HandshakeRequest {
    type Target = Request;

    fn deref(&self) -> &Request {
        &self.request
    }
}

/// Accepts a WebSocket connection on `io` with the default configuration and no hook:
/// `ServerBuilder::new().accept(io)`. [`ServerBuilder`] does everything else (a
/// configuration, a hook that sees the request, TLS, TCP set-up).
///
/// Like every accept here, it returns a boxed future: the handshake's state (buffers,
/// the request, the timer) lives on the heap while it runs and is freed after, so the
/// task that awaits it stays as small as the [`WebSocket`] it keeps.
pub fn accept<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> impl Future<Output = Result<WebSocket<S>, Error>> {
    // The builder's, with a hook that takes no room (its default is a function pointer).
    Box::pin(handshake(io, None, (None, None), Config::default(), |_, _| Ok(())))
}

/// The hook of a [`ServerBuilder`] that has none: it accepts every checked request.
type AcceptAll = fn(&HandshakeRequest, &mut Response) -> Result<(), Rejection>;

/// How the server side accepts a connection: the configuration, an optional hook that
/// sees the request, optional TLS, then [`accept`](ServerBuilder::accept) on any
/// `AsyncRead + AsyncWrite`, or [`accept_tcp`](ServerBuilder::accept_tcp) on a TCP
/// connection, which also sets it up.
///
/// One builder per connection (the hook is an `FnOnce`): a server clones its
/// [`Config`] for each, and its [`TlsAcceptor`] (a reference count).
///
/// ```no_run
/// # async fn run(tcp: tokio::net::TcpStream) -> Result<(), volley::Error> {
/// let config = volley::Config::new().protocols(["chat"]);
/// let ws = volley::ServerBuilder::new()
///     .config(config)
///     .hook(|req, _resp| match req.origin() {
///         Some("https://example.com") => Ok(()),
///         _ => Err(volley::Rejection::new(403)),
///     })
///     .accept_tcp(tcp)
///     .await?;
/// # Ok(()) }
/// ```
///
/// The handshake (and with TLS, the TLS handshake before it) gets
/// [`Config::handshake_timeout`]; a client that sends a bad request gets an HTTP error
/// answer, one the hook refuses gets the [`Rejection`], and either way the accept
/// returns an error. Bytes the client sent right after its request are kept for the
/// WebSocket.
pub struct ServerBuilder<H = AcceptAll, T = ()> {
    config: Config,
    remote: Option<SocketAddr>,
    hook: H,
    tls: T,
}

impl ServerBuilder {
    /// The default configuration, no hook, no TLS.
    pub fn new() -> Self {
        ServerBuilder { config: Config::default(), remote: None, hook: |_, _| Ok(()), tls: () }
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder::new()
    }
}

impl<H, T> std::fmt::Debug for ServerBuilder<H, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("remote_addr", &self.remote)
            .finish_non_exhaustive()
    }
}

impl<H, T> ServerBuilder<H, T> {
    /// The connection's configuration (default: [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The peer's address, for a transport that does not tell it (a Unix socket behind
    /// a proxy, a connection whose PROXY protocol header named the client): the hook
    /// sees it as [`HandshakeRequest::remote_addr`] and the WebSocket's
    /// [`info`](WebSocket::info) records it. It wins over the address
    /// [`accept_tcp`](ServerBuilder::accept_tcp) reads from the socket. Default: none,
    /// or the socket's with `accept_tcp`.
    pub fn remote_addr(mut self, addr: SocketAddr) -> Self {
        self.remote = Some(addr);
        self
    }

    /// The hook: it sees the checked request as a [`HandshakeRequest`] (path, query,
    /// headers, Origin, cookies, offered subprotocols and extensions, the peer's address)
    /// and may accept it, adding header fields or choosing a subprotocol on the response,
    /// or refuse it with a [`Rejection`], which the client receives as the HTTP answer.
    /// Before the hook runs, the response already carries the first of the client's
    /// subprotocols found in [`Config::protocols`] and the agreed extensions. Default:
    /// accept every request.
    pub fn hook<F>(self, hook: F) -> ServerBuilder<F, T>
    where
        F: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection>,
    {
        ServerBuilder { config: self.config, remote: self.remote, hook, tls: self.tls }
    }

    /// Runs TLS on the transport first (`wss://`), with this acceptor (see
    /// [`tls::acceptor`](crate::tls::acceptor) and
    /// [`tls::server_config`](crate::tls::server_config)), within the handshake timeout.
    /// The WebSocket's transport is then a [`ServerTlsStream`]; the server's view of TLS
    /// (SNI, ALPN, protocol version) is at `ws.get_ref().get_ref().1`. Default: no TLS.
    /// Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls(self, acceptor: TlsAcceptor) -> ServerBuilder<H, TlsAcceptor> {
        ServerBuilder { config: self.config, remote: self.remote, hook: self.hook, tls: acceptor }
    }
}

impl<H> ServerBuilder<H, ()>
where
    H: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection>,
{
    /// Accepts a WebSocket connection on any transport (a TLS stream of your own, a Unix
    /// socket, an in-memory pipe). On a [`TcpStream`], prefer
    /// [`accept_tcp`](ServerBuilder::accept_tcp).
    pub fn accept<S>(self, io: S) -> impl Future<Output = Result<WebSocket<S>, Error>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Box::pin(handshake(io, None, (self.remote, None), self.config, self.hook))
    }

    /// [`accept`](ServerBuilder::accept) on a TCP connection, which it also sets up:
    /// `TCP_NODELAY` on (frames are batched already), and both addresses recorded for
    /// the hook ([`HandshakeRequest::remote_addr`]) and the WebSocket's
    /// [`info`](WebSocket::info).
    pub fn accept_tcp(self, tcp: TcpStream) -> impl Future<Output = Result<WebSocket<TcpStream>, Error>> {
        let (failed, addrs) = set_up(&tcp, self.remote);
        Box::pin(handshake(tcp, failed, addrs, self.config, self.hook))
    }
}

#[cfg(feature = "tls")]
impl<H> ServerBuilder<H, TlsAcceptor>
where
    H: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection>,
{
    /// Runs the TLS handshake on any transport, then accepts a WebSocket connection on
    /// the TLS stream. On a [`TcpStream`], prefer
    /// [`accept_tcp`](ServerBuilder::accept_tcp).
    pub fn accept<S>(self, io: S) -> impl Future<Output = Result<WebSocket<ServerTlsStream<S>>, Error>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Box::pin(tls_handshake(io, self.tls, None, (self.remote, None), self.config, self.hook))
    }

    /// [`accept`](ServerBuilder::accept) on a TCP connection, which it also sets up
    /// first, as the plain [`accept_tcp`](ServerBuilder::accept_tcp) does.
    pub fn accept_tcp(
        self,
        tcp: TcpStream,
    ) -> impl Future<Output = Result<WebSocket<ServerTlsStream<TcpStream>>, Error>> {
        let (failed, addrs) = set_up(&tcp, self.remote);
        Box::pin(tls_handshake(tcp, self.tls, failed, addrs, self.config, self.hook))
    }
}

/// The TCP set-up of `accept_tcp`: `TCP_NODELAY` (its failure, if any, is the accept's
/// result) and the addresses (`remote`, if given, over the peer's).
///
/// It runs before the handshake's future is made, so that no wrapper future holds the
/// connection and the configuration a second time.
fn set_up(tcp: &TcpStream, remote: Option<SocketAddr>) -> (Option<std::io::Error>, Addrs) {
    let nodelay = tcp.set_nodelay(true);
    (nodelay.err(), (remote.or_else(|| tcp.peer_addr().ok()), tcp.local_addr().ok()))
}

/// The remote and local addresses of a connection, where known.
type Addrs = (Option<SocketAddr>, Option<SocketAddr>);

/// The server's opening handshake: read and check the request, negotiate, run the
/// hook, answer, and build the WebSocket; or `failed`, if setting up the transport
/// did.
///
/// Not an `async fn`: one keeps its arguments twice (as arguments, and as the locals
/// they move into), the transport and the whole configuration included; this block
/// keeps them once (2,320 -> 1,192 bytes per connection while a handshake runs; the
/// `handshake_future_holds_its_transport_once` test keeps a bound on it).
#[allow(clippy::manual_async_fn)]
fn handshake<S, F>(
    mut io: S,
    failed: Option<std::io::Error>,
    (remote, local): Addrs,
    config: Config,
    hook: F,
) -> impl Future<Output = Result<WebSocket<S>, Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection>,
{
    async move {
        if let Some(e) = failed {
            return Err(e.into());
        }
        let limit = config.handshake_timeout;
        let answered =
            with_timeout!(limit, crate::error::Timeout::Handshake, exchange(&mut io, &config, &remote, hook))?;
        Ok(finish(io, config, answered, (remote, local)))
    }
}

/// [`handshake`] after a TLS handshake on `io`; each gets the handshake timeout. Not an
/// `async fn`, for the reason `handshake` gives: this future holds the TLS stream
/// besides, and nothing twice.
#[cfg(feature = "tls")]
#[allow(clippy::manual_async_fn)]
fn tls_handshake<S, F>(
    io: S,
    acceptor: TlsAcceptor,
    failed: Option<std::io::Error>,
    (remote, local): Addrs,
    config: Config,
    hook: F,
) -> impl Future<Output = Result<WebSocket<ServerTlsStream<S>>, Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection>,
{
    async move {
        if let Some(e) = failed {
            return Err(e.into());
        }
        let limit = config.handshake_timeout;
        let mut tls = with_timeout!(limit, crate::error::Timeout::TlsHandshake, async {
            acceptor.accept(io).await.map_err(crate::tls::handshake_error)
        })?;
        let answered =
            with_timeout!(limit, crate::error::Timeout::Handshake, exchange(&mut tls, &config, &remote, hook))?;
        Ok(finish(tls, config, answered, (remote, local)))
    }
}

/// What the opening handshake settled: the request, the response sent, the bytes read
/// past the request, and the agreed permessage-deflate parameters.
type Answered = (Request, Response, BytesMut, Option<DeflateParams>);

/// Reads and checks the request, negotiates, runs the hook and answers: the 101, the
/// hook's [`Rejection`], or (best effort) the HTTP error of a bad request, closing the
/// transport after either refusal.
///
/// Not an `async fn`, for the reason [`handshake`] gives: this block is part of every
/// handshake's future (and `remote` comes by reference: 8 bytes in it, not 32).
#[allow(clippy::manual_async_fn)]
fn exchange<'a, S, F>(
    io: &'a mut S,
    config: &'a Config,
    remote: &'a Option<SocketAddr>,
    hook: F,
) -> impl Future<Output = Result<Answered, Error>> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection> + 'a,
{
    async move {
        let (request, leftover) = match read_request(io, config).await {
            Ok(r) => r,
            Err(Error::Handshake(e)) => {
                // Best effort: tell the client why, then close.
                let _ = io.write_all(&e.response()).await;
                let _ = io.shutdown().await;
                return Err(Error::Handshake(e));
            }
            Err(e) => return Err(e),
        };
        let request = HandshakeRequest::new(request, *remote);
        let (mut response, params) = negotiate(&request, config);
        if let Err(rejection) = hook(&request, &mut response) {
            let _ = io.write_all(&rejection.encode()).await;
            let _ = io.shutdown().await;
            return Err(Error::Rejected(rejection.status));
        }
        io.write_all(&response.encode()).await?;
        io.flush().await?;
        Ok((request.request, response, leftover, params))
    }
}

/// The WebSocket on `io` after a successful handshake, with what the handshake learnt
/// recorded in its [`info`](WebSocket::info).
fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: Config,
    (request, response, leftover, params): Answered,
    (remote, local): Addrs,
) -> WebSocket<S> {
    let protocol = response.protocol().map(str::to_string);
    let ws = WebSocket::from_handshaken(io, Role::Server, config, &leftover, protocol, params);
    ws.with_handshake_info(
        request.target(),
        request.headers().clone(),
        response.extensions().to_vec(),
        http::Version::HTTP_11,
    )
    .with_addrs(remote, local)
}

/// The answer to a checked request before the hook sees it: the first of the client's
/// subprotocols found in [`Config::protocols`], and permessage-deflate if the client
/// offered it and the configuration allows it (with the agreed parameters). Shared by
/// every server path, HTTP/1.1 and HTTP/2 alike.
pub(crate) fn negotiate(request: &Request, config: &Config) -> (Response, Option<DeflateParams>) {
    let mut response = Response::accept(request);
    if let Some(p) = request.pick_protocol(&config.protocols) {
        let p = p.to_string();
        // Cannot fail: `p` is one of the request's own subprotocols.
        let _ = response.set_protocol(request, &p);
    }
    let mut params = None;
    if let Some(dc) = &config.deflate {
        if let Some((agreed, answer)) = deflate::negotiate(request.extensions(), dc) {
            response.add_extension(answer);
            params = Some(agreed);
        }
    }
    (response, params)
}

async fn read_request<S: AsyncRead + Unpin>(io: &mut S, config: &Config) -> Result<(Request, BytesMut), Error> {
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if let Some((request, n)) = Request::parse(&buf, &config.proto)? {
            let _ = buf.split_to(n);
            return Ok((request, buf));
        }
        if buf.len() > config.proto.max_handshake_size {
            return Err(HandshakeError::TooLarge(config.proto.max_handshake_size).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS acceptor that is never run (no certificate): for the futures' sizes.
    #[cfg(feature = "tls")]
    fn idle_acceptor() -> TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(std::sync::Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
        TlsAcceptor::from(std::sync::Arc::new(config))
    }

    #[tokio::test]
    async fn handshake_future_holds_its_transport_once() {
        // While a handshake runs its future is the connection's memory: it holds the
        // transport and the configuration once (2,320 bytes when it held them twice).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (failed, addrs) = set_up(&tcp, None);
        let plain = handshake(tcp, failed, addrs, Config::new(), |_, _| Ok(()));
        let plain = std::mem::size_of_val(&plain);
        assert!(plain <= 1192, "the TCP handshake's future is {plain} bytes");
        #[cfg(feature = "tls")]
        tls_future_adds_only_its_stream(&listener, plain).await;
    }

    #[cfg(feature = "tls")]
    async fn tls_future_adds_only_its_stream(listener: &tokio::net::TcpListener, plain: usize) {
        // TLS adds its stream, not a second configuration or handshake.
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (failed, addrs) = set_up(&tcp, None);
        let tls = tls_handshake(tcp, idle_acceptor(), failed, addrs, Config::new(), |_, _| Ok(()));
        let tls = std::mem::size_of_val(&tls);
        let stream = std::mem::size_of::<ServerTlsStream<TcpStream>>();
        assert!(
            tls <= plain + stream + 64,
            "the TLS handshake's future is {tls} bytes ({plain} + a {stream}-byte stream)"
        );
    }
}
