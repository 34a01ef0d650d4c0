//! Writes are corked: an echo loop that `feed`s every message it receives answers a
//! whole batch of input with a few vectored writes, not one write per message, and
//! answers what one read brought before it reads again.

mod common;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use common::{masked, raw_client_handshake, within};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use volley::{accept, Message, WebSocket};

/// A transport over a duplex pipe that hands at most `max_read` bytes to each read and
/// records, in `log`, every read that returned bytes (`R`) and every write that
/// completed (`W`), in order, and in `rooms` the room each such read was offered.
struct Tap {
    inner: DuplexStream,
    probe: Arc<Probe>,
}

/// What a [`Tap`] records, shared with the test.
struct Probe {
    max_read: AtomicUsize,
    log: Mutex<String>,
    rooms: Mutex<Vec<usize>>,
}

impl Tap {
    fn new(inner: DuplexStream) -> (Tap, Arc<Probe>) {
        let probe =
            Arc::new(Probe { max_read: AtomicUsize::new(usize::MAX), log: Mutex::default(), rooms: Mutex::default() });
        (Tap { inner, probe: probe.clone() }, probe)
    }

    fn wrote<T>(&self, r: Poll<T>) -> Poll<T> {
        if r.is_ready() {
            self.probe.log.lock().unwrap().push('W');
        }
        r
    }
}

impl Probe {
    /// Forgets what was recorded so far (the opening handshake's read and write).
    fn clear(&self) {
        self.log.lock().unwrap().clear();
        self.rooms.lock().unwrap().clear();
    }
}

impl AsyncRead for Tap {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        let mut chunk = vec![0; room.min(self.probe.max_read.load(Ordering::SeqCst))];
        let mut limited = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        if !limited.filled().is_empty() {
            buf.put_slice(limited.filled());
            self.probe.log.lock().unwrap().push('R');
            self.probe.rooms.lock().unwrap().push(room);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tap {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The README's echo loop: `feed` every data message back until the connection ends;
/// returns how many it echoed.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> usize {
    let mut echoed = 0;
    while let Some(item) = ws.recv().await {
        let msg = item.unwrap();
        if msg.is_data() {
            ws.feed(msg).await.unwrap();
            echoed += 1;
        }
    }
    echoed
}

/// An unmasked text frame of a short payload, as the server echoes it.
fn echo_of(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

/// `n` numbered text messages of 12 bytes: the masked frames a client sends (18 bytes
/// each), and the server's echo of them, in order.
fn numbered_texts(n: usize) -> (Vec<u8>, Vec<u8>) {
    let payloads: Vec<String> = (0..n).map(|i| format!("message #{i:03}")).collect();
    let batch = payloads.iter().flat_map(|p| masked(0x81, p.as_bytes())).collect();
    let expected = payloads.iter().flat_map(|p| echo_of(p.as_bytes())).collect();
    (batch, expected)
}

/// Sends a masked close frame (1000) and returns everything the server sends until
/// its EOF.
async fn close(client: &mut DuplexStream) -> Vec<u8> {
    client.write_all(&masked(0x88, &[0x03, 0xe8])).await.unwrap();
    let mut rest = Vec::new();
    within(client.read_to_end(&mut rest)).await.unwrap();
    rest
}

#[tokio::test]
async fn echo_loop_answers_100_pipelined_frames_with_few_writes() {
    const N: usize = 100;
    let (client_io, server_io): (DuplexStream, DuplexStream) = tokio::io::duplex(256 << 10);
    let (io, probe) = Tap::new(server_io);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let server_probe = probe.clone();
    let server = tokio::spawn(async move {
        let mut ws = accept(io).await.unwrap();
        // Count only what the echo loop writes, not the 101 answer.
        server_probe.clear();
        ready_tx.send(()).unwrap();
        echo(&mut ws).await
    });

    let mut client = client_io;
    raw_client_handshake(&mut client).await;
    within(ready_rx).await.unwrap();

    // 100 small masked frames in ONE write; the echo: the same 100 frames, unmasked,
    // in order.
    let (batch, expected) = numbered_texts(N);
    client.write_all(&batch).await.unwrap();
    let mut echoed = vec![0u8; expected.len()];
    within(client.read_exact(&mut echoed)).await.unwrap();
    assert!(echoed == expected, "the echo is not the 100 frames in order");

    let count = probe.log.lock().unwrap().matches('W').count();
    assert!(count <= 3, "100 echoed messages took {count} writes; they should be batched");

    // Close cleanly: a masked close, then the echo and the server's EOF.
    assert_eq!(close(&mut client).await, vec![0x88, 0x02, 0x03, 0xe8]);
    assert_eq!(within(server).await.unwrap(), N);
}

#[tokio::test]
async fn echoed_messages_are_byte_identical_through_a_duplex_pipe() {
    // The same corked echo loop over tokio::io::duplex with a volley client, checking
    // Message-level equality for mixed kinds.
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    let server = tokio::spawn(async move {
        let mut ws = accept(server_io).await.unwrap();
        echo(&mut ws).await;
    });
    let (mut ws, _) = within(volley::ClientBuilder::new("ws://localhost/").handshake(client_io)).await.unwrap();
    let msgs: Vec<Message> = (0..50)
        .map(|i| if i % 2 == 0 { Message::text(format!("t{i}")) } else { Message::binary(vec![i as u8; i]) })
        .collect();
    for m in &msgs {
        ws.feed(m.clone()).await.unwrap();
    }
    within(ws.flush()).await.unwrap();
    for m in &msgs {
        assert_eq!(&within(ws.recv()).await.unwrap().unwrap(), m);
    }
    within(ws.close(volley::CloseCode::NORMAL, "")).await.unwrap();
    within(server).await.unwrap();
}

#[tokio::test]
async fn echo_loop_answers_each_read_before_reading_again() {
    // 40 frames of 18 bytes arrive at once, but the transport hands over 5 frames per
    // read: the replies to those 5 go out before the next read, not held back until
    // the input runs dry (a client that streams without pause would otherwise wait
    // for its replies until the write buffer filled).
    const N: usize = 40;
    const FRAMES_PER_READ: usize = 5;
    let (client_io, server_io) = tokio::io::duplex(256 << 10);
    let (io, probe) = Tap::new(server_io);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let server_probe = probe.clone();
    let server = tokio::spawn(async move {
        let mut ws = accept(io).await.unwrap();
        server_probe.max_read.store(FRAMES_PER_READ * 18, Ordering::SeqCst);
        server_probe.clear();
        ready_tx.send(()).unwrap();
        echo(&mut ws).await;
    });

    let mut client = client_io;
    raw_client_handshake(&mut client).await;
    within(ready_rx).await.unwrap();
    let (batch, expected) = numbered_texts(N);
    assert_eq!(batch.len(), N * 18);
    client.write_all(&batch).await.unwrap();

    let mut echoed = vec![0u8; expected.len()];
    within(client.read_exact(&mut echoed)).await.unwrap();
    assert!(echoed == expected, "the echo is not the {N} frames in order");

    let seen = probe.log.lock().unwrap().clone();
    assert_eq!(seen.matches('R').count(), N / FRAMES_PER_READ, "reads: {seen}");
    assert!(!seen.contains("RR"), "a read came before the replies to the one before it were written: {seen}");

    assert_eq!(close(&mut client).await, vec![0x88, 0x02, 0x03, 0xe8]);
    within(server).await.unwrap();
}

#[tokio::test]
async fn reads_grow_while_the_peer_streams_and_shrink_back_when_it_does_not() {
    const BASE: usize = 1024;
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (io, probe) = Tap::new(server_io);
    let server = tokio::spawn(async move {
        let config = volley::Config::new().read_buffer_size(BASE);
        let mut ws = volley::ServerBuilder::new().config(config).accept(io).await.unwrap();
        echo(&mut ws).await;
    });
    let mut client = client_io;
    raw_client_handshake(&mut client).await;

    // 64 KiB of small frames at once: the reads grow past the configured size.
    let payload = [b'x'; 100];
    let streamed: Vec<u8> = (0..600).flat_map(|_| masked(0x81, &payload)).collect();
    client.write_all(&streamed).await.unwrap();
    let mut echoed = vec![0u8; 600 * echo_of(&payload).len()];
    within(client.read_exact(&mut echoed)).await.unwrap();
    let grown = probe.rooms.lock().unwrap().iter().copied().max().unwrap();
    assert!(grown >= 4 * BASE, "reads stayed at {grown} bytes while the input streamed");
    assert!(grown <= 16 * BASE, "reads grew to {grown} bytes, past 8x the configured {BASE} (with slack)");

    // Then one message at a time: the reads come back to the configured size.
    for _ in 0..4 {
        client.write_all(&masked(0x81, b"ping")).await.unwrap();
        let mut one = vec![0u8; echo_of(b"ping").len()];
        within(client.read_exact(&mut one)).await.unwrap();
        assert_eq!(one, echo_of(b"ping"));
    }
    let last = *probe.rooms.lock().unwrap().last().unwrap();
    assert!(last <= 2 * BASE, "a lone message was read into {last} bytes of room");

    close(&mut client).await;
    within(server).await.unwrap();
}

#[tokio::test]
async fn grown_reads_stop_at_256_kib() {
    // 64 KiB reads may grow to 256 KiB, not to 8 × 64 KiB.
    const BASE: usize = 64 << 10;
    let (client_io, server_io) = tokio::io::duplex(4 << 20);
    let (io, probe) = Tap::new(server_io);
    let server = tokio::spawn(async move {
        let config = volley::Config::new().read_buffer_size(BASE);
        let mut ws = volley::ServerBuilder::new().config(config).accept(io).await.unwrap();
        let mut received = 0;
        while let Some(item) = ws.recv().await {
            if item.unwrap().is_data() {
                received += 1;
            }
        }
        received
    });
    let mut client = client_io;
    raw_client_handshake(&mut client).await;
    // 3 MiB of 100-byte frames, written at once; nothing is echoed.
    let frames = 3 * (1 << 20) / 106;
    let streamed: Vec<u8> = (0..frames).flat_map(|_| masked(0x82, &[7; 100])).collect();
    client.write_all(&streamed).await.unwrap();
    close(&mut client).await;
    assert_eq!(within(server).await.unwrap(), frames);
    let grown = probe.rooms.lock().unwrap().iter().copied().max().unwrap();
    assert!(grown >= 2 * BASE, "reads stayed at {grown} bytes while the input streamed");
    assert!(grown <= 256 << 10, "reads grew to {grown} bytes, past 256 KiB");
}
