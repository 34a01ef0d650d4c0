//! A connection whose peer stops reading, over real TCP on 127.0.0.1: a fragment waits
//! for room instead of spinning, a close frame never goes ahead of the data queued
//! before it, and a close frame is never lost when the backlog is dropped.

mod common;

use std::time::Duration;

use common::{bind, masked, raw_client, read_frame, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volley::{CloseCode, Config, Message, MessageKind, SlowReader, WebSocket};

/// A server connection with a 64 KiB write buffer and no compression, and a raw peer
/// that completed the handshake and reads only when the test says so.
async fn stalled(config: Config) -> (WebSocket<TcpStream>, TcpStream) {
    let (listener, port) = bind().await;
    let config = config.write_buffer_size(64 << 10).deflate(None);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        volley::ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap()
    });
    let raw = raw_client(port).await;
    (within(server).await.unwrap(), raw)
}

/// Feeds 64 KiB messages until the write buffer is full and stays full (the socket's
/// buffers are full too); returns how many were queued.
async fn fill(ws: &mut WebSocket<TcpStream>) -> usize {
    let mut queued = 0;
    loop {
        let before = ws.dropped_messages();
        match tokio::time::timeout(Duration::from_millis(200), ws.feed(Message::binary(vec![3u8; 64 << 10]))).await {
            Ok(r) => r.unwrap(),
            Err(_) => return queued, // waiting for room (SlowReader::Wait)
        }
        if ws.dropped_messages() > before {
            return queued; // dropped for want of room (SlowReader::DropNewest)
        }
        queued += 1;
    }
}

/// Reads frames up to the end of the stream: (opcode, payload) each.
async fn frames_to_eof(raw: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    loop {
        let mut first = [0u8; 1];
        if raw.peek(&mut first).await.unwrap() == 0 {
            return frames;
        }
        let (op, payload) = read_frame(raw).await;
        if op & 0x0f == 0x8 {
            // Answer the close so the server ends the handshake at once.
            let _ = raw.write_all(&masked(0x88, &payload[..2.min(payload.len())])).await;
        }
        frames.push((op, payload));
    }
}

#[test]
fn a_fragment_waits_for_room_under_drop_newest_instead_of_spinning() {
    // A current-thread runtime on a thread of its own: a fragment that spins instead of
    // waiting never yields, so the runtime hangs; the test thread notices.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = rt.block_on(async {
            let (mut ws, mut raw) = stalled(Config::new().slow_reader(SlowReader::DropNewest)).await;
            fill(&mut ws).await;
            let dropped = ws.dropped_messages();
            let first = bytes::Bytes::from(vec![5u8; 64 << 10]);
            // The buffer is full: the fragment waits (it may not be dropped) ...
            let waited = tokio::time::timeout(
                Duration::from_millis(300),
                ws.feed_fragment(MessageKind::Binary, first.clone(), false),
            )
            .await;
            assert!(waited.is_err(), "the fragment must wait for room");
            assert_eq!(ws.dropped_messages(), dropped, "waiting is not dropping");
            // ... and goes once the peer reads; the message arrives whole.
            let reader = tokio::spawn(async move {
                loop {
                    let (op, payload) = read_frame(&mut raw).await;
                    if op == 0x02 {
                        assert_eq!(payload.len(), 64 << 10);
                        let (op, last) = read_frame(&mut raw).await;
                        return (op, payload[0], last);
                    }
                }
            });
            // Cancelled before it queued anything, the fragment is sent again.
            let sender = async {
                ws.feed_fragment(MessageKind::Binary, first, false).await.unwrap();
                ws.feed_fragment(MessageKind::Binary, bytes::Bytes::from_static(b"end"), true).await.unwrap();
                ws.flush().await.unwrap();
            };
            within(sender).await;
            within(reader).await.unwrap()
        });
        let _ = done.send(r);
    });
    let (op, first_byte, last) =
        result.recv_timeout(Duration::from_secs(60)).expect("feed_fragment spun instead of waiting: the runtime hung");
    assert_eq!((op, first_byte, last.as_slice()), (0x80, 5, &b"end"[..]));
}

#[tokio::test]
async fn a_close_frame_follows_the_data_queued_before_it_even_behind_a_backlog() {
    let (mut ws, mut raw) = stalled(Config::new()).await;
    let queued = fill(&mut ws).await;
    assert!(queued > 0);
    // The transport is backed up (control frames would jump the queue); the close
    // frame must still come after every data frame queued before it (§5.5.1).
    let closing = tokio::spawn(async move { ws.close(CloseCode::NORMAL, "bye").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frames = within(frames_to_eof(&mut raw)).await;
    within(closing).await.unwrap().unwrap();
    let close_at = frames.iter().position(|(op, _)| op & 0x0f == 0x8).expect("a close frame");
    let after: Vec<(u8, usize)> = frames[close_at + 1..].iter().map(|(op, p)| (*op, p.len())).collect();
    assert!(after.is_empty(), "frames (opcode, length) after the close frame: {after:?}");
    assert_eq!(&frames[close_at].1[2..], b"bye");
    let data: usize = frames.iter().filter(|(op, _)| op & 0x0f == 0x2).map(|(_, p)| p.len()).sum();
    assert_eq!(data, queued * (64 << 10), "every message queued before the close arrived");
}

#[tokio::test]
async fn a_close_frame_queued_behind_a_backlog_is_not_lost_when_the_backlog_is_dropped() {
    let config =
        Config::new().ping_interval(Some(Duration::from_millis(100))).pong_timeout(Duration::from_millis(1500));
    let (mut ws, mut raw) = stalled(config).await;
    fill(&mut ws).await;
    let server = tokio::spawn(async move {
        // Keep the connection running until its keepalive ping is out (at 100 ms)...
        let _ = tokio::time::timeout(Duration::from_millis(600), ws.recv()).await;
        // ...then close: the close frame waits behind the backlog. The pong deadline
        // passes, and the connection drops its backlog to fail at once.
        ws.close(CloseCode::NORMAL, "bye").await
    });
    // The peer reads nothing until the pong deadline has passed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let frames = within(frames_to_eof(&mut raw)).await;
    let result = within(server).await.unwrap();
    assert!(matches!(result, Err(volley::Error::Timeout(_))), "{result:?}");
    // The backlog was dropped, but a close frame still ends the stream: ours was
    // discarded with the backlog, so the keepalive's (1011) replaces it.
    let (op, payload) = frames.last().expect("frames");
    assert_eq!(op & 0x0f, 0x8, "the stream must end with a close frame, not just EOF");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1011);
    assert_eq!(frames.iter().filter(|(op, _)| op & 0x0f == 0x8).count(), 1, "one close frame");
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).await.unwrap_or(0), 0);
}

#[tokio::test]
async fn a_pong_or_close_frame_fed_under_drop_newest_is_never_dropped() {
    for split in [false, true] {
        let (mut ws, mut raw) = stalled(Config::new().slow_reader(SlowReader::DropNewest)).await;
        fill(&mut ws).await;
        let dropped = ws.dropped_messages();
        let pong = Message::Pong(bytes::Bytes::from_static(b"unsolicited"));
        let close = Message::Close(Some(volley::CloseFrame::new(CloseCode::NORMAL, "bye")));
        let _keep = if split {
            let (read, write) = ws.split().unwrap();
            within(write.feed(pong)).await.unwrap();
            within(write.feed(close)).await.unwrap();
            assert_eq!(write.dropped_messages(), 0, "split: nothing dropped");
            Some((read, write))
        } else {
            within(ws.feed(pong)).await.unwrap();
            within(ws.feed(close)).await.unwrap();
            assert_eq!(ws.dropped_messages(), dropped, "nothing more dropped");
            // The connection must run to write its backlog.
            tokio::spawn(async move { while ws.recv().await.is_some() {} });
            None
        };
        let frames = within(frames_to_eof(&mut raw)).await;
        let ops: Vec<u8> = frames.iter().map(|(op, _)| op & 0x0f).filter(|op| *op != 0x2).collect();
        assert_eq!(ops, [0xA, 0x8], "split {split}: the pong, then the close frame");
        assert_eq!(&frames.last().unwrap().1[2..], b"bye");
    }
}
