//! `fanout-client`: measures fan-out (W9) against `bench-server --broadcast`.
//!
//! ```text
//! fanout-client URL -c N [-m MESSAGES] [-s BYTES] [--warmup MESSAGES] [--source-addrs K]
//!               [--connect-concurrency C] [--timeout SECS] [--server-pid PID]
//! ```
//!
//! Opens N receiving connections (spread over the source addresses 127.0.0.1..=K when
//! the server is on loopback, so that more connections than one address has ephemeral
//! ports can be opened; by default one address per 12,000 connections), then one sender
//! connection to the path `/sender`, which sends M binary messages one at a time. Each
//! message carries its sequence number; the time from its send to its arrival at the
//! last of the N receivers is recorded before the next one is sent. Prints one JSON
//! object: deliveries per second (N × M / time), the time to the last receiver
//! (p50/p90/p99/max/mean, µs), and with `--server-pid` the server's CPU time over the
//! measured messages (from /proc) and deliveries per server-CPU-second.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use volley::{ClientBuilder, Config, Message, WebSocket};

/// Connections per source address: the ephemeral port range holds about 28,000, but
/// Linux searches it one parity half first, and past about 14,000 from one address
/// finding a port slows to a crawl (as in `volley bench`).
const PER_SOURCE_ADDR: usize = 12_000;

struct Args {
    url: String,
    connections: usize,
    messages: usize,
    size: usize,
    warmup: usize,
    source_addrs: Option<usize>,
    connect_concurrency: usize,
    timeout: Duration,
    server_pid: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        connections: 1000,
        messages: 200,
        size: 64,
        warmup: 10,
        source_addrs: None,
        connect_concurrency: 256,
        timeout: Duration::from_secs(10),
        server_pid: None,
    };
    let mut it = std::env::args().skip(1);
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-c" | "--connections" => args.connections = num(&arg, it.next())?,
            "-m" | "--messages" => args.messages = num(&arg, it.next())?,
            "-s" | "--size" => args.size = num(&arg, it.next())?,
            "--warmup" => args.warmup = num(&arg, it.next())?,
            "--source-addrs" => args.source_addrs = Some(num(&arg, it.next())?),
            "--connect-concurrency" => args.connect_concurrency = num::<usize>(&arg, it.next())?.max(1),
            "--timeout" => args.timeout = Duration::from_secs_f64(num(&arg, it.next())?),
            "--server-pid" => args.server_pid = Some(num(&arg, it.next())?),
            "-h" | "--help" => {
                return Err("usage: fanout-client URL -c N [-m MESSAGES] [-s BYTES] [--warmup MESSAGES] \
                            [--source-addrs K] [--connect-concurrency C] [--timeout SECS] [--server-pid PID]"
                    .into())
            }
            url if !url.starts_with('-') && args.url.is_empty() => args.url = url.to_string(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.url.is_empty() {
        return Err("a ws:// URL is required".into());
    }
    args.size = args.size.max(8);
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fanout-client: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanout-client: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fanout-client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ws://host:port/path` → (`host:port`, the server's socket address).
fn authority(url: &str) -> Result<(String, SocketAddr), String> {
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs are supported")?;
    let host = rest.split('/').next().unwrap_or(rest).to_string();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    Ok((host, addr))
}

fn client_config() -> Config {
    Config::new().ping_interval(None).deflate(None)
}

async fn open(url: &str, server: SocketAddr, source: Option<IpAddr>) -> Result<WebSocket<TcpStream>, String> {
    let socket = if server.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        // The port is chosen at connect(), unique for the 4-tuple, rather than reserved
        // by bind() for any destination: bind() cannot take a port that an earlier run's
        // connection still holds in TIME_WAIT, and searches its half of the ephemeral
        // range ever longer as they pile up.
        #[cfg(target_os = "linux")]
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
            .map_err(|e| format!("IP_BIND_ADDRESS_NO_PORT: {e}"))?;
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let tcp = socket.connect(server).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (ws, _) = ClientBuilder::new(url).config(client_config()).handshake(tcp).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

/// What the receivers share: per message, how many receivers have yet to see it.
struct Tally {
    remaining: Vec<AtomicU32>,
    received: AtomicU64,
    done: mpsc::UnboundedSender<(u64, Instant)>,
}

async fn receive(mut ws: WebSocket<TcpStream>, tally: Arc<Tally>) {
    while let Some(Ok(msg)) = ws.recv().await {
        let data = match msg {
            Message::Binary(b) => b,
            Message::Text(t) => t.into_bytes(),
            _ => continue,
        };
        let Some(seq) = data.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())) else {
            continue;
        };
        tally.received.fetch_add(1, Ordering::Relaxed);
        if let Some(left) = tally.remaining.get(seq as usize) {
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _ = tally.done.send((seq, Instant::now()));
            }
        }
    }
}

/// CPU time (all threads) and resident memory of a process, from /proc.
fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(args: Args) -> Result<String, String> {
    let (host, server) = authority(&args.url)?;
    let loopback = server.ip().is_loopback() && server.is_ipv4();
    let source_addrs =
        if loopback { args.source_addrs.unwrap_or(args.connections.div_ceil(PER_SOURCE_ADDR)) } else { 0 };
    let source_addrs = source_addrs.clamp(if loopback { 1 } else { 0 }, 254);
    let rss_before = args.server_pid.and_then(proc_rss);

    let total = args.warmup + args.messages;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let tally = Arc::new(Tally {
        remaining: (0..total).map(|_| AtomicU32::new(0)).collect(),
        received: AtomicU64::new(0),
        done: done_tx,
    });

    // Open the receivers, a bounded number of handshakes at a time.
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        let permit = limit.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let url = args.url.clone();
        let source = (source_addrs > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % source_addrs) as u8)));
        opening.spawn(async move {
            let ws = open(&url, server, source).await;
            drop(permit);
            ws
        });
    }
    let mut open_count = 0u32;
    let mut connect_errors = 0u64;
    let mut first_error = None;
    while let Some(joined) = opening.join_next().await {
        match joined.map_err(|e| e.to_string())? {
            Ok(ws) => {
                open_count += 1;
                tokio::spawn(receive(ws, tally.clone()));
            }
            Err(e) => {
                connect_errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    if open_count == 0 {
        return Err(format!("no connection opened: {}", first_error.unwrap_or_default()));
    }
    for left in &tally.remaining {
        left.store(open_count, Ordering::Release);
    }
    // Let the server register the last members (join happens right after its handshake).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let sender_url = format!("ws://{host}/sender");
    let sender_source = (source_addrs > 0).then_some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut sender = open(&sender_url, server, sender_source).await?;

    let mut latencies = Vec::with_capacity(args.messages);
    let mut missed = 0u64;
    let mut cpu_before = None;
    let mut measured_from = Instant::now();
    let mut payload = vec![b'x'; args.size];
    for seq in 0..total {
        if seq == args.warmup {
            cpu_before = args.server_pid.and_then(proc_cpu_ns);
            measured_from = Instant::now();
        }
        payload[..8].copy_from_slice(&(seq as u64).to_le_bytes());
        let sent = Instant::now();
        sender.send(Message::binary(payload.clone())).await.map_err(|e| format!("send: {e}"))?;
        let deadline = sent + args.timeout;
        let arrived = loop {
            match tokio::time::timeout_at(deadline.into(), done_rx.recv()).await {
                Ok(Some((s, at))) if s == seq as u64 => break Some(at),
                Ok(Some(_)) => continue, // a late one from an earlier, timed-out message
                Ok(None) | Err(_) => break None,
            }
        };
        if seq >= args.warmup {
            match arrived {
                Some(at) => latencies.push(at.duration_since(sent).as_micros() as u64),
                None => missed += 1,
            }
        }
    }
    let duration_s = measured_from.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(proc_cpu_ns);
    let rss_after = args.server_pid.and_then(proc_rss);

    let deliveries = latencies.len() as u64 * u64::from(open_count);
    let mut sorted = latencies.clone();
    sorted.sort_unstable();
    let mean = if sorted.is_empty() { 0.0 } else { sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 };
    let server = match (args.server_pid, cpu_before, cpu_after) {
        (Some(pid), Some(before), Some(after)) => {
            let cpu_s = after.saturating_sub(before) as f64 / 1e9;
            let per_cpu = if cpu_s > 0.0 { deliveries as f64 / cpu_s } else { 0.0 };
            format!(
                "{{\"pid\":{pid},\"cpu_s\":{cpu_s:.6},\"rss_before\":{},\"rss_after\":{},\"deliveries_per_cpu_s\":{per_cpu:.1}}}",
                rss_before.unwrap_or(0),
                rss_after.unwrap_or(0)
            )
        }
        _ => "null".to_string(),
    };
    let rate = if duration_s > 0.0 { deliveries as f64 / duration_s } else { 0.0 };
    Ok(format!(
        "{{\"mode\":\"fanout\",\"url\":\"{url}\",\"connections\":{c},\"connections_open\":{open_count},\
         \"connect_errors\":{connect_errors},\"connect_s\":{connect_s:.3},\"source_addrs\":{source_addrs},\
         \"size\":{size},\"messages\":{m},\"missed\":{missed},\"deliveries\":{deliveries},\
         \"duration_s\":{duration_s:.6},\"deliveries_per_sec\":{rate:.1},\"received_total\":{rt},\
         \"latency_us\":{{\"p50\":{p50},\"p90\":{p90},\"p99\":{p99},\"max\":{max},\"mean\":{mean:.1}}},\
         \"server\":{server}}}",
        url = args.url.replace('"', ""),
        c = args.connections,
        size = args.size,
        m = args.messages,
        rt = tally.received.load(Ordering::Relaxed),
        p50 = percentile(&sorted, 50.0),
        p90 = percentile(&sorted, 90.0),
        p99 = percentile(&sorted, 99.0),
        max = sorted.last().copied().unwrap_or(0),
    ))
}
