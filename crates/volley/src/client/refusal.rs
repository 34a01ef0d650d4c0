//! A server's refusal of the client's opening handshake over HTTP/1.1: its head and the
//! start of its body, read into [`Error::Refused`].

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use volley_proto::HandshakeError;

use crate::error::{Error, MAX_REFUSAL_BODY};

/// How the body of a response ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// The refusal with status `status` whose complete head starts `buf` (the rest of
/// `buf` is the start of its body). The body is read from `io` until it ends,
/// [`MAX_REFUSAL_BODY`] bytes are in, the transport fails, or `deadline` passes; what
/// came by then is kept.
pub(super) async fn read<S: AsyncRead + Unpin>(
    io: &mut S,
    mut buf: BytesMut,
    status: u16,
    max_headers: usize,
    deadline: Instant,
) -> Error {
    let fallback = || Error::Handshake(HandshakeError::Status(status));
    let mut fields = vec![httparse::EMPTY_HEADER; max_headers];
    let mut parsed = httparse::Response::new(&mut fields);
    // The core has parsed this head already, with the same limits.
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(&buf) else {
        return fallback();
    };
    let Some(Ok(code)) = parsed.code.map(StatusCode::from_u16) else {
        return fallback();
    };
    let mut response = http::Response::new(Bytes::new());
    *response.status_mut() = code;
    *response.version_mut() = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    for field in parsed.headers.iter() {
        // A field that `http` cannot hold (a name with odd bytes) is left out.
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
        {
            response.headers_mut().append(name, value);
        }
    }
    let framing = framing(&response);
    buf.advance(head_len);
    let mut body = Vec::new();
    // An error or the deadline ends the body early: what came by then is kept.
    let _ = tokio::time::timeout_at(deadline, read_body(io, &mut buf, framing, &mut body)).await;
    body.truncate(MAX_REFUSAL_BODY);
    *response.body_mut() = Bytes::from(body);
    Error::Refused(Box::new(response))
}

/// How the body of `response` (to a GET) is delimited (RFC 9112 §6.3).
fn framing(response: &http::Response<Bytes>) -> Framing {
    let status = response.status();
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Framing::Empty;
    }
    let headers = response.headers();
    let chunked = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
    if chunked {
        return Framing::Chunked;
    }
    match headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse().ok()) {
        Some(len) => Framing::Length(len),
        None => Framing::Close,
    }
}

/// Reads more of the body into `raw`; `false` at the end of the stream.
async fn fill<S: AsyncRead + Unpin>(io: &mut S, raw: &mut BytesMut) -> std::io::Result<bool> {
    Ok(io.read_buf(raw).await? > 0)
}

/// Reads the body, as framed, into `body`: at most [`MAX_REFUSAL_BODY`] bytes (a few
/// more may be in `body` when it returns).
async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    raw: &mut BytesMut,
    framing: Framing,
    body: &mut Vec<u8>,
) -> std::io::Result<()> {
    let limited = |len: u64| usize::try_from(len).map_or(MAX_REFUSAL_BODY, |len| len.min(MAX_REFUSAL_BODY));
    match framing {
        Framing::Empty => {}
        Framing::Length(_) | Framing::Close => {
            let want = match framing {
                Framing::Length(len) => limited(len),
                _ => MAX_REFUSAL_BODY,
            };
            body.extend_from_slice(&raw[..raw.len().min(want)]);
            // Straight into `body`, so that what came is kept if the deadline passes.
            while body.len() < want {
                let rest = u64::try_from(want - body.len()).unwrap_or(u64::MAX);
                if (&mut *io).take(rest).read_buf(body).await? == 0 {
                    break;
                }
            }
        }
        Framing::Chunked => {
            while body.len() < MAX_REFUSAL_BODY {
                let (start, size) = match httparse::parse_chunk_size(raw) {
                    Ok(httparse::Status::Complete(chunk)) => chunk,
                    Ok(httparse::Status::Partial) => {
                        if !fill(io, raw).await? {
                            break;
                        }
                        continue;
                    }
                    Err(_) => break,
                };
                if size == 0 {
                    break;
                }
                let take = limited(size).min(MAX_REFUSAL_BODY - body.len());
                // The chunk's data (as much as is kept), then its CRLF.
                while raw.len() < start + take && fill(io, raw).await? {}
                body.extend_from_slice(&raw[start..raw.len().min(start + take)]);
                if u64::try_from(take).map_or(true, |take| take < size) {
                    break;
                }
                while raw.len() < start + take + 2 && fill(io, raw).await? {}
                if raw.len() < start + take + 2 {
                    break;
                }
                raw.advance(start + take + 2);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal read from `bytes`, its body arriving a few bytes at a time.
    async fn refusal(bytes: &[u8]) -> http::Response<Bytes> {
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let (head, rest) = bytes.split_at(head_end);
        let (mut io, mut server) = tokio::io::duplex(3);
        let rest = rest.to_vec();
        let writer = tokio::spawn(async move {
            // The reader stops at its limit: the rest may never be read.
            let _ = tokio::io::AsyncWriteExt::write_all(&mut server, &rest).await;
        });
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let error = read(&mut io, BytesMut::from(head), 0, 32, deadline).await;
        writer.abort();
        match error {
            Error::Refused(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bodies_by_length_chunks_or_close() {
        let r =
            refusal(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 5\r\n\r\nnope!extra")
                .await;
        assert_eq!((r.status().as_u16(), &r.body()[..]), (401, &b"nope!"[..]));
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = refusal(
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nno, \r\n6\r\nnever!\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(&r.body()[..], b"no, never!");
        let r = refusal(b"HTTP/1.0 500 Oops\r\n\r\nuntil the end").await;
        assert_eq!((r.version(), &r.body()[..]), (Version::HTTP_10, &b"until the end"[..]));
        let r = refusal(b"HTTP/1.1 204 No Content\r\n\r\nnot a body").await;
        assert!(r.body().is_empty());
    }

    #[tokio::test]
    async fn bodies_are_cut_at_the_limit() {
        let big = vec![b'x'; MAX_REFUSAL_BODY + 100];
        let mut answer = format!("HTTP/1.1 400 Bad\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
        answer.extend_from_slice(&big);
        assert_eq!(refusal(&answer).await.body().len(), MAX_REFUSAL_BODY);
        let mut answer = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            answer.extend_from_slice(format!("{:x}\r\n", big.len()).as_bytes());
            answer.extend_from_slice(&big);
            answer.extend_from_slice(b"\r\n");
        }
        assert_eq!(refusal(&answer).await.body().len(), MAX_REFUSAL_BODY);
        let mut answer = b"HTTP/1.1 400 Bad\r\n\r\n".to_vec();
        answer.extend_from_slice(&big);
        assert!(refusal(&answer).await.body().len() <= MAX_REFUSAL_BODY);
    }
}
