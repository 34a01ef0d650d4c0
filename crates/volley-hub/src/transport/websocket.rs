//! The WebSocket transport (`/connection/websocket`): frames in, commands to the
//! session; the client's queue out, everything queued at once in one frame (JSON
//! replies joined by newlines, Protobuf ones one after another).
//!
//! It also owns the session loop every bidirectional transport shares (`run`):
//! commands in, the queue out, pings, pongs, expiry and the stale timer, over a
//! `Carrier` (a WebSocket here; the emulation streams in `transport::emulation`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use volley::{CloseCode, Message, WebSocket};

use crate::engine::client::ClientShared;
use crate::engine::session::{Moment, Session};
use crate::engine::{Hub, HubInner};
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
    let mut conn = Conn::new(&hub, format, remote);
    conn.session.keep_headers(|name| ws.info().headers().get(name));
    // Any transport: never parked.
    let _ = run(&hub, ws, conn, None).await;
}

/// A connection's state that outlives its task while it is parked: the session, the
/// open-connection count, and its timers.
pub(crate) struct Conn {
    pub(crate) session: Session,
    _open: OpenGuard,
    /// When the next ping is due.
    next_ping: Moment,
    /// When the client may be parked if it stays idle until then (nothing received
    /// but pongs, nothing sent but pings).
    park_at: Moment,
}

impl Conn {
    /// A new connection's state, before `connect`.
    pub(crate) fn new(hub: &Hub, format: Format, remote: Option<SocketAddr>) -> Self {
        let now = tokio::time::Instant::now();
        Conn {
            session: Session::new(hub.inner.clone(), format, remote.map(|a| a.ip())),
            _open: OpenGuard::new(hub),
            next_ping: Moment::from(now + first_ping(ping_every(hub))),
            park_at: Moment::from(now),
        }
    }

    /// When the connection must have a task again whatever its peer does: its next
    /// ping, or its next expiry check. `None` when neither is set.
    pub(crate) fn wake_at(&self, hub: &Hub) -> Option<tokio::time::Instant> {
        let ping = (!hub.config().client.ping_interval.is_zero()).then_some(self.next_ping.tokio());
        let expiry = self.session.deadline().map(expiry_instant);
        match (ping, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A parked connection's deadline has come (see [`wake_at`](Conn::wake_at)):
    /// `Some((true, next))` when its ping is due and may be written where it is (it
    /// is counted as sent: a pong is owed from now), `Some((false, next))` when
    /// nothing is due yet (the pong came; `next` is its next deadline), `None` when
    /// its task must run: the pong is overdue (3012), an expiry check or a presence
    /// refresh (calls to the broker) is due.
    pub(crate) fn due_parked(&mut self, hub: &HubInner) -> Option<(bool, Option<tokio::time::Instant>)> {
        let c = &hub.config.client;
        if c.ping_interval.is_zero() {
            return None;
        }
        // The expiry check is due once its second has come (compared in seconds, as
        // the check itself does: an instant made from it would always lie ahead).
        let deadline = self.session.deadline();
        if deadline.is_some_and(|at| at <= crate::engine::now_ms() as u64 / 1000) {
            return None;
        }
        let now = tokio::time::Instant::now();
        let expiry = deadline.map(expiry_instant);
        let earliest = |at: tokio::time::Instant| Some(expiry.map_or(at, |e| e.min(at)));
        if let Some(sent) = self.session.ping_sent {
            let pong_by = sent.tokio() + c.pong_timeout;
            return (pong_by > now).then(|| (false, earliest(pong_by)));
        }
        if self.next_ping.tokio() > now {
            return Some((false, earliest(self.next_ping.tokio())));
        }
        if self.session.refreshes_presence() {
            return None;
        }
        advance_ping(&mut self.next_ping, c.ping_interval, now);
        self.session.ping_sent = Some(Moment::now());
        Some((true, earliest((now + c.pong_timeout).min(self.next_ping.tokio()))))
    }

    /// A small message a parked connection's client sent (see
    /// [`volley::park::Keeper::received`]): whether it is the pong, handled here as
    /// the session would (`{}` in JSON, an empty command in Protobuf).
    pub(crate) fn pong_parked(&mut self, text: bool, payload: &[u8]) -> bool {
        let pong = match self.session.client.format {
            Format::Json => text && matches!(payload, b"{}" | b"{}\n"),
            Format::Protobuf => !text && payload == [0],
        };
        if !pong || !self.session.is_connected() {
            return false;
        }
        self.session.pong();
        true
    }

    /// Tries to park the connection again in `delay` if it stays idle.
    pub(crate) fn park_in(&mut self, delay: Duration) {
        self.park_at = Moment::from(tokio::time::Instant::now() + delay);
    }
}

/// Moves `next_ping` one interval on, as a ping is sent at `now`; from `now` when
/// that is already past (woken late, parked or on a busy runtime: no burst of pings).
fn advance_ping(next_ping: &mut Moment, every: Duration, now: tokio::time::Instant) {
    let mut next = next_ping.tokio() + every;
    if next <= now {
        next = now + every;
    }
    *next_ping = Moment::from(next);
}

/// The delay of a connection's first ping: `every`, less up to a fifth of it. The
/// fifths taken follow a sequence that spreads any run of connections evenly over it
/// (multiples of the golden ratio, modulo 1), so that clients that connected together,
/// as a reconnect storm after a restart does, are not all pinged in the same few
/// milliseconds every interval after, each wave holding the parking's lock and the core
/// while publications wait. Clients take an early ping as any other: each restarts
/// their wait for the next.
fn first_ping(every: Duration) -> Duration {
    static CONNECTIONS: AtomicU32 = AtomicU32::new(0);
    let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    // The fraction of the golden ratio's multiple, in [0, 1).
    let spread = f64::from(n.wrapping_mul(0x9E37_79B9)) / 4_294_967_296.0;
    every - (every / 5).mul_f64(spread)
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
pub(crate) enum Exit<C, T = Conn> {
    /// The connection is over (closed, failed, disconnected).
    Done,
    /// The client has been idle for the `park_after` given: the connection may be
    /// parked with its state (the caller checks the queue is still empty, under its
    /// lock).
    Idle(C, T),
}

/// What a carrier received from its client.
pub(crate) enum Inbound {
    /// Commands, or why they could not be decoded (3501).
    Commands(Result<Vec<protocol::Command>, String>),
    /// A frame of the wrong kind for the client's format (3501).
    Bad,
    /// Nothing for the session (a WebSocket ping, say).
    Skip,
    /// The client is gone, or its connection failed.
    End,
}

/// Where a session's commands come from and where its queue goes: a WebSocket, or an
/// emulation stream (commands from `/emulation`, frames to an HTTP response body).
pub(crate) trait Carrier: Send {
    /// The next thing the client sent. Must be cancel-safe: the loop drops it when
    /// something else is ready first.
    fn recv(&mut self, format: Format) -> impl Future<Output = Inbound> + Send;
    /// Writes a batch of encoded replies and pushes (taking them out of `batch`) in the
    /// carrier's framing. Fails when the client is gone.
    fn send(&mut self, format: Format, batch: &mut Vec<Bytes>) -> impl Future<Output = Result<(), ()>> + Send;
    /// Ends the connection, telling the client why when `d` is given.
    fn close(&mut self, format: Format, d: Option<&Disconnect>) -> impl Future<Output = ()> + Send;
}

impl<S> Carrier for WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn recv(&mut self, format: Format) -> Inbound {
        match WebSocket::recv(self).await {
            None => Inbound::End,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "connection failed");
                Inbound::End
            }
            Some(Ok(Message::Text(t))) if format == Format::Json => {
                Inbound::Commands(protocol::json::decode_commands(&t.into_bytes()).map_err(|e| e.to_string()))
            }
            Some(Ok(Message::Binary(b))) if format == Format::Protobuf => {
                Inbound::Commands(protocol::protobuf::decode_commands(&b).map_err(|e| e.to_string()))
            }
            Some(Ok(Message::Text(_) | Message::Binary(_))) => Inbound::Bad,
            Some(Ok(Message::Close(_))) => Inbound::End,
            Some(Ok(_)) => Inbound::Skip,
        }
    }

    async fn send(&mut self, format: Format, batch: &mut Vec<Bytes>) -> Result<(), ()> {
        let frame = if batch.len() == 1 {
            batch.pop().expect("one")
        } else {
            let sep = usize::from(format == Format::Json);
            let mut buf = BytesMut::with_capacity(batch.iter().map(|b| b.len() + sep).sum());
            for (i, b) in batch.drain(..).enumerate() {
                if i > 0 && sep == 1 {
                    buf.put_u8(b'\n');
                }
                buf.put_slice(&b);
            }
            buf.freeze()
        };
        let msg = match format {
            Format::Json => Message::Text(frame.try_into().expect("the JSON encoder writes UTF-8")),
            Format::Protobuf => Message::Binary(frame),
        };
        WebSocket::send(self, msg).await.map_err(|_| ())
    }

    async fn close(&mut self, _format: Format, d: Option<&Disconnect>) {
        if let Some(d) = d {
            let _ = WebSocket::close(self, CloseCode::from(d.code), &d.reason).await;
        }
    }
}

/// Serves a client until it ends, or, with `park_after`, until it has been idle that
/// long with nothing owed (connected, no pong awaited, nothing queued).
pub(crate) async fn run<C: Carrier>(hub: &Hub, mut ws: C, mut conn: Conn, park_after: Option<Duration>) -> Exit<C> {
    let config = &hub.config().client;
    let client = conn.session.client.clone();
    client.unparked();
    let stale = tokio::time::sleep(config.stale_close_delay);
    tokio::pin!(stale);
    let every = ping_every(hub);
    let after = park_after.unwrap_or_default();
    // Timers kept across iterations and reset when their deadline moves.
    let ping_timer = tokio::time::sleep_until(conn.next_ping.tokio());
    tokio::pin!(ping_timer);
    let idle_timer = tokio::time::sleep_until(conn.park_at.tokio());
    tokio::pin!(idle_timer);
    let mut batch = Vec::new();
    let end: Option<Disconnect> = loop {
        let session = &mut conn.session;
        let pong_deadline = session.ping_sent.map(|t| t.tokio() + config.pong_timeout);
        let expiry = session.deadline().map(expiry_instant);
        // Not with a ping or an expiry due: parked, it would be taken back at once. (A
        // timer whose deadline is long past can win over one due a moment ago: the
        // runtime's clock moves by turns.)
        let parkable = park_after.is_some() && session.is_connected() && session.ping_sent.is_none() && {
            let now = tokio::time::Instant::now();
            (config.ping_interval.is_zero() || conn.next_ping.tokio() > now) && expiry.is_none_or(|at| at > now)
        };
        let mut active = true;
        tokio::select! {
            biased;
            _ = client.ready() => {
                // Woken for its own ping (queued and written by this task) is no
                // activity: the client may park again at once.
                let control = session.has_control();
                active = control || client.has_queued();
                // Most wakes are for publications: no control future to allocate.
                if control {
                    if let Err(d) = Box::pin(session.apply_control()).await {
                        break Some(d);
                    }
                }
            }
            msg = ws.recv(client.format) => {
                let outcome = match msg {
                    Inbound::End => break None,
                    Inbound::Commands(decoded) => commands(session, decoded, &mut active).await,
                    Inbound::Bad => Err(Disconnect::BAD_REQUEST),
                    Inbound::Skip => Ok(()),
                };
                if let Err(d) = outcome {
                    break Some(d);
                }
            }
            _ = &mut stale, if !session.is_connected() => break Some(Disconnect::STALE),
            _ = &mut ping_timer, if session.is_connected() && !config.ping_interval.is_zero() => {
                advance_ping(&mut conn.next_ping, every, tokio::time::Instant::now());
                ping_timer.as_mut().reset(conn.next_ping.tokio());
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
            conn.park_at = Moment::from(tokio::time::Instant::now() + after);
            idle_timer.as_mut().reset(conn.park_at.tokio());
        }
    };
    // Out of the channels and the limits first: a client that does not read may never
    // take the close frame.
    Box::pin(conn.session.close()).await;
    if let Some(d) = end {
        tracing::debug!(client = %client.id, code = d.code, reason = %d.reason, "disconnecting");
        let closing = async {
            if d != Disconnect::SLOW && flush(hub, &mut ws, &client, &mut batch).await.is_err() {
                return;
            }
            ws.close(client.format, Some(&d)).await
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    } else {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(client.format, None)).await;
    }
    Exit::Done
}

/// Counts an open transport connection while it lives.
pub(crate) struct OpenGuard(Hub);

impl OpenGuard {
    pub(crate) fn new(hub: &Hub) -> Self {
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
async fn flush<C: Carrier>(
    hub: &Hub,
    ws: &mut C,
    client: &ClientShared,
    batch: &mut Vec<Bytes>,
) -> Result<Option<Disconnect>, ()> {
    loop {
        let (closing, since) = client.take_since(batch);
        if batch.is_empty() || closing.is_some() {
            batch.clear();
            return Ok(closing);
        }
        {
            let send = ws.send(client.format, batch);
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
        batch.clear();
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

    /// Connections made together get their first pings spread over the last fifth of
    /// the interval, evenly, and never later than the interval.
    #[test]
    fn first_pings_of_connections_made_together_are_spread() {
        let every = std::time::Duration::from_secs(25);
        let mut buckets = [0u32; 10];
        for _ in 0..1000 {
            let at = super::first_ping(every);
            assert!(at <= every && at >= every * 4 / 5, "first ping after {at:?}");
            let tenth = ((every - at).as_secs_f64() / (every.as_secs_f64() / 5.0) * 10.0) as usize;
            buckets[tenth.min(9)] += 1;
        }
        assert!(buckets.iter().all(|&n| (90..=110).contains(&n)), "per tenth of the window: {buckets:?}");
    }

    /// A parked client's state is kept inline in the parking's slot, for every idle
    /// client: what only some sessions use is boxed out of it (it was 304 bytes).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_parked_clients_state_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        assert!(size <= 256, "Conn is {size} bytes");
    }
}
