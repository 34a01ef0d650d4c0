//! A subscription can end while its connection goes on: one whose token expired
//! without a `sub_refresh` gets the unsubscribe push 2501, and one whose stream lost a
//! publication (a gap a broker across processes can make) gets 2500; the client
//! resubscribes (and recovers) on the same connection. A gap in a server-side
//! subscription still closes the connection with 3010.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{serve, serve_hub, token, unix_now, Client};
use serde_json::{json, Value};
use volley_hub::broker::{
    BoxFuture, Broker, BrokerError, BrokerEvents, HistoryQuery, HistoryResult, MemoryBroker, PresenceStats,
    PublishOptions, PublishResult,
};
use volley_hub::protocol::{ClientInfo, Publication, StreamPosition};
use volley_hub::{Hub, HubConfig};

fn config(extra_client: Value) -> HubConfig {
    let mut client = json!({"token": {"hmac_secret_key": common::SECRET}, "expired_sub_close_delay": "0s"});
    client.as_object_mut().unwrap().extend(extra_client.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "client": client,
        "channel": {"namespaces": [
            {"name": "s", "allow_subscribe_for_client": true, "history_size": 100, "history_ttl": "60s",
             "allow_recovery": true, "allow_positioning": true, "presence": true},
            {"name": "forced", "history_size": 100, "history_ttl": "60s", "force_recovery": true},
        ]},
    }))
    .unwrap()
}

#[tokio::test]
async fn an_expired_subscription_is_unsubscribed_with_2501_and_the_connection_stays() {
    expired_subscription(json!({})).await;
}

#[tokio::test]
async fn a_parked_client_is_woken_for_its_subscription_s_expiry() {
    expired_subscription(json!({"park_after": "100ms"})).await;
}

async fn expired_subscription(client: Value) {
    let (hub, addr) = serve(config(client)).await;
    let (mut c, _) = Client::connected(addr, json!({"token": token(json!({"sub": "u"}))})).await;
    let sub_token = token(json!({"sub": "u", "channel": "$s:private", "exp": unix_now() + 1}));
    let r = c.call(json!({"id": 2, "subscribe": {"channel": "$s:private", "token": sub_token}})).await;
    assert_eq!(r["subscribe"]["expires"], true, "{r}");
    let r = c.call(json!({"id": 3, "subscribe": {"channel": "s:other"}})).await;
    assert!(r["subscribe"].is_object(), "{r}");
    // No sub_refresh: after the expiry, the unsubscribe push.
    let p = c.next_within(Duration::from_secs(4)).await.unwrap().expect("the connection stays open");
    assert_eq!(
        p,
        json!({"push": {"channel": "$s:private", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}})
    );
    // Out of the channel: no publication comes from it, and its presence is gone...
    hub.publish("$s:private", bytes::Bytes::from_static(b"{\"n\":1}"), Default::default()).await.unwrap();
    hub.publish("s:other", bytes::Bytes::from_static(b"{\"n\":2}"), Default::default()).await.unwrap();
    let p = c.next().await.unwrap();
    assert_eq!(p["push"]["channel"], "s:other", "{p}");
    assert_eq!(hub.presence_stats("$s:private").await.unwrap().clients, 0);
    // ...and the client resubscribes on the same connection with a new token.
    let fresh = token(json!({"sub": "u", "channel": "$s:private", "exp": unix_now() + 3600}));
    let r = c.call(json!({"id": 4, "subscribe": {"channel": "$s:private", "token": fresh}})).await;
    assert!(r["subscribe"].is_object(), "{r}");
    assert_eq!(hub.num_clients(), 1);
}

#[tokio::test]
async fn a_refreshed_subscription_does_not_expire() {
    let (_hub, addr) = serve(config(json!({}))).await;
    let (mut c, _) = Client::connected(addr, json!({"token": token(json!({"sub": "u"}))})).await;
    let t = |exp: u64| token(json!({"sub": "u", "channel": "$s:r", "exp": exp}));
    let r = c.call(json!({"id": 2, "subscribe": {"channel": "$s:r", "token": t(unix_now() + 1)}})).await;
    assert!(r["subscribe"].is_object(), "{r}");
    let r = c.call(json!({"id": 3, "sub_refresh": {"channel": "$s:r", "token": t(unix_now() + 3600)}})).await;
    assert_eq!(r["sub_refresh"]["expires"], true, "{r}");
    assert!(c.next_within(Duration::from_millis(2500)).await.is_err(), "nothing comes: no 2501");
}

/// A broker that loses the publications whose data is `"lost"` on their way to the
/// node (they are in history): the gap a broker across processes can make.
struct Lossy(MemoryBroker);

struct LossyEvents(Arc<dyn BrokerEvents>);

impl BrokerEvents for LossyEvents {
    fn publication(&self, ch: &str, p: Arc<Publication>, pos: &StreamPosition, prev: Option<Arc<Publication>>) {
        if &p.data[..] != b"\"lost\"" {
            self.0.publication(ch, p, pos, prev);
        }
    }
    fn join(&self, ch: &str, info: ClientInfo) {
        self.0.join(ch, info)
    }
    fn leave(&self, ch: &str, info: ClientInfo) {
        self.0.leave(ch, info)
    }
}

impl Broker for Lossy {
    fn set_events(&self, events: Arc<dyn BrokerEvents>) {
        self.0.set_events(Arc::new(LossyEvents(events)))
    }
    fn subscribe(&self, ch: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.subscribe(ch)
    }
    fn unsubscribe(&self, ch: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.unsubscribe(ch)
    }
    fn publish(
        &self,
        ch: &str,
        p: Publication,
        o: PublishOptions,
    ) -> BoxFuture<'_, Result<PublishResult, BrokerError>> {
        self.0.publish(ch, p, o)
    }
    fn publish_join(&self, ch: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.publish_join(ch, info)
    }
    fn publish_leave(&self, ch: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.publish_leave(ch, info)
    }
    fn history(&self, ch: &str, q: HistoryQuery) -> BoxFuture<'_, Result<HistoryResult, BrokerError>> {
        self.0.history(ch, q)
    }
    fn remove_history(&self, ch: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.remove_history(ch)
    }
    fn add_presence(&self, ch: &str, info: ClientInfo, ttl: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.add_presence(ch, info, ttl)
    }
    fn remove_presence(&self, ch: &str, client: &str, user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.remove_presence(ch, client, user)
    }
    fn presence(&self, ch: &str) -> BoxFuture<'_, Result<HashMap<String, ClientInfo>, BrokerError>> {
        self.0.presence(ch)
    }
    fn presence_stats(&self, ch: &str) -> BoxFuture<'_, Result<PresenceStats, BrokerError>> {
        self.0.presence_stats(ch)
    }
    fn send_control(&self, node: &str, message: bytes::Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.send_control(node, message)
    }
}

async fn lossy(config: HubConfig) -> (Hub, std::net::SocketAddr) {
    let hub = Hub::with_broker(config, Arc::new(Lossy(MemoryBroker::new()))).unwrap();
    let addr = serve_hub(hub.clone()).await;
    (hub, addr)
}

async fn publish(hub: &Hub, channel: &str, data: &'static str) {
    hub.publish(channel, bytes::Bytes::from_static(data.as_bytes()), Default::default()).await.unwrap();
}

#[tokio::test]
async fn a_gap_unsubscribes_with_2500_and_the_client_resubscribes_and_recovers_on_the_same_connection() {
    gap(json!({}), Duration::ZERO).await;
}

#[tokio::test]
async fn a_gap_reaches_a_parked_client_too() {
    gap(json!({"park_after": "100ms"}), Duration::from_millis(400)).await;
}

async fn gap(client: Value, idle: Duration) {
    let (hub, addr) = lossy(config(client)).await;
    let (mut c, _) = Client::connected(addr, json!({"token": token(json!({"sub": "u"}))})).await;
    let r = c.call(json!({"id": 2, "subscribe": {"channel": "s:g", "recoverable": true}})).await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();
    // Idle long enough to be parked, where the configuration parks.
    tokio::time::sleep(idle).await;
    publish(&hub, "s:g", "1").await;
    assert_eq!(c.next().await.unwrap()["push"]["pub"]["offset"], 1);
    tokio::time::sleep(idle).await;
    publish(&hub, "s:g", "\"lost\"").await;
    publish(&hub, "s:g", "3").await;
    publish(&hub, "s:g", "4").await;
    let p = c.next().await.expect("the connection stays open");
    assert_eq!(p, json!({"push": {"channel": "s:g", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}}));
    // Nothing more from the lost subscription.
    assert!(c.next_within(Duration::from_millis(300)).await.is_err());
    tokio::time::sleep(idle).await;
    // The client resubscribes from the last offset it has, at once: the hub has let go
    // of the channel first (no 105), and the recovery fills the gap.
    let sub = json!({"channel": "s:g", "recover": true, "recoverable": true, "epoch": epoch, "offset": 1});
    let r = c.call(json!({"id": 3, "subscribe": sub})).await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    let offsets: Vec<u64> =
        r["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [2, 3, 4]);
    publish(&hub, "s:g", "5").await;
    assert_eq!(c.next().await.unwrap()["push"]["pub"]["offset"], 5);
    assert_eq!(hub.presence_stats("s:g").await.unwrap().clients, 1, "present once");
    assert_eq!(hub.num_subscriptions(), 1);
}

#[tokio::test]
async fn a_gap_in_a_server_side_subscription_closes_with_3010() {
    let (hub, addr) = lossy(config(json!({}))).await;
    let connect = json!({"token": token(json!({"sub": "u", "channels": ["forced:server"]}))});
    let (mut c, r) = Client::connected(addr, connect).await;
    assert_eq!(r["connect"]["subs"]["forced:server"]["positioned"], true, "{r}");
    publish(&hub, "forced:server", "1").await;
    publish(&hub, "forced:server", "\"lost\"").await;
    publish(&hub, "forced:server", "3").await;
    assert_eq!(c.close_code().await, 3010);
}
