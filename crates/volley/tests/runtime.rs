//! The runtime features over real TCP on 127.0.0.1: connection info and ids,
//! keepalive and round-trip time, pong/idle/lifetime timeouts against a peer that stops
//! answering or a dead TCP peer, slow-reader policies with a reader that stops reading,
//! control frames ahead of a backlog, split halves across tasks, cancel safety, and
//! broadcast of prepared messages.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{bind, masked, raw_client, read_frame, url, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volley::{Broadcast, CloseCode, Config, Error, Message, PreparedMessage, SlowReader};

/// Accepts one connection on a fresh listener with `config`; returns the port and the
/// server-side WebSocket once a client connects.
async fn server(config: Config) -> (u16, tokio::task::JoinHandle<volley::WebSocket<TcpStream>>) {
    let (listener, port) = bind().await;
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        volley::ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap()
    });
    (port, task)
}

#[tokio::test]
async fn the_handshake_hook_sees_the_remote_address() {
    let (listener, port) = bind().await;
    let task = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let mut seen = None;
        let ws = volley::ServerBuilder::new()
            .hook(|req, _| {
                seen = req.remote_addr();
                // Refuse one address range, as a server with an allow-list would.
                if req.remote_addr().is_some_and(|a| a.ip().is_unspecified()) {
                    return Err(volley::Rejection::new(403));
                }
                Ok(())
            })
            .accept_tcp(tcp)
            .await
            .unwrap();
        (peer, seen, ws.info().remote_addr())
    });
    let (client, _) = volley::ClientBuilder::new(url(port, "/")).no_proxy().connect().await.unwrap();
    let (peer, seen, recorded) = task.await.unwrap();
    assert_eq!(seen, Some(peer), "the hook saw the peer's address");
    assert_eq!(recorded, Some(peer));
    assert_eq!(client.info().local_addr(), Some(peer));
}

#[tokio::test]
async fn connection_info_has_ids_addresses_target_headers_and_user_data() {
    let (port, task) = server(Config::new()).await;
    let (client, _) =
        volley::ClientBuilder::new(url(port, "/room/7?x=1")).header("X-Team", "blue").connect().await.unwrap();
    let mut ws = task.await.unwrap();
    let info = ws.info().clone();
    assert_eq!(info.path(), "/room/7");
    assert_eq!(info.target(), "/room/7?x=1");
    assert_eq!(info.headers().get("x-team"), Some("blue"));
    assert_eq!(info.remote_addr().unwrap().ip().to_string(), "127.0.0.1");
    assert_eq!(info.local_addr().unwrap().port(), port);
    assert_eq!(info.http_version(), http::Version::HTTP_11);
    assert!(info.extensions()[0].name == "permessage-deflate");
    assert_ne!(info.id(), client.info().id(), "ids are unique");
    #[derive(Clone, Debug, PartialEq)]
    struct User(&'static str);
    ws.user_data_mut().insert(User("ada"));
    assert_eq!(ws.user_data().get::<User>(), Some(&User("ada")));
    // A server that read what it needs frees the headers; the rest stays.
    ws.drop_request_headers();
    assert!(ws.info().headers().is_empty() && ws.info().headers().get("x-team").is_none());
    assert_eq!(ws.info().target(), "/room/7?x=1");
    assert_eq!(ws.info().id(), info.id());
}

#[tokio::test]
async fn keepalive_pings_measure_round_trip_time() {
    let config = Config::new().ping_interval(Some(Duration::from_millis(50)));
    let started = tokio::time::Instant::now();
    let (port, task) = server(config).await;
    let (mut client, _) = volley::connect(&url(port, "/")).await.unwrap();
    let mut ws = task.await.unwrap();
    // The client answers pings while it reads.
    let reader = tokio::spawn(async move { while client.recv().await.is_some() {} });
    within(async {
        loop {
            tokio::select! {
                msg = ws.recv() => assert!(matches!(msg, Some(Ok(Message::Pong(_)))), "unexpected {msg:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if ws.rtt().is_some() {
                break;
            }
        }
    })
    .await;
    // A ping's round trip cannot take longer than the whole exchange so far.
    let rtt = ws.rtt().unwrap();
    assert!(rtt <= started.elapsed(), "{rtt:?}");
    reader.abort();
}

// The keepalive tests run on tokio's paused clock: it moves only when every task waits,
// straight to the next timer, so the elapsed time is the one the timers set.
#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_answering_is_closed_after_the_pong_timeout() {
    let config = Config::new().ping_interval(Some(Duration::from_millis(50))).pong_timeout(Duration::from_millis(100));
    let (port, task) = server(config).await;
    // A raw client that completes the handshake and then never reads nor answers.
    let _silent = raw_client(port).await;
    let mut ws = task.await.unwrap();
    let started = tokio::time::Instant::now();
    let last = within(last_item(&mut ws)).await;
    assert!(matches!(last, Some(Err(Error::Timeout(volley::Timeout::KeepalivePong)))), "{last:?}");
    // The first ping goes out after 50 ms, and its pong is given up on 100 ms later.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(150) && elapsed <= Duration::from_millis(152), "{elapsed:?}");
}

/// A TCP proxy that forwards until told to stop, then keeps both connections open and
/// silent: to the endpoints the peer is dead (no FIN, no RST, no data).
async fn blackhole_proxy(target: u16) -> (u16, Arc<tokio::sync::Notify>) {
    let (listener, port) = bind().await;
    let kill = Arc::new(tokio::sync::Notify::new());
    let k = kill.clone();
    tokio::spawn(async move {
        let (a, _) = listener.accept().await.unwrap();
        let b = TcpStream::connect(("127.0.0.1", target)).await.unwrap();
        let (mut ar, mut aw) = a.into_split();
        let (mut br, mut bw) = b.into_split();
        let pump = async {
            tokio::join!(async { tokio::io::copy(&mut ar, &mut bw).await.ok() }, async {
                tokio::io::copy(&mut br, &mut aw).await.ok()
            })
        };
        tokio::select! {
            _ = pump => {}
            _ = k.notified() => {}
        }
        // Hold the sockets open, silent, for a while.
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop((ar, aw, br, bw));
    });
    (port, kill)
}

#[tokio::test(start_paused = true)]
async fn a_dead_tcp_peer_is_detected_by_keepalive() {
    let (listener, port) = bind().await;
    let (proxy, kill) = blackhole_proxy(port).await;
    let client = tokio::spawn(async move {
        let config =
            Config::new().ping_interval(Some(Duration::from_millis(50))).pong_timeout(Duration::from_millis(150));
        let (ws, _) = volley::ClientBuilder::new(url(proxy, "/")).config(config).connect().await.unwrap();
        ws
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let server = volley::accept(tcp).await.unwrap();
    let mut ws = client.await.unwrap();
    // It works through the proxy, then the peer dies.
    ws.send(Message::text("hi")).await.unwrap();
    kill.notify_one();
    let started = tokio::time::Instant::now();
    let last = within(last_item(&mut ws)).await;
    assert!(matches!(last, Some(Err(Error::Timeout(volley::Timeout::KeepalivePong)))), "{last:?}");
    // Within a ping interval plus the pong timeout: a dead peer does not hold the client
    // until the proxy lets go of the sockets (10 s).
    let elapsed = started.elapsed();
    assert!(elapsed <= Duration::from_millis(202), "{elapsed:?}");
    drop(server);
}

#[tokio::test]
async fn idle_timeout_and_max_lifetime_close_with_1001() {
    for config in [
        Config::new().idle_timeout(Some(Duration::from_millis(100))),
        Config::new().max_lifetime(Some(Duration::from_millis(100))),
    ] {
        let (port, task) = server(config).await;
        let (mut client, _) = volley::connect(&url(port, "/")).await.unwrap();
        let mut ws = task.await.unwrap();
        let server_side = tokio::spawn(async move { while ws.recv().await.is_some() {} });
        let last = within(last_item(&mut client)).await;
        match last {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
            other => panic!("{other:?}"),
        }
        within(server_side).await.unwrap();
    }
}

/// A server whose raw client never reads: the server's socket buffers fill up.
async fn stalled(config: Config) -> (volley::WebSocket<TcpStream>, TcpStream) {
    let (port, task) = server(config.write_buffer_size(64 << 10).deflate(None)).await;
    let raw = raw_client(port).await;
    (task.await.unwrap(), raw)
}

/// Reads frames up to the close frame; returns its code and the data bytes before it.
/// Reads a connection (or its reader half) to its end; the last item.
async fn last_item<T>(stream: &mut (impl futures_core::Stream<Item = T> + Unpin)) -> Option<T> {
    let mut last = None;
    while let Some(item) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await {
        last = Some(item);
    }
    last
}

async fn close_code_after_data(raw: &mut TcpStream) -> (u16, usize) {
    let mut seen = 0;
    loop {
        let (op, payload) = read_frame(raw).await;
        if op & 0x0f == 0x8 {
            return (u16::from_be_bytes([payload[0], payload[1]]), seen);
        }
        seen += payload.len();
    }
}

#[tokio::test]
async fn slow_reader_wait_applies_backpressure() {
    let (mut ws, _raw) = stalled(Config::new()).await;
    let big = Message::binary(vec![7u8; 64 << 10]);
    let blocked = tokio::time::timeout(Duration::from_millis(500), async {
        for _ in 0..200 {
            ws.feed(big.clone()).await.unwrap();
        }
    })
    .await;
    assert!(blocked.is_err(), "feed must wait once the peer stops reading");
    assert!(ws.buffered_amount() >= 64 << 10);
}

#[tokio::test]
async fn slow_reader_drop_newest_drops_and_counts() {
    let (mut ws, _raw) = stalled(Config::new().slow_reader(SlowReader::DropNewest)).await;
    let big = Message::binary(vec![7u8; 64 << 10]);
    within(async {
        for _ in 0..200 {
            ws.feed(big.clone()).await.unwrap();
        }
    })
    .await;
    assert!(ws.dropped_messages() > 100, "{}", ws.dropped_messages());
}

#[tokio::test]
async fn slow_reader_close_discards_the_backlog_and_sends_the_close_first() {
    let (mut ws, mut raw) = stalled(Config::new().slow_reader(SlowReader::Close(CloseCode::POLICY_VIOLATION))).await;
    let big = Message::binary(vec![7u8; 64 << 10]);
    let err = within(async {
        loop {
            if let Err(e) = ws.feed(big.clone()).await {
                return e;
            }
        }
    })
    .await;
    assert!(matches!(err, Error::SlowReader(CloseCode::POLICY_VIOLATION)), "{err}");
    // The reader wakes up: it gets what was already in flight, then the close frame,
    // long before the hundreds of KiB that were queued.
    let server_side = tokio::spawn(async move { last_item(&mut ws).await });
    let (code, seen) = within(close_code_after_data(&mut raw)).await;
    assert_eq!(code, 1008);
    assert!(seen < 8 << 20, "{seen} bytes before the close");
    raw.write_all(&masked(0x88, &1008u16.to_be_bytes())).await.unwrap();
    // The policy's error went to the writer (the `feed` above); the stream itself ends
    // with the peer's answer to our close frame, as after any close we start.
    let last = within(server_side).await.unwrap();
    assert!(matches!(&last, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::POLICY_VIOLATION), "{last:?}");
}

#[tokio::test]
async fn a_split_writer_waits_for_a_slow_reader_and_resumes_as_it_reads() {
    let (ws, mut raw) = stalled(Config::new()).await;
    let (_read, write) = ws.split().unwrap();
    let chunk = 64 << 10;
    let total = 100;
    let writer = tokio::spawn(async move {
        for i in 0..total {
            write.feed(Message::binary(vec![i as u8; chunk])).await.unwrap();
        }
        write.flush().await.unwrap();
        write
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "feed must wait once the peer stops reading");
    // The peer starts reading: every message arrives, whole and in order, and the
    // writer is woken as the buffer drains (nothing else happens on the connection).
    within(async {
        for i in 0..total {
            let (op, payload) = read_frame(&mut raw).await;
            assert_eq!(op, 0x82);
            assert_eq!(payload.len(), chunk);
            assert!(payload.iter().all(|&b| b == i as u8), "message {i}");
        }
    })
    .await;
    let write = within(writer).await.unwrap();
    assert_eq!(write.buffered_amount(), 0);
    assert_eq!(write.dropped_messages(), 0);
}

#[tokio::test]
async fn a_split_writer_applies_drop_newest_and_close() {
    let (ws, _raw) = stalled(Config::new().slow_reader(SlowReader::DropNewest)).await;
    let (_read, write) = ws.split().unwrap();
    let big = Message::binary(vec![7u8; 64 << 10]);
    within(async {
        for _ in 0..200 {
            write.feed(big.clone()).await.unwrap();
        }
    })
    .await;
    assert!(write.dropped_messages() > 100, "{}", write.dropped_messages());

    let (ws, mut raw) = stalled(Config::new().slow_reader(SlowReader::Close(CloseCode::POLICY_VIOLATION))).await;
    let (mut read, write) = ws.split().unwrap();
    let err = within(async {
        loop {
            if let Err(e) = write.feed(big.clone()).await {
                return e;
            }
        }
    })
    .await;
    assert!(matches!(err, Error::SlowReader(CloseCode::POLICY_VIOLATION)), "{err}");
    // The close frame goes ahead of the discarded backlog; the reader half sees the end.
    let (code, seen) = within(close_code_after_data(&mut raw)).await;
    assert_eq!(code, 1008);
    assert!(seen < 8 << 20, "{seen} bytes before the close");
    raw.write_all(&masked(0x88, &1008u16.to_be_bytes())).await.unwrap();
    within(async { while read.recv().await.is_some() {} }).await;
    assert!(write.is_closed());
    assert!(matches!(write.feed(Message::text("late")).await, Err(Error::Closed)));
    assert!(matches!(write.flush().await, Err(Error::Closed)));
}

#[tokio::test]
async fn a_dropped_read_half_leaves_the_connection_running() {
    let (port, task) = server(Config::new()).await;
    let (mut client, _) = volley::connect(&url(port, "/")).await.unwrap();
    let ws = task.await.unwrap();
    let (read, write) = ws.split().unwrap();
    drop(read);
    // What arrives is discarded, pings are still answered, and the writer still sends.
    for i in 0..(3 * 256) {
        client.feed(Message::text(format!("ignored {i}"))).await.unwrap();
    }
    client.send(Message::Ping(bytes::Bytes::from_static(b"still there"))).await.unwrap();
    write.send(Message::text("from the writer")).await.unwrap();
    let mut got = Vec::new();
    within(async {
        while got.len() < 2 {
            let m = client.recv().await.unwrap().unwrap();
            if matches!(m, Message::Pong(_) | Message::Text(_)) {
                got.push(m);
            }
        }
    })
    .await;
    assert!(got.contains(&Message::Pong(bytes::Bytes::from_static(b"still there"))), "{got:?}");
    assert!(got.contains(&Message::text("from the writer")), "{got:?}");
    write.close(CloseCode::NORMAL, "bye").await.unwrap();
    let last = within(last_item(&mut client)).await;
    assert!(matches!(&last, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::NORMAL), "{last:?}");
}

#[tokio::test]
async fn pongs_go_ahead_of_a_backlog() {
    let (mut ws, mut raw) = stalled(Config::new()).await;
    // Fill the socket and the write buffer.
    let big = Message::binary(vec![1u8; 64 << 10]);
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            ws.feed(big.clone()).await.unwrap();
        }
    })
    .await;
    let backlog = ws.buffered_amount();
    assert!(backlog > 0);
    // The peer pings, then starts reading.
    raw.write_all(&masked(0x89, b"urgent")).await.unwrap();
    let server_side = tokio::spawn(async move {
        while let Some(item) = ws.recv().await {
            item?;
        }
        Ok::<_, Error>(())
    });
    within(async {
        loop {
            let (op, payload) = read_frame(&mut raw).await;
            if op & 0x0f == 0xA {
                assert_eq!(payload, b"urgent");
                return;
            }
        }
    })
    .await;
    // Without priority the pong would come after the whole backlog (nothing was fed
    // after the ping). With it, backlog data still follows the pong.
    let mut after = 0usize;
    while let Ok((_, payload)) = tokio::time::timeout(Duration::from_millis(300), read_frame(&mut raw)).await {
        after += payload.len();
        if after >= backlog / 2 {
            break;
        }
    }
    assert!(after >= backlog / 2, "only {after} bytes of a {backlog}-byte backlog came after the pong");
    server_side.abort();
}

#[tokio::test]
async fn split_halves_work_from_different_tasks() {
    let (port, task) = server(Config::new()).await;
    let (client, _) = volley::connect(&url(port, "/")).await.unwrap();
    let ws = task.await.unwrap();
    let (mut read, write) = ws.split().unwrap();
    // Server: echo through the halves, with the writer in another task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            write.send(m).await.unwrap();
        }
        write.close(CloseCode::NORMAL, "done").await.ok();
    });
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(Ok(m)) = read.recv().await {
            if m.is_data() {
                n += 1;
                tx.send(m).await.unwrap();
                if n == 100 {
                    break;
                }
            }
        }
        drop(tx);
        n
    });
    let (mut cread, cwrite) = client.split().unwrap();
    for i in 0..100 {
        cwrite.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    cwrite.flush().await.unwrap();
    for i in 0..100 {
        let m = within(cread.recv()).await.unwrap().unwrap();
        assert_eq!(m, Message::text(format!("m{i}")));
    }
    assert_eq!(within(reader).await.unwrap(), 100);
    within(writer).await.unwrap();
    let last = within(last_item(&mut cread)).await;
    assert!(matches!(&last, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::NORMAL), "{last:?}");
}

#[tokio::test]
async fn cancelled_reads_and_sends_lose_no_bytes() {
    let (port, task) = server(Config::new()).await;
    let (mut client, _) = volley::connect(&url(port, "/")).await.unwrap();
    let mut ws = task.await.unwrap();
    // The server echoes, reading with a recv that is cancelled over and over by a
    // short timer in select!.
    let echo = tokio::spawn(async move {
        let mut n = 0;
        while n < 300 {
            tokio::select! {
                msg = ws.recv() => match msg {
                    Some(Ok(m)) if m.is_data() => { ws.feed(m).await.unwrap(); n += 1; }
                    Some(Ok(_)) => {}
                    other => panic!("{other:?}"),
                },
                _ = tokio::time::sleep(Duration::from_micros(50)) => {}
            }
        }
        ws.flush().await.unwrap();
        ws
    });
    // The client sends with feeds that may be cancelled; it resends only what a
    // cancelled feed did not queue.
    let payload = |i: usize| Message::binary(vec![(i % 251) as u8; 1 + (i * 37) % 3000]);
    let mut i = 0;
    while i < 300 {
        tokio::select! {
            r = client.feed(payload(i)) => { r.unwrap(); i += 1; }
            _ = tokio::time::sleep(Duration::from_micros(30)) => {}
        }
    }
    client.flush().await.unwrap();
    for i in 0..300 {
        let got = within(client.recv()).await.unwrap().unwrap();
        assert_eq!(got, payload(i), "message {i}");
    }
    within(echo).await.unwrap();
}

/// Where each write to a transport came from: the address and length of every buffer
/// handed to `poll_write` or `poll_write_vectored`, to tell a shared allocation from a
/// copy.
type Writes = Arc<std::sync::Mutex<Vec<(usize, usize)>>>;

/// A TCP stream that records the buffers written to it ([`Writes`]).
struct Recording {
    tcp: TcpStream,
    writes: Writes,
}

impl tokio::io::AsyncRead for Recording {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Recording {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes.lock().unwrap().push((buf.as_ptr() as usize, buf.len()));
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes.lock().unwrap().extend(bufs.iter().map(|b| (b.as_ptr() as usize, b.len())));
        std::pin::Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn broadcast_sends_one_prepared_message_to_every_member() {
    let (listener, port) = bind().await;
    let group = Arc::new(Broadcast::new());
    let g = group.clone();
    let acceptor = tokio::spawn(async move {
        let mut members = Vec::new();
        for _ in 0..20 {
            let (tcp, _) = listener.accept().await.unwrap();
            // Half the members ask the server to compress without context takeover, so
            // the prepared compressed frame is valid for them; the others get the plain
            // frame.
            let writes = Writes::default();
            let io = Recording { tcp, writes: writes.clone() };
            let ws = volley::accept(io).await.unwrap();
            let compressed = ws.deflate().is_some_and(|p| p.server_no_context_takeover);
            let (read, write) = ws.split().unwrap();
            g.join(write);
            members.push((read, writes, compressed));
        }
        members
    });
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut d = volley::proto::DeflateConfig::default();
        d.remote_no_context_takeover = i % 2 == 0;
        let config = Config::new().deflate(Some(d));
        let (ws, _) = volley::ClientBuilder::new(url(port, "/")).config(config).connect().await.unwrap();
        clients.push(ws);
    }
    let members = within(acceptor).await.unwrap();
    assert_eq!(group.len(), 20);
    assert_eq!(members.iter().filter(|m| m.2).count(), 10);
    // Text that does not compress much: both frames stay above the size under which a
    // payload is copied into the connection's own buffer rather than referenced.
    let mut x: u32 = 1;
    let text: String = (0..4000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            format!("{:x}", x >> 12)
        })
        .collect();
    let msg = PreparedMessage::text(text.as_str()).with_deflate(12, 6);
    for (_, writes, _) in &members {
        writes.lock().unwrap().clear();
    }
    assert_eq!(group.send(&msg), 20);
    for c in &mut clients {
        assert_eq!(within(c.recv()).await.unwrap().unwrap(), Message::text(text.as_str()));
    }
    // Every member's socket was handed the prepared message's own bytes: the members
    // with context takeover its plain payload, the others one compressed payload, the
    // same allocation for all ten (compressed once, never copied).
    let plain = (msg.payload().as_ptr() as usize, msg.payload().len());
    let mut shared = None;
    for (_, writes, compressed) in &members {
        let writes = writes.lock().unwrap();
        if !compressed {
            assert!(writes.contains(&plain), "plain payload {plain:?} not among the writes {writes:?}");
            continue;
        }
        // The largest buffer written is the compressed payload.
        let body = *writes.iter().max_by_key(|w| w.1).unwrap();
        assert!(body.1 > 2 << 10 && body.1 < plain.1, "{body:?}: not the compressed payload");
        assert_eq!(*shared.get_or_insert(body), body, "a member was sent its own copy");
    }
    // Members that closed are dropped from the group.
    drop(clients);
    within(async {
        while !group.is_empty() {
            group.send(&msg);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn unread_bytes_are_not_lost_when_a_split_reader_is_slow() {
    let (port, task) = server(Config::new()).await;
    let mut raw = raw_client(port).await;
    let ws = task.await.unwrap();
    let (mut read, _write) = ws.split().unwrap();
    for i in 0..1000u32 {
        raw.write_all(&masked(0x82, &i.to_be_bytes())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..1000u32 {
        assert_eq!(within(read.recv()).await.unwrap().unwrap(), Message::binary(i.to_be_bytes().to_vec()));
    }
    let mut buf = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(50), raw.read(&mut buf)).await.is_err());
}
