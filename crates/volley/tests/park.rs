//! Parking over real TCP on 127.0.0.1: a parked connection comes back, unchanged, when
//! its peer sends a message, a burst, a close frame or just closes the socket, or when
//! its keepalive ping is due; busy connections are refused; `take` and `wake_all`
//! unpark at once; dropping the parking closes what it holds; a keeper's own
//! keepalive goes on in place.
#![cfg(all(unix, feature = "park"))]

mod common;

use std::future::Future;
use std::time::Duration;

use common::{bind, close_body, masked, raw_client, read_frame, read_to_eof, url, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use volley::park::{ParkError, Parking};
use volley::{CloseCode, Config, Message, WebSocket};

/// Accepts one connection with `config`; returns the port and the server side.
async fn server(config: Config) -> (u16, tokio::task::JoinHandle<WebSocket<TcpStream>>) {
    let (listener, port) = bind().await;
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        volley::ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap()
    });
    (port, task)
}

fn park<T>(parking: &Parking<T>, ws: WebSocket<TcpStream>, value: T) -> volley::park::ParkedId {
    match parking.park(ws, value) {
        Ok(id) => id,
        Err(e) => panic!("not parked: {e}"),
    }
}

/// A connection from a raw client, parked with `value` as soon as it is accepted;
/// returns the client's socket and the parked id.
async fn parked_raw<T>(parking: &Parking<T>, config: Config, value: T) -> (TcpStream, volley::park::ParkedId) {
    let (port, task) = server(config).await;
    let raw = raw_client(port).await;
    let id = park(parking, task.await.unwrap(), value);
    (raw, id)
}

#[derive(Clone, Debug, PartialEq)]
struct User(&'static str);

#[tokio::test]
async fn a_parked_connection_comes_back_unchanged_when_its_peer_sends() {
    let parking = Parking::new().unwrap();
    let (port, task) = server(Config::new()).await;
    // A Volley client: permessage-deflate with context takeover, so the compression
    // contexts must survive parking too.
    let (mut client, _) =
        volley::ClientBuilder::new(url(port, "/room/7")).header("X-Team", "blue").connect().await.unwrap();
    let mut ws = task.await.unwrap();
    assert!(ws.deflate().is_some());
    ws.user_data_mut().insert(User("ada"));
    let id = ws.info().id();
    let text = "a sentence long enough to be compressed, sent again and again";

    for round in 0..3 {
        assert!(ws.is_quiescent(), "round {round}");
        park(&parking, ws, round);
        assert_eq!(parking.len(), 1);
        // A burst while parked: all of it arrives, in order.
        for i in 0..3 {
            client.send(Message::text(format!("{text} {round}.{i}"))).await.unwrap();
        }
        let (back, value) = within(parking.woken()).await.unwrap();
        ws = back;
        assert_eq!(value, round);
        assert_eq!(parking.len(), 0);
        assert_eq!(ws.info().id(), id);
        assert_eq!(ws.info().path(), "/room/7");
        assert_eq!(ws.info().headers().get("x-team"), Some("blue"));
        assert_eq!(ws.user_data().get::<User>(), Some(&User("ada")));
        for i in 0..3 {
            let msg = within(ws.recv()).await.unwrap().unwrap();
            assert_eq!(msg, Message::text(format!("{text} {round}.{i}")));
            ws.send(msg).await.unwrap();
            let echo = within(client.recv()).await.unwrap().unwrap();
            assert_eq!(echo, Message::text(format!("{text} {round}.{i}")));
        }
    }
    // The closing handshake after parking is a normal one.
    park(&parking, ws, 9);
    let closing = tokio::spawn(async move { client.close(CloseCode::NORMAL, "bye").await.map_err(|e| e.to_string()) });
    let (mut ws, _) = within(parking.woken()).await.unwrap();
    assert!(matches!(within(ws.recv()).await, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::NORMAL));
    assert!(within(ws.recv()).await.is_none());
    within(closing).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_connection_with_input_not_yet_handed_out_is_busy() {
    let parking = Parking::new().unwrap();
    let (port, task) = server(Config::new()).await;
    let mut raw = raw_client(port).await;
    let mut ws = task.await.unwrap();
    // Two frames in one write: one read takes both.
    let mut both = masked(0x81, b"one");
    both.extend_from_slice(&masked(0x81, b"two"));
    raw.write_all(&both).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("one"));
    assert!(!ws.is_quiescent());
    let Err(ParkError::Busy(mut ws, value)) = parking.park(ws, "kept") else { panic!("parked a busy connection") };
    assert_eq!(value, "kept");
    assert!(parking.is_empty());
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("two"));
    park(&parking, ws, "now");
    assert_eq!(parking.len(), 1);
}

#[tokio::test]
async fn a_connection_with_input_still_in_its_socket_is_busy() {
    // Bytes the runtime has not reported yet: parked, the connection would be handed
    // back at once and parked again, over and over, without ever reading them.
    let parking = Parking::new().unwrap();
    let (port, task) = server(Config::new()).await;
    let mut raw = raw_client(port).await;
    let ws = task.await.unwrap();
    raw.write_all(&masked(0x81, b"unread")).await.unwrap();
    // Loopback: the bytes are in the server's socket once the write returns and the
    // kernel has moved them; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ws = match parking.park(ws, ()) {
        Err(ParkError::Busy(ws, ())) => ws,
        Ok(_) => panic!("parked with input in its socket"),
        Err(ParkError::Io(e, ())) => panic!("{e}"),
    };
    match within(ws.recv()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "unread"),
        other => panic!("{other:?}"),
    }
    assert!(parking.is_empty());
}

#[tokio::test]
async fn a_peer_that_goes_away_wakes_its_parked_connection() {
    let parking = Parking::new().unwrap();
    // A close frame.
    let (mut raw, _) = parked_raw(&parking, Config::new(), ()).await;
    raw.write_all(&masked(0x88, &close_body(1001, "gone"))).await.unwrap();
    let (mut ws, ()) = within(parking.woken()).await.unwrap();
    assert!(matches!(within(ws.recv()).await, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::GOING_AWAY));
    assert!(within(ws.recv()).await.is_none());
    assert_eq!(read_frame(&mut raw).await, (0x88, close_body(1001, "")), "the close echo");

    // The socket closed without a close frame.
    let (raw, _) = parked_raw(&parking, Config::new(), ()).await;
    drop(raw);
    let (mut ws, ()) = within(parking.woken()).await.unwrap();
    let last = within(ws.recv()).await;
    assert!(matches!(last, Some(Err(_))), "an abnormal closure: {last:?}");
    assert!(within(ws.recv()).await.is_none());
}

#[tokio::test]
async fn a_keepalive_ping_due_wakes_a_parked_connection() {
    let parking = Parking::new().unwrap();
    let config = Config::new().ping_interval(Some(Duration::from_millis(400)));
    let (mut raw, _) = parked_raw(&parking, config, ()).await;
    // Not before the ping is due...
    assert!(tokio::time::timeout(Duration::from_millis(100), parking.woken()).await.is_err());
    // ...but when it is, although the peer sent nothing.
    let (mut ws, ()) = within(parking.woken()).await.unwrap();
    let recv = tokio::spawn(async move { ws.recv().await.map(|m| m.map_err(|e| e.to_string())) });
    let (opcode, payload) = within(read_frame(&mut raw)).await;
    assert_eq!(opcode, 0x89, "a ping");
    raw.write_all(&masked(0x8a, &payload)).await.unwrap();
    assert!(matches!(within(recv).await.unwrap(), Some(Ok(Message::Pong(_)))));
}

#[tokio::test]
async fn an_application_deadline_wakes_a_parked_connection_once() {
    let parking = Parking::new().unwrap();
    let (port, task) = server(Config::new()).await;
    let _raw = raw_client(port).await;
    let at = tokio::time::Instant::now() + Duration::from_millis(300);
    let id = match parking.park_until(task.await.unwrap(), User("a"), Some(at)) {
        Ok(id) => id,
        Err(e) => panic!("not parked: {e}"),
    };
    assert!(tokio::time::timeout(Duration::from_millis(100), parking.woken()).await.is_err(), "not before");
    let (ws, user) = within(parking.woken()).await.unwrap();
    assert_eq!(user, User("a"));
    assert!(tokio::time::Instant::now() >= at);
    assert!(parking.take(id).is_none(), "handed back already");
    // Parked again with a later deadline: the earlier one, already spent, does not
    // hand it back a second time.
    let later = tokio::time::Instant::now() + Duration::from_millis(400);
    park_until_ok(&parking, ws, User("b"), later);
    assert!(tokio::time::timeout(Duration::from_millis(150), parking.woken()).await.is_err());
    let (_ws, user) = within(parking.woken()).await.unwrap();
    assert_eq!(user, User("b"));
}

#[tokio::test]
async fn deadlines_of_connections_taken_back_are_not_kept() {
    // A connection parked and taken back again and again, each time with a deadline
    // far away, leaves nothing behind: the parking stays empty when it is taken.
    let parking = Parking::new().unwrap();
    let (port, task) = server(Config::new()).await;
    let _raw = raw_client(port).await;
    let mut ws = task.await.unwrap();
    let far = tokio::time::Instant::now() + Duration::from_secs(3600);
    for _ in 0..10_000 {
        let id = park_until_ok(&parking, ws, User("c"), far);
        ws = parking.take(id).expect("parked").0;
    }
    assert!(parking.is_empty());
    let debug = format!("{parking:?}");
    let kept: usize = debug.split("deadlines: ").nth(1).and_then(|r| r.trim_end_matches(" }").parse().ok()).unwrap();
    // Dropped lazily, in bulk: a bounded number may wait for the next sweep.
    assert!(kept <= 1026, "{kept} deadlines kept for one connection");
}

fn park_until_ok<T>(
    parking: &Parking<T>,
    ws: WebSocket<TcpStream>,
    value: T,
    at: tokio::time::Instant,
) -> volley::park::ParkedId {
    match parking.park_until(ws, value, Some(at)) {
        Ok(id) => id,
        Err(e) => panic!("not parked: {e}"),
    }
}

/// A waker that counts its clones: the test's stand-in for the task that parks.
struct Witness;

impl std::task::Wake for Witness {
    fn wake(self: std::sync::Arc<Self>) {}
}

#[tokio::test]
async fn a_parked_connection_keeps_no_waker_of_the_task_that_parked_it() {
    // A task's memory lives as long as a clone of its waker does: a parked connection
    // that kept one (in a running keepalive timer, say) would keep its ended task.
    let parking = Parking::new().unwrap();
    let config = Config::new()
        .ping_interval(Some(Duration::from_secs(30)))
        .idle_timeout(Some(Duration::from_secs(60)))
        .max_lifetime(Some(Duration::from_secs(90)));
    let (port, task) = server(config).await;
    let mut raw = raw_client(port).await;
    let mut ws = task.await.unwrap();
    // Polled once by "the task": the timers and the socket register its waker.
    let witness = std::sync::Arc::new(Witness);
    let waker = std::task::Waker::from(witness.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(std::pin::Pin::new(&mut Box::pin(ws.recv())).poll(&mut cx).is_pending());
    drop(waker);
    assert!(std::sync::Arc::strong_count(&witness) > 1, "the running connection holds the waker");
    park(&parking, ws, ());
    assert_eq!(std::sync::Arc::strong_count(&witness), 1, "the parked connection holds no waker");

    // It comes back when its peer sends, and works on: the ping is answered.
    raw.write_all(&masked(0x89, b"hi")).await.unwrap();
    let (mut ws, ()) = within(parking.woken()).await.unwrap();
    let served = tokio::spawn(async move {
        let first = ws.recv().await.map(|m| m.map_err(|e| e.to_string()));
        while ws.recv().await.is_some() {}
        first
    });
    let (opcode, payload) = within(read_frame(&mut raw)).await;
    assert_eq!((opcode, &payload[..]), (0x8a, &b"hi"[..]), "the pong");
    drop(raw);
    assert!(matches!(within(served).await.unwrap(), Some(Ok(Message::Ping(_)))));
}

#[tokio::test]
async fn timers_follow_their_connection_through_a_reused_slot() {
    let parking = Parking::new().unwrap();
    // A connection with a keepalive ping, parked and taken back: its slot is free.
    let with_ping = Config::new().ping_interval(Some(Duration::from_millis(300)));
    let (mut raw_a, id_a) = parked_raw(&parking, with_ping, 'a').await;
    let (mut ws_a, _) = parking.take(id_a).expect("still parked");
    // A connection without timers parks in that slot, and is taken back too.
    let (mut raw_b, id_b) = parked_raw(&parking, Config::new().ping_interval(None), 'b').await;
    let (mut ws_b, _) = parking.take(id_b).expect("still parked");
    let a = tokio::spawn(async move { while ws_a.recv().await.is_some() {} });
    let b = tokio::spawn(async move { while ws_b.recv().await.is_some() {} });
    // The first still pings when its interval comes; the second never does.
    let (opcode, _) = within(read_frame(&mut raw_a)).await;
    assert_eq!(opcode, 0x89, "a ping from the connection with keepalive");
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(700), tokio::io::AsyncReadExt::read(&mut raw_b, &mut byte));
    assert!(quiet.await.is_err(), "no timer came with the slot");
    drop((raw_a, raw_b));
    within(a).await.unwrap();
    within(b).await.unwrap();
}

#[tokio::test]
async fn take_unparks_at_once_and_wake_all_hands_everything_back() {
    let parking = Parking::new().unwrap();
    let mut raws = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (raw, id) = parked_raw(&parking, Config::new(), i).await;
        raws.push(raw);
        ids.push(id);
    }
    assert_eq!(parking.len(), 3);
    let (mut ws, value) = parking.take(ids[1]).expect("still parked");
    assert_eq!(value, 1);
    assert!(parking.take(ids[1]).is_none(), "taken already");
    ws.send(Message::text("news")).await.unwrap();
    assert_eq!(read_frame(&mut raws[1]).await, (0x81, b"news".to_vec()));
    let again = park(&parking, ws, 1);
    assert_ne!(again, ids[1], "a new id each time");
    assert!(parking.take(ids[1]).is_none(), "the old id is stale");

    parking.wake_all();
    assert_eq!(parking.len(), 3);
    let mut values = Vec::new();
    for _ in 0..3 {
        let (mut ws, value) = within(parking.woken()).await.unwrap();
        values.push(value);
        ws.send(Message::text(format!("bye {value}"))).await.unwrap();
    }
    values.sort();
    assert_eq!(values, [0, 1, 2]);
    for (i, raw) in raws.iter_mut().enumerate() {
        assert_eq!(read_frame(raw).await, (0x81, format!("bye {i}").into_bytes()));
    }
}

#[tokio::test]
async fn dropping_the_parking_closes_what_it_holds() {
    let parking = Parking::new().unwrap();
    let (mut raw, _) = parked_raw(&parking, Config::new(), ()).await;
    let waiter = {
        let parking = parking.clone();
        tokio::spawn(async move { parking.woken().await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    drop(parking);
    // The waiting task still holds a clone: the parking lives until it stops waiting.
    waiter.abort();
    let _ = waiter.await;
    // Closed without a closing handshake: end of stream, or a reset.
    if let Ok(rest) = within(read_to_eof(&mut raw)).await {
        assert!(rest.is_empty(), "nothing was sent: {rest:?}");
    }
}

#[tokio::test]
async fn send_writes_to_a_parked_connection_without_taking_it_back() {
    let parking = Parking::new().unwrap();
    let (port, task) = server(Config::new()).await;
    // With permessage-deflate (context takeover): the plain frame goes, valid there.
    let (mut client, _) = volley::ClientBuilder::new(url(port, "/")).connect().await.unwrap();
    let ws = task.await.unwrap();
    assert!(ws.deflate().is_some());
    let id = park(&parking, ws, 7);
    for i in 0..50 {
        let msg = volley::PreparedMessage::text(format!("publication {i}"));
        assert_eq!(parking.send(id, &msg), volley::park::Sent::Written);
    }
    assert_eq!(parking.len(), 1, "still parked");
    for i in 0..50 {
        let got = within(client.recv()).await.unwrap().unwrap();
        assert_eq!(got, Message::text(format!("publication {i}")));
    }
    // Still parked, and the same connection: it comes back when its peer speaks.
    client.send(Message::text("hello")).await.unwrap();
    let (mut ws, value) = within(parking.woken()).await.unwrap();
    assert_eq!(value, 7);
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("hello"));
    assert_eq!(parking.send(id, &volley::PreparedMessage::text("late")), volley::park::Sent::NotParked);
    ws.send(Message::text("bye")).await.unwrap();
    assert_eq!(within(client.recv()).await.unwrap().unwrap(), Message::text("bye"));
}

#[tokio::test]
async fn a_frame_the_socket_takes_in_part_goes_on_with_the_connection() {
    let parking = Parking::new().unwrap();
    let (mut raw, id) = parked_raw(&parking, Config::new(), ()).await;
    // The peer reads nothing: sooner or later the socket takes a frame in part.
    let payload = "x".repeat(100_000);
    let msg = volley::PreparedMessage::text(payload.clone());
    let mut sent = 0;
    let handed_back = loop {
        match parking.send(id, &msg) {
            volley::park::Sent::Written => sent += 1,
            volley::park::Sent::HandedBack => break true,
            volley::park::Sent::NotParked => break false,
        }
        assert!(sent < 10_000, "the socket never filled");
    };
    assert!(handed_back);
    assert_eq!(parking.send(id, &msg), volley::park::Sent::NotParked);
    let (mut ws, ()) = within(parking.woken()).await.unwrap();
    // Served again: the rest of the frame goes first, then what is sent next.
    let writer = tokio::spawn(async move {
        ws.send(Message::text("after")).await.unwrap();
        ws
    });
    for _ in 0..=sent {
        let (header, body) = within(read_frame(&mut raw)).await;
        assert_eq!(header & 0x0f, 1, "a text frame");
        assert_eq!(body, payload.as_bytes());
    }
    let (_, body) = within(read_frame(&mut raw)).await;
    assert_eq!(body, b"after");
    drop(writer.await.unwrap());
    let _ = raw.shutdown().await;
}

/// A keeper with a keepalive of its own: a `ping` text when due, a `pong` text back.
struct Pinger {
    every: Duration,
}

/// What a connection parked with a [`Pinger`] keeps.
#[derive(Debug, Default, PartialEq)]
struct Pings {
    sent: u32,
    answered: u32,
    owed: bool,
}

impl volley::park::Keeper<Pings> for Pinger {
    fn due(&self, p: &mut Pings) -> volley::park::Due {
        if p.owed {
            return volley::park::Due::Wake;
        }
        p.owed = true;
        p.sent += 1;
        let next = tokio::time::Instant::now() + self.every;
        volley::park::Due::Send(std::sync::Arc::new(volley::PreparedMessage::text("ping")), Some(next))
    }

    fn received(&self, p: &mut Pings, text: bool, payload: &[u8]) -> bool {
        if !(text && payload == b"pong") {
            return false;
        }
        p.owed = false;
        p.answered += 1;
        true
    }
}

/// A connection without the library's keepalive (a keeper never sees the others),
/// parked with a [`Pinger`] whose first deadline is 100 ms away.
async fn parked_with_pinger(parking: &Parking<Pings>) -> TcpStream {
    let (port, task) = server(Config::new().ping_interval(None)).await;
    let raw = raw_client(port).await;
    let at = tokio::time::Instant::now() + Duration::from_millis(100);
    park_until_ok(parking, task.await.unwrap(), Pings::default(), at);
    raw
}

#[tokio::test]
async fn a_keeper_pings_in_place_and_reads_the_pong_without_handing_back() {
    let parking = Parking::with_keeper(Pinger { every: Duration::from_millis(300) }).unwrap();
    let mut raw = parked_with_pinger(&parking).await;
    for _ in 0..3 {
        assert_eq!(within(read_frame(&mut raw)).await, (0x81, b"ping".to_vec()));
        raw.write_all(&masked(0x81, b"pong")).await.unwrap();
    }
    // Three rounds, and never handed back.
    assert_eq!(parking.len(), 1);
    assert!(tokio::time::timeout(Duration::from_millis(50), parking.woken()).await.is_err());
    // Not answered: the next deadline hands it back, with what the keeper counted.
    assert_eq!(within(read_frame(&mut raw)).await, (0x81, b"ping".to_vec()));
    let (mut ws, pings) = within(parking.woken()).await.unwrap();
    assert_eq!(pings, Pings { sent: 4, answered: 3, owed: true });
    // The connection is intact: the pongs read in place left nothing behind.
    raw.write_all(&masked(0x81, b"after")).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("after"));
    ws.send(Message::text("bye")).await.unwrap();
    assert_eq!(within(read_frame(&mut raw)).await, (0x81, b"bye".to_vec()));
}

#[tokio::test]
async fn what_the_keeper_does_not_handle_is_left_whole_for_the_task() {
    let parking = Parking::with_keeper(Pinger { every: Duration::from_secs(3600) }).unwrap();
    // Another message: handed back with it unread.
    let mut raw = parked_with_pinger(&parking).await;
    assert_eq!(within(read_frame(&mut raw)).await, (0x81, b"ping".to_vec()));
    raw.write_all(&masked(0x81, b"hello")).await.unwrap();
    let (mut ws, pings) = within(parking.woken()).await.unwrap();
    assert_eq!(pings, Pings { sent: 1, answered: 0, owed: true });
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("hello"));
    // A pong with something after it in the same write: neither is read in place.
    let mut raw = parked_with_pinger(&parking).await;
    assert_eq!(within(read_frame(&mut raw)).await, (0x81, b"ping".to_vec()));
    let mut both = masked(0x81, b"pong");
    both.extend(masked(0x81, b"more"));
    raw.write_all(&both).await.unwrap();
    let (mut ws, pings) = within(parking.woken()).await.unwrap();
    assert_eq!(pings.answered, 0);
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("pong"));
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("more"));
    // A pong in a fragment, and an unmasked one: left to the parser (which fails the
    // connection for the second).
    let mut raw = parked_with_pinger(&parking).await;
    assert_eq!(within(read_frame(&mut raw)).await, (0x81, b"ping".to_vec()));
    raw.write_all(&masked(0x01, b"po")).await.unwrap();
    let (mut ws, _) = within(parking.woken()).await.unwrap();
    raw.write_all(&masked(0x80, b"ng")).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("pong"));
    let mut raw = parked_with_pinger(&parking).await;
    assert_eq!(within(read_frame(&mut raw)).await, (0x81, b"ping".to_vec()));
    raw.write_all(&[0x81, 0x04, b'p', b'o', b'n', b'g']).await.unwrap();
    let (mut ws, _) = within(parking.woken()).await.unwrap();
    assert!(within(ws.recv()).await.unwrap().is_err());
    // And a peer that goes away.
    let raw = parked_with_pinger(&parking).await;
    drop(raw);
    let (mut ws, _) = within(parking.woken()).await.unwrap();
    assert!(within(ws.recv()).await.is_none_or(|r| r.is_err()));
}

#[tokio::test]
async fn a_connection_with_the_librarys_keepalive_is_not_given_to_the_keeper() {
    let parking = Parking::with_keeper(Pinger { every: Duration::from_secs(3600) }).unwrap();
    let (port, task) = server(Config::new().ping_interval(Some(Duration::from_secs(3600)))).await;
    let mut raw = raw_client(port).await;
    let at = tokio::time::Instant::now() + Duration::from_millis(100);
    park_until_ok(&parking, task.await.unwrap(), Pings::default(), at);
    // Its deadline hands it back, nothing written; a pong is not read in place.
    let (ws, pings) = within(parking.woken()).await.unwrap();
    assert_eq!(pings, Pings::default());
    let at = tokio::time::Instant::now() + Duration::from_secs(3600);
    park_until_ok(&parking, ws, pings, at);
    raw.write_all(&masked(0x81, b"pong")).await.unwrap();
    let (mut ws, pings) = within(parking.woken()).await.unwrap();
    assert_eq!(pings, Pings::default());
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("pong"));
}
