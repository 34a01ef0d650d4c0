//! Split connections over real TCP on 127.0.0.1: reading, keepalive and the closing
//! handshake go on while a writer waits; the connection closes when every half is
//! gone; a writer half checks what it is given as the unsplit connection does; a
//! writer half is a `Sink`.

mod common;

use std::time::Duration;

use common::{bind, raw_client, url, within};
use futures_util::SinkExt;
use tokio::net::TcpStream;
use volley::proto::SendError;
use volley::{CloseCode, CloseFrame, Config, Error, Message, WebSocket};

/// A generous bound for tests that move tens of MiB through debug builds on a busy
/// machine: it only turns a hang (the regression these tests guard) into a failure.
const HANG: Duration = Duration::from_secs(120);

/// A server-side connection (accepted with `config`) and a client connected to it.
async fn pair(config: Config) -> (WebSocket<TcpStream>, WebSocket<volley::MaybeTlsStream>) {
    pair_with(config, Config::new().deflate(None)).await
}

/// `pair`, with the client's configuration too.
async fn pair_with(config: Config, client_config: Config) -> (WebSocket<TcpStream>, WebSocket<volley::MaybeTlsStream>) {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        volley::ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap()
    });
    let (client, _) = volley::ClientBuilder::new(url(port, "/")).config(client_config).connect().await.unwrap();
    (within(server).await.unwrap(), client)
}

/// Reads a connection (or a reader half) to its end; the last item.
async fn last_item<T>(stream: &mut (impl futures_core::Stream<Item = T> + Unpin)) -> Option<T> {
    let mut last = None;
    while let Some(item) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await {
        last = Some(item);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_split_peers_streaming_64_mib_each_way_at_once_both_finish() {
    const CHUNK: usize = 64 << 10;
    const COUNT: usize = 1024; // 64 MiB each way
    let config = Config::new().deflate(None).write_buffer_size(2 * CHUNK * COUNT);
    let (server, client) = pair_with(config.clone(), config).await;
    let mut tasks = Vec::new();
    for ws in [server.split().unwrap(), client.split().unwrap()] {
        let (mut read, write) = ws;
        // Each side writes without pause while the other does too: neither can finish
        // unless both keep reading while their writer waits for room.
        // Built up front, so that the writer always has the next message ready.
        let messages: Vec<Message> = (0..COUNT).map(|i| Message::binary(vec![i as u8; CHUNK])).collect();
        tasks.push(tokio::spawn(async move {
            for m in messages {
                write.feed(m).await.unwrap();
            }
            // The whole 64 MiB fits in the write buffer: the flush waits for it to be
            // written, far past what the sockets hold, so the peer must read meanwhile.
            write.flush().await.unwrap();
        }));
        tasks.push(tokio::spawn(async move {
            let mut received = 0;
            while received < COUNT {
                match read.recv().await {
                    Some(Ok(Message::Binary(b))) => {
                        assert_eq!(b.len(), CHUNK);
                        assert!(b.iter().all(|&x| x == received as u8), "message {received} in order");
                        received += 1;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("after {received} messages: {other:?}"),
                }
            }
        }));
    }
    // The readers finish (each received all 64 MiB); the writers finish (each flushed).
    tokio::time::timeout(HANG, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("split peers streaming both ways at once deadlocked");
}

#[tokio::test]
async fn a_writer_blocked_on_a_peer_that_stopped_reading_is_freed_by_the_pong_timeout() {
    let config = Config::new()
        .deflate(None)
        .write_buffer_size(64 << 10)
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(300))
        // The close frame cannot reach a peer that does not read: give up soon.
        .close_timeout(Duration::from_millis(500));
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        volley::ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap()
    });
    // A peer that completes the handshake, then never reads nor answers.
    let _silent = raw_client(port).await;
    let (mut read, write) = within(server).await.unwrap().split().unwrap();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        let message = Message::binary(vec![1u8; 64 << 10]);
        loop {
            // Each message flushed: the writer waits for the peer to read.
            if let Err(e) = write.send(message.clone()).await {
                return (sent, e);
            }
            sent += 1;
        }
    });
    // The writer blocks once the socket and the buffer are full; the keepalive still
    // runs, finds no pong, and ends the connection, which frees the writer.
    let (sent, err) = tokio::time::timeout(HANG, writer).await.expect("the blocked writer was never freed").unwrap();
    assert!(sent > 0);
    // The connection is closing (its close frame is queued), then gone.
    assert!(matches!(err, Error::Send(SendError::Closed) | Error::Closed), "{err}");
    let last = within(last_item(&mut read)).await;
    assert!(matches!(last, Some(Err(Error::Timeout(_)))), "{last:?}");
}

/// Waits until the runtime's live tasks drop back to `baseline`.
async fn tasks_back_to(baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    within(async {
        while metrics.num_alive_tasks() > baseline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn dropping_every_half_closes_the_connection_after_what_was_queued_and_ends_its_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    for reader_first in [true, false] {
        let (server, mut client) = pair(Config::new()).await;
        let baseline = metrics.num_alive_tasks();
        let (read, write) = server.split().unwrap();
        assert_eq!(metrics.num_alive_tasks(), baseline + 1, "the connection's task");
        let second = write.clone();
        for i in 0..3 {
            write.feed(Message::text(format!("queued {i}"))).await.unwrap();
        }
        if reader_first {
            drop(read);
            drop(write);
            // One writer is still alive: the connection stays open.
            second.send(Message::text("still open")).await.unwrap();
            drop(second);
        } else {
            drop(write);
            drop(second);
            // The reader alone keeps the connection open: it can still receive.
            client.send(Message::text("to the reader")).await.unwrap();
            let mut read = read;
            let got = within(read.recv()).await.unwrap().unwrap();
            assert_eq!(got, Message::text("to the reader"));
            drop(read);
        }
        // The client gets what was queued, then a close frame (1001), then the end.
        let mut texts = Vec::new();
        let last = within(async {
            loop {
                match client.recv().await {
                    Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
                    other => break other,
                }
            }
        })
        .await;
        let mut want: Vec<String> = (0..3).map(|i| format!("queued {i}")).collect();
        if reader_first {
            want.push("still open".into());
        }
        assert_eq!(texts, want);
        assert!(matches!(&last, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::GOING_AWAY), "{last:?}");
        assert!(within(client.recv()).await.is_none());
        // The connection's task has ended.
        tasks_back_to(baseline).await;
    }
}

#[tokio::test]
async fn a_broadcast_group_keeps_a_member_whose_halves_were_dropped_open() {
    let (server, mut client) = pair(Config::new()).await;
    let group = volley::Broadcast::new();
    let (read, write) = server.split().unwrap();
    let id = group.join(write);
    drop(read);
    // The group's writer half keeps the connection open and sending.
    assert_eq!(group.send(&volley::PreparedMessage::text("from the group")), 1);
    assert_eq!(within(client.recv()).await.unwrap().unwrap(), Message::text("from the group"));
    // Leaving the group drops the last half: the connection closes.
    group.leave(id);
    let last = within(last_item(&mut client)).await;
    assert!(matches!(&last, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::GOING_AWAY), "{last:?}");
}

/// The same misuse through `feed` on an unsplit connection and through a writer half
/// gives the same errors, in order.
#[tokio::test]
async fn a_write_half_refuses_what_the_unsplit_connection_refuses() {
    let long_reason = "r".repeat(124);
    let attempts = || {
        vec![
            Message::Ping(vec![0u8; 126].into()),
            Message::Pong(vec![0u8; 126].into()),
            Message::Close(Some(CloseFrame::new(CloseCode(1005), ""))),
            Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, long_reason.as_str()))),
            Message::Ping(vec![0u8; 125].into()),
            Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "bye"))),
            Message::text("after the close"),
            Message::Ping(vec![].into()),
        ]
    };
    let (mut unsplit, _client_a) = pair(Config::new()).await;
    let mut unsplit_results = Vec::new();
    for m in attempts() {
        unsplit_results.push(unsplit.feed(m).await.map_err(|e| e.to_string()));
    }
    let (server, mut client_b) = pair(Config::new()).await;
    let (_read, write) = server.split().unwrap();
    let mut split_results = Vec::new();
    for m in attempts() {
        split_results.push(write.feed(m).await.map_err(|e| e.to_string()));
    }
    assert_eq!(split_results, unsplit_results);
    let expected: Vec<Result<(), String>> = vec![
        Err(Error::Send(SendError::ControlFrameTooLong(126)).to_string()),
        Err(Error::Send(SendError::ControlFrameTooLong(126)).to_string()),
        Err(Error::Send(SendError::InvalidCloseCode(1005)).to_string()),
        Err(Error::Send(SendError::ControlFrameTooLong(126)).to_string()),
        Ok(()),
        Ok(()),
        Err(Error::Send(SendError::Closed).to_string()),
        Err(Error::Send(SendError::Closed).to_string()),
    ];
    assert_eq!(split_results, expected);
    // Only the valid ping and the close frame went out.
    write.flush().await.unwrap();
    let first = within(client_b.recv()).await.unwrap().unwrap();
    assert_eq!(first, Message::Ping(vec![0u8; 125].into()));
    let last = within(last_item(&mut client_b)).await;
    assert!(matches!(&last, Some(Ok(Message::Close(Some(f)))) if f.reason.as_str() == "bye"), "{last:?}");
    // Once the connection has ended, writers learn it.
    within(async {
        while !write.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(matches!(write.feed(Message::text("late")).await, Err(Error::Closed)));
}

#[tokio::test]
async fn a_write_half_is_a_sink() {
    let (server, mut client) = pair(Config::new()).await;
    let (_read, mut write) = server.split().unwrap();
    for i in 0..10 {
        write.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    SinkExt::send(&mut write, Message::text("last")).await.unwrap();
    for i in 0..10 {
        assert_eq!(within(client.recv()).await.unwrap().unwrap(), Message::text(format!("m{i}")));
    }
    assert_eq!(within(client.recv()).await.unwrap().unwrap(), Message::text("last"));
    // Closing the sink sends a close frame (1000) and flushes it.
    SinkExt::close(&mut write).await.unwrap();
    let last = within(last_item(&mut client)).await;
    assert!(matches!(&last, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::NORMAL), "{last:?}");
    assert!(matches!(SinkExt::send(&mut write, Message::text("late")).await, Err(Error::Send(_) | Error::Closed)));
}

#[test]
fn split_outside_a_runtime_is_an_error() {
    let (io, _peer) = tokio::io::duplex(64);
    // No timers either: creating those needs a runtime too.
    let config = Config::new().ping_interval(None);
    let ws = WebSocket::from_handshaken(io, volley::Role::Server, config, &[], None, None);
    assert!(matches!(ws.split(), Err(Error::NoRuntime)));
}

#[tokio::test]
async fn reunite_refuses_halves_that_do_not_belong_together() {
    let (a, _client_a) = pair(Config::new()).await;
    let (b, _client_b) = pair(Config::new()).await;
    let (read_a, write_a) = a.split().unwrap();
    let (read_b, write_b) = b.split().unwrap();
    let err = read_a.reunite::<TcpStream>(write_b).await.unwrap_err();
    assert!(err.to_string().contains("different connections"), "{err}");
    let (read_a, write_b) = (err.read, err.write);
    let err = read_a.reunite::<tokio::io::DuplexStream>(write_a.clone()).await.unwrap_err();
    assert!(err.to_string().contains("another type"), "{err}");
    let err = err.read.reunite::<TcpStream>(err.write).await.unwrap_err();
    assert!(err.to_string().contains("other clones"), "{err}");
    drop((err, write_a, write_b, read_b));
}

#[tokio::test]
async fn reunited_halves_are_the_connection_again_with_what_the_writer_queued() {
    let (server, mut client) = pair(Config::new().write_buffer_size(4 << 10)).await;
    let (read, write) = server.split().unwrap();
    // A message received and not handed out keeps the halves apart until it is: it
    // is never lost, whichever side of the reunion it lands on.
    client.send(Message::text("first")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // (it has arrived by now, almost surely)
    let (read, write) = match read.reunite::<TcpStream>(write).await {
        Err(e) => {
            assert!(e.to_string().contains("not handed out"), "{e}");
            let mut read = e.read;
            assert_eq!(within(read.recv()).await.unwrap().unwrap(), Message::text("first"));
            (read, e.write)
        }
        Ok(mut ws) => {
            assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("first"));
            ws.split().unwrap()
        }
    };
    let line = |i: usize| Message::text(format!("{i}:{}", "x".repeat(1000)));
    for i in 0..20 {
        write.feed(line(i)).await.unwrap();
    }
    let mut ws = read.reunite::<TcpStream>(write).await.unwrap();
    assert_eq!(ws.info().remote_addr().map(|a| a.ip().to_string()).as_deref(), Some("127.0.0.1"), "info is back");
    ws.send(Message::text("after")).await.unwrap();
    for i in 0..20 {
        assert_eq!(within(client.recv()).await.unwrap().unwrap(), line(i));
    }
    assert_eq!(within(client.recv()).await.unwrap().unwrap(), Message::text("after"));
    client.send(Message::text("to the reunited")).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("to the reunited"));
}
