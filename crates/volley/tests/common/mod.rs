//! Helpers shared by the integration tests: a loopback listener, a raw client that
//! performs the opening handshake by hand, and frame encoding/decoding for writing
//! and reading bytes on the wire directly.
#![allow(dead_code)]

pub mod process;

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use volley::proto::handshake::{ClientRequest, Request, Response};
use volley::proto::Config as ProtoConfig;

/// Upper bound for any single wait in the tests, so that a regression fails instead of
/// hanging the suite.
pub const LIMIT: Duration = Duration::from_secs(5);

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut).await.expect("the test timed out")
}

/// A listener on 127.0.0.1 with an ephemeral port.
pub async fn bind() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// `ws://127.0.0.1:{port}{path}`.
pub fn url(port: u16, path: &str) -> String {
    format!("ws://127.0.0.1:{port}{path}")
}

/// Performs the client side of the opening handshake by hand on `io` (request built
/// with `ClientRequest`, answer checked with `parse_response`), consuming exactly the
/// 101 head.
pub async fn raw_client_handshake<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    let config = ProtoConfig::default();
    let request = ClientRequest::new("127.0.0.1", "/", &config);
    io.write_all(&request.encode()).await.unwrap();
    let buf = read_head(io).await;
    let (response, used) = request.parse_response(&buf, &config).unwrap().unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(used, buf.len());
}

/// Reads an HTTP head byte by byte, so that nothing after it is consumed (frames the
/// peer sends right after its head stay in the socket for the test to read).
pub async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Vec<u8> {
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = io.read(&mut byte).await.unwrap();
        assert!(n > 0, "EOF during the opening handshake");
        buf.push(byte[0]);
    }
    buf
}

/// Connects a raw TCP client to `port` and performs the opening handshake.
pub async fn raw_client(port: u16) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    raw_client_handshake(&mut tcp).await;
    tcp
}

/// Performs the server side of the opening handshake by hand (for tests that need a
/// server that misbehaves afterwards), consuming exactly the request head.
pub async fn raw_server_handshake(tcp: &mut TcpStream) {
    let config = ProtoConfig::default();
    let buf = read_head(tcp).await;
    let (request, used) = Request::parse(&buf, &config).unwrap().unwrap();
    assert_eq!(used, buf.len());
    tcp.write_all(&Response::accept(&request).encode()).await.unwrap();
}

/// Encodes one frame. `first` is the first header byte (FIN, RSV, opcode); a `mask`
/// makes it a client frame.
pub fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    frame(first, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// A close frame body: code then reason.
pub fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason.as_bytes());
    body
}

/// Reads one unmasked (server) frame: the first header byte and the payload.
pub async fn read_frame<S: AsyncRead + Unpin>(io: &mut S) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            io.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            io.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

/// Reads until end of stream, returning what arrived (`Err` if the read failed).
pub async fn read_to_eof<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await?;
    Ok(rest)
}
