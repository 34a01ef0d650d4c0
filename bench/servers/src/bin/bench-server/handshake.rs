//! The minimal server side of the opening handshake, for the servers whose library
//! leaves it to the application (fastwebsockets' direct path, the raw ceiling): read the
//! request head, answer 101 with the Sec-WebSocket-Accept of its key. No extension or
//! subprotocol is negotiated.

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 << 10;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads the upgrade request and answers 101. The client waits for the answer before
/// sending frames, so nothing follows the request head.
pub async fn handshake(tcp: &mut TcpStream) -> std::io::Result<()> {
    // Read straight into a heap buffer: a stack buffer held across the read would
    // stay in the connection task's future, and so in its memory, for its whole life.
    let mut buf = Vec::with_capacity(1024);
    let key = loop {
        if buf.len() >= MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf).map_err(|_| invalid("malformed request"))? {
            httparse::Status::Partial => continue,
            httparse::Status::Complete(len) if len == buf.len() => {
                let key = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"));
                break key.ok_or_else(|| invalid("no Sec-WebSocket-Key"))?.value.to_vec();
            }
            httparse::Status::Complete(_) => return Err(invalid("data after the request head")),
        }
    };
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(&key);
    sha1.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(response.as_bytes()).await
}
