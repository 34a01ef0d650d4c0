//! Channel compaction: a subscriber that offers it (subscribe flag 1) on a namespace
//! with `allow_channel_compaction` gets a numeric channel id in its subscribe result,
//! and its publication, join and leave pushes carry the id instead of the channel's
//! name; everyone else gets names, from the same publication.

mod common;

use common::{serve, Client};
use serde_json::{json, Value};
use volley_hub::HubConfig;

fn config() -> HubConfig {
    let ns = |name: &str, compaction: bool| {
        json!({"name": name, "allow_subscribe_for_anonymous": true, "join_leave": true, "force_push_join_leave": true,
               "history_size": 10, "history_ttl": "60s", "force_positioning": true,
               "allow_channel_compaction": compaction})
    };
    serde_json::from_value(json!({
        "client": {"allow_anonymous_connect_without_token": true},
        "channel": {"namespaces": [ns("c", true), ns("n", false)]},
    }))
    .unwrap()
}

async fn subscribe(c: &mut Client, id: u32, channel: &str, flag: u64) -> Value {
    let r = c.call(json!({"id": id, "subscribe": {"channel": channel, "flag": flag}})).await;
    assert!(r["subscribe"].is_object(), "{r}");
    r["subscribe"].clone()
}

#[tokio::test]
async fn pushes_carry_the_channel_id_to_those_who_offered_compaction() {
    let (hub, addr) = serve(config()).await;
    let (mut a, _) = Client::connected(addr, json!({})).await;
    let (mut b, _) = Client::connected(addr, json!({})).await;
    let x = subscribe(&mut a, 2, "c:x", 1).await["id"].as_u64().expect("an id");
    // Its own join, by id.
    assert_eq!(a.next().await.unwrap()["push"]["id"], x);
    let y = subscribe(&mut a, 3, "c:y", 1).await["id"].as_u64().expect("an id");
    assert_eq!(a.next().await.unwrap()["push"]["id"], y);
    assert!(x > 0 && y > 0 && x != y, "{x} {y}");
    // b does not offer it (and asks for the reject-unrecovered flag only): names.
    let rb = subscribe(&mut b, 2, "c:x", 2).await;
    assert_eq!(rb["id"], Value::Null, "{rb}");
    let own = b.next().await.unwrap();
    assert_eq!(own["push"]["channel"], "c:x", "{own}");
    // a is told of b's join by id.
    let join = a.next().await.unwrap();
    assert_eq!(join["push"]["id"], x, "{join}");
    assert_eq!(join["push"]["channel"], Value::Null, "{join}");
    assert!(join["push"]["join"]["info"]["client"].is_string(), "{join}");
    hub.publish("c:x", bytes::Bytes::from_static(b"{\"n\":1}"), Default::default()).await.unwrap();
    let p = a.next().await.unwrap();
    assert_eq!(p, json!({"push": {"id": x, "pub": {"data": {"n": 1}, "offset": 1, "time": p["push"]["pub"]["time"]}}}));
    let p = b.next().await.unwrap();
    assert_eq!(p["push"]["channel"], "c:x", "{p}");
    assert_eq!(p["push"]["id"], Value::Null, "{p}");
    // b leaves: a is told by id.
    assert!(b.call(json!({"id": 3, "unsubscribe": {"channel": "c:x"}})).await["unsubscribe"].is_object());
    let leave = a.next().await.unwrap();
    assert_eq!((leave["push"]["id"].as_u64(), leave["push"]["leave"].is_object()), (Some(x), true), "{leave}");
    // A second subscriber of the channel on this node gets the same id.
    let (mut c, _) = Client::connected(addr, json!({})).await;
    assert_eq!(subscribe(&mut c, 2, "c:x", 1).await["id"], x);
}

#[tokio::test]
async fn a_namespace_without_the_option_names_channels() {
    let (hub, addr) = serve(config()).await;
    let (mut a, _) = Client::connected(addr, json!({})).await;
    let r = subscribe(&mut a, 2, "n:x", 3).await;
    assert_eq!(r["id"], Value::Null, "{r}");
    hub.publish("n:x", bytes::Bytes::from_static(b"{}"), Default::default()).await.unwrap();
    let p = a.next().await.unwrap();
    assert_eq!(p["push"]["channel"], "n:x", "{p}");
}

#[tokio::test]
async fn protobuf_clients_get_names_even_when_they_offer_compaction() {
    use volley_hub::protocol::{
        protobuf, Command, ConnectRequest, PushKind, Reply, ReplyResult, Request, SubscribeRequest,
    };
    // centrifuge-js offers the flag over Protobuf too, but would hold the int64 id as a
    // Long and route nothing by it.
    let (hub, addr) = serve(config()).await;
    let mut ws = volley::ClientBuilder::new(format!("ws://{addr}/connection/websocket"))
        .protocol("centrifuge-protobuf")
        .connect()
        .await
        .unwrap()
        .0;
    let mut frame = bytes::BytesMut::new();
    protobuf::encode_command(&Command { id: 1, request: Request::Connect(ConnectRequest::default()) }, &mut frame);
    let sub = SubscribeRequest { channel: "c:x".into(), flag: 1, ..Default::default() };
    protobuf::encode_command(&Command { id: 2, request: Request::Subscribe(sub) }, &mut frame);
    ws.send(volley::Message::Binary(frame.freeze())).await.unwrap();
    let mut replies = Vec::new();
    while replies.len() < 3 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), ws.recv()).await.unwrap() {
            Some(Ok(volley::Message::Binary(b))) => {
                replies.extend(protobuf::replies(&b).map(Result::unwrap));
                if replies.len() == 2 {
                    hub.publish("c:x", bytes::Bytes::from_static(b"{}"), Default::default()).await.unwrap();
                }
            }
            other => panic!("{other:?}"),
        }
    }
    let Reply::Result { result: ReplyResult::Subscribe(r), .. } = &replies[1] else { panic!("{:?}", replies[1]) };
    assert_eq!(r.id, 0);
    // Its own join, then the publication, by name.
    let pushes: Vec<_> = replies[2..].iter().collect();
    let Reply::Push(p) = pushes[0] else { panic!("{pushes:?}") };
    assert_eq!((p.id, p.channel.as_str()), (0, "c:x"));
    assert!(matches!(p.kind, PushKind::Join(_) | PushKind::Publication(_)), "{p:?}");
}
