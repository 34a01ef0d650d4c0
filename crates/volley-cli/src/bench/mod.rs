//! `volley bench`: a WebSocket load generator for any echo server. It opens the
//! connections (bounded concurrency, spread over loopback source addresses), then runs
//! one of three modes: throughput (closed loop, K messages in flight per connection),
//! rate (open loop at a fixed total rate, latency from each message's intended send
//! time), or idle (connections held open while the server's memory is read). It can
//! measure the server process's CPU time and memory from `/proc`, and prints a table or
//! one JSON object.
//!
//! The generator runs on a current-thread runtime unless `--threads` asks for more: one
//! task per connection, each keeping its own FIFO of send times; latencies go into
//! sharded HdrHistograms in batches.

mod conn;
pub mod hub;
mod report;
mod sys;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use volley::{ClientBuilder, Config, Message};

use conn::{Load, Plan};
use report::{Latency, Report, ServerReport};

/// Phase: connections are being opened (opened ones wait).
const CONNECTING: u8 = 0;
/// Phase: load runs, not measured.
const WARMUP: u8 = 1;
/// Phase: load runs and replies are counted and timed.
const MEASURING: u8 = 2;
/// Phase: over; connections close.
const STOPPED: u8 = 3;

/// Connections per source address by default. Linux's default ephemeral port range
/// holds about 28,000 ports toward one server address, but it hands out one parity (half
/// the range) first: past about 14,000 connections from one source, every connect()
/// searches the spent half before the other, and opening slows to a crawl.
const CONNECTIONS_PER_SOURCE: usize = 12_000;

/// Connections per source address past which opening them slows down (see above).
const FAST_PORTS_PER_SOURCE: usize = 14_000;

/// Histogram range: 1 µs to 60 s, 3 significant digits.
const LATENCY_MAX_US: u64 = 60_000_000;

/// How often the progress bar and the live rate are updated.
const TICK: Duration = Duration::from_millis(200);

/// Time allowed, after the end, for connections to close before the process stops
/// waiting for them (a little more than their close timeout).
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Flags of `volley bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ws:// URL of an echo server.
    url: String,
    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 100)]
    connections: usize,
    /// Payload size in bytes.
    #[arg(short = 's', long, default_value_t = 20)]
    size: usize,
    /// Send binary messages (default: text; the text payload is ASCII).
    #[arg(long)]
    binary: bool,
    /// Messages outstanding per connection (pipelined); throughput mode.
    #[arg(short = 'k', long = "in-flight", value_name = "K", default_value_t = 1)]
    in_flight: usize,
    /// Length of the measured phase, in seconds.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Length of the unmeasured phase before it, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Fixed-rate (open-loop) mode: this many messages per second in total, spread over
    /// all connections; latency is measured from each message's intended send time, so
    /// a slow server cannot hide its delays by slowing the generator down.
    #[arg(long, value_name = "MSGS_PER_SEC", conflicts_with = "idle")]
    rate: Option<f64>,
    /// Idle mode: open the connections, send nothing, hold them for --hold seconds and
    /// report memory.
    #[arg(long)]
    idle: bool,
    /// Idle mode: once every connection is open, each sends one message (of --size bytes,
    /// text or --binary) and waits for its echo, then all go idle for the hold:
    /// connections that spoke and fell silent, as a real server holds them, rather than
    /// connections that never spoke.
    #[arg(long, requires = "idle")]
    talk_first: bool,
    /// Idle mode: how long to hold the connections open, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    hold: f64,
    /// Measure this server process: CPU time over the measured phase and resident
    /// memory (Linux /proc).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Spread connections round-robin over source addresses 127.0.0.1 .. 127.0.0.N (for
    /// loopback targets), so that more connections fit than one address has ports.
    /// Default: one per 12,000 connections (past about 14,000 from one address, Linux
    /// finds local ports slowly).
    #[arg(long, value_name = "N")]
    source_addrs: Option<usize>,
    /// The first source address of --source-addrs (default 127.0.0.1), so that several
    /// generators can share one loopback server without sharing ports: one generator
    /// process holds at most its descriptor limit, so a million connections take many.
    #[arg(long, value_name = "IP")]
    source_from: Option<Ipv4Addr>,
    /// Handshakes in progress at once while opening.
    #[arg(long, value_name = "N", default_value_t = 256)]
    connect_concurrency: usize,
    /// Offer permessage-deflate (default: no extension offered).
    #[arg(long)]
    deflate: bool,
    /// Print exactly one JSON object on stdout (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Do not show the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Runtime threads: 1 runs everything on one thread (the default, so that the
    /// generator can be pinned to one core); more uses a multi-threaded runtime.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
}

/// Which load runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Throughput,
    Rate(f64),
    Idle,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::Rate(_) => "rate",
            Mode::Idle => "idle",
        }
    }
}

impl Args {
    fn mode(&self) -> Mode {
        match (self.idle, self.rate) {
            (true, _) => Mode::Idle,
            (false, Some(rate)) => Mode::Rate(rate),
            (false, None) => Mode::Throughput,
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
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.in_flight == 0 {
            bail!("--in-flight must be at least 1");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of messages per second (got {rate})");
            }
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

/// State shared by the connections and the controller.
pub struct Shared {
    /// The current phase, read on every reply.
    phase: AtomicU8,
    /// The same, to wake connections when it changes.
    phase_tx: watch::Sender<u8>,
    /// Latencies (µs) of replies in the measured phase, sharded by connection index.
    histograms: Vec<Mutex<Histogram<u64>>>,
    /// Replies in the measured phase (published).
    messages: AtomicU64,
    /// Replies in any phase (published; for the live rate).
    replies: AtomicU64,
    /// Connections open.
    open: AtomicU64,
    /// Connections that got the echo of their first message (`--talk-first`).
    talked: AtomicU64,
    /// Connections done with their first message, echoed or failed (`--talk-first`).
    talk_ended: AtomicU64,
    /// Connections that could not be opened.
    connect_errors: AtomicU64,
    /// Connections that failed or were closed by the server before the end.
    errors: AtomicU64,
    /// Echoes of the wrong kind or size (each also fails its connection).
    mismatches: AtomicU64,
    /// The first connect error and the first failure, for the report.
    first_connect_error: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn new(shards: usize) -> anyhow::Result<Self> {
        let histograms = (0..shards.max(1))
            .map(|_| Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).map(Mutex::new))
            .collect::<Result<_, _>>()
            .context("creating the latency histogram")?;
        Ok(Shared {
            phase: AtomicU8::new(CONNECTING),
            phase_tx: watch::channel(CONNECTING).0,
            histograms,
            messages: AtomicU64::new(0),
            replies: AtomicU64::new(0),
            open: AtomicU64::new(0),
            talked: AtomicU64::new(0),
            talk_ended: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            first_connect_error: Mutex::new(None),
            first_error: Mutex::new(None),
        })
    }

    fn subscribe(&self) -> watch::Receiver<u8> {
        self.phase_tx.subscribe()
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Relaxed);
        self.phase_tx.send_replace(phase);
    }

    fn connect_failed(&self, e: String) {
        self.connect_errors.fetch_add(1, Relaxed);
        keep_first(&self.first_connect_error, e);
    }

    /// A connection is done with its first message (`--talk-first`): echoed, or not.
    fn talk_ended(&self, echoed: bool) {
        if echoed {
            self.talked.fetch_add(1, Relaxed);
        }
        self.talk_ended.fetch_add(1, Relaxed);
    }

    fn failed(&self, e: String) {
        self.errors.fetch_add(1, Relaxed);
        keep_first(&self.first_error, e);
    }

    fn first(slot: &Mutex<Option<String>>) -> Option<String> {
        slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn keep_first(slot: &Mutex<Option<String>>, e: String) {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(e);
    }
}

/// Runs `volley bench` and prints its report.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.check()?;
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .context("starting the runtime")?;
    let report = runtime.block_on(bench(&args))?;
    // Connections that did not close within the grace period are dropped with the runtime.
    runtime.shutdown_background();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print_table();
    }
    if let Some(e) = &report.first_connect_error {
        eprintln!("volley bench: {} connection(s) could not be opened; first error: {e}", report.connect_errors);
    }
    if let Some(e) = &report.first_error {
        eprintln!("volley bench: {} connection(s) failed during the run; first error: {e}", report.errors);
    }
    if report.connections_open == 0 {
        bail!("no connection could be opened");
    }
    Ok(())
}

/// Host and port of a ws:// URL.
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let Some(rest) = url.strip_prefix("ws://") else {
        if url.starts_with("wss://") {
            bail!("{url}: volley bench speaks plain ws:// only");
        }
        bail!("{url}: the URL must start with ws://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').with_context(|| format!("{url}: unclosed [ in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("{url}: no host");
    }
    let port = match port {
        Some(p) => p.parse().with_context(|| format!("{url}: invalid port {p:?}"))?,
        None => 80,
    };
    Ok((host.to_string(), port))
}

/// Source address number `i` (0-based) of the loopback range from `first` (127.0.0.1,
/// 127.0.0.2, ... from 127.0.0.1).
fn loopback_source(first: Ipv4Addr, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(first).wrapping_add(i as u32)))
}

/// The source addresses to spread `connections` over: for a 127.x.x.x target, `count`
/// of them (default: one per [`CONNECTIONS_PER_SOURCE`]) from `first` (default
/// 127.0.0.1); none (the kernel's choice) otherwise. Warns, as `command`, of what will
/// not work well.
pub fn source_addresses(
    addr: SocketAddr,
    connections: usize,
    count: Option<usize>,
    first: Option<Ipv4Addr>,
    command: &str,
) -> Vec<IpAddr> {
    let loopback_v4 = matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let source_addrs = count.unwrap_or(connections.div_ceil(CONNECTIONS_PER_SOURCE));
    let sources: Vec<IpAddr> = if loopback_v4 && (source_addrs > 1 || first.is_some()) {
        let first = first.unwrap_or(Ipv4Addr::LOCALHOST);
        (0..source_addrs).map(|i| loopback_source(first, i)).collect()
    } else {
        if (source_addrs > 1 && count.is_some()) || first.is_some() {
            eprintln!("{command}: warning: --source-addrs and --source-from apply to 127.x.x.x targets only; ignored");
        }
        Vec::new()
    };
    if connections.div_ceil(sources.len().max(1)) > FAST_PORTS_PER_SOURCE {
        eprintln!(
            "{command}: warning: more than {FAST_PORTS_PER_SOURCE} connections per source address: opening them \
             slows down past that and may run out of local ports; use --source-addrs"
        );
    }
    sources
}

/// Opens the connections, runs the load, measures, and stops.
async fn bench(args: &Args) -> anyhow::Result<Report> {
    let mode = args.mode();
    let nofile = sys::raise_nofile_limit();
    match &nofile {
        Ok(limit) if (*limit as usize) < args.connections + 64 => eprintln!(
            "volley bench: warning: the open-file limit is {limit}, fewer than {} connections need; raise its \
             hard limit (`ulimit -Hn`, nofile in /etc/security/limits.conf)",
            args.connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("volley bench: warning: could not raise the open-file limit: {e}"),
    }
    let (host, port) = host_port(&args.url)?;
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host}: no address"))?;
    let sources = source_addresses(addr, args.connections, args.source_addrs, args.source_from, "volley bench");
    let server_pid = args.server_pid;
    let rss_before = match server_pid {
        Some(pid) => Some(sys::rss_bytes(pid).with_context(|| format!("reading the memory of process {pid}"))?),
        None => None,
    };

    let mut config = Config::new()
        .ping_interval(None)
        .close_timeout(Duration::from_secs(2))
        .max_message_size(args.size.max(64 << 20))
        .max_frame_size(args.size.max(16 << 20));
    if !args.deflate {
        config = config.deflate(None);
    }
    let message =
        if args.binary { Message::binary(vec![b'x'; args.size]) } else { Message::text(payload_text(args.size)) };
    let connections = args.connections;
    let load = match mode {
        Mode::Throughput => Load::Throughput { in_flight: args.in_flight },
        Mode::Rate(rate) => Load::Rate {
            interval: Duration::from_secs_f64(connections as f64 / rate),
            offset: Duration::from_secs_f64(1.0 / rate),
        },
        Mode::Idle => Load::Idle,
    };
    let plan = Arc::new(Plan {
        addr,
        sources: sources.clone(),
        client: ClientBuilder::new(args.url.clone()).no_proxy().config(config),
        load,
        message,
        size: args.size,
        binary: args.binary,
        talk_first: args.talk_first,
    });
    let shared = Arc::new(Shared::new(args.threads)?);
    let progress = report::Progress::new(!(args.json || args.no_progress));
    let mut ctrl_c = interrupts();
    let mut interrupted = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    // Open the connections, at most `connect_concurrency` handshakes at once.
    progress.connecting(connections);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut tasks = JoinSet::new();
    let attempted = |s: &Shared| s.open.load(Relaxed) + s.connect_errors.load(Relaxed);
    let mut spawned = 0;
    while spawned < connections && !interrupted {
        tokio::select! {
            permit = permits.clone().acquire_owned() => {
                let Ok(permit) = permit else { break };
                tasks.spawn(conn::run(spawned, plan.clone(), shared.clone(), permit));
                spawned += 1;
            }
            _ = tick.tick() => progress.set_position(attempted(&shared)),
            _ = interrupted_by(&mut ctrl_c) => interrupted = true,
        }
    }
    while attempted(&shared) < spawned as u64 && !interrupted {
        tokio::select! {
            _ = tick.tick() => progress.set_position(attempted(&shared)),
            _ = interrupted_by(&mut ctrl_c) => interrupted = true,
        }
    }
    let connections_open = shared.open.load(Relaxed);
    let connect_errors = shared.connect_errors.load(Relaxed);
    let client_rss_open = sys::own_rss_bytes();

    // Warm up, then measure (or hold, idle).
    let mut measured = Duration::ZERO;
    let mut cpu = None;
    let mut rss_after = None;
    if !interrupted && connections_open > 0 {
        if mode == Mode::Idle && args.talk_first {
            // Every open connection sends its message; the hold starts once all are back.
            shared.set_phase(WARMUP);
            while shared.talk_ended.load(Relaxed) < connections_open && !interrupted {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = interrupted_by(&mut ctrl_c) => interrupted = true,
                }
            }
        }
        if mode != Mode::Idle {
            shared.set_phase(WARMUP);
            progress.warmup(args.warmup);
            let end = Instant::now() + Duration::from_secs_f64(args.warmup);
            interrupted = run_phase(end, &shared, &progress, &mut tick, &mut ctrl_c).await;
        }
        if !interrupted {
            let length = if mode == Mode::Idle { args.hold } else { args.duration };
            shared.set_phase(MEASURING);
            let start = Instant::now();
            let cpu_start = server_pid.map(sys::cpu_seconds).transpose();
            progress.measuring(length, mode == Mode::Idle);
            let end = start + Duration::from_secs_f64(length);
            interrupted = run_phase(end, &shared, &progress, &mut tick, &mut ctrl_c).await;
            measured = start.elapsed();
            if let (Some(pid), Ok(Some(before))) = (server_pid, cpu_start) {
                cpu = sys::cpu_seconds(pid).ok().map(|after| (after - before).max(0.0));
            }
            rss_after = server_pid.and_then(|pid| sys::rss_bytes(pid).ok());
        }
    }
    shared.set_phase(STOPPED);
    progress.finish();
    let client_rss = sys::own_rss_bytes().max(client_rss_open);
    // Wait for the connections to publish their counts and close.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => {}
            _ = interrupted_by(&mut ctrl_c) => {}
        }
    })
    .await;
    tasks.abort_all();

    let mut histogram = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, 3)?;
    for shard in &shared.histograms {
        let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        histogram.add(&*shard).context("merging latency histograms")?;
    }
    let messages = shared.messages.load(Relaxed);
    let seconds = measured.as_secs_f64();
    let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
    let latency = (mode != Mode::Idle && !histogram.is_empty()).then(|| Latency {
        p50: histogram.value_at_quantile(0.50),
        p90: histogram.value_at_quantile(0.90),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
        mean: histogram.mean(),
    });
    let server = server_pid.map(|pid| ServerReport {
        pid,
        cpu_s: cpu,
        rss_before,
        rss_after,
        rss_per_conn: match (mode, rss_before, rss_after) {
            (Mode::Idle, Some(before), Some(after)) if connections_open > 0 => {
                Some((after as f64 - before as f64) / connections_open as f64)
            }
            _ => None,
        },
        msgs_per_cpu_s: match cpu {
            Some(cpu) if cpu > 0.0 && mode != Mode::Idle => Some(messages as f64 / cpu),
            _ => None,
        },
    });
    Ok(Report {
        mode: mode.name(),
        url: args.url.clone(),
        connections,
        connections_open,
        connect_errors,
        talked_first: shared.talked.load(Relaxed),
        size: args.size,
        binary: args.binary,
        in_flight: args.in_flight,
        rate: args.rate.filter(|_| mode != Mode::Idle),
        deflate: args.deflate,
        duration_s: seconds,
        messages,
        msgs_per_sec: per_second(messages as f64),
        bytes_per_sec: per_second(messages as f64 * args.size as f64),
        errors: shared.errors.load(Relaxed),
        latency_us: latency,
        server,
        warmup_s: if mode == Mode::Idle { 0.0 } else { args.warmup },
        mismatches: shared.mismatches.load(Relaxed),
        threads: args.threads,
        source_addrs: sources.len().max(1),
        client_rss,
        interrupted,
        first_connect_error: Shared::first(&shared.first_connect_error),
        first_error: Shared::first(&shared.first_error),
    })
}

/// Waits until `end`, updating the progress bar; `true` if Ctrl-C cut it short.
async fn run_phase(
    end: Instant,
    shared: &Shared,
    progress: &report::Progress,
    tick: &mut tokio::time::Interval,
    ctrl_c: &mut watch::Receiver<bool>,
) -> bool {
    let mut last = (Instant::now(), shared.replies.load(Relaxed));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => return false,
            _ = interrupted_by(ctrl_c) => return true,
            _ = tick.tick() => {
                let now = (Instant::now(), shared.replies.load(Relaxed));
                let elapsed = now.0.duration_since(last.0).as_secs_f64();
                if elapsed > 0.0 {
                    progress.tick((now.1 - last.1) as f64 / elapsed, shared.errors.load(Relaxed));
                }
                last = now;
            }
        }
    }
}

/// Watches for Ctrl-C: the first sets the flag (the run stops and reports what it
/// measured), the second exits at once.
fn interrupts() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tx.send_replace(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    rx
}

/// Completes once Ctrl-C was pressed (never if it cannot be watched).
async fn interrupted_by(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|pressed| *pressed).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An ASCII text payload of `size` bytes.
fn payload_text(size: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..size).map(|i| char::from(ALPHABET[i % ALPHABET.len()])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(host_port("ws://127.0.0.1:9001").unwrap(), ("127.0.0.1".to_string(), 9001));
        assert_eq!(host_port("ws://example.com/x?y").unwrap(), ("example.com".to_string(), 80));
        assert_eq!(host_port("ws://u:p@[::1]:9/").unwrap(), ("::1".to_string(), 9));
        assert!(host_port("wss://example.com/").unwrap_err().to_string().contains("ws:// only"));
        assert!(host_port("http://example.com/").is_err());
        assert!(host_port("ws://:80/").is_err());
        assert!(host_port("ws://h:port/").is_err());
    }

    #[test]
    fn sources_and_payload() {
        let one = Ipv4Addr::LOCALHOST;
        assert_eq!(loopback_source(one, 0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(loopback_source(one, 255), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 0)));
        assert_eq!(loopback_source(Ipv4Addr::new(127, 0, 2, 250), 10), IpAddr::V4(Ipv4Addr::new(127, 0, 3, 4)));
        let text = payload_text(50);
        assert_eq!(text.len(), 50);
        assert!(text.is_ascii());
    }
}
