//! A Pusher client's connection (`/app/{key}`, protocol 7): the handshake's checks,
//! `pusher:connection_established`, pings both ways, subscriptions (with the app's
//! signatures on private, encrypted and presence channels), presence members per user,
//! cache channels, client events, and the sign-in's user channel.
//!
//! The session lives in the engine as any client does: its subscriptions are engine
//! subscribers marked Pusher (the delivery encodes Pusher's shape once for them all),
//! its connection is registered under [`internal_user`] (the server API and the Pusher
//! API's `terminate_connections` reach it, on every node), and presence is the
//! broker's. On plain TCP (`transport::tcp`) an idle Pusher connection is parked as
//! the hub's own clients are, and what is queued for it is written where it is
//! parked.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use volley::{CloseCode, Message, WebSocket};

use super::wire;
use super::{
    channel_kind, channel_options, internal_channel, internal_user, valid_channel_name, ChannelKind, PusherApp,
    TAG_EVENT, TAG_EXCLUDE, TAG_USER_ID,
};
use crate::engine::client::{ClientId, ClientShared};
use crate::engine::keyed::Keyed;
use crate::engine::{lock, now_ms, Details, Hub, SubOptions, Transport};
use crate::protocol::{ClientInfo, Disconnect, Format, PayloadKind, Publication};
use crate::transport::websocket::Exit;

/// How long a presence entry lives unless refreshed; refreshed every third of it.
const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// Pusher's close codes.
pub(crate) mod close {
    use crate::protocol::Disconnect;
    use std::borrow::Cow;

    const fn d(code: u16, reason: &'static str) -> Disconnect {
        Disconnect { code, reason: Cow::Borrowed(reason) }
    }
    /// No app has the key.
    pub const APP_NOT_FOUND: Disconnect = d(4001, "App key not in use");
    /// The app is disabled.
    pub const APP_DISABLED: Disconnect = d(4003, "App disabled");
    /// A protocol version other than 7.
    pub const PROTOCOL: Disconnect = d(4007, "Unsupported protocol version");
    /// Not authorized in time, or terminated by the app.
    pub const UNAUTHORIZED: Disconnect = d(4009, "Connection not authorized within timeout");
    /// The app's connection limit.
    pub const OVER_QUOTA: Disconnect = d(4100, "Over connection quota");
    /// The connection's outbound queue (or an HTTP session's outbox) overflowed:
    /// pusher-js reconnects at once.
    pub const TOO_SLOW: Disconnect = d(4200, "Client too slow");
    /// No pong.
    pub const NO_PONG: Disconnect = d(4201, "Pong reply not received");
    /// Terminated by the HTTP API's `terminate_connections`.
    pub const TERMINATED: Disconnect = d(4009, "Connection terminated by the app");
}

/// What the handshake's query says: the protocol version, the client's name and
/// version.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

/// Serves one Pusher client on an accepted WebSocket (`key` from the path) until it
/// ends, without parking it (the HTTP router's path: HTTP/2, TLS).
pub(crate) async fn serve<S>(hub: Hub, mut ws: WebSocket<S>, key: String, query: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let admitted = match admit(&hub, &key, query.as_deref()) {
        Ok(a) => a,
        Err(d) => return refuse(&mut ws, d).await,
    };
    drop(query);
    serve_on(&hub, admitted, ws).await;
}

/// A connection the handshake's checks let in: its app, counted, and its details.
pub(crate) struct Admitted {
    app: Arc<PusherApp>,
    count: AppCount,
    details: Details,
}

/// The handshake's checks (protocol 7, an enabled app with room): why not, as the
/// close code to tell the client.
pub(crate) fn admit(hub: &Hub, key: &str, query: Option<&str>) -> Result<Admitted, Disconnect> {
    if query_param(query, "protocol") != Some("7") {
        return Err(close::PROTOCOL);
    }
    let Some(app) = hub.inner.pusher_apps.iter().find(|a| a.key == key).cloned() else {
        return Err(close::APP_NOT_FOUND);
    };
    if !app.enabled {
        return Err(close::APP_DISABLED);
    }
    let Some(count) = AppCount::new(hub, &app) else {
        return Err(close::OVER_QUOTA);
    };
    let details = Details::new(
        query_param(query, "client").unwrap_or("pusher"),
        query_param(query, "version").unwrap_or_default(),
        Transport::PUSHER,
        None,
        None,
        &[],
    );
    Ok(Admitted { app, count, details })
}

/// Serves an admitted connection over its carrier until it ends (and has left its
/// channels), without parking it.
pub(crate) async fn serve_on<C: Carrier>(hub: &Hub, admitted: Admitted, carrier: C) {
    let conn = PusherConn::new(hub, admitted);
    let _ = run(carrier, conn, None).await;
}

/// A Pusher connection's state, which outlives its task while it is parked: the
/// session, its counts, and its timers.
pub(crate) struct PusherConn {
    s: PusherSession,
    _count: AppCount,
    _open: crate::transport::websocket::OpenGuard,
    /// When the client last sent anything.
    last_seen: Instant,
    /// When the server's `pusher:ping` went, while its pong is awaited.
    ping_sent: Option<Instant>,
    /// When the presence entries are next refreshed.
    next_refresh: Instant,
    /// When the connection may be parked if it stays idle until then.
    park_at: Instant,
}

impl PusherConn {
    /// A new connection's state, `pusher:connection_established` queued.
    pub(crate) fn new(hub: &Hub, admitted: Admitted) -> Box<Self> {
        let Admitted { app, count, details } = admitted;
        let s = PusherSession::new(hub.clone(), app, details);
        let established = json!({ "socket_id": s.client.id, "activity_timeout": s.app.activity_timeout.as_secs() });
        s.client.push(wire::message("pusher:connection_established", None, &established));
        let now = Instant::now();
        Box::new(PusherConn {
            s,
            _count: count,
            _open: crate::transport::websocket::OpenGuard::new(hub),
            last_seen: now,
            ping_sent: None,
            next_refresh: now + PRESENCE_TTL / 3,
            park_at: now,
        })
    }

    /// The client's queue.
    pub(crate) fn client(&self) -> &Arc<ClientShared> {
        &self.s.client
    }

    /// When the connection must have a task again whatever its peer does: its next
    /// ping, or its presence entries' refresh.
    pub(crate) fn wake_at(&self) -> Instant {
        let ping = self.last_seen + self.s.app.activity_timeout;
        if self.s.keeps_presence() {
            ping.min(self.next_refresh)
        } else {
            ping
        }
    }

    /// Leaves the channels and the registry (a connection lost while being parked).
    pub(crate) async fn close(&mut self) {
        self.s.close().await;
    }

    /// Tries to park the connection again in `delay` if it stays idle.
    pub(crate) fn park_in(&mut self, delay: Duration) {
        self.park_at = Instant::now() + delay;
    }
}

/// What a message from the client is.
pub(crate) enum Inbound {
    /// A text message: one Pusher message (JSON).
    Text(volley::Utf8Bytes),
    /// A binary message (refused with an error).
    Binary,
    /// Anything else that shows the client is there (a ping frame).
    Other,
    /// The client went away.
    End,
}

/// What carries a Pusher connection's messages: a WebSocket, or an HTTP fallback
/// session (`pusher::xhr`).
pub(crate) trait Carrier {
    /// The client's next message.
    async fn recv(&mut self) -> Inbound;
    /// Sends messages (JSON text, one frame each), taking them out of `batch`: all
    /// of them in one write where the carrier can. `Err` when the client is gone.
    async fn send(&mut self, batch: &mut Vec<Bytes>) -> Result<(), ()>;
    /// Ends the connection with a close code and reason.
    async fn close(&mut self, d: &Disconnect);
}

impl<S> Carrier for WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn recv(&mut self) -> Inbound {
        match WebSocket::recv(self).await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Inbound::End,
            Some(Ok(Message::Text(t))) => Inbound::Text(t),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(_)) => Inbound::Other,
        }
    }

    async fn send(&mut self, batch: &mut Vec<Bytes>) -> Result<(), ()> {
        // Queued, then written at once: one vectored write for all the frames (at 10
        // publications/s to 10,000 clients of one channel, one write per frame kept
        // the server's core busy with 88% of the deliveries made).
        for item in batch.drain(..) {
            WebSocket::feed(self, Message::Text(utf8(item))).await.map_err(|_| ())?;
        }
        WebSocket::flush(self).await.map_err(|_| ())
    }

    async fn close(&mut self, d: &Disconnect) {
        let _ = WebSocket::close(self, CloseCode::from(d.code), &d.reason).await;
    }
}

/// Tells the client why with `pusher:error`, and closes with the same code.
pub(crate) async fn refuse<S>(ws: &mut WebSocket<S>, d: Disconnect)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _ = ws.send(Message::Text(utf8(wire::error(Some(d.code), &d.reason)))).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(CloseCode::from(d.code), &d.reason)).await;
}

fn utf8(b: Bytes) -> volley::Utf8Bytes {
    b.try_into().expect("the JSON encoder writes UTF-8")
}

/// Counts the app's connections on this node while it lives.
struct AppCount(Hub, Arc<PusherApp>);

impl AppCount {
    fn new(hub: &Hub, app: &Arc<PusherApp>) -> Option<AppCount> {
        let mut counts = lock(&hub.inner.pusher_conns);
        let n = counts.entry(app.id.clone()).or_default();
        if app.max_connections != 0 && *n >= app.max_connections {
            return None;
        }
        *n += 1;
        Some(AppCount(hub.clone(), app.clone()))
    }
}

impl Drop for AppCount {
    fn drop(&mut self) {
        let mut counts = lock(&self.0.inner.pusher_conns);
        if let Some(n) = counts.get_mut(&self.1.id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1.id);
            }
        }
    }
}

/// The connection's loop: messages in, the queue out (everything queued in one
/// write), pings, the authorization deadline, the presence refresh. It ends when the
/// connection does (its channels left), or, with `park_after`, when the connection
/// has been idle that long with nothing owed (no pong awaited, authorized if it must
/// be, nothing queued).
pub(crate) async fn run<C: Carrier>(
    mut ws: C,
    mut c: Box<PusherConn>,
    park_after: Option<Duration>,
) -> Exit<C, Box<PusherConn>> {
    let client = c.s.client.clone();
    client.unparked();
    // Timers kept across iterations: a delivery wakes the loop without registering
    // any. The keepalive's is moved forward lazily, when it fires.
    let keepalive = tokio::time::sleep_until(match c.ping_sent {
        Some(sent) => sent + c.s.app.pong_timeout,
        None => c.last_seen + c.s.app.activity_timeout,
    });
    tokio::pin!(keepalive);
    let must_authorize = c.s.app.require_authorization;
    let auth = tokio::time::sleep_until(c.s.opened + c.s.app.authorization_timeout);
    tokio::pin!(auth);
    let refresh = tokio::time::sleep_until(c.next_refresh);
    tokio::pin!(refresh);
    let idle_timer = tokio::time::sleep_until(c.park_at);
    tokio::pin!(idle_timer);
    let after = park_after.unwrap_or_default();
    let mut batch = Vec::new();
    let end: Option<Disconnect> = loop {
        // Not with a ping, a pong or a refresh due: parked, it would be taken back at
        // once.
        let parkable = park_after.is_some() && c.ping_sent.is_none() && (!must_authorize || c.s.authorized) && {
            let now = Instant::now();
            c.last_seen + c.s.app.activity_timeout > now && (!c.s.keeps_presence() || c.next_refresh > now)
        };
        let mut active = true;
        tokio::select! {
            biased;
            _ = client.ready() => {
                // The server API's subscribe and unsubscribe do not apply to Pusher
                // clients; disconnects come as the queue's close.
                c.s.client.take_requests();
                c.s.client.take_lost();
                active = client.has_queued();
            }
            msg = ws.recv() => {
                c.last_seen = Instant::now();
                match msg {
                    Inbound::End => break None,
                    Inbound::Text(t) => {
                        c.ping_sent = None;
                        // Boxed: the session's futures would otherwise live in every
                        // connection's task, idle or not.
                        Box::pin(c.s.handle(t.as_bytes())).await;
                    }
                    Inbound::Binary => {
                        client.push(wire::error(None, "binary messages are not supported"));
                    }
                    Inbound::Other => {}
                }
            }
            _ = &mut keepalive => {
                active = false;
                match c.ping_sent {
                    // Nothing heard since the ping, in time.
                    Some(sent) if c.last_seen <= sent => break Some(close::NO_PONG),
                    _ => {
                        let idle_until = c.last_seen + c.s.app.activity_timeout;
                        if idle_until > Instant::now() {
                            // Heard from since: not idle yet.
                            c.ping_sent = None;
                            keepalive.as_mut().reset(idle_until);
                        } else {
                            client.push(wire::message("pusher:ping", None, &json!({})));
                            let now = Instant::now();
                            c.ping_sent = Some(now);
                            keepalive.as_mut().reset(now + c.s.app.pong_timeout);
                        }
                    }
                }
            }
            _ = &mut auth, if must_authorize && !c.s.authorized => {
                break Some(close::UNAUTHORIZED);
            }
            _ = &mut refresh => {
                active = false;
                c.next_refresh = Instant::now() + PRESENCE_TTL / 3;
                refresh.as_mut().reset(c.next_refresh);
                Box::pin(c.s.refresh_presence()).await;
            }
            _ = &mut idle_timer, if parkable => {
                return Exit::Idle(ws, c);
            }
        }
        match flush(&mut ws, &client, &mut batch).await {
            Ok(None) => {}
            Ok(Some(d)) => break Some(d),
            Err(()) => break None,
        }
        if active && park_after.is_some() {
            c.park_at = Instant::now() + after;
            idle_timer.as_mut().reset(c.park_at);
        }
    };
    // Out of the channels first: a client that does not read may never take the
    // close frame.
    Box::pin(c.s.close()).await;
    if let Some(d) = end {
        let closing = async {
            if d != Disconnect::SLOW {
                let _ = flush(&mut ws, &client, &mut batch).await;
            }
            // The engine's code for a slow reader, in Pusher's range.
            let d = if d == Disconnect::SLOW { close::TOO_SLOW } else { d };
            ws.close(&d).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    }
    Exit::Done
}

/// Writes what is queued, one frame per message, in one write; a write to a client
/// that does not read is abandoned once the client is marked to close (its queue
/// overflowed).
async fn flush<C: Carrier>(
    ws: &mut C,
    client: &ClientShared,
    batch: &mut Vec<Bytes>,
) -> Result<Option<Disconnect>, ()> {
    loop {
        let (closing, _) = client.take_since(batch);
        if batch.is_empty() || closing.is_some() {
            batch.clear();
            return Ok(closing);
        }
        let send = ws.send(batch);
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => {
                    r?;
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

/// A Pusher channel the client is subscribed to.
struct Sub {
    kind: ChannelKind,
    /// Counted in the channel's occupancy (for the `channel_occupied` and
    /// `channel_vacated` webhooks).
    counted: bool,
    /// On presence channels: the member's user id and `user_info` (JSON text).
    member: Option<(String, Bytes)>,
}

/// The signed-in user.
struct SignedIn {
    id: String,
    /// The users of its watchlist.
    watching: Vec<String>,
}

/// The most users one watchlist may hold (beyond: the rest are left out).
const MAX_WATCHLIST: usize = 100;

/// The engine channel whose presence holds a signed-in user's connections (never a
/// subscription: `#` names are refused to clients and the HTTP API). One per user, so
/// that a sign-in reads its own user's connections, not every user's.
fn online_channel(app_id: &str, user: &str) -> String {
    internal_channel(app_id, &format!("#online-{user}"))
}

/// The engine channel where a user's coming online and going offline is told to the
/// users who watch it.
fn watch_channel(app_id: &str, user: &str) -> String {
    internal_channel(app_id, &format!("{}{user}", super::wire::WATCHLIST_PREFIX))
}

/// The engine channel whose presence holds a Pusher channel's subscribers, when the
/// app's webhooks want to know when it is occupied and vacated (the cluster's count,
/// where the engine's registry is one node's).
fn occupancy_channel(app_id: &str, channel: &str) -> String {
    internal_channel(app_id, &format!("#subs-{channel}"))
}

/// A watchlist event's data.
fn watchlist_events(name: &str, users: &[&str]) -> Value {
    json!({ "events": [{ "name": name, "user_ids": users }] })
}

struct PusherSession {
    hub: Hub,
    /// The app, shared by its connections.
    app: Arc<PusherApp>,
    client: Arc<ClientShared>,
    /// The key the connection is registered under in the hub's connections.
    registered_as: String,
    /// A list while small (most clients have one or two): a `HashMap` would allocate
    /// room for four from the first.
    subs: Keyed<String, Sub>,
    user: Option<SignedIn>,
    /// Signed in, or subscribed to a channel that needs authorization.
    authorized: bool,
    /// Client events in the current second, and when it started.
    events: (Instant, u32),
    /// When the connection was opened (its authorization deadline runs from then).
    opened: Instant,
}

impl PusherSession {
    fn new(hub: Hub, app: Arc<PusherApp>, details: Details) -> Self {
        // Random across nodes, a counter within this one: unique.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let socket_id = format!("{}.{}", rand::random::<u32>() % 1_000_000_000, NEXT.fetch_add(1, Ordering::Relaxed));
        let client = Arc::new(ClientShared::with_id(
            ClientId::new(&socket_id),
            Format::Json,
            hub.config().client.queue_max_bytes,
        ));
        client.set_details(details);
        let registered_as = internal_user(&app.id, "");
        {
            let mut conns = lock(&hub.inner.conns);
            conns.total += 1;
            conns.users.insert(&registered_as, client.clone());
        }
        hub.metrics().connections_total.fetch_add(1, Ordering::Relaxed);
        PusherSession {
            hub,
            app,
            client,
            registered_as,
            subs: Keyed::default(),
            user: None,
            authorized: false,
            events: (Instant::now(), 0),
            opened: Instant::now(),
        }
    }

    fn push(&self, b: Bytes) {
        if self.client.push(b) {
            self.hub.metrics().messages_out_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, code: Option<u16>, text: &str) {
        self.push(wire::error(code, text));
    }

    /// Handles one message from the client. Nothing it sends ends the connection:
    /// what is wrong gets a `pusher:error` (or a subscription error).
    async fn handle(&mut self, text: &[u8]) {
        self.hub.metrics().commands_total.fetch_add(1, Ordering::Relaxed);
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(text) else {
            return self.error(None, "Invalid JSON: expected an object with an event");
        };
        let Some(Value::String(event)) = m.remove("event") else {
            return self.error(None, "Invalid message: no event");
        };
        let mut data = m.remove("data").unwrap_or(Value::Null);
        // Some clients send data as a JSON string.
        if let Value::String(s) = &data {
            if event.starts_with("pusher:") {
                if let Ok(v) = serde_json::from_str::<Value>(s) {
                    data = v;
                }
            }
        }
        let channel = m.get("channel").and_then(Value::as_str).map(str::to_owned);
        match event.as_str() {
            "pusher:ping" => self.push(wire::message("pusher:pong", None, &json!({}))),
            "pusher:pong" => {}
            "pusher:subscribe" => self.subscribe(&data).await,
            "pusher:unsubscribe" => {
                if let Some(ch) = data.get("channel").and_then(Value::as_str) {
                    self.unsubscribe(ch).await;
                }
            }
            "pusher:signin" => self.signin(&data).await,
            e if e.starts_with("client-") => self.client_event(e, channel.as_deref(), data).await,
            e => self.error(None, &format!("Unsupported event: {e}")),
        }
    }

    async fn subscribe(&mut self, data: &Value) {
        let Some(channel) = data.get("channel").and_then(Value::as_str) else {
            return self.error(None, "pusher:subscribe: no channel");
        };
        if !valid_channel_name(channel, self.app.max_channel_name_length) {
            return self.push(wire::subscription_error(channel, 400, "Invalid channel name"));
        }
        let (kind, _) = channel_kind(channel);
        if kind == ChannelKind::User {
            // The sign-in subscribed the connection already (pusher-js asks again).
            let own = self.user.as_ref().is_some_and(|u| format!("#server-to-user-{}", u.id) == channel);
            return if own {
                self.push(wire::message("pusher_internal:subscription_succeeded", Some(channel), &json!({})));
            } else {
                self.push(wire::subscription_error(channel, 403, "Not signed in as this user"))
            };
        }
        if self.subs.contains_key(channel) {
            return self.error(None, &format!("Existing subscription to channel {channel}"));
        }
        if self.subs.len() >= self.hub.config().client.channel_limit {
            return self.push(wire::subscription_error(channel, 403, "Too many channels"));
        }
        let channel_data = data.get("channel_data").and_then(Value::as_str);
        if kind != ChannelKind::Public {
            let auth = data.get("auth").and_then(Value::as_str).unwrap_or_default();
            let signed = if kind == ChannelKind::Presence { channel_data } else { None };
            if !super::sign::verify_channel_auth(&self.app, &self.client.id, channel, signed, auth) {
                return self.push(wire::subscription_error(channel, 401, "Invalid signature"));
            }
        }
        // Presence: who the member is.
        let member = if kind == ChannelKind::Presence {
            let parsed = channel_data.and_then(|d| serde_json::from_str::<Value>(d).ok());
            let user_id = match parsed.as_ref().and_then(|v| v.get("user_id")) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return self.push(wire::subscription_error(channel, 400, "channel_data: no user_id")),
            };
            let info = parsed.as_ref().and_then(|v| v.get("user_info")).cloned().unwrap_or(Value::Null);
            let info = Bytes::from(info.to_string());
            if info.len() > self.app.max_presence_member_size {
                return self.push(wire::subscription_error(channel, 413, "user_info is too large"));
            }
            Some((user_id, info))
        } else {
            None
        };
        let internal = internal_channel(&self.app.id, channel);
        let options = channel_options(&self.app, channel);
        let inner = &self.hub.inner;
        let sub = SubOptions { pusher: true, ..SubOptions::default() };
        let pending = match inner.register(&internal, &self.client, sub).await {
            Ok(p) => p,
            Err(_) => return self.push(wire::subscription_error(channel, 500, "Internal error")),
        };
        let mut succeeded = json!({});
        let mut first_of_user = false;
        if let Some((user_id, info)) = &member {
            let members = inner.broker.presence(&internal).await.unwrap_or_default();
            let known = members.values().any(|c| &c.user == user_id);
            let users: std::collections::HashSet<&str> = members.values().map(|c| c.user.as_str()).collect();
            if !known && users.len() >= self.app.max_presence_members_per_channel {
                inner.unregister(&internal, self.client.seq).await;
                return self.push(wire::subscription_error(channel, 403, "Presence channel is full"));
            }
            let me = ClientInfo {
                user: user_id.clone(),
                client: self.client.id.to_string(),
                conn_info: info.clone(),
                chan_info: Bytes::new(),
            };
            if let Err(e) = inner.broker.add_presence(&internal, me.clone(), PRESENCE_TTL).await {
                tracing::warn!(error = %e, channel, "presence failed");
            }
            // What was there, and this connection: no second read of the whole channel.
            let mut members = members;
            members.insert(me.client.clone(), me);
            first_of_user = !known;
            let mut hash = serde_json::Map::new();
            for c in members.values() {
                let info = serde_json::from_slice::<Value>(&c.conn_info).unwrap_or(Value::Null);
                hash.insert(c.user.clone(), info);
            }
            let ids: Vec<&String> = hash.keys().collect();
            succeeded = json!({ "presence": { "count": hash.len(), "ids": ids, "hash": hash } });
        }
        self.push(wire::message("pusher_internal:subscription_succeeded", Some(channel), &succeeded));
        // Cache channels: the last event, or a miss.
        let mut first = None;
        if options.history_size > 0 {
            match inner.history(&internal, &options, None, Some(1), true).await {
                Ok((pubs, _)) => first = pubs.first().and_then(|p| wire::encode_event(&internal, p)),
                Err(e) => tracing::debug!(error = ?e, channel, "cache read failed"),
            }
            if first.is_none() {
                first = Some(Bytes::from(json!({ "event": "pusher:cache_miss", "channel": channel }).to_string()));
                inner.webhooks.emit(&self.app, json!({ "name": "cache_miss", "channel": channel }));
            }
        }
        inner.go_live(&pending, first, 0, None, "", &self.client);
        if kind != ChannelKind::Public {
            self.authorized = true;
        }
        if let (Some((user_id, _)), true) = (&member, first_of_user) {
            inner.webhooks.member_added(&self.app, channel, user_id);
        }
        if let (Some((user_id, info)), true) = (&member, first_of_user) {
            let info = serde_json::from_slice::<Value>(info).unwrap_or(Value::Null);
            let data = json!({ "user_id": user_id, "user_info": info });
            self.internal_event(&internal, "pusher_internal:member_added", &data).await;
        }
        let hooks = &inner.webhooks;
        let counting = self.counts(kind);
        let counted =
            counting || hooks.wants(&self.app, "channel_occupied") || hooks.wants(&self.app, "channel_vacated");
        if counted {
            let occupancy = occupancy_channel(&self.app.id, channel);
            let me = ClientInfo { client: self.client.id.to_string(), ..ClientInfo::default() };
            let _ = inner.broker.add_presence(&occupancy, me, PRESENCE_TTL).await;
            // The cluster's count is read only when this node got its first subscriber.
            if pending.first && inner.broker.presence_stats(&occupancy).await.is_ok_and(|s| s.clients == 1) {
                hooks.channel_occupied(&self.app, channel);
            }
            if counting {
                super::count::changed(&self.hub, &self.app, channel, occupancy);
            }
        }
        self.subs.insert(channel.to_owned(), Sub { kind, counted, member });
    }

    /// Whether the subscribers of a channel of this kind are counted for
    /// `pusher_internal:subscription_count` or its webhook (never on presence channels,
    /// whose members are told instead).
    fn counts(&self, kind: ChannelKind) -> bool {
        kind != ChannelKind::Presence
            && (self.app.enable_subscription_count || self.hub.inner.webhooks.wants(&self.app, "subscription_count"))
    }

    /// Publishes a server event to a channel's subscribers but this one, everywhere,
    /// without keeping it (a cache channel's last event stays the app's).
    async fn internal_event(&self, internal: &str, event: &str, data: &Value) {
        publish_internal(&self.hub, internal, event, data, Some(&self.client.id)).await;
    }

    async fn unsubscribe(&mut self, channel: &str) {
        let Some(sub) = self.subs.remove(channel) else { return };
        let internal = internal_channel(&self.app.id, channel);
        let inner = &self.hub.inner;
        inner.unregister(&internal, self.client.seq).await;
        if sub.counted {
            let occupancy = occupancy_channel(&self.app.id, channel);
            let _ = inner.broker.remove_presence(&occupancy, &self.client.id, "").await;
            if inner.local_subscribers(&internal) == 0
                && inner.broker.presence_stats(&occupancy).await.is_ok_and(|s| s.clients == 0)
            {
                inner.webhooks.channel_vacated(&self.app, channel);
            }
            if self.counts(sub.kind) {
                super::count::changed(&self.hub, &self.app, channel, occupancy);
            }
        }
        if let Some((user_id, _)) = sub.member {
            let _ = inner.broker.remove_presence(&internal, &self.client.id, &user_id).await;
            let members = inner.broker.presence(&internal).await.unwrap_or_default();
            if !members.values().any(|c| c.user == user_id) {
                inner.webhooks.member_removed(&self.app, channel, &user_id);
                self.internal_event(&internal, "pusher_internal:member_removed", &json!({ "user_id": user_id })).await;
            }
        }
    }

    /// Whether the connection has presence entries to refresh: members, counted
    /// subscriptions, a signed-in user.
    fn keeps_presence(&self) -> bool {
        self.user.is_some() || self.subs.values().any(|sub| sub.counted || sub.member.is_some())
    }

    async fn refresh_presence(&mut self) {
        for (channel, sub) in self.subs.iter() {
            if sub.counted {
                let me = ClientInfo { client: self.client.id.to_string(), ..ClientInfo::default() };
                let occupancy = occupancy_channel(&self.app.id, channel);
                let _ = self.hub.inner.broker.add_presence(&occupancy, me, PRESENCE_TTL).await;
            }
            let Some((user_id, info)) = &sub.member else { continue };
            let internal = internal_channel(&self.app.id, channel);
            let me = ClientInfo {
                user: user_id.clone(),
                client: self.client.id.to_string(),
                conn_info: info.clone(),
                chan_info: Bytes::new(),
            };
            let _ = self.hub.inner.broker.add_presence(&internal, me, PRESENCE_TTL).await;
        }
        if let Some(user) = &self.user {
            let me = ClientInfo { user: user.id.clone(), client: self.client.id.to_string(), ..ClientInfo::default() };
            let _ = self.hub.inner.broker.add_presence(&online_channel(&self.app.id, &user.id), me, PRESENCE_TTL).await;
        }
    }

    async fn client_event(&mut self, event: &str, channel: Option<&str>, data: Value) {
        if !self.app.enable_client_messages {
            return self.error(None, "Client events are not enabled for this app");
        }
        let Some(channel) = channel else { return self.error(None, "Client event without a channel") };
        let Some(sub) = self.subs.get(channel) else {
            return self.error(None, &format!("Client event on {channel}: not subscribed"));
        };
        if !matches!(sub.kind, ChannelKind::Private | ChannelKind::Presence) {
            return self.error(None, "Client events are only allowed on private and presence channels");
        }
        if event.len() > self.app.max_event_name_length {
            return self.error(None, "Event name too long");
        }
        let now = Instant::now();
        if now.duration_since(self.events.0) >= Duration::from_secs(1) {
            self.events = (now, 0);
        }
        if self.events.1 >= self.app.max_client_events_per_second {
            let text =
                format!("Client event rejected - only {} accepted per second", self.app.max_client_events_per_second);
            return self.error(Some(4301), &text);
        }
        self.events.1 += 1;
        let data = Bytes::from(data.to_string());
        if data.len() > self.app.max_event_payload_size {
            return self.error(None, "Client event data too large");
        }
        let mut tags = std::collections::BTreeMap::new();
        tags.insert(TAG_EVENT.to_owned(), event.to_owned());
        tags.insert(TAG_EXCLUDE.to_owned(), self.client.id.to_string());
        if let Some((user, _)) = &sub.member {
            tags.insert(TAG_USER_ID.to_owned(), user.clone());
        }
        let hooks = &self.hub.inner.webhooks;
        if hooks.wants(&self.app, "client_event") {
            let mut e = json!({
                "name": "client_event",
                "channel": channel,
                "event": event,
                "data": String::from_utf8_lossy(&data),
                "socket_id": self.client.id,
            });
            if let Some((user, _)) = &sub.member {
                e["user_id"] = json!(user);
            }
            hooks.emit(&self.app, e);
        }
        let internal = internal_channel(&self.app.id, channel);
        let options = channel_options(&self.app, channel);
        let publication = Publication { data, tags, time: now_ms(), kind: PayloadKind::Json, ..Default::default() };
        if let Err(e) = self.hub.inner.publish(&internal, &options, publication, None, false).await {
            tracing::warn!(error = ?e, channel, "a client event was not published");
            self.error(None, "Client event not published: internal error");
        }
    }

    async fn signin(&mut self, data: &Value) {
        let auth = data.get("auth").and_then(Value::as_str).unwrap_or_default();
        let Some(user_data) = data.get("user_data").and_then(Value::as_str) else {
            return self.error(None, "pusher:signin: no user_data");
        };
        if !super::sign::verify_user_auth(&self.app, &self.client.id, user_data, auth) {
            return self.error(Some(4009), "Invalid signature");
        }
        let id = match serde_json::from_str::<Value>(user_data).ok().as_ref().and_then(|v| v.get("id")) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return self.error(Some(4009), "user_data: no id"),
        };
        if self.user.is_some() {
            return self.error(None, "Already signed in");
        }
        // Registered under the user: terminate_connections reaches the connection.
        let as_user = internal_user(&self.app.id, &id);
        {
            let mut conns = lock(&self.hub.inner.conns);
            conns.users.remove(&self.registered_as, self.client.seq);
            conns.users.insert(&as_user, self.client.clone());
        }
        self.registered_as = as_user;
        // The user's channel: events sent to it reach all of the user's connections.
        let internal = internal_channel(&self.app.id, &format!("#server-to-user-{id}"));
        let sub = SubOptions { pusher: true, ..SubOptions::default() };
        match self.hub.inner.register(&internal, &self.client, sub).await {
            Ok(pending) => {
                self.hub.inner.go_live(&pending, None, 0, None, "", &self.client);
            }
            Err(_) => return self.error(None, "Sign-in failed: internal error"),
        }
        self.authorized = true;
        self.push(wire::message("pusher:signin_success", None, &json!({ "user_data": user_data })));
        let watching = self.watch(&id, user_data).await;
        self.user = Some(SignedIn { id, watching });
    }

    /// Marks the user online (telling its watchers on its first connection), follows
    /// the users of its watchlist and tells which of them are online now.
    async fn watch(&mut self, id: &str, user_data: &str) -> Vec<String> {
        let inner = self.hub.inner.clone();
        let online = online_channel(&self.app.id, id);
        let me = ClientInfo { user: id.to_owned(), client: self.client.id.to_string(), ..ClientInfo::default() };
        if let Err(e) = inner.broker.add_presence(&online, me, PRESENCE_TTL).await {
            tracing::warn!(error = %e, "the online users' presence failed");
        }
        let conns = inner.broker.presence(&online).await.unwrap_or_default();
        if conns.len() <= 1 {
            self.internal_event(
                &watch_channel(&self.app.id, id),
                "pusher_internal:watchlist_events",
                &watchlist_events("online", &[id]),
            )
            .await;
        }
        let parsed: Value = serde_json::from_str(user_data).unwrap_or(Value::Null);
        let mut watching: Vec<String> = parsed
            .get("watchlist")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).take(MAX_WATCHLIST).collect())
            .unwrap_or_default();
        watching.sort();
        watching.dedup();
        for w in &watching {
            let sub = SubOptions { pusher: true, ..SubOptions::default() };
            if let Ok(pending) = inner.register(&watch_channel(&self.app.id, w), &self.client, sub).await {
                inner.go_live(&pending, None, 0, None, "", &self.client);
            }
        }
        let mut now_online: Vec<&str> = Vec::new();
        for w in &watching {
            let on = inner.broker.presence_stats(&online_channel(&self.app.id, w)).await;
            if on.is_ok_and(|s| s.clients > 0) {
                now_online.push(w);
            }
        }
        if !now_online.is_empty() {
            self.push(wire::message(
                "pusher_internal:watchlist_events",
                None,
                &watchlist_events("online", &now_online),
            ));
        }
        watching
    }

    /// Leaves every channel (member events included) and the hub's registry.
    async fn close(&mut self) {
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for ch in channels {
            self.unsubscribe(&ch).await;
        }
        if let Some(user) = self.user.take() {
            let inner = self.hub.inner.clone();
            let internal = internal_channel(&self.app.id, &format!("#server-to-user-{}", user.id));
            inner.unregister(&internal, self.client.seq).await;
            for w in &user.watching {
                inner.unregister(&watch_channel(&self.app.id, w), self.client.seq).await;
            }
            let online = online_channel(&self.app.id, &user.id);
            let _ = inner.broker.remove_presence(&online, &self.client.id, &user.id).await;
            let left = inner.broker.presence_stats(&online).await.map_or(0, |s| s.clients);
            if left == 0 {
                let data = watchlist_events("offline", &[&user.id]);
                self.internal_event(&watch_channel(&self.app.id, &user.id), "pusher_internal:watchlist_events", &data)
                    .await;
            }
        }
        let mut conns = lock(&self.hub.inner.conns);
        conns.users.remove(&self.registered_as, self.client.seq);
        conns.total = conns.total.saturating_sub(1);
    }
}

/// Publishes a server event to a channel's subscribers (but the socket `exclude`
/// names), everywhere, without keeping it: a cache channel's last event stays the app's.
pub(crate) async fn publish_internal(hub: &Hub, internal: &str, event: &str, data: &Value, exclude: Option<&str>) {
    let mut tags: std::collections::BTreeMap<String, String> = [(TAG_EVENT.to_owned(), event.to_owned())].into();
    if let Some(socket) = exclude {
        tags.insert(TAG_EXCLUDE.to_owned(), socket.to_owned());
    }
    let publication = Publication {
        data: Bytes::from(Value::String(data.to_string()).to_string()),
        tags,
        time: now_ms(),
        kind: PayloadKind::Json,
        ..Default::default()
    };
    let options = crate::config::ChannelOptions::default();
    if let Err(e) = hub.inner.publish(internal, &options, publication, None, true).await {
        tracing::warn!(error = ?e, event, "a server event was not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_read() {
        let q = Some("protocol=7&client=js&version=8.4.0");
        assert_eq!(query_param(q, "protocol"), Some("7"));
        assert_eq!(query_param(q, "client"), Some("js"));
        assert_eq!(query_param(q, "flash"), None);
        assert_eq!(query_param(None, "protocol"), None);
    }
}
