//! Serving one connection with hyper-util's automatic HTTP/1.1 + HTTP/2 builder,
//! WebSocket upgrades (HTTP/1.1) and extended CONNECT (HTTP/2) on.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use ::http::Method;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use volley_proto::handshake::Response;

use super::{hyper_error, is_websocket_request, upgrade, Body, RemoteAddr, UpgradedIo, ALPN_H2};
use crate::config::Config;
use crate::error::Error;
use crate::server::{HandshakeRequest, Rejection};
use crate::tls::ALPN_HTTP11;
use crate::websocket::WebSocket;

type Hook = dyn Fn(&HandshakeRequest, &mut Response) -> Result<(), Rejection> + Send + Sync;
type ResponseFuture = Pin<Box<dyn Future<Output = ::http::Response<Body>> + Send>>;
type Fallback = dyn Fn(::http::Request<Incoming>) -> ResponseFuture + Send + Sync;

/// Serves HTTP connections whose WebSocket requests (HTTP/1.1 Upgrade and HTTP/2
/// extended CONNECT) become [`WebSocket`]s: hyper-util's automatic builder, which tells
/// HTTP/1.1 from HTTP/2 by the first bytes (so it serves TLS with ALPN `h2` or
/// `http/1.1`, and plain TCP with HTTP/1.1 or HTTP/2 prior knowledge alike), with
/// upgrades on for HTTP/1.1 and `SETTINGS_ENABLE_CONNECT_PROTOCOL` announced for HTTP/2.
///
/// Each WebSocket goes to the handler in a task of its own; other requests go to the
/// [fallback](Server::fallback), by default answered as [`upgrade`] answers a request that
/// is not a WebSocket request (426 for HTTP/1.1, 405 for HTTP/2). The HTTP/1.1 header
/// read timeout is the configuration's handshake timeout.
///
/// Cloning is cheap: one `Server` per listener, cloned into each connection's task.
///
/// ```no_run
/// # async fn run() -> Result<(), volley::Error> {
/// let server = volley::http::Server::new(volley::Config::new());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     let server = server.clone();
///     tokio::spawn(async move {
///         let _ = server
///             .serve_tcp(tcp, |mut ws| async move {
///                 while let Some(Ok(msg)) = ws.recv().await {
///                     if msg.is_data() && ws.send(msg).await.is_err() {
///                         break;
///                     }
///                 }
///             })
///             .await;
///     });
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Server {
    config: Config,
    hook: Option<Arc<Hook>>,
    fallback: Option<Arc<Fallback>>,
    builder: auto::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("hook", &self.hook.is_some())
            .field("fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server whose WebSockets get `config`.
    pub fn new(config: Config) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(config.handshake_timeout);
        builder.http2().timer(TokioTimer::new()).enable_connect_protocol();
        Server { config, hook: None, fallback: None, builder }
    }

    /// The hook every WebSocket request goes through, as with
    /// [`ServerBuilder::hook`](crate::ServerBuilder::hook): it sees the checked request
    /// and may edit the response or refuse with a [`Rejection`] (sent as the HTTP
    /// response).
    pub fn hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&HandshakeRequest, &mut Response) -> Result<(), Rejection> + Send + Sync + 'static,
    {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Answers the requests that are not WebSocket requests (see
    /// [`is_websocket_request`]): a page, a health check, a 404.
    pub fn fallback<F, Fut>(mut self, fallback: F) -> Self
    where
        F: Fn(::http::Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ::http::Response<Body>> + Send + 'static,
    {
        self.fallback = Some(Arc::new(move |req| Box::pin(fallback(req)) as ResponseFuture));
        self
    }

    /// hyper-util's builder, to tune HTTP/1.1 and HTTP/2 (keep-alive, window sizes,
    /// header limits). Keep `http2().enable_connect_protocol()` for WebSockets over
    /// HTTP/2.
    pub fn builder_mut(&mut self) -> &mut auto::Builder<TokioExecutor> {
        &mut self.builder
    }

    /// Serves one connection (TCP, TLS, anything) until it ends, calling `handler` with
    /// each WebSocket, in a task of its own (over HTTP/2 there can be many per
    /// connection). WebSockets outlive the connection's future only over HTTP/1.1,
    /// where hyper hands the connection over; over HTTP/2 the connection is served
    /// until its last stream ends. The handler can record the addresses with
    /// [`WebSocket::with_addrs`] ([`Server::serve_tcp`] does).
    pub async fn serve_connection<I, H, Fut>(&self, io: I, handler: H) -> Result<(), Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(WebSocket<UpgradedIo>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.serve_connection_from(io, None, handler).await
    }

    /// [`Server::serve_connection`] for a connection whose peer address the caller knows
    /// (a TLS stream over TCP, say): every request carries it as a [`RemoteAddr`]
    /// extension (the fallback sees it too), the hook as
    /// [`HandshakeRequest::remote_addr`], and each WebSocket's [`info`](WebSocket::info)
    /// records it.
    pub async fn serve_connection_from<I, H, Fut>(
        &self,
        io: I,
        remote: Option<SocketAddr>,
        handler: H,
    ) -> Result<(), Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(WebSocket<UpgradedIo>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let (config, hook, fallback) = (self.config.clone(), self.hook.clone(), self.fallback.clone());
        let service = service_fn(move |mut req: ::http::Request<Incoming>| {
            if let Some(addr) = remote {
                req.extensions_mut().insert(RemoteAddr(addr));
            }
            let future: ResponseFuture = match &fallback {
                Some(fallback) if !is_websocket_request(&req) => fallback(req),
                _ => {
                    let hook = hook.clone();
                    let response = match upgrade(&mut req, config.clone(), |r, resp| match &hook {
                        Some(hook) => hook(r, resp),
                        None => Ok(()),
                    }) {
                        Ok((response, websocket)) => {
                            let handler = handler.clone();
                            let version = websocket.http_version();
                            tokio::spawn(async move {
                                match websocket.await {
                                    Ok(ws) => handler(ws).await,
                                    Err(e) => tracing::debug!(?version, error = %e, "WebSocket upgrade failed"),
                                }
                            });
                            response
                        }
                        Err(e) => {
                            let method: &Method = req.method();
                            tracing::debug!(%method, uri = %req.uri(), error = %e, "not upgraded");
                            e.into_http_response()
                        }
                    };
                    Box::pin(std::future::ready(response))
                }
            };
            async move { Ok::<_, Infallible>(future.await) }
        });
        self.builder.serve_connection_with_upgrades(TokioIo::new(io), service).await.map_err(|e| {
            match e.downcast::<hyper::Error>() {
                Ok(e) => hyper_error(*e),
                Err(e) => Error::Io(std::io::Error::other(e)),
            }
        })
    }

    /// [`Server::serve_connection`] on a TCP connection: also turns on `TCP_NODELAY`
    /// and records both addresses in each WebSocket's [`info`](WebSocket::info).
    pub async fn serve_tcp<H, Fut>(&self, tcp: tokio::net::TcpStream, handler: H) -> Result<(), Error>
    where
        H: Fn(WebSocket<UpgradedIo>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tcp.set_nodelay(true)?;
        let (remote, local) = (tcp.peer_addr().ok(), tcp.local_addr().ok());
        self.serve_connection_from(tcp, remote, move |ws| handler(ws.with_addrs(remote, local))).await
    }
}

/// Serves one connection with [`Server`]: HTTP/1.1 and HTTP/2, every WebSocket request
/// through `hook` (as with [`ServerBuilder::hook`](crate::ServerBuilder::hook)) and
/// each WebSocket to `handler`; other requests get the answer for a request that is
/// not a WebSocket request. For a fallback, or to tune hyper, use [`Server`].
pub async fn serve_connection<I, F, H, Fut>(io: I, config: Config, hook: F, handler: H) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(&HandshakeRequest, &mut Response) -> Result<(), Rejection> + Send + Sync + 'static,
    H: Fn(WebSocket<UpgradedIo>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Server::new(config).hook(hook).serve_connection(io, handler).await
}

/// `config` with ALPN `h2` then `http/1.1`, for a TLS server that speaks both (as
/// [`Server`] does). The configurations of [`crate::tls`] offer `http/1.1` only.
pub fn with_h2_alpn(mut config: Arc<ServerConfig>) -> Arc<ServerConfig> {
    Arc::make_mut(&mut config).alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config
}
