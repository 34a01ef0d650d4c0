//! The hub's HTTP routes: the WebSocket endpoint, health and readiness, metrics.
//! [`router`] gives an axum `Router` to serve as it is or to merge into an
//! application's own.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use volley::http::WebSocketUpgrade;

use super::emulation;
use super::websocket;
use crate::engine::{lock, Hub};

/// `/ready`: 200 while the broker is reachable, 503 (with why) when it is not, so that a
/// load balancer sends new clients elsewhere; clients connected here stay connected.
async fn ready(State(hub): State<Hub>) -> Response {
    if hub.ready() {
        ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"error\":\"the broker is unreachable\"}",
        )
            .into_response()
    }
}

/// The hub's routes: `/connection/websocket`, the server API (`/api/...`), `/health`,
/// `/ready`, `/metrics`.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/connection/websocket", any(ws_handler))
        .merge(emulation_routes(&hub))
        .route("/health", get(|| async { ([(header::CONTENT_TYPE, "application/json")], "{}") }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        // The unidirectional transports (each answers 404 unless enabled).
        .route("/connection/uni_sse", get(super::uni::sse).post(super::uni::sse))
        .route("/connection/uni_http_stream", get(super::uni::http_stream).post(super::uni::http_stream))
        .route("/connection/uni_long_poll", get(super::uni::long_poll))
        .route("/connection/uni_websocket", any(super::uni::websocket))
        // Pusher clients (each answers 404 without Pusher apps).
        .route("/app/{key}", any(pusher_ws_handler))
        .route("/pusher/app/{key}/{server}/{session}/{kind}", any(crate::pusher::xhr::route))
        .with_state(hub.clone())
        .merge(crate::pusher::api::router(hub.clone()))
        .merge(crate::api::router(hub))
}

/// The bidirectional emulation routes, as the configuration enables them:
/// `/connection/http_stream`, `/connection/sse`, `/connection/long_poll`, and
/// `/emulation` when any of them is on.
fn emulation_routes(hub: &Hub) -> Router<Hub> {
    use axum::routing::{options, post};
    let c = hub.config();
    let mut r = Router::new();
    if c.http_stream.enabled {
        r = r.route("/connection/http_stream", post(emulation::http_stream).options(emulation::preflight));
    }
    if c.sse.enabled {
        r = r.route("/connection/sse", get(emulation::sse).post(emulation::sse).options(emulation::preflight));
    }
    if c.long_poll.enabled {
        r = r.route(
            "/connection/long_poll",
            get(super::long_poll::poll).post(super::long_poll::connect).options(emulation::preflight),
        );
    }
    if c.http_stream.enabled || c.sse.enabled || c.long_poll.enabled {
        r = r.route("/emulation", post(emulation::emulation).merge(options(emulation::preflight)));
    }
    r
}

async fn ws_handler(State(hub): State<Hub>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host =
            headers.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| ws.request().headers().get("host"));
        if !origin_allowed(origin, host, &hub.config().client.allowed_origins) {
            tracing::debug!(origin, "origin not allowed");
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        }
    }
    let remote: Option<SocketAddr> = ws.remote_addr();
    let query = ws.request().query().map(str::to_owned);
    ws.config(hub.inner.websocket.hub.clone()).on_upgrade(move |ws| async move {
        let format = websocket::format_of(ws.protocol(), query.as_deref());
        websocket::serve(hub, ws, format, remote).await
    })
}

/// `/app/{key}`: a Pusher client (protocol 7). The app is found and checked after the
/// upgrade, so that the client learns why it is refused from a close code (4001, 4003,
/// 4007, 4100) as Pusher clients expect. No `Origin` check: Pusher apps are open to
/// any page that has their key.
async fn pusher_ws_handler(
    State(hub): State<Hub>,
    axum::extract::Path(key): axum::extract::Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    if hub.config().pusher.apps.is_empty() {
        return (StatusCode::NOT_FOUND, "no Pusher apps\n").into_response();
    }
    let query = ws.request().query().map(str::to_owned);
    ws.config(hub.inner.websocket.pusher.clone())
        .on_upgrade(move |ws| async move { crate::pusher::conn::serve(hub, ws, key, query).await })
}

/// Whether a browser's `Origin` may connect: listed (`*`, an exact origin, or a pattern
/// with one `*`), or, with an empty list, the same host as the request.
pub fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        return host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host));
    }
    allowed.iter().any(|a| match a.split_once('*') {
        None => a.eq_ignore_ascii_case(origin),
        Some((pre, post)) => {
            origin.len() >= pre.len() + post.len()
                && origin[..pre.len()].eq_ignore_ascii_case(pre)
                && origin[origin.len() - post.len()..].eq_ignore_ascii_case(post)
        }
    })
}

async fn metrics(State(hub): State<Hub>) -> Response {
    let m = hub.metrics();
    let mut s = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(s, "# HELP volley_hub_{name} {help}\n# TYPE volley_hub_{name} gauge\nvolley_hub_{name} {v}");
    };
    gauge("clients", "Connected clients.", hub.num_clients() as u64);
    gauge("users", "Distinct connected users.", hub.num_users() as u64);
    gauge("subscriptions", "Subscriptions of connected clients.", hub.num_subscriptions() as u64);
    gauge("channels", "Channels with subscribers on this node.", hub.channels().len() as u64);
    gauge(
        "parked_connections",
        "WebSocket connections parked now (idle, held without a task).",
        m.parked_connections.load(Ordering::Relaxed),
    );
    gauge("broker_up", "1 while the broker is reachable (always, in memory), 0 otherwise.", u64::from(hub.ready()));
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(s, "# HELP volley_hub_{name} {help}\n# TYPE volley_hub_{name} counter\nvolley_hub_{name} {v}");
    };
    counter("connections_total", "Connections accepted.", m.connections_total.load(Ordering::Relaxed));
    counter("parks_total", "Times an idle connection was parked.", m.parks_total.load(Ordering::Relaxed));
    counter("commands_total", "Commands received.", m.commands_total.load(Ordering::Relaxed));
    counter(
        "messages_out_total",
        "Replies and pushes queued to clients.",
        m.messages_out_total.load(Ordering::Relaxed),
    );
    counter("publications_total", "Publications delivered to this node.", m.publications_total.load(Ordering::Relaxed));
    let _ =
        writeln!(s, "# HELP volley_hub_errors_total Error replies, by code.\n# TYPE volley_hub_errors_total counter");
    let mut errors: Vec<_> = lock(&m.errors).iter().map(|(k, v)| (*k, *v)).collect();
    errors.sort();
    for (code, n) in errors {
        let _ = writeln!(s, "volley_hub_errors_total{{code=\"{code}\"}} {n}");
    }
    let _ = writeln!(s, "# HELP volley_hub_commands_by_method_total Commands received, by method.\n# TYPE volley_hub_commands_by_method_total counter");
    let mut commands: Vec<_> = lock(&m.commands).iter().map(|(k, v)| (*k, *v)).collect();
    commands.sort();
    for (method, n) in commands {
        let _ = writeln!(s, "volley_hub_commands_by_method_total{{method=\"{method}\"}} {n}");
    }
    let h = &m.delivery;
    let _ = writeln!(
        s,
        "# HELP volley_hub_delivery_seconds From a reply or push being queued for a client to its frame being written.\n# TYPE volley_hub_delivery_seconds histogram"
    );
    let mut cumulative = 0;
    for (bound, count) in h.bounds.iter().zip(h.counts.iter()) {
        cumulative += count.load(Ordering::Relaxed);
        let _ = writeln!(s, "volley_hub_delivery_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += h.over.load(Ordering::Relaxed);
    let _ = writeln!(s, "volley_hub_delivery_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(s, "volley_hub_delivery_seconds_sum {}", h.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
    let _ = writeln!(s, "volley_hub_delivery_seconds_count {cumulative}");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response()
}

/// Serves one HTTP connection (plain or TLS) with the axum router; each request
/// carries the peer's address as axum's `ConnectInfo`.
pub async fn serve_http<I>(io: I, peer: SocketAddr, app: Router, builder: &HttpBuilder)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    if let Err(e) = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service).await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// What serves HTTP connections: HTTP/1.1 or HTTP/2 as the client speaks, with
/// upgrades and HTTP/2's extended CONNECT (RFC 8441).
pub type HttpBuilder = hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>;

/// An [`HttpBuilder`] for the hub's routes (extended CONNECT on, for WebSockets over
/// HTTP/2).
pub fn http_builder() -> HttpBuilder {
    let mut builder = HttpBuilder::new(hyper_util::rt::TokioExecutor::new());
    builder.http2().enable_connect_protocol();
    builder
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(origin_allowed("http://localhost:8000", Some("localhost:8000"), &[]));
        assert!(!origin_allowed("http://evil.example", Some("localhost:8000"), &[]));
        assert!(origin_allowed("https://a.example.com", None, &list(&["https://*.example.com"])));
        assert!(!origin_allowed("https://example.org", None, &list(&["https://*.example.com"])));
        assert!(origin_allowed("anything", None, &list(&["*"])));
    }
}
