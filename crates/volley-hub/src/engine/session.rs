//! One client's session, whatever carries it: the commands it sends, in order, and the
//! state they build (the user, the subscriptions, the expiry). Replies and pushes go
//! to the client's queue; the transport writes them.

use super::keyed::Keyed;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use super::client::ClientShared;
use super::{encode, lock, now_ms, ControlRequest, Details, HubInner, SubOptions, Transport};
use crate::auth::{ConnectToken, SubscribeToken, TokenError};
use crate::config::{ChannelOptions, RecoveryMode};
use crate::protocol::{
    self, ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect, ErrorReply, FilterNode, Format,
    HistoryRequest, PayloadKind, Publication, Push, PushKind, Reply, ReplyResult, Request, StreamPosition,
    SubscribeRequest, SubscribeResult,
};
use crate::proxy::{self, Answer, Proxy};

/// The server's version, as sent in connect results.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What ends a session from inside a command: the disconnect to send.
pub(crate) type Outcome = Result<(), Disconnect>;

pub(crate) struct Session {
    hub: Arc<HubInner>,
    pub client: Arc<ClientShared>,
    connected: bool,
    user: Box<str>,
    /// When the connection expires, unless refreshed.
    expires_at: Expiry,
    subs: Keyed<Box<str>, LocalSub>,
    /// Commands allowed now (a token bucket), and when it was last refilled
    /// ([`clock_ms`]).
    tokens: f32,
    refilled: u64,
    /// When a ping was sent that no pong has answered yet.
    pub ping_sent: Option<Moment>,
    /// What only some sessions have (boxed: the others keep a pointer's room for it, in
    /// every parked client).
    extras: Option<Box<Extras>>,
}

/// The parts of a session that only some transports or configurations use.
#[derive(Default)]
struct Extras {
    /// The transport's name, as proxies and the server API are told, when it is not
    /// `websocket`.
    transport: Option<Transport>,
    /// The client's address, kept only where connections per address are limited.
    remote_ip: Option<IpAddr>,
    /// The connection's `info`, from its token or its connect proxy.
    conn_info: Box<[u8]>,
    /// The session id of an emulation transport, given in the connect result.
    emulation_session: String,
    /// The headers of the client's request that proxies forward (only those).
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// The headers the client emulates (in its connect command) that proxies forward.
    emulated: Box<[(HeaderName, HeaderValue)]>,
}

/// When the hub's monotonic clock started (its first reading).
fn clock_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds on a monotonic clock that starts with the first call (a session's
/// token bucket keeps its last refill as one: eight bytes, where an `Instant` takes
/// sixteen, in every parked client).
fn clock_ms() -> u64 {
    clock_start().elapsed().as_millis() as u64
}

/// A moment on the monotonic clock in eight bytes, as a parked client keeps its timers
/// (an `Instant` takes sixteen, and an `Option` of one too; an `Option<Moment>` takes
/// eight): microseconds since the clock's start, plus one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Moment(std::num::NonZeroU64);

impl Moment {
    /// Now.
    pub fn now() -> Moment {
        Moment::from(Instant::now())
    }

    /// The moment as an `Instant` (to the microsecond).
    pub fn instant(self) -> Instant {
        clock_start() + Duration::from_micros(self.0.get() - 1)
    }

    /// The moment as tokio's `Instant`.
    pub fn tokio(self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.instant())
    }
}

impl From<Instant> for Moment {
    fn from(t: Instant) -> Moment {
        let micros = u64::try_from(t.saturating_duration_since(clock_start()).as_micros()).unwrap_or(u64::MAX - 1);
        Moment(std::num::NonZeroU64::MIN.saturating_add(micros))
    }
}

impl From<tokio::time::Instant> for Moment {
    fn from(t: tokio::time::Instant) -> Moment {
        Moment::from(t.into_std())
    }
}

/// When something expires (Unix seconds), unless refreshed, in eight bytes (an
/// `Option<u64>` takes sixteen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expiry(u64);

impl Expiry {
    /// It does not expire.
    const NEVER: Expiry = Expiry(u64::MAX);

    fn get(self) -> Option<u64> {
        (self != Expiry::NEVER).then_some(self.0)
    }
}

impl From<Option<u64>> for Expiry {
    fn from(at: Option<u64>) -> Expiry {
        at.map_or(Expiry::NEVER, Expiry)
    }
}

/// How long a refresh or sub_refresh proxy that failed waits before it is asked again.
const PROXY_RETRY: Duration = Duration::from_secs(10);

/// A proxy's refusal: an error for the client, or a disconnect.
enum Refused {
    Error(ErrorReply),
    Disconnect(Disconnect),
}

/// A subscription of the session (32 bytes with its key, one of the allocator's size
/// classes; a field more moves it to the next, 48).
struct LocalSub {
    /// Its info (from its token or its proxy), boxed twice: a pointer's room in every
    /// subscription, for what few have.
    #[allow(clippy::box_collection, clippy::redundant_allocation)]
    chan_info: Option<Box<Box<[u8]>>>,
    /// When it expires (Unix seconds), unless refreshed; [`u32::MAX`]: it does not
    /// (four bytes: good until 2106).
    expires: u32,
    /// What of its namespace's options it needs ([`SUB_PRESENCE`], [`SUB_JOIN_LEAVE`],
    /// [`SUB_REFRESH_PROXY`]).
    flags: u8,
}

/// In [`LocalSub`]'s flags: the channel keeps presence.
const SUB_PRESENCE: u8 = 1;
/// In [`LocalSub`]'s flags: the channel publishes joins and leaves.
const SUB_JOIN_LEAVE: u8 = 2;
/// In [`LocalSub`]'s flags: the sub_refresh proxy refreshes the subscription.
const SUB_REFRESH_PROXY: u8 = 4;

impl LocalSub {
    fn new(options: &ChannelOptions, chan_info: &[u8], expires_at: Option<u64>) -> LocalSub {
        let flags = [
            (options.presence, SUB_PRESENCE),
            (options.join_leave, SUB_JOIN_LEAVE),
            (options.sub_refresh_proxy_enabled, SUB_REFRESH_PROXY),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, flag)| f | flag);
        let mut sub = LocalSub { chan_info: None, expires: u32::MAX, flags };
        sub.set_chan_info(chan_info);
        sub.set_expires_at(expires_at);
        sub
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Its info (empty: none).
    fn chan_info(&self) -> &[u8] {
        self.chan_info.as_deref().map_or(&[], |b| b)
    }

    fn set_chan_info(&mut self, info: &[u8]) {
        self.chan_info = (!info.is_empty()).then(|| Box::new(info.into()));
    }

    /// When it expires (Unix seconds), unless refreshed.
    fn expires_at(&self) -> Option<u64> {
        (self.expires != u32::MAX).then_some(u64::from(self.expires))
    }

    fn set_expires_at(&mut self, at: Option<u64>) {
        self.expires = at.map_or(u32::MAX, |t| u32::try_from(t).unwrap_or(u32::MAX - 1).min(u32::MAX - 1));
    }
}

/// What a subscription is granted besides what its request asks.
#[derive(Default)]
struct Grant {
    /// The subscription's info (from its token).
    chan_info: Bytes,
    /// When the subscription expires (its token's), unless refreshed.
    expires_at: Option<u64>,
    /// A validated tags filter.
    filter: Option<Arc<FilterNode>>,
    /// Made by the server (a token's channels, the API), not by a subscribe command.
    server_side: bool,
}

impl Grant {
    fn server_side() -> Grant {
        Grant { server_side: true, ..Grant::default() }
    }
}

/// A subscription being set up: registered, buffering, its result not yet sent.
struct Prepared {
    pending: super::Pending,
    result: SubscribeResult,
    last: u64,
    local: LocalSub,
}

fn unix_now() -> u64 {
    (now_ms() / 1000) as u64
}

fn ttl(expires_at: Option<u64>) -> (bool, u32) {
    match expires_at {
        Some(at) => (true, at.saturating_sub(unix_now()).min(u64::from(u32::MAX)) as u32),
        None => (false, 0),
    }
}

impl Session {
    pub fn new(hub: Arc<HubInner>, format: Format, remote_ip: Option<IpAddr>) -> Self {
        let client = Arc::new(ClientShared::new(format, hub.config.client.queue_max_bytes));
        let burst = hub.config.client.command_burst.max(1) as f32;
        let extras = match remote_ip {
            Some(ip) if hub.config.client.ip_connection_limit > 0 => {
                Some(Box::new(Extras { remote_ip: Some(ip), ..Extras::default() }))
            }
            _ => None,
        };
        Session {
            hub,
            client,
            connected: false,
            user: Box::default(),
            expires_at: Expiry::NEVER,
            subs: Keyed::default(),
            tokens: burst,
            refilled: clock_ms(),
            ping_sent: None,
            extras,
        }
    }

    /// Names the transport for proxies and the server API (`websocket` until set).
    pub fn set_transport(&mut self, name: Transport) {
        if name != Transport::WEBSOCKET || self.extras.is_some() {
            self.extras().transport = Some(name);
        }
    }

    /// The transport's name.
    fn transport(&self) -> Transport {
        self.extras.as_ref().and_then(|e| e.transport).unwrap_or(Transport::WEBSOCKET)
    }

    /// The client's address, where connections per address are limited.
    fn remote_ip(&self) -> Option<IpAddr> {
        self.extras.as_ref()?.remote_ip
    }

    /// Keeps the headers of the client's request that some proxy forwards; `get` reads
    /// a header (lowercase name) of the request.
    pub fn keep_headers<'a>(&mut self, get: impl Fn(&str) -> Option<&'a str>) {
        if !self.hub.proxies.header_names.is_empty() {
            let headers = self.hub.proxies.keep_headers(get);
            if !headers.is_empty() {
                self.extras().headers = headers;
            }
        }
    }

    /// What proxies are told of the connection.
    fn proxy_conn(&self) -> proxy::Conn<'_> {
        proxy::Conn {
            client: &self.client.id,
            transport: self.transport().name(),
            format: self.client.format,
            user: Some(&self.user),
            meta: self.client.details().map_or(&[], |d| d.meta()),
        }
    }

    /// Asks a proxy. Its failure (unreachable, slow, not a proxy answer) is error 100.
    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        which: &'static str,
        proxy: &Proxy,
        body: serde_json::Map<String, serde_json::Value>,
    ) -> Result<T, Refused> {
        // Boxed: the request's future stays out of the connection's (which is held as
        // long as the client is connected).
        let headers = self.extras.as_deref().map_or((&[][..], &[][..]), |x| (&x.headers[..], &x.emulated[..]));
        match Box::pin(proxy.call::<T>(proxy::body(body), headers)).await {
            Ok(Answer::Result(r)) => Ok(r),
            Ok(Answer::Error(e)) => Err(Refused::Error(e)),
            Ok(Answer::Disconnect(d)) => Err(Refused::Disconnect(d)),
            Err(e) => Err(proxy_failed(which, e)),
        }
    }

    /// Data from a proxy for the client: a JSON client gets it on one line, or not at
    /// all if it is not JSON.
    fn for_client(&self, data: Bytes) -> Bytes {
        if self.client.format == Format::Protobuf || data.is_empty() {
            return data;
        }
        let data = protocol::json::one_line(data);
        if PayloadKind::of(&data) == PayloadKind::Json {
            data
        } else {
            tracing::warn!("a proxy answered binary data for a JSON client: left out");
            Bytes::new()
        }
    }

    /// Makes this an emulation transport's session: its connect result carries `id` and
    /// the node, for the client's `/emulation` requests.
    pub fn set_emulation_session(&mut self, id: String) {
        self.extras().emulation_session = id;
    }

    /// The connection's `info` (empty: none).
    fn conn_info(&self) -> &[u8] {
        self.extras.as_ref().map_or(&[], |e| &e.conn_info)
    }

    fn set_conn_info(&mut self, info: &[u8]) {
        if !info.is_empty() || self.extras.is_some() {
            self.extras().conn_info = info.into();
        }
    }

    /// The session's extras, made on first use.
    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    fn info(&self, chan_info: &[u8]) -> ClientInfo {
        ClientInfo {
            user: self.user.to_string(),
            client: self.client.id.to_string(),
            conn_info: Bytes::copy_from_slice(self.conn_info()),
            chan_info: Bytes::copy_from_slice(chan_info),
        }
    }

    /// Whether the client's format can carry these publications: binary data cannot go
    /// to a JSON client, which is disconnected with 3506 (what the reply would have
    /// carried is left out; the close goes before it). The kind of each payload was
    /// found where it entered the hub: nothing is parsed here.
    fn can_carry(&self, pubs: &[Arc<Publication>]) -> bool {
        if self.client.format == Format::Json && pubs.iter().any(|p| !p.is_json()) {
            self.client.close(Disconnect::INAPPROPRIATE_PROTOCOL);
            return false;
        }
        true
    }

    fn send(&self, reply: &Reply) {
        if self.client.push(encode(reply, self.client.format)) {
            self.hub.metrics.messages_out_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reply(&self, id: u32, result: ReplyResult) {
        self.send(&Reply::Result { id, result });
    }

    fn error(&self, id: u32, error: ErrorReply) {
        self.hub.count_error(error.code);
        self.send(&Reply::Error { id, error });
    }

    /// Sends the server's ping; the client owes a pong.
    pub fn ping(&mut self) {
        self.send(&Reply::Ping);
        if self.ping_sent.is_none() {
            self.ping_sent = Some(Moment::now());
        }
    }

    /// The client's pong, read where its connection is parked: counted as
    /// [`handle`](Session::handle) counts a command.
    pub fn pong(&mut self) {
        self.count_command(&Request::None);
        self.ping_sent = None;
    }

    /// Counts a command received, in all and by method (`/metrics`).
    fn count_command(&self, request: &Request) {
        self.hub.metrics.commands_total.fetch_add(1, Ordering::Relaxed);
        *lock(&self.hub.metrics.commands).entry(request.method()).or_default() += 1;
    }

    /// Whether this connection is kept among its user's for
    /// `client.user_connection_limit` (refreshed with the presence).
    fn counts_user_connection(&self) -> bool {
        self.connected && self.hub.config.client.user_connection_limit > 0 && !self.user.is_empty()
    }

    /// Whether the ping timer's [`refresh_presence`](Session::refresh_presence) has
    /// anything to do (calls to the broker, subscriptions to forget).
    pub fn refreshes_presence(&self) -> bool {
        self.counts_user_connection()
            || self.subs.iter().any(|(_, sub)| sub.has(SUB_PRESENCE))
            || self.client.lost_any()
    }

    /// When the session must be checked next for expiry (connection or subscription).
    pub fn deadline(&self) -> Option<u64> {
        let c = &self.hub.config.client;
        let p = &self.hub.proxies;
        // The refresh proxies are asked when the connection or subscription expires.
        let conn_delay = if p.refresh.is_some() { 0 } else { c.expired_close_delay.as_secs() };
        let conn = self.expires_at.get().map(|t| t + conn_delay);
        let sub_delay = |s: &LocalSub| {
            if p.sub_refresh.is_some() && s.has(SUB_REFRESH_PROXY) {
                0
            } else {
                c.expired_sub_close_delay.as_secs()
            }
        };
        let subs = self.subs.values().filter_map(|s| s.expires_at().map(|t| t + sub_delay(s))).min();
        match (conn, subs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the session if its connection expired (3005); unsubscribes the client with
    /// 2501 from each subscription that expired, and the connection goes on (the
    /// client resubscribes with a new token).
    pub async fn check_expiry(&mut self) -> Outcome {
        let now = unix_now();
        if self.hub.proxies.refresh.is_some() || self.hub.proxies.sub_refresh.is_some() {
            // Boxed, as the commands are: it is rare, and the loop's future stays small.
            Box::pin(self.refresh_by_proxy(now)).await?;
        }
        let c = &self.hub.config.client;
        if self.expires_at.get().is_some_and(|t| t + c.expired_close_delay.as_secs() <= now) {
            return Err(Disconnect::EXPIRED);
        }
        let delay = c.expired_sub_close_delay.as_secs();
        let expired: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at().is_some_and(|t| t + delay <= now))
            .map(|(ch, _)| ch.to_string())
            .collect();
        for channel in expired {
            self.remove_sub(&channel).await;
            self.send(&Reply::Push(Push {
                id: 0,
                channel,
                kind: PushKind::Unsubscribe {
                    code: protocol::unsubscribe::EXPIRED,
                    reason: "subscription expired".into(),
                },
            }));
        }
        Ok(())
    }

    /// Asks the refresh proxy about the connection if it expired, and the sub_refresh
    /// proxy about each subscription that did (where the namespace uses it). An answer
    /// that it expired ends the connection (3005) or the subscription (2501); a failure
    /// is retried a little later, so that a backend's outage does not end them.
    async fn refresh_by_proxy(&mut self, now: u64) -> Outcome {
        let hub = self.hub.clone();
        if let Some(proxy) = &hub.proxies.refresh {
            if self.connected && self.expires_at.get().is_some_and(|t| t <= now) {
                let body = proxy::request(proxy, &self.proxy_conn());
                match self.ask::<proxy::RefreshResult>("refresh", proxy, body).await {
                    Ok(mut r) => {
                        if r.expired || r.expire_at().is_some_and(|t| t <= now) {
                            return Err(Disconnect::EXPIRED);
                        }
                        self.expires_at = r.expire_at().into();
                        match r.info() {
                            Ok(Some(info)) => self.set_conn_info(&protocol::json::one_line(info)),
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, "refresh proxy: bad info"),
                        }
                    }
                    Err(Refused::Disconnect(_)) => return Err(Disconnect::EXPIRED),
                    Err(Refused::Error(_)) => self.expires_at = Expiry(now + PROXY_RETRY.as_secs()),
                }
            }
        }
        if let Some(proxy) = &hub.proxies.sub_refresh {
            let due: Vec<String> = self
                .subs
                .iter()
                .filter(|(_, s)| s.has(SUB_REFRESH_PROXY) && s.expires_at().is_some_and(|t| t <= now))
                .map(|(ch, _)| ch.to_string())
                .collect();
            for channel in due {
                let mut body = proxy::request(proxy, &self.proxy_conn());
                body.insert("channel".into(), channel.clone().into());
                let answer = self.ask::<proxy::RefreshResult>("sub_refresh", proxy, body).await;
                let Some(sub) = self.subs.get_mut(channel.as_str()) else { continue };
                match answer {
                    Ok(mut r) if !r.expired && r.expire_at().is_none_or(|t| t > now) => {
                        sub.set_expires_at(r.expire_at());
                        match r.info() {
                            Ok(Some(info)) => sub.set_chan_info(&protocol::json::one_line(info)),
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, channel, "sub_refresh proxy: bad info"),
                        }
                    }
                    // Expired: unsubscribed below.
                    Ok(_) | Err(Refused::Disconnect(_)) => sub.set_expires_at(Some(0)),
                    Err(Refused::Error(_)) => sub.set_expires_at(Some(now + PROXY_RETRY.as_secs())),
                }
            }
        }
        Ok(())
    }

    /// Forgets the subscriptions the delivery lost (a gap: the client was told with
    /// 2500): out of the channel, its presence and the registry. Done before anything
    /// else the session does, so that the client's resubscribe finds the channel free.
    async fn forget_lost(&mut self) {
        let lost = self.client.take_lost();
        for channel in lost {
            self.remove_sub(&channel).await;
        }
    }

    /// Refreshes this client's presence in its channels (the broker expires entries
    /// not refreshed within three ping intervals).
    pub async fn refresh_presence(&mut self) {
        self.forget_lost().await;
        if self.counts_user_connection() {
            let ttl = self.presence_ttl();
            let _ = self.hub.broker.add_user_connection(&self.user, &self.client.id, ttl, usize::MAX).await;
        }
        for (channel, sub) in self.subs.iter() {
            if sub.has(SUB_PRESENCE) {
                let _ = self.hub.broker.add_presence(channel, self.info(sub.chan_info()), self.presence_ttl()).await;
            }
        }
    }

    fn presence_ttl(&self) -> Duration {
        (self.hub.config.client.ping_interval * 3).max(Duration::from_secs(30))
    }

    /// Whether the server API or the delivery asked anything of the session.
    pub fn has_control(&self) -> bool {
        self.client.asked()
    }

    /// Applies what the server API asked (server-side subscribe and unsubscribe).
    pub async fn apply_control(&mut self) -> Outcome {
        self.forget_lost().await;
        let requests = self.client.take_requests();
        for r in requests {
            match r {
                ControlRequest::Subscribe { channel } => {
                    if self.subs.contains_key(channel.as_str()) {
                        continue;
                    }
                    let resolved = match self.hub.channels.resolve(&channel) {
                        Ok(r) => r,
                        Err(_) => continue,
                    };
                    if self.subs.len() >= self.hub.config.client.channel_limit {
                        return Err(Disconnect::CHANNEL_LIMIT);
                    }
                    match self
                        .prepare(&channel, &resolved.options, &SubscribeRequest::default(), Grant::server_side())
                        .await
                    {
                        Ok(p) => {
                            let push = Reply::Push(Push {
                                id: 0,
                                channel: channel.clone(),
                                kind: PushKind::Subscribe(p.result.clone()),
                            });
                            self.finish(channel, p, encode(&push, self.client.format)).await;
                        }
                        Err(e) => tracing::debug!(error = %e, channel, "server-side subscribe failed"),
                    }
                }
                ControlRequest::Refresh { expired, expire_at } => {
                    if expired {
                        return Err(Disconnect::EXPIRED);
                    }
                    self.expires_at = expire_at.into();
                    let (expires, ttl) = ttl(self.expires_at.get());
                    self.send(&Reply::Push(Push {
                        id: 0,
                        channel: String::new(),
                        kind: PushKind::Refresh { expires, ttl },
                    }));
                }
                ControlRequest::Unsubscribe { channel } => {
                    if self.subs.contains_key(channel.as_str()) {
                        self.remove_sub(&channel).await;
                        self.send(&Reply::Push(Push {
                            id: 0,
                            channel,
                            kind: PushKind::Unsubscribe {
                                code: protocol::unsubscribe::SERVER,
                                reason: "server unsubscribe".into(),
                            },
                        }));
                    }
                }
            }
        }
        Ok(())
    }

    fn allow_command(&mut self) -> bool {
        let c = &self.hub.config.client;
        if c.command_rate == 0 {
            return true;
        }
        let now = clock_ms();
        let burst = c.command_burst.max(1) as f32;
        let elapsed = now.saturating_sub(self.refilled) as f32 / 1000.0;
        self.tokens = (self.tokens + elapsed * c.command_rate as f32).min(burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Handles one command.
    pub async fn handle(&mut self, cmd: Command) -> Outcome {
        self.forget_lost().await;
        self.count_command(&cmd.request);
        let id = cmd.id;
        if id == 0 {
            // The pong (an empty command), or an old-style ping.
            return match cmd.request {
                Request::None => {
                    self.ping_sent = None;
                    Ok(())
                }
                // `send` needs no reply, so it may come without an id.
                Request::Send { .. } if self.connected => Ok(()),
                _ => Err(Disconnect::BAD_REQUEST),
            };
        }
        if !self.connected {
            return match cmd.request {
                Request::Connect(req) => self.connect(id, req).await,
                // Anything before connect.
                _ => Err(Disconnect::BAD_REQUEST),
            };
        }
        if !self.allow_command() {
            self.error(id, ErrorReply::TOO_MANY_REQUESTS);
            return Ok(());
        }
        let result = match cmd.request {
            Request::None => Err(ErrorReply::METHOD_NOT_FOUND),
            Request::Connect(_) => return Err(Disconnect::BAD_REQUEST),
            Request::Subscribe(req) => return self.subscribe(id, req).await,
            Request::Unsubscribe { channel } => self.unsubscribe(&channel).await,
            Request::Publish { channel, data } => self.publish(&channel, data).await,
            Request::Presence { channel } => self.presence(&channel).await,
            Request::PresenceStats { channel } => self.presence_stats(&channel).await,
            Request::History(req) => self.history(req).await,
            Request::Rpc { method, data } => self.rpc(&method, data).await,
            Request::Send { .. } => return Ok(()),
            Request::Refresh { token } => return self.refresh(id, &token).await,
            Request::SubRefresh { channel, token } => return self.sub_refresh(id, &channel, &token).await,
        };
        match result {
            Ok(r) => self.reply(id, r),
            Err(e) => self.error(id, e),
        }
        Ok(())
    }

    /// A connection token's claims: verified, or only read with `client.insecure`.
    async fn connect_token(&self, token: &str) -> Result<ConnectToken, TokenError> {
        if self.hub.config.client.insecure {
            insecure_connect(token)
        } else {
            self.hub.verifier.verify_connect(token).await
        }
    }

    /// A subscription token's claims: verified, or only read with `client.insecure`.
    async fn subscribe_token(&self, token: &str) -> Result<SubscribeToken, TokenError> {
        if self.hub.config.client.insecure {
            insecure_subscribe(token)
        } else {
            self.hub.sub_verifier.verify_subscribe(token).await
        }
    }

    /// What a refused token gets: an expired one 109 (the client gets a new one), one
    /// that could not be checked 100 (temporary), any other the end of the connection
    /// with 3500.
    fn token_refused(&self, id: u32, e: TokenError, kind: &str) -> Outcome {
        match e {
            TokenError::Expired => {
                self.error(id, ErrorReply::TOKEN_EXPIRED);
                Ok(())
            }
            TokenError::KeysUnavailable(e) => {
                tracing::warn!(error = %e, kind, "token not checked: the keys are unavailable");
                self.error(id, ErrorReply::INTERNAL);
                Ok(())
            }
            e => {
                tracing::debug!(error = %e, kind, "token refused");
                Err(Disconnect::INVALID_TOKEN)
            }
        }
    }

    async fn connect(&mut self, id: u32, req: ConnectRequest) -> Outcome {
        let hub = self.hub.clone();
        let c = &hub.config.client;
        let mut connect_data = Bytes::new();
        if !req.headers.is_empty() && !hub.proxies.emulated_names.is_empty() {
            let emulated = hub.proxies.keep_emulated(&req.headers);
            if !emulated.is_empty() {
                self.extras().emulated = emulated;
            }
        }
        let token = if !req.token.is_empty() {
            match self.connect_token(&req.token).await {
                Ok(t) => t,
                Err(e) => return self.token_refused(id, e, "connection"),
            }
        } else if let Some(proxy) = &hub.proxies.connect {
            // The backend decides who connects (from the forwarded cookie, say).
            let conn = proxy::Conn { user: None, meta: &[], ..self.proxy_conn() };
            let mut body = proxy::request(proxy, &conn);
            for (key, value) in [("name", &req.name), ("version", &req.version)] {
                if !value.is_empty() {
                    body.insert(key.into(), value.as_str().into());
                }
            }
            proxy::put_data(proxy, &mut body, &req.data);
            let answer = self
                .ask::<proxy::ConnectResult>("connect", proxy, body)
                .await
                .and_then(|r| r.into_grant().map_err(|e| proxy_failed("connect", proxy::ProxyFailure(e))));
            match answer {
                Ok((t, data)) => {
                    connect_data = self.for_client(data);
                    t
                }
                Err(Refused::Error(e)) => {
                    self.error(id, e);
                    return Ok(());
                }
                Err(Refused::Disconnect(d)) => return Err(d),
            }
        } else if c.allow_anonymous_connect_without_token || c.insecure {
            ConnectToken::default()
        } else {
            self.error(id, ErrorReply::UNAUTHORIZED);
            return Err(Disconnect::INVALID_TOKEN);
        };
        if token.expire_at.is_some_and(|t| t <= unix_now()) {
            self.error(id, ErrorReply::TOKEN_EXPIRED);
            return Ok(());
        }
        self.user = token.user.as_str().into();
        self.set_conn_info(&token.info.clone().map(protocol::json::one_line).unwrap_or_default());
        self.expires_at = token.expire_at.into();
        // What the server API's `connections` shows; `meta` goes nowhere else (not to
        // clients: not in presence, joins, leaves or publications).
        let details = Details::new(
            &req.name,
            &req.version,
            self.transport(),
            token.jti.as_deref(),
            token.issued_at,
            token.meta.as_deref().unwrap_or_default(),
        );
        self.register_connection(details)?;
        self.connected = true;
        // The user's connections on every node (a broker across processes counts them).
        if c.user_connection_limit > 0 && !self.user.is_empty() {
            let counted = self.hub.broker.add_user_connection(
                &self.user,
                &self.client.id,
                self.presence_ttl(),
                c.user_connection_limit,
            );
            match counted.await {
                Ok(true) => {}
                Ok(false) => {
                    self.unregister_connection();
                    return Err(Disconnect::CONNECTION_LIMIT);
                }
                // The count is best effort while the broker is unreachable.
                Err(e) => tracing::warn!(error = %e, "counting the user's connections failed"),
            }
        }

        // Server-side subscriptions: the token's, and the user's personal channel.
        let mut channels: Vec<String> = token.channels.clone();
        channels.extend(token.subs.keys().cloned());
        if c.user_subscribe_to_personal && !self.user.is_empty() {
            channels.push(self.hub.channels.personal(&c.user_personal_channel_namespace, &self.user));
        }
        channels.sort();
        channels.dedup();
        if channels.len() > c.channel_limit {
            return Err(Disconnect::CHANNEL_LIMIT);
        }
        let mut prepared = Vec::new();
        for channel in channels {
            let resolved = match self.hub.channels.resolve(&channel) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, channel, "server-side subscription to an unknown channel");
                    return Err(Disconnect::BAD_REQUEST);
                }
            };
            let recover = req.subs.get(&channel).cloned().unwrap_or_default();
            let chan_info =
                token.subs.get(&channel).and_then(|o| o.info.clone()).map(protocol::json::one_line).unwrap_or_default();
            let grant = Grant { chan_info, ..Grant::server_side() };
            match self.prepare(&channel, &resolved.options, &recover, grant).await {
                Ok(mut p) => {
                    if let Some(data) = token.subs.get(&channel).and_then(|o| o.data.clone()) {
                        p.result.data = self.for_client(data);
                    }
                    prepared.push((channel, p))
                }
                Err(e) => {
                    for (ch, p) in prepared {
                        self.hub.unregister(&ch, p.pending.seq).await;
                    }
                    self.error(id, e);
                    return Err(Disconnect::SERVER_ERROR);
                }
            }
        }
        // With a refresh proxy, the hub refreshes the connection: the client is not told
        // it expires.
        let (expires, ttl) = if hub.proxies.refresh.is_some() { (false, 0) } else { ttl(self.expires_at.get()) };
        let result = ConnectResult {
            client: self.client.id.to_string(),
            version: VERSION.into(),
            expires,
            ttl,
            data: connect_data,
            subs: prepared.iter().map(|(ch, p)| (ch.clone(), p.result.clone())).collect(),
            ping: self.hub.config.client.ping_interval.as_secs() as u32,
            pong: !self.hub.config.client.ping_interval.is_zero(),
            node: self.hub.node.clone(),
            session: self.extras.as_ref().map(|x| x.emulation_session.clone()).unwrap_or_default(),
            ..Default::default()
        };
        self.reply(id, ReplyResult::Connect(result));
        for (channel, p) in prepared {
            self.finish(channel, p, Bytes::new()).await;
        }
        Ok(())
    }

    fn register_connection(&mut self, details: Details) -> Outcome {
        let c = &self.hub.config.client;
        let mut conns = lock(&self.hub.conns);
        if c.connection_limit != 0 && conns.total >= c.connection_limit {
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        if c.user_connection_limit > 0
            && !self.user.is_empty()
            && conns.users.count(&self.user) >= c.user_connection_limit
        {
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        if let Some(ip) = self.remote_ip() {
            if c.ip_connection_limit > 0 && conns.ips.get(&ip).copied().unwrap_or(0) >= c.ip_connection_limit {
                return Err(Disconnect::CONNECTION_LIMIT);
            }
            *conns.ips.entry(ip).or_default() += 1;
        }
        conns.total += 1;
        self.client.set_details(details);
        conns.users.insert(&self.user, self.client.clone());
        self.hub.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn subscribe(&mut self, id: u32, req: SubscribeRequest) -> Outcome {
        let channel = req.channel.clone();
        let resolved = match self.hub.channels.resolve(&channel) {
            Ok(r) => r,
            Err(e) => {
                self.error(id, e);
                return Ok(());
            }
        };
        if self.subs.contains_key(channel.as_str()) {
            self.error(id, ErrorReply::ALREADY_SUBSCRIBED);
            return Ok(());
        }
        if self.subs.len() >= self.hub.config.client.channel_limit {
            self.error(id, ErrorReply::LIMIT_EXCEEDED);
            return Ok(());
        }
        let insecure = self.hub.config.client.insecure;
        let hub = self.hub.clone();
        let mut chan_info = Bytes::new();
        let mut expires_at = None;
        let mut sub_data = Bytes::new();
        // The subscribe proxy decides subscriptions without a token, but for
        // user-limited channels (as Centrifugo).
        let sub_proxy = hub
            .proxies
            .subscribe
            .as_ref()
            .filter(|_| resolved.options.subscribe_proxy_enabled && resolved.users.is_none());
        if !req.token.is_empty() {
            let token = match self.subscribe_token(&req.token).await {
                Ok(t) => t,
                Err(e) => return self.token_refused(id, e, "subscription"),
            };
            if let Err(e) = token.check(&channel, &self.user, &self.client.id) {
                tracing::debug!(error = %e, channel, "subscription token for another channel, user or client");
                return Err(Disconnect::INVALID_TOKEN);
            }
            if token.expire_at.is_some_and(|t| t <= unix_now()) {
                self.error(id, ErrorReply::TOKEN_EXPIRED);
                return Ok(());
            }
            chan_info = token.options.info.map(protocol::json::one_line).unwrap_or_default();
            expires_at = token.expire_at;
        } else if let Some(proxy) = sub_proxy {
            let mut body = proxy::request(proxy, &self.proxy_conn());
            body.insert("channel".into(), channel.as_str().into());
            proxy::put_data(proxy, &mut body, &req.data);
            let answer = self
                .ask::<proxy::SubscribeResult>("subscribe", proxy, body)
                .await
                .and_then(|r| r.into_grant().map_err(|e| proxy_failed("subscribe", proxy::ProxyFailure(e))));
            match answer {
                Ok(g) => {
                    chan_info = protocol::json::one_line(g.info);
                    expires_at = g.expire_at;
                    sub_data = self.for_client(g.data);
                }
                Err(Refused::Error(e)) => {
                    self.error(id, e);
                    return Ok(());
                }
                Err(Refused::Disconnect(d)) => return Err(d),
            }
        } else {
            let o = &resolved.options;
            let allowed = if resolved.private {
                false
            } else if let Some(users) = &resolved.users {
                !self.user.is_empty() && users.iter().any(|u| **u == *self.user)
            } else {
                insecure
                    || (self.user.is_empty() && o.allow_subscribe_for_anonymous)
                    || (!self.user.is_empty() && o.allow_subscribe_for_client)
            };
            if !allowed {
                self.error(id, ErrorReply::PERMISSION_DENIED);
                return Ok(());
            }
        }
        // A tags filter where the namespace allows it, well formed: 107 otherwise.
        let filter = match &req.tf {
            None => None,
            Some(_) if !resolved.options.allow_tags_filter => {
                tracing::debug!(channel, "tags filter where the namespace does not allow it");
                self.error(id, ErrorReply::BAD_REQUEST);
                return Ok(());
            }
            Some(tf) => match crate::filter::validate(tf) {
                Ok(()) => Some(Arc::new(tf.clone())),
                Err(e) => {
                    tracing::debug!(channel, error = %e, "tags filter refused");
                    self.error(id, ErrorReply::BAD_REQUEST);
                    return Ok(());
                }
            },
        };
        let grant = Grant { chan_info, expires_at, filter, server_side: false };
        // With a sub_refresh proxy, the hub refreshes the subscription: the client is not
        // told it expires.
        let server_refresh = hub.proxies.sub_refresh.is_some() && resolved.options.sub_refresh_proxy_enabled;
        match self.prepare(&channel, &resolved.options, &req, grant).await {
            Ok(mut p) => {
                p.result.data = sub_data;
                if server_refresh {
                    (p.result.expires, p.result.ttl) = (false, 0);
                }
                let reply =
                    encode(&Reply::Result { id, result: ReplyResult::Subscribe(p.result.clone()) }, self.client.format);
                self.finish(channel, p, reply).await;
            }
            Err(e) => self.error(id, e),
        }
        Ok(())
    }

    /// Registers a subscription and works out its result (recovery included); the
    /// subscription buffers until [`Session::finish`].
    async fn prepare(
        &self,
        channel: &str,
        o: &Arc<ChannelOptions>,
        req: &SubscribeRequest,
        grant: Grant,
    ) -> Result<Prepared, ErrorReply> {
        let Grant { chan_info, expires_at, filter, server_side } = grant;
        let history = o.has_history();
        let recoverable = history && (o.force_recovery || (o.allow_recovery && (req.recoverable || req.recover)));
        let positioned = history && (recoverable || o.force_positioning || (o.allow_positioning && req.positioned));
        let join_leave = o.join_leave && (o.force_push_join_leave || req.join_leave);
        // Deltas need positions: the offset names the publication a delta starts from.
        // Not with a tags filter (as Centrifugo): the client does not hold every
        // publication, so none could be the base of the next.
        let delta =
            positioned && filter.is_none() && !req.delta.is_empty() && o.allowed_delta_types.contains(&req.delta);
        let sub = SubOptions {
            positioned,
            join_leave,
            delta,
            filter: filter.clone(),
            server_side,
            // Only on a client's own subscription: a server-side one has no subscribe
            // reply to carry the id. Only on JSON: over Protobuf, centrifuge-js (5.8)
            // holds the int64 id as a Long object and compares ids with `===`, so it
            // would route no compacted push; it offers the flag all the same.
            compact: !server_side
                && self.client.format == Format::Json
                && o.allow_channel_compaction
                && req.flag & SubscribeRequest::FLAG_CHANNEL_COMPACTION != 0,
            pusher: false,
        };
        let pending = self.hub.register(channel, &self.client, sub).await?;
        let (expires, ttl) = ttl(expires_at);
        let mut result =
            SubscribeResult { expires, ttl, recoverable, positioned, delta, id: pending.id, ..Default::default() };
        let mut last = 0;
        if positioned {
            let outcome = if recoverable && req.recover {
                self.recover(channel, o, req, filter.as_deref()).await
            } else {
                self.hub.history(channel, o, None, Some(0), false).await.map(|(_, top)| (Vec::new(), top, false))
            };
            let (pubs, top, recovered) = match outcome {
                Ok(r) => r,
                Err(e) => {
                    self.hub.unregister(channel, pending.seq).await;
                    return Err(e);
                }
            };
            if req.recover && recoverable {
                result.was_recovering = true;
                result.recovered = recovered;
                if !recovered && req.flag & SubscribeRequest::FLAG_REJECT_UNRECOVERED != 0 {
                    self.hub.unregister(channel, pending.seq).await;
                    return Err(ErrorReply::UNRECOVERABLE_POSITION);
                }
            }
            last = top.offset;
            result.epoch = top.epoch;
            result.offset = top.offset;
            if self.can_carry(&pubs) {
                result.publications = pubs.iter().map(|p| (**p).clone()).collect();
            }
        }
        Ok(Prepared { pending, result, last, local: LocalSub::new(o, &chan_info, expires_at) })
    }

    /// Recovery: the publications after the client's position, or `recovered: false`.
    /// With a tags filter, only those that match; whether the position is recovered is
    /// decided on the whole stream, so positions stay exact.
    async fn recover(
        &self,
        channel: &str,
        o: &ChannelOptions,
        req: &SubscribeRequest,
        filter: Option<&FilterNode>,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition, bool), ErrorReply> {
        let keep = |p: &Arc<Publication>| filter.is_none_or(|f| crate::filter::matches(f, &p.tags));
        if o.force_recovery_mode == RecoveryMode::Cache {
            // The latest publication (the latest that matches, with a filter), when the
            // client does not hold it yet.
            let limit = if filter.is_some() { None } else { Some(1) };
            let (pubs, top) = self.hub.history(channel, o, None, limit, false).await?;
            let latest = pubs.into_iter().rev().find(keep);
            let newer = |p: &Arc<Publication>| top.epoch != req.epoch || p.offset > req.offset;
            return Ok((latest.filter(newer).into_iter().collect(), top, true));
        }
        let limit =
            if o.recovery_max_publication_limit > 0 { o.recovery_max_publication_limit } else { o.history_size };
        let since = StreamPosition { offset: req.offset, epoch: req.epoch.clone() };
        let (pubs, top) = self.hub.history(channel, o, Some(since), Some(limit + 1), false).await?;
        let recovered = top.epoch == req.epoch
            && req.offset <= top.offset
            && pubs.len() <= limit
            && match pubs.first() {
                Some(first) => first.offset == req.offset + 1,
                None => top.offset == req.offset,
            };
        if recovered {
            Ok((pubs.into_iter().filter(keep).collect(), top, true))
        } else {
            Ok((Vec::new(), top, false))
        }
    }

    /// Sends the result (`first`, or nothing), makes the subscription live, joins.
    async fn finish(&mut self, channel: String, p: Prepared, first: Bytes) {
        // The client's delta base: the last publication the result carries (it is not
        // carried when the result is not sent, as in a server-side subscribe push).
        let base = if first.is_empty() { None } else { p.result.publications.last().map(|p| p.offset) };
        let first = if first.is_empty() { None } else { Some(first) };
        if !self.hub.go_live(&p.pending, first, p.last, base, &p.result.epoch, &self.client) {
            // A gap in what arrived while subscribing: the client was told (2500) and
            // resubscribes; the subscription goes no further.
            self.hub.unregister(&channel, p.pending.seq).await;
            return;
        }
        let (presence, join_leave) = (p.local.has(SUB_PRESENCE), p.local.has(SUB_JOIN_LEAVE));
        let info = self.info(p.local.chan_info());
        self.subs.insert(channel.as_str().into(), p.local);
        if presence {
            if let Err(e) = self.hub.broker.add_presence(&channel, info.clone(), self.presence_ttl()).await {
                tracing::warn!(error = %e, channel, "presence failed");
            }
        }
        if join_leave {
            let _ = self.hub.broker.publish_join(&channel, info).await;
        }
    }

    async fn remove_sub(&mut self, channel: &str) {
        let Some(sub) = self.subs.remove(channel) else { return };
        self.hub.unregister(channel, self.client.seq).await;
        if sub.has(SUB_PRESENCE) {
            let _ = self.hub.broker.remove_presence(channel, &self.client.id, &self.user).await;
        }
        if sub.has(SUB_JOIN_LEAVE) {
            let _ = self.hub.broker.publish_leave(channel, self.info(sub.chan_info())).await;
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> Result<ReplyResult, ErrorReply> {
        self.remove_sub(channel).await;
        Ok(ReplyResult::Unsubscribe)
    }

    /// Whether the client may act on `channel`: as a subscriber of it, as an
    /// authenticated client, or as an anonymous one, as the options allow.
    fn allowed(&self, channel: &str, subscriber: bool, client: bool, anonymous: bool) -> bool {
        self.hub.config.client.insecure
            || (subscriber && self.subs.contains_key(channel))
            || (client && !self.user.is_empty())
            || (anonymous && self.user.is_empty())
    }

    async fn publish(&mut self, channel: &str, data: Bytes) -> Result<ReplyResult, ErrorReply> {
        let resolved = self.hub.channels.resolve(channel)?;
        let o = &resolved.options;
        let hub = self.hub.clone();
        // The publish proxy decides instead of the options.
        let pub_proxy = hub.proxies.publish.as_ref().filter(|_| o.publish_proxy_enabled);
        if pub_proxy.is_none()
            && !self.allowed(
                channel,
                o.allow_publish_for_subscriber,
                o.allow_publish_for_client,
                o.allow_publish_for_anonymous,
            )
        {
            return Err(ErrorReply::PERMISSION_DENIED);
        }
        if data.is_empty() {
            return Err(ErrorReply::BAD_REQUEST);
        }
        // Checked here, once: a JSON command's data was parsed with the command, a
        // Protobuf one's bytes are looked at now. Delivery trusts the kind.
        let (mut data, mut kind) = if self.client.format == Format::Json {
            (protocol::json::one_line(data), PayloadKind::Json)
        } else {
            let kind = PayloadKind::of(&data);
            (data, kind)
        };
        let mut skip_history = false;
        if let Some(proxy) = pub_proxy {
            let mut body = proxy::request(proxy, &self.proxy_conn());
            body.insert("channel".into(), channel.into());
            proxy::put_data(proxy, &mut body, &data);
            match self.ask::<proxy::PublishResult>("publish", proxy, body).await {
                Ok(mut r) => {
                    skip_history = r.skip_history;
                    // The backend's data instead of the client's.
                    match r.data() {
                        Ok(Some(new)) if !new.is_empty() => {
                            let lined = protocol::json::one_line(new.clone());
                            (data, kind) = match PayloadKind::of(&lined) {
                                PayloadKind::Json => (lined, PayloadKind::Json),
                                _ => (new, PayloadKind::Binary),
                            };
                        }
                        Ok(_) => {}
                        Err(e) => return Err(proxy_error(proxy_failed("publish", proxy::ProxyFailure(e)))),
                    }
                }
                Err(Refused::Disconnect(d)) => {
                    self.client.close(d);
                    return Err(ErrorReply::INTERNAL);
                }
                Err(Refused::Error(e)) => return Err(e),
            }
        }
        let chan_info = self.subs.get(channel).map_or(&[][..], |s| s.chan_info());
        let publication =
            Publication { data, info: Some(self.info(chan_info)), time: now_ms(), kind, ..Default::default() };
        self.hub.publish(channel, o, publication, None, skip_history).await?;
        Ok(ReplyResult::Publish)
    }

    /// An RPC: answered by the RPC proxy where its namespace uses it; 104 otherwise.
    async fn rpc(&mut self, method: &str, data: Bytes) -> Result<ReplyResult, ErrorReply> {
        let hub = self.hub.clone();
        let Some(proxy) = hub.proxies.rpc.as_ref().filter(|_| hub.config.rpc.proxied(method)) else {
            return Err(ErrorReply::METHOD_NOT_FOUND);
        };
        let mut body = proxy::request(proxy, &self.proxy_conn());
        if !method.is_empty() {
            body.insert("method".into(), method.into());
        }
        proxy::put_data(proxy, &mut body, &data);
        match self.ask::<proxy::RpcResult>("rpc", proxy, body).await {
            Ok(r) => match r.into_data() {
                Ok(data) => Ok(ReplyResult::Rpc { data: self.for_client(data) }),
                Err(e) => Err(proxy_error(proxy_failed("rpc", proxy::ProxyFailure(e)))),
            },
            Err(Refused::Disconnect(d)) => {
                self.client.close(d);
                Err(ErrorReply::INTERNAL)
            }
            Err(Refused::Error(e)) => Err(e),
        }
    }

    async fn history(&mut self, req: HistoryRequest) -> Result<ReplyResult, ErrorReply> {
        let resolved = self.hub.channels.resolve(&req.channel)?;
        let o = &resolved.options;
        if !o.has_history() {
            return Err(ErrorReply::NOT_AVAILABLE);
        }
        if !self.allowed(
            &req.channel,
            o.allow_history_for_subscriber,
            o.allow_history_for_client,
            o.allow_history_for_anonymous,
        ) {
            return Err(ErrorReply::PERMISSION_DENIED);
        }
        let limit = match req.limit {
            0 => Some(0),
            n if n < 0 => None,
            n => Some(n as usize),
        };
        let (pubs, top) = self.hub.history(&req.channel, o, req.since.clone(), limit, req.reverse).await?;
        if let Some(since) = &req.since {
            let lost = since.epoch != top.epoch
                || since.offset > top.offset
                || (!req.reverse && limit != Some(0) && pubs.first().is_some_and(|p| p.offset != since.offset + 1))
                || (pubs.is_empty() && limit != Some(0) && top.offset > since.offset);
            if lost {
                return Err(ErrorReply::UNRECOVERABLE_POSITION);
            }
        }
        let publications =
            if self.can_carry(&pubs) { pubs.iter().map(|p| (**p).clone()).collect() } else { Vec::new() };
        Ok(ReplyResult::History { publications, position: top })
    }

    async fn presence(&mut self, channel: &str) -> Result<ReplyResult, ErrorReply> {
        let resolved = self.hub.channels.resolve(channel)?;
        let o = &resolved.options;
        if !o.presence {
            return Err(ErrorReply::NOT_AVAILABLE);
        }
        if !self.allowed(
            channel,
            o.allow_presence_for_subscriber,
            o.allow_presence_for_client,
            o.allow_presence_for_anonymous,
        ) {
            return Err(ErrorReply::PERMISSION_DENIED);
        }
        let p = self.hub.broker.presence(channel).await.map_err(super::internal)?;
        Ok(ReplyResult::Presence(p.into_iter().collect()))
    }

    async fn presence_stats(&mut self, channel: &str) -> Result<ReplyResult, ErrorReply> {
        let resolved = self.hub.channels.resolve(channel)?;
        let o = &resolved.options;
        if !o.presence {
            return Err(ErrorReply::NOT_AVAILABLE);
        }
        if !self.allowed(
            channel,
            o.allow_presence_for_subscriber,
            o.allow_presence_for_client,
            o.allow_presence_for_anonymous,
        ) {
            return Err(ErrorReply::PERMISSION_DENIED);
        }
        let s = self.hub.broker.presence_stats(channel).await.map_err(super::internal)?;
        Ok(ReplyResult::PresenceStats { num_clients: s.clients, num_users: s.users })
    }

    async fn refresh(&mut self, id: u32, token: &str) -> Outcome {
        let t = match self.connect_token(token).await {
            Ok(t) => t,
            Err(e) => return self.token_refused(id, e, "connection"),
        };
        if *t.user != *self.user {
            return Err(Disconnect::INVALID_TOKEN);
        }
        self.expires_at = t.expire_at.into();
        let (expires, ttl) = ttl(self.expires_at.get());
        self.reply(
            id,
            ReplyResult::Refresh { client: self.client.id.to_string(), version: VERSION.into(), expires, ttl },
        );
        Ok(())
    }

    async fn sub_refresh(&mut self, id: u32, channel: &str, token: &str) -> Outcome {
        if !self.subs.contains_key(channel) {
            self.error(id, ErrorReply::PERMISSION_DENIED);
            return Ok(());
        }
        let t = match self.subscribe_token(token).await {
            Ok(t) => t,
            Err(e) => return self.token_refused(id, e, "subscription"),
        };
        if t.check(channel, &self.user, &self.client.id).is_err() {
            return Err(Disconnect::INVALID_TOKEN);
        }
        if let Some(s) = self.subs.get_mut(channel) {
            s.set_expires_at(t.expire_at);
        }
        let (expires, ttl) = ttl(t.expire_at);
        self.reply(id, ReplyResult::SubRefresh { expires, ttl });
        Ok(())
    }

    /// Ends the session: leaves every channel, frees its place in the limits.
    pub async fn close(&mut self) {
        let channels: Vec<String> = self.subs.keys().map(|c| c.to_string()).collect();
        for ch in channels {
            self.remove_sub(&ch).await;
        }
        if !self.connected {
            return;
        }
        if self.hub.config.client.user_connection_limit > 0 && !self.user.is_empty() {
            let _ = self.hub.broker.remove_user_connection(&self.user, &self.client.id).await;
        }
        self.unregister_connection();
    }

    /// Frees the session's place in the limits of this node.
    fn unregister_connection(&mut self) {
        if !self.connected {
            return;
        }
        self.connected = false;
        let mut conns = lock(&self.hub.conns);
        conns.total = conns.total.saturating_sub(1);
        conns.users.remove(&self.user, self.client.seq);
        if let Some(ip) = self.remote_ip() {
            if let Some(n) = conns.ips.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    conns.ips.remove(&ip);
                }
            }
        }
    }
}

/// A proxy that could not answer: logged, and error 100 for the client.
fn proxy_failed(which: &'static str, e: proxy::ProxyFailure) -> Refused {
    tracing::warn!(error = %e, proxy = which, "proxy failed");
    Refused::Error(ErrorReply::INTERNAL)
}

fn proxy_error(r: Refused) -> ErrorReply {
    match r {
        Refused::Error(e) => e,
        Refused::Disconnect(_) => ErrorReply::INTERNAL,
    }
}

/// The claims of a token taken without checking its signature (`client.insecure`).
fn insecure_claims(token: &str) -> Result<serde_json::Value, TokenError> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or_else(|| TokenError::Invalid("not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Invalid(e.to_string()))
}

fn insecure_connect(token: &str) -> Result<ConnectToken, TokenError> {
    let c = insecure_claims(token)?;
    Ok(ConnectToken {
        user: c["sub"].as_str().unwrap_or_default().to_owned(),
        info: c.get("info").map(|v| Bytes::from(v.to_string())),
        meta: c.get("meta").map(|v| Bytes::from(v.to_string())),
        jti: c["jti"].as_str().map(str::to_owned),
        issued_at: c["iat"].as_u64(),
        channels: c["channels"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        ..Default::default()
    })
}

fn insecure_subscribe(token: &str) -> Result<SubscribeToken, TokenError> {
    let c = insecure_claims(token)?;
    let mut t = SubscribeToken {
        user: c["sub"].as_str().unwrap_or_default().to_owned(),
        channel: c["channel"].as_str().unwrap_or_default().to_owned(),
        ..Default::default()
    };
    t.options.info = c.get("info").map(|v| Bytes::from(v.to_string()));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_subscription_with_its_key_fits_the_allocators_32_byte_class() {
        assert!(std::mem::size_of::<(Box<str>, LocalSub)>() <= 32, "{}", std::mem::size_of::<(Box<str>, LocalSub)>());
    }

    #[test]
    fn a_subscription_keeps_its_options_flags_info_and_expiry() {
        let o = ChannelOptions { presence: true, sub_refresh_proxy_enabled: true, ..ChannelOptions::default() };
        let mut s = LocalSub::new(&o, b"{}", Some(1_700_000_000));
        assert!(s.has(SUB_PRESENCE) && s.has(SUB_REFRESH_PROXY) && !s.has(SUB_JOIN_LEAVE));
        assert_eq!((s.chan_info(), s.expires_at()), (&b"{}"[..], Some(1_700_000_000)));
        s.set_chan_info(b"");
        s.set_expires_at(None);
        assert_eq!((s.chan_info(), s.expires_at()), (&[][..], None));
        s.set_expires_at(Some(0));
        assert_eq!(s.expires_at(), Some(0), "expired now");
        s.set_expires_at(Some(u64::MAX));
        assert!(s.expires_at().is_some(), "far off, not never");
    }
}
