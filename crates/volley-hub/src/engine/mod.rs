//! The engine: connected clients, who is subscribed to what on this node, and the
//! delivery of what the broker hands over.
//!
//! A publication arrives from the broker once per node; the engine encodes its push
//! once per wire format, lazily, and queues the same bytes to every local subscriber.
//! A subscription being set up buffers what arrives while its history is read, so that
//! nothing falls between the history and the live stream; positioned subscriptions
//! check that offsets follow each other, and a gap unsubscribes the client with 2500
//! (it resubscribes and recovers; a server-side subscription disconnects with 3010)
//! instead of passing silently. A subscription with a tags filter skips what does not
//! match.

pub(crate) mod channel;
pub(crate) mod client;
pub(crate) mod keyed;
pub(crate) mod session;
pub(crate) mod users;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

pub use channel::ConfigError;

use crate::auth::TokenVerifier;
use crate::broker::{BoxFuture, Broker, BrokerEvents, HistoryQuery, MemoryBroker, PublishOptions, PublishResult};
use crate::config::HubConfig;
use crate::protocol::{
    self, ClientInfo, Disconnect, ErrorReply, FilterNode, Format, PayloadKind, Publication, Push, PushKind, Reply,
    StreamPosition,
};
use channel::Channels;
use client::{ClientShared, Item};
use keyed::Keyed;

const SHARDS: usize = 64;

/// Channels with at most this many subscribers have their parked subscribers written
/// to by the publisher itself, at once; larger ones hand them to their parkings'
/// writers, which spread the writes over the cores. A write to a parked connection
/// costs about 10 µs: 32 of them keep a publisher busy about a third of a millisecond.
/// Written at once, a broadcast to 100 channels of one subscriber each reaches its
/// first subscribers before the last channel is handled: in `volley bench-hub -c 10000
/// --rates 10000 --batches 100` (server and generator on a core each), the median
/// latency went from 2.2-4.0 ms to 2.0-2.2 ms over three runs.
const INLINE_FANOUT: usize = 32;

/// The hub: embed it in an application (see the crate's documentation), or run it as
/// `volley serve`. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("node", &self.inner.node).finish_non_exhaustive()
    }
}

pub(crate) struct HubInner {
    pub config: HubConfig,
    pub channels: Channels,
    pub broker: Arc<dyn Broker>,
    pub verifier: TokenVerifier,
    pub sub_verifier: TokenVerifier,
    /// The proxies to the application's backend.
    pub(crate) proxies: crate::proxy::Proxies,
    /// This node's id.
    pub node: String,
    registry: Box<[Mutex<Shard>]>,
    pub(crate) conns: Mutex<Connections>,
    pub metrics: Metrics,
    /// The next channel id for channel compaction.
    channel_ids: AtomicU64,
    /// The emulation sessions on this node (`/connection/http_stream`, `/connection/sse`,
    /// `/connection/long_poll`): where their commands go.
    pub(crate) emulation: crate::transport::emulation::Sessions,
    /// The long-polling sessions on this node: what waits for their next poll.
    pub(crate) long_polls: crate::transport::long_poll::Polls,
    /// When the hub started (the API's `info`).
    pub(crate) started: std::time::Instant,
    /// Surveys waiting for the other nodes' answers, by id.
    surveys: Mutex<HashMap<u64, tokio::sync::mpsc::UnboundedSender<serde_json::Value>>>,
    survey_ids: AtomicU64,
    /// pusher-js's HTTP fallback sessions on this node.
    pub(crate) pusher_xhr: crate::pusher::xhr::XhrSessions,
    /// Pusher channels whose subscription count is being told.
    pub(crate) pusher_counts: crate::pusher::count::Counts,
    /// Pusher connections on this node, by app id (each app's `max_connections`).
    pub(crate) pusher_conns: Mutex<HashMap<String, usize>>,
    /// The Pusher apps' webhooks.
    pub(crate) webhooks: crate::pusher::webhook::Webhooks,
    /// The WebSocket configurations of the client endpoints, shared by their
    /// connections.
    pub(crate) websocket: crate::transport::WebSocketConfigs,
    /// The Pusher apps of the configuration, shared by their connections.
    pub(crate) pusher_apps: Box<[Arc<crate::pusher::PusherApp>]>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted.
    pub connections_total: AtomicU64,
    /// Commands received.
    pub commands_total: AtomicU64,
    /// Replies and pushes queued to clients.
    pub messages_out_total: AtomicU64,
    /// Publications received from the broker.
    pub publications_total: AtomicU64,
    /// Transport connections open now (a client counts from its handshake to the end
    /// of its closing handshake, connected or not).
    pub open_connections: AtomicU64,
    /// Connections parked now (idle, held without a task).
    pub parked_connections: AtomicU64,
    /// Times a connection was parked.
    pub parks_total: AtomicU64,
    /// Errors returned to clients, by code.
    pub errors: Mutex<HashMap<u32, u64>>,
    /// Commands received, by method.
    pub commands: Mutex<HashMap<&'static str, u64>>,
    /// From a reply or push being queued for a client to its frame being written.
    pub delivery: Histogram,
}

/// A histogram with fixed buckets (seconds), for `/metrics`.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in seconds.
    pub bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative).
    pub counts: Box<[AtomicU64]>,
    /// Observations above the last bound.
    pub over: AtomicU64,
    /// The sum of the observations, in microseconds.
    pub sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        const BOUNDS: &[f64] =
            &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        Histogram {
            bounds: BOUNDS,
            counts: BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            over: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match self.bounds.iter().position(|b| secs <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The connected clients of this node, for limits and the server API, which reaches
/// them by user (and client id) alone.
#[derive(Default)]
pub(crate) struct Connections {
    /// Each user's sessions (anonymous ones under ""), by the client's `seq`.
    pub users: users::Users,
    pub ips: HashMap<std::net::IpAddr, usize>,
    pub total: usize,
}

/// A connected session, as the server API reaches it from outside its task.
#[derive(Clone)]
pub(crate) struct Connected {
    pub client: Arc<ClientShared>,
}

impl Connected {
    /// What the server API's `connections` shows of it, a session of `user`.
    fn details(&self, user: &str) -> ConnectionInfo {
        let no_details = Details::default();
        let d = self.client.details().unwrap_or(&no_details);
        ConnectionInfo {
            client: self.client.id.to_string(),
            user: user.to_owned(),
            app_name: d.app_name().to_owned(),
            app_version: d.app_version().to_owned(),
            transport: d.transport().name(),
            protocol: self.client.format,
            token_uid: d.token_uid().map(str::to_owned),
            token_issued_at: d.token_issued_at(),
            meta: Bytes::copy_from_slice(d.meta()),
        }
    }
}

/// A transport, as the server API and the proxies name it: a byte, where a name
/// takes sixteen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transport(u8);

impl Transport {
    /// Centrifugo's protocol over WebSocket.
    pub const WEBSOCKET: Transport = Transport(0);
    /// Pusher's protocol over WebSocket.
    pub const PUSHER: Transport = Transport(1);
    /// The bidirectional emulation over SSE.
    pub const SSE: Transport = Transport(2);
    /// The bidirectional emulation over an HTTP stream.
    pub const HTTP_STREAM: Transport = Transport(3);
    /// Long polling.
    pub const LONG_POLL: Transport = Transport(4);
    /// The unidirectional SSE transport.
    pub const UNI_SSE: Transport = Transport(5);
    /// The unidirectional HTTP stream.
    pub const UNI_HTTP_STREAM: Transport = Transport(6);
    /// The unidirectional WebSocket.
    pub const UNI_WEBSOCKET: Transport = Transport(7);
    /// Unidirectional long polling.
    pub const UNI_LONG_POLL: Transport = Transport(8);

    const NAMES: [&'static str; 9] = [
        "websocket",
        "pusher",
        "sse",
        "http_stream",
        "long_poll",
        "uni_sse",
        "uni_http_stream",
        "uni_websocket",
        "uni_long_poll",
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        Transport::NAMES.get(usize::from(self.0)).copied().unwrap_or("websocket")
    }
}

// A transport is kept in four bits of the connection details.
const _: () = assert!(Transport::NAMES.len() <= 16);

/// What a session keeps for the server API's `connections`, besides what the hub
/// knows of it already (its client id, user and format): held for every connected
/// client, so in its smallest form, one block of bytes (none for a WebSocket client
/// with none of the fields).
#[derive(Debug, Default)]
pub(crate) struct Details {
    /// The name, the version, the `jti` and the `meta`, one after another, each after
    /// its length plus one (a LEB128 varint: one byte up to 126; 0 for a `jti` there is
    /// not), the `jti`'s times 16 plus the transport's code; then the `iat` (eight
    /// bytes, little-endian) if there is one. Empty: WebSocket, and none of them.
    packed: Box<[u8]>,
}

/// [`Details`]' fields, in its packed block.
const APP_NAME: usize = 0;
const APP_VERSION: usize = 1;
const TOKEN_UID: usize = 2;
const META: usize = 3;

impl Details {
    /// The details of a connection: its client's name and version (from its connect),
    /// its transport, and its token's `jti`, `iat` and `meta`.
    pub fn new(
        app_name: &str,
        app_version: &str,
        transport: Transport,
        token_uid: Option<&str>,
        token_issued_at: Option<u64>,
        meta: &[u8],
    ) -> Details {
        let none = app_name.is_empty() && app_version.is_empty() && token_uid.is_none() && meta.is_empty();
        if none && token_issued_at.is_none() && transport == Transport::WEBSOCKET {
            return Details { packed: Box::default() };
        }
        let fields =
            [Some(app_name.as_bytes()), Some(app_version.as_bytes()), token_uid.map(str::as_bytes), Some(meta)];
        let mut packed = Vec::with_capacity(48 + fields.iter().flatten().map(|f| f.len()).sum::<usize>());
        for (n, field) in fields.into_iter().enumerate() {
            let len = field.map_or(0, |f| f.len() as u64 + 1);
            // The transport rides with the `jti`'s length (most tokens have none: a byte).
            prost::encoding::encode_varint(
                if n == TOKEN_UID { len * 16 + u64::from(transport.0) } else { len },
                &mut packed,
            );
            packed.extend_from_slice(field.unwrap_or_default());
        }
        if let Some(iat) = token_issued_at {
            packed.extend_from_slice(&iat.to_le_bytes());
        }
        Details { packed: packed.into_boxed_slice() }
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.fields().2
    }

    /// The packed fields, what follows them, and the transport.
    fn fields(&self) -> ([Option<&[u8]>; 4], &[u8], Transport) {
        let mut out = [Some(&[][..]), Some(&[][..]), None, Some(&[][..])];
        let mut transport = Transport::WEBSOCKET;
        let mut rest = &self.packed[..];
        for (n, field) in out.iter_mut().enumerate() {
            if rest.is_empty() {
                break;
            }
            let Ok(mut len) = prost::encoding::decode_varint(&mut rest) else { break };
            if n == TOKEN_UID {
                transport = Transport((len % 16) as u8);
                len /= 16;
            }
            if len == 0 {
                *field = None;
                continue;
            }
            let Some((f, tail)) = usize::try_from(len - 1).ok().and_then(|len| rest.split_at_checked(len)) else {
                break;
            };
            *field = Some(f);
            rest = tail;
        }
        (out, rest, transport)
    }

    fn text(&self, n: usize) -> Option<&str> {
        self.fields().0[n].map(|f| std::str::from_utf8(f).unwrap_or_default())
    }

    /// The client's name, as its connect command gave it.
    pub fn app_name(&self) -> &str {
        self.text(APP_NAME).unwrap_or_default()
    }

    /// The client's version, as its connect command gave it.
    pub fn app_version(&self) -> &str {
        self.text(APP_VERSION).unwrap_or_default()
    }

    /// The connection token's `jti`.
    pub fn token_uid(&self) -> Option<&str> {
        self.text(TOKEN_UID)
    }

    /// The connection token's `iat` (Unix seconds).
    pub fn token_issued_at(&self) -> Option<u64> {
        self.fields().1.first_chunk::<8>().map(|b| u64::from_le_bytes(*b))
    }

    /// The connection token's `meta`, JSON text as it came (empty: none).
    pub fn meta(&self) -> &[u8] {
        self.fields().0[META].unwrap_or_default()
    }
}

/// A connected client as the server API's `connections` shows it: who it is, what it
/// runs, and the `meta` its token attached (never shown to clients).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectionInfo {
    /// The client's id.
    pub client: String,
    /// The user's id.
    pub user: String,
    /// The client's name, as its connect command gave it (`js`, `python`, ...).
    pub app_name: String,
    /// The client's version, as its connect command gave it.
    pub app_version: String,
    /// The transport: `websocket`.
    pub transport: &'static str,
    /// The wire format.
    pub protocol: Format,
    /// The connection token's `jti`.
    pub token_uid: Option<String>,
    /// The connection token's `iat` (Unix seconds).
    pub token_issued_at: Option<u64>,
    /// The connection token's `meta`, JSON text as it came (empty: none).
    pub meta: Bytes,
}

#[derive(Debug)]
pub(crate) enum ControlRequest {
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
    },
    /// The API's `refresh`: a new expiry (`None`: never), or expired now.
    Refresh {
        expired: bool,
        expire_at: Option<u64>,
    },
}

/// How long a survey waits for the other nodes' answers.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(1);

/// What nodes tell each other through the broker: the server API's requests for a
/// user's connections, carried out on every node, and surveys.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum NodeMessage {
    Disconnect {
        user: String,
        client: Option<String>,
        code: u16,
        reason: String,
    },
    Subscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    Unsubscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    Refresh {
        user: String,
        client: Option<String>,
        expired: bool,
        expire_at: Option<u64>,
    },
    /// A question to every node (the API's `channels` and `connections`): each answers
    /// `from` with its part.
    Survey {
        id: u64,
        from: String,
        method: String,
        params: String,
    },
    /// A node's part of the answer to a survey.
    SurveyReply {
        id: u64,
        result: serde_json::Value,
    },
}

/// A part of the channel registry: the channels with subscribers on this node, by
/// name. Each channel boxed: a table is 60–90% full, so an entry of 24 bytes rather
/// than the 72 of a `String` and the channel inline is 40–80 bytes less per channel.
type Shard = HashMap<Box<str>, Box<Local>>;

/// The subscribers of one channel on this node.
struct Local {
    /// By the client's `seq`.
    subs: Subs,
    /// The channel's id on this node, for subscribers with channel compaction: given
    /// when the channel gets its first local subscriber, never given to another.
    id: u64,
    /// The stream's epoch, as this node last learned it (from a subscription's history
    /// or a publication): a publication or a subscription of another epoch means the
    /// stream started again, and positioned subscribers of the old one cannot go on.
    /// A hash of it (0: not known yet), rather than the text: four bytes, and no
    /// allocation, per channel.
    epoch: u32,
}

/// A subscriber of a channel on this node (48 bytes with its key: one of the allocator's
/// size classes, a field more moves it to the next, 64).
struct Sub {
    client: Arc<ClientShared>,
    /// The offset of the last publication queued to it.
    last: u64,
    /// The offset of the publication the client holds as its delta base ([`NO_BASE`]:
    /// none).
    base: u64,
    /// What only some subscriptions have, or have only a while (boxed: the others keep a
    /// pointer's room for it).
    extra: Option<Box<SubExtra>>,
    /// Receives join and leave pushes.
    join_leave: bool,
    /// Checks offsets (positioned or recoverable).
    positioned: bool,
    /// Fossil deltas were negotiated: publications go as deltas from the one before when
    /// the client holds that one (JSON: full payloads as strings).
    delta: bool,
    /// Made by the server: a gap closes the connection (3010) instead of unsubscribing.
    server_side: bool,
    /// A gap was found: the client was unsubscribed (2500) and gets nothing more here
    /// until its session removes the subscription.
    lost: bool,
    /// Channel compaction: pushes name the channel by its id.
    compact: bool,
    /// A Pusher client: publications go in Pusher's wire shape, except to the socket
    /// their [`TAG_EXCLUDE`](crate::pusher::TAG_EXCLUDE) tag names (its client id).
    pusher: bool,
}

/// A channel's subscribers on this node, by the client's `seq`. Most channels have one
/// on a node: it is kept in place, in the channel's block, and only a channel with
/// several has a list (a block of its own, 48 bytes more per channel with one).
enum Subs {
    One(u64, Sub),
    /// None, or several.
    Many(Keyed<u64, Sub>),
}

impl Default for Subs {
    fn default() -> Self {
        Subs::Many(Keyed::default())
    }
}

impl Subs {
    fn len(&self) -> usize {
        match self {
            Subs::One(..) => 1,
            Subs::Many(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, seq: u64, sub: Sub) {
        match self {
            Subs::Many(m) if m.is_empty() => *self = Subs::One(seq, sub),
            Subs::Many(m) => {
                m.insert(seq, sub);
            }
            Subs::One(s, one) if *s == seq => *one = sub,
            Subs::One(..) => {
                let Subs::One(s, one) = std::mem::take(self) else { unreachable!("matched above") };
                let mut m = Keyed::default();
                m.insert(s, one);
                m.insert(seq, sub);
                *self = Subs::Many(m);
            }
        }
    }

    fn remove(&mut self, seq: u64) -> Option<Sub> {
        match self {
            Subs::One(s, _) if *s == seq => {
                let Subs::One(_, one) = std::mem::take(self) else { unreachable!("matched above") };
                Some(one)
            }
            Subs::One(..) => None,
            Subs::Many(m) => {
                let removed = m.remove(&seq);
                if m.len() == 1 {
                    let last = *m.keys().next().expect("one left");
                    let one = m.remove(&last).expect("there");
                    *self = Subs::One(last, one);
                }
                removed
            }
        }
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Sub> {
        match self {
            Subs::One(s, one) => (*s == seq).then_some(one),
            Subs::Many(m) => m.get_mut(&seq),
        }
    }

    fn values(&self) -> impl Iterator<Item = &Sub> {
        let (one, many) = match self {
            Subs::One(_, one) => (Some(one), None),
            Subs::Many(m) => (None, Some(m.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Sub> {
        let (one, many) = match self {
            Subs::One(_, one) => (Some(one), None),
            Subs::Many(m) => (None, Some(m.values_mut())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// In [`Sub`]'s `base`: the client holds no delta base.
const NO_BASE: u64 = u64::MAX;

/// The parts of a [`Sub`] that only some subscriptions have.
#[derive(Default)]
struct SubExtra {
    /// Publications that arrived while the subscription was being set up.
    buffer: Option<Vec<Arc<Publication>>>,
    /// A tags filter: publications whose tags do not match are skipped (their offsets
    /// still count for the gap check).
    filter: Option<Arc<FilterNode>>,
}

impl Local {
    /// Learns the stream's epoch; when it changed, the positioned subscribers of the
    /// old one (all but `except`, which learned the new one) are told they lost it.
    fn new_epoch(&mut self, channel: &str, epoch: &str, except: Option<u64>) {
        // FNV-1a, never 0.
        let hash = epoch.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193)).max(1);
        match self.epoch {
            known if known == hash => {}
            0 => self.epoch = hash,
            _ => {
                self.epoch = hash;
                for sub in self.subs.values_mut() {
                    if Some(sub.client.seq) != except && sub.positioned && !sub.lost && !sub.buffering() {
                        sub.lose(channel);
                    }
                }
            }
        }
    }
}

impl Sub {
    /// Still being set up: what arrives is buffered.
    fn buffering(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.buffer.is_some())
    }

    /// Its buffer, while it is being set up.
    fn buffer_mut(&mut self) -> Option<&mut Vec<Arc<Publication>>> {
        self.extra.as_mut().and_then(|e| e.buffer.as_mut())
    }

    /// Ends the set-up: what was buffered (the box goes too unless it holds a filter).
    fn take_buffer(&mut self) -> Vec<Arc<Publication>> {
        let Some(extra) = &mut self.extra else { return Vec::new() };
        let buffered = extra.buffer.take().unwrap_or_default();
        if extra.filter.is_none() {
            self.extra = None;
        }
        buffered
    }

    /// Whether its filter skips a publication with these tags.
    fn skips(&self, tags: &std::collections::BTreeMap<String, String>) -> bool {
        self.extra.as_ref().and_then(|e| e.filter.as_ref()).is_some_and(|f| !crate::filter::matches(f, tags))
    }

    /// Checks a publication's offset against the last one queued (positioned
    /// subscriptions). `Ok(false)`: already sent, skip it; `Err`: a gap.
    fn advance(&mut self, offset: u64) -> Result<bool, ()> {
        if !self.positioned || offset == 0 {
            return Ok(true);
        }
        if offset <= self.last {
            return Ok(false);
        }
        if offset != self.last + 1 {
            return Err(());
        }
        self.last = offset;
        Ok(true)
    }

    /// A gap in the stream: a server-side subscription ends the connection with 3010
    /// (the client reconnects and recovers); a client's own is unsubscribed with 2500
    /// (it resubscribes and recovers) and the session is told to forget it.
    fn lose(&mut self, channel: &str) {
        if self.server_side {
            self.client.close(Disconnect::INSUFFICIENT_STATE);
            return;
        }
        self.lost = true;
        // Recorded before the push wakes the session (or takes its parked connection
        // back), so that it finds the channel to forget.
        self.client.ask(|c| c.lost.push(channel.to_owned()));
        let push = Reply::Push(Push {
            id: 0,
            channel: channel.to_owned(),
            kind: PushKind::Unsubscribe {
                code: protocol::unsubscribe::INSUFFICIENT_STATE,
                reason: "insufficient state".into(),
            },
        });
        self.client.push(encode(&push, self.client.format));
        self.client.push_wake();
    }
}

/// How a subscriber is served, as its subscribe negotiated.
#[derive(Clone, Debug, Default)]
pub(crate) struct SubOptions {
    /// Checks offsets (positioned or recoverable).
    pub positioned: bool,
    /// Receives join and leave pushes.
    pub join_leave: bool,
    /// Fossil deltas were negotiated.
    pub delta: bool,
    /// A tags filter, validated.
    pub filter: Option<Arc<FilterNode>>,
    /// Made by the server, not by a subscribe command.
    pub server_side: bool,
    /// Channel compaction was negotiated.
    pub compact: bool,
    /// A Pusher client (see `Sub::pusher`).
    pub pusher: bool,
}

impl Hub {
    /// A hub on the in-memory broker.
    pub fn new(config: HubConfig) -> Result<Hub, ConfigError> {
        Self::with_broker(config, Arc::new(MemoryBroker::new()))
    }

    /// A hub on the given broker.
    pub fn with_broker(config: HubConfig, broker: Arc<dyn Broker>) -> Result<Hub, ConfigError> {
        let channels = Channels::new(&config.channel)?;
        let lp = &config.long_poll;
        if lp.enabled && lp.session_ttl.is_zero() {
            return Err(ConfigError(
                "long_poll.session_ttl: must be more than 0 (each session would end with its first poll)".into(),
            ));
        }
        if lp.enabled && lp.max_buffer_size == 0 {
            return Err(ConfigError("long_poll.max_buffer_size: must be more than 0".into()));
        }
        config.pusher.check().map_err(ConfigError)?;
        let webhooks = crate::pusher::webhook::Webhooks::new(&config.pusher).map_err(ConfigError)?;
        let verifier =
            TokenVerifier::new(&config.client.token).map_err(|e| ConfigError(format!("client.token: {e}")))?;
        let sub_verifier = match &config.client.subscription_token {
            Some(t) => TokenVerifier::new(t).map_err(|e| ConfigError(format!("client.subscription_token: {e}")))?,
            None => verifier.clone(),
        };
        let proxies = crate::proxy::Proxies::new(&config).map_err(ConfigError)?;
        let node = client::new_client_id().to_string();
        broker.set_node(&node);
        let websocket = crate::transport::WebSocketConfigs::new(&config);
        let pusher_apps = config.pusher.apps.iter().cloned().map(Arc::new).collect();
        let inner = Arc::new(HubInner {
            config,
            channels,
            broker: broker.clone(),
            verifier,
            sub_verifier,
            proxies,
            node,
            registry: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            conns: Mutex::new(Connections::default()),
            metrics: Metrics::default(),
            channel_ids: AtomicU64::new(1),
            emulation: Default::default(),
            long_polls: Default::default(),
            started: std::time::Instant::now(),
            surveys: Mutex::new(HashMap::new()),
            survey_ids: AtomicU64::new(1),
            pusher_xhr: Default::default(),
            pusher_counts: Default::default(),
            pusher_conns: Mutex::new(HashMap::new()),
            webhooks,
            websocket,
            pusher_apps,
        });
        broker.set_events(Arc::new(Events(Arc::downgrade(&inner))));
        Ok(Hub { inner })
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The counters of `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Publishes `data` into `channel` as the server (the API's `publish`): no
    /// permission checks, the channel's history options apply.
    pub async fn publish(&self, channel: &str, data: Bytes, opts: ServerPublish) -> Result<PublishResult, ErrorReply> {
        let resolved = self.inner.channels.resolve(channel)?;
        let kind = match opts.kind {
            PayloadKind::Unchecked => PayloadKind::of(&data),
            known => known,
        };
        let publication = Publication { data, tags: opts.tags, time: now_ms(), kind, ..Default::default() };
        self.inner.publish(channel, &resolved.options, publication, opts.idempotency_key, opts.skip_history).await
    }

    /// Connected clients on this node.
    pub fn num_clients(&self) -> usize {
        lock(&self.inner.conns).total
    }

    /// Transport connections still open on this node: [`Hub::num_clients`] counts
    /// sessions, this counts them until their closing handshake is over.
    pub fn num_connections(&self) -> usize {
        self.inner.metrics.open_connections.load(Ordering::Relaxed) as usize
    }

    /// The connections on this node, of one user or of all, for the server API's
    /// `connections` (in no particular order).
    pub fn connections(&self, user: Option<&str>) -> Vec<ConnectionInfo> {
        let conns = lock(&self.inner.conns);
        match user {
            Some(user) => conns.users.get(user).map(|c| c.details(user)).collect(),
            None => conns.users.iter().map(|(u, c)| c.details(u)).collect(),
        }
    }

    /// Distinct users connected on this node.
    pub fn num_users(&self) -> usize {
        lock(&self.inner.conns).users.len()
    }

    /// Channels with subscribers on this node, and how many.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in self.inner.registry.iter() {
            for (name, local) in lock(shard).iter() {
                out.push((name.to_string(), local.subs.len()));
            }
        }
        out.sort();
        out
    }

    /// Subscriptions on this node.
    pub fn num_subscriptions(&self) -> usize {
        self.inner.registry.iter().map(|s| lock(s).values().map(|l| l.subs.len()).sum::<usize>()).sum()
    }

    /// Disconnects every connection of `user` on this node (the API's `disconnect`).
    pub fn disconnect_user(&self, user: &str, client: Option<&str>, d: Disconnect) -> usize {
        let conns = lock(&self.inner.conns);
        let mut n = 0;
        for c in conns.users.get(user) {
            if client.is_none_or(|id| id == c.client.id) {
                c.client.close(d.clone());
                n += 1;
            }
        }
        n
    }

    /// Disconnects everyone (shutdown), spreading the disconnects over `window` so that
    /// clients do not all reconnect at the same moment.
    pub async fn disconnect_all(&self, d: Disconnect, window: Duration) {
        let clients: Vec<_> = lock(&self.inner.conns).users.iter().map(|(_, c)| c.client.clone()).collect();
        if clients.is_empty() {
            return;
        }
        let step = window / clients.len() as u32;
        for c in clients {
            c.close(d.clone());
            if !step.is_zero() {
                tokio::time::sleep(step).await;
            }
        }
    }

    /// Carries out the server API's request for a user's connections here, and sends it
    /// to every other node. Fails when the other nodes could not be reached.
    pub(crate) async fn user_control(&self, c: NodeMessage) -> Result<(), ErrorReply> {
        self.apply_node_message(&c);
        self.inner.broker.broadcast_control(node_message(&c)).await.map_err(internal)
    }

    /// Carries out the server API's request for a user's connections on this node.
    pub(crate) fn apply_node_message(&self, c: &NodeMessage) -> usize {
        match c {
            NodeMessage::Disconnect { user, client: id, code, reason } => {
                self.disconnect_user(user, id.as_deref(), Disconnect { code: *code, reason: reason.clone().into() })
            }
            NodeMessage::Subscribe { user, client: id, channel } => {
                self.control_user(user, id.as_deref(), || ControlRequest::Subscribe { channel: channel.clone() })
            }
            NodeMessage::Unsubscribe { user, client: id, channel } => {
                self.control_user(user, id.as_deref(), || ControlRequest::Unsubscribe { channel: channel.clone() })
            }
            NodeMessage::Refresh { user, client: id, expired, expire_at } => {
                self.control_user(user, id.as_deref(), || ControlRequest::Refresh {
                    expired: *expired,
                    expire_at: *expire_at,
                })
            }
            NodeMessage::Survey { id, from, method, params } => {
                let result = match crate::api::local_survey(self, method, params) {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({ "error": { "code": e.code } }),
                };
                let reply = node_message(&NodeMessage::SurveyReply { id: *id, result });
                let (hub, from) = (self.clone(), from.clone());
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = hub.inner.broker.send_control(&from, reply).await {
                            tracing::debug!(error = %e, node = from, "a survey's answer was not sent");
                        }
                    });
                }
                0
            }
            NodeMessage::SurveyReply { id, result } => {
                if let Some(tx) = lock(&self.inner.surveys).get(id) {
                    let _ = tx.send(result.clone());
                }
                0
            }
        }
    }

    /// Asks every other live node `method` (`channels`, `connections`) and returns
    /// `local` and their answers: those that came within [`SURVEY_TIMEOUT`].
    pub(crate) async fn survey(&self, method: &str, params: &str, local: serde_json::Value) -> Vec<serde_json::Value> {
        let mut out = vec![local];
        let others = match self.inner.broker.nodes().await {
            Ok(n) => n.len(),
            Err(_) => return out,
        };
        if others == 0 {
            return out;
        }
        let id = self.inner.survey_ids.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        lock(&self.inner.surveys).insert(id, tx);
        let ask = NodeMessage::Survey {
            id,
            from: self.node().to_owned(),
            method: method.to_owned(),
            params: params.to_owned(),
        };
        if self.inner.broker.broadcast_control(node_message(&ask)).await.is_ok() {
            let deadline = tokio::time::Instant::now() + SURVEY_TIMEOUT;
            while out.len() <= others {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(v)) => out.push(v),
                    _ => break,
                }
            }
        }
        lock(&self.inner.surveys).remove(&id);
        out
    }

    /// What this node says of itself to the others (the server API's `info`).
    pub(crate) fn node_info(&self) -> serde_json::Value {
        serde_json::json!({
            "uid": self.node(),
            "name": self.node(),
            "version": session::VERSION,
            "num_clients": self.num_clients(),
            "num_users": self.num_users(),
            "num_channels": self.channels().len(),
            "num_subs": self.num_subscriptions(),
            "uptime": self.inner.started.elapsed().as_secs(),
        })
    }

    /// Whether the broker is reachable (`/ready`).
    pub fn ready(&self) -> bool {
        self.inner.broker.ready()
    }

    /// Asks the sessions of `user` to subscribe to (or unsubscribe from) `channel`
    /// (the API's `subscribe` and `unsubscribe`). Returns how many were asked.
    pub(crate) fn control_user(&self, user: &str, client: Option<&str>, req: impl Fn() -> ControlRequest) -> usize {
        let conns = lock(&self.inner.conns);
        let mut n = 0;
        for c in conns.users.get(user) {
            if client.is_none_or(|id| id == c.client.id) {
                c.client.ask(|c| c.requests.push(req()));
                // Wakes the session's task, which applies the request.
                c.client.push_wake();
                n += 1;
            }
        }
        n
    }

    /// Reads a channel's history (the API's `history`).
    pub async fn history(
        &self,
        channel: &str,
        limit: Option<usize>,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), ErrorReply> {
        let resolved = self.inner.channels.resolve(channel)?;
        if !resolved.options.has_history() {
            return Err(ErrorReply::NOT_AVAILABLE);
        }
        self.inner.history(channel, &resolved.options, since, limit, reverse).await
    }

    /// Empties a channel's history.
    pub async fn remove_history(&self, channel: &str) -> Result<(), ErrorReply> {
        self.inner.channels.resolve(channel)?;
        self.inner.broker.remove_history(channel).await.map_err(internal)
    }

    /// Who is in a channel.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, ErrorReply> {
        let resolved = self.inner.channels.resolve(channel)?;
        if !resolved.options.presence {
            return Err(ErrorReply::NOT_AVAILABLE);
        }
        self.inner.broker.presence(channel).await.map_err(internal)
    }

    /// How many are in a channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<crate::broker::PresenceStats, ErrorReply> {
        let resolved = self.inner.channels.resolve(channel)?;
        if !resolved.options.presence {
            return Err(ErrorReply::NOT_AVAILABLE);
        }
        self.inner.broker.presence_stats(channel).await.map_err(internal)
    }
}

/// Options of a publish by the server.
#[derive(Clone, Debug, Default)]
pub struct ServerPublish {
    /// Tags attached to the publication.
    pub tags: std::collections::BTreeMap<String, String>,
    /// A retry with the same key within the channel's idempotency window is a no-op.
    pub idempotency_key: Option<String>,
    /// Deliver without keeping it in history.
    pub skip_history: bool,
    /// What the caller knows of the payload: [`PayloadKind::Json`] when it is one JSON
    /// value on one line (the API's `data`, which it parsed). Left
    /// [`PayloadKind::Unchecked`], the hub looks once, here.
    pub kind: PayloadKind,
}

/// A message for other nodes: a zero byte (which starts no Protobuf message, so it is
/// told apart from the transports' forwarded commands), then JSON.
fn node_message(m: &NodeMessage) -> Bytes {
    let mut message = vec![0u8];
    message.extend_from_slice(&serde_json::to_vec(m).expect("serializes"));
    Bytes::from(message)
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ErrorReply {
    tracing::warn!(error = %e, "broker error");
    ErrorReply::INTERNAL
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What a subscription set-up learned, to finish it with [`HubInner::go_live`].
pub(crate) struct Pending {
    pub channel: String,
    pub seq: u64,
    /// The channel's id for channel compaction (0: not compacted).
    pub id: u64,
    /// The channel's first subscriber on this node.
    pub first: bool,
}

impl HubInner {
    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        lock(&self.registry[(h.finish() as usize) % SHARDS])
    }

    pub(crate) fn publish_options(
        &self,
        options: &crate::config::ChannelOptions,
        key: Option<String>,
        skip_history: bool,
    ) -> PublishOptions {
        PublishOptions {
            history_size: if skip_history { 0 } else { options.history_size },
            history_ttl: options.history_ttl,
            history_meta_ttl: options.history_meta_ttl,
            idempotency_key: key,
            idempotent_ttl: Duration::from_secs(300),
            use_delta: !options.allowed_delta_types.is_empty(),
        }
    }

    pub(crate) async fn publish(
        &self,
        channel: &str,
        options: &crate::config::ChannelOptions,
        publication: Publication,
        key: Option<String>,
        skip_history: bool,
    ) -> Result<PublishResult, ErrorReply> {
        let opts = self.publish_options(options, key, skip_history || !options.has_history());
        self.broker.publish(channel, publication, opts).await.map_err(internal)
    }

    pub(crate) async fn history(
        &self,
        channel: &str,
        options: &crate::config::ChannelOptions,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), ErrorReply> {
        let query = HistoryQuery { since, limit, reverse, history_meta_ttl: options.history_meta_ttl };
        let r = self.broker.history(channel, query).await.map_err(internal)?;
        Ok((r.publications, r.position))
    }

    /// Registers a subscriber. A positioned one starts buffering: what arrives is kept
    /// until [`HubInner::go_live`]. Subscribes the node through the broker when it is
    /// the channel's first local subscriber.
    pub(crate) async fn register(
        &self,
        channel: &str,
        client: &Arc<ClientShared>,
        o: SubOptions,
    ) -> Result<Pending, ErrorReply> {
        let (first, id) = {
            let mut shard = self.shard(channel);
            if !shard.contains_key(channel) {
                let local =
                    Local { subs: Subs::default(), id: self.channel_ids.fetch_add(1, Ordering::Relaxed), epoch: 0 };
                shard.insert(channel.into(), Box::new(local));
            }
            let local = shard.get_mut(channel).expect("inserted above");
            let first = local.subs.is_empty();
            let id = if o.compact { local.id } else { 0 };
            local.subs.insert(
                client.seq,
                Sub {
                    client: client.clone(),
                    join_leave: o.join_leave,
                    positioned: o.positioned,
                    last: 0,
                    extra: Some(Box::new(SubExtra { buffer: Some(Vec::new()), filter: o.filter })),
                    delta: o.delta,
                    base: NO_BASE,
                    server_side: o.server_side,
                    lost: false,
                    compact: o.compact,
                    pusher: o.pusher,
                },
            );
            (first, id)
        };
        if first {
            if let Err(e) = self.broker.subscribe(channel).await {
                self.unregister(channel, client.seq).await;
                return Err(internal(e));
            }
        }
        Ok(Pending { channel: channel.to_owned(), seq: client.seq, id, first })
    }

    /// Ends a subscription's set-up: queues `first` (the reply that carries what was
    /// recovered), then what arrived meanwhile after offset `last`, and makes the
    /// subscription live, all under the channel's lock so that no push can come
    /// between them or before the reply.
    /// `base` is the offset of the last publication the reply carried, the client's delta
    /// base when deltas were negotiated. Returns false when a gap was found in what
    /// arrived meanwhile: the subscription is lost (see [`Sub::lose`]).
    pub(crate) fn go_live(
        &self,
        pending: &Pending,
        first: Option<Bytes>,
        last: u64,
        base: Option<u64>,
        epoch: &str,
        client: &Arc<ClientShared>,
    ) -> bool {
        let mut shard = self.shard(&pending.channel);
        let Some(local) = shard.get_mut(pending.channel.as_str()) else { return true };
        if !epoch.is_empty() {
            local.new_epoch(&pending.channel, epoch, Some(pending.seq));
        }
        let Some(sub) = local.subs.get_mut(pending.seq) else {
            return true;
        };
        if let Some(first) = first {
            client.push(first);
        }
        sub.last = last;
        sub.base = base.unwrap_or(NO_BASE);
        let buffered = sub.take_buffer();
        for p in buffered {
            match sub.advance(p.offset) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(()) => {
                    sub.lose(&pending.channel);
                    return false;
                }
            }
            if sub.skips(&p.tags) {
                continue;
            }
            if sub.pusher {
                if !crate::pusher::wire::excluded(&p, &client.id) {
                    if let Some(b) = crate::pusher::wire::encode_event(&pending.channel, &p) {
                        client.push(b);
                    }
                }
                continue;
            }
            match encode_publication(&pending.channel, pending.id, &p, client.format, sub.delta) {
                Some(b) => {
                    client.push(b);
                    sub.base = p.offset;
                }
                None => client.close(Disconnect::INAPPROPRIATE_PROTOCOL),
            }
        }
        true
    }

    /// The subscribers of `channel` on this node.
    pub(crate) fn local_subscribers(&self, channel: &str) -> usize {
        self.shard(channel).get(channel).map_or(0, |l| l.subs.len())
    }

    /// Removes a subscriber; unsubscribes the node when it was the last.
    pub(crate) fn unregister(&self, channel: &str, seq: u64) -> BoxFuture<'_, ()> {
        let channel = channel.to_owned();
        Box::pin(async move { self.unregister_now(&channel, seq).await })
    }

    async fn unregister_now(&self, channel: &str, seq: u64) {
        let last = {
            let mut shard = self.shard(channel);
            match shard.get_mut(channel) {
                Some(local) => {
                    local.subs.remove(seq);
                    let empty = local.subs.is_empty();
                    if empty {
                        shard.remove(channel);
                    }
                    empty
                }
                None => false,
            }
        };
        if last {
            if let Err(e) = self.broker.unsubscribe(channel).await {
                tracing::warn!(error = %e, channel, "broker unsubscribe failed");
            }
            // A first subscriber that came meanwhile subscribed the node before this
            // unsubscribe went out: subscribe again, and check what it may have missed.
            if self.shard(channel).contains_key(channel) {
                if let Err(e) = self.broker.subscribe(channel).await {
                    tracing::warn!(error = %e, channel, "broker subscribe failed");
                }
                self.check_positions(channel).await;
            }
        }
    }

    /// After the node's subscription to `channel` was interrupted: positioned
    /// subscribers behind the stream's top, or on another epoch, missed something, and
    /// are told so (they recover from history).
    pub(crate) async fn check_positions(&self, channel: &str) {
        let Ok(resolved) = self.channels.resolve(channel) else { return };
        if !resolved.options.has_history() {
            return;
        }
        let top = match self.history(channel, &resolved.options, None, Some(0), false).await {
            Ok((_, top)) => top,
            Err(_) => return,
        };
        let mut shard = self.shard(channel);
        let Some(local) = shard.get_mut(channel) else { return };
        local.new_epoch(channel, &top.epoch, None);
        for sub in local.subs.values_mut() {
            if sub.positioned && !sub.lost && !sub.buffering() && sub.last < top.offset {
                sub.lose(channel);
            }
        }
    }

    fn deliver(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: &StreamPosition,
        previous: Option<Arc<Publication>>,
    ) {
        self.metrics.publications_total.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(channel);
        let Some(local) = shard.get_mut(channel) else { return };
        if publication.offset > 0 && !position.epoch.is_empty() {
            local.new_epoch(channel, &position.epoch, None);
        }
        let chan_id = local.id;
        // Each form encoded at most once, and only if a subscriber needs it.
        let mut encoded = Encodings::default();
        let mut delta: Option<Option<Publication>> = None;
        // Pusher's wire shape, encoded once for all Pusher subscribers.
        let mut pusher: Option<Option<Item>> = None;
        let mut sent = 0u64;
        // Parked subscribers of a small channel are written to here, once the
        // channels' lock is released, rather than handed to their parking's writer.
        let mut inline = Vec::new();
        let small = local.subs.len() <= INLINE_FANOUT;
        let mut push = |client: &Arc<ClientShared>, item: Item| {
            if small {
                client.push_inline(item, &mut inline)
            } else {
                client.push(item)
            }
        };
        for sub in local.subs.values_mut() {
            if sub.lost {
                continue;
            }
            if let Some(buffer) = sub.buffer_mut() {
                buffer.push(publication.clone());
                continue;
            }
            match sub.advance(publication.offset) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(()) => {
                    sub.lose(channel);
                    continue;
                }
            }
            // No allocation: a filter only compares the tags in place.
            if sub.skips(&publication.tags) {
                continue;
            }
            if sub.pusher {
                if crate::pusher::wire::excluded(&publication, &sub.client.id) {
                    continue;
                }
                let bytes = pusher.get_or_insert_with(|| {
                    crate::pusher::wire::encode_event(channel, &publication).map(|b| Item::shared(b, Format::Json))
                });
                if let Some(b) = bytes {
                    if push(&sub.client, b.clone()) {
                        sent += 1;
                    }
                }
                continue;
            }
            // A delta only from the publication the client holds.
            let as_delta = sub.delta
                && previous.as_ref().is_some_and(|p| sub.base == p.offset)
                && delta
                    .get_or_insert_with(|| {
                        let prev = previous.as_ref().expect("checked above");
                        crate::delta::encode_if_smaller(&prev.data, &publication.data).map(|d| Publication {
                            data: Bytes::from(d),
                            delta: true,
                            ..(*publication).clone()
                        })
                    })
                    .is_some();
            let form = match (as_delta, sub.delta, sub.client.format) {
                (true, _, _) => Form::Delta,
                (false, true, Format::Json) => Form::String,
                _ => Form::Plain,
            };
            let id = if sub.compact { chan_id } else { 0 };
            let bytes = encoded.get(sub.client.format, form, id, || {
                let p = match form {
                    Form::Delta => delta.as_ref().and_then(Option::as_ref).expect("made above"),
                    _ => &publication,
                };
                encode_publication(channel, id, p, sub.client.format, form != Form::Plain)
            });
            match bytes {
                Some(b) => {
                    if push(&sub.client, b) {
                        sent += 1;
                    }
                    sub.base = publication.offset;
                }
                None => sub.client.close(Disconnect::INAPPROPRIATE_PROTOCOL),
            }
        }
        drop(shard);
        self.metrics.messages_out_total.fetch_add(sent, Ordering::Relaxed);
        for client in inline {
            client.write_parked();
        }
    }

    fn deliver_join_leave(&self, channel: &str, info: ClientInfo, join: bool) {
        let shard = self.shard(channel);
        let Some(local) = shard.get(channel) else { return };
        let kind = if join { PushKind::Join(info) } else { PushKind::Leave(info) };
        let mut encoded = Encodings::default();
        for sub in local.subs.values().filter(|s| s.join_leave && !s.buffering() && !s.lost) {
            let id = if sub.compact { local.id } else { 0 };
            let bytes = encoded.get(sub.client.format, Form::Plain, id, || {
                let channel = if id == 0 { channel.to_owned() } else { String::new() };
                Some(encode(&Reply::Push(Push { id, channel, kind: kind.clone() }), sub.client.format))
            });
            if let Some(bytes) = bytes {
                sub.client.push(bytes);
            }
        }
    }

    pub(crate) fn count_error(&self, code: u32) {
        *lock(&self.metrics.errors).entry(code).or_default() += 1;
    }
}

/// Encodes a reply or push in a format.
pub(crate) fn encode(reply: &Reply, format: Format) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    match format {
        Format::Json => protocol::json::encode_reply(reply, &mut out),
        Format::Protobuf => protocol::protobuf::encode_reply(reply, &mut out),
    }
    out.freeze()
}

/// How a publication's payload goes to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// As it is.
    Plain,
    /// On JSON, as a string: the subscriber negotiated deltas.
    String,
    /// As a Fossil delta from the previous payload.
    Delta,
}

/// The encodings of one push, each made once, when a subscriber first needs it: by
/// format, form, and whether the channel is named by its id (channel compaction).
#[derive(Default)]
struct Encodings {
    slots: [Option<Option<Item>>; 12],
}

impl Encodings {
    /// The push in `format`, `form` and with channel id `id`, encoded by `make` on
    /// first use, its frame prepared once for every subscriber that gets it.
    fn get(&mut self, format: Format, form: Form, id: u64, make: impl FnOnce() -> Option<Bytes>) -> Option<Item> {
        let wire = format;
        let format = match format {
            Format::Json => 0,
            Format::Protobuf => 1,
        };
        let form = match form {
            Form::Plain => 0,
            Form::String => 1,
            Form::Delta => 2,
        };
        let slot = (format * 3 + form) * 2 + usize::from(id != 0);
        self.slots[slot].get_or_insert_with(|| make().map(|b| Item::shared(b, wire))).clone()
    }
}

/// Encodes a publication's push; `None` when the format cannot carry it (binary data
/// to a JSON client). `delta_form`: the subscriber negotiated deltas, so on JSON the
/// payload goes as a string (a delta always does). `id`: the channel's id for a
/// subscription with channel compaction (0: named).
pub(crate) fn encode_publication(
    channel: &str,
    id: u64,
    publication: &Publication,
    format: Format,
    delta_form: bool,
) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(64 + channel.len() + publication.data.len());
    match format {
        Format::Json => {
            // Looked at once where it entered the hub, not here for every publication.
            if !publication.delta && !publication.is_json() {
                return None;
            }
            if delta_form {
                protocol::json::encode_publication_push_as_string(channel, id, publication, &mut out)
            } else {
                protocol::json::encode_publication_push(channel, id, publication, &mut out)
            }
        }
        Format::Protobuf => protocol::protobuf::encode_publication_push(channel, id, publication, &mut out),
    }
    Some(out.freeze())
}

/// The broker's events, delivered to the hub (held weakly: the broker may outlive it).
struct Events(Weak<HubInner>);

impl BrokerEvents for Events {
    fn publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: &StreamPosition,
        previous: Option<Arc<Publication>>,
    ) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver(channel, publication, position, previous);
        }
    }

    fn interrupted(&self, channel: &str) {
        let (Some(hub), Ok(rt)) = (self.0.upgrade(), tokio::runtime::Handle::try_current()) else { return };
        let channel = channel.to_owned();
        rt.spawn(async move { hub.check_positions(&channel).await });
    }

    fn node_info(&self) -> Bytes {
        match self.0.upgrade() {
            Some(hub) => Bytes::from(Hub { inner: hub }.node_info().to_string()),
            None => Bytes::new(),
        }
    }

    fn join(&self, channel: &str, info: ClientInfo) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver_join_leave(channel, info, true);
        }
    }

    fn leave(&self, channel: &str, info: ClientInfo) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver_join_leave(channel, info, false);
        }
    }

    fn control(&self, message: Bytes) {
        if let Some(hub) = self.0.upgrade() {
            // The server API's request for a user's connections (a zero byte, which
            // starts no Protobuf message, then JSON).
            if let Some(json) = message.strip_prefix(b"\0") {
                match serde_json::from_slice::<NodeMessage>(json) {
                    Ok(c) => {
                        Hub { inner: hub }.apply_node_message(&c);
                    }
                    Err(e) => tracing::warn!(error = %e, "a control message that does not decode"),
                }
                return;
            }
            if let Some(forwarded) = message.strip_prefix(&[crate::pusher::xhr::FORWARD_PREFIX]) {
                crate::pusher::xhr::deliver_forwarded(&hub, forwarded);
                return;
            }
            // A forwarded long poll, or its answer; a forwarded command otherwise.
            if !crate::transport::long_poll::forwarded(&hub, &message) {
                hub.emulation.deliver_now(&message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channels_subscriber_with_its_key_fits_the_allocators_48_byte_class() {
        assert!(std::mem::size_of::<(u64, Sub)>() <= 48, "{}", std::mem::size_of::<(u64, Sub)>());
        // And a channel with its one subscriber in place, the 64-byte class.
        assert!(std::mem::size_of::<Local>() <= 64, "{}", std::mem::size_of::<Local>());
    }

    fn sub(seq: u64) -> Sub {
        Sub {
            client: Arc::new(ClientShared::new(Format::Json, 1024)),
            last: seq,
            base: NO_BASE,
            extra: None,
            join_leave: false,
            positioned: false,
            delta: false,
            server_side: false,
            lost: false,
            compact: false,
            pusher: false,
        }
    }

    #[test]
    fn a_channels_subscribers_are_kept_in_place_while_one_and_listed_while_several() {
        let mut subs = Subs::default();
        assert!(subs.is_empty());
        subs.insert(1, sub(1));
        assert!(matches!(subs, Subs::One(1, _)));
        subs.insert(1, sub(10));
        assert_eq!((subs.len(), subs.get_mut(1).map(|s| s.last)), (1, Some(10)), "replaced");
        subs.insert(2, sub(2));
        subs.insert(3, sub(3));
        assert_eq!(subs.len(), 3);
        let mut lasts: Vec<u64> = subs.values().map(|s| s.last).collect();
        lasts.sort();
        assert_eq!(lasts, [2, 3, 10]);
        assert_eq!(subs.remove(1).map(|s| s.last), Some(10));
        assert!(subs.remove(1).is_none());
        assert_eq!(subs.remove(2).map(|s| s.last), Some(2));
        assert!(matches!(subs, Subs::One(3, _)), "back in place");
        assert!(subs.get_mut(2).is_none());
        subs.values_mut().for_each(|s| s.last = 30);
        assert_eq!(subs.remove(3).map(|s| s.last), Some(30));
        assert!(subs.is_empty() && subs.values().next().is_none());
    }

    #[test]
    fn connection_details_keep_each_field_as_given() {
        let d = Details::new("js", "5.2", Transport::WEBSOCKET, Some("jti-1"), Some(1_700_000_000), br#"{"a":1}"#);
        assert_eq!(std::mem::size_of::<Details>(), 16);
        assert_eq!((d.app_name(), d.app_version(), d.transport()), ("js", "5.2", Transport::WEBSOCKET));
        assert_eq!(
            (d.token_uid(), d.token_issued_at(), d.meta()),
            (Some("jti-1"), Some(1_700_000_000), &br#"{"a":1}"#[..])
        );
        let d = Details::new("", "", Transport::SSE, Some(""), Some(0), &[]);
        assert_eq!(d.transport().name(), "sse");
        assert_eq!((d.app_name(), d.app_version(), d.token_uid(), d.token_issued_at()), ("", "", Some(""), Some(0)));
        let d = Details::new("", "", Transport::WEBSOCKET, None, None, &[]);
        assert!(d.packed.is_empty(), "nothing to keep, no block");
        assert_eq!((d.app_name(), d.token_uid(), d.token_issued_at(), d.meta()), ("", None, None, &[][..]));
        let d = Details::new("python", "", Transport::WEBSOCKET, None, None, b"{}");
        assert_eq!((d.app_name(), d.app_version(), d.token_uid(), d.meta()), ("python", "", None, &b"{}"[..]));
        let d = Details::default();
        assert_eq!((d.token_uid(), d.token_issued_at()), (None, None));
        let long = "x".repeat(300);
        let d = Details::new(&long, "1", Transport::UNI_LONG_POLL, Some(&long), Some(9), long.as_bytes());
        assert_eq!(d.transport().name(), "uni_long_poll");
        assert_eq!(
            (d.app_name(), d.app_version(), d.token_uid(), d.token_issued_at()),
            (&*long, "1", Some(&*long), Some(9))
        );
        assert_eq!(d.meta(), long.as_bytes());
        let d = Details::new("volley-bench", "", Transport::WEBSOCKET, None, None, &[]);
        assert_eq!(d.packed.len(), 16, "one byte per length, the transport's in the jti's");
        let d = Details::new("", "", Transport::WEBSOCKET, None, Some(7), &[]);
        assert_eq!((d.app_name(), d.token_uid(), d.token_issued_at(), d.meta()), ("", None, Some(7), &[][..]));
    }

    fn publication(data: &'static [u8], kind: PayloadKind) -> Publication {
        Publication { data: Bytes::from_static(data), kind, ..Default::default() }
    }

    #[test]
    fn delivery_trusts_the_kind_found_where_the_payload_entered() {
        assert_eq!(PayloadKind::of(b"{\"a\": [1, 2]}"), PayloadKind::Json);
        assert_eq!(PayloadKind::of(b"\x00\x01"), PayloadKind::Binary);
        assert_eq!(PayloadKind::of(b"{\n}"), PayloadKind::Binary, "a line break would split the frame's lines");
        // Marked JSON where it entered: embedded as it is, never parsed again (a kind
        // that lied would go through, which shows that nothing looks at it here).
        let trusted = publication(b"not json, but marked so", PayloadKind::Json);
        let push = encode_publication("c", 0, &trusted, Format::Json, false).expect("embedded");
        assert!(push.ends_with(b"\"data\":not json, but marked so}}}"));
        assert!(encode_publication("c", 0, &publication(b"{}", PayloadKind::Binary), Format::Json, false).is_none());
        // Unchecked (from a broker that does not carry the kind): looked at here.
        assert!(encode_publication("c", 0, &publication(b"{}", PayloadKind::Unchecked), Format::Json, false).is_some());
        assert!(encode_publication("c", 0, &publication(b"{", PayloadKind::Unchecked), Format::Json, false).is_none());
        // Protobuf carries anything.
        assert!(
            encode_publication("c", 0, &publication(b"\xff", PayloadKind::Binary), Format::Protobuf, false).is_some()
        );
    }

    /// Pusher subscribers get Pusher's shape, encoded once for them all (the same
    /// bytes), except the socket the publication excludes; a Centrifugo subscriber of
    /// the same channel still gets Centrifugo's push.
    #[tokio::test]
    async fn pusher_subscribers_share_one_encoding_and_the_excluded_one_is_skipped() {
        use crate::pusher::{internal_channel, TAG_EVENT, TAG_EXCLUDE};
        let hub = Hub::new(HubConfig::default()).unwrap();
        let inner = &hub.inner;
        let channel = internal_channel("1", "news");
        let client = |id: &str| Arc::new(ClientShared::with_id(client::ClientId::new(id), Format::Json, 1 << 20));
        let (a, b, c) = (client("1.1"), client("1.2"), client("1.3"));
        let centrifugo = Arc::new(ClientShared::new(Format::Json, 1 << 20));
        for (cl, pusher) in [(&a, true), (&b, true), (&c, true), (&centrifugo, false)] {
            let pending = inner.register(&channel, cl, SubOptions { pusher, ..SubOptions::default() }).await.unwrap();
            inner.go_live(&pending, None, 0, None, "", cl);
        }
        let tags = [(TAG_EVENT.to_owned(), "e".to_owned()), (TAG_EXCLUDE.to_owned(), "1.1".to_owned())];
        let p = Publication {
            data: Bytes::from_static(b"\"x\""),
            tags: tags.into_iter().collect(),
            kind: PayloadKind::Json,
            ..Default::default()
        };
        inner.publish(&channel, &Default::default(), p, None, true).await.unwrap();
        let take = |cl: &ClientShared| {
            let mut out = Vec::new();
            cl.take_since(&mut out);
            out
        };
        assert!(take(&a).is_empty(), "excluded");
        let (got_b, got_c) = (take(&b), take(&c));
        assert_eq!(&got_b[0][..], br#"{"event":"e","channel":"news","data":"x"}"#);
        assert_eq!(got_b[0].as_ptr(), got_c[0].as_ptr(), "one encoding shared");
        assert!(take(&centrifugo)[0].starts_with(b"{\"push\""));
    }
}
