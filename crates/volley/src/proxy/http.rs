//! HTTP `CONNECT` tunnels: the request (with Basic `Proxy-Authorization`) and the
//! proxy's response head, read without consuming a byte past it.

use std::io;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{malformed, proxy_error, Proxy, ProxyError, Target};
use crate::error::Error;

/// The largest HTTP response head accepted from a proxy, in bytes.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The most header fields accepted in a proxy's HTTP response head.
const MAX_RESPONSE_HEADERS: usize = 64;

pub(super) fn http_hint(status: u16, sent_credentials: bool) -> &'static str {
    match (status, sent_credentials) {
        (401 | 407, false) => " (the proxy wants credentials: give user:password in the proxy URL)",
        // Some proxies (tinyproxy) answer wrong credentials with 401 rather than 407.
        (401 | 407, true) => " (the proxy rejected the credentials)",
        _ => "",
    }
}

pub(super) async fn http_connect(tcp: &mut TcpStream, proxy: &Proxy, target: &Target, port: u16) -> Result<(), Error> {
    let authority = target.authority(port);
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, pass)) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let (status, reason) = read_response_head(tcp).await?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let sent_credentials = proxy.credentials.is_some();
    Err(proxy_error(ProxyError::HttpStatus { status, reason, target: authority, sent_credentials }))
}

/// Reads an HTTP response head and consumes nothing after it: bytes are peeked, and
/// read (consumed) only once they are known to belong to the head.
async fn read_response_head(tcp: &mut TcpStream) -> Result<(u16, String), Error> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let room = (MAX_RESPONSE_HEAD - head.len()).min(buf.len());
        if room == 0 {
            return Err(malformed(format!("the HTTP proxy's response head exceeds {MAX_RESPONSE_HEAD} bytes")));
        }
        let n = tcp.peek(&mut buf[..room]).await?;
        if n == 0 {
            let msg = if head.is_empty() {
                "the HTTP proxy closed the connection without answering CONNECT"
            } else {
                "the HTTP proxy closed the connection in the middle of its response head"
            };
            return Err(Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, msg)));
        }
        let before = head.len();
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                // Both are set once the parse is complete.
                let status = response.code.unwrap_or_default();
                let reason = response.reason.unwrap_or_default().to_string();
                // `len - before <= n`: these bytes are in the socket's buffer.
                tcp.read_exact(&mut buf[..len - before]).await?;
                return Ok((status, reason));
            }
            Ok(httparse::Status::Partial) => {
                // Every peeked byte belongs to the head: consume them all.
                tcp.read_exact(&mut buf[..n]).await?;
            }
            Err(httparse::Error::TooManyHeaders) => {
                let msg = format!("the HTTP proxy's response head has more than {MAX_RESPONSE_HEADERS} header fields");
                return Err(malformed(msg));
            }
            Err(e) => {
                let start = String::from_utf8_lossy(&head[..head.len().min(32)]).into_owned();
                return Err(malformed(format!("the proxy's answer to CONNECT is not HTTP ({e}): {start:?}")));
            }
        }
    }
}
