//! The broker: what the hub's nodes share. It assigns each publication its position in
//! its channel's stream, keeps history, carries publications, joins and leaves to the
//! nodes that have subscribers of the channel, and holds presence.
//!
//! The trait is shaped for a broker across processes (Redis): every call is async;
//! positions are assigned by the broker, atomically with storing the publication in
//! history; a node receives only what it subscribed to, and must not assume it sees
//! every publication (the engine checks offsets for gaps). [`MemoryBroker`] is the
//! embedded default: one process, nothing survives a restart, so a restart changes
//! every stream's epoch.

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use memory::MemoryBroker;
#[cfg(feature = "redis")]
pub use redis::{RedisBroker, RedisConfig};

use crate::protocol::{ClientInfo, Publication, StreamPosition};

/// A boxed future, as the broker's methods return (the trait is object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A broker failed (unreachable, refused, timed out).
#[derive(Debug, thiserror::Error)]
#[error("broker: {0}")]
pub struct BrokerError(pub String);

/// What the broker hands a node for the channels it subscribed to.
pub trait BrokerEvents: Send + Sync + 'static {
    /// A publication, with its position. `previous` is the publication before it in
    /// the stream when the broker has it and the channel uses deltas.
    fn publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: &StreamPosition,
        previous: Option<Arc<Publication>>,
    );
    /// A client joined the channel.
    fn join(&self, channel: &str, info: ClientInfo);
    /// A client left the channel.
    fn leave(&self, channel: &str, info: ClientInfo);
    /// A control message another node sent to this one ([`Broker::send_control`]).
    /// Opaque to the broker; the hub uses it to forward the emulation transports'
    /// commands and long polls to the node that holds their session, and the polls'
    /// answers back. Ignored by default.
    fn control(&self, message: Bytes) {
        let _ = message;
    }
    /// The node's subscription to `channel` was interrupted (the broker's connection
    /// dropped) and is live again: publications may have been missed meanwhile, and the
    /// stream may have a new epoch. Ignored by default.
    fn interrupted(&self, channel: &str) {
        let _ = channel;
    }
    /// What this node tells the others of itself (the server API's `info`), as JSON; a
    /// broker across processes publishes it periodically. Empty by default.
    fn node_info(&self) -> Bytes {
        Bytes::new()
    }
}

/// How a publication is kept.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// How many publications the channel's history keeps (0: none, and the
    /// publication gets no offset unless `positioned`).
    pub history_size: usize,
    /// How long each publication stays in history.
    pub history_ttl: Duration,
    /// How long the stream's epoch and offset are kept after its last publication.
    pub history_meta_ttl: Duration,
    /// A key that makes a repeated publish (a retry) a no-op within `idempotent_ttl`.
    pub idempotency_key: Option<String>,
    /// How long an idempotency key is remembered.
    pub idempotent_ttl: Duration,
    /// Hand subscribers the previous publication too, for deltas.
    pub use_delta: bool,
}

/// The outcome of a publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishResult {
    /// The publication's position (offset 0 without history).
    pub position: StreamPosition,
    /// An earlier publish with the same idempotency key had already done it: this one
    /// changed nothing and was not delivered again.
    pub suppressed: bool,
}

/// What a history read asks for.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// Publications after this position (when its epoch is the stream's; otherwise
    /// the result's position tells the caller it cannot recover).
    pub since: Option<StreamPosition>,
    /// At most this many; `None` for all the history holds.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
    /// How long the stream's meta (epoch, offset) is kept (a read creates the stream
    /// with a new epoch when it has none).
    pub history_meta_ttl: Duration,
}

/// The outcome of a history read.
#[derive(Clone, Debug, Default)]
pub struct HistoryResult {
    /// The publications asked for, oldest first unless `reverse`.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's current position (its top).
    pub position: StreamPosition,
}

/// Presence counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections.
    pub clients: u32,
    /// Distinct users.
    pub users: u32,
}

/// A broker. See the module's documentation.
pub trait Broker: Send + Sync + 'static {
    /// Where this node's events go. Called once, before any subscribe.
    fn set_events(&self, events: Arc<dyn BrokerEvents>);

    /// This node has subscribers of `channel`: deliver its publications here.
    fn subscribe(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// This node has no more subscribers of `channel`.
    fn unsubscribe(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Publishes: assigns the position, stores it in history, delivers it to every node
    /// subscribed to the channel (this one included).
    fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: PublishOptions,
    ) -> BoxFuture<'_, Result<PublishResult, BrokerError>>;

    /// Delivers a join to every node subscribed to the channel.
    fn publish_join(&self, channel: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Delivers a leave to every node subscribed to the channel.
    fn publish_leave(&self, channel: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Reads a channel's history and its current position.
    fn history(&self, channel: &str, query: HistoryQuery) -> BoxFuture<'_, Result<HistoryResult, BrokerError>>;

    /// Empties a channel's history (its position stays).
    fn remove_history(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Adds (or refreshes) a client in a channel's presence; it expires after `ttl`
    /// unless refreshed (a node that dies takes its clients out within `ttl`).
    fn add_presence(&self, channel: &str, info: ClientInfo, ttl: Duration) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Removes a client from a channel's presence.
    fn remove_presence(&self, channel: &str, client: &str, user: &str) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Who is in a channel: client id → info.
    fn presence(&self, channel: &str) -> BoxFuture<'_, Result<HashMap<String, ClientInfo>, BrokerError>>;

    /// How many clients and users are in a channel.
    fn presence_stats(&self, channel: &str) -> BoxFuture<'_, Result<PresenceStats, BrokerError>>;

    /// Sends a control message to the node named `node` (the hub's node id), whose
    /// events receive it in [`BrokerEvents::control`]. At most once: an error when the
    /// node is unknown or unreachable (the caller answers its client that the session
    /// is gone), no acknowledgement that the node acted on it. A node does not send
    /// control messages to itself (the hub handles those locally).
    fn send_control(&self, node: &str, message: Bytes) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// This node's id, given once, before [`Broker::set_events`]: a broker across
    /// processes delivers the control messages sent to it. Ignored by default.
    fn set_node(&self, node: &str) {
        let _ = node;
    }

    /// Sends a control message to every other node (the server API's `disconnect`,
    /// `subscribe`, `unsubscribe` and `refresh` reach a user's connections on every
    /// node). At most once. By default there is no other node: nothing to do.
    fn broadcast_control(&self, message: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let _ = message;
        Box::pin(std::future::ready(Ok(())))
    }

    /// What the other live nodes last said of themselves ([`BrokerEvents::node_info`]).
    /// None by default.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Bytes>, BrokerError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Whether the broker is reachable now (`/ready`). Always, by default.
    fn ready(&self) -> bool {
        true
    }

    /// Counts a connection of `user` across nodes, unless the user already has `limit`
    /// (then `Ok(false)`, and nothing changes); a connection already counted is
    /// refreshed. Each expires after `ttl` unless refreshed, so a node that dies frees
    /// its users' places. By default (one node) the hub's own count is the whole count:
    /// always `Ok(true)`.
    fn add_user_connection(
        &self,
        user: &str,
        client: &str,
        ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<bool, BrokerError>> {
        let _ = (user, client, ttl, limit);
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Stops counting a connection of `user`.
    fn remove_user_connection(&self, user: &str, client: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let _ = (user, client);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A new epoch: random, short, printable.
pub fn new_epoch() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..8).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}
