//! The Redis broker: several hub nodes share one Redis, several independent Redis
//! instances (each channel on one of them, chosen by a consistent hash of its name), or
//! a Redis Cluster (sharded pub/sub: `SSUBSCRIBE`/`SPUBLISH`, so that fan-out spreads
//! over the cluster's masters).
//!
//! Each channel's keys share one hash tag, `{prefix}:{channel}:…`, so they live in one
//! cluster slot and one script can touch them all:
//! - `…:m`, the stream's meta: its epoch `e` and top offset `s`;
//! - `…:s`, the history: a Redis stream whose entry ids are the offsets (`17-0`), each
//!   entry the publication (`d`, Protobuf) and when it expires (`t`, ms);
//! - `…:l`, the last publication of a channel that keeps no history but uses deltas;
//! - `…:i:<key>`, an idempotency key and the offset it published at;
//! - `…:p` and `…:pz`, presence: client id → info, and client id → when it expires;
//! - `…:c`, the pub/sub channel of the nodes that have subscribers of the channel.
//!
//! A publish is one script: it assigns the offset, appends to history, trims it by size
//! and age, and publishes to the nodes, so a publication in history was also delivered
//! to every node subscribed at the time, and offsets never repeat within an epoch. A
//! stream's meta that expired (or a Redis that lost its data) starts a new epoch, which
//! subscribers learn as a gap ([`BrokerEvents::interrupted`], or a publication of
//! another epoch). Pub/sub is at most once: when a node's connection drops, it
//! reconnects, subscribes again, and tells the engine which channels were interrupted,
//! so that subscribers that missed something recover it from history.
//!
//! Presence entries expire unless refreshed, so a node that dies takes its clients out
//! of presence within their time to live. Control messages go to a node's own pub/sub
//! channel (`{prefix}:{node:<id>}:c`) or to every node (`{prefix}:{control}:c`); each
//! node says what it is in the hash `{prefix}:{nodes}` every few seconds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Script, ScriptInvocation, Value};
use serde::{Deserialize, Serialize};

use super::{
    new_epoch, BoxFuture, Broker, BrokerError, BrokerEvents, HistoryQuery, HistoryResult, PresenceStats,
    PublishOptions, PublishResult,
};
use crate::protocol::{ClientInfo, PayloadKind, Publication, StreamPosition};

/// Messages from a Redis connection waiting for the engine, at most.
const PUSH_QUEUE: usize = 65_536;
/// How often each connection is checked (and an interrupted one resubscribed).
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How often a node says what it is, and how long the others believe it.
const NODE_INFO_EVERY: Duration = Duration::from_secs(3);
const NODE_INFO_TTL: Duration = Duration::from_secs(10);

/// The Redis broker's configuration (`[broker.redis]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port` (or `rediss://` for TLS, `redis://user:password@host/db`).
    /// One: a single Redis. Several: independent instances, each channel on one of them
    /// by a consistent hash of its name (every node must list them in the same order).
    /// With `cluster`, the seeds of a Redis Cluster.
    pub addresses: Vec<String>,
    /// The addresses are a Redis Cluster's: channels go to the masters by their slot,
    /// with sharded pub/sub.
    pub cluster: bool,
    /// The prefix of every key and pub/sub channel, so that hubs can share a Redis.
    pub prefix: String,
    /// The ACL user (empty: the address's, or none).
    pub username: String,
    /// The password (empty: the address's, or none).
    pub password: String,
    /// For `rediss://` addresses: the CA that signs the servers' certificates, as PEM
    /// text or the path of a PEM file (empty: the system's roots).
    pub tls_ca_pem: String,
    /// How long connecting may take.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// How long a command may take before it fails.
    #[serde(with = "crate::config::duration")]
    pub command_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addresses: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            prefix: "volley".into(),
            username: String::new(),
            password: String::new(),
            tls_ca_pem: String::new(),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        }
    }
}

/// The Redis broker. See the module's documentation.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    cluster: bool,
    command_timeout: Duration,
    shards: Vec<Shard>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    node: OnceLock<String>,
    publish: Script,
    history: Script,
    relay: Script,
    presence_add: Script,
    presence_get: Script,
    user_connection: Script,
}

struct Shard {
    conn: Conn,
    /// The pub/sub channels this node holds here (Redis names).
    channels: Mutex<HashSet<String>>,
    healthy: AtomicBool,
    /// The connection dropped (or what it delivered overflowed the queue to the
    /// engine) since the channels were last subscribed.
    interrupted: Arc<AtomicBool>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn invoke<T: redis::FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => inv.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => inv.invoke_async(&mut c.clone()).await,
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => pipe.query_async(&mut c.clone()).await,
        }
    }

    async fn subscribe(&self, name: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => {
                let mut c = c.clone();
                c.subscribe(name).await
            }
            Conn::Cluster(c) => {
                let mut c = c.clone();
                c.ssubscribe(name).await
            }
        }
    }

    async fn unsubscribe(&self, name: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => {
                let mut c = c.clone();
                c.unsubscribe(name).await
            }
            Conn::Cluster(c) => {
                let mut c = c.clone();
                c.sunsubscribe(name).await
            }
        }
    }
}

fn err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError(format!("redis: {e}"))
}

impl RedisBroker {
    /// Connects to every address (each within `connect_timeout`); fails with the first
    /// that cannot be reached. Later outages are healed: commands fail meanwhile, and
    /// [`Broker::ready`] says so.
    pub async fn connect(config: &RedisConfig) -> Result<RedisBroker, BrokerError> {
        if config.addresses.is_empty() {
            return Err(BrokerError("broker.redis.addresses: at least one address".into()));
        }
        if config.prefix.contains(['{', '}']) {
            return Err(BrokerError("broker.redis.prefix: no braces (they make Redis Cluster hash tags)".into()));
        }
        let mut receivers = Vec::new();
        let mut shards = Vec::new();
        let conns: Vec<Vec<String>> = if config.cluster {
            vec![config.addresses.clone()]
        } else {
            config.addresses.iter().map(|a| vec![a.clone()]).collect()
        };
        for addrs in conns {
            // Bounded: a node that cannot keep up with what Redis sends drops the
            // rest, and counts it as an interruption (its positioned subscribers that
            // fell behind are told, and recover), rather than queueing without end.
            let (tx, rx) = tokio::sync::mpsc::channel::<PushInfo>(PUSH_QUEUE);
            let interrupted = Arc::new(AtomicBool::new(false));
            let flag = interrupted.clone();
            let sender = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                if tx.try_send(info).is_err() {
                    flag.store(true, Ordering::Relaxed);
                }
                Ok(())
            };
            let conn = tokio::time::timeout(config.connect_timeout, open(config, &addrs, sender))
                .await
                .map_err(|_| {
                    BrokerError(format!("redis: {}: no answer within {:?}", addrs.join(", "), config.connect_timeout))
                })?
                .map_err(|e| BrokerError(format!("redis: {}: {e}", addrs.join(", "))))?;
            receivers.push(rx);
            shards.push(Shard {
                conn,
                channels: Mutex::new(HashSet::new()),
                healthy: AtomicBool::new(true),
                interrupted,
            });
        }
        let inner = Arc::new(Inner {
            prefix: config.prefix.clone(),
            cluster: config.cluster,
            command_timeout: config.command_timeout,
            shards,
            events: OnceLock::new(),
            node: OnceLock::new(),
            publish: Script::new(&format!("{PRELUDE_LUA}{PUBLISH_LUA}")),
            history: Script::new(&format!("{PRELUDE_LUA}{HISTORY_LUA}")),
            relay: Script::new(RELAY_LUA),
            presence_add: Script::new(&format!("{PRELUDE_LUA}{PRESENCE_ADD_LUA}")),
            presence_get: Script::new(&format!("{PRELUDE_LUA}{PRESENCE_GET_LUA}")),
            user_connection: Script::new(&format!("{PRELUDE_LUA}{USER_CONNECTION_LUA}")),
        });
        for (i, rx) in receivers.into_iter().enumerate() {
            tokio::spawn(dispatch(Arc::downgrade(&inner), i, rx));
            tokio::spawn(health(Arc::downgrade(&inner), i));
        }
        Ok(RedisBroker { inner })
    }
}

async fn open(
    config: &RedisConfig,
    addrs: &[String],
    tx: impl redis::aio::AsyncPushSender + Clone,
) -> redis::RedisResult<Conn> {
    use redis::IntoConnectionInfo;
    let ca = match config.tls_ca_pem.trim() {
        "" => None,
        pem if pem.contains("-----BEGIN") => Some(pem.as_bytes().to_vec()),
        path => Some(std::fs::read(path).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "broker.redis.tls_ca_pem", format!("{path}: {e}")))
        })?),
    };
    let certs = |root_cert: Vec<u8>| redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
    let mut infos = Vec::new();
    for a in addrs {
        let info = a.as_str().into_connection_info()?;
        let mut settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        if !config.username.is_empty() {
            settings = settings.set_username(&config.username);
        }
        if !config.password.is_empty() {
            settings = settings.set_password(&config.password);
        }
        infos.push(info.set_redis_settings(settings));
    }
    if config.cluster {
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos);
        if let Some(ca) = ca {
            builder = builder.certs(certs(ca));
        }
        let client = builder
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout)
            .push_sender(tx)
            .build()?;
        Ok(Conn::Cluster(client.get_async_connection().await?))
    } else {
        let info = infos.remove(0);
        let client = match ca {
            Some(ca) if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certs(ca))?
            }
            _ => redis::Client::open(info)?,
        };
        let cm = ConnectionManagerConfig::new()
            .set_push_sender(tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(Conn::Single(ConnectionManager::new_with_config(client, cm).await?))
    }
}

impl Inner {
    fn events(&self) -> Option<&Arc<dyn BrokerEvents>> {
        self.events.get()
    }

    /// The shard of a channel: a consistent hash over the instances (a cluster is one).
    fn shard_of(&self, channel: &str) -> &Shard {
        &self.shards[jump(fnv1a(channel.as_bytes()), self.shards.len())]
    }

    fn key(&self, channel: &str, suffix: &str) -> String {
        format!("{}:{{{channel}}}:{suffix}", self.prefix)
    }

    fn pubsub_name(&self, channel: &str) -> String {
        self.key(channel, "c")
    }

    /// The hub channel of a pub/sub name, if it is one.
    fn channel_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?.strip_suffix("}:c")
    }

    fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.command_timeout, f).await {
            Ok(r) => r.map_err(err),
            Err(_) => Err(BrokerError(format!("redis: no answer within {:?}", self.command_timeout))),
        }
    }

    async fn subscribe_name(&self, shard: &Shard, name: String) -> Result<(), BrokerError> {
        crate::engine::lock(&shard.channels).insert(name.clone());
        self.timed(shard.conn.subscribe(&name)).await
    }

    /// Relays `message` on a pub/sub channel; how many nodes received it.
    async fn relay(
        &self,
        shard: &Shard,
        routing_key: String,
        name: String,
        message: &[u8],
    ) -> Result<u64, BrokerError> {
        let mut inv = self.relay.prepare_invoke();
        inv.key(routing_key).arg(self.publish_command()).arg(name).arg(message);
        self.timed(shard.conn.invoke::<u64>(&inv)).await
    }

    fn node_channel(&self, node: &str) -> (String, String) {
        (self.key(&format!("node:{node}"), "k"), self.key(&format!("node:{node}"), "c"))
    }

    fn control_channel(&self) -> (String, String) {
        (self.key("control", "k"), self.key("control", "c"))
    }

    fn nodes_key(&self) -> String {
        format!("{}:{{nodes}}", self.prefix)
    }

    fn handle(&self, name: &str, payload: &[u8]) {
        let Some(events) = self.events() else { return };
        if let Some(channel) = self.channel_of(name) {
            if let Some(node) = channel.strip_prefix("node:") {
                if self.node.get().is_some_and(|n| n == node) {
                    events.control(Bytes::copy_from_slice(payload));
                }
                return;
            }
            if channel == "control" {
                // From another node: [its id's length][its id][the message].
                if let Some((&n, rest)) = payload.split_first() {
                    let n = n as usize;
                    if rest.len() >= n && self.node.get().is_none_or(|me| me.as_bytes() != &rest[..n]) {
                        events.control(Bytes::copy_from_slice(&rest[n..]));
                    }
                }
                return;
            }
            match payload.split_first() {
                Some((b'p', rest)) => match parse_publication(rest) {
                    Some((publication, position, previous)) => {
                        events.publication(channel, Arc::new(publication), &position, previous.map(Arc::new))
                    }
                    None => tracing::warn!(channel, "redis: a publication that does not decode"),
                },
                Some((b'j', rest)) => {
                    if let Ok(info) = WireInfo::decode(rest) {
                        events.join(channel, info.into());
                    }
                }
                Some((b'l', rest)) => {
                    if let Ok(info) = WireInfo::decode(rest) {
                        events.leave(channel, info.into());
                    }
                }
                _ => tracing::warn!(channel, "redis: a message of no known kind"),
            }
        }
    }
}

/// Hands what arrives on a shard's connection to the engine, in order.
async fn dispatch(inner: Weak<Inner>, shard: usize, mut rx: tokio::sync::mpsc::Receiver<PushInfo>) {
    while let Some(push) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) = (data.next(), data.next())
                else {
                    continue;
                };
                if let Ok(name) = std::str::from_utf8(&name) {
                    inner.handle(name, &payload);
                }
            }
            PushKind::Disconnection => {
                let s = &inner.shards[shard];
                s.healthy.store(false, Ordering::Relaxed);
                s.interrupted.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Checks a shard's connection every second; once it answers again after an
/// interruption, subscribes to its channels again and tells the engine which were
/// interrupted. Shard 0 also says what this node is, and forgets dead nodes.
async fn health(inner: Weak<Inner>, index: usize) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_info = None::<tokio::time::Instant>;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let shard = &inner.shards[index];
        let ping = tokio::time::timeout(HEALTH_EVERY, shard.conn.query::<String>(&redis::cmd("PING"))).await;
        if !matches!(ping, Ok(Ok(_))) {
            if shard.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(shard = index, "redis: unreachable");
            }
            shard.interrupted.store(true, Ordering::Relaxed);
            continue;
        }
        if shard.interrupted.swap(false, Ordering::Relaxed) {
            let names: Vec<String> = crate::engine::lock(&shard.channels).iter().cloned().collect();
            let mut failed = false;
            for name in &names {
                if inner.timed(shard.conn.subscribe(name)).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed {
                shard.interrupted.store(true, Ordering::Relaxed);
                continue;
            }
            tracing::info!(shard = index, channels = names.len(), "redis: reachable again, resubscribed");
            if let Some(events) = inner.events() {
                for name in &names {
                    if let Some(ch) = inner.channel_of(name) {
                        if !ch.starts_with("node:") && ch != "control" {
                            events.interrupted(ch);
                        }
                    }
                }
            }
        }
        shard.healthy.store(true, Ordering::Relaxed);
        if index == 0 && last_info.is_none_or(|t| t.elapsed() >= NODE_INFO_EVERY) {
            if let (Some(events), Some(node)) = (inner.events(), inner.node.get()) {
                last_info = Some(tokio::time::Instant::now());
                let info = events.node_info();
                let mut value = now_ms().to_string().into_bytes();
                value.push(b' ');
                value.extend_from_slice(&info);
                let _ = inner
                    .timed(shard.conn.query::<()>(redis::cmd("HSET").arg(inner.nodes_key()).arg(node).arg(value)))
                    .await;
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

// What Redis holds of a publication and of a client, in Protobuf.

#[derive(Clone, PartialEq, prost::Message)]
struct WireInfo {
    #[prost(string, tag = "1")]
    user: String,
    #[prost(string, tag = "2")]
    client: String,
    #[prost(bytes = "bytes", tag = "3")]
    conn_info: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    chan_info: Bytes,
}

impl From<WireInfo> for ClientInfo {
    fn from(w: WireInfo) -> ClientInfo {
        ClientInfo { user: w.user, client: w.client, conn_info: w.conn_info, chan_info: w.chan_info }
    }
}

impl From<&ClientInfo> for WireInfo {
    fn from(i: &ClientInfo) -> WireInfo {
        WireInfo {
            user: i.user.clone(),
            client: i.client.clone(),
            conn_info: i.conn_info.clone(),
            chan_info: i.chan_info.clone(),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct WirePublication {
    #[prost(bytes = "bytes", tag = "1")]
    data: Bytes,
    #[prost(message, optional, tag = "2")]
    info: Option<WireInfo>,
    #[prost(btree_map = "string, string", tag = "3")]
    tags: std::collections::BTreeMap<String, String>,
    #[prost(int64, tag = "4")]
    time: i64,
    /// 0: unchecked, 1: JSON, 2: binary.
    #[prost(uint32, tag = "5")]
    kind: u32,
}

fn encode_publication(p: &Publication) -> Vec<u8> {
    WirePublication {
        data: p.data.clone(),
        info: p.info.as_ref().map(WireInfo::from),
        tags: p.tags.clone(),
        time: p.time,
        kind: match p.kind {
            PayloadKind::Unchecked => 0,
            PayloadKind::Json => 1,
            PayloadKind::Binary => 2,
        },
    }
    .encode_to_vec()
}

fn decode_publication(offset: u64, bytes: &[u8]) -> Option<Publication> {
    let w = WirePublication::decode(bytes).ok()?;
    Some(Publication {
        offset,
        data: w.data,
        info: w.info.map(Into::into),
        tags: w.tags,
        delta: false,
        time: w.time,
        kind: match w.kind {
            1 => PayloadKind::Json,
            2 => PayloadKind::Binary,
            _ => PayloadKind::Unchecked,
        },
    })
}

/// `<offset> <epoch> <previous offset> <previous length> <previous><publication>`, as
/// the publish script writes it (after its `p`).
fn parse_publication(msg: &[u8]) -> Option<(Publication, StreamPosition, Option<Publication>)> {
    let mut rest = msg;
    let mut field = || -> Option<&[u8]> {
        let at = rest.iter().position(|&b| b == b' ')?;
        let (f, r) = rest.split_at(at);
        rest = &r[1..];
        Some(f)
    };
    let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u64>().ok();
    let offset = num(field()?)?;
    let epoch = std::str::from_utf8(field()?).ok()?.to_owned();
    let prev_offset = num(field()?)?;
    let prev_len = num(field()?)? as usize;
    if rest.len() < prev_len {
        return None;
    }
    let (prev, body) = rest.split_at(prev_len);
    let previous = if prev_len > 0 { Some(decode_publication(prev_offset, prev)?) } else { None };
    let publication = decode_publication(offset, body)?;
    Some((publication, StreamPosition { offset, epoch }, previous))
}

/// FNV-1a: a hash every node computes alike, whatever its build.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping and Veach): adding an instance moves only the
/// channels that go to it.
fn jump(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// What the scripts share: `trim` drops history entries older than now (`t`, ms),
/// oldest first; `now_ms` is Redis's clock; `meta` makes a stream's meta (a new epoch)
/// when it has none.
const PRELUDE_LUA: &str = r#"
local function trim(stream, now)
  while true do
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    if not first then return end
    local f = first[2]
    local expires = nil
    for i = 1, #f, 2 do if f[i] == 't' then expires = tonumber(f[i + 1]) end end
    if expires and expires <= now then redis.call('XDEL', stream, first[1]) else return end
  end
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function meta(m, s, epoch, ttl)
  local e = redis.call('HGET', m, 'e')
  if not e then
    e = epoch
    redis.call('HSET', m, 'e', e, 's', 0)
    redis.call('DEL', s)
    redis.call('PEXPIRE', m, ttl)
  end
  return e
end
"#;

/// KEYS: stream, meta, idempotency key, last. ARGV: publication, history size, history
/// ttl (ms), meta ttl (ms), a new epoch, idempotency ttl (ms), pub/sub channel, use
/// delta (1/0), publish command, has an idempotency key (1/0).
/// Returns {offset, epoch, suppressed (1/0)}.
const PUBLISH_LUA: &str = r#"
local size = tonumber(ARGV[2])
local now = now_ms()
if ARGV[10] == '1' then
  local got = redis.call('GET', KEYS[3])
  if got then
    local e = ''
    if size > 0 then e = redis.call('HGET', KEYS[2], 'e') or '' end
    return {got, e, 1}
  end
end
local offset = 0
local epoch = ''
local prev = ''
local prev_offset = 0
if size > 0 then
  epoch = meta(KEYS[2], KEYS[1], ARGV[5], ARGV[4])
  trim(KEYS[1], now)
  if ARGV[8] == '1' then
    local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
    if last then
      prev_offset = tonumber(string.match(last[1], '^(%d+)'))
      for i = 1, #last[2], 2 do if last[2][i] == 'd' then prev = last[2][i + 1] end end
    end
  end
  offset = redis.call('HINCRBY', KEYS[2], 's', 1)
  redis.call('XADD', KEYS[1], 'MAXLEN', size, offset .. '-0', 'd', ARGV[1], 't', now + tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
elseif ARGV[8] == '1' then
  prev = redis.call('GET', KEYS[4]) or ''
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[4])
end
if ARGV[10] == '1' then
  redis.call('SET', KEYS[3], offset, 'PX', ARGV[6])
end
redis.call(ARGV[9], ARGV[7], 'p' .. offset .. ' ' .. epoch .. ' ' .. prev_offset .. ' ' .. #prev .. ' ' .. prev .. ARGV[1])
return {tostring(offset), epoch, 0}
"#;

/// KEYS: stream, meta. ARGV: since offset (-1: none), since epoch, limit (-1: all),
/// reverse (1/0), meta ttl (ms), a new epoch.
/// Returns {top offset, epoch, {id, publication, id, publication, ...}}.
const HISTORY_LUA: &str = r#"
local now = now_ms()
local epoch = meta(KEYS[2], KEYS[1], ARGV[6], ARGV[5])
trim(KEYS[1], now)
local top = redis.call('HGET', KEYS[2], 's') or '0'
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local out = {}
if (since >= 0 and ARGV[2] ~= epoch) or limit == 0 then return {top, epoch, out} end
local from = '-'
if since >= 0 then from = (since + 1) .. '-0' end
local entries
if ARGV[4] == '1' or since < 0 then
  if limit > 0 then
    entries = redis.call('XREVRANGE', KEYS[1], '+', from, 'COUNT', limit)
  else
    entries = redis.call('XREVRANGE', KEYS[1], '+', from)
  end
else
  if limit > 0 then
    entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', KEYS[1], from, '+')
  end
end
for _, e in ipairs(entries) do
  for i = 1, #e[2], 2 do
    if e[2][i] == 'd' then
      table.insert(out, string.match(e[1], '^(%d+)'))
      table.insert(out, e[2][i + 1])
    end
  end
end
return {top, epoch, out}
"#;

/// KEYS: a key of the pub/sub channel's slot. ARGV: publish command, channel, message.
const RELAY_LUA: &str = "return redis.call(ARGV[1], ARGV[2], ARGV[3])";

/// KEYS: presence, presence expiries. ARGV: client, info, ttl (ms).
const PRESENCE_ADD_LUA: &str = r#"
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
-- The keys live as long as their longest-lived entry.
local ttl = tonumber(ARGV[3])
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return 1
"#;

/// KEYS: presence, presence expiries. Drops the expired; returns {client, info, ...}.
const PRESENCE_GET_LUA: &str = r#"
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, c in ipairs(gone) do redis.call('HDEL', KEYS[1], c) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
return redis.call('HGETALL', KEYS[1])
"#;

/// KEYS: the user's connections (client id → when it expires). ARGV: client, ttl (ms),
/// limit. Returns 1 when counted (or refreshed), 0 when the user has `limit` already.
const USER_CONNECTION_LUA: &str = r#"
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"#;

impl Broker for RedisBroker {
    fn set_events(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.inner.events.set(events);
    }

    fn set_node(&self, node: &str) {
        if self.inner.node.set(node.to_owned()).is_err() {
            return;
        }
        let inner = self.inner.clone();
        let names = [inner.node_channel(node).1, inner.control_channel().1];
        {
            let mut held = crate::engine::lock(&inner.shards[0].channels);
            held.extend(names.iter().cloned());
        }
        // Subscribed now when there is a runtime; otherwise (or if it fails) by the
        // health check within a second.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    for name in names {
                        if inner.subscribe_name(&inner.shards[0], name).await.is_err() {
                            inner.shards[0].interrupted.store(true, Ordering::Relaxed);
                        }
                    }
                });
            }
            Err(_) => inner.shards[0].interrupted.store(true, Ordering::Relaxed),
        }
    }

    fn subscribe(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let shard = self.inner.shard_of(&channel);
            self.inner.subscribe_name(shard, self.inner.pubsub_name(&channel)).await
        })
    }

    fn unsubscribe(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let shard = self.inner.shard_of(&channel);
            let name = self.inner.pubsub_name(&channel);
            crate::engine::lock(&shard.channels).remove(&name);
            self.inner.timed(shard.conn.unsubscribe(&name)).await
        })
    }

    fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: PublishOptions,
    ) -> BoxFuture<'_, Result<PublishResult, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let inner = &self.inner;
            let payload = encode_publication(&publication);
            let key = options.idempotency_key.as_deref();
            let mut inv = inner.publish.prepare_invoke();
            inv.key(inner.key(&channel, "s"))
                .key(inner.key(&channel, "m"))
                .key(inner.key(&channel, &format!("i:{}", key.unwrap_or(""))))
                .key(inner.key(&channel, "l"))
                .arg(payload)
                .arg(options.history_size)
                .arg(options.history_ttl.as_millis().max(1) as u64)
                .arg(options.history_meta_ttl.as_millis().max(1) as u64)
                .arg(new_epoch())
                .arg(options.idempotent_ttl.as_millis().max(1) as u64)
                .arg(inner.pubsub_name(&channel))
                .arg(if options.use_delta { "1" } else { "0" })
                .arg(inner.publish_command())
                .arg(if key.is_some() { "1" } else { "0" });
            let (offset, epoch, suppressed): (String, String, i64) =
                inner.timed(inner.shard_of(&channel).conn.invoke(&inv)).await?;
            let offset = offset.parse().map_err(err)?;
            Ok(PublishResult { position: StreamPosition { offset, epoch }, suppressed: suppressed == 1 })
        })
    }

    fn publish_join(&self, channel: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.join_leave(channel, b'j', info)
    }

    fn publish_leave(&self, channel: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.join_leave(channel, b'l', info)
    }

    fn history(&self, channel: &str, query: HistoryQuery) -> BoxFuture<'_, Result<HistoryResult, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let inner = &self.inner;
            let (since, since_epoch) = match &query.since {
                Some(p) => (p.offset as i64, p.epoch.clone()),
                None => (-1, String::new()),
            };
            let limit = query.limit.map(|l| l.min(i64::MAX as usize) as i64).unwrap_or(-1);
            let mut inv = inner.history.prepare_invoke();
            inv.key(inner.key(&channel, "s"))
                .key(inner.key(&channel, "m"))
                .arg(since)
                .arg(since_epoch)
                .arg(limit)
                .arg(if query.reverse { "1" } else { "0" })
                .arg(query.history_meta_ttl.as_millis().max(1) as u64)
                .arg(new_epoch());
            let (top, epoch, entries): (String, String, Vec<Vec<u8>>) =
                inner.timed(inner.shard_of(&channel).conn.invoke(&inv)).await?;
            let mut publications = Vec::with_capacity(entries.len() / 2);
            for pair in entries.chunks_exact(2) {
                let offset = std::str::from_utf8(&pair[0]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                match decode_publication(offset, &pair[1]) {
                    Some(p) => publications.push(Arc::new(p)),
                    None => {
                        return Err(BrokerError(format!(
                            "redis: history of {channel:?}: an entry that does not decode"
                        )))
                    }
                }
            }
            // Read newest first for "the newest N" (no `since`): oldest first unless asked.
            if query.since.is_none() && !query.reverse {
                publications.reverse();
            }
            Ok(HistoryResult { publications, position: StreamPosition { offset: top.parse().map_err(err)?, epoch } })
        })
    }

    fn remove_history(&self, channel: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let shard = self.inner.shard_of(&channel);
            self.inner.timed(shard.conn.query::<()>(redis::cmd("DEL").arg(self.inner.key(&channel, "s")))).await
        })
    }

    fn add_presence(&self, channel: &str, info: ClientInfo, ttl: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let inner = &self.inner;
            let mut inv = inner.presence_add.prepare_invoke();
            inv.key(inner.key(&channel, "p"))
                .key(inner.key(&channel, "pz"))
                .arg(&info.client)
                .arg(WireInfo::from(&info).encode_to_vec())
                .arg(ttl.as_millis().max(1) as u64);
            inner.timed(inner.shard_of(&channel).conn.invoke::<i64>(&inv)).await.map(drop)
        })
    }

    fn remove_presence(&self, channel: &str, client: &str, _user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.to_owned();
        let client = client.to_owned();
        Box::pin(async move {
            let inner = &self.inner;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HDEL")
                .arg(inner.key(&channel, "p"))
                .arg(&client)
                .ignore()
                .cmd("ZREM")
                .arg(inner.key(&channel, "pz"))
                .arg(&client)
                .ignore();
            inner.timed(inner.shard_of(&channel).conn.query_pipe::<()>(&pipe)).await
        })
    }

    fn presence(&self, channel: &str) -> BoxFuture<'_, Result<HashMap<String, ClientInfo>, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let mut out = HashMap::new();
            for (client, info) in self.presence_entries(&channel).await? {
                if let Ok(w) = WireInfo::decode(info.as_slice()) {
                    out.insert(client, w.into());
                }
            }
            Ok(out)
        })
    }

    fn presence_stats(&self, channel: &str) -> BoxFuture<'_, Result<PresenceStats, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let entries = self.presence_entries(&channel).await?;
            let mut users = HashSet::new();
            for (_, info) in &entries {
                if let Ok(w) = WireInfo::decode(info.as_slice()) {
                    users.insert(w.user);
                }
            }
            Ok(PresenceStats { clients: entries.len() as u32, users: users.len() as u32 })
        })
    }

    fn send_control(&self, node: &str, message: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let node = node.to_owned();
        Box::pin(async move {
            let (key, name) = self.inner.node_channel(&node);
            match self.inner.relay(&self.inner.shards[0], key, name, &message).await? {
                0 => Err(BrokerError(format!("redis: node {node:?} is not listening"))),
                _ => Ok(()),
            }
        })
    }

    fn broadcast_control(&self, message: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let node = self.inner.node.get().map(String::as_str).unwrap_or("");
            let mut framed = Vec::with_capacity(1 + node.len() + message.len());
            framed.push(node.len().min(255) as u8);
            framed.extend_from_slice(&node.as_bytes()[..node.len().min(255)]);
            framed.extend_from_slice(&message);
            let (key, name) = self.inner.control_channel();
            self.inner.relay(&self.inner.shards[0], key, name, &framed).await.map(drop)
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Bytes>, BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let conn = &inner.shards[0].conn;
            let all: HashMap<String, Vec<u8>> =
                inner.timed(conn.query(redis::cmd("HGETALL").arg(inner.nodes_key()))).await?;
            let now = now_ms();
            let me = inner.node.get();
            let mut out = Vec::new();
            for (node, value) in all {
                if me == Some(&node) {
                    continue;
                }
                let (at, info) = match value.iter().position(|&b| b == b' ') {
                    Some(i) => {
                        (std::str::from_utf8(&value[..i]).ok().and_then(|s| s.parse::<u64>().ok()), &value[i + 1..])
                    }
                    None => (None, &value[..]),
                };
                match at {
                    Some(at) if now.saturating_sub(at) <= NODE_INFO_TTL.as_millis() as u64 => {
                        out.push(Bytes::copy_from_slice(info))
                    }
                    _ => {
                        let _ =
                            inner.timed(conn.query::<()>(redis::cmd("HDEL").arg(inner.nodes_key()).arg(&node))).await;
                    }
                }
            }
            Ok(out)
        })
    }

    fn ready(&self) -> bool {
        self.inner.shards.iter().all(|s| s.healthy.load(Ordering::Relaxed))
    }

    fn add_user_connection(
        &self,
        user: &str,
        client: &str,
        ttl: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<bool, BrokerError>> {
        let key = self.inner.key(&format!("user:{user}"), "conns");
        let client = client.to_owned();
        Box::pin(async move {
            let inner = &self.inner;
            let mut inv = inner.user_connection.prepare_invoke();
            inv.key(&key).arg(&client).arg(ttl.as_millis().max(1) as u64).arg(limit);
            let shard = inner.shard_of(&key);
            Ok(inner.timed(shard.conn.invoke::<i64>(&inv)).await? == 1)
        })
    }

    fn remove_user_connection(&self, user: &str, client: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let key = self.inner.key(&format!("user:{user}"), "conns");
        let client = client.to_owned();
        Box::pin(async move {
            let shard = self.inner.shard_of(&key);
            self.inner.timed(shard.conn.query::<()>(redis::cmd("ZREM").arg(&key).arg(&client))).await
        })
    }
}

impl RedisBroker {
    fn join_leave(&self, channel: &str, kind: u8, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let inner = &self.inner;
            let mut message = vec![kind];
            message.extend_from_slice(&WireInfo::from(&info).encode_to_vec());
            let shard = inner.shard_of(&channel);
            inner.relay(shard, inner.key(&channel, "s"), inner.pubsub_name(&channel), &message).await.map(drop)
        })
    }

    async fn presence_entries(&self, channel: &str) -> Result<Vec<(String, Vec<u8>)>, BrokerError> {
        let inner = &self.inner;
        let mut inv = inner.presence_get.prepare_invoke();
        inv.key(inner.key(channel, "p")).key(inner.key(channel, "pz"));
        let map: HashMap<String, Vec<u8>> = inner.timed(inner.shard_of(channel).conn.invoke(&inv)).await?;
        Ok(map.into_iter().collect())
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.inner.prefix)
            .field("cluster", &self.inner.cluster)
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consistent_hash_spreads_and_moves_little_when_an_instance_is_added() {
        let names: Vec<String> = (0..10_000).map(|i| format!("chat:{i}")).collect();
        let mut counts = [0usize; 3];
        for n in &names {
            counts[jump(fnv1a(n.as_bytes()), 3)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 2_800), "{counts:?}");
        let moved = names.iter().filter(|n| jump(fnv1a(n.as_bytes()), 3) != jump(fnv1a(n.as_bytes()), 4)).count();
        // About a quarter move to the new instance, none between the old ones.
        assert!((2_000..3_000).contains(&moved), "{moved}");
        assert_eq!(jump(fnv1a(b"x"), 1), 0);
    }

    #[test]
    fn a_published_message_parses_back_with_its_position_and_previous() {
        let p = Publication {
            data: Bytes::from_static(b"{\"a\":1}"),
            kind: PayloadKind::Json,
            time: 5,
            ..Default::default()
        };
        let prev = Publication { data: Bytes::from_static(b"{\"a\":0}"), ..Default::default() };
        let (pe, be) = (encode_publication(&prev), encode_publication(&p));
        let mut msg = format!("7 abc 6 {} ", pe.len()).into_bytes();
        msg.extend_from_slice(&pe);
        msg.extend_from_slice(&be);
        let (got, pos, previous) = parse_publication(&msg).expect("parses");
        assert_eq!(pos, StreamPosition { offset: 7, epoch: "abc".into() });
        assert_eq!(got.offset, 7);
        assert_eq!(got.data, p.data);
        assert_eq!(got.kind, PayloadKind::Json);
        assert_eq!(previous.expect("previous").offset, 6);
        // No history: offset 0, no epoch, no previous.
        let mut msg = b"0  0 0 ".to_vec();
        msg.extend_from_slice(&be);
        let (got, pos, previous) = parse_publication(&msg).expect("parses");
        assert_eq!((got.offset, pos.epoch.as_str(), previous.is_none()), (0, "", true));
        assert!(parse_publication(b"7 abc 6 99 short").is_none());
    }
}
