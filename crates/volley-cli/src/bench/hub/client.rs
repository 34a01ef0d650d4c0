//! One client of `volley bench-hub`: it opens its connection and sends `connect` with its
//! token, waits for the subscribe phase and subscribes to its channel, then reads until
//! the end: it answers the server's pings, counts the publications it receives, and in
//! a measured fan-out step times each from the send time its payload carries.
//!
//! The same steps in Pusher's protocol: the connection is open at
//! `pusher:connection_established`, `pusher:subscribe` is answered by
//! `pusher_internal:subscription_succeeded`, `pusher:ping` by `pusher:pong`; and in
//! Socket.IO's (Engine.IO v4 packets over WebSocket): the server's open packet `0{...}`,
//! the namespace's connect `40` and its answer `40{"sid":...}`, a `subscribe` event with
//! an acknowledgement (`42N["subscribe",room]`, answered by `43N[...]`), pings `2`
//! answered by pongs `3`, events `42["bench",data]`.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use volley::{CloseCode, Message};

use super::super::conn::{open_ws, Ws};
use super::{api, Plan, Protocol, Shared, MEASURING, STOPPED, SUBSCRIBING};

/// Latencies kept by a client before they go into the shared histogram.
const BATCH: usize = 256;

/// The id of the `connect` command; `subscribe` is the next.
const CONNECT_ID: u32 = 1;
const SUBSCRIBE_ID: u32 = 2;

/// Runs client number `index` (of this generator) from its opening to the end. Failures
/// are counted in `shared`, never returned.
pub async fn run(index: usize, plan: Arc<Plan>, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let mut phase = shared.phase_tx.subscribe();
    if *phase.borrow_and_update() >= STOPPED {
        return;
    }
    let started = Instant::now();
    // Boxed: the handshake's state is large and only needed while opening.
    let opened = Box::pin(open(index, &plan)).await;
    drop(permit);
    let ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            shared.connect_failed(e);
            return;
        }
    };
    shared.connected(started.elapsed());
    let mut client = Client { ws, shared: &shared, plan: &plan, tally: Tally::default() };
    let result = client.live(index, &mut phase).await;
    client.publish();
    shared.alive.fetch_sub(1, Relaxed);
    match result {
        Ok(()) => {
            // Stopped: close cleanly (bounded by the close timeout).
            let _ = client.ws.close(CloseCode::NORMAL, "").await;
        }
        Err(e) => {
            if *phase.borrow() < STOPPED {
                shared.failed(e);
            }
        }
    }
}

/// Opens the connection and connects: `connect` with the client's token, and its reply
/// (or Pusher's `connection_established`, or Socket.IO's open and connect packets).
async fn open(index: usize, plan: &Plan) -> Result<Ws, String> {
    let node = plan.node(index);
    let mut ws = open_ws(index, node.addr, &plan.sources, &node.client).await?;
    match plan.protocol {
        Protocol::Centrifugo => {}
        Protocol::Pusher => return open_pusher(ws).await,
        Protocol::SocketIo => return open_socketio(ws).await,
    }
    let token = plan.token(index);
    let cmd = format!("{{\"id\":{CONNECT_ID},\"connect\":{{\"token\":\"{token}\",\"name\":\"volley-bench\"}}}}");
    ws.send(Message::text(cmd)).await.map_err(|e| format!("sending connect: {e}"))?;
    // Nothing but the reply can come before it.
    loop {
        match ws.recv().await {
            Some(Ok(Message::Text(t))) => {
                let line = t.as_bytes();
                return match reply_id(line) {
                    Some(CONNECT_ID) if !is_error(line) => Ok(ws),
                    _ => Err(format!("connect refused: {}", excerpt(line))),
                };
            }
            Some(Ok(Message::Close(frame))) => return Err(closed_by_server(frame.map(|f| f.code))),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connect: {e}")),
            None => return Err(closed_by_server(None)),
        }
    }
}

/// The next text message while opening (pings of the WebSocket are answered by it).
async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.recv().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => return Err(closed_by_server(frame.map(|f| f.code))),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connect: {e}")),
            None => return Err(closed_by_server(None)),
        }
    }
}

/// Pusher: the connection is open once the server said `pusher:connection_established`.
async fn open_pusher(mut ws: Ws) -> Result<Ws, String> {
    let text = next_text(&mut ws).await?;
    if pusher_event(text.as_bytes()) == Some(&b"pusher:connection_established"[..]) {
        Ok(ws)
    } else {
        Err(format!("connect refused: {}", excerpt(text.as_bytes())))
    }
}

/// Socket.IO: Engine.IO's open packet, then the main namespace's connect and its answer.
async fn open_socketio(mut ws: Ws) -> Result<Ws, String> {
    let text = next_text(&mut ws).await?;
    if !text.starts_with("0{") {
        return Err(format!("no Engine.IO open packet: {}", excerpt(text.as_bytes())));
    }
    ws.send(Message::text("40")).await.map_err(|e| format!("sending connect: {e}"))?;
    loop {
        let text = next_text(&mut ws).await?;
        if text.starts_with("40") {
            return Ok(ws);
        } else if text == "2" {
            ws.send(Message::text("3")).await.map_err(|e| format!("sending a pong: {e}"))?;
        } else {
            return Err(format!("connect refused: {}", excerpt(text.as_bytes())));
        }
    }
}

/// The `event` of a Pusher message, if it has one.
fn pusher_event(msg: &[u8]) -> Option<&[u8]> {
    let at = find(msg, b"\"event\":\"")? + 9;
    let len = msg[at..].iter().position(|&b| b == b'"')?;
    Some(&msg[at..at + len])
}

/// What one Pusher or Socket.IO message is to the client.
#[derive(Debug, PartialEq, Eq)]
enum Packet {
    /// A ping of the protocol, answered with this.
    Ping(&'static str),
    /// A publication.
    Delivery,
    /// The subscription is in place, or was refused (the reason).
    Subscribed(Result<(), String>),
    /// The server closed the session (the reason).
    Closed(String),
    /// Anything else.
    Other,
}

/// A Pusher message.
fn pusher_packet(msg: &[u8]) -> Packet {
    match pusher_event(msg) {
        Some(b"pusher:ping") => Packet::Ping("{\"event\":\"pusher:pong\",\"data\":{}}"),
        Some(b"pusher_internal:subscription_succeeded") => Packet::Subscribed(Ok(())),
        Some(b"pusher:subscription_error") => Packet::Subscribed(Err(excerpt(msg))),
        Some(b"pusher:error") => Packet::Closed(format!("pusher:error {}", excerpt(msg))),
        Some(e) if e.starts_with(b"pusher") => Packet::Other,
        Some(_) => Packet::Delivery,
        None => Packet::Other,
    }
}

/// A Socket.IO message (Engine.IO packet type, then Socket.IO's).
fn socketio_packet(msg: &[u8]) -> Packet {
    match msg {
        b"2" => Packet::Ping("3"),
        [b'4', b'2', ..] => Packet::Delivery,
        [b'4', b'3', rest @ ..]
            if rest.strip_prefix(SUBSCRIBE_ID.to_string().as_bytes()).is_some_and(|r| r.starts_with(b"[")) =>
        {
            Packet::Subscribed(Ok(()))
        }
        [b'4', b'4', ..] => Packet::Subscribed(Err(excerpt(msg))),
        [b'4', b'1', ..] | [b'1', ..] => Packet::Closed(format!("disconnected by the server: {}", excerpt(msg))),
        _ => Packet::Other,
    }
}

struct Client<'a> {
    ws: Ws,
    shared: &'a Shared,
    plan: &'a Plan,
    /// What it received.
    tally: Tally,
}

/// What a client waits for: a frame, or a change of phase (`false`: the generator is
/// gone).
enum Event {
    Frame(Option<Result<Message, volley::Error>>),
    Phase(bool),
}

impl Client<'_> {
    /// From connected to the end: `Ok` when stopped, `Err` when the connection failed.
    async fn live(&mut self, index: usize, phase: &mut watch::Receiver<u8>) -> Result<(), String> {
        self.shared.alive.fetch_add(1, Relaxed);
        if !self.plan.subscribe_at_once {
            self.until_phase(phase, SUBSCRIBING).await?;
        }
        if *phase.borrow() >= STOPPED {
            return Ok(());
        }
        // At most `--subscribe-concurrency` subscribes in flight.
        let permits = self.shared.subscribe_permits.clone();
        let Some(Ok(permit)) = self.reading(phase, permits.acquire_owned()).await? else { return Ok(()) };
        let channel = self.plan.channel_of(index);
        let started = Instant::now();
        let cmd = match self.plan.protocol {
            Protocol::Centrifugo => format!("{{\"id\":{SUBSCRIBE_ID},\"subscribe\":{{\"channel\":\"{channel}\"}}}}"),
            Protocol::Pusher => format!("{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":\"{channel}\"}}}}"),
            Protocol::SocketIo => format!("42{SUBSCRIBE_ID}[\"subscribe\",\"{channel}\"]"),
        };
        self.ws.send(Message::text(cmd)).await.map_err(|e| format!("sending subscribe: {e}"))?;
        loop {
            if *phase.borrow() >= STOPPED {
                return Ok(());
            }
            let event = self.event(phase).await;
            match self.handle(event).await? {
                Some((SUBSCRIBE_ID, None)) => break,
                Some((_, error)) => {
                    self.shared.subscribe_failed(format!("subscribe {channel}: {}", error.unwrap_or_default()));
                    // Held, but not subscribed: it stays connected.
                    return self.until_phase(phase, STOPPED).await;
                }
                None => {}
            }
        }
        self.shared.subscribed(started.elapsed());
        drop(permit);
        self.until_phase(phase, STOPPED).await
    }

    /// Reads (answering pings, counting publications) until the phase reaches `until`.
    async fn until_phase(&mut self, phase: &mut watch::Receiver<u8>, until: u8) -> Result<(), String> {
        while *phase.borrow() < until {
            let event = self.event(phase).await;
            self.handle(event).await?;
        }
        Ok(())
    }

    /// Runs `fut` while reading; `None` if the run stopped first.
    async fn reading<F: Future>(
        &mut self,
        phase: &mut watch::Receiver<u8>,
        fut: F,
    ) -> Result<Option<F::Output>, String> {
        tokio::pin!(fut);
        loop {
            if *phase.borrow() >= STOPPED {
                return Ok(None);
            }
            // Both branches may be dropped unfinished: handling waits until after.
            let event = tokio::select! {
                out = &mut fut => return Ok(Some(out)),
                event = self.event(phase) => event,
            };
            self.handle(event).await?;
        }
    }

    /// The next frame, or a change of phase.
    async fn event(&mut self, phase: &mut watch::Receiver<u8>) -> Event {
        tokio::select! {
            changed = phase.changed() => Event::Phase(changed.is_ok()),
            msg = self.ws.recv() => Event::Frame(msg),
        }
    }

    /// Handles a frame (its lines: pings answered, publications counted and timed, a
    /// disconnect push an error) or a change of phase (what was timed is published);
    /// returns the reply the frame held, if any: its id, and its text if an error.
    async fn handle(&mut self, event: Event) -> Result<Option<(u32, Option<String>)>, String> {
        let msg = match event {
            Event::Phase(false) => return Err("the generator stopped".to_string()),
            Event::Phase(true) => {
                self.publish();
                if *self.shared.phase_tx.borrow() != MEASURING {
                    self.shared.flushed.fetch_add(1, Relaxed);
                }
                return Ok(None);
            }
            Event::Frame(msg) => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => return Err(closed_by_server(frame.map(|f| f.code))),
            Some(Ok(_)) => return Ok(None),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err(closed_by_server(None)),
        };
        let now = Instant::now();
        if self.plan.protocol != Protocol::Centrifugo {
            return self.handle_peer(text.as_bytes(), now).await;
        }
        let mut ping = false;
        let mut reply = None;
        for line in text.as_bytes().split(|&b| b == b'\n') {
            if line == b"{}" {
                ping = true;
            } else if line.starts_with(b"{\"push\":") {
                if contains(line, b"\"pub\":") {
                    self.delivered(line, now);
                } else if contains(line, b"\"disconnect\":") {
                    return Err(format!("disconnected by the server: {}", excerpt(line)));
                }
            } else if let Some(id) = reply_id(line) {
                reply = Some((id, is_error(line).then(|| excerpt(line))));
            }
        }
        if ping {
            self.ws.send(Message::text("{}")).await.map_err(|e| format!("sending a pong: {e}"))?;
            self.shared.pongs.fetch_add(1, Relaxed);
        }
        Ok(reply)
    }

    /// A Pusher or Socket.IO message (one a frame): as [`Client::handle`].
    async fn handle_peer(&mut self, msg: &[u8], now: Instant) -> Result<Option<(u32, Option<String>)>, String> {
        let packet = match self.plan.protocol {
            Protocol::Pusher => pusher_packet(msg),
            _ => socketio_packet(msg),
        };
        match packet {
            Packet::Ping(pong) => {
                self.ws.send(Message::text(pong)).await.map_err(|e| format!("sending a pong: {e}"))?;
                self.shared.pongs.fetch_add(1, Relaxed);
            }
            Packet::Delivery => {
                self.tally.delivered_with(self.shared, self.plan.burst as u64, now, || api::sent_at_anywhere(msg))
            }
            Packet::Subscribed(Ok(())) => return Ok(Some((SUBSCRIBE_ID, None))),
            Packet::Subscribed(Err(e)) => return Ok(Some((SUBSCRIBE_ID, Some(e)))),
            Packet::Closed(e) => return Err(e),
            Packet::Other => {}
        }
        Ok(None)
    }

    /// A publication arrived at `now`.
    fn delivered(&mut self, push: &[u8], now: Instant) {
        self.tally.delivered(self.shared, self.plan.burst as u64, push, now);
    }

    /// Moves the latencies kept into the shared histogram.
    fn publish(&mut self) {
        self.tally.publish(self.shared);
    }
}

/// What one client or reader counts of the publications it receives.
#[derive(Default)]
pub(super) struct Tally {
    /// Publications received.
    received: u64,
    /// Latencies (µs) not yet moved into the shared histogram.
    latencies: Vec<u32>,
}

impl Tally {
    /// A publication arrived at `now` (the burst has `burst` per client).
    pub(super) fn delivered(&mut self, shared: &Shared, burst: u64, msg: &[u8], now: Instant) {
        self.delivered_with(shared, burst, now, || api::sent_at(msg));
    }

    /// A publication arrived at `now`; `sent_at` reads its send time, if it is timed.
    pub(super) fn delivered_with(
        &mut self,
        shared: &Shared,
        burst: u64,
        now: Instant,
        sent_at: impl FnOnce() -> Option<u64>,
    ) {
        self.received += 1;
        shared.received.fetch_add(1, Relaxed);
        if self.received == burst {
            shared.burst_done.fetch_add(1, Relaxed);
        }
        if shared.phase.load(Relaxed) != MEASURING {
            return;
        }
        let Some(t) = sent_at() else { return };
        let sent = shared.base + Duration::from_micros(t);
        let us = now.saturating_duration_since(sent).as_micros().clamp(1, u128::from(u32::MAX));
        if self.latencies.capacity() == 0 {
            self.latencies.reserve_exact(BATCH);
        }
        self.latencies.push(us as u32);
        if self.latencies.len() >= BATCH {
            self.publish(shared);
        }
    }

    /// Moves the latencies kept into the shared histogram.
    pub(super) fn publish(&mut self, shared: &Shared) {
        if self.latencies.is_empty() {
            return;
        }
        let mut h = shared.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        for &us in &self.latencies {
            h.saturating_record(u64::from(us));
        }
        self.latencies.clear();
    }
}

/// The id of a reply line (`{"id":N,...`), if it is one.
fn reply_id(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"{\"id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Whether a reply line is an error.
fn is_error(line: &[u8]) -> bool {
    contains(line, b"\"error\":")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn excerpt(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(160)]).into_owned()
}

fn closed_by_server(code: Option<CloseCode>) -> String {
    match code {
        Some(code) => format!("closed by the server ({code})"),
        None => "closed by the server".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_told_apart() {
        assert_eq!(reply_id(b"{\"id\":2,\"subscribe\":{}}"), Some(2));
        assert!(!is_error(b"{\"id\":2,\"subscribe\":{}}"));
        assert!(is_error(b"{\"id\":2,\"error\":{\"code\":103,\"message\":\"permission denied\"}}"));
        assert_eq!(reply_id(b"{\"push\":{\"channel\":\"a\"}}"), None);
        assert_eq!(reply_id(b"{}"), None);
    }

    #[test]
    fn pusher_messages_are_told_apart() {
        let established = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\"}"}"#;
        assert_eq!(pusher_event(established), Some(&b"pusher:connection_established"[..]));
        assert_eq!(
            pusher_packet(br#"{"event":"pusher:ping","data":{}}"#),
            Packet::Ping(r#"{"event":"pusher:pong","data":{}}"#)
        );
        let ok = br#"{"event":"pusher_internal:subscription_succeeded","channel":"bench-1","data":"{}"}"#;
        assert_eq!(pusher_packet(ok), Packet::Subscribed(Ok(())));
        assert!(matches!(
            pusher_packet(br#"{"event":"pusher:subscription_error","data":{}}"#),
            Packet::Subscribed(Err(_))
        ));
        assert!(matches!(pusher_packet(br#"{"event":"pusher:error","data":{"code":4100}}"#), Packet::Closed(_)));
        // Keys in any order.
        let event = br#"{"channel":"bench-1","event":"bench","data":"{\"t\":5,\"p\":\"x\"}"}"#;
        assert_eq!(pusher_packet(event), Packet::Delivery);
        assert_eq!(api::sent_at_anywhere(event), Some(5));
    }

    #[test]
    fn socketio_packets_are_told_apart() {
        assert_eq!(socketio_packet(b"2"), Packet::Ping("3"));
        assert_eq!(socketio_packet(b"42[\"bench\",{\"t\":7}]"), Packet::Delivery);
        assert_eq!(socketio_packet(b"432[\"ok\"]"), Packet::Subscribed(Ok(())));
        assert_eq!(socketio_packet(b"43[\"ok\"]"), Packet::Other, "an ack without the subscribe's id");
        assert!(matches!(socketio_packet(b"44{\"message\":\"no\"}"), Packet::Subscribed(Err(_))));
        assert!(matches!(socketio_packet(b"41"), Packet::Closed(_)));
        assert!(matches!(socketio_packet(b"1"), Packet::Closed(_)));
        assert_eq!(socketio_packet(b"6"), Packet::Other);
    }
}
