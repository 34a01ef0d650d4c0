//! The server side: read and check the opening handshake on any transport, let the
//! application accept or reject it, and answer.

use std::future::Future;
use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use volley_proto::handshake::{server::reject_response, Request, Response};
use volley_proto::{deflate, DeflateParams, HandshakeError, Role};

use crate::config::Config;
use crate::error::Error;
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

/// Accepts a WebSocket connection on `io` with the default configuration.
///
/// Like every `accept` function here, it returns a boxed future: the handshake's state
/// (buffers, the request, the timer) lives on the heap while it runs and is freed
/// after, so the task that awaits it stays as small as the [`WebSocket`] it keeps.
pub fn accept<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> impl Future<Output = Result<WebSocket<S>, Error>> {
    accept_with(io, Config::default(), |_, _| Ok(()))
}

/// Accepts a WebSocket connection on `io`. The hook sees the checked request (path,
/// query, headers, Origin, cookies, offered subprotocols and extensions) and may
/// accept it, adding header fields or choosing a subprotocol on the response, or
/// refuse it with a [`Rejection`]. Before the hook runs, the response already carries
/// the first of the client's subprotocols found in [`Config::protocols`].
///
/// [`Request::remote_addr`] is unknown here (`io` may be anything): use
/// [`accept_tcp_with`] on a TCP connection, or [`accept_from`].
pub fn accept_with<S, F>(io: S, config: Config, hook: F) -> impl Future<Output = Result<WebSocket<S>, Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request, &mut Response) -> Result<(), Rejection>,
{
    Box::pin(handshake(io, None, (None, None), config, hook))
}

/// [`accept_with`] for a transport whose peer address the caller knows (a TLS stream
/// over TCP, a proxied connection): the hook sees it as [`Request::remote_addr`] and the
/// WebSocket's [`info`](WebSocket::info) records it.
pub fn accept_from<S, F>(
    io: S,
    remote: Option<SocketAddr>,
    config: Config,
    hook: F,
) -> impl Future<Output = Result<WebSocket<S>, Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request, &mut Response) -> Result<(), Rejection>,
{
    Box::pin(handshake(io, None, (remote, None), config, hook))
}

/// [`accept_with`] on a TCP connection: also turns on `TCP_NODELAY` (frames are
/// batched already) and records both addresses in the connection's
/// [`info`](WebSocket::info).
pub fn accept_tcp_with<F>(
    tcp: tokio::net::TcpStream,
    config: Config,
    hook: F,
) -> impl Future<Output = Result<WebSocket<tokio::net::TcpStream>, Error>>
where
    F: FnOnce(&Request, &mut Response) -> Result<(), Rejection>,
{
    // Set up before the handshake's future is made, so that no wrapper future holds
    // the connection and the configuration a second time; a failure is the
    // handshake's result.
    let nodelay = tcp.set_nodelay(true);
    let addrs = (tcp.peer_addr().ok(), tcp.local_addr().ok());
    Box::pin(handshake(tcp, nodelay.err(), addrs, config, hook))
}

/// The server's opening handshake: read and check the request, negotiate, run the
/// hook, answer, and build the WebSocket; or `failed`, if setting up the transport
/// did.
///
/// Not an `async fn`: one keeps its arguments twice (as arguments, and as the locals
/// they move into), the transport and the whole configuration included; this block
/// keeps them once.
#[allow(clippy::manual_async_fn)]
fn handshake<S, F>(
    mut io: S,
    failed: Option<std::io::Error>,
    (remote, local): (Option<SocketAddr>, Option<SocketAddr>),
    config: Config,
    hook: F,
) -> impl Future<Output = Result<WebSocket<S>, Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request, &mut Response) -> Result<(), Rejection>,
{
    async move {
        if let Some(e) = failed {
            return Err(e.into());
        }
        let limit = config.handshake_timeout;
        let (request, response, leftover, params) = with_timeout!(limit, crate::error::Timeout::Handshake, async {
            let (mut request, leftover) = match read_request(&mut io, &config).await {
                Ok(r) => r,
                Err(Error::Handshake(e)) => {
                    // Best effort: tell the client why, then close.
                    let _ = io.write_all(&e.response()).await;
                    let _ = io.shutdown().await;
                    return Err(Error::Handshake(e));
                }
                Err(e) => return Err(e),
            };
            request.set_remote_addr(remote);
            let (mut response, params) = negotiate(&request, &config);
            if let Err(rejection) = hook(&request, &mut response) {
                let _ = io.write_all(&rejection.encode()).await;
                let _ = io.shutdown().await;
                return Err(Error::Rejected(rejection.status));
            }
            io.write_all(&response.encode()).await?;
            io.flush().await?;
            Ok((request, response, leftover, params))
        })?;
        let protocol = response.protocol().map(str::to_string);
        let ws = WebSocket::from_handshaken(io, Role::Server, config, &leftover, protocol, params);
        Ok(ws
            .with_handshake_info(
                request.target(),
                request.headers().clone(),
                response.extensions().to_vec(),
                http::Version::HTTP_11,
            )
            .with_addrs(remote, local))
    }
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
