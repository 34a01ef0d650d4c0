//! Messages between a volley client and a volley server over real TCP on 127.0.0.1:
//! every kind and size arrives unchanged and in order, through the inherent methods
//! and through the `Stream`/`Sink` traits.

mod common;

use common::{bind, url, within};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use volley::{CloseCode, CloseFrame, Error, Message};

/// Accepts one connection and echoes every data message (with `feed`, so replies are
/// corked); returns everything else the stream yielded, in order.
fn echo_server(listener: TcpListener) -> JoinHandle<Vec<Result<Message, String>>> {
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = volley::accept(tcp).await.unwrap();
        let mut others = Vec::new();
        while let Some(item) = ws.recv().await {
            match item {
                Ok(msg) if msg.is_data() => ws.feed(msg).await.unwrap(),
                Ok(msg) => others.push(Ok(msg)),
                Err(e) => others.push(Err(e.to_string())),
            }
        }
        others
    })
}

#[tokio::test]
async fn text_binary_and_empty_messages_round_trip_unchanged() {
    let (listener, port) = bind().await;
    let server = echo_server(listener);
    let (mut ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();

    let sent = vec![
        Message::text("hello"),
        Message::text("héllo wörld — 你好, мир 🦀🎉"),
        Message::binary(vec![0u8, 1, 2, 0xfe, 0xff]),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::text("after the empty ones"),
    ];
    for msg in &sent {
        within(ws.send(msg.clone())).await.unwrap();
        let got = within(ws.recv()).await.unwrap().unwrap();
        assert_eq!(&got, msg);
    }
    // A non-ASCII text comes back as the same string, not just the same bytes.
    within(ws.send(Message::text("ünïcödé ✓"))).await.unwrap();
    match within(ws.recv()).await.unwrap().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "ünïcödé ✓"),
        other => panic!("expected text, got {other:?}"),
    }

    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    let others = within(server).await.unwrap();
    assert_eq!(others, vec![Ok(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, ""))))]);
}

#[tokio::test]
async fn five_mib_binary_message_round_trips() {
    let (listener, port) = bind().await;
    let server = echo_server(listener);
    let (mut ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();

    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i ^ (i >> 8) ^ (i >> 16)) as u8).collect();
    within(ws.send(Message::binary(big.clone()))).await.unwrap();
    match within(ws.recv()).await.unwrap().unwrap() {
        Message::Binary(b) => {
            assert_eq!(b.len(), big.len());
            assert!(b == big, "the 5 MiB payload came back altered");
        }
        other => panic!("expected binary, got {:?}", other.into_data().len()),
    }
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    within(server).await.unwrap();
}

#[tokio::test]
async fn thousand_fed_messages_flushed_once_arrive_in_order() {
    const N: usize = 1000;
    let (listener, port) = bind().await;
    // The server checks the order itself, then echoes them all.
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = volley::accept(tcp).await.unwrap();
        for i in 0..N {
            let msg = ws.recv().await.unwrap().unwrap();
            assert_eq!(msg, Message::text(format!("message {i}")));
            ws.feed(msg).await.unwrap();
        }
        ws.flush().await.unwrap();
        let last = ws.recv().await.unwrap().unwrap();
        assert!(matches!(last, Message::Close(_)));
        assert!(ws.recv().await.is_none());
    });

    let (mut ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();
    for i in 0..N {
        ws.feed(Message::text(format!("message {i}"))).await.unwrap();
    }
    assert!(ws.buffered_amount() > 0, "feed must not write by itself");
    within(ws.flush()).await.unwrap();
    assert_eq!(ws.buffered_amount(), 0);
    for i in 0..N {
        let msg = within(ws.recv()).await.unwrap().unwrap();
        assert_eq!(msg, Message::text(format!("message {i}")));
    }
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    within(server).await.unwrap();
}

#[tokio::test]
async fn pings_are_answered_with_pongs_automatically() {
    let (listener, port) = bind().await;
    let server = echo_server(listener);
    let (mut ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();

    within(ws.send(Message::Ping("are you there".into()))).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::Pong("are you there".into()));
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    let others = within(server).await.unwrap();
    // The server's application saw the ping too (the pong was sent for it).
    assert_eq!(others[0], Ok(Message::Ping("are you there".into())));
}

#[tokio::test]
async fn stream_and_sink_traits_send_and_receive() {
    let (listener, port) = bind().await;
    let server = echo_server(listener);
    let (mut ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();

    // Sink::send and Stream::next.
    within(SinkExt::send(&mut ws, Message::text("via sink"))).await.unwrap();
    assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::text("via sink"));

    // Sink::feed + Sink::flush, and send_all from a stream.
    within(SinkExt::feed(&mut ws, Message::binary(vec![1, 2, 3]))).await.unwrap();
    within(SinkExt::flush(&mut ws)).await.unwrap();
    let mut batch = futures_util::stream::iter((0..10).map(|i| Ok(Message::text(format!("{i}")))));
    within(ws.send_all(&mut batch)).await.unwrap();

    let received: Vec<Message> = within((&mut ws).take(11).map(|r| r.unwrap()).collect::<Vec<_>>()).await;
    let mut expected = vec![Message::binary(vec![1, 2, 3])];
    expected.extend((0..10).map(|i| Message::text(format!("{i}"))));
    assert_eq!(received, expected);

    // Sink::close sends a 1000 close frame; the stream then ends with the echo.
    within(SinkExt::close(&mut ws)).await.unwrap();
    let rest: Vec<_> = within(ws.by_ref().collect::<Vec<_>>()).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(*rest[0].as_ref().unwrap(), Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, ""))));
    assert!(within(ws.next()).await.is_none());

    let others = within(server).await.unwrap();
    assert_eq!(others, vec![Ok(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, ""))))]);
}

#[tokio::test]
async fn sending_after_the_connection_closed_is_an_error() {
    let (listener, port) = bind().await;
    let server = echo_server(listener);
    let (mut ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    let err = within(ws.send(Message::text("too late"))).await.unwrap_err();
    assert!(matches!(err, Error::Closed | Error::Send(_)), "unexpected error {err:?}");
    assert!(within(ws.recv()).await.is_none());
    within(server).await.unwrap();
}
