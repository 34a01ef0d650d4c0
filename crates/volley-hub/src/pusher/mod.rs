//! Pusher Channels compatibility: the apps a Pusher client or backend names, and how
//! their channels, users and events map onto the hub's engine, so that pusher-js,
//! Laravel Echo and the Pusher server SDKs work against the same channels, presence
//! and brokers as Centrifugo's clients.
//!
//! A Pusher channel lives in the engine under an internal name that holds its app's id
//! ([`internal_channel`]); the name contains control characters, which the Centrifugo
//! protocol refuses in channel names, so no Centrifugo client reaches a Pusher app's
//! channels and no Pusher name clashes with a Centrifugo namespace. A Pusher event is a
//! publication whose tags carry the event's name ([`TAG_EVENT`]), the publishing user on
//! presence channels ([`TAG_USER_ID`]) and the socket excluded from delivery
//! ([`TAG_EXCLUDE`]); its data is the JSON text of the event's `data` (a JSON string for
//! the HTTP API's events), embedded as it is.
//!
//! A Pusher connection's subscriptions are engine subscribers marked Pusher: the
//! delivery encodes an event in Pusher's shape (`wire`) once per publication for all of
//! them and skips the one whose socket id (its client id) the exclusion tag names.
//! `conn` serves the connections (`/app/{key}`), `api` the HTTP API (`/apps/{id}/...`),
//! [`sign`] checks the signatures. Member events (`pusher_internal:member_added`,
//! `member_removed`) and watchlist events are publications too, sent when the broker's
//! presence shows a user's first or last connection; a signed-in user's connections
//! are the presence of an internal `#online-{id}` channel, and its watchers subscribe to
//! its internal `#watchlist-{id}` channel.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{duration, ChannelOptions};

pub(crate) mod api;
pub(crate) mod conn;
pub(crate) mod count;
pub mod sign;
pub mod webhook;
pub(crate) mod wire;
pub(crate) mod xhr;

/// The tag that holds a publication's Pusher event name.
pub const TAG_EVENT: &str = "event";
/// The tag that holds the user id of a client event's sender on a presence channel.
pub const TAG_USER_ID: &str = "user_id";
/// The tag that holds the socket id a publication is not delivered to (the HTTP API's
/// `socket_id`, a client event's sender).
pub const TAG_EXCLUDE: &str = "socket_id";

/// What starts and separates the parts of an internal name (ASCII unit separator: a
/// control character, refused in Centrifugo channel names).
const SEP: char = '\u{1f}';

/// Pusher compatibility: the apps.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The apps Pusher clients and backends may use (none: the Pusher endpoints answer
    /// 404).
    pub apps: Vec<PusherApp>,
    /// How webhooks are sent (the apps name where to).
    pub webhooks: webhook::WebhookSettings,
    /// How long an HTTP fallback session (`xhr_streaming`, `xhr_polling`) lives without
    /// a receive request open (its client went away).
    #[serde(with = "duration")]
    pub http_session_timeout: Duration,
}

impl Default for PusherConfig {
    fn default() -> Self {
        PusherConfig {
            apps: Vec::new(),
            webhooks: webhook::WebhookSettings::default(),
            http_session_timeout: Duration::from_secs(15),
        }
    }
}

/// One Pusher app: its credentials, limits and features.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherApp {
    /// The app's id, as the HTTP API's path names it (`/apps/{id}/events`); digits for
    /// the Pusher SDKs that expect a number.
    pub id: String,
    /// The public key clients connect with (`/app/{key}`).
    pub key: String,
    /// The secret that signs channel authorizations, sign-ins, API requests and
    /// webhooks.
    pub secret: String,
    /// A disabled app refuses connections (4003) and API requests (403).
    pub enabled: bool,
    /// Client events (`client-` on private and presence channels) are relayed.
    pub enable_client_messages: bool,
    /// `pusher_internal:subscription_count` events to the subscribers of public,
    /// private and cache channels when their number changes (Pusher's subscription
    /// counting; throttled per channel, `pusher::count`).
    pub enable_subscription_count: bool,
    /// Client events one connection may send per second (4301 above).
    pub max_client_events_per_second: u32,
    /// Connections to this app on this node (4100 above); 0 for no limit.
    pub max_connections: usize,
    /// Members of one presence channel (a subscription beyond is refused).
    pub max_presence_members_per_channel: usize,
    /// The largest `user_info` of a presence member, in bytes.
    pub max_presence_member_size: usize,
    /// The longest channel name, in bytes.
    pub max_channel_name_length: usize,
    /// The longest event name, in bytes.
    pub max_event_name_length: usize,
    /// The largest event `data`, in bytes (413 from the HTTP API).
    pub max_event_payload_size: usize,
    /// Channels one `events` request may name.
    pub max_event_channels_at_once: usize,
    /// Events one `batch_events` request may hold.
    pub max_event_batch_size: usize,
    /// The activity timeout told to clients in `pusher:connection_established`: a
    /// client pings after this long without a message.
    #[serde(with = "duration")]
    pub activity_timeout: Duration,
    /// How long a client the server pinged (after `activity_timeout` of silence) has
    /// to answer before it is closed with 4201.
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    /// How long a connection may stay without a subscription or sign-in before it is
    /// closed with 4009, when the app requires it (`require_authorization`).
    #[serde(with = "duration")]
    pub authorization_timeout: Duration,
    /// Close connections that neither sign in nor subscribe to an authorized channel
    /// within `authorization_timeout`.
    pub require_authorization: bool,
    /// How long a `cache-` channel keeps its last event.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Where the app's webhooks go.
    pub webhooks: Vec<webhook::WebhookTarget>,
}

impl Default for PusherApp {
    fn default() -> Self {
        PusherApp {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            enabled: true,
            enable_client_messages: false,
            enable_subscription_count: false,
            max_client_events_per_second: 10,
            max_connections: 0,
            max_presence_members_per_channel: 100,
            max_presence_member_size: 2048,
            max_channel_name_length: 200,
            max_event_name_length: 200,
            max_event_payload_size: 10240,
            max_event_channels_at_once: 100,
            max_event_batch_size: 10,
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            authorization_timeout: Duration::from_secs(30),
            require_authorization: false,
            cache_ttl: Duration::from_secs(30 * 60),
            webhooks: Vec::new(),
        }
    }
}

impl PusherConfig {
    /// The app with this key (WebSocket and HTTP fallback clients).
    pub fn by_key(&self, key: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.key == key)
    }

    /// The app with this id (the HTTP API).
    pub fn by_id(&self, id: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// Checks the apps: ids and keys present and unique, secrets present.
    pub fn check(&self) -> Result<(), String> {
        if self.http_session_timeout < Duration::from_millis(100) {
            return Err("pusher.http_session_timeout: must be at least 100ms".into());
        }
        for (i, a) in self.apps.iter().enumerate() {
            let what = format!("pusher.apps[{i}]");
            if a.id.is_empty() || a.key.is_empty() || a.secret.is_empty() {
                return Err(format!("{what}: id, key and secret must all be set"));
            }
            if a.id.contains(SEP) || a.id.contains('/') {
                return Err(format!("{what}: id {:?} must not contain '/' or control characters", a.id));
            }
            if self.apps[..i].iter().any(|b| b.id == a.id) {
                return Err(format!("{what}: id {:?} is used by another app", a.id));
            }
            if self.apps[..i].iter().any(|b| b.key == a.key) {
                return Err(format!("{what}: key {:?} is used by another app", a.key));
            }
            for (j, w) in a.webhooks.iter().enumerate() {
                w.check().map_err(|e| format!("{what}.webhooks[{j}]: {e}"))?;
            }
        }
        Ok(())
    }
}

/// The kind of a Pusher channel, from its name's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: a subscription needs the app's signature.
    Private,
    /// `private-encrypted-`: private, and the data is end-to-end encrypted (relayed
    /// unchanged; client events are refused).
    Encrypted,
    /// `presence-`: private, with members.
    Presence,
    /// `#server-to-user-{id}`: the sign-in's channel of one user.
    User,
}

/// A Pusher channel's kind, and whether it is a cache channel (`cache-`,
/// `private-cache-`, `private-encrypted-cache-`, `presence-cache-`).
pub fn channel_kind(name: &str) -> (ChannelKind, bool) {
    if name.starts_with("#server-to-user-") {
        return (ChannelKind::User, false);
    }
    let (kind, rest) = if let Some(rest) = name.strip_prefix("private-encrypted-") {
        (ChannelKind::Encrypted, rest)
    } else if let Some(rest) = name.strip_prefix("private-") {
        (ChannelKind::Private, rest)
    } else if let Some(rest) = name.strip_prefix("presence-") {
        (ChannelKind::Presence, rest)
    } else {
        (ChannelKind::Public, name)
    };
    (kind, rest.starts_with("cache-"))
}

/// Whether a channel name is one Pusher accepts: 1 to `max` bytes of
/// `[A-Za-z0-9_\-=@,.;]`, or a user's `#server-to-user-{id}` channel.
pub fn valid_channel_name(name: &str, max: usize) -> bool {
    let body = name.strip_prefix("#server-to-user-").unwrap_or(name);
    !body.is_empty() && name.len() <= max && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// The engine's options for a Pusher channel: members on presence channels, the last
/// event for `cache_ttl` on cache channels, nothing kept otherwise. Join and leave
/// pushes are off: Pusher's member events are sent per user, not per connection.
pub fn channel_options(app: &PusherApp, name: &str) -> ChannelOptions {
    let (kind, cache) = channel_kind(name);
    ChannelOptions {
        presence: kind == ChannelKind::Presence,
        history_size: usize::from(cache),
        history_ttl: if cache { app.cache_ttl } else { Duration::ZERO },
        ..ChannelOptions::default()
    }
}

/// The engine's name of an app's channel.
pub fn internal_channel(app_id: &str, name: &str) -> String {
    format!("pusher{SEP}{app_id}{SEP}{name}")
}

/// The app's id and the Pusher name of an engine channel, if it is a Pusher one.
pub fn external_channel(internal: &str) -> Option<(&str, &str)> {
    let rest = internal.strip_prefix("pusher")?.strip_prefix(SEP)?;
    rest.split_once(SEP)
}

/// The engine's user id of an app's signed-in user (connections that did not sign in
/// are kept under [`internal_user`] with an empty id).
pub fn internal_user(app_id: &str, user_id: &str) -> String {
    format!("pusher{SEP}{app_id}{SEP}{user_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_kinds_follow_the_prefixes() {
        assert_eq!(channel_kind("news"), (ChannelKind::Public, false));
        assert_eq!(channel_kind("cache-news"), (ChannelKind::Public, true));
        assert_eq!(channel_kind("private-a"), (ChannelKind::Private, false));
        assert_eq!(channel_kind("private-cache-a"), (ChannelKind::Private, true));
        assert_eq!(channel_kind("private-encrypted-a"), (ChannelKind::Encrypted, false));
        assert_eq!(channel_kind("private-encrypted-cache-a"), (ChannelKind::Encrypted, true));
        assert_eq!(channel_kind("presence-room"), (ChannelKind::Presence, false));
        assert_eq!(channel_kind("presence-cache-room"), (ChannelKind::Presence, true));
        assert_eq!(channel_kind("#server-to-user-42"), (ChannelKind::User, false));
    }

    #[test]
    fn names_are_checked_and_mapped_both_ways() {
        assert!(valid_channel_name("private-chat.room_1=@,;-x", 200));
        assert!(valid_channel_name("#server-to-user-42", 200));
        assert!(!valid_channel_name("", 200));
        assert!(!valid_channel_name("a b", 200));
        assert!(!valid_channel_name("a:b", 200));
        assert!(!valid_channel_name(&"a".repeat(201), 200));
        let internal = internal_channel("123", "presence-room");
        assert_eq!(external_channel(&internal), Some(("123", "presence-room")));
        assert_eq!(external_channel("news"), None);
        assert!(internal.chars().any(char::is_control), "unreachable by Centrifugo clients");
    }

    #[test]
    fn apps_are_checked() {
        let app = |id: &str, key: &str| PusherApp {
            id: id.into(),
            key: key.into(),
            secret: "s".into(),
            ..Default::default()
        };
        assert!(PusherConfig { apps: vec![app("1", "k1"), app("2", "k2")], ..Default::default() }.check().is_ok());
        assert!(PusherConfig { apps: vec![app("1", "k1"), app("1", "k2")], ..Default::default() }.check().is_err());
        assert!(PusherConfig { apps: vec![app("1", "k1"), app("2", "k1")], ..Default::default() }.check().is_err());
        assert!(PusherConfig { apps: vec![app("", "k1")], ..Default::default() }.check().is_err());
    }
}
