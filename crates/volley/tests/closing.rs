//! The end of a connection: the closing handshake in both directions, close codes,
//! failing the connection on a peer's protocol fault (close frame with the right code,
//! then the end of the stream with the error), which side closes TCP, and the close
//! timeout.
//!
//! The close-timeout tests run on tokio's paused clock (`start_paused`): it moves only
//! when every task waits, straight to the next timer, so they measure the timeout the
//! library applies, not how busy the machine is. The tests that show a close does NOT
//! wait for the timeout set one far longer than the test's own limit instead.

mod common;

use std::time::Duration;

use common::{bind, close_body, masked, raw_client, raw_server_handshake, read_frame, read_to_eof, url, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use volley::proto::ProtocolError;
use volley::{ClientBuilder, CloseCode, CloseFrame, Config, Error, Message, ServerBuilder, Timeout};

/// Accepts one connection with `config` and collects every item the stream yields
/// until it ends, with the time from accept to the end (on tokio's clock).
fn collecting_server(listener: TcpListener, config: Config) -> JoinHandle<(Vec<Result<Message, Error>>, Duration)> {
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap();
        let start = Instant::now();
        let mut items = Vec::new();
        while let Some(item) = ws.recv().await {
            items.push(item);
        }
        (items, start.elapsed())
    })
}

/// On tokio's paused clock, `elapsed` is the configured `timeout` (timers fire on whole
/// milliseconds, so a deadline may land a millisecond later).
fn about(elapsed: Duration, timeout: Duration) -> bool {
    elapsed >= timeout && elapsed <= timeout + Duration::from_millis(2)
}

fn close_msg(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame::new(CloseCode(code), reason)))
}

// ---- the closing handshake -----------------------------------------------------------

#[tokio::test]
async fn client_close_delivers_code_and_reason_then_end_of_stream() {
    let (listener, port) = bind().await;
    let server = collecting_server(listener, Config::new());
    // A close timeout far past the test's limit: close() returning Ok (a timeout would
    // be an error) shows the server closed the TCP connection, rather than the client
    // giving up waiting.
    let (mut ws, _) = within(
        ClientBuilder::new(url(port, "/")).config(Config::new().close_timeout(Duration::from_secs(3600))).connect(),
    )
    .await
    .unwrap();
    let closed = within(ws.close(CloseCode::NORMAL, "bye")).await;
    assert!(closed.is_ok(), "{closed:?}");
    assert!(within(ws.recv()).await.is_none());

    let (items, _) = within(server).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(*items[0].as_ref().unwrap(), close_msg(1000, "bye"));
}

#[tokio::test]
async fn server_echoes_close_and_shuts_down_tcp_first() {
    let (listener, port) = bind().await;
    let server = collecting_server(listener, Config::new());
    let mut raw = raw_client(port).await;
    raw.write_all(&masked(0x88, &close_body(1000, "bye"))).await.unwrap();
    // The echo carries the same code...
    let (first, payload) = within(read_frame(&mut raw)).await;
    assert_eq!(first, 0x88);
    assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    // ...and then the server closes the TCP connection while we keep ours open.
    let rest = within(read_to_eof(&mut raw)).await.unwrap();
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");

    let (items, _) = within(server).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(*items[0].as_ref().unwrap(), close_msg(1000, "bye"));
}

#[tokio::test]
async fn server_initiated_close_completes_on_both_sides() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // Past the test's limit: the close completes on the client's answer, not on this.
        let config = Config::new().close_timeout(Duration::from_secs(3600));
        let mut ws = ServerBuilder::new().config(config).accept(tcp).await.unwrap();
        ws.send(Message::text("last words")).await.unwrap();
        let result = ws.close(CloseCode::GOING_AWAY, "shutting down").await;
        let after = ws.recv().await.map(|r| r.map_err(|e| e.to_string()));
        (result.map_err(|e| e.to_string()), after)
    });
    let (mut ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = within(ws.recv()).await {
        items.push(item.unwrap());
    }
    assert_eq!(items, vec![Message::text("last words"), close_msg(1001, "shutting down")]);
    let (result, after) = within(server).await.unwrap();
    assert_eq!(result, Ok(()));
    assert_eq!(after, None);
}

#[tokio::test]
async fn application_close_code_4000_is_echoed() {
    let (listener, port) = bind().await;
    let server = collecting_server(listener, Config::new());
    let (mut ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();
    within(ws.send(close_msg(4000, "app says bye"))).await.unwrap();
    let echo = within(ws.recv()).await.unwrap().unwrap();
    match echo {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode(4000)),
        other => panic!("expected the close echo, got {other:?}"),
    }
    assert!(within(ws.recv()).await.is_none());
    let (items, _) = within(server).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(*items[0].as_ref().unwrap(), close_msg(4000, "app says bye"));
}

#[tokio::test]
async fn close_frame_without_body_is_received_as_none() {
    let (listener, port) = bind().await;
    let server = collecting_server(listener, Config::new());
    let mut raw = raw_client(port).await;
    raw.write_all(&masked(0x88, &[])).await.unwrap();
    let (first, payload) = within(read_frame(&mut raw)).await;
    assert_eq!(first, 0x88);
    assert!(payload.is_empty(), "an empty close is echoed empty: {payload:?}");
    let (items, _) = within(server).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(*items[0].as_ref().unwrap(), Message::Close(None));
}

// ---- protocol faults -----------------------------------------------------------------

/// Sends `bytes` from a raw client after the handshake to a server with `config`;
/// checks the server answers with a close frame carrying `code`, then ends the raw
/// client's side (EOF, no close frame) and returns the server's stream items.
async fn fault(bytes: &[u8], config: Config, code: u16) -> Vec<Result<Message, Error>> {
    let (listener, port) = bind().await;
    let server = collecting_server(listener, config);
    let mut raw = raw_client(port).await;
    raw.write_all(bytes).await.unwrap();
    let mut close = [0u8; 4];
    within(raw.read_exact(&mut close)).await.unwrap();
    let [hi, lo] = code.to_be_bytes();
    assert_eq!(close, [0x88, 0x02, hi, lo], "expected a close frame with {code}");
    raw.shutdown().await.unwrap();
    let rest = within(read_to_eof(&mut raw)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let (items, _) = within(server).await.unwrap();
    items
}

fn ends_with_protocol_error(items: &[Result<Message, Error>]) -> &ProtocolError {
    match items.last() {
        Some(Err(Error::Protocol(e))) => e,
        _ => panic!("the stream should end with Error::Protocol, got {items:?}"),
    }
}

#[tokio::test]
async fn unmasked_client_frame_fails_with_1002() {
    let items = fault(&[0x81, 0x02, b'h', b'i'], Config::new(), 1002).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(*ends_with_protocol_error(&items), ProtocolError::UnmaskedFrame);
}

#[tokio::test]
async fn invalid_utf8_text_fails_with_1007() {
    let mut bytes = masked(0x81, b"fine");
    bytes.extend(masked(0x81, &[b'o', b'k', 0xce, 0xba, 0xff, 0xfe]));
    let items = fault(&bytes, Config::new(), 1007).await;
    // The valid message before the fault is still delivered, then the error.
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(*items[0].as_ref().unwrap(), Message::text("fine"));
    assert_eq!(*ends_with_protocol_error(&items), ProtocolError::InvalidUtf8);
}

#[tokio::test]
async fn frame_over_max_frame_size_fails_with_1009() {
    let items = fault(&masked(0x82, &[7u8; 100]), Config::new().max_frame_size(16), 1009).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(matches!(ends_with_protocol_error(&items), ProtocolError::FrameTooBig { size: 100, max: 16 }), "{items:?}");
}

#[tokio::test]
async fn reserved_opcode_fails_with_1002() {
    let items = fault(&masked(0x83, b"?"), Config::new(), 1002).await;
    assert!(matches!(ends_with_protocol_error(&items), ProtocolError::ReservedOpcode(3)), "{items:?}");
}

#[tokio::test]
async fn server_closes_tcp_after_peer_answers_failure_close() {
    let (listener, port) = bind().await;
    // A close timeout far past the test's limit: the end of the stream within that
    // limit shows the server closed TCP on the peer's answer, not on the timeout.
    let server = collecting_server(listener, Config::new().close_timeout(Duration::from_secs(3600)));
    let mut raw = raw_client(port).await;
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let (first, payload) = within(read_frame(&mut raw)).await;
    assert_eq!((first, payload), (0x88, vec![0x03, 0xea]));
    // A well-behaved peer answers the close frame; the server then closes TCP at once,
    // while the raw client keeps its side open.
    raw.write_all(&masked(0x88, &close_body(1002, ""))).await.unwrap();
    let rest = within(read_to_eof(&mut raw)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let (items, _) = within(server).await.unwrap();
    assert!(items.iter().all(|i| !matches!(i, Ok(m) if m.is_data())), "{items:?}");
}

#[tokio::test]

async fn protocol_error_stays_last_item_when_peer_answers_close() {
    let (listener, port) = bind().await;
    let server = collecting_server(listener, Config::new());
    let mut raw = raw_client(port).await;
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let (first, _) = within(read_frame(&mut raw)).await;
    assert_eq!(first, 0x88);
    raw.write_all(&masked(0x88, &close_body(1002, ""))).await.unwrap();
    let _ = within(read_to_eof(&mut raw)).await;
    let (items, _) = within(server).await.unwrap();
    // The connection was failed because of the peer's fault: the application must
    // learn why, whether or not the peer answered the close frame.
    assert_eq!(*ends_with_protocol_error(&items), ProtocolError::UnmaskedFrame);
}

// ---- timeouts ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn close_timeout_ends_recv_when_peer_never_answers() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = Config::new().close_timeout(Duration::from_millis(200));
        let mut ws = ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap();
        ws.send(close_msg(1000, "")).await.unwrap();
        let start = Instant::now();
        let mut items = Vec::new();
        while let Some(item) = ws.recv().await {
            items.push(item);
        }
        (items, start.elapsed())
    });
    let mut raw = raw_client(port).await;
    // Reads the server's close frame and never answers nor closes.
    let (first, _) = within(read_frame(&mut raw)).await;
    assert_eq!(first, 0x88);
    let (items, elapsed) = within(server).await.unwrap();
    assert!(matches!(items.as_slice(), [Err(Error::Timeout(Timeout::Close))]), "{items:?}");
    assert!(about(elapsed, Duration::from_millis(200)), "{elapsed:?}");
    drop(raw);
}

#[tokio::test(start_paused = true)]
async fn close_returns_timeout_when_peer_never_answers() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = Config::new().close_timeout(Duration::from_millis(200));
        let mut ws = ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap();
        let start = Instant::now();
        let result = ws.close(CloseCode::NORMAL, "").await;
        (result, start.elapsed())
    });
    let mut raw = raw_client(port).await;
    let (first, _) = within(read_frame(&mut raw)).await;
    assert_eq!(first, 0x88);
    let (result, elapsed) = within(server).await.unwrap();
    assert!(matches!(result, Err(Error::Timeout(Timeout::Close))), "{result:?}");
    assert!(about(elapsed, Duration::from_millis(200)), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]

async fn server_shuts_down_tcp_when_close_times_out() {
    let (listener, port) = bind().await;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = Config::new().close_timeout(Duration::from_millis(200));
        let mut ws = ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap();
        let _ = ws.close(CloseCode::NORMAL, "").await;
        assert!(ws.recv().await.is_none());
        // The stream has ended; the application still holds the WebSocket.
        let _ = done_rx.await;
        drop(ws);
    });
    let mut raw = raw_client(port).await;
    let (first, _) = within(read_frame(&mut raw)).await;
    assert_eq!(first, 0x88);
    // "By then the close frames have been flushed and the TCP connection shut down":
    // the server closes its side once it stops waiting for our close frame (on the
    // paused clock, this timeout fires only if the close timeout did not end it).
    let eof = tokio::time::timeout(Duration::from_secs(2), read_to_eof(&mut raw)).await;
    let _ = done_tx.send(());
    server.await.unwrap();
    assert!(eof.is_ok(), "the server kept the TCP connection open after the close timeout");
}

#[tokio::test(start_paused = true)]
async fn client_gives_up_waiting_for_server_tcp_close_after_close_timeout() {
    let (listener, port) = bind().await;
    // A server that answers the close frame but never closes the TCP connection.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        raw_server_handshake(&mut tcp).await;
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x88);
        let mut rest = vec![0u8; 4 + (head[1] & 0x7f) as usize];
        tcp.read_exact(&mut rest).await.unwrap();
        tcp.write_all(&[0x88, 0x02, 0x03, 0xe8]).await.unwrap();
        let _ = done_rx.await;
    });
    let (mut ws, _) = within(
        ClientBuilder::new(url(port, "/")).config(Config::new().close_timeout(Duration::from_millis(200))).connect(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let result = within(ws.close(CloseCode::NORMAL, "")).await;
    let elapsed = start.elapsed();
    // The close frames were exchanged, so the close itself succeeded; only the wait
    // for the server's TCP close was cut short.
    assert!(result.is_ok(), "{result:?}");
    assert!(about(elapsed, Duration::from_millis(200)), "{elapsed:?}");
    assert!(within(ws.recv()).await.is_none());
    let _ = done_tx.send(());
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn protocol_fault_with_silent_peer_ends_with_protocol_error_after_close_timeout() {
    let (listener, port) = bind().await;
    let server = collecting_server(listener, Config::new().close_timeout(Duration::from_millis(200)));
    let mut raw = raw_client(port).await;
    raw.write_all(&[0x82, 0x01, 0x00]).await.unwrap();
    let (first, payload) = within(read_frame(&mut raw)).await;
    assert_eq!((first, payload), (0x88, vec![0x03, 0xea]));
    // Neither answers nor closes: the server gives up after the close timeout, and the
    // cause it reports is the fault, not the timeout.
    let (items, elapsed) = within(server).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(*ends_with_protocol_error(&items), ProtocolError::UnmaskedFrame);
    assert!(about(elapsed, Duration::from_millis(200)), "{elapsed:?}");
    drop(raw);
}
