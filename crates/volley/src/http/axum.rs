//! The axum extractor (feature `axum`): [`WebSocketUpgrade`], for HTTP/1.1 and HTTP/2.

use std::future::Future;
use std::net::SocketAddr;

use ::axum::body::Body as AxumBody;
use ::axum::extract::FromRequestParts;
use ::axum::response::{IntoResponse, Response as AxumResponse};
use ::http::request::Parts;
use ::http::Version;
use volley_proto::handshake::{Request, Response};

use super::{check, Checked, UpgradeError, UpgradedIo};
use crate::config::Config;
use crate::server::{HandshakeRequest, Rejection};
use crate::websocket::WebSocket;

/// The axum extractor of a WebSocket request: an HTTP/1.1 Upgrade, or an HTTP/2
/// extended CONNECT (RFC 8441) when the server speaks HTTP/2 with extended CONNECT on,
/// as `axum::serve` does with axum's `http2` feature.
///
/// HTTP/2 WebSocket requests use the CONNECT method, so route them with
/// `axum::routing::any` (or `get(handler).connect(handler)`); `get` alone takes only
/// HTTP/1.1 WebSockets.
///
/// A request that is not a valid WebSocket request is refused with the answer of
/// [`UpgradeError::into_http_response`] (426, 405, 400...). The remote address is taken
/// from `ConnectInfo<SocketAddr>` when the router is served with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
///
/// ```no_run
/// use axum::routing::any;
/// use volley::http::WebSocketUpgrade;
///
/// async fn chat(ws: WebSocketUpgrade) -> axum::response::Response {
///     ws.protocols(["chat.v1"]).on_upgrade(|mut ws| async move {
///         while let Some(Ok(msg)) = ws.recv().await {
///             if msg.is_data() && ws.send(msg).await.is_err() {
///                 break;
///             }
///         }
///     })
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let app = axum::Router::new().route("/chat", any(chat));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub struct WebSocketUpgrade {
    checked: Checked,
    config: Config,
    remote: Option<SocketAddr>,
}

impl std::fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("request", &self.checked.request)
            .field("http_version", &self.checked.version)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, UpgradeError> {
        let request = check(&parts.method, &parts.uri, parts.version, &parts.headers, &parts.extensions)?;
        let remote = super::remote_addr(&parts.extensions);
        let checked = Checked::new(request, parts.version, &mut parts.extensions)?;
        Ok(WebSocketUpgrade { checked, config: Config::default(), remote })
    }
}

impl WebSocketUpgrade {
    /// The configuration of the WebSocket (default: [`Config::default`]). Its
    /// subprotocols are the ones the server speaks.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The subprotocols this endpoint speaks: the first of the client's offers found
    /// here is selected (replaces the configuration's list).
    pub fn protocols<P: Into<String>>(mut self, protocols: impl IntoIterator<Item = P>) -> Self {
        self.config.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// The checked request: path, query, headers, Origin, cookies, offered
    /// subprotocols and extensions (for HTTP/2, `Host` is the `:authority`).
    pub fn request(&self) -> &Request {
        &self.checked.request
    }

    /// The HTTP version of the request (`HTTP_11`, or `HTTP_2` for an extended
    /// CONNECT).
    pub fn http_version(&self) -> Version {
        self.checked.version
    }

    /// The remote address from axum's `ConnectInfo<SocketAddr>` (if the router was
    /// served with it) or a [`RemoteAddr`](super::RemoteAddr) extension; the hook sees
    /// it as [`HandshakeRequest::remote_addr`].
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// Accepts: returns the response (101 or 200) and, once axum has sent it and hyper
    /// has handed the connection over, runs `callback` with the [`WebSocket`] in a task
    /// of its own. A failed hand-over (the client went away) is logged at debug level.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> AxumResponse
    where
        F: FnOnce(WebSocket<UpgradedIo>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_upgrade_with(|_, _| Ok(()), callback)
    }

    /// [`WebSocketUpgrade::on_upgrade`] with a hook, as with
    /// [`ServerBuilder::hook`](crate::ServerBuilder::hook): it may add header fields to
    /// the response, change the subprotocol, or refuse with a [`Rejection`] (which
    /// becomes the response).
    pub fn on_upgrade_with<H, F, Fut>(self, hook: H, callback: F) -> AxumResponse
    where
        H: FnOnce(&HandshakeRequest, &mut Response) -> Result<(), Rejection>,
        F: FnOnce(WebSocket<UpgradedIo>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.checked.respond(self.config, self.remote, hook) {
            Ok((response, websocket)) => {
                let websocket = websocket.with_addrs(self.remote, None);
                tokio::spawn(async move {
                    match websocket.await {
                        Ok(ws) => callback(ws).await,
                        Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
                    }
                });
                response.map(AxumBody::new)
            }
            Err(e) => IntoResponse::into_response(e),
        }
    }
}

impl IntoResponse for UpgradeError {
    fn into_response(self) -> AxumResponse {
        self.into_http_response().map(AxumBody::new)
    }
}
