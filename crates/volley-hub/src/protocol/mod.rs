//! Centrifugo's client protocol (version 2), independent of its wire format: the
//! commands a client sends, the replies and pushes it receives, the error and
//! disconnect codes. `json` and `protobuf` turn these into bytes and back; the engine
//! sees only these types.
//!
//! Payloads (`data` fields) are kept as the bytes the client or the API sent: JSON text
//! on the JSON protocol, any bytes on the Protobuf one. A publication is encoded once
//! per wire format and shared by every subscriber (see [`crate::engine`]).

pub mod codes;
pub mod json;
pub mod protobuf;

use std::collections::BTreeMap;

use bytes::Bytes;

pub use codes::{Disconnect, ErrorReply};

/// A wire format of the client protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// Newline-delimited JSON in text frames (the default subprotocol).
    #[default]
    Json,
    /// Varint-length-delimited Protobuf in binary frames (`centrifuge-protobuf`).
    Protobuf,
}

/// One command from a client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Command {
    /// Matches the reply to the command; 0 for the pong (an empty command).
    pub id: u32,
    /// What the client asks.
    pub request: Request,
}

/// The method of a command and its parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Request {
    /// No method: with `id` 0 the client's answer to a server ping; with an `id`, a
    /// method this server does not know (error 104).
    #[default]
    None,
    /// `connect`: the first command of a connection.
    Connect(ConnectRequest),
    /// `subscribe`.
    Subscribe(SubscribeRequest),
    /// `unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `publish`: from the client, into a channel.
    Publish {
        /// The channel.
        channel: String,
        /// The payload.
        data: Bytes,
    },
    /// `presence`: who is in a channel.
    Presence {
        /// The channel.
        channel: String,
    },
    /// `presence_stats`: how many clients and users are in a channel.
    PresenceStats {
        /// The channel.
        channel: String,
    },
    /// `history`.
    History(HistoryRequest),
    /// `rpc`: a call the server answers (or refuses).
    Rpc {
        /// The method name the application chose.
        method: String,
        /// The payload.
        data: Bytes,
    },
    /// `send`: an asynchronous message to the server, without reply.
    Send {
        /// The payload.
        data: Bytes,
    },
    /// `refresh`: a new connection token.
    Refresh {
        /// The new token.
        token: String,
    },
    /// `sub_refresh`: a new subscription token.
    SubRefresh {
        /// The channel.
        channel: String,
        /// The new token.
        token: String,
    },
}

impl Request {
    /// The method's name, as the protocol spells it (`"ping"` for an empty command).
    pub fn method(&self) -> &'static str {
        match self {
            Request::None => "ping",
            Request::Connect(_) => "connect",
            Request::Subscribe(_) => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Publish { .. } => "publish",
            Request::Presence { .. } => "presence",
            Request::PresenceStats { .. } => "presence_stats",
            Request::History(_) => "history",
            Request::Rpc { .. } => "rpc",
            Request::Send { .. } => "send",
            Request::Refresh { .. } => "refresh",
            Request::SubRefresh { .. } => "sub_refresh",
        }
    }
}

/// The parameters of `connect`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectRequest {
    /// A connection JWT, empty for anonymous or insecure connections.
    pub token: String,
    /// Data the client sends with connect (for a connect proxy; unused otherwise).
    pub data: Bytes,
    /// Server-side subscriptions the client recovers: channel → its last position.
    pub subs: BTreeMap<String, SubscribeRequest>,
    /// The client's name (`js`, `python`, ...).
    pub name: String,
    /// The client's version.
    pub version: String,
    /// Headers the client emulates (centrifuge-js's `headers` option), forwarded by
    /// proxies that list them in `emulated_headers`.
    pub headers: BTreeMap<String, String>,
}

/// The parameters of `subscribe` (also the recovery state of a server-side
/// subscription in `connect`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscribeRequest {
    /// The channel (empty inside `connect.subs`, where the map key names it).
    pub channel: String,
    /// A subscription JWT, for channels that need one.
    pub token: String,
    /// The client asks to recover from `epoch`/`offset`.
    pub recover: bool,
    /// The epoch of the client's last position.
    pub epoch: String,
    /// The offset of the client's last publication.
    pub offset: u64,
    /// Data for a subscribe proxy (unused otherwise).
    pub data: Bytes,
    /// The client asks for positioning (since centrifuge-js 5).
    pub positioned: bool,
    /// The client asks for recovery (the same as `recover`, from newer clients).
    pub recoverable: bool,
    /// The client joins and leaves with the channel's join/leave pushes.
    pub join_leave: bool,
    /// The delta format the client can decode (`fossil`), or empty.
    pub delta: String,
    /// Flags: bit 1 offers channel compaction, bit 2 asks for error 112 instead of
    /// `recovered: false`.
    pub flag: u64,
    /// A tags filter (`tf`): only publications whose tags match are delivered.
    pub tf: Option<FilterNode>,
}

/// A node of a tags filter (see [`crate::filter`]): a comparison of one tag when `op` is
/// empty, else `and`, `or` or `not` of `nodes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterNode {
    /// `""` (a comparison), `and`, `or` or `not`.
    pub op: String,
    /// The tag a comparison looks at.
    pub key: String,
    /// The comparison: `eq`, `neq`, `in`, `nin`, `ex`, `nex`, `sw`, `ew`, `ct`, `gt`,
    /// `gte`, `lt`, `lte`.
    pub cmp: String,
    /// The value most comparisons take.
    pub val: String,
    /// The values of `in` and `nin`.
    pub vals: Vec<String>,
    /// The children of `and`, `or` and `not`.
    pub nodes: Vec<FilterNode>,
}

impl SubscribeRequest {
    /// `flag & 1`: the client takes a numeric channel id in pushes instead of the
    /// channel's name (channel compaction), where the namespace allows it.
    pub const FLAG_CHANNEL_COMPACTION: u64 = 1;
    /// `flag & 2`: an unrecoverable position is an error (112), not `recovered: false`.
    pub const FLAG_REJECT_UNRECOVERED: u64 = 2;
}

/// The parameters of `history`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryRequest {
    /// The channel.
    pub channel: String,
    /// At most this many publications; 0 for none (only the current position), -1 for
    /// as many as the history holds (up to the server's limit).
    pub limit: i32,
    /// Publications after this position, when set.
    pub since: Option<StreamPosition>,
    /// Newest first.
    pub reverse: bool,
}

/// A position in a channel's stream: the offset of a publication within an epoch. A new
/// epoch means the stream was lost (a restart of an in-memory broker, an expired
/// history) and offsets start again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The offset of the last publication (0 when there is none).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// Who a client is, as others see it in presence, joins, leaves and publications.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientInfo {
    /// The user id (empty for anonymous users).
    pub user: String,
    /// The connection's id.
    pub client: String,
    /// The connection's info (from the token's `info` claim), JSON or bytes.
    pub conn_info: Bytes,
    /// The subscription's info (from the subscription token's `info` claim).
    pub chan_info: Bytes,
}

/// What is known of a payload: whether the JSON format may embed it as it is. Found out
/// once, where the payload enters the hub (a client's publish, the server API,
/// [`crate::Hub::publish`]), so that delivery never parses a payload again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PayloadKind {
    /// Not looked at yet: [`Publication::is_json`] looks (a publication decoded from the
    /// wire, or from a broker that does not carry the kind).
    #[default]
    Unchecked,
    /// One JSON value with no raw line break: embedded in JSON replies as it is.
    Json,
    /// Anything else (binary data, or JSON over several lines from a Protobuf client):
    /// it cannot go to a JSON client.
    Binary,
}

impl PayloadKind {
    /// Looks at `data` once: [`PayloadKind::Json`] or [`PayloadKind::Binary`].
    pub fn of(data: &[u8]) -> PayloadKind {
        if !data.iter().any(|&b| b == b'\n' || b == b'\r') && json::is_json(data) {
            PayloadKind::Json
        } else {
            PayloadKind::Binary
        }
    }
}

/// A message published into a channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Publication {
    /// Its offset in the channel's stream (0 on channels without positions).
    pub offset: u64,
    /// The payload (or, with `delta`, the fossil delta from the previous payload).
    pub data: Bytes,
    /// The publisher, when a client published it.
    pub info: Option<ClientInfo>,
    /// Tags the publisher attached.
    pub tags: BTreeMap<String, String>,
    /// `data` is a delta against the previous publication the client received.
    pub delta: bool,
    /// Milliseconds since the Unix epoch when it was published (0: not sent).
    pub time: i64,
    /// Whether `data` is JSON, as found where it entered the hub (never sent).
    pub kind: PayloadKind,
}

impl Publication {
    /// Whether the JSON format can carry `data` as it is (empty data can: it is left
    /// out). Looks at the bytes only when nobody did before ([`PayloadKind::Unchecked`]).
    pub fn is_json(&self) -> bool {
        match self.kind {
            PayloadKind::Json => true,
            PayloadKind::Binary => self.data.is_empty(),
            PayloadKind::Unchecked => self.data.is_empty() || PayloadKind::of(&self.data) == PayloadKind::Json,
        }
    }
}

/// What the server answers to a command, or pushes.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The result of the command `id`.
    Result {
        /// The command's id.
        id: u32,
        /// The result.
        result: ReplyResult,
    },
    /// The command `id` failed.
    Error {
        /// The command's id.
        id: u32,
        /// Why.
        error: ErrorReply,
    },
    /// Something the client did not ask for.
    Push(Push),
    /// The server's ping (`{}`), which a client that was told `pong: true` answers.
    Ping,
}

/// The result of each command.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyResult {
    /// `connect`.
    Connect(ConnectResult),
    /// `subscribe`.
    Subscribe(SubscribeResult),
    /// `unsubscribe` (empty).
    Unsubscribe,
    /// `publish` (empty).
    Publish,
    /// `presence`: client id → info.
    Presence(BTreeMap<String, ClientInfo>),
    /// `presence_stats`.
    PresenceStats {
        /// Connections in the channel.
        num_clients: u32,
        /// Distinct users in the channel.
        num_users: u32,
    },
    /// `history`.
    History {
        /// The publications asked for.
        publications: Vec<Publication>,
        /// The stream's current position.
        position: StreamPosition,
    },
    /// `rpc`.
    Rpc {
        /// The answer.
        data: Bytes,
    },
    /// `refresh`.
    Refresh {
        /// The connection's id.
        client: String,
        /// The server's version.
        version: String,
        /// The connection expires.
        expires: bool,
        /// Seconds until it does.
        ttl: u32,
    },
    /// `sub_refresh`.
    SubRefresh {
        /// The subscription expires.
        expires: bool,
        /// Seconds until it does.
        ttl: u32,
    },
}

/// The result of `connect`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectResult {
    /// The connection's id.
    pub client: String,
    /// The server's version.
    pub version: String,
    /// The connection expires (the token's `exp`): the client refreshes before `ttl`.
    pub expires: bool,
    /// Seconds until it expires.
    pub ttl: u32,
    /// Data for the client (from a connect proxy; empty otherwise).
    pub data: Bytes,
    /// Server-side subscriptions: channel → its subscribe result.
    pub subs: BTreeMap<String, SubscribeResult>,
    /// Seconds between the server's pings (0: none).
    pub ping: u32,
    /// The client answers pings with pongs.
    pub pong: bool,
    /// The session id, for the emulation transports (empty on WebSocket).
    pub session: String,
    /// The node that holds the session, for the emulation transports.
    pub node: String,
    /// Milliseconds since the Unix epoch (0: not sent).
    pub time: i64,
}

/// The result of `subscribe`, and the state of a server-side subscription.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscribeResult {
    /// The subscription expires (the subscription token's `exp`).
    pub expires: bool,
    /// Seconds until it does.
    pub ttl: u32,
    /// The channel keeps positions the client can recover from.
    pub recoverable: bool,
    /// The stream's epoch.
    pub epoch: String,
    /// Recovered publications, or the last ones in cache recovery mode.
    pub publications: Vec<Publication>,
    /// The recovery asked for succeeded.
    pub recovered: bool,
    /// The stream's current offset.
    pub offset: u64,
    /// The channel's stream is positioned: the client checks offsets for gaps.
    pub positioned: bool,
    /// Data for the client (from a subscribe proxy; empty otherwise).
    pub data: Bytes,
    /// The client asked to recover.
    pub was_recovering: bool,
    /// Publications will come as fossil deltas where smaller.
    pub delta: bool,
    /// Channel compaction: the numeric id the pushes of this subscription carry
    /// instead of the channel's name (0: not compacted).
    pub id: u64,
}

/// What the server pushes, on a channel or to the connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// The channel's numeric id on a subscription with channel compaction (its
    /// subscribe result gave it), sent instead of `channel`; 0 otherwise.
    pub id: u64,
    /// The channel, or empty for pushes to the connection (and compacted ones).
    pub channel: String,
    /// What is pushed.
    pub kind: PushKind,
}

/// The kinds of push.
#[derive(Clone, Debug, PartialEq)]
pub enum PushKind {
    /// A publication.
    Publication(Publication),
    /// Someone subscribed (channels with join/leave).
    Join(ClientInfo),
    /// Someone unsubscribed.
    Leave(ClientInfo),
    /// The server unsubscribed the client.
    Unsubscribe {
        /// The code: 2000-2499 final, 2500-2999 the client resubscribes.
        code: u32,
        /// Why.
        reason: String,
    },
    /// A message to the connection (`send` from the server).
    Message {
        /// The payload.
        data: Bytes,
    },
    /// The server subscribed the client (a server-side subscription).
    Subscribe(SubscribeResult),
    /// The connection was accepted (unidirectional transports).
    Connect(ConnectResult),
    /// The server disconnects the client (transports without a close code).
    Disconnect(Disconnect),
    /// The connection's expiry was extended.
    Refresh {
        /// The connection expires.
        expires: bool,
        /// Seconds until it does.
        ttl: u32,
    },
}

/// Unsubscribe codes (pushed with [`PushKind::Unsubscribe`]).
pub mod unsubscribe {
    /// The server unsubscribed the client (final).
    pub const SERVER: u32 = 2000;
    /// The client's stream lost publications: it resubscribes and recovers.
    pub const INSUFFICIENT_STATE: u32 = 2500;
    /// The subscription's token expired and was not refreshed: the client resubscribes
    /// with a new one.
    pub const EXPIRED: u32 = 2501;
}
