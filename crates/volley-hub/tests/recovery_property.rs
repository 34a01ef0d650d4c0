//! A property of recovery: under any interleaving of publishes, dropped connections,
//! reconnects and resubscribes, a client sees every publication once, in order, with
//! nothing missing, except across a resubscribe that told it `recovered: false`.
//!
//! The client here speaks the JSON protocol over Volley's own WebSocket client and
//! records only what it actually processed: publications still unread in its socket
//! when the connection drops are lost to it, as they are to a real client, and must
//! come back through recovery.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use volley::{MaybeTlsStream, Message, WebSocket};
use volley_hub::{Hub, HubConfig};

const HISTORY: u64 = 12;

/// How many resubscribes recovered, and how many could not, over all cases: the test
/// must have exercised both.
static RECOVERED: AtomicUsize = AtomicUsize::new(0);
static UNRECOVERED: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Debug)]
enum Op {
    /// The server publishes this many.
    Publish(u8),
    /// The client processes what has arrived.
    Read,
    /// The connection drops (no close frame), with whatever is unread.
    Drop,
    /// The client reconnects (if dropped) and resubscribes with its last position.
    Reconnect,
    /// The client unsubscribes and subscribes again with its last position.
    Resubscribe,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..8).prop_map(Op::Publish),
        3 => Just(Op::Read),
        2 => Just(Op::Drop),
        2 => Just(Op::Reconnect),
        1 => Just(Op::Resubscribe),
    ]
}

struct Client {
    ws: Option<WebSocket<MaybeTlsStream>>,
    pending: Vec<Value>,
    next_id: u32,
    /// The position of the last publication processed.
    offset: u64,
    epoch: String,
    /// Offsets processed, in order.
    seen: Vec<u64>,
    /// Offsets at which a resubscribe said `recovered: false`.
    unrecovered: Vec<u64>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> WebSocket<MaybeTlsStream> {
        let mut ws = volley::connect(&format!("ws://{addr}/connection/websocket")).await.unwrap().0;
        ws.send(Message::text(json!({"id": 1, "connect": {}}).to_string())).await.unwrap();
        ws
    }

    async fn frame(&mut self, wait: Duration) -> bool {
        let ws = self.ws.as_mut().unwrap();
        match tokio::time::timeout(wait, ws.recv()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                for line in t.as_str().split('\n') {
                    self.pending.push(serde_json::from_str(line).unwrap());
                }
                true
            }
            Ok(Some(Ok(_))) => true,
            Ok(other) => panic!("connection ended: {other:?}"),
            Err(_) => false,
        }
    }

    /// Processes one publication.
    fn publication(&mut self, p: &Value, channel_top: u64) {
        let offset = p["offset"].as_u64().unwrap();
        assert_eq!(p["data"]["n"].as_u64(), Some(offset), "data and offset agree");
        assert!(offset <= channel_top);
        if self.offset != 0 || !self.seen.is_empty() {
            assert_eq!(
                offset,
                self.offset + 1,
                "no gap, no duplicate: after {} came {offset} (seen {:?})",
                self.offset,
                self.seen
            );
        }
        self.offset = offset;
        self.seen.push(offset);
    }

    /// Processes everything available now.
    async fn read(&mut self, top: u64) {
        if self.ws.is_none() {
            return;
        }
        while self.frame(Duration::from_millis(20)).await {}
        for p in std::mem::take(&mut self.pending) {
            if p["push"]["pub"].is_object() {
                self.publication(&p["push"]["pub"], top);
            } else if p["id"].is_number() {
                // A late reply (an unsubscribe's): nothing to check.
            } else {
                panic!("unexpected: {p}");
            }
        }
    }

    async fn subscribe(&mut self, channel: &str, top: u64) {
        self.next_id += 1;
        let id = self.next_id;
        let mut req = json!({"channel": channel, "recoverable": true, "positioned": true});
        if !self.epoch.is_empty() {
            req["recover"] = json!(true);
            req["offset"] = json!(self.offset);
            req["epoch"] = json!(self.epoch);
        }
        let ws = self.ws.as_mut().unwrap();
        ws.send(Message::text(json!({"id": id, "subscribe": req}).to_string())).await.unwrap();
        // Everything up to the reply belongs to the old subscription, if any.
        loop {
            while self.pending.is_empty() {
                assert!(self.frame(Duration::from_secs(5)).await, "a reply within 5 s");
            }
            let m = self.pending.remove(0);
            if m["id"] == json!(id) {
                let r = &m["subscribe"];
                assert!(r.is_object(), "{m}");
                let recovering = !self.epoch.is_empty();
                let recovered = r["recovered"].as_bool().unwrap_or(false);
                if recovering {
                    if recovered { &RECOVERED } else { &UNRECOVERED }.fetch_add(1, Ordering::Relaxed);
                }
                if recovering && !recovered {
                    self.unrecovered.push(self.offset);
                    self.offset = r["offset"].as_u64().unwrap_or(0);
                    self.seen.push(u64::MAX);
                }
                if recovering && recovered {
                    assert_eq!(r["epoch"].as_str(), Some(self.epoch.as_str()));
                }
                self.epoch = r["epoch"].as_str().unwrap().to_owned();
                if !recovering {
                    self.offset = r["offset"].as_u64().unwrap_or(0);
                }
                for p in r["publications"].as_array().cloned().unwrap_or_default() {
                    self.publication(&p, top);
                }
                return;
            } else if m["id"].is_number() {
                // The connect reply or an unsubscribe's.
                if m["connect"].is_object() || m["unsubscribe"].is_object() {
                    continue;
                }
                panic!("unexpected reply: {m}");
            } else if m["push"]["pub"].is_object() {
                // The old subscription's, sent before the server took the unsubscribe:
                // a client drops them (it is not subscribed); what they carried comes
                // back through recovery from the position it asked with. (None of the new
                // subscription's may come before its reply.)
            }
        }
    }
}

async fn serve() -> (Hub, SocketAddr) {
    let config: HubConfig = serde_json::from_value(json!({
        "client": {"allow_anonymous_connect_without_token": true, "command_rate": 0},
        "channel": {"namespaces": [{
            "name": "p", "allow_subscribe_for_anonymous": true,
            "history_size": HISTORY, "history_ttl": "600s", "force_recovery": true,
        }]},
    }))
    .unwrap();
    common::serve(config).await
}

async fn run(ops: Vec<Op>, case: usize, hub: &Hub, addr: SocketAddr) {
    let channel = format!("p:case-{case}");
    let mut top = 0u64;
    let mut c = Client {
        ws: Some(Client::connect(addr).await),
        pending: Vec::new(),
        next_id: 1,
        offset: 0,
        epoch: String::new(),
        seen: Vec::new(),
        unrecovered: Vec::new(),
    };
    c.subscribe(&channel, top).await;
    for op in ops {
        match op {
            Op::Publish(n) => {
                for _ in 0..n {
                    let data = bytes::Bytes::from(json!({"n": top + 1}).to_string());
                    let r = hub.publish(&channel, data, Default::default()).await.unwrap();
                    top += 1;
                    assert_eq!(r.position.offset, top);
                }
            }
            Op::Read => c.read(top).await,
            Op::Drop => {
                // Gone without a close frame, unread publications with it.
                c.ws = None;
                c.pending.clear();
            }
            Op::Reconnect => {
                if c.ws.is_none() {
                    c.ws = Some(Client::connect(addr).await);
                    c.subscribe(&channel, top).await;
                }
            }
            Op::Resubscribe => {
                if let Some(ws) = c.ws.as_mut() {
                    c.next_id += 1;
                    ws.send(Message::text(json!({"id": c.next_id, "unsubscribe": {"channel": channel}}).to_string()))
                        .await
                        .unwrap();
                    c.subscribe(&channel, top).await;
                }
            }
        }
    }
    // In the end, connected and caught up: the client has everything up to the top.
    if c.ws.is_none() {
        c.ws = Some(Client::connect(addr).await);
        c.subscribe(&channel, top).await;
    }
    for _ in 0..50 {
        c.read(top).await;
        if c.offset == top {
            break;
        }
    }
    assert_eq!(c.offset, top, "caught up (seen {:?})", c.seen);
    // Every offset seen once; the gaps are exactly where `recovered: false` was said.
    let runs: Vec<&[u64]> = c.seen.split(|&o| o == u64::MAX).collect();
    for run in &runs {
        assert!(run.windows(2).all(|w| w[1] == w[0] + 1), "{run:?}");
    }
    assert_eq!(runs.len(), c.unrecovered.len() + 1);
    // Recovery fails only when the history lost what the client missed.
    for (i, lost_at) in c.unrecovered.iter().enumerate() {
        let resumed_after = runs[i + 1].first().map(|f| f - 1);
        if let Some(r) = resumed_after {
            assert!(r >= lost_at + HISTORY, "a failed recovery from {lost_at} while history held it (resumed at {r})");
        }
    }
}

#[test]
fn a_client_never_sees_a_gap_or_a_duplicate_without_being_told() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (hub, addr) = rt.block_on(serve());
    let case = AtomicUsize::new(0);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    proptest!(ProptestConfig { cases, ..ProptestConfig::default() }, |(ops in proptest::collection::vec(op(), 1..40))| {
        let n = case.fetch_add(1, Ordering::Relaxed);
        rt.block_on(run(ops, n, &hub, addr));
    });
    let (ok, lost) = (RECOVERED.load(Ordering::Relaxed), UNRECOVERED.load(Ordering::Relaxed));
    assert!(ok > 0 && lost > 0, "both outcomes exercised: {ok} recovered, {lost} not");
}
