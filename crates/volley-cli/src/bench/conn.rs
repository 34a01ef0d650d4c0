//! One benchmark connection: open it (TCP from a chosen source address, then the
//! WebSocket handshake), hold it until the load starts, drive the load (K messages in
//! flight, or sends on a fixed schedule), match each echo to its send time in FIFO
//! order, and record round-trip latencies in batches into the shared histograms.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::Sink;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::{sleep_until, Instant};
use volley::{ClientBuilder, CloseCode, Message, WebSocket};

use super::{Shared, MEASURING, STOPPED, WARMUP};

/// Time allowed for the TCP connect (the WebSocket handshake has its own timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Rate mode: a message is sent when its intended time is at most this far ahead. The
/// runtime's timers round deadlines up to the next millisecond and can wake another
/// millisecond late; waking this much early keeps that lateness out of the latencies.
/// Latency is measured from the earlier of the intended and the actual send time, so
/// sending early never shortens it and sending late (the generator or the connection
/// behind) never hides a delay. The total rate is unchanged; sends are only grouped
/// within this window.
const SEND_LEAD: Duration = Duration::from_millis(2);

/// Latencies kept by a connection before they go into the shared histogram.
const BATCH: usize = 256;

/// How often a connection publishes its counts at the least (for the live rate).
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What each connection does once the load starts.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Closed loop: keep this many messages outstanding.
    Throughput {
        /// Messages in flight per connection.
        in_flight: usize,
    },
    /// Open loop: one message every `interval`, the first `offset * index` after the
    /// start so that connections are spread over one interval.
    Rate {
        /// Time between two messages of one connection.
        interval: Duration,
        /// Stagger between consecutive connections' first messages.
        offset: Duration,
    },
    /// Send nothing; hold the connection open.
    Idle,
}

/// The work shared by every connection.
#[derive(Debug)]
pub struct Plan {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Source addresses to bind, round-robin by connection index (empty: the kernel
    /// chooses).
    pub sources: Vec<IpAddr>,
    /// The handshake settings.
    pub client: ClientBuilder,
    /// What to do once open.
    pub load: Load,
    /// The message sent; its echo must have the same kind and size.
    pub message: Message,
    /// Payload size in bytes.
    pub size: usize,
    /// Binary rather than text messages.
    pub binary: bool,
    /// Idle mode's `--talk-first`: once every connection is open, each sends one message
    /// and waits for its echo before the hold.
    pub talk_first: bool,
}

/// A benchmark connection.
pub type Ws = WebSocket<TcpStream>;

/// Runs connection number `index` from its opening to its end. Failures are counted
/// in `shared`, never returned.
pub async fn run(index: usize, plan: Arc<Plan>, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let mut phase = shared.subscribe();
    if *phase.borrow_and_update() >= STOPPED {
        return;
    }
    // Boxed: the handshake's state is large and only needed while opening.
    let opened = Box::pin(open(index, &plan)).await;
    drop(permit);
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            shared.connect_failed(e);
            return;
        }
    };
    shared.open.fetch_add(1, Relaxed);
    let idle = matches!(plan.load, Load::Idle);
    let mut result = Ok(());
    if idle && plan.talk_first {
        // Once every connection is open, all speak at once, then fall silent.
        result = hold(&mut ws, &mut phase, WARMUP).await;
        if result.is_ok() && *phase.borrow() < STOPPED {
            result = talk(&mut ws, plan.as_ref()).await.map_err(|e| format!("first message: {e}"));
        }
        shared.talk_ended(result.is_ok());
    }
    if result.is_ok() {
        result = hold(&mut ws, &mut phase, if idle { STOPPED } else { WARMUP }).await;
    }
    if result.is_ok() && *phase.borrow() < STOPPED {
        result = drive(&mut ws, index, &plan, &shared, &mut phase).await;
    }
    match result {
        Ok(()) => {
            // Stopped: close cleanly (bounded by the close timeout).
            let _ = ws.close(CloseCode::NORMAL, "").await;
        }
        Err(e) => {
            if *phase.borrow() < STOPPED {
                shared.failed(e);
            }
        }
    }
}

/// Opens the TCP connection (bound to this connection's source address, if any) and
/// runs the handshake on it.
async fn open(index: usize, plan: &Plan) -> Result<Ws, String> {
    open_ws(index, plan.addr, &plan.sources, &plan.client).await
}

/// Opens connection number `index` to `addr`: TCP from source address `index` modulo
/// `sources` (the kernel's choice if there are none), then the handshake of `client`.
/// An error is a line for the report, with a hint when a local resource ran out.
pub async fn open_ws(index: usize, addr: SocketAddr, sources: &[IpAddr], client: &ClientBuilder) -> Result<Ws, String> {
    let io = |what: &str, e: std::io::Error| match super::sys::resource_hint(&e) {
        Some(hint) => format!("{what}: {e}; {hint}"),
        None => format!("{what}: {e}"),
    };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(|e| io("socket", e))?;
    if !sources.is_empty() {
        let source = sources[index % sources.len()];
        // The port is chosen at connect(), unique for the 4-tuple, rather than reserved
        // by bind() for any destination (from bind()'s half of the ephemeral range).
        #[cfg(target_os = "linux")]
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
            .map_err(|e| io("IP_BIND_ADDRESS_NO_PORT", e.into()))?;
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| io(&format!("bind {source}"), e))?;
    }
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(io(&format!("connect {addr}"), e)),
        Err(_) => return Err(format!("connect {addr}: timed out")),
    };
    tcp.set_nodelay(true).map_err(|e| io("TCP_NODELAY", e))?;
    let (ws, _) = client.clone().handshake(tcp).await.map_err(|e| match e {
        volley::Error::Io(e) => io("handshake", e),
        e => format!("handshake: {e}"),
    })?;
    Ok(ws)
}

/// Sends the plan's message once and waits for its echo (pings and pongs aside).
async fn talk(ws: &mut Ws, plan: &Plan) -> Result<(), String> {
    ws.send(plan.message.clone()).await.map_err(|e| e.to_string())?;
    loop {
        match ws.recv().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(frame))) => return Err(closed_by_server(frame.map(|f| f.code))),
            Some(Ok(msg)) => {
                let (binary, len) = match &msg {
                    Message::Binary(b) => (true, b.len()),
                    Message::Text(t) => (false, t.len()),
                    _ => return Err("an unexpected message".to_string()),
                };
                if binary != plan.binary || len != plan.size {
                    return Err(format!("wrong echo: a message of {len} bytes for one of {}", plan.size));
                }
                return Ok(());
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err(closed_by_server(None)),
        }
    }
}

/// Keeps reading (so that a server's close is noticed) until the phase reaches `until`.
async fn hold(ws: &mut Ws, phase: &mut watch::Receiver<u8>, until: u8) -> Result<(), String> {
    loop {
        if *phase.borrow_and_update() >= until {
            return Ok(());
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            msg = ws.recv() => match msg {
                Some(Ok(Message::Close(frame))) => return Err(closed_by_server(frame.map(|f| f.code))),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err(closed_by_server(None)),
            },
        }
    }
}

fn closed_by_server(code: Option<CloseCode>) -> String {
    match code {
        Some(code) => format!("closed by the server ({code})"),
        None => "closed by the server".to_string(),
    }
}

/// Drives the load until the phase reaches [`STOPPED`] (`Ok`) or the connection fails.
async fn drive(
    ws: &mut Ws,
    index: usize,
    plan: &Plan,
    shared: &Shared,
    phase: &mut watch::Receiver<u8>,
) -> Result<(), String> {
    let start = Instant::now();
    let (mut next, interval) = match plan.load {
        Load::Rate { interval, offset } => {
            // Spread connections over one interval (index wraps past it).
            let slot = (index as u128 * offset.as_nanos()) % interval.as_nanos().max(1);
            (start + Duration::from_nanos(slot as u64), interval)
        }
        _ => (start, Duration::ZERO),
    };
    let in_flight = match plan.load {
        Load::Throughput { in_flight } => in_flight,
        _ => usize::MAX,
    };
    let rate = matches!(plan.load, Load::Rate { .. });
    let wake_at = |at: Instant| at.checked_sub(SEND_LEAD).unwrap_or(at);
    let mut timer = Box::pin(sleep_until(wake_at(next)));
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(in_flight.min(1024));
    let mut batch = Batch::new(shared, index);
    let stop = phase.wait_for(|p| *p >= STOPPED);
    tokio::pin!(stop);

    let result = poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Send what is due: up to K outstanding, or everything scheduled by now.
            let now = Instant::now();
            while if rate { next <= now + SEND_LEAD } else { sent.len() < in_flight } {
                match Pin::new(&mut *ws).poll_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.to_string())),
                    Poll::Ready(Ok(())) => {}
                }
                if let Err(e) = Pin::new(&mut *ws).start_send(plan.message.clone()) {
                    return Poll::Ready(Err(e.to_string()));
                }
                if rate {
                    sent.push_back(next.min(now));
                    next += interval;
                } else {
                    sent.push_back(now);
                }
            }
            if rate {
                let at = wake_at(next);
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            // Receive: `poll_recv` writes what was queued above before it waits.
            match ws.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Err(closed_by_server(None))),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.to_string())),
                Poll::Ready(Some(Ok(msg))) => {
                    let (binary, len) = match &msg {
                        Message::Text(t) => (false, t.len()),
                        Message::Binary(b) => (true, b.len()),
                        Message::Close(frame) => {
                            return Poll::Ready(Err(closed_by_server(frame.as_ref().map(|f| f.code))))
                        }
                        Message::Ping(_) | Message::Pong(_) => continue,
                    };
                    let Some(origin) = sent.pop_front() else {
                        shared.mismatches.fetch_add(1, Relaxed);
                        return Poll::Ready(Err("a message arrived that was never sent".to_string()));
                    };
                    if binary != plan.binary || len != plan.size {
                        shared.mismatches.fetch_add(1, Relaxed);
                        let kind = if binary { "binary" } else { "text" };
                        return Poll::Ready(Err(format!(
                            "wrong echo: {kind} message of {len} bytes for a {} message of {} bytes",
                            if plan.binary { "binary" } else { "text" },
                            plan.size
                        )));
                    }
                    batch.reply(Instant::now(), origin);
                }
            }
        }
    })
    .await;
    batch.publish();
    result
}

/// A connection's latencies and counts not yet published to [`Shared`].
struct Batch<'a> {
    shared: &'a Shared,
    shard: usize,
    latencies: Vec<u32>,
    replies: u64,
    published: Instant,
}

impl<'a> Batch<'a> {
    fn new(shared: &'a Shared, index: usize) -> Self {
        Batch {
            shared,
            shard: index % shared.histograms.len(),
            latencies: Vec::new(),
            replies: 0,
            published: Instant::now(),
        }
    }

    /// An echo arrived at `now` for a message sent (or due) at `origin`.
    fn reply(&mut self, now: Instant, origin: Instant) {
        self.replies += 1;
        if self.shared.phase.load(Relaxed) == MEASURING {
            let us = now.saturating_duration_since(origin).as_micros().clamp(1, u128::from(u32::MAX));
            if self.latencies.capacity() == 0 {
                self.latencies.reserve_exact(BATCH);
            }
            self.latencies.push(us as u32);
        }
        if self.latencies.len() >= BATCH || now.duration_since(self.published) >= PUBLISH_EVERY {
            self.published = now;
            self.publish();
        }
    }

    fn publish(&mut self) {
        if !self.latencies.is_empty() {
            let mut h = self.shared.histograms[self.shard].lock().unwrap_or_else(|e| e.into_inner());
            for &us in &self.latencies {
                h.saturating_record(u64::from(us));
            }
            drop(h);
            self.shared.messages.fetch_add(self.latencies.len() as u64, Relaxed);
            self.latencies.clear();
        }
        if self.replies > 0 {
            self.shared.replies.fetch_add(self.replies, Relaxed);
            self.replies = 0;
        }
    }
}
