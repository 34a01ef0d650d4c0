//! The Redis broker against real `redis-server` processes (Debian's, installed by
//! `scripts/install-test-deps.sh redis`): a single instance, two independent instances,
//! and a three-master Redis Cluster. Two brokers stand for two hub nodes.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use volley_hub::broker::{Broker, BrokerEvents, HistoryQuery, PresenceStats, PublishOptions, RedisBroker, RedisConfig};
use volley_hub::protocol::{ClientInfo, Publication, StreamPosition};

/// A `redis-server` on loopback, killed when dropped.
struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    cluster: bool,
}

fn free_port() -> u16 {
    // A port free both itself and 10000 above (a cluster node's bus).
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

impl Redis {
    fn start(cluster: bool) -> Redis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("volley-redis-test-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis { port, dir, child: None, cluster };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        }
        let child = cmd.spawn().expect(
            "redis-server is needed (Debian's redis-server package: scripts/install-test-deps.sh redis installs it)",
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["ping"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server on {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters, no replicas.
fn cluster() -> Vec<Redis> {
    let nodes: Vec<Redis> = (0..3).map(|_| Redis::start(true)).collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli (Debian's redis-tools)");
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        while !n.cli(&["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    nodes
}

/// A publication as a node received it: channel, offset, epoch, data, the previous
/// publication's offset.
type Received = (String, u64, String, Bytes, Option<u64>);

/// What a node's broker handed over.
#[derive(Default)]
struct Seen {
    publications: Mutex<Vec<Received>>,
    joins: Mutex<Vec<(String, String)>>,
    leaves: Mutex<Vec<(String, String)>>,
    control: Mutex<Vec<Bytes>>,
    interrupted: Mutex<Vec<String>>,
}

impl BrokerEvents for Seen {
    fn publication(&self, ch: &str, p: Arc<Publication>, pos: &StreamPosition, prev: Option<Arc<Publication>>) {
        self.publications.lock().unwrap().push((
            ch.into(),
            pos.offset,
            pos.epoch.clone(),
            p.data.clone(),
            prev.map(|p| p.offset),
        ));
    }
    fn join(&self, ch: &str, info: ClientInfo) {
        self.joins.lock().unwrap().push((ch.into(), info.client));
    }
    fn leave(&self, ch: &str, info: ClientInfo) {
        self.leaves.lock().unwrap().push((ch.into(), info.client));
    }
    fn control(&self, m: Bytes) {
        self.control.lock().unwrap().push(m);
    }
    fn interrupted(&self, ch: &str) {
        self.interrupted.lock().unwrap().push(ch.into());
    }
    fn node_info(&self) -> Bytes {
        Bytes::from_static(b"{\"uid\":\"x\"}")
    }
}

async fn node(addresses: Vec<String>, cluster: bool, prefix: &str, name: &str) -> (Arc<RedisBroker>, Arc<Seen>) {
    let config = RedisConfig { addresses, cluster, prefix: prefix.into(), ..Default::default() };
    let broker = Arc::new(RedisBroker::connect(&config).await.expect("connects"));
    let seen = Arc::new(Seen::default());
    broker.set_node(name);
    broker.set_events(seen.clone());
    (broker, seen)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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

fn offsets(h: &volley_hub::broker::HistoryResult) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo { user: user.into(), client: client.into(), ..Default::default() }
}

/// What every deployment must do alike: positions, history, idempotency, presence,
/// delivery to the other node, control messages.
async fn semantics(addresses: Vec<String>, cluster: bool) {
    let (a, seen_a) = node(addresses.clone(), cluster, "t", "node-a").await;
    let (b, seen_b) = node(addresses, cluster, "t", "node-b").await;

    // Positions from 1, history by size, since, reverse, limit; node A subscribed
    // receives what B publishes, in order, with positions.
    a.subscribe("c").await.unwrap();
    let mut epoch = None;
    for n in 1..=5 {
        let r = b.publish("c", data(n), opts(3)).await.unwrap();
        assert_eq!(r.position.offset, n);
        assert_eq!(epoch.get_or_insert(r.position.epoch.clone()), &r.position.epoch);
    }
    let epoch = epoch.unwrap();
    eventually("five publications on node A", || seen_a.publications.lock().unwrap().len() == 5).await;
    let got: Vec<_> = seen_a.publications.lock().unwrap().iter().map(|p| (p.1, p.3.clone())).collect();
    assert_eq!(got, (1..=5).map(|n| (n, Bytes::from(n.to_string()))).collect::<Vec<_>>());
    assert!(seen_b.publications.lock().unwrap().is_empty(), "node B subscribed to nothing");
    let h = a.history("c", HistoryQuery::default()).await.unwrap();
    assert_eq!((offsets(&h), h.position.clone()), (vec![3, 4, 5], StreamPosition { offset: 5, epoch: epoch.clone() }));
    let since = |o| Some(StreamPosition { offset: o, epoch: epoch.clone() });
    assert_eq!(offsets(&a.history("c", HistoryQuery { since: since(3), ..Default::default() }).await.unwrap()), [4, 5]);
    let q = HistoryQuery { since: since(3), limit: Some(1), ..Default::default() };
    assert_eq!(offsets(&b.history("c", q).await.unwrap()), [4]);
    assert_eq!(offsets(&b.history("c", HistoryQuery { limit: Some(2), ..Default::default() }).await.unwrap()), [4, 5]);
    let q = HistoryQuery { limit: Some(2), reverse: true, ..Default::default() };
    assert_eq!(offsets(&b.history("c", q).await.unwrap()), [5, 4]);
    let q = HistoryQuery { limit: Some(0), ..Default::default() };
    let top = b.history("c", q).await.unwrap();
    assert!(top.publications.is_empty());
    assert_eq!(top.position.offset, 5);
    // Another epoch: nothing, and the current position.
    let q = HistoryQuery { since: Some(StreamPosition { offset: 1, epoch: "other".into() }), ..Default::default() };
    let h = a.history("c", q).await.unwrap();
    assert!(h.publications.is_empty());
    assert_eq!(h.position.epoch, epoch);

    // Idempotency: a retry publishes nothing and answers the first position.
    let o = PublishOptions { idempotency_key: Some("k1".into()), ..opts(10) };
    let first = a.publish("c", data(6), o.clone()).await.unwrap();
    let again = b.publish("c", data(6), o).await.unwrap();
    assert!(!first.suppressed && again.suppressed);
    assert_eq!(first.position, again.position);
    eventually("the sixth publication", || seen_a.publications.lock().unwrap().len() == 6).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen_a.publications.lock().unwrap().len(), 6, "a retry is not delivered again");

    // Deltas: the previous publication travels with the next.
    a.publish("c", data(7), PublishOptions { use_delta: true, ..opts(10) }).await.unwrap();
    eventually("the seventh publication", || seen_a.publications.lock().unwrap().len() == 7).await;
    assert_eq!(seen_a.publications.lock().unwrap()[6].4, Some(6));

    // Removing history keeps the position.
    b.remove_history("c").await.unwrap();
    let h = a.history("c", HistoryQuery::default()).await.unwrap();
    assert!(h.publications.is_empty());
    assert_eq!(h.position, StreamPosition { offset: 7, epoch: epoch.clone() });

    // Without history: delivered, no position.
    let r = b.publish("c", data(8), opts(0)).await.unwrap();
    assert_eq!(r.position, StreamPosition::default());
    eventually("the publication without history", || seen_a.publications.lock().unwrap().len() == 8).await;

    // History expires by age, entry by entry; the position stays.
    let short = PublishOptions { history_ttl: Duration::from_millis(300), ..opts(10) };
    b.publish("ttl", data(1), short.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.publish("ttl", data(2), short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let h = a.history("ttl", HistoryQuery::default()).await.unwrap();
    assert_eq!((offsets(&h), h.position.offset), (vec![2], 2));

    // A stream whose meta expired starts a new epoch.
    let brief = PublishOptions { history_meta_ttl: Duration::from_millis(200), ..opts(10) };
    let e1 = b.publish("brief", data(1), brief.clone()).await.unwrap().position;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e2 = b.publish("brief", data(1), brief).await.unwrap().position;
    assert_eq!((e1.offset, e2.offset), (1, 1));
    assert_ne!(e1.epoch, e2.epoch);

    // Unsubscribed: nothing more.
    a.unsubscribe("c").await.unwrap();
    b.publish("c", data(9), opts(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen_a.publications.lock().unwrap().len(), 8);

    // Join and leave reach the subscribed nodes.
    b.subscribe("p").await.unwrap();
    a.publish_join("p", info("u1", "c1")).await.unwrap();
    a.publish_leave("p", info("u1", "c1")).await.unwrap();
    eventually("join and leave on node B", || seen_b.leaves.lock().unwrap().len() == 1).await;
    assert_eq!(seen_b.joins.lock().unwrap()[0], ("p".into(), "c1".into()));

    // Presence: from every node alike; users counted once; expiry.
    let ttl = Duration::from_secs(60);
    a.add_presence("p", info("u1", "c1"), ttl).await.unwrap();
    b.add_presence("p", info("u1", "c2"), ttl).await.unwrap();
    b.add_presence("p", info("u2", "c3"), Duration::from_millis(100)).await.unwrap();
    assert_eq!(a.presence_stats("p").await.unwrap(), PresenceStats { clients: 3, users: 2 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.presence_stats("p").await.unwrap(), PresenceStats { clients: 2, users: 1 });
    a.remove_presence("p", "c1", "u1").await.unwrap();
    let p: HashMap<String, ClientInfo> = b.presence("p").await.unwrap();
    assert_eq!(p.keys().collect::<Vec<_>>(), ["c2"]);
    assert_eq!(p["c2"].user, "u1");

    // A user's connections counted across nodes, up to the limit.
    let ttl = Duration::from_secs(60);
    assert!(a.add_user_connection("u", "c1", ttl, 2).await.unwrap());
    assert!(b.add_user_connection("u", "c2", ttl, 2).await.unwrap());
    assert!(!a.add_user_connection("u", "c3", ttl, 2).await.unwrap(), "a third connection");
    assert!(b.add_user_connection("u", "c1", ttl, 2).await.unwrap(), "a refresh of a counted one");
    assert!(a.add_user_connection("other", "c9", ttl, 2).await.unwrap(), "another user");
    b.remove_user_connection("u", "c2").await.unwrap();
    assert!(a.add_user_connection("u", "c3", ttl, 2).await.unwrap(), "a place was freed");
    assert!(b.add_user_connection("brief", "c1", Duration::from_millis(100), 1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.add_user_connection("brief", "c2", ttl, 1).await.unwrap(), "an expired connection frees its place");

    // Control: to one node, to every other node, and node info.
    // Node B listens for control from its start (it subscribed in the background).
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.send_control("node-b", Bytes::from_static(b"hi")).await.is_err() {
        assert!(Instant::now() < deadline, "node B never listened for control");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("the control message on node B", || !seen_b.control.lock().unwrap().is_empty()).await;
    assert!(a.send_control("node-nobody", Bytes::from_static(b"x")).await.is_err(), "no such node: an error");
    seen_a.control.lock().unwrap().clear();
    a.broadcast_control(Bytes::from_static(b"all")).await.unwrap();
    eventually("the broadcast on node B", || seen_b.control.lock().unwrap().iter().any(|m| &m[..] == b"all")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(seen_a.control.lock().unwrap().is_empty(), "a node does not hear its own broadcast");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.nodes().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "node B's info never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.nodes().await.unwrap(), [Bytes::from_static(b"{\"uid\":\"x\"}")]);
    assert!(a.ready() && b.ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_redis_serves_two_nodes_exactly() {
    let r = Redis::start(false);
    semantics(vec![r.url()], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_instances_share_the_channels_by_a_consistent_hash() {
    let (r1, r2) = (Redis::start(false), Redis::start(false));
    semantics(vec![r1.url(), r2.url()], false).await;
    // Channels went to both instances.
    let (a, _) = node(vec![r1.url(), r2.url()], false, "spread", "n").await;
    for i in 0..50 {
        a.publish(&format!("ch{i}"), data(1), opts(1)).await.unwrap();
    }
    let count = |r: &Redis| r.cli(&["--scan", "--pattern", "spread:*:m"]).unwrap().lines().count();
    let (n1, n2) = (count(&r1), count(&r2));
    assert_eq!(n1 + n2, 50);
    assert!(n1 > 10 && n2 > 10, "{n1} and {n2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_serves_two_nodes_with_sharded_pubsub() {
    let nodes = cluster();
    semantics(nodes.iter().map(Redis::url).collect(), true).await;
    // Channels on every master, and delivered through each master's shard channels.
    let seeds: Vec<String> = nodes.iter().map(Redis::url).take(1).collect();
    let (a, seen) = node(seeds.clone(), true, "spread", "a").await;
    let (b, _) = node(seeds, true, "spread", "b").await;
    for i in 0..30 {
        a.subscribe(&format!("ch{i}")).await.unwrap();
    }
    for i in 0..30 {
        b.publish(&format!("ch{i}"), data(i), opts(1)).await.unwrap();
    }
    eventually("30 publications through the shards", || seen.publications.lock().unwrap().len() == 30).await;
    for n in &nodes {
        let keys = n.cli(&["--scan", "--pattern", "spread:*:m"]).unwrap().lines().count();
        assert!(keys > 0, "a master with none of the channels");
        let active = n.cli(&["pubsub", "shardchannels", "spread:*"]).unwrap().lines().count();
        assert!(active > 0, "a master with no shard channel subscribed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_resubscribed_and_the_interruption_reported() {
    let mut r = Redis::start(false);
    let (a, seen_a) = node(vec![r.url()], false, "t", "a").await;
    let (b, _) = node(vec![r.url()], false, "t", "b").await;
    a.subscribe("c").await.unwrap();
    let before = b.publish("c", data(1), opts(10)).await.unwrap().position;
    eventually("the first publication", || seen_a.publications.lock().unwrap().len() == 1).await;

    r.kill();
    eventually("not ready while Redis is down", || !a.ready()).await;
    assert!(b.publish("c", data(2), opts(10)).await.is_err(), "a publish fails while Redis is down");
    r.spawn();
    eventually("ready again", || a.ready()).await;
    eventually("the interruption reported", || seen_a.interrupted.lock().unwrap().contains(&"c".to_owned())).await;
    // Resubscribed: delivered again, in a new epoch (this Redis lost its data).
    let after = b.publish("c", data(3), opts(10)).await.unwrap().position;
    assert_ne!(after.epoch, before.epoch);
    eventually("the publication after the restart", || seen_a.publications.lock().unwrap().len() == 2).await;
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_addresses_speak_tls_verified_by_the_configured_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("volley-redis-tls-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file, ca_file) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"));
    let ca_pem = pem("CERTIFICATE", ca.der());
    std::fs::write(&cert_file, pem("CERTIFICATE", cert.der())).unwrap();
    std::fs::write(&key_file, pem("PRIVATE KEY", &key.serialize_der())).unwrap();
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let mut child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--tls-cert-file")
        .arg(&cert_file)
        .arg("--tls-key-file")
        .arg(&key_file)
        .arg("--tls-ca-cert-file")
        .arg(&ca_file)
        .args(["--tls-auth-clients", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let url = format!("rediss://localhost:{port}");
    let config = |ca: &str| RedisConfig {
        addresses: vec![url.clone()],
        prefix: "tls".into(),
        tls_ca_pem: ca.into(),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    // Started when it accepts TLS connections with the CA (the PEM text, here).
    let deadline = Instant::now() + Duration::from_secs(10);
    let broker = loop {
        match RedisBroker::connect(&config(&ca_pem)).await {
            Ok(b) => break b,
            Err(e) => assert!(Instant::now() < deadline, "never connected over TLS: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = broker.publish("c", data(1), opts(5)).await.unwrap();
    assert_eq!(r.position.offset, 1);
    // The CA as a file's path works the same.
    let by_path = RedisBroker::connect(&config(ca_file.to_str().unwrap())).await.expect("the CA by its path");
    assert_eq!(by_path.history("c", HistoryQuery::default()).await.unwrap().position.offset, 1);
    // The system's roots do not trust this CA: refused.
    assert!(RedisBroker::connect(&config("")).await.is_err(), "an untrusted certificate is refused");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

// Hubs on the Redis broker, with clients of the protocol.

fn hub_config(extra_client: serde_json::Value) -> volley_hub::HubConfig {
    let mut client = serde_json::json!({"token": {"hmac_secret_key": common::SECRET}, "park_after": "50ms"});
    client.as_object_mut().unwrap().extend(extra_client.as_object().unwrap().clone());
    serde_json::from_value(serde_json::json!({
        "client": client,
        "http_api": {"key": "key"},
        "channel": {"namespaces": [
            {"name": "s", "allow_subscribe_for_client": true, "history_size": 100, "history_ttl": "60s",
             "allow_recovery": true, "allow_positioning": true, "presence": true,
             "allow_history_for_subscriber": true},
        ]},
    }))
    .unwrap()
}

async fn hub_node(
    redis: &Redis,
    prefix: &str,
    extra_client: serde_json::Value,
) -> (volley_hub::Hub, std::net::SocketAddr) {
    let config = RedisConfig { addresses: vec![redis.url()], prefix: prefix.into(), ..Default::default() };
    let broker = Arc::new(RedisBroker::connect(&config).await.unwrap());
    let hub = volley_hub::Hub::with_broker(hub_config(extra_client), broker).unwrap();
    let addr = common::serve_hub(hub.clone()).await;
    (hub, addr)
}

async fn api(addr: std::net::SocketAddr, method: &str, params: serde_json::Value) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = params.to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\nX-API-Key: key\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{out}: {e}"))
}

fn connect_token(user: &str) -> serde_json::Value {
    serde_json::json!({"token": common::token(serde_json::json!({"sub": user, "exp": common::unix_now() + 3600}))})
}

async fn wait_nodes(addr: std::net::SocketAddr, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = api(addr, "info", serde_json::json!({})).await;
        if info["result"]["nodes"].as_array().is_some_and(|a| a.len() == n) {
            return;
        }
        assert!(Instant::now() < deadline, "{n} nodes never listed: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_on_one_redis_deliver_answer_and_control_across_nodes() {
    let redis = Redis::start(false);
    let (_a, addr_a) = hub_node(&redis, "hubs", serde_json::json!({"user_connection_limit": 2})).await;
    let (_b, addr_b) = hub_node(&redis, "hubs", serde_json::json!({"user_connection_limit": 2})).await;
    wait_nodes(addr_a, 2).await;

    // A subscriber on node A receives what the API published through node B.
    let (mut alice, _) = common::Client::connected(addr_a, connect_token("alice")).await;
    let r = alice.call(serde_json::json!({"id": 2, "subscribe": {"channel": "s:room", "recover": true}})).await;
    assert!(r["subscribe"].is_object(), "{r}");
    let p = api(addr_b, "publish", serde_json::json!({"channel": "s:room", "data": {"n": 1}})).await;
    assert_eq!(p["result"]["offset"], 1, "{p}");
    let push = alice.next().await.unwrap();
    assert_eq!(push["push"]["pub"]["data"]["n"], 1, "{push}");
    assert_eq!(push["push"]["pub"]["offset"], 1, "{push}");

    // A client of node B: history and presence agree with node A's.
    let (mut bob, _) = common::Client::connected(addr_b, connect_token("bob")).await;
    bob.call(serde_json::json!({"id": 2, "subscribe": {"channel": "s:room"}})).await;
    let h = bob.call(serde_json::json!({"id": 3, "history": {"channel": "s:room", "limit": -1}})).await;
    assert_eq!(h["history"]["publications"][0]["data"]["n"], 1, "{h}");
    let stats = api(addr_a, "presence_stats", serde_json::json!({"channel": "s:room"})).await;
    assert_eq!(stats["result"], serde_json::json!({"num_clients": 2, "num_users": 2}));

    // `channels` and `connections` gather every node's.
    let ch = api(addr_a, "channels", serde_json::json!({})).await;
    assert_eq!(ch["result"]["channels"]["s:room"]["num_clients"], 2, "{ch}");
    let conns = api(addr_b, "connections", serde_json::json!({})).await;
    assert_eq!(conns["result"]["connections"].as_object().unwrap().len(), 2, "{conns}");

    // A user's connections are counted on every node: a third one is refused.
    let (_alice2, _) = common::Client::connected(addr_b, connect_token("alice")).await;
    let mut third = common::Client::open(addr_a).await;
    third.send(serde_json::json!({"id": 1, "connect": connect_token("alice")})).await;
    assert_eq!(third.close_code().await, 3504, "the user's third connection, across nodes");

    // The API's disconnect through node B reaches alice's connection on node A.
    let d = api(addr_b, "disconnect", serde_json::json!({"user": "bob"})).await;
    assert!(d["result"].is_object(), "{d}");
    assert_eq!(bob.close_code().await, bob_code(), "bob, on node B itself");
    api(addr_b, "disconnect", serde_json::json!({"user": "alice", "disconnect": {"code": 4000, "reason": "bye"}}))
        .await;
    assert_eq!(alice.close_code().await, 4000, "alice, on node A, through node B's API");
}

/// The code of the API's `disconnect` without one of its own.
fn bob_code() -> u16 {
    volley_hub::protocol::Disconnect::FORCE_NO_RECONNECT.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_tells_positioned_subscribers_they_lost_the_stream() {
    let mut redis = Redis::start(false);
    let (_a, addr) = hub_node(&redis, "restart", serde_json::json!({})).await;
    let (mut c, _) = common::Client::connected(addr, connect_token("u")).await;
    let r = c.call(serde_json::json!({"id": 2, "subscribe": {"channel": "s:x", "recover": true}})).await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();
    api(addr, "publish", serde_json::json!({"channel": "s:x", "data": {"n": 1}})).await;
    assert_eq!(c.next().await.unwrap()["push"]["pub"]["offset"], 1);

    redis.kill();
    redis.spawn();
    // Nothing published since: the hub finds the stream gone (a new epoch) on its own,
    // and unsubscribes the client with 2500 so that it resubscribes.
    let push = c.next_within(Duration::from_secs(10)).await.expect("told within seconds").expect("a push");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2500, "{push}");
    let r = c
        .call(
            serde_json::json!({"id": 3, "subscribe": {"channel": "s:x", "recover": true, "epoch": epoch, "offset": 1}}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], serde_json::Value::Null, "not recovered: {r}");
    assert_ne!(r["subscribe"]["epoch"].as_str().unwrap(), epoch);
}
