//! `volley bench-hub`: a load generator for the hub (`volley serve`, or any server of
//! Centrifugo's client protocol v2 over JSON WebSockets). N clients connect with HS256
//! tokens, each subscribes to its channel, a burst of publications through the server
//! API reaches every one, and they go idle while the server's memory is read: memory
//! per client counts what the allocator kept after the burst. Optional fan-out steps
//! then publish payloads carrying their send time through the server API, at rising
//! rates, and time each delivery from that time to its arrival at a client (the
//! generator's own receiving included).
//!
//! `--protocol` chooses whose protocol the clients and the publisher speak, so that the
//! same phases measure the hub's peers too: Centrifugo's (the default), Pusher's
//! (clients of `/app/{key}?protocol=7`, publications through the signed HTTP API of one
//! app) or Socket.IO's (Engine.IO v4 over WebSocket; a `subscribe` event joins a room,
//! publications through the bench server's `POST /publish`).
//!
//! `--transport` chooses what the clients are: WebSocket clients of the protocol (the
//! default), or readers of another transport (`uni_websocket`, `uni_sse`,
//! `uni_http_stream`, `uni_long_poll`, and the bidirectional emulation's `sse` and
//! `http_stream`), each subscribed to its channel with its connect; the same phases and
//! figures follow.
//!
//! Several URLs are the nodes of one hub sharing a broker: client N connects to node N
//! modulo their count and server API connection J publishes through node J modulo their
//! count. Connections are spread over loopback source addresses as in `volley bench`;
//! the server's CPU time and resident memory come from /proc (`--server-pid`, summed over
//! several; `--broker-pid` reports a broker's CPU time beside them). The report is
//! a table or one JSON object; `--events` also prints a JSON line as each phase ends, and
//! `--wait` keeps the clients connected until SIGINT, for runs of several generators.

mod api;
mod client;
mod reader;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use volley::{ClientBuilder, Config};

use super::report::{bytes, micros, thousands, Progress};
use super::{interrupted_by, interrupts, keep_first, sys, CLOSE_GRACE, LATENCY_MAX_US, TICK};

/// Phase: clients are connecting.
const CONNECTING: u8 = 0;
/// Phase: clients subscribe.
const SUBSCRIBING: u8 = 1;
/// Phase: the burst, then the idle hold and the pauses between fan-out steps.
const HOLDING: u8 = 2;
/// Phase: a fan-out step's warm-up.
const WARMUP: u8 = 3;
/// Phase: a fan-out step is measured: deliveries are timed.
const MEASURING: u8 = 4;
/// Phase: over; clients close.
const STOPPED: u8 = 5;

/// Channels per `broadcast` call of the burst.
const BURST_BATCH: usize = 1000;

/// Channels per Pusher `events` call of the burst (the HTTP API's limit).
const PUSHER_BURST_BATCH: usize = 100;

/// A phase that waits on the clients (connect, subscribe, burst, a drain) gives up after
/// this long without progress.
const STALL: Duration = Duration::from_secs(30);

/// A fan-out step's deliveries still missing this long after its last publication are
/// counted lost.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a token is valid (its `exp`), from the start.
const TOKEN_TTL_S: u64 = 24 * 3600;

/// What the clients of `volley bench-hub` are.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Transport {
    /// Clients of the protocol over `/connection/websocket`: `connect`, then `subscribe`.
    #[value(name = "websocket")]
    #[serde(rename = "websocket")]
    WebSocket,
    /// Readers over `/connection/uni_websocket` (the channel in the first message).
    #[value(name = "uni_websocket")]
    #[serde(rename = "uni_websocket")]
    UniWebSocket,
    /// Readers of `GET /connection/uni_sse` (SSE events).
    #[value(name = "uni_sse")]
    #[serde(rename = "uni_sse")]
    UniSse,
    /// Readers of `GET /connection/uni_http_stream` (newline-delimited JSON).
    #[value(name = "uni_http_stream")]
    #[serde(rename = "uni_http_stream")]
    UniHttpStream,
    /// Readers polling `GET /connection/uni_long_poll` with their cursor, again as soon as
    /// each answer came (the channel needs history).
    #[value(name = "uni_long_poll")]
    #[serde(rename = "uni_long_poll")]
    UniLongPoll,
    /// Clients of the emulation over `GET /connection/sse?cf_connect=...`, subscribed by
    /// their token's `channels` claim; pongs go to `/emulation`.
    #[value(name = "sse")]
    #[serde(rename = "sse")]
    Sse,
    /// Clients of the emulation over `POST /connection/http_stream`, as `sse`.
    #[value(name = "http_stream")]
    #[serde(rename = "http_stream")]
    HttpStream,
}

impl Transport {
    /// The transport's name, as `--transport` takes it.
    fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::UniWebSocket => "uni_websocket",
            Transport::UniSse => "uni_sse",
            Transport::UniHttpStream => "uni_http_stream",
            Transport::UniLongPoll => "uni_long_poll",
            Transport::Sse => "sse",
            Transport::HttpStream => "http_stream",
        }
    }

    /// Whether this is one of the unidirectional transports.
    fn is_uni(self) -> bool {
        matches!(self, Transport::UniWebSocket | Transport::UniSse | Transport::UniHttpStream | Transport::UniLongPoll)
    }
}

/// Whose client protocol and HTTP API `volley bench-hub` speaks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// Centrifugo's client protocol v2 (JSON) with HS256 tokens, and the server API.
    #[value(name = "centrifugo")]
    #[serde(rename = "centrifugo")]
    Centrifugo,
    /// Pusher's protocol 7 over `/app/{key}`, public channels, and Pusher's HTTP API
    /// (`POST /apps/{id}/events`, signed with the app's secret).
    #[value(name = "pusher")]
    #[serde(rename = "pusher")]
    Pusher,
    /// Socket.IO 4 (Engine.IO v4 over `/socket.io/?EIO=4&transport=websocket`): a
    /// `subscribe` event with an acknowledgement joins a room; publications go to the
    /// server's `POST /publish` (`{"room", "event", "data"}`).
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
}

/// Flags of `volley bench-hub`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The hub's address, http://HOST:PORT: clients connect to /connection/websocket,
    /// publications go to the server API at /api. Several (or a comma-separated list):
    /// the nodes of one hub that share a broker; client number N connects to node N
    /// modulo their count, and server API connection J publishes through node J modulo
    /// their count, so that publications enter through every node.
    #[arg(value_name = "URL", required = true, num_args = 1.., value_delimiter = ',')]
    urls: Vec<String>,
    /// Clients to connect.
    #[arg(short = 'c', long, default_value_t = 1000)]
    clients: usize,
    /// What the clients are: WebSocket clients of the protocol, or readers of another
    /// transport, each subscribed to its channel as it connects (the unidirectional ones
    /// must be enabled in the hub's configuration).
    #[arg(long, value_enum, default_value = "websocket")]
    transport: Transport,
    /// Channels: client number N subscribes to NAMESPACE:(N modulo CHANNELS). Default: a
    /// channel of its own for every client.
    #[arg(long)]
    channels: Option<usize>,
    /// The namespace of the channels ("" for channels without one).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// The number of this generator's first client: users are u<N> and channels are
    /// named from N, so that several generators can share one hub.
    #[arg(long, value_name = "N", default_value_t = 0)]
    client_from: usize,
    /// Whose protocol the clients and the publisher speak: Centrifugo's (the hub's
    /// native one), Pusher's, or Socket.IO's (see the command's description).
    #[arg(long, value_enum, default_value = "centrifugo")]
    protocol: Protocol,
    /// The HMAC secret of connection tokens (the hub's `client.token.hmac_secret_key`);
    /// with `--protocol pusher`, the app's secret, which signs HTTP API requests.
    #[arg(long, default_value = "")]
    secret: String,
    /// The server API key (the hub's `http_api.key`); with `--protocol pusher`, the
    /// app's key, which clients connect with.
    #[arg(long, default_value = "")]
    api_key: String,
    /// With `--protocol pusher`: the app's id (`/apps/{id}/events`).
    #[arg(long, value_name = "ID", default_value = "")]
    app_id: String,
    /// Publications to every channel in the burst each client receives before the idle
    /// hold.
    #[arg(long, value_name = "N", default_value_t = 2)]
    burst: usize,
    /// How long the clients stay idle after the burst before the server's memory is
    /// read, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    hold: f64,
    /// Fan-out steps after the idle hold: publications per second, in order (each
    /// delivered to every subscriber of its channel), e.g. 1000,10000,100000.
    #[arg(long, value_name = "PUBS_PER_SEC", value_delimiter = ',')]
    rates: Vec<f64>,
    /// Channels per server API call in the fan-out steps: 1 calls `publish`; more call
    /// `broadcast` with that many distinct channels, chosen at random. Several values run
    /// every rate for each, in order.
    #[arg(long, value_name = "N", value_delimiter = ',', default_values_t = [1])]
    batches: Vec<usize>,
    /// A series of rising rates stops after a step whose p99 exceeds this (ms), which
    /// delivered less than 90% of what it published, or which published less than 90% of
    /// the rate asked.
    #[arg(long, value_name = "MS", default_value_t = 1000.0)]
    max_p99: f64,
    /// Length of each fan-out step's measured phase, in seconds.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 5.0)]
    duration: f64,
    /// Length of the unmeasured phase before it, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Payload size in bytes: a JSON object with the send time, padded.
    #[arg(short = 's', long, default_value_t = 100)]
    size: usize,
    /// Server API connections, each with one call in flight.
    #[arg(long, value_name = "N", default_value_t = 16)]
    publishers: usize,
    /// Measure this server process: CPU time of each phase and resident memory (Linux
    /// /proc). Given several times (or a comma-separated list), for several nodes: their
    /// CPU times and memory are summed, and each one's CPU time is reported too.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// A process the hub relies on, such as a Redis broker (several times, or a
    /// comma-separated list, for several): its CPU time in each phase is reported beside
    /// the server's, not counted in it.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    broker_pid: Vec<u32>,
    /// Also read how busy each core of the machine was over each phase (Linux
    /// /proc/stat), so that other work on the machine shows beside the processes'.
    #[arg(long)]
    cores: bool,
    /// Spread connections round-robin over source addresses 127.0.0.1 .. 127.0.0.N (as
    /// `volley bench`; default one per 12,000 clients).
    #[arg(long, value_name = "N")]
    source_addrs: Option<usize>,
    /// The first source address of --source-addrs (default 127.0.0.1).
    #[arg(long, value_name = "IP")]
    source_from: Option<Ipv4Addr>,
    /// Connects (handshake and `connect`) in progress at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    connect_concurrency: usize,
    /// Subscribes in flight at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    subscribe_concurrency: usize,
    /// Connects started per second at most (0: as fast as --connect-concurrency
    /// allows): a ramp, rather than a burst.
    #[arg(long, value_name = "PER_SEC", default_value_t = 0.0)]
    connect_rate: f64,
    /// Each client subscribes as soon as it is connected, rather than all together once
    /// every client is connected (the subscribe figures then overlap the connects).
    #[arg(long)]
    subscribe_at_once: bool,
    /// After the last phase, keep the clients connected until SIGINT (Ctrl-C).
    #[arg(long)]
    wait: bool,
    /// Print a JSON line on stdout as each phase ends (with --json, before the report).
    #[arg(long)]
    events: bool,
    /// Print exactly one JSON object on stdout (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Do not show the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Runtime threads (1: everything on one thread, so the generator fits one core).
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
}

impl Args {
    /// The HTTP API publications go through.
    fn publisher(&self) -> api::Publisher {
        match self.protocol {
            Protocol::Centrifugo => api::Publisher::Centrifugo { key: self.api_key.clone() },
            Protocol::Pusher => api::Publisher::Pusher {
                app_id: self.app_id.clone(),
                key: self.api_key.clone(),
                secret: self.secret.clone(),
            },
            Protocol::SocketIo => api::Publisher::SocketIo,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        let seconds = |name: &str, v: f64, min: f64| {
            if !(v.is_finite() && v >= min && v <= 1e6) {
                bail!("--{name} must be a number of seconds >= {min} (got {v})");
            }
            Ok(())
        };
        seconds("duration", self.duration, 0.001)?;
        seconds("warmup", self.warmup, 0.0)?;
        seconds("hold", self.hold, 0.0)?;
        for (name, v) in [
            ("clients", self.clients),
            ("publishers", self.publishers),
            ("connect-concurrency", self.connect_concurrency),
            ("subscribe-concurrency", self.subscribe_concurrency),
            ("threads", self.threads),
        ] {
            if v == 0 {
                bail!("--{name} must be at least 1");
            }
        }
        for url in &self.urls {
            host_port(url)?;
        }
        if let Some(pid) = self.server_pid.iter().chain(&self.broker_pid).find(|&&p| p == 0) {
            bail!("--server-pid, --broker-pid: {pid} is not a process id");
        }
        if self.channels == Some(0) {
            bail!("--channels must be at least 1");
        }
        if self.size < api::MIN_PAYLOAD || self.size > 1 << 20 {
            bail!("--size must be between {} and {} bytes", api::MIN_PAYLOAD, 1 << 20);
        }
        if let Some(r) = self.rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            bail!("--rates: {r} is not a positive number of publications per second");
        }
        if self.batches.contains(&0) {
            bail!("--batches: a batch has at least one channel");
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            bail!("--connect-rate must be a number of connects per second (0 for no limit)");
        }
        if !(self.max_p99.is_finite() && self.max_p99 > 0.0) {
            bail!("--max-p99 must be a positive number of milliseconds");
        }
        if self.namespace.contains(['"', '\\']) || self.namespace.chars().any(char::is_control) {
            bail!("--namespace: no quotes, backslashes or control characters");
        }
        match self.protocol {
            Protocol::Centrifugo if self.secret.is_empty() || self.api_key.is_empty() => {
                bail!("--secret (the token secret) and --api-key (the server API key) are needed")
            }
            Protocol::Pusher if self.secret.is_empty() || self.api_key.is_empty() || self.app_id.is_empty() => {
                bail!("--protocol pusher needs the app's --app-id, --api-key (its key) and --secret")
            }
            Protocol::Pusher | Protocol::SocketIo if self.transport != Transport::WebSocket => {
                bail!("--transport: the Pusher and Socket.IO clients are WebSocket clients")
            }
            _ => {}
        }
        if self.protocol == Protocol::Pusher
            && (self
                .api_key
                .bytes()
                .chain(self.app_id.bytes())
                .any(|b| !b.is_ascii_alphanumeric() && !b"-_.".contains(&b)))
        {
            bail!("--api-key, --app-id: letters, digits, '-', '_' and '.' only");
        }
        if let Some(n) = self.source_addrs {
            if n == 0 || n > 1 << 16 {
                bail!("--source-addrs must be between 1 and 65536");
            }
        }
        if let Some(ip) = self.source_from {
            let last = u32::from(ip).checked_add(self.source_addrs.unwrap_or(1) as u32 - 1);
            if !ip.is_loopback() || !last.is_some_and(|l| Ipv4Addr::from(l).is_loopback()) {
                bail!("--source-from: the source addresses must be in 127.0.0.0/8 (got {ip})");
            }
        }
        Ok(())
    }
}

/// One node of the hub: where its clients and its server API calls go.
#[derive(Debug)]
pub struct Node {
    addr: SocketAddr,
    /// The node's `Host`.
    authority: String,
    /// The WebSocket client of its clients.
    client: ClientBuilder,
}

/// What every client shares: where to connect, and how its token and channel are made.
#[derive(Debug)]
pub struct Plan {
    protocol: Protocol,
    transport: Transport,
    /// The hub's nodes (one, unless several URLs were given).
    nodes: Vec<Node>,
    sources: Vec<IpAddr>,
    secret: String,
    /// Token expiry (Unix seconds).
    exp: u64,
    client_from: usize,
    /// Channels overall (client N subscribes to N modulo this).
    channels: usize,
    prefix: String,
    /// Publications a client receives in the burst.
    burst: usize,
    /// Subscribe as soon as connected (`--subscribe-at-once`).
    subscribe_at_once: bool,
}

impl Plan {
    /// The global number of this generator's client `index`.
    fn number(&self, index: usize) -> usize {
        self.client_from + index
    }

    /// The node client `index` connects to: its number modulo the nodes.
    fn node(&self, index: usize) -> &Node {
        &self.nodes[self.number(index) % self.nodes.len()]
    }

    /// The node server API connection `publisher` publishes through.
    fn api_node(&self, publisher: usize) -> &Node {
        &self.nodes[publisher % self.nodes.len()]
    }

    fn token(&self, index: usize) -> String {
        let claims = serde_json::json!({ "sub": format!("u{}", self.number(index)), "exp": self.exp });
        crate::serve::hs256(&self.secret, &claims)
    }

    /// A token whose `channels` claim subscribes its client to its channel (server-side).
    fn token_with_channel(&self, index: usize) -> String {
        let claims = serde_json::json!({
            "sub": format!("u{}", self.number(index)),
            "exp": self.exp,
            "channels": [self.channel_of(index)],
        });
        crate::serve::hs256(&self.secret, &claims)
    }

    fn channel_name(&self, channel: usize) -> String {
        format!("{}{channel}", self.prefix)
    }

    fn channel_of(&self, index: usize) -> String {
        self.channel_name(self.number(index) % self.channels)
    }
}

/// State shared by the clients and the controller.
pub struct Shared {
    /// The current phase, read on every delivery.
    phase: AtomicU8,
    /// The same, to wake clients when it changes.
    phase_tx: watch::Sender<u8>,
    /// The origin of the send times in payloads.
    base: Instant,
    subscribe_permits: Arc<Semaphore>,
    connected: AtomicU64,
    connect_errors: AtomicU64,
    subscribed: AtomicU64,
    subscribe_errors: AtomicU64,
    /// Clients that failed or were closed by the server after connecting.
    errors: AtomicU64,
    /// Clients connected and not yet ended.
    alive: AtomicU64,
    /// Publications received by all clients.
    received: AtomicU64,
    /// Clients that received the whole burst.
    burst_done: AtomicU64,
    /// Clients that published their latencies after the last change of phase.
    flushed: AtomicU64,
    /// Pings of the server answered.
    pongs: AtomicU64,
    /// When the last connect and the last subscribe were answered (µs from `base`):
    /// the ends of their phases, which the controller sees only at its next tick.
    last_connect_us: AtomicU64,
    last_subscribe_us: AtomicU64,
    /// Latencies (µs): connect (from the TCP connect to the reply), subscribe (from
    /// the command to the reply), and deliveries in the measured phase.
    connect_latency: Mutex<Histogram<u64>>,
    subscribe_latency: Mutex<Histogram<u64>>,
    deliveries: Mutex<Histogram<u64>>,
    first_connect_error: Mutex<Option<String>>,
    first_subscribe_error: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).context("creating a latency histogram")
}

fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
    let us = d.as_micros().clamp(1, u128::from(LATENCY_MAX_US)) as u64;
    h.lock().unwrap_or_else(|e| e.into_inner()).saturating_record(us);
}

impl Shared {
    fn new(subscribe_concurrency: usize) -> anyhow::Result<Self> {
        Ok(Shared {
            phase: AtomicU8::new(CONNECTING),
            phase_tx: watch::channel(CONNECTING).0,
            base: Instant::now(),
            subscribe_permits: Arc::new(Semaphore::new(subscribe_concurrency)),
            connected: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            subscribe_errors: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            alive: AtomicU64::new(0),
            received: AtomicU64::new(0),
            burst_done: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            last_connect_us: AtomicU64::new(0),
            last_subscribe_us: AtomicU64::new(0),
            connect_latency: Mutex::new(histogram()?),
            subscribe_latency: Mutex::new(histogram()?),
            deliveries: Mutex::new(histogram()?),
            first_connect_error: Mutex::new(None),
            first_subscribe_error: Mutex::new(None),
            first_error: Mutex::new(None),
        })
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Relaxed);
        self.phase_tx.send_replace(phase);
    }

    fn connected(&self, took: Duration) {
        record(&self.connect_latency, took);
        self.last_connect_us.fetch_max(self.base.elapsed().as_micros() as u64, Relaxed);
        self.connected.fetch_add(1, Relaxed);
    }

    fn connect_failed(&self, e: String) {
        self.connect_errors.fetch_add(1, Relaxed);
        keep_first(&self.first_connect_error, e);
    }

    fn subscribed(&self, took: Duration) {
        record(&self.subscribe_latency, took);
        self.last_subscribe_us.fetch_max(self.base.elapsed().as_micros() as u64, Relaxed);
        self.subscribed.fetch_add(1, Relaxed);
    }

    fn subscribe_failed(&self, e: String) {
        self.subscribe_errors.fetch_add(1, Relaxed);
        keep_first(&self.first_subscribe_error, e);
    }

    fn failed(&self, e: String) {
        self.errors.fetch_add(1, Relaxed);
        keep_first(&self.first_error, e);
    }

    fn first(slot: &Mutex<Option<String>>) -> Option<String> {
        slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Serialize, Clone)]
pub struct Latency {
    samples: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Latency {
            samples: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }

    /// The figures of `h`, which is then emptied.
    fn take(h: &Mutex<Histogram<u64>>) -> Option<Self> {
        let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
        let l = Latency::of(&h);
        h.reset();
        l
    }
}

/// The server's and the generator's CPU time and the server's memory at one moment.
#[derive(Clone)]
struct Sample {
    at: Instant,
    /// Each server process's CPU seconds, in the order of `--server-pid`.
    server_cpu: Vec<Option<f64>>,
    /// Each `--broker-pid` process's CPU seconds.
    broker_cpu: Vec<Option<f64>>,
    generator_cpu: Option<f64>,
    /// The server processes' resident memory, summed.
    rss: Option<u64>,
    /// The server processes' anonymous resident memory, summed.
    anon: Option<u64>,
    /// Each core's busy and total clock ticks (`--cores`).
    cores: Option<Vec<(u64, u64)>>,
}

/// What a phase cost: its length and the CPU both sides spent.
#[derive(Debug, Serialize, Clone)]
pub struct Cost {
    /// Seconds.
    seconds: f64,
    /// Seconds over which the CPU times were read (from the phase's start to the
    /// controller's reading after its end: at least `seconds`).
    cpu_window_s: f64,
    /// Server CPU seconds (user + system).
    server_cpu_s: Option<f64>,
    /// Generator CPU seconds.
    generator_cpu_s: Option<f64>,
    /// With several server processes: each one's CPU seconds (they add up to
    /// `server_cpu_s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_each_s: Option<Vec<f64>>,
    /// With `--broker-pid`: the broker processes' CPU seconds, summed, and each one's.
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_cpu_each_s: Option<Vec<f64>>,
    /// With `--cores`: how busy each core was over the window (0 to 1), whatever ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    cores_busy: Option<Vec<f64>>,
}

/// The resident memory of the server processes, summed (`None` without any, or if one
/// could not be read).
fn servers_rss(pids: &[u32]) -> Option<u64> {
    servers_sum(pids, sys::rss_bytes)
}

/// The anonymous resident memory of the server processes, summed.
fn servers_anon(pids: &[u32]) -> Option<u64> {
    servers_sum(pids, sys::anon_bytes)
}

/// `read` of each server process, summed (`None` without any, or if one could not be
/// read).
fn servers_sum(pids: &[u32], read: fn(u32) -> std::io::Result<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| read(p).ok()).sum()
}

/// The CPU seconds of each process from `start` to `end`; `None` if one could not be
/// read at either.
fn cpu_diffs(end: &[Option<f64>], start: &[Option<f64>]) -> Option<Vec<f64>> {
    end.iter().zip(start).map(|(a, b)| Some((a.as_ref()? - b.as_ref()?).max(0.0))).collect()
}

impl Sample {
    fn take(args: &Args) -> Self {
        let cpu = |pids: &[u32]| pids.iter().map(|&p| sys::cpu_seconds(p).ok()).collect();
        Sample {
            at: Instant::now(),
            server_cpu: cpu(&args.server_pid),
            broker_cpu: cpu(&args.broker_pid),
            generator_cpu: sys::cpu_seconds(std::process::id()).ok(),
            rss: servers_rss(&args.server_pid),
            anon: servers_anon(&args.server_pid),
            cores: args.cores.then(|| sys::core_ticks().ok()).flatten(),
        }
    }

    fn since(&self, start: &Sample) -> Cost {
        self.since_until(start, self.at)
    }

    /// The cost from `start` to this sample, the phase's length taken as ending at `end`
    /// (the CPU time read at this sample covers it).
    fn since_until(&self, start: &Sample, end: Instant) -> Cost {
        let diff = |a: Option<f64>, b: Option<f64>| Some((a? - b?).max(0.0));
        let servers = cpu_diffs(&self.server_cpu, &start.server_cpu).filter(|v| !v.is_empty());
        let brokers = cpu_diffs(&self.broker_cpu, &start.broker_cpu).filter(|v| !v.is_empty());
        Cost {
            seconds: end.min(self.at).saturating_duration_since(start.at).as_secs_f64(),
            cpu_window_s: self.at.saturating_duration_since(start.at).as_secs_f64(),
            server_cpu_s: servers.as_ref().map(|v| v.iter().sum()),
            generator_cpu_s: diff(self.generator_cpu, start.generator_cpu),
            server_cpu_each_s: servers.filter(|v| v.len() > 1),
            broker_cpu_s: brokers.as_ref().map(|v| v.iter().sum()),
            broker_cpu_each_s: brokers.filter(|v| v.len() > 1),
            cores_busy: match (&self.cores, &start.cores) {
                (Some(end), Some(start)) => Some(
                    end.iter()
                        .zip(start)
                        .map(|((b1, t1), (b0, t0))| {
                            per(b1.saturating_sub(*b0) as f64, t1.saturating_sub(*t0) as f64).min(1.0)
                        })
                        .collect(),
                ),
                _ => None,
            },
        }
    }
}

/// The connect phase.
#[derive(Debug, Serialize)]
pub struct ConnectReport {
    /// Clients connected (handshake and `connect` reply).
    connected: u64,
    errors: u64,
    first_error: Option<String>,
    cost: Cost,
    /// Connects per second over the phase.
    per_sec: f64,
    /// Server CPU per connect, in microseconds.
    server_cpu_us_each: Option<f64>,
    /// From the TCP connect to the `connect` reply, at this concurrency.
    latency_us: Option<Latency>,
    concurrency: usize,
    /// Server memory after the phase.
    rss_after: Option<u64>,
}

/// The subscribe phase.
#[derive(Debug, Serialize)]
pub struct SubscribeReport {
    subscribed: u64,
    errors: u64,
    first_error: Option<String>,
    cost: Cost,
    per_sec: f64,
    server_cpu_us_each: Option<f64>,
    /// From the `subscribe` command to its reply, at this concurrency.
    latency_us: Option<Latency>,
    concurrency: usize,
    rss_after: Option<u64>,
    /// Server memory added per subscription: (after − after the connects) ÷ subscribed.
    rss_per_subscription: Option<f64>,
}

/// The burst and the idle hold after it.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// Publications per channel in the burst.
    burst: usize,
    /// Server API calls of the burst.
    burst_calls: u64,
    burst_errors: u64,
    first_burst_error: Option<String>,
    /// Clients that received the whole burst.
    clients_complete: u64,
    burst_cost: Cost,
    /// Seconds held idle before the memory was read.
    hold_s: f64,
    /// Clients still connected at the end of the hold.
    clients_held: u64,
    /// Server memory before the first client, and at the end of the hold.
    rss_before: Option<u64>,
    rss_idle: Option<u64>,
    /// (rss_idle − rss_before) ÷ clients_held.
    rss_per_client: Option<f64>,
    /// The same of the anonymous resident memory (`RssAnon`), which leaves out the
    /// pages of the server's executable that the run read in: what the clients hold,
    /// without that fixed cost.
    anon_before: Option<u64>,
    anon_idle: Option<u64>,
    anon_per_client: Option<f64>,
}

/// One fan-out step.
#[derive(Debug, Serialize)]
pub struct StepReport {
    /// Publications per second asked.
    rate: f64,
    /// Channels per server API call.
    batch: usize,
    /// Publications made over the step (warm-up included), and the deliveries they owe.
    published: u64,
    expected: u64,
    api_calls: u64,
    api_errors: u64,
    first_api_error: Option<String>,
    /// The measured phase: its cost, deliveries in it, their rate, and per server CPU
    /// second.
    cost: Cost,
    deliveries: u64,
    deliveries_per_sec: f64,
    deliveries_per_server_cpu_s: Option<f64>,
    /// With `--broker-pid`: deliveries per CPU second of the server and the broker
    /// together.
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries_per_server_and_broker_cpu_s: Option<f64>,
    /// Publications the server API took per second in the measured phase.
    publications_per_sec: f64,
    /// From the time a publication was due to be sent to its arrival at a client.
    latency_us: Option<Latency>,
    /// Deliveries owed that had not arrived [`DRAIN`] after the step's last publication.
    lost: u64,
    /// Why the series of rates stopped after this step, if it did.
    stopped: Option<String>,
}

/// Everything `volley bench-hub` reports; the field names are the JSON keys.
#[derive(Debug, Serialize)]
pub struct Report {
    mode: &'static str,
    /// The URL, or the nodes' URLs separated by commas.
    url: String,
    protocol: Protocol,
    transport: Transport,
    clients: usize,
    channels: usize,
    client_from: usize,
    size: usize,
    source_addrs: usize,
    /// The server process, when one was measured.
    server_pid: Option<u32>,
    /// The server processes, when several were measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_pids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    broker_pids: Vec<u32>,
    connect: ConnectReport,
    subscribe: Option<SubscribeReport>,
    idle: Option<IdleReport>,
    fanout: Vec<StepReport>,
    /// Clients that failed or were disconnected by the server after connecting.
    errors: u64,
    first_error: Option<String>,
    /// Pings of the server answered.
    pongs: u64,
    /// The generator's resident memory, all clients connected.
    generator_rss: Option<u64>,
    interrupted: bool,
}

/// Runs `volley bench-hub` and prints its report.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.check()?;
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .context("starting the runtime")?;
    let publishing = publishers_runtime().context("starting the publishers' thread")?;
    let report = runtime.block_on(bench(&args, publishing.handle().clone()))?;
    runtime.shutdown_background();
    publishing.shutdown_background();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print_table();
    }
    if let Some(e) = &report.connect.first_error {
        eprintln!("volley bench-hub: {} client(s) could not connect; first error: {e}", report.connect.errors);
    }
    if let Some(e) = report.subscribe.as_ref().and_then(|s| s.first_error.as_ref()) {
        eprintln!("volley bench-hub: a subscribe failed: {e}");
    }
    if let Some(e) = &report.first_error {
        eprintln!("volley bench-hub: {} client(s) failed during the run; first error: {e}", report.errors);
    }
    if report.connect.connected == 0 {
        bail!("no client could connect");
    }
    Ok(())
}

/// The runtime the fan-out steps' publishers run on, with one thread of its own: the
/// clients' thread may be busy reading deliveries when a call is due, and a
/// publisher that waited for it would start its calls late. Its calls are timed by
/// [`sleep_precisely`], on a thread whose timer slack is 1 ns ([`precise_sleeps`]).
fn publishers_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("publishers")
        .on_thread_start(precise_sleeps)
        .enable_all()
        .build()
}

/// Has the calling thread's sleeps end on time: Linux lets a thread's timers fire up
/// to its timer slack late (50 µs by default) to merge wake-ups, and the publishers'
/// calls would leave that much late, counted in every latency. A thread may set its
/// own slack (`PR_SET_TIMERSLACK`); where it cannot, its sleeps stay as they were.
/// Measured here: a 3.3 ms sleep ended 70 µs late at the median with the default
/// slack, 20 µs with a slack of 1 ns.
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_timerslack(1);
}

/// Waits until `due`, to within about a tenth of a millisecond: tokio's timer ticks
/// every millisecond and wakes up to a tick (or, with the thread busy, more) late,
/// which would count in every latency measured from `due`. It sleeps on the timer
/// until 2 ms before, then blocks its thread (the publishers' own) for the rest.
async fn sleep_precisely(due: Instant) {
    if let Some(early) = due.checked_sub(Duration::from_millis(2)) {
        tokio::time::sleep_until(early).await;
    }
    let left = due.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

/// Host and port of an http:// URL (ws:// accepted too).
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .with_context(|| format!("{url}: the URL must start with http:// (TLS is not supported)"))?;
    super::host_port(&format!("ws://{rest}"))
}

/// The controller's view: the shared state, the server, the progress bar, Ctrl-C.
struct Run<'a> {
    args: &'a Args,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    progress: Progress,
    ctrl_c: watch::Receiver<bool>,
    interrupted: bool,
    tick: tokio::time::Interval,
    /// This generator's channels, and the subscribers each has among its clients.
    channels: Vec<usize>,
    subscribers: Vec<u64>,
    /// Where the fan-out steps' publishers run ([`publishers_runtime`]).
    publishing: tokio::runtime::Handle,
}

async fn bench(args: &Args, publishing: tokio::runtime::Handle) -> anyhow::Result<Report> {
    match sys::raise_nofile_limit() {
        Ok(limit) if (limit as usize) < args.clients + args.publishers + 64 => eprintln!(
            "volley bench-hub: warning: the open-file limit is {limit}, fewer than {} clients need; raise its hard \
             limit (`ulimit -Hn`), or share the clients among several generators (--client-from)",
            args.clients
        ),
        Ok(_) => {}
        Err(e) => eprintln!("volley bench-hub: warning: could not raise the open-file limit: {e}"),
    }
    let config = Config::new().ping_interval(None).close_timeout(Duration::from_secs(2)).deflate(None);
    let path = match (args.protocol, args.transport) {
        (Protocol::Pusher, _) => format!("app/{}?protocol=7&client=volley-bench&version=1.0", args.api_key),
        (Protocol::SocketIo, _) => "socket.io/?EIO=4&transport=websocket".to_string(),
        (_, Transport::UniWebSocket) => "connection/uni_websocket".to_string(),
        _ => "connection/websocket".to_string(),
    };
    let mut nodes = Vec::new();
    for url in &args.urls {
        let (host, port) = host_port(url)?;
        let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host}: no address"))?;
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let client = ClientBuilder::new(format!("ws://{authority}/{path}")).no_proxy().config(config.clone());
        nodes.push(Node { addr, authority, client });
    }
    // Source addresses only when every node is at a 127.x.x.x address.
    let probe = nodes.iter().find(|n| !matches!(n.addr.ip(), IpAddr::V4(ip) if ip.is_loopback())).unwrap_or(&nodes[0]);
    let sources =
        super::source_addresses(probe.addr, args.clients, args.source_addrs, args.source_from, "volley bench-hub");
    let channels = args.channels.unwrap_or(args.client_from + args.clients);
    // Pusher's channel names have no ':'.
    let separator = if args.protocol == Protocol::Pusher { '-' } else { ':' };
    let prefix = if args.namespace.is_empty() { String::new() } else { format!("{}{separator}", args.namespace) };
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let plan = Arc::new(Plan {
        protocol: args.protocol,
        transport: args.transport,
        nodes,
        sources: sources.clone(),
        secret: args.secret.clone(),
        exp: now_s + TOKEN_TTL_S,
        client_from: args.client_from,
        channels,
        prefix,
        burst: args.burst,
        subscribe_at_once: args.subscribe_at_once,
    });
    // This generator's channels (each once), and their subscribers among its clients.
    let (mine, subscribers) = channels_of(args.client_from, args.clients, channels);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut run = Run {
        args,
        plan: plan.clone(),
        shared: Arc::new(Shared::new(args.subscribe_concurrency)?),
        progress: Progress::new(!(args.json || args.no_progress)),
        ctrl_c: interrupts(),
        interrupted: false,
        tick,
        channels: mine,
        subscribers,
        publishing,
    };
    for &pid in &args.server_pid {
        sys::rss_bytes(pid).with_context(|| format!("reading the memory of process {pid}"))?;
    }
    for &pid in &args.broker_pid {
        sys::cpu_seconds(pid).with_context(|| format!("reading the CPU time of process {pid}"))?;
    }

    // Connect every client, at most `connect_concurrency` at once.
    let before = Sample::take(args);
    let mut tasks = JoinSet::new();
    let connect = run.connect(&mut tasks).await;
    let generator_rss = sys::own_rss_bytes();
    run.event("connected", &connect);

    let mut subscribe = None;
    let mut idle = None;
    let mut fanout = Vec::new();
    if !run.interrupted && connect.connected > 0 {
        let s = run.subscribe(connect.rss_after).await;
        run.event("subscribed", &s);
        subscribe = Some(s);
    }
    if !run.interrupted && subscribe.is_some() {
        let i = run.burst_and_hold(before.rss, before.anon).await;
        run.event("idle", &i);
        idle = Some(i);
    }
    'series: for &batch in &args.batches {
        for &rate in &args.rates {
            if run.interrupted || idle.is_none() || run.shared.alive.load(Relaxed) == 0 {
                break 'series;
            }
            let step = run.step(rate, batch).await;
            run.event("step", &step);
            let stop = step.stopped.is_some();
            fanout.push(step);
            if stop {
                break;
            }
        }
    }
    let interrupted = run.interrupted;
    if args.wait && !run.interrupted {
        run.progress.phase("waiting", 0.0);
        run.progress.set_message("until interrupted".to_string());
        interrupted_by(&mut run.ctrl_c).await;
        run.interrupted = true;
    }
    let shared = run.shared.clone();
    shared.set_phase(STOPPED);
    run.progress.finish();
    // Let the clients close.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => {}
            _ = interrupted_by(&mut run.ctrl_c) => {}
        }
    })
    .await;
    tasks.abort_all();
    Ok(Report {
        mode: "hub",
        url: args.urls.join(","),
        protocol: args.protocol,
        transport: args.transport,
        clients: args.clients,
        channels,
        client_from: args.client_from,
        size: args.size,
        source_addrs: sources.len().max(1),
        server_pid: match args.server_pid[..] {
            [pid] => Some(pid),
            _ => None,
        },
        server_pids: (args.server_pid.len() > 1).then(|| args.server_pid.clone()),
        broker_pids: args.broker_pid.clone(),
        connect,
        subscribe,
        idle,
        fanout,
        errors: shared.errors.load(Relaxed),
        first_error: Shared::first(&shared.first_error),
        pongs: shared.pongs.load(Relaxed),
        generator_rss,
        interrupted,
    })
}

/// The channels of clients `from .. from + clients` (each once, in order of first
/// use) when client N subscribes to N modulo `channels`, and each one's subscribers.
fn channels_of(from: usize, clients: usize, channels: usize) -> (Vec<usize>, Vec<u64>) {
    if clients >= channels {
        let subs = (0..channels)
            .map(|c| {
                // Numbers from..from+clients that are c modulo channels.
                let first = from + (c + channels - from % channels) % channels;
                let end = from + clients;
                if first >= end {
                    0
                } else {
                    ((end - first).div_ceil(channels)) as u64
                }
            })
            .collect();
        ((0..channels).collect(), subs)
    } else {
        ((from..from + clients).map(|n| n % channels).collect(), vec![1; clients])
    }
}

impl Run<'_> {
    fn event<T: Serialize>(&self, name: &str, data: &T) {
        if self.args.events {
            let line = serde_json::json!({ "event": name, "data": data });
            println!("{line}");
        }
    }

    /// Waits until `done()` or until nothing moved for [`STALL`] (or Ctrl-C), showing
    /// `position()` on the bar; `false` if it stalled or was interrupted.
    async fn wait_for(&mut self, done: impl Fn(&Shared) -> bool, position: impl Fn(&Shared) -> u64) -> bool {
        let mut last = (position(&self.shared), Instant::now());
        // Polled often, so that the phase's end is read close to when it came.
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        while !done(&self.shared) {
            tokio::select! {
                _ = poll.tick() => {}
                _ = interrupted_by(&mut self.ctrl_c) => {
                    self.interrupted = true;
                    return false;
                }
            }
            let p = position(&self.shared);
            self.progress.set_position(p);
            if p != last.0 {
                last = (p, Instant::now());
            } else if last.1.elapsed() >= STALL {
                return false;
            }
        }
        true
    }

    async fn connect(&mut self, tasks: &mut JoinSet<()>) -> ConnectReport {
        let n = self.args.clients;
        let start = Sample::take(self.args);
        self.progress.counting("connecting", n);
        let permits = Arc::new(Semaphore::new(self.args.connect_concurrency));
        let attempted = |s: &Shared| s.connected.load(Relaxed) + s.connect_errors.load(Relaxed);
        let mut spawned = 0;
        let began = Instant::now();
        let pace = (self.args.connect_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.args.connect_rate));
        while spawned < n && !self.interrupted {
            let due = pace.map_or(began, |p| began + p.mul_f64(spawned as f64));
            tokio::select! {
                permit = async {
                    tokio::time::sleep_until(due).await;
                    permits.clone().acquire_owned().await
                } => {
                    let Ok(permit) = permit else { break };
                    let (plan, shared) = (self.plan.clone(), self.shared.clone());
                    if self.args.transport == Transport::WebSocket {
                        tasks.spawn(client::run(spawned, plan, shared, permit));
                    } else {
                        tasks.spawn(reader::run(spawned, plan, shared, permit));
                    }
                    spawned += 1;
                }
                _ = self.tick.tick() => self.progress.set_position(attempted(&self.shared)),
                _ = interrupted_by(&mut self.ctrl_c) => self.interrupted = true,
            }
        }
        let spawned = spawned as u64;
        if !self.interrupted {
            self.wait_for(|s| attempted(s) >= spawned, attempted).await;
        }
        let end = Sample::take(self.args);
        let last = self.shared.base + Duration::from_micros(self.shared.last_connect_us.load(Relaxed));
        let cost = end.since_until(&start, if last > start.at { last } else { end.at });
        let connected = self.shared.connected.load(Relaxed);
        ConnectReport {
            connected,
            errors: self.shared.connect_errors.load(Relaxed),
            first_error: Shared::first(&self.shared.first_connect_error),
            cost: cost.clone(),
            per_sec: per(connected as f64, cost.seconds),
            server_cpu_us_each: cost.server_cpu_s.map(|c| per(c * 1e6, connected as f64)),
            latency_us: Latency::take(&self.shared.connect_latency),
            concurrency: self.args.connect_concurrency,
            rss_after: end.rss,
        }
    }

    async fn subscribe(&mut self, rss_connected: Option<u64>) -> SubscribeReport {
        let alive = self.shared.alive.load(Relaxed);
        let start = Sample::take(self.args);
        self.progress.counting("subscribing", alive as usize);
        self.shared.set_phase(SUBSCRIBING);
        let answered = |s: &Shared| s.subscribed.load(Relaxed) + s.subscribe_errors.load(Relaxed);
        self.wait_for(|s| answered(s) + s.errors.load(Relaxed) >= alive, answered).await;
        let end = Sample::take(self.args);
        let last = self.shared.base + Duration::from_micros(self.shared.last_subscribe_us.load(Relaxed));
        let cost = end.since_until(&start, if last > start.at { last } else { end.at });
        let subscribed = self.shared.subscribed.load(Relaxed);
        self.shared.set_phase(HOLDING);
        SubscribeReport {
            subscribed,
            errors: self.shared.subscribe_errors.load(Relaxed),
            first_error: Shared::first(&self.shared.first_subscribe_error),
            cost: cost.clone(),
            per_sec: per(subscribed as f64, cost.seconds),
            server_cpu_us_each: cost.server_cpu_s.map(|c| per(c * 1e6, subscribed as f64)),
            latency_us: Latency::take(&self.shared.subscribe_latency),
            concurrency: self.args.subscribe_concurrency,
            rss_after: end.rss,
            rss_per_subscription: match (end.rss, rss_connected) {
                (Some(a), Some(b)) if subscribed > 0 => Some((a as f64 - b as f64) / subscribed as f64),
                _ => None,
            },
        }
    }

    /// Publishes the burst to every channel, waits until every subscribed client has it,
    /// holds the clients idle, and reads the server's memory.
    async fn burst_and_hold(&mut self, rss_before: Option<u64>, anon_before: Option<u64>) -> IdleReport {
        let start = Sample::take(self.args);
        let want = self.shared.subscribed.load(Relaxed);
        self.progress.counting("burst", want as usize);
        let burst_batch = if self.args.protocol == Protocol::Pusher { PUSHER_BURST_BATCH } else { BURST_BATCH };
        let calls: Vec<Vec<usize>> =
            (0..self.args.burst).flat_map(|_| self.channels.chunks(burst_batch).map(<[usize]>::to_vec)).collect();
        let calls_n = calls.len() as u64;
        let queue = Arc::new(Mutex::new(calls));
        let counters = Arc::new(StepCounters::default());
        let mut publishers = JoinSet::new();
        for p in 0..self.args.publishers.min(calls_n as usize) {
            let (queue, counters, plan, shared) =
                (queue.clone(), counters.clone(), self.plan.clone(), self.shared.clone());
            let (publisher, size) = (self.args.publisher(), self.args.size);
            publishers.spawn(async move {
                let node = plan.api_node(p);
                let mut conn = match api::ApiConn::open(node.addr, &node.authority, &publisher).await {
                    Ok(c) => c,
                    Err(e) => return counters.failed(e),
                };
                loop {
                    let Some(channels) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else { break };
                    let names: Vec<String> = channels.iter().map(|&c| plan.channel_name(c)).collect();
                    let t = shared.base.elapsed().as_micros() as u64;
                    counters.calls.fetch_add(1, Relaxed);
                    if let Err(e) = conn.publish(&names, &api::payload(t, size)).await {
                        counters.failed(e);
                    }
                }
            });
        }
        while publishers.join_next().await.is_some() {}
        if self.args.burst > 0 {
            self.wait_for(|s| s.burst_done.load(Relaxed) >= want, |s| s.burst_done.load(Relaxed)).await;
        }
        let end = Sample::take(self.args);
        let hold = self.args.hold;
        self.progress.phase("holding", hold);
        let until = Instant::now() + Duration::from_secs_f64(hold);
        while Instant::now() < until && !self.interrupted {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = self.tick.tick() => self.progress.set_message(String::new()),
                _ = interrupted_by(&mut self.ctrl_c) => self.interrupted = true,
            }
        }
        let rss_idle = servers_rss(&self.args.server_pid);
        let anon_idle = servers_anon(&self.args.server_pid);
        let held = self.shared.alive.load(Relaxed);
        IdleReport {
            burst: self.args.burst,
            burst_calls: calls_n,
            burst_errors: counters.errors.load(Relaxed),
            first_burst_error: Shared::first(&counters.first_error),
            clients_complete: self.shared.burst_done.load(Relaxed),
            burst_cost: end.since(&start),
            hold_s: hold,
            clients_held: held,
            rss_before,
            rss_idle,
            rss_per_client: match (rss_idle, rss_before) {
                (Some(a), Some(b)) if held > 0 => Some((a as f64 - b as f64) / held as f64),
                _ => None,
            },
            anon_before,
            anon_idle,
            anon_per_client: match (anon_idle, anon_before) {
                (Some(a), Some(b)) if held > 0 => Some((a as f64 - b as f64) / held as f64),
                _ => None,
            },
        }
    }

    /// One fan-out step: `rate` publications per second, `batch` channels per call.
    async fn step(&mut self, rate: f64, batch: usize) -> StepReport {
        let args = self.args;
        let batch = batch.min(self.channels.len());
        let interval = Duration::from_secs_f64(batch as f64 / rate);
        let start = Instant::now() + Duration::from_millis(20);
        let measure_at = start + Duration::from_secs_f64(args.warmup);
        let end = measure_at + Duration::from_secs_f64(args.duration);
        let received_before = self.shared.received.load(Relaxed);
        let counters = Arc::new(StepCounters::default());
        let channels = Arc::new((self.channels.clone(), self.subscribers.clone()));
        let mut publishers = JoinSet::new();
        for p in 0..args.publishers {
            let (counters, channels, plan, shared) =
                (counters.clone(), channels.clone(), self.plan.clone(), self.shared.clone());
            let (publisher, size) = (args.publisher(), args.size);
            publishers.spawn_on(
                async move {
                    let node = plan.api_node(p);
                    // Opened when first needed (and again after a failure), as a backend's
                    // HTTP client does: a server may close a connection that sends no
                    // request for a while (the hub's limit is 10 s), and at a low rate a
                    // publisher's first call comes up to `duration` after the start.
                    let mut conn: Option<api::ApiConn> = None;
                    let mut rng = XorShift::new(p as u64 + 1);
                    let (list, subs) = &*channels;
                    loop {
                        let k = counters.next.fetch_add(1, Relaxed);
                        let due = start + interval.mul_f64(k as f64);
                        if due >= end {
                            break;
                        }
                        // The call is made ready first: only sending it counts.
                        let first = if batch == list.len() { 0 } else { rng.below(list.len()) };
                        let picked = (0..batch).map(|i| (first + i) % list.len());
                        let names: Vec<String> = picked.clone().map(|i| plan.channel_name(list[i])).collect();
                        let owed: u64 = picked.map(|i| subs[i]).sum();
                        let t = due.saturating_duration_since(shared.base).as_micros() as u64;
                        let call = publisher.call(&names, &api::payload(t, size));
                        sleep_precisely(due).await;
                        counters.calls.fetch_add(1, Relaxed);
                        counters.published.fetch_add(batch as u64, Relaxed);
                        counters.expected.fetch_add(owed, Relaxed);
                        if Instant::now() >= measure_at && Instant::now() < end {
                            counters.measured.fetch_add(batch as u64, Relaxed);
                        }
                        let mut c = match conn.take() {
                            Some(c) => c,
                            None => match api::ApiConn::open(node.addr, &node.authority, &publisher).await {
                                Ok(c) => c,
                                Err(e) => {
                                    counters.failed(e);
                                    continue;
                                }
                            },
                        };
                        match c.send_call(call).await {
                            Ok(_) => conn = Some(c),
                            Err(e) => counters.failed(e),
                        }
                    }
                },
                &self.publishing,
            );
        }
        self.shared.set_phase(WARMUP);
        self.progress.phase(&format!("{} pub/s", thousands(rate as u64)), args.warmup + args.duration);
        self.sleep_until(measure_at).await;
        let measured_start = Sample::take(args);
        let delivered_start = self.shared.received.load(Relaxed);
        self.shared.set_phase(MEASURING);
        self.sleep_until(end).await;
        self.shared.flushed.store(0, Relaxed);
        self.shared.set_phase(HOLDING);
        let measured_end = Sample::take(args);
        let delivered = self.shared.received.load(Relaxed) - delivered_start;
        while publishers.join_next().await.is_some() {}
        // Drain: what was published arrives, or counts as lost.
        let expected = counters.expected.load(Relaxed);
        let drain_until = Instant::now() + DRAIN;
        while self.shared.received.load(Relaxed) - received_before < expected
            && Instant::now() < drain_until
            && !self.interrupted
        {
            self.sleep_until(Instant::now() + Duration::from_millis(20)).await;
        }
        // Every client has published its latencies.
        let alive = self.shared.alive.load(Relaxed);
        let flush_until = Instant::now() + Duration::from_secs(2);
        while self.shared.flushed.load(Relaxed) < alive && Instant::now() < flush_until {
            self.sleep_until(Instant::now() + Duration::from_millis(10)).await;
        }
        let cost = measured_end.since(&measured_start);
        let latency = Latency::take(&self.shared.deliveries);
        let lost = expected.saturating_sub(self.shared.received.load(Relaxed) - received_before);
        let published = counters.published.load(Relaxed);
        let mut stopped = None;
        if let Some(l) = &latency {
            if l.p99 as f64 > args.max_p99 * 1000.0 {
                stopped = Some(format!("p99 {} is over {} ms", micros(l.p99), args.max_p99));
            }
        }
        let owed_in_window = counters.measured.load(Relaxed) as f64 * expected as f64 / published.max(1) as f64;
        if stopped.is_none() && (delivered as f64) < 0.9 * owed_in_window {
            stopped = Some(format!(
                "{} deliveries in the measured phase, {:.0}% of the {} owed",
                thousands(delivered),
                100.0 * delivered as f64 / owed_in_window.max(1.0),
                thousands(owed_in_window as u64)
            ));
        }
        let made = per(counters.measured.load(Relaxed) as f64, cost.seconds);
        if stopped.is_none() && made < 0.9 * rate {
            stopped = Some(format!(
                "the server API took {} publications/s of the {} asked",
                thousands(made.round() as u64),
                thousands(rate.round() as u64)
            ));
        }
        if stopped.is_none() && lost > 0 {
            stopped = Some(format!("{} deliveries lost", thousands(lost)));
        }
        if self.interrupted {
            stopped = Some("interrupted".to_string());
        }
        StepReport {
            rate,
            batch,
            published,
            expected,
            api_calls: counters.calls.load(Relaxed),
            api_errors: counters.errors.load(Relaxed),
            first_api_error: Shared::first(&counters.first_error),
            cost: cost.clone(),
            deliveries: delivered,
            deliveries_per_sec: per(delivered as f64, cost.seconds),
            deliveries_per_server_cpu_s: cost.server_cpu_s.filter(|c| *c > 0.0).map(|c| delivered as f64 / c),
            deliveries_per_server_and_broker_cpu_s: cost
                .server_cpu_s
                .zip(cost.broker_cpu_s)
                .map(|(s, b)| s + b)
                .filter(|c| *c > 0.0)
                .map(|c| delivered as f64 / c),
            publications_per_sec: per(counters.measured.load(Relaxed) as f64, cost.seconds),
            latency_us: latency,
            lost,
            stopped,
        }
    }

    async fn sleep_until(&mut self, at: Instant) {
        while Instant::now() < at && !self.interrupted {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.tick.tick() => {
                    let got = self.shared.received.load(Relaxed);
                    self.progress.set_message(format!("{} publications received", thousands(got)));
                }
                _ = interrupted_by(&mut self.ctrl_c) => self.interrupted = true,
            }
        }
    }
}

/// The publishers' counts of one fan-out step.
#[derive(Default)]
struct StepCounters {
    /// The number of the next call (its due time follows).
    next: AtomicU64,
    calls: AtomicU64,
    published: AtomicU64,
    /// Publications sent in the measured phase.
    measured: AtomicU64,
    /// Deliveries owed: the subscribers of every channel published to.
    expected: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl StepCounters {
    fn failed(&self, e: String) {
        self.errors.fetch_add(1, Relaxed);
        keep_first(&self.first_error, e);
    }
}

/// A small, fast generator of channel choices (xorshift64*), seeded per publisher.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

fn per(n: f64, d: f64) -> f64 {
    if d > 0.0 {
        n / d
    } else {
        0.0
    }
}

impl Report {
    /// The human-readable table (stdout).
    pub fn print_table(&self) {
        let row = |name: &str, value: String| println!("  {name:<20} {value}");
        let lat = |l: &Option<Latency>| match l {
            Some(l) => format!("p50 {}  p99 {}  max {}", micros(l.p50), micros(l.p99), micros(l.max)),
            None => "–".to_string(),
        };
        let cpu = |c: &Cost| {
            let mut text = match c.server_cpu_s {
                Some(s) => format!("{s:.2} s server CPU ({:.0}% of one core)", 100.0 * per(s, c.cpu_window_s)),
                None => "server CPU not measured".to_string(),
            };
            let each = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" + ");
            if let Some(v) = &c.server_cpu_each_s {
                text += &format!(" = {} s by node", each(v));
            }
            if let Some(b) = c.broker_cpu_s {
                text += &format!("; {b:.2} s broker CPU ({:.0}% of one core)", 100.0 * per(b, c.cpu_window_s));
                if let Some(v) = &c.broker_cpu_each_s {
                    text += &format!(" = {} s by process", each(v));
                }
            }
            if let Some(v) = &c.cores_busy {
                let busy: Vec<String> = v.iter().map(|b| format!("{:.0}%", 100.0 * b)).collect();
                text += &format!("; cores busy {}", busy.join(" "));
            }
            text
        };
        let opt_bytes = |v: Option<f64>| v.map_or("?".to_string(), bytes);
        println!(
            "volley bench-hub {} over {} ({} clients, {} channels)",
            self.url,
            match self.protocol {
                Protocol::Centrifugo => self.transport.name(),
                Protocol::Pusher => "Pusher's protocol",
                Protocol::SocketIo => "Socket.IO's protocol",
            },
            thousands(self.clients as u64),
            thousands(self.channels as u64)
        );
        let c = &self.connect;
        row(
            "connect",
            format!(
                "{} connected, {} failed, in {:.2} s: {} connects/s; {}",
                thousands(c.connected),
                thousands(c.errors),
                c.cost.seconds,
                thousands(c.per_sec.round() as u64),
                cpu(&c.cost)
            ),
        );
        if let Some(us) = c.server_cpu_us_each {
            row("", format!("{us:.1} µs server CPU per connect; latency {}", lat(&c.latency_us)));
        }
        if let Some(s) = self.subscribe.as_ref().filter(|_| self.transport != Transport::WebSocket) {
            row(
                "subscribe",
                format!("{} subscribed with their connect, {} failed", thousands(s.subscribed), thousands(s.errors)),
            );
        } else if let Some(s) = &self.subscribe {
            row(
                "subscribe",
                format!(
                    "{} subscribed, {} failed, in {:.2} s: {} subscribes/s; {}",
                    thousands(s.subscribed),
                    thousands(s.errors),
                    s.cost.seconds,
                    thousands(s.per_sec.round() as u64),
                    cpu(&s.cost)
                ),
            );
            row(
                "",
                format!(
                    "{} server CPU per subscribe, {} memory per subscription; latency {}",
                    s.server_cpu_us_each.map_or("?".to_string(), |u| format!("{u:.1} µs")),
                    opt_bytes(s.rss_per_subscription),
                    lat(&s.latency_us)
                ),
            );
        }
        if let Some(i) = &self.idle {
            row(
                "burst",
                format!(
                    "{} publication(s) per channel in {} API calls; {} of the clients got all; {}",
                    i.burst,
                    thousands(i.burst_calls),
                    thousands(i.clients_complete),
                    cpu(&i.burst_cost)
                ),
            );
            row(
                "idle memory",
                format!(
                    "{} per client, {} of it anonymous ({} held {:.1} s; server {} before, {} idle)",
                    opt_bytes(i.rss_per_client),
                    opt_bytes(i.anon_per_client),
                    thousands(i.clients_held),
                    i.hold_s,
                    opt_bytes(i.rss_before.map(|v| v as f64)),
                    opt_bytes(i.rss_idle.map(|v| v as f64))
                ),
            );
        }
        for s in &self.fanout {
            let mut per_cpu = s.deliveries_per_server_cpu_s.map_or("?".to_string(), |d| thousands(d.round() as u64));
            if let Some(d) = s.deliveries_per_server_and_broker_cpu_s {
                per_cpu += &format!(" ({} with the broker's)", thousands(d.round() as u64));
            }
            row(
                &format!("{} pub/s × {}", thousands(s.rate as u64), s.batch),
                format!(
                    "{} deliveries/s, {per_cpu} per server-CPU-s, {}; {}{}",
                    thousands(s.deliveries_per_sec.round() as u64),
                    lat(&s.latency_us),
                    cpu(&s.cost),
                    if s.lost > 0 { format!(", {} lost", thousands(s.lost)) } else { String::new() }
                ),
            );
            if let Some(why) = &s.stopped {
                row("", format!("stopped rising: {why}"));
            }
        }
        row("errors", format!("{}, {} pings answered", thousands(self.errors), thousands(self.pongs)));
        if let Some(rss) = self.generator_rss {
            row("generator memory", bytes(rss as f64));
        }
        if self.interrupted {
            println!("  (interrupted: partial results)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_their_subscribers() {
        // One each.
        assert_eq!(channels_of(0, 3, 3), (vec![0, 1, 2], vec![1, 1, 1]));
        assert_eq!(channels_of(10, 3, 100), (vec![10, 11, 12], vec![1, 1, 1]));
        // Shared: 10 clients over 3 channels.
        assert_eq!(channels_of(0, 10, 3), (vec![0, 1, 2], vec![4, 3, 3]));
        // From 5: numbers 5..15 modulo 3 are 2,0,1,2,0,1,2,0,1,2.
        assert_eq!(channels_of(5, 10, 3), (vec![0, 1, 2], vec![3, 3, 4]));
        assert_eq!(channels_of(0, 10_000, 1), (vec![0], vec![10_000]));
        // Fewer clients than channels, wrapping.
        assert_eq!(channels_of(4, 3, 5), (vec![4, 0, 1], vec![1, 1, 1]));
    }

    #[test]
    fn the_publishers_thread_runs_their_calls_and_none_starts_early() {
        let publishing = publishers_runtime().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let start = Instant::now();
        for k in 0..5u32 {
            let tx = tx.clone();
            publishing.handle().spawn(async move {
                // Due times both past the timer's 2 ms and inside it.
                let due = start + Duration::from_micros(500 + 1_700 * u64::from(k));
                sleep_precisely(due).await;
                #[cfg(target_os = "linux")]
                let slack = nix::sys::prctl::get_timerslack().unwrap();
                #[cfg(not(target_os = "linux"))]
                let slack = 1;
                let _ = tx.send((due, Instant::now(), std::thread::current().name().map(str::to_owned), slack));
            });
        }
        drop(tx);
        let woke: Vec<_> = rx.iter().collect();
        assert_eq!(woke.len(), 5);
        for (due, at, thread, slack) in woke {
            assert!(at >= due, "woke {:?} before its due time", due - at);
            assert_eq!(thread.as_deref(), Some("publishers"));
            assert_eq!(slack, 1, "the publishers' sleeps may end {slack} ns late");
        }
        publishing.shutdown_background();
    }

    #[test]
    fn urls_and_random_channels() {
        assert_eq!(host_port("http://127.0.0.1:8000").unwrap(), ("127.0.0.1".to_string(), 8000));
        assert_eq!(host_port("ws://localhost:9/x").unwrap(), ("localhost".to_string(), 9));
        assert!(host_port("https://example.com").is_err());
        let mut r = XorShift::new(1);
        let picks: Vec<usize> = (0..1000).map(|_| r.below(10)).collect();
        assert!(picks.iter().all(|&p| p < 10));
        assert!((0..10).all(|v| picks.contains(&v)), "every channel comes up");
    }

    /// `volley bench-hub`'s flags alone, parsed as the command line gives them.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> Args {
        use clap::Parser as _;
        let mut argv = vec!["bench-hub", "--secret", "s", "--api-key", "k"];
        argv.extend_from_slice(line);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn each_protocol_asks_for_its_credentials() {
        use clap::Parser as _;
        let args = |line: &[&str]| {
            let mut argv = vec!["bench-hub", "http://127.0.0.1:6001"];
            argv.extend_from_slice(line);
            Cli::try_parse_from(argv).unwrap().args
        };
        assert!(args(&[]).check().is_err(), "Centrifugo's needs the token secret and the API key");
        assert!(args(&["--secret", "s", "--api-key", "k"]).check().is_ok());
        let pusher = ["--protocol", "pusher", "--api-key", "app-key", "--secret", "s"];
        assert!(args(&pusher).check().is_err(), "Pusher's needs the app's id");
        let mut with_id = pusher.to_vec();
        with_id.extend(["--app-id", "1001"]);
        assert!(args(&with_id).check().is_ok());
        with_id.extend(["--transport", "uni_sse"]);
        assert!(args(&with_id).check().is_err(), "a Pusher client is a WebSocket client");
        assert!(args(&["--protocol", "pusher", "--api-key", "a/b", "--secret", "s", "--app-id", "1"]).check().is_err());
        assert!(args(&["--protocol", "socketio"]).check().is_ok(), "Socket.IO's needs nothing");
        assert!(matches!(args(&["--protocol", "socketio"]).publisher(), api::Publisher::SocketIo));
    }

    #[test]
    fn several_nodes_share_the_clients_and_the_publishers() {
        let listed = parse(&["http://127.0.0.1:8001,http://127.0.0.1:8002", "http://127.0.0.1:8003"]);
        assert_eq!(listed.urls, ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"]);
        let pids =
            parse(&["http://127.0.0.1:8001", "--server-pid", "10,11", "--server-pid", "12", "--broker-pid", "9"]);
        assert_eq!((pids.server_pid, pids.broker_pid), (vec![10, 11, 12], vec![9]));
        assert!(parse(&["http://127.0.0.1:8001,https://example.com"]).check().is_err(), "every URL is checked");
        use clap::Parser as _;
        assert!(Cli::try_parse_from(["bench-hub", "--secret", "s", "--api-key", "k"]).is_err(), "a URL is needed");

        let node = |port: u16| Node {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            authority: format!("127.0.0.1:{port}"),
            client: ClientBuilder::new(format!("ws://127.0.0.1:{port}/connection/websocket")),
        };
        let plan = |client_from: usize, nodes: Vec<Node>| Plan {
            protocol: Protocol::Centrifugo,
            transport: Transport::WebSocket,
            nodes,
            sources: Vec::new(),
            secret: "s".to_string(),
            exp: 0,
            client_from,
            channels: 1,
            prefix: String::new(),
            burst: 0,
            subscribe_at_once: false,
        };
        let port = |n: &Node| n.addr.port();
        // Client number N (its index plus --client-from) goes to node N modulo 3.
        let three = plan(4, vec![node(8001), node(8002), node(8003)]);
        let clients: Vec<u16> = (0..6).map(|i| port(three.node(i))).collect();
        assert_eq!(clients, [8002, 8003, 8001, 8002, 8003, 8001]);
        assert_eq!(three.node(0).authority, "127.0.0.1:8002");
        // Publisher J goes through node J modulo 3, whatever the clients' numbers.
        let publishers: Vec<u16> = (0..5).map(|j| port(three.api_node(j))).collect();
        assert_eq!(publishers, [8001, 8002, 8003, 8001, 8002]);
        // One node takes everything.
        let one = plan(7, vec![node(9000)]);
        assert!((0..10).all(|i| port(one.node(i)) == 9000 && port(one.api_node(i)) == 9000));
    }
}
