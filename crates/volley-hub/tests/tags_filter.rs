//! Tags filters (`tf` of subscribe): a filtered subscriber receives only the
//! publications whose tags match, live, in recovery (stream and cache modes) and in the
//! publications buffered while it subscribes; positions stay exact; a filter where the
//! namespace does not allow one, or a malformed one, is 107.

mod common;

use common::{serve, Client};
use serde_json::{json, Value};
use volley_hub::{HubConfig, ServerPublish};

fn config() -> HubConfig {
    let ns = |name: &str, extra: Value| {
        let mut o = json!({"name": name, "allow_subscribe_for_anonymous": true, "history_size": 100,
                           "history_ttl": "60s", "allow_recovery": true, "allow_positioning": true,
                           "allowed_delta_types": ["fossil"]});
        o.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        o
    };
    serde_json::from_value(json!({
        "client": {"allow_anonymous_connect_without_token": true},
        "channel": {"namespaces": [
            ns("f", json!({"allow_tags_filter": true})),
            ns("cache", json!({"allow_tags_filter": true, "force_recovery_mode": "cache"})),
            ns("plain", json!({})),
        ]},
    }))
    .unwrap()
}

fn aapl() -> Value {
    json!({"key": "ticker", "cmp": "eq", "val": "AAPL"})
}

async fn publish(hub: &volley_hub::Hub, channel: &str, n: u64, tags: &[(&str, &str)]) {
    let opts = ServerPublish {
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    let r = hub.publish(channel, bytes::Bytes::from(format!("{{\"n\":{n}}}")), opts).await.unwrap();
    assert_eq!(r.position.offset, n);
}

fn ns(pubs: &Value) -> Vec<u64> {
    pubs.as_array().map(|a| a.iter().map(|p| p["data"]["n"].as_u64().unwrap()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn a_filtered_subscriber_gets_only_what_matches_live_and_in_recovery() {
    let (hub, addr) = serve(config()).await;
    let (mut c, _) = Client::connected(addr, json!({})).await;
    let r = c
        .call(json!({"id": 2, "subscribe": {"channel": "f:t", "positioned": true, "recoverable": true, "tf": aapl()}}))
        .await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();
    let tagged = [
        &[("ticker", "AAPL")][..],
        &[("ticker", "MSFT")],
        &[("ticker", "AAPL"), ("x", "1")],
        &[],
        &[("ticker", "AAPL")],
    ];
    for (i, tags) in tagged.iter().enumerate() {
        publish(&hub, "f:t", i as u64 + 1, tags).await;
    }
    // 1, 3 and 5 arrive; 2 and 4 are skipped, and the skipped offsets are no gap.
    for want in [1, 3, 5] {
        let p = c.next().await.unwrap();
        assert_eq!(p["push"]["pub"]["data"]["n"], want, "{p}");
        assert_eq!(p["push"]["pub"]["offset"], want, "{p}");
    }
    publish(&hub, "f:t", 6, &[("ticker", "AAPL")]).await;
    assert_eq!(c.next().await.unwrap()["push"]["pub"]["offset"], 6, "still subscribed: no 2500, no 3010");

    // Recovery from offset 1: what matches of 2..6, and recovered (nothing was lost).
    let (mut d, _) = Client::connected(addr, json!({})).await;
    let sub =
        json!({"channel": "f:t", "recover": true, "epoch": epoch, "offset": 1, "recoverable": true, "tf": aapl()});
    let r = d.call(json!({"id": 2, "subscribe": sub})).await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(ns(&r["subscribe"]["publications"]), [3, 5, 6], "{r}");
    // Without a filter the same recovery carries everything.
    let sub = json!({"channel": "f:t", "recover": true, "epoch": epoch, "offset": 1, "recoverable": true});
    let r = Client::connected(addr, json!({})).await.0.call(json!({"id": 2, "subscribe": sub})).await;
    assert_eq!(ns(&r["subscribe"]["publications"]), [2, 3, 4, 5, 6], "{r}");
    // A filter with not, or, in and a numeric comparison.
    let tf = json!({"op": "or", "nodes": [
        {"op": "not", "nodes": [{"key": "ticker", "cmp": "ex"}]},
        {"key": "x", "cmp": "gte", "val": "1.0"},
        {"key": "ticker", "cmp": "in", "vals": ["MSFT"]},
    ]});
    let sub = json!({"channel": "f:t", "recover": true, "epoch": epoch, "offset": 0, "recoverable": true, "tf": tf});
    let r = Client::connected(addr, json!({})).await.0.call(json!({"id": 2, "subscribe": sub})).await;
    assert_eq!(ns(&r["subscribe"]["publications"]), [2, 3, 4], "{r}");
}

#[tokio::test]
async fn cache_recovery_with_a_filter_gives_the_latest_that_matches() {
    let (hub, addr) = serve(config()).await;
    let (mut c, _) = Client::connected(addr, json!({})).await;
    let r = c.call(json!({"id": 2, "subscribe": {"channel": "cache:t", "recoverable": true}})).await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();
    publish(&hub, "cache:t", 1, &[("ticker", "AAPL")]).await;
    publish(&hub, "cache:t", 2, &[("ticker", "AAPL")]).await;
    publish(&hub, "cache:t", 3, &[("ticker", "MSFT")]).await;
    let sub = |offset: u64| {
        json!({"id": 2, "subscribe": {"channel": "cache:t", "recover": true, "epoch": epoch, "offset": offset,
               "recoverable": true, "tf": aapl()}})
    };
    let r = Client::connected(addr, json!({})).await.0.call(sub(0)).await;
    assert_eq!(ns(&r["subscribe"]["publications"]), [2], "the latest AAPL, not the latest: {r}");
    assert_eq!(r["subscribe"]["offset"], 3, "{r}");
    let r = Client::connected(addr, json!({})).await.0.call(sub(2)).await;
    assert_eq!(ns(&r["subscribe"]["publications"]), Vec::<u64>::new(), "the client holds it: {r}");
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
}

#[tokio::test]
async fn publications_buffered_during_the_subscribe_are_filtered_too() {
    // Many publications race the subscribe: whatever the interleaving, the client sees
    // the matching ones after its position, each once, in order.
    let (hub, addr) = serve(config()).await;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for n in 1..=400u64 {
                let t = if n % 3 == 0 { "AAPL" } else { "MSFT" };
                publish(&hub, "f:race", n, &[("ticker", t)]).await;
                if n % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let (mut c, _) = Client::connected(addr, json!({})).await;
    let r = c.call(json!({"id": 2, "subscribe": {"channel": "f:race", "positioned": true, "tf": aapl()}})).await;
    let from = r["subscribe"]["offset"].as_u64().unwrap();
    publisher.await.unwrap();
    let want: Vec<u64> = (from + 1..=400).filter(|n| n % 3 == 0).collect();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let p = c.next().await.unwrap();
        got.push(p["push"]["pub"]["offset"].as_u64().unwrap_or_else(|| panic!("{p}")));
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_filter_is_107_where_it_is_not_allowed_or_malformed_and_the_connection_stays() {
    let (_hub, addr) = serve(config()).await;
    let (mut c, _) = Client::connected(addr, json!({})).await;
    let bad = [
        json!({"channel": "plain:a", "tf": aapl()}),
        json!({"channel": "f:a", "tf": {}}),
        json!({"channel": "f:a", "tf": {"key": "k", "cmp": "like", "val": "x"}}),
        json!({"channel": "f:a", "tf": {"key": "k", "cmp": "in", "vals": []}}),
        json!({"channel": "f:a", "tf": {"op": "not", "nodes": [aapl(), aapl()]}}),
        json!({"channel": "f:a", "tf": {"op": "and", "nodes": [{"key": "k", "cmp": "eq"}]}}),
    ];
    for (i, sub) in bad.into_iter().enumerate() {
        let r = c.call(json!({"id": i + 10, "subscribe": sub.clone()})).await;
        assert_eq!(r["error"]["code"], 107, "{sub} -> {r}");
    }
    // A filter and deltas: deltas are not negotiated, the filter is.
    let r = c
        .call(json!({"id": 30, "subscribe": {"channel": "f:a", "positioned": true, "delta": "fossil", "tf": aapl()}}))
        .await;
    assert!(r["subscribe"].is_object(), "{r}");
    assert_eq!(r["subscribe"]["delta"], Value::Null, "{r}");
}
