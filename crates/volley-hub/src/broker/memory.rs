//! The in-memory broker: one process, the embedded default.
//!
//! Streams live in shards (a mutex each, chosen by the channel's hash), so publishes
//! to different channels rarely wait for each other. A publication is delivered to
//! the node while its shard is locked, so the order of delivery is the order of
//! offsets. Expired history, idempotency keys and idle streams are dropped lazily, as
//! the shard is used, with no task of its own.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{
    new_epoch, BoxFuture, Broker, BrokerError, BrokerEvents, HistoryQuery, HistoryResult, PresenceStats,
    PublishOptions, PublishResult,
};
use crate::protocol::{ClientInfo, Publication, StreamPosition};

const SHARDS: usize = 64;
/// How often a shard looks for expired streams and keys.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The in-memory broker. See the module's documentation.
pub struct MemoryBroker {
    events: OnceLock<Arc<dyn BrokerEvents>>,
    shards: Box<[Mutex<Shard>]>,
    presence: Box<[Mutex<HashMap<String, Presence>>]>,
}

#[derive(Default)]
struct Shard {
    streams: HashMap<String, Stream>,
    last_sweep: Option<Instant>,
}

struct Stream {
    epoch: String,
    offset: u64,
    items: VecDeque<Item>,
    /// When the stream's meta (epoch, offset) may be forgotten.
    meta_expires: Instant,
    /// Idempotency key → (when it is forgotten, the position it published at).
    keys: HashMap<String, (Instant, StreamPosition)>,
    /// The last publication, for deltas, when the channel keeps no history.
    last: Option<Arc<Publication>>,
}

struct Item {
    publication: Arc<Publication>,
    expires: Instant,
}

#[derive(Default)]
struct Presence {
    /// Client id → (info, when it expires).
    clients: HashMap<String, (ClientInfo, Instant)>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        MemoryBroker {
            events: OnceLock::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            presence: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn index(channel: &str) -> usize {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        (h.finish() as usize) % SHARDS
    }

    fn shard(&self, channel: &str) -> std::sync::MutexGuard<'_, Shard> {
        let mut shard = lock(&self.shards[Self::index(channel)]);
        let now = Instant::now();
        if shard.last_sweep.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
            shard.last_sweep = Some(now);
            shard.streams.retain(|_, s| {
                s.expire(now);
                !(s.items.is_empty() && s.meta_expires <= now)
            });
        }
        shard
    }

    fn publish_now(&self, channel: &str, mut publication: Publication, options: &PublishOptions) -> PublishResult {
        let mut shard = self.shard(channel);
        if options.history_size == 0 && options.idempotency_key.is_none() && !options.use_delta {
            // Nothing to keep (no history, no key, no delta base) and no position to
            // give: delivered at once, still under the shard's lock (in order).
            if let Some(events) = self.events.get() {
                events.publication(channel, Arc::new(publication), &StreamPosition::default(), None);
            }
            return PublishResult { position: StreamPosition::default(), suppressed: false };
        }
        let now = Instant::now();
        let stream = stream(&mut shard.streams, channel, now, options.history_meta_ttl);
        if let Some(key) = &options.idempotency_key {
            if let Some((until, position)) = stream.keys.get(key) {
                if *until > now {
                    return PublishResult { position: position.clone(), suppressed: true };
                }
            }
        }
        stream.expire(now);
        let previous = if options.history_size > 0 {
            stream.items.back().map(|i| i.publication.clone())
        } else {
            stream.last.clone()
        };
        let position = if options.history_size > 0 {
            stream.offset += 1;
            publication.offset = stream.offset;
            StreamPosition { offset: stream.offset, epoch: stream.epoch.clone() }
        } else {
            StreamPosition::default()
        };
        stream.meta_expires = stream.meta_expires.max(now + options.history_meta_ttl);
        if let Some(key) = &options.idempotency_key {
            stream.keys.insert(key.clone(), (now + options.idempotent_ttl, position.clone()));
        }
        let publication = Arc::new(publication);
        if options.history_size > 0 {
            stream.items.push_back(Item { publication: publication.clone(), expires: now + options.history_ttl });
            while stream.items.len() > options.history_size {
                stream.items.pop_front();
            }
        } else if options.use_delta {
            stream.last = Some(publication.clone());
        }
        // Delivered under the shard's lock: delivery order is offset order.
        if let Some(events) = self.events.get() {
            events.publication(channel, publication, &position, if options.use_delta { previous } else { None });
        }
        PublishResult { position, suppressed: false }
    }

    fn history_now(&self, channel: &str, query: &HistoryQuery) -> HistoryResult {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        let stream = stream(&mut shard.streams, channel, now, query.history_meta_ttl);
        stream.expire(now);
        let position = StreamPosition { offset: stream.offset, epoch: stream.epoch.clone() };
        let from = match &query.since {
            Some(since) if since.epoch == stream.epoch => since.offset,
            // Another epoch: the caller sees the new epoch in `position`.
            Some(_) => return HistoryResult { publications: Vec::new(), position },
            None => 0,
        };
        let limit = query.limit.unwrap_or(usize::MAX);
        let after = stream.items.iter().filter(|i| i.publication.offset > from);
        let publications: Vec<_> = if query.reverse {
            after.rev().take(limit).map(|i| i.publication.clone()).collect()
        } else if query.since.is_some() {
            after.take(limit).map(|i| i.publication.clone()).collect()
        } else {
            // Without `since`, the newest `limit`, oldest first.
            let all: Vec<_> = after.map(|i| i.publication.clone()).collect();
            let skip = all.len().saturating_sub(limit);
            all.into_iter().skip(skip).collect()
        };
        HistoryResult { publications, position }
    }
}

fn stream<'a>(
    streams: &'a mut HashMap<String, Stream>,
    channel: &str,
    now: Instant,
    meta_ttl: Duration,
) -> &'a mut Stream {
    if !streams.contains_key(channel) {
        streams.insert(
            channel.to_owned(),
            Stream {
                epoch: new_epoch(),
                offset: 0,
                items: VecDeque::new(),
                meta_expires: now + meta_ttl,
                keys: HashMap::new(),
                last: None,
            },
        );
    }
    streams.get_mut(channel).expect("inserted above")
}

impl Stream {
    fn expire(&mut self, now: Instant) {
        while self.items.front().is_some_and(|i| i.expires <= now) {
            self.items.pop_front();
        }
        if !self.keys.is_empty() {
            self.keys.retain(|_, (until, _)| *until > now);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while a shard was held leaves it consistent enough to go on with.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl Broker for MemoryBroker {
    fn set_events(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.events.set(events);
    }

    fn subscribe(&self, _channel: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        // One node: every publication is delivered here anyway.
        ready(Ok(()))
    }

    fn unsubscribe(&self, _channel: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        ready(Ok(()))
    }

    fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: PublishOptions,
    ) -> BoxFuture<'_, Result<PublishResult, BrokerError>> {
        ready(Ok(self.publish_now(channel, publication, &options)))
    }

    fn publish_join(&self, channel: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        if let Some(events) = self.events.get() {
            events.join(channel, info);
        }
        ready(Ok(()))
    }

    fn publish_leave(&self, channel: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        if let Some(events) = self.events.get() {
            events.leave(channel, info);
        }
        ready(Ok(()))
    }

    fn history(&self, channel: &str, query: HistoryQuery) -> BoxFuture<'_, Result<HistoryResult, BrokerError>> {
        ready(Ok(self.history_now(channel, &query)))
    }

    fn remove_history(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        if let Some(s) = self.shard(channel).streams.get_mut(channel) {
            s.items.clear();
        }
        ready(Ok(()))
    }

    fn add_presence(&self, channel: &str, info: ClientInfo, ttl: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        let mut p = lock(&self.presence[Self::index(channel)]);
        let entry = p.entry(channel.to_owned()).or_default();
        entry.clients.insert(info.client.clone(), (info, Instant::now() + ttl));
        ready(Ok(()))
    }

    fn remove_presence(&self, channel: &str, client: &str, _user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let mut p = lock(&self.presence[Self::index(channel)]);
        if let Entry::Occupied(mut e) = p.entry(channel.to_owned()) {
            e.get_mut().clients.remove(client);
            if e.get().clients.is_empty() {
                e.remove();
            }
        }
        ready(Ok(()))
    }

    fn presence(&self, channel: &str) -> BoxFuture<'_, Result<HashMap<String, ClientInfo>, BrokerError>> {
        let now = Instant::now();
        let mut p = lock(&self.presence[Self::index(channel)]);
        let out = match p.get_mut(channel) {
            Some(e) => {
                e.clients.retain(|_, (_, until)| *until > now);
                e.clients.iter().map(|(k, (info, _))| (k.clone(), info.clone())).collect()
            }
            None => HashMap::new(),
        };
        ready(Ok(out))
    }

    fn presence_stats(&self, channel: &str) -> BoxFuture<'_, Result<PresenceStats, BrokerError>> {
        let now = Instant::now();
        let p = lock(&self.presence[Self::index(channel)]);
        let stats = match p.get(channel) {
            Some(e) => {
                let live = e.clients.values().filter(|(_, until)| *until > now);
                let mut users: Vec<&str> = Vec::new();
                let mut clients = 0u32;
                for (info, _) in live {
                    clients += 1;
                    users.push(&info.user);
                }
                users.sort_unstable();
                users.dedup();
                PresenceStats { clients, users: users.len() as u32 }
            }
            None => PresenceStats::default(),
        };
        ready(Ok(stats))
    }

    /// One node: there is no other node to send to.
    fn send_control(&self, node: &str, _message: bytes::Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        ready(Err(BrokerError(format!("no node {node:?} on the memory broker (a single node)"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn opts(size: usize) -> PublishOptions {
        PublishOptions {
            history_size: size,
            history_ttl: Duration::from_secs(60),
            history_meta_ttl: Duration::from_secs(3600),
            idempotent_ttl: Duration::from_secs(60),
            ..Default::default()
        }
    }

    fn data(n: u64) -> Publication {
        Publication { data: Bytes::from(n.to_string()), ..Default::default() }
    }

    #[test]
    fn offsets_grow_by_one_within_an_epoch_and_history_keeps_the_newest() {
        let b = MemoryBroker::new();
        let mut epoch = None;
        for n in 1..=5 {
            let r = b.publish_now("c", data(n), &opts(3));
            assert_eq!(r.position.offset, n);
            assert_eq!(epoch.get_or_insert(r.position.epoch.clone()), &r.position.epoch);
        }
        let h = b.history_now("c", &HistoryQuery::default());
        assert_eq!(h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(h.position.offset, 5);
        let since = HistoryQuery {
            since: Some(StreamPosition { offset: 3, epoch: epoch.clone().unwrap() }),
            ..Default::default()
        };
        assert_eq!(b.history_now("c", &since).publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);
        let limited = HistoryQuery { limit: Some(2), ..Default::default() };
        assert_eq!(b.history_now("c", &limited).publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);
        let rev = HistoryQuery { limit: Some(2), reverse: true, ..Default::default() };
        assert_eq!(b.history_now("c", &rev).publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [5, 4]);
        // Another epoch: nothing, and the current position.
        let other =
            HistoryQuery { since: Some(StreamPosition { offset: 1, epoch: "other".into() }), ..Default::default() };
        let h = b.history_now("c", &other);
        assert!(h.publications.is_empty());
        assert_eq!(h.position, StreamPosition { offset: 5, epoch: epoch.unwrap() });
    }

    #[test]
    fn an_idempotency_key_publishes_once() {
        let b = MemoryBroker::new();
        let o = PublishOptions { idempotency_key: Some("k".into()), ..opts(10) };
        let first = b.publish_now("c", data(1), &o);
        let again = b.publish_now("c", data(1), &o);
        assert!(!first.suppressed && again.suppressed);
        assert_eq!(first.position, again.position);
        assert_eq!(b.history_now("c", &HistoryQuery::default()).publications.len(), 1);
    }

    #[test]
    fn history_expires_by_ttl() {
        let b = MemoryBroker::new();
        let o = PublishOptions { history_ttl: Duration::from_millis(1), ..opts(10) };
        b.publish_now("c", data(1), &o);
        std::thread::sleep(Duration::from_millis(5));
        let h = b.history_now("c", &HistoryQuery::default());
        assert!(h.publications.is_empty());
        assert_eq!(h.position.offset, 1, "the position outlives the publications");
    }

    #[test]
    fn a_new_broker_is_a_new_epoch() {
        let a = MemoryBroker::new().publish_now("c", data(1), &opts(1)).position.epoch;
        let b = MemoryBroker::new().publish_now("c", data(1), &opts(1)).position.epoch;
        assert_ne!(a, b);
    }

    #[test]
    fn presence_counts_users_once_and_expires() {
        let b = MemoryBroker::new();
        let info = |u: &str, c: &str| ClientInfo { user: u.into(), client: c.into(), ..Default::default() };
        let ttl = Duration::from_secs(60);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            b.add_presence("c", info("u1", "a"), ttl).await.unwrap();
            b.add_presence("c", info("u1", "b"), ttl).await.unwrap();
            b.add_presence("c", info("u2", "c"), Duration::ZERO).await.unwrap();
            assert_eq!(b.presence_stats("c").await.unwrap(), PresenceStats { clients: 2, users: 1 });
            b.remove_presence("c", "a", "u1").await.unwrap();
            let p = b.presence("c").await.unwrap();
            assert_eq!(p.keys().collect::<Vec<_>>(), ["b"]);
        });
    }
}
