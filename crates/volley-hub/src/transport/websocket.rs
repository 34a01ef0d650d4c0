//! The WebSocket transport (`/connection/websocket`): frames in, commands to the
//! session; the client's queue out, everything queued at once in one frame (JSON
//! replies joined by newlines, Protobuf ones one after another).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use volley::{CloseCode, Message, WebSocket};

use crate::engine::client::ClientShared;
use crate::engine::session::Session;
use crate::engine::Hub;
use crate::protocol::{self, Disconnect, Format};

/// The subprotocol of the Protobuf format.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The wire format a handshake asked for: Protobuf with the `centrifuge-protobuf`
/// subprotocol (or `format=protobuf` in the query), JSON otherwise.
pub fn format_of(protocol: Option<&str>, query: Option<&str>) -> Format {
    let in_query =
        query.is_some_and(|q| q.split('&').any(|kv| kv == "format=protobuf" || kv == "cf_protocol=protobuf"));
    if protocol == Some(PROTOBUF_SUBPROTOCOL) || in_query {
        Format::Protobuf
    } else {
        Format::Json
    }
}

/// Serves one client on an accepted WebSocket until it ends.
pub async fn serve<S>(hub: Hub, ws: WebSocket<S>, format: Format, remote: Option<SocketAddr>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let conn = Conn::new(&hub, format, remote);
    // Any transport: never parked.
    let _ = run(&hub, ws, conn, None).await;
}

/// A connection's state that outlives its task while it is parked: the session, the
/// open-connection count, and its timers.
pub(crate) struct Conn {
    pub(crate) session: Session,
    _open: OpenGuard,
    /// When the next ping is due.
    next_ping: tokio::time::Instant,
    /// When the client may be parked if it stays idle until then (nothing received
    /// but pongs, nothing sent but pings).
    park_at: tokio::time::Instant,
}

impl Conn {
    /// A new connection's state, before `connect`.
    pub(crate) fn new(hub: &Hub, format: Format, remote: Option<SocketAddr>) -> Self {
        let now = tokio::time::Instant::now();
        Conn {
            session: Session::new(hub.inner.clone(), format, remote.map(|a| a.ip())),
            _open: OpenGuard::new(hub),
            next_ping: now + ping_every(hub),
            park_at: now,
        }
    }

    /// When the connection must have a task again whatever its peer does: its next
    /// ping, or its next expiry check. `None` when neither is set.
    pub(crate) fn wake_at(&self, hub: &Hub) -> Option<tokio::time::Instant> {
        let ping = (!hub.config().client.ping_interval.is_zero()).then_some(self.next_ping);
        let expiry = self.session.deadline().map(expiry_instant);
        match (ping, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Tries to park the connection again in `delay` if it stays idle.
    pub(crate) fn park_in(&mut self, delay: Duration) {
        self.park_at = tokio::time::Instant::now() + delay;
    }
}

fn ping_every(hub: &Hub) -> Duration {
    let i = hub.config().client.ping_interval;
    if i.is_zero() {
        Duration::from_secs(86400 * 365)
    } else {
        i
    }
}

fn expiry_instant(unix_secs: u64) -> tokio::time::Instant {
    let now = crate::engine::now_ms() as u64 / 1000;
    tokio::time::Instant::now() + Duration::from_secs(unix_secs.saturating_sub(now))
}

/// How a connection's loop ended.
// Handed back by value once per parking: boxing it would allocate on that path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Exit<S> {
    /// The connection is over (closed, failed, disconnected).
    Done,
    /// The client has been idle for the `park_after` given: the connection may be
    /// parked (the caller checks the queue is still empty, under its lock).
    Idle(WebSocket<S>, Conn),
}

/// Serves a client until it ends, or, with `park_after`, until it has been idle that
/// long with nothing owed (connected, no pong awaited, nothing queued).
pub(crate) async fn run<S>(hub: &Hub, mut ws: WebSocket<S>, mut conn: Conn, park_after: Option<Duration>) -> Exit<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = &hub.config().client;
    let client = conn.session.client.clone();
    client.unparked();
    let stale = tokio::time::sleep(config.stale_close_delay);
    tokio::pin!(stale);
    let every = ping_every(hub);
    let after = park_after.unwrap_or_default();
    // Timers kept across iterations and reset when their deadline moves.
    let ping_timer = tokio::time::sleep_until(conn.next_ping);
    tokio::pin!(ping_timer);
    let idle_timer = tokio::time::sleep_until(conn.park_at);
    tokio::pin!(idle_timer);
    let mut batch = Vec::new();
    let end: Option<Disconnect> = loop {
        let session = &mut conn.session;
        let pong_deadline = session.ping_sent.map(|t| tokio::time::Instant::from_std(t + config.pong_timeout));
        let expiry = session.deadline().map(expiry_instant);
        // Not with an expiry due: parked, it would be taken back at once, again and again.
        let parkable = park_after.is_some()
            && session.is_connected()
            && session.ping_sent.is_none()
            && expiry.is_none_or(|at| at > tokio::time::Instant::now());
        let mut active = true;
        tokio::select! {
            biased;
            _ = client.ready() => {
                if let Err(d) = Box::pin(session.apply_control()).await {
                    break Some(d);
                }
            }
            msg = ws.recv() => {
                let outcome = match msg {
                    None => break None,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, client = %client.id, "connection failed");
                        break None;
                    }
                    Some(Ok(Message::Text(t))) if client.format == Format::Json => commands(session, protocol::json::decode_commands(&t.into_bytes()).map_err(|e| e.to_string()), &mut active).await,
                    Some(Ok(Message::Binary(b))) if client.format == Format::Protobuf => commands(session, protocol::protobuf::decode_commands(&b).map_err(|e| e.to_string()), &mut active).await,
                    Some(Ok(Message::Text(_) | Message::Binary(_))) => Err(Disconnect::BAD_REQUEST),
                    Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(_)) => Ok(()),
                };
                if let Err(d) = outcome {
                    break Some(d);
                }
            }
            _ = &mut stale, if !session.is_connected() => break Some(Disconnect::STALE),
            _ = &mut ping_timer, if session.is_connected() && !config.ping_interval.is_zero() => {
                conn.next_ping += every;
                if conn.next_ping <= tokio::time::Instant::now() {
                    // Woken late (parked, or a busy runtime): no burst of pings.
                    conn.next_ping = tokio::time::Instant::now() + every;
                }
                ping_timer.as_mut().reset(conn.next_ping);
                active = false;
                session.ping();
                Box::pin(session.refresh_presence()).await;
            }
            _ = sleep_until(pong_deadline), if pong_deadline.is_some() => break Some(Disconnect::NO_PONG),
            _ = sleep_until(expiry), if expiry.is_some() => {
                if let Err(d) = session.check_expiry().await {
                    break Some(d);
                }
            }
            _ = &mut idle_timer, if parkable => {
                return Exit::Idle(ws, conn);
            }
        }
        match flush(hub, &mut ws, &client, &mut batch).await {
            Ok(None) => {}
            Ok(Some(d)) => break Some(d),
            Err(_) => break None,
        }
        if active && park_after.is_some() {
            conn.park_at = tokio::time::Instant::now() + after;
            idle_timer.as_mut().reset(conn.park_at);
        }
    };
    // Out of the channels and the limits first: a client that does not read may never
    // take the close frame.
    Box::pin(conn.session.close()).await;
    if let Some(d) = end {
        tracing::debug!(client = %client.id, code = d.code, reason = %d.reason, "disconnecting");
        let closing = async {
            if d != Disconnect::SLOW {
                flush(hub, &mut ws, &client, &mut batch).await?;
            }
            ws.close(CloseCode::from(d.code), &d.reason).await
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
    Exit::Done
}

/// Counts an open transport connection while it lives.
pub(crate) struct OpenGuard(Hub);

impl OpenGuard {
    fn new(hub: &Hub) -> Self {
        hub.metrics().open_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenGuard(hub.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics().open_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long the closing handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handles the commands of one frame; `active` is left true unless they were all
/// pongs.
async fn commands(
    session: &mut Session,
    decoded: Result<Vec<protocol::Command>, String>,
    active: &mut bool,
) -> Result<(), Disconnect> {
    let cmds = decoded.map_err(|e| {
        tracing::debug!(error = %e, "malformed command");
        Disconnect::BAD_REQUEST
    })?;
    *active = cmds.iter().any(|c| c.id != 0 || !matches!(c.request, protocol::Request::None));
    for cmd in cmds {
        // Boxed: the commands' futures (connect, subscribe, with the broker's calls)
        // would otherwise all live in every connection's task, idle or not.
        Box::pin(session.handle(cmd)).await?;
    }
    Ok(())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes what is queued, as one frame per batch, until the queue is empty. Returns the
/// disconnect asked, if any. A write that waits on a client that does not read is
/// abandoned as soon as the client is marked to be disconnected (3008 when its queue
/// overflowed): nothing waits on a slow reader.
async fn flush<S>(
    hub: &Hub,
    ws: &mut WebSocket<S>,
    client: &ClientShared,
    batch: &mut Vec<Bytes>,
) -> Result<Option<Disconnect>, volley::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        let (closing, since) = client.take_since(batch);
        if batch.is_empty() || closing.is_some() {
            batch.clear();
            return Ok(closing);
        }
        let frame = if batch.len() == 1 {
            batch.pop().expect("one")
        } else {
            let sep = usize::from(client.format == Format::Json);
            let mut buf = BytesMut::with_capacity(batch.iter().map(|b| b.len() + sep).sum());
            for (i, b) in batch.drain(..).enumerate() {
                if i > 0 && sep == 1 {
                    buf.put_u8(b'\n');
                }
                buf.put_slice(&b);
            }
            buf.freeze()
        };
        let msg = match client.format {
            Format::Json => Message::Text(frame.try_into().expect("the JSON encoder writes UTF-8")),
            Format::Protobuf => Message::Binary(frame),
        };
        let send = ws.send(msg);
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => {
                    r?;
                    if let Some(since) = since {
                        hub.metrics().delivery.observe(since.elapsed());
                    }
                    break;
                }
                _ = client.ready() => {
                    if let Some(d) = client.closing() {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A connection's task holds its loop's future: the commands' futures are boxed so
    /// that it stays small (it was 8.7 KB unboxed, 2.5 KB boxed, in a debug build).
    #[tokio::test]
    async fn the_connection_loop_future_stays_small() {
        let hub = crate::Hub::new(Default::default()).unwrap();
        let (io, _peer) = tokio::io::duplex(64);
        let ws =
            volley::WebSocket::from_handshaken(io, volley::Role::Server, volley::Config::default(), &[], None, None);
        let conn = super::Conn::new(&hub, crate::protocol::Format::Json, None);
        let run = super::run(&hub, ws, conn, Some(std::time::Duration::from_secs(5)));
        let size = std::mem::size_of_val(&run);
        assert!(size < 4096, "the loop's future takes {size} bytes");
    }
}
