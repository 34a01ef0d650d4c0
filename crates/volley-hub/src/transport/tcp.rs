//! The hub on plain TCP, with idle clients parked.
//!
//! [`serve`] accepts TCP connections and looks at each request's first line without
//! reading it: a `GET /connection/websocket` (or, with Pusher apps configured, a
//! `GET /app/{key}`) is answered by Volley's handshake on the socket itself, so the
//! connection stays a `WebSocket<TcpStream>` that can be parked (`volley::park`) when
//! its client is idle; every other request (the server API, the health and metrics
//! routes, the application's own) goes to the axum router through hyper, HTTP/1.1 or
//! HTTP/2.
//!
//! A client is parked once it has been idle for `client.park_after`: nothing received
//! but pongs, nothing sent but pings, no pong awaited, nothing queued. Parked, it costs
//! its session and the socket's protocol state, without a task. What is queued for it
//! (publications, joins) is written where it is parked, by its parking shard's writer.
//! It is taken back and served by a task again when its peer sends anything, when a
//! disconnect or a server-side subscribe is asked, when its socket does not take a
//! write whole, or when its expiry check or presence refresh is due. A client of the
//! hub's own protocol is pinged where it is parked, and its pong (`{}`) read there
//! (`volley::park::Keeper`): its keepalive costs two system calls and no task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use volley::park::{Due, Keeper, ParkError, ParkedId, Parking, Sent};
use volley::{PreparedMessage, Rejection, ServerBuilder, WebSocket};

use super::http::{http_builder, origin_allowed, serve_http};
use super::websocket::{self, Conn, Exit};
use crate::engine::client::{prepare, ClientShared, Item, Parked, Written};
use crate::engine::{Hub, HubInner};
use crate::protocol::{Format, Reply};
use crate::pusher::conn::PusherConn;

/// The path of the WebSocket endpoint, as it starts a request line.
const WS_REQUEST_LINE: &[u8] = b"GET /connection/websocket";

/// The start of Pusher's WebSocket endpoint (`/app/{key}`), as it starts a request
/// line.
const PUSHER_REQUEST_LINE: &[u8] = b"GET /app/";

/// How long a new connection may take to send the start of its request line.
const REQUEST_LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before trying again to park a connection that was not quiescent
/// (a write the socket had not taken yet).
const PARK_RETRY: Duration = Duration::from_millis(100);

/// Serves the hub's WebSocket endpoint (with parking, when `client.park_after` is not
/// zero) and `app` (typically [`router`](super::http::router), merged with the
/// application's own routes) on `listener`, until `shutdown` completes.
///
/// `app` still gets `/connection/websocket` requests that are not plain `GET`s of that
/// path on HTTP/1.1 (an HTTP/2 extended CONNECT, say) and serves them without parking.
pub async fn serve(hub: Hub, listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let parker = match hub.config().client.park_after {
        d if d.is_zero() => None,
        after => match Parker::start(&hub, after) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "parking unavailable: idle clients keep a task each");
                None
            }
        },
    };
    let builder = Arc::new(http_builder());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, typically: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let (hub, parker, app, builder) = (hub.clone(), parker.clone(), app.clone(), builder.clone());
        tokio::spawn(async move {
            let pusher = !hub.config().pusher.apps.is_empty();
            match websocket_request(&tcp, pusher).await {
                Ok(Endpoint::Hub) => accept_websocket(hub, tcp, peer, parker).await,
                Ok(Endpoint::Pusher) => accept_pusher(hub, tcp, peer, parker).await,
                Ok(Endpoint::Other) => {
                    let _ = tcp.set_nodelay(true);
                    serve_http(tcp, peer, app, &builder).await
                }
                Err(e) => tracing::debug!(%peer, error = %e, "no request"),
            }
        });
    }
}

/// Which endpoint a connection's first request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// A `GET` of `/connection/websocket`.
    Hub,
    /// A `GET` of Pusher's `/app/{key}` (when Pusher apps are configured).
    Pusher,
    /// Anything else: the router's.
    Other,
}

/// Which endpoint the connection's request is for, from its first bytes, left unread.
async fn websocket_request(tcp: &TcpStream, pusher: bool) -> std::io::Result<Endpoint> {
    let deadline = Instant::now() + REQUEST_LINE_TIMEOUT;
    let mut head = [0u8; WS_REQUEST_LINE.len() + 1];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut head))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line"))??;
        let got = &head[..n];
        if pusher && got.starts_with(PUSHER_REQUEST_LINE) {
            return Ok(Endpoint::Pusher);
        }
        if n == head.len() {
            let hub = head.starts_with(WS_REQUEST_LINE) && matches!(head[n - 1], b' ' | b'?');
            return Ok(if hub { Endpoint::Hub } else { Endpoint::Other });
        }
        if n == 0 || !(WS_REQUEST_LINE.starts_with(got) || pusher && PUSHER_REQUEST_LINE.starts_with(got)) {
            // Closed, or another request: hyper answers (or sees the end).
            return Ok(Endpoint::Other);
        }
        // The start of the line came alone: wait for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the WebSocket handshake of a Pusher client on the socket, then serves it,
/// parking it when idle. As on the router's path, no `Origin` check (Pusher apps are
/// open to any page that has their key), and the app is checked after the upgrade so
/// that a refused client learns why from the close code.
async fn accept_pusher(hub: Hub, tcp: TcpStream, peer: SocketAddr, parker: Option<Arc<Parker>>) {
    let mut ws = match ServerBuilder::new().config(hub.inner.websocket.pusher.clone()).accept_tcp(tcp).await {
        Ok(ws) => ws,
        Err(e) => return tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
    };
    let key = ws.info().path().strip_prefix("/app/").unwrap_or_default().to_owned();
    let admitted = crate::pusher::conn::admit(&hub, &key, ws.info().query());
    ws.drop_request_headers();
    let admitted = match admitted {
        Ok(a) => a,
        Err(d) => return crate::pusher::conn::refuse(&mut ws, d).await,
    };
    let conn = PusherConn::new(&hub, admitted);
    match parker {
        Some(parker) => serve_parkable(hub, parker, ws, Held::Pusher(conn)).await,
        None => {
            let _ = crate::pusher::conn::run(ws, conn, None).await;
        }
    }
}

/// Runs the WebSocket handshake on the socket (with the Origin check), then serves the
/// client, parking it when idle.
async fn accept_websocket(hub: Hub, tcp: TcpStream, peer: SocketAddr, parker: Option<Arc<Parker>>) {
    let config = hub.inner.websocket.hub.clone();
    let checker = hub.clone();
    let accepted = ServerBuilder::new()
        .config(config)
        .hook(move |req, _resp| match req.origin() {
            Some(origin) if !origin_allowed(origin, req.header("host"), &checker.config().client.allowed_origins) => {
                tracing::debug!(origin, "origin not allowed");
                Err(Rejection::new(403).body("origin not allowed\n"))
            }
            _ => Ok(()),
        })
        .accept_tcp(tcp)
        .await;
    let mut ws = match accepted {
        Ok(ws) => ws,
        Err(e) => return tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
    };
    let format = websocket::format_of(ws.protocol(), ws.info().query());
    let mut conn = Conn::new(&hub, format, Some(peer));
    // The session keeps the headers proxies forward, and nothing else: the request's
    // headers would cost memory as long as the client stays.
    conn.session.keep_headers(|name| ws.info().headers().get(name));
    ws.drop_request_headers();
    match parker {
        Some(parker) => serve_parkable(hub, parker, ws, Held::Hub(conn)).await,
        None => {
            let _ = websocket::run(&hub, ws, conn, None).await;
        }
    }
}

/// What a parked connection keeps: a hub client's state, or a Pusher client's.
// The hub's clients are the many: their state stays inline in the parking's slot
// (boxed, it would cost an allocation per parking); the Pusher one is boxed. The
// parking allocates slots 1,024 at a time: with `Held` at most 120 bytes a slot is
// at most 256 (with the socket's 136), and a block of them fits the allocator's
// 256 KiB class, where 8 bytes more take the 320 KiB one (64 bytes more per client).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Held {
    /// A client of the hub's own protocol.
    Hub(Conn),
    /// A Pusher client.
    Pusher(Box<PusherConn>),
}

impl Held {
    fn client(&self) -> Arc<ClientShared> {
        match self {
            Held::Hub(c) => c.session.client.clone(),
            Held::Pusher(p) => p.client().clone(),
        }
    }

    fn wake_at(&self, hub: &Hub) -> Option<Instant> {
        match self {
            Held::Hub(c) => c.wake_at(hub),
            Held::Pusher(p) => Some(p.wake_at()),
        }
    }

    fn park_in(&mut self, delay: Duration) {
        match self {
            Held::Hub(c) => c.park_in(delay),
            Held::Pusher(p) => p.park_in(delay),
        }
    }

    async fn close(&mut self) {
        match self {
            Held::Hub(c) => c.session.close().await,
            Held::Pusher(p) => p.close().await,
        }
    }
}

/// Serves a client until it ends or is parked.
async fn serve_parkable(hub: Hub, parker: Arc<Parker>, mut ws: WebSocket<TcpStream>, mut held: Held) {
    loop {
        let (back, c) = match held {
            Held::Hub(conn) => match websocket::run(&hub, ws, conn, Some(parker.after)).await {
                Exit::Done => return,
                Exit::Idle(back, c) => (back, Held::Hub(c)),
            },
            Held::Pusher(conn) => match crate::pusher::conn::run(ws, conn, Some(parker.after)).await {
                Exit::Done => return,
                Exit::Idle(back, c) => (back, Held::Pusher(c)),
            },
        };
        let client = c.client();
        // The queue stays locked until the connection is parked and its id recorded:
        // whatever is queued meanwhile finds the id and has it taken back.
        let Some(idle) = client.idle() else {
            (ws, held) = (back, c);
            continue;
        };
        let wake_at = c.wake_at(&hub);
        // Counted before: once parked, it may be woken (and uncounted) at once.
        hub.metrics().parked_connections.fetch_add(1, Relaxed);
        let shard = &parker.shards[(client.seq % parker.shards.len() as u64) as usize];
        // The parking hands it back at `wake_at` (its next ping or expiry check).
        match shard.parking.park_until(back, c, wake_at) {
            Ok(id) => {
                idle.parked(id, shard.clone());
                hub.metrics().parks_total.fetch_add(1, Relaxed);
                return;
            }
            Err(ParkError::Busy(back, mut c)) => {
                drop(idle);
                hub.metrics().parked_connections.fetch_sub(1, Relaxed);
                c.park_in(PARK_RETRY);
                (ws, held) = (back, c);
            }
            Err(ParkError::Io(e, mut c)) => {
                drop(idle);
                hub.metrics().parked_connections.fetch_sub(1, Relaxed);
                tracing::debug!(error = %e, "parking failed: connection lost");
                c.close().await;
                return;
            }
        }
    }
}

/// The parking of idle clients, in shards: one per core the process may run on, each
/// with its poller's thread and its writer, so that writes to parked clients spread
/// over the cores as their tasks would.
struct Parker {
    shards: Vec<Arc<Shard>>,
    after: Duration,
}

/// One parking, what writes to its clients in place, and what takes them back.
struct Shard {
    parking: Parking<Held>,
    /// Where a parked client's id is sent to have it taken back.
    unpark: mpsc::UnboundedSender<ParkedId>,
    /// Where a parked client with something queued is sent to have it written.
    writes: mpsc::UnboundedSender<Arc<ClientShared>>,
    /// The hub, for its metrics (weak: a parked client's queue holds the shard).
    hub: Weak<HubInner>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("parking", &self.parking).finish()
    }
}

impl Parked for Shard {
    fn schedule(&self, client: Arc<ClientShared>) {
        // The receiver is gone only when the server stopped.
        let _ = self.writes.send(client);
    }

    fn write(&self, id: ParkedId, items: &[Item], format: Format, since: Option<std::time::Instant>) -> Written {
        let Some(msgs) = items.iter().map(|item| item.message(format)).collect::<Option<Vec<_>>>() else {
            return Written::No;
        };
        match self.parking.send_all(id, &msgs) {
            Sent::Written => {
                if let (Some(hub), Some(since)) = (self.hub.upgrade(), since) {
                    hub.metrics.delivery.observe(since.elapsed());
                }
                Written::Whole
            }
            Sent::HandedBack => Written::HandedBack,
            Sent::NotParked => Written::No,
        }
    }

    fn unpark(&self, id: ParkedId) {
        let _ = self.unpark.send(id);
    }
}

/// Keeps the protocol's keepalive of parked hub clients where they are: the ping
/// written in place when due, the pong read in place (see [`Conn::due_parked`]).
/// Pusher clients are handed back for theirs.
struct Keep {
    hub: Weak<HubInner>,
    /// The server's ping (`{}`, or an empty Protobuf reply), one for each format.
    pings: [Arc<PreparedMessage>; 2],
}

impl Keep {
    fn new(hub: &Hub) -> Keep {
        let ping = |format| {
            let bytes = crate::engine::encode(&Reply::Ping, format);
            Arc::new(prepare(&bytes, format).expect("the encoders write UTF-8 JSON"))
        };
        Keep { hub: Arc::downgrade(&hub.inner), pings: [ping(Format::Json), ping(Format::Protobuf)] }
    }
}

impl Keeper<Held> for Keep {
    fn due(&self, held: &mut Held) -> Due {
        let (Held::Hub(conn), Some(hub)) = (held, self.hub.upgrade()) else {
            return Due::Wake;
        };
        let format = conn.session.client.format;
        match conn.due_parked(&hub) {
            None => Due::Wake,
            Some((false, next)) => Due::Keep(next),
            Some((true, next)) => {
                hub.metrics.messages_out_total.fetch_add(1, Relaxed);
                Due::Send(self.pings[usize::from(format == Format::Protobuf)].clone(), next)
            }
        }
    }

    fn received(&self, held: &mut Held, text: bool, payload: &[u8]) -> bool {
        match held {
            Held::Hub(conn) => conn.pong_parked(text, payload),
            Held::Pusher(_) => false,
        }
    }
}

impl Parker {
    /// The shards and their tasks: for each, one serves the connections whose peers
    /// sent something or whose deadline came, one those taken back at once (a close,
    /// a control request), one writes what is queued for its parked clients.
    fn start(hub: &Hub, after: Duration) -> std::io::Result<Arc<Parker>> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut shards = Vec::with_capacity(n);
        let mut queues = Vec::with_capacity(n);
        for _ in 0..n {
            let (unpark, unparked) = mpsc::unbounded_channel();
            let (writes, to_write) = mpsc::unbounded_channel();
            let parking = Parking::with_keeper(Keep::new(hub))?;
            shards.push(Arc::new(Shard { parking, unpark, writes, hub: Arc::downgrade(&hub.inner) }));
            queues.push((unparked, to_write));
        }
        let parker = Arc::new(Parker { shards, after });
        for (shard, (mut unparked, mut to_write)) in parker.shards.iter().zip(queues) {
            let (p, h, s) = (parker.clone(), hub.clone(), shard.clone());
            tokio::spawn(async move {
                loop {
                    match s.parking.woken().await {
                        Ok((ws, conn)) => {
                            h.metrics().parked_connections.fetch_sub(1, Relaxed);
                            tokio::spawn(serve_parkable(h.clone(), p.clone(), ws, conn));
                        }
                        Err(e) => return tracing::error!(error = %e, "the parking stopped"),
                    }
                }
            });
            let (p, h, s) = (parker.clone(), hub.clone(), shard.clone());
            tokio::spawn(async move {
                while let Some(id) = unparked.recv().await {
                    if let Some((ws, conn)) = s.parking.take(id) {
                        h.metrics().parked_connections.fetch_sub(1, Relaxed);
                        tokio::spawn(serve_parkable(h.clone(), p.clone(), ws, conn));
                    }
                }
            });
            tokio::spawn(async move {
                while let Some(client) = to_write.recv().await {
                    client.write_parked();
                }
            });
        }
        tracing::info!(after = ?after, shards = n, "parking idle clients");
        Ok(parker)
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn a_parked_hub_client_fits_its_slot_in_256_bytes() {
        assert!(std::mem::size_of::<super::Held>() <= 120, "{}", std::mem::size_of::<super::Held>());
    }
}
