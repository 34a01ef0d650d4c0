//! The hub's configuration: one serde struct, its defaults, and the rules of channel
//! names (namespaces and their options). Key names follow Centrifugo v6 where it has
//! the same setting, so a Centrifugo configuration reads with few changes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::TokenConfig;

/// Everything the hub engine needs. `Default` is safe to expose: no anonymous access
/// beyond what the namespaces allow, limits on everything.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Connections and what a client may do.
    pub client: ClientConfig,
    /// Channel names, and the options of each namespace.
    pub channel: ChannelConfig,
    /// The server API.
    pub http_api: HttpApiConfig,
    /// The HTTP-streaming emulation transport (`/connection/http_stream`).
    pub http_stream: EmulationStreamConfig,
    /// The SSE emulation transport (`/connection/sse`).
    pub sse: EmulationStreamConfig,
    /// The long-polling emulation transport (`/connection/long_poll`).
    pub long_poll: LongPollEmulationConfig,
    /// The endpoint of the emulation transports' commands (`/emulation`).
    pub emulation: EmulationConfig,
    /// Unidirectional SSE (`/connection/uni_sse`).
    pub uni_sse: UniConfig,
    /// Unidirectional HTTP stream of newline-delimited JSON (`/connection/uni_http_stream`).
    pub uni_http_stream: UniConfig,
    /// Unidirectional WebSocket (`/connection/uni_websocket`).
    pub uni_websocket: UniConfig,
    /// Long polling (`/connection/uni_long_poll`).
    pub uni_long_polling: LongPollingConfig,
    /// Pusher Channels compatibility: the apps Pusher clients and backends use.
    pub pusher: crate::pusher::PusherConfig,
    /// RPC: the proxy that answers clients' calls, and its namespaces.
    pub rpc: crate::proxy::RpcConfig,
}

/// A unidirectional transport's switch, and the size of the connect request it takes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UniConfig {
    /// Whether its endpoint answers (404 otherwise).
    pub enabled: bool,
    /// The largest connect request accepted, in bytes: a POST body (`uni_sse`,
    /// `uni_http_stream`) or the `cf_connect` parameter; 413 beyond. `uni_websocket`
    /// reads its first message up to `client.max_command_size` instead.
    pub max_request_body_size: usize,
}

impl Default for UniConfig {
    fn default() -> Self {
        UniConfig { enabled: false, max_request_body_size: 65536 }
    }
}

/// Long polling.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongPollingConfig {
    /// Whether `/connection/uni_long_poll` answers (404 otherwise).
    pub enabled: bool,
    /// How long a poll with nothing newer waits for a publication (at most 120s).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// The most publications in one answer; the cursor names the last one given.
    pub max_publications: usize,
}

impl Default for LongPollingConfig {
    fn default() -> Self {
        LongPollingConfig { enabled: false, timeout: Duration::from_secs(25), max_publications: 100 }
    }
}

/// Connections and what a client may do.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// How connection tokens are verified.
    pub token: TokenConfig,
    /// How subscription tokens are verified (default: as connection tokens).
    pub subscription_token: Option<TokenConfig>,
    /// Connect without a token as an anonymous user (user id "").
    pub allow_anonymous_connect_without_token: bool,
    /// No token checks at all: any token is accepted and its `sub` is trusted, every
    /// channel may be subscribed to and published into. For demos and tests only.
    pub insecure: bool,
    /// Origins allowed to connect from browsers (`Origin` header); `*` for all;
    /// patterns with one `*` (`https://*.example.com`). Empty: only requests with no
    /// Origin or an Origin of the same host.
    pub allowed_origins: Vec<String>,
    /// Seconds between the server's pings (the client answers with a pong).
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// How long the server waits for a pong before it disconnects with 3012.
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    /// How long a new connection may take to send `connect` (3502 after).
    #[serde(with = "duration")]
    pub stale_close_delay: Duration,
    /// How long after a connection expires (token `exp` not refreshed) it is closed
    /// with 3005.
    #[serde(with = "duration")]
    pub expired_close_delay: Duration,
    /// How long after a subscription expires (its token's `exp`, not refreshed with
    /// `sub_refresh`) the client is unsubscribed with 2501.
    #[serde(with = "duration")]
    pub expired_sub_close_delay: Duration,
    /// Channels one client may be subscribed to (106, or 3505 for server-side ones).
    pub channel_limit: usize,
    /// Connections in total on this node (3504 above); 0 for no limit.
    pub connection_limit: usize,
    /// Connections of one user on this node (3504 above); 0 for no limit.
    pub user_connection_limit: usize,
    /// Connections from one IP address on this node (3504 above); 0 for no limit.
    pub ip_connection_limit: usize,
    /// Largest command frame, in bytes (the connection is closed with 1009 above).
    pub max_command_size: usize,
    /// Commands per second one client may send, on average (111 above).
    pub command_rate: u32,
    /// Commands one client may send at once, in a burst.
    pub command_burst: u32,
    /// Bytes waiting to be written to one client: a client that does not read and
    /// lets more pile up is disconnected with 3008 (slow).
    pub queue_max_bytes: usize,
    /// How long a WebSocket client stays idle (nothing received but pongs, nothing
    /// sent but pings) before its connection is parked: held without a task, in a few
    /// hundred bytes, until its peer sends something, something is queued for it, or
    /// its next ping is due. Plain TCP connections served by `transport::tcp` only
    /// (`volley serve` without TLS). Zero: never parked.
    #[serde(with = "duration")]
    pub park_after: Duration,
    /// Subscribe every connected user to their personal channel (`#user` in
    /// `user_personal_channel_namespace`).
    pub user_subscribe_to_personal: bool,
    /// The namespace of personal channels (empty: no namespace).
    pub user_personal_channel_namespace: String,
    /// Offer permessage-deflate (RFC 7692) to WebSocket clients. Off by default: it costs
    /// CPU per connection for every message.
    pub websocket_compression: bool,
    /// The connect and refresh proxies to the application's backend.
    pub proxy: crate::proxy::ClientProxies,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            token: TokenConfig::default(),
            subscription_token: None,
            allow_anonymous_connect_without_token: false,
            insecure: false,
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            stale_close_delay: Duration::from_secs(10),
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            channel_limit: 128,
            connection_limit: 1_000_000,
            user_connection_limit: 0,
            ip_connection_limit: 0,
            max_command_size: 65_536,
            command_rate: 100,
            command_burst: 200,
            queue_max_bytes: 1 << 20,
            park_after: Duration::from_secs(5),
            user_subscribe_to_personal: false,
            user_personal_channel_namespace: String::new(),
            websocket_compression: false,
            proxy: Default::default(),
        }
    }
}

/// Channel names, and the options of each namespace.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelConfig {
    /// The options of channels without a namespace (`news`).
    pub without_namespace: ChannelOptions,
    /// Namespaces: `chat:room1` is the channel `room1` of namespace `chat`. Each has a
    /// `name` and the options of its channels.
    pub namespaces: Vec<ChannelOptions>,
    /// Longest channel name, in bytes (106 above).
    pub max_length: usize,
    /// Channels starting with this need a subscription token.
    pub private_prefix: String,
    /// Separates a namespace from the rest of the name.
    pub namespace_boundary: String,
    /// Separates a user-limited channel's name from its users (`dialog#42,43`).
    pub user_boundary: String,
    /// Separates the users of a user-limited channel.
    pub user_separator: String,
    /// The subscribe, publish and sub_refresh proxies to the application's backend,
    /// used in the namespaces that switch them on.
    pub proxy: crate::proxy::ChannelProxies,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
            max_length: 255,
            private_prefix: "$".into(),
            namespace_boundary: ":".into(),
            user_boundary: "#".into(),
            user_separator: ",".into(),
            proxy: Default::default(),
        }
    }
}

/// How a recovering client is answered.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryMode {
    /// Every publication the client missed, in order, or `recovered: false`.
    #[default]
    Stream,
    /// Only the latest publication (the channel holds a state, not a log).
    Cache,
}

/// The options of a channel (from its namespace).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOptions {
    /// The namespace's name (letters, digits, `_`, `-`, `.`); empty for channels
    /// without a namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Keep who is subscribed (the `presence` and `presence_stats` commands).
    pub presence: bool,
    /// Send join and leave pushes to subscribers that ask for them.
    pub join_leave: bool,
    /// Send join and leave pushes to every subscriber.
    pub force_push_join_leave: bool,
    /// Publications kept in history (0: none).
    pub history_size: usize,
    /// How long each publication stays in history.
    #[serde(with = "duration")]
    pub history_ttl: Duration,
    /// How long a stream's position (epoch, offset) outlives its last publication.
    #[serde(with = "duration")]
    pub history_meta_ttl: Duration,
    /// Positions on every subscription: clients check offsets for gaps.
    pub force_positioning: bool,
    /// Positions when the client asks.
    pub allow_positioning: bool,
    /// Recovery on every subscription.
    pub force_recovery: bool,
    /// Recovery when the client asks.
    pub allow_recovery: bool,
    /// How a recovering client is answered.
    pub force_recovery_mode: RecoveryMode,
    /// At most this many publications are recovered (more: `recovered: false`).
    pub recovery_max_publication_limit: usize,
    /// Authenticated clients may subscribe without a subscription token.
    pub allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe without a subscription token.
    pub allow_subscribe_for_anonymous: bool,
    /// Subscribers may publish.
    pub allow_publish_for_subscriber: bool,
    /// Authenticated clients may publish without subscribing.
    pub allow_publish_for_client: bool,
    /// Anonymous clients may publish.
    pub allow_publish_for_anonymous: bool,
    /// Subscribers may read history.
    pub allow_history_for_subscriber: bool,
    /// Authenticated clients may read history without subscribing.
    pub allow_history_for_client: bool,
    /// Anonymous clients may read history.
    pub allow_history_for_anonymous: bool,
    /// Subscribers may read presence.
    pub allow_presence_for_subscriber: bool,
    /// Authenticated clients may read presence without subscribing.
    pub allow_presence_for_client: bool,
    /// Anonymous clients may read presence.
    pub allow_presence_for_anonymous: bool,
    /// Channels like `dialog#42,43` admit only the users named after `#`.
    pub allow_user_limited_channels: bool,
    /// Delta formats the channel may use (`fossil`).
    pub allowed_delta_types: Vec<String>,
    /// A regular expression the channel's name (after `namespace:`) must match in full;
    /// empty for any (102 otherwise).
    pub channel_regex: String,
    /// Subscribers may pass a tags filter (`tf`): they then receive only the
    /// publications whose tags match (107 for a filter where this is off).
    pub allow_tags_filter: bool,
    /// Subscribers that offer channel compaction (subscribe flag 1, as centrifuge-js
    /// does) get a numeric channel id, and their publication, join and leave pushes
    /// carry it instead of the channel's name.
    pub allow_channel_compaction: bool,
    /// Subscriptions without a token are decided by the subscribe proxy
    /// (`channel.proxy.subscribe`) instead of the `allow_subscribe_for_*` options.
    pub subscribe_proxy_enabled: bool,
    /// Publications are decided (and may be changed) by the publish proxy
    /// (`channel.proxy.publish`) instead of the `allow_publish_for_*` options.
    pub publish_proxy_enabled: bool,
    /// Expiring subscriptions are refreshed by the sub_refresh proxy
    /// (`channel.proxy.sub_refresh`), not by the client with a new token.
    pub sub_refresh_proxy_enabled: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            name: String::new(),
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_meta_ttl: Duration::from_secs(30 * 24 * 3600),
            force_positioning: false,
            allow_positioning: false,
            force_recovery: false,
            allow_recovery: false,
            force_recovery_mode: RecoveryMode::Stream,
            recovery_max_publication_limit: 0,
            allow_subscribe_for_client: false,
            allow_subscribe_for_anonymous: false,
            allow_publish_for_subscriber: false,
            allow_publish_for_client: false,
            allow_publish_for_anonymous: false,
            allow_history_for_subscriber: false,
            allow_history_for_client: false,
            allow_history_for_anonymous: false,
            allow_presence_for_subscriber: false,
            allow_presence_for_client: false,
            allow_presence_for_anonymous: false,
            allow_user_limited_channels: false,
            allowed_delta_types: Vec::new(),
            channel_regex: String::new(),
            allow_tags_filter: false,
            allow_channel_compaction: false,
            subscribe_proxy_enabled: false,
            publish_proxy_enabled: false,
            sub_refresh_proxy_enabled: false,
        }
    }
}

impl ChannelOptions {
    /// The channel keeps history.
    pub fn has_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// The server API.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// The key a backend sends (`X-API-Key` header, or `Authorization: apikey KEY`).
    /// Empty: the API refuses every request (`volley serve` generates one).
    pub key: String,
    /// Errors as HTTP statuses (`transport`) instead of a 200 with an error object.
    pub error_mode: String,
}

/// A bidirectional emulation stream (`http_stream`, `sse`): a stream from the server,
/// with the client's commands sent to `/emulation`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulationStreamConfig {
    /// Whether the endpoint is served. On by default: an unused endpoint costs nothing,
    /// and it is what lets centrifuge-js fall back when WebSocket is blocked.
    pub enabled: bool,
    /// The largest connect command accepted (a body, or `cf_connect` for SSE), in
    /// bytes; 413 beyond.
    pub max_request_body_size: usize,
}

impl Default for EmulationStreamConfig {
    fn default() -> Self {
        EmulationStreamConfig { enabled: true, max_request_body_size: 65536 }
    }
}

/// The long-polling emulation (`/connection/long_poll`): the connect command opens a
/// session whose replies and pushes wait in a buffer for the client's next poll, with
/// the client's commands sent to `/emulation`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongPollEmulationConfig {
    /// Whether the endpoint is served. On by default, as the streams are: it is the
    /// last fallback where nothing may stay open.
    pub enabled: bool,
    /// The largest connect command accepted, in bytes; 413 beyond.
    pub max_request_body_size: usize,
    /// How long a poll with nothing buffered waits for something (at most 120s); it is
    /// answered 204 after that.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How long a session waits for its client's next poll: past it, the client is
    /// disconnected (it leaves its channels and their presence).
    #[serde(with = "duration")]
    pub session_ttl: Duration,
    /// The most bytes waiting for the next poll: past it, the client is disconnected
    /// with 3008, as a slow reader is.
    pub max_buffer_size: usize,
}

impl Default for LongPollEmulationConfig {
    fn default() -> Self {
        LongPollEmulationConfig {
            enabled: true,
            max_request_body_size: 65536,
            timeout: Duration::from_secs(25),
            session_ttl: Duration::from_secs(15),
            max_buffer_size: 1 << 20,
        }
    }
}

/// The emulation endpoint (`/emulation`), served when `http_stream`, `sse` or
/// `long_poll` is.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulationConfig {
    /// The largest request accepted, in bytes; 413 beyond.
    pub max_request_body_size: usize,
}

impl Default for EmulationConfig {
    fn default() -> Self {
        EmulationConfig { max_request_body_size: 65536 }
    }
}

/// Durations in the configuration: `"25s"`, `"500ms"`, `"10m"`, `"1h"`, `"30d"`, or a
/// number of seconds.
pub mod duration {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Parses `"25s"`, `"500ms"`, `"1.5s"`, `"10m"`, `"1h"`, `"30d"`, `"0"`.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?} (e.g. \"25s\", \"500ms\", \"1h\")"))?;
        let secs = match unit {
            "" if n == 0.0 => 0.0,
            "ns" => n / 1e9,
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            _ => return Err(format!("not a duration: {s:?} (units: ms, s, m, h, d)")),
        };
        Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
    }

    /// Formats as the shortest exact unit.
    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        if ms == 0 {
            "0s".into()
        } else if ms.is_multiple_of(86_400_000) {
            format!("{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }

    /// serde: deserializes a string with a unit or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Duration::try_from_secs_f64(n).map_err(de::Error::custom),
            Raw::Text(s) => parse(&s).map_err(de::Error::custom),
        }
    }

    /// serde: serializes as a string with a unit.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_as_seconds() {
        assert_eq!(duration::parse("25s").unwrap(), Duration::from_secs(25));
        assert_eq!(duration::parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration::parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration::parse("0").unwrap(), Duration::ZERO);
        assert!(duration::parse("5 parsecs").is_err());
        assert!(duration::parse("-1s").is_err());
        let c: ClientConfig = serde_json::from_str(r#"{"ping_interval": 10, "pong_timeout": "3s"}"#).unwrap();
        assert_eq!((c.ping_interval, c.pong_timeout), (Duration::from_secs(10), Duration::from_secs(3)));
        assert_eq!(duration::format(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let e = serde_json::from_str::<HubConfig>(r#"{"client": {"pingg_interval": 1}}"#).unwrap_err();
        assert!(e.to_string().contains("pingg_interval"), "{e}");
    }
}
