//! The server side of the opening handshake: parse and check the client's request
//! (RFC 6455 §4.2.1), then build the 101 answer or a rejection (§4.2.2).

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::{accept_key, is_header_value, is_token, ExtensionOffer, HandshakeError, Headers};
use crate::config::Config;

/// A checked opening handshake request, with everything it says that an application
/// needs to decide whether to accept it. What the connection knows besides (the peer's
/// address) is the runtime's to tell: the core never sees the connection.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    target: String,
    headers: Headers,
    key: String,
    protocols: Vec<String>,
    extensions: Vec<ExtensionOffer>,
}

impl Request {
    /// Parses and checks a request head at the start of `buf`. `Ok(None)` means more
    /// bytes are needed; `Ok(Some((request, n)))` means the head took `n` bytes and
    /// anything after them belongs to the frame decoder.
    pub fn parse(buf: &[u8], config: &Config) -> Result<Option<(Request, usize)>, HandshakeError> {
        let mut headers = vec![httparse::EMPTY_HEADER; config.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > config.max_handshake_size {
                    return Err(HandshakeError::TooLarge(config.max_handshake_size));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders(config.max_headers)),
            Err(e) => return Err(HandshakeError::Http(e.to_string())),
        };
        if n > config.max_handshake_size {
            return Err(HandshakeError::TooLarge(config.max_handshake_size));
        }
        let method = req.method.unwrap_or_default().to_string();
        let target = req.path.unwrap_or_default().to_string();
        let version = req.version.unwrap_or(0);
        let headers = Headers::from_httparse(req.headers);
        let request = Request::check(method, target, version, headers)?;
        Ok(Some((request, n)))
    }

    /// Checks an HTTP/1.1 request that another HTTP stack (hyper, for example) already
    /// parsed: `method`, `target` (path and query), whether it is HTTP/1.1 or later,
    /// and its header fields, against RFC 6455 §4.2.1.
    pub fn from_http1(method: &str, target: &str, http11: bool, headers: Headers) -> Result<Request, HandshakeError> {
        Request::check(method.to_string(), target.to_string(), u8::from(http11), headers)
    }

    /// Checks an HTTP/2 extended CONNECT request (RFC 8441 §4-5): method CONNECT with
    /// `:protocol` `websocket` (the caller checks the pseudo-headers and passes the
    /// `:path` as `target`), and `Sec-WebSocket-Version: 13`. There is no key, no
    /// Upgrade and no Connection header in HTTP/2; the answer is a 200 carrying the
    /// subprotocol and extensions.
    pub fn from_http2_connect(target: &str, headers: Headers) -> Result<Request, HandshakeError> {
        check_version(&headers)?;
        let (protocols, extensions) = offers(&headers)?;
        Ok(Request {
            method: "CONNECT".into(),
            target: target.to_string(),
            headers,
            key: String::new(),
            protocols,
            extensions,
        })
    }

    /// Checks the fields RFC 6455 §4.2.1 requires.
    fn check(method: String, target: String, version: u8, headers: Headers) -> Result<Request, HandshakeError> {
        // §4.2.1 1: "An HTTP/1.1 or higher GET request".
        if method != "GET" {
            return Err(HandshakeError::Method(method));
        }
        if version < 1 {
            return Err(HandshakeError::HttpVersion);
        }
        // 2: "A |Host| header field".
        if headers.get("Host").is_none_or(|h| h.trim().is_empty()) {
            return Err(HandshakeError::MissingHost);
        }
        // 3: "An |Upgrade| header field containing the value "websocket", treated as an
        // ASCII case-insensitive value."
        if !headers.has_token("Upgrade", "websocket") {
            return Err(HandshakeError::Upgrade);
        }
        // 4: "A |Connection| header field that includes the token "Upgrade"".
        if !headers.has_token("Connection", "Upgrade") {
            return Err(HandshakeError::Connection);
        }
        // 6: "A |Sec-WebSocket-Version| header field, with a value of 13." Checked
        // before the key so that a client of another version learns which we speak.
        check_version(&headers)?;
        // 5: "A |Sec-WebSocket-Key| header field with a base64-encoded value that, when
        // decoded, is 16 bytes in length."
        let key = {
            let mut keys = headers.get_all("Sec-WebSocket-Key");
            let key = keys.next().map(str::trim).ok_or(HandshakeError::Key)?.to_string();
            if keys.next().is_some() || BASE64.decode(&key).map(|k| k.len()) != Ok(16) {
                return Err(HandshakeError::Key);
            }
            key
        };
        let (protocols, extensions) = offers(&headers)?;
        Ok(Request { method, target, headers, key, protocols, extensions })
    }

    /// The request method (always `GET` once checked).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target as sent, path and query: `/chat?room=1`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The path part of the target: `/chat`.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query part of the target without `?`, if any: `room=1`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// All header fields.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of a header field (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The Host header.
    pub fn host(&self) -> Option<&str> {
        self.headers.get("Host")
    }

    /// The Origin header, which browsers always send (§4.2.1 8): check it to refuse
    /// cross-site pages.
    pub fn origin(&self) -> Option<&str> {
        self.headers.get("Origin")
    }

    /// The cookies of every Cookie header, as (name, value) pairs.
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .get_all("Cookie")
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.split_once('='))
            .map(|(n, v)| (n.trim(), v.trim()))
    }

    /// The Sec-WebSocket-Key (empty for an HTTP/2 extended CONNECT).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// The extensions the client offered, in order.
    pub fn extensions(&self) -> &[ExtensionOffer] {
        &self.extensions
    }

    /// The first subprotocol in the client's list that `supported` contains.
    pub fn pick_protocol<S: AsRef<str>>(&self, supported: &[S]) -> Option<&str> {
        self.protocols.iter().find(|p| supported.iter().any(|s| s.as_ref() == p.as_str())).map(String::as_str)
    }
}

/// "A |Sec-WebSocket-Version| header field, with a value of 13" (RFC 6455 §4.2.1 6,
/// RFC 8441 §5), exactly once.
fn check_version(headers: &Headers) -> Result<(), HandshakeError> {
    let mut versions = headers.get_all("Sec-WebSocket-Version");
    let v = versions.next();
    if v.map(str::trim) != Some("13") || versions.next().is_some() {
        return Err(HandshakeError::Version(v.map(str::to_string)));
    }
    Ok(())
}

/// The offered subprotocols (tokens) and extensions.
fn offers(headers: &Headers) -> Result<(Vec<String>, Vec<ExtensionOffer>), HandshakeError> {
    let mut protocols = Vec::new();
    for p in headers.tokens("Sec-WebSocket-Protocol") {
        if !is_token(p) {
            return Err(HandshakeError::MalformedHeader("Sec-WebSocket-Protocol"));
        }
        protocols.push(p.to_string());
    }
    let extensions = ExtensionOffer::parse_all(headers.get_all("Sec-WebSocket-Extensions"))?;
    Ok((protocols, extensions))
}

/// The server's 101 Switching Protocols answer, with the subprotocol, extensions and
/// extra header fields the application chose.
#[derive(Debug, Clone, Default)]
pub struct Response {
    accept: String,
    protocol: Option<String>,
    extensions: Vec<ExtensionOffer>,
    headers: Vec<(String, String)>,
}

impl Response {
    /// A 101 answer to `request`, with no subprotocol and no extensions yet.
    pub fn accept(request: &Request) -> Response {
        Response { accept: accept_key(request.key.as_bytes()), ..Response::default() }
    }

    /// Selects a subprotocol, which must be one the client offered (§4.2.2 5.4: "the
    /// value chosen MUST be derived from the client's handshake").
    pub fn set_protocol(&mut self, request: &Request, protocol: &str) -> Result<(), HandshakeError> {
        if !request.protocols.iter().any(|p| p == protocol) {
            return Err(HandshakeError::Protocol(protocol.to_string()));
        }
        self.protocol = Some(protocol.to_string());
        Ok(())
    }

    /// The selected subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Adds an accepted extension to the answer.
    pub fn add_extension(&mut self, extension: ExtensionOffer) {
        self.extensions.push(extension);
    }

    /// The accepted extensions.
    pub fn extensions(&self) -> &[ExtensionOffer] {
        &self.extensions
    }

    /// Adds a header field (e.g. `Set-Cookie`). Names must be tokens and values free
    /// of line breaks, so a header can never inject another.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), HandshakeError> {
        if !is_token(name) || !is_header_value(value) {
            return Err(HandshakeError::InvalidHeader(name.to_string()));
        }
        self.headers.push((name.to_string(), value.to_string()));
        Ok(())
    }

    /// The Sec-WebSocket-Accept value (empty for an HTTP/2 request, which has no key).
    pub fn accept_key(&self) -> &str {
        &self.accept
    }

    /// The extra header fields added with [`Response::add_header`].
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The response head.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(160);
        s.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
        let _ = write!(s, "Sec-WebSocket-Accept: {}\r\n", self.accept);
        if let Some(p) = &self.protocol {
            let _ = write!(s, "Sec-WebSocket-Protocol: {p}\r\n");
        }
        if !self.extensions.is_empty() {
            let list: Vec<String> = self.extensions.iter().map(ExtensionOffer::to_header_value).collect();
            let _ = write!(s, "Sec-WebSocket-Extensions: {}\r\n", list.join(", "));
        }
        for (n, v) in &self.headers {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// A complete HTTP response that refuses the upgrade with `status`, extra header fields
/// and a plain-text body, closing the connection.
pub fn reject_response(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut s = String::with_capacity(128 + body.len());
    let _ = write!(s, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (n, v) in headers {
        if is_token(n) && is_header_value(v) {
            let _ = write!(s, "{n}: {v}\r\n");
        }
    }
    let _ = write!(
        s,
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(s: &str) -> Result<Option<(Request, usize)>, HandshakeError> {
        Request::parse(s.as_bytes(), &Config::default())
    }

    #[test]
    fn rfc6455_1_3_sample_request_is_accepted() {
        let mut bytes = RFC_REQUEST.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (req, n) = Request::parse(&bytes, &Config::default()).unwrap().unwrap();
        assert_eq!(n, RFC_REQUEST.len(), "frame bytes after the head are left over");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.origin(), Some("http://example.com"));
        assert_eq!(req.protocols(), ["chat", "superchat"]);
        assert_eq!(req.pick_protocol(&["superchat", "chat"]), Some("chat"));
        let mut resp = Response::accept(&req);
        resp.set_protocol(&req, "chat").unwrap();
        let text = String::from_utf8(resp.encode()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        );
        assert!(resp.set_protocol(&req, "other").is_err());
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for cut in 0..RFC_REQUEST.len() {
            assert!(parse(&RFC_REQUEST[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn rfc6455_4_2_1_checks() {
        let bad = |from: &str, to: &str| parse(&RFC_REQUEST.replace(from, to)).unwrap_err();
        assert_eq!(bad("GET", "POST"), HandshakeError::Method("POST".into()));
        assert_eq!(bad("HTTP/1.1", "HTTP/1.0"), HandshakeError::HttpVersion);
        assert_eq!(bad("Host: server.example.com\r\n", ""), HandshakeError::MissingHost);
        assert_eq!(bad("Upgrade: websocket", "Upgrade: h2c"), HandshakeError::Upgrade);
        assert_eq!(bad("Connection: Upgrade", "Connection: keep-alive"), HandshakeError::Connection);
        assert_eq!(bad("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="), HandshakeError::Key);
        let v = bad("Version: 13", "Version: 8");
        assert_eq!(v, HandshakeError::Version(Some("8".into())));
        assert_eq!(v.status(), 426);
        let resp = String::from_utf8(v.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn tokens_are_case_insensitive_and_in_lists() {
        let req = RFC_REQUEST
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("Connection: Upgrade", "Connection: keep-alive, upgrade");
        assert!(parse(&req).unwrap().is_some());
    }

    #[test]
    fn limits_are_enforced() {
        let config = Config { max_handshake_size: 100, ..Config::default() };
        let err = Request::parse(RFC_REQUEST.as_bytes(), &config).unwrap_err();
        assert_eq!(err.status(), 431);
        let config = Config { max_headers: 4, ..Config::default() };
        let err = Request::parse(RFC_REQUEST.as_bytes(), &config).unwrap_err();
        assert_eq!(err, HandshakeError::TooManyHeaders(4));
    }

    #[test]
    fn query_and_cookies() {
        let req = RFC_REQUEST.replace("/chat", "/chat?room=1").replace("Origin", "Cookie: a=1; b=2\r\nOrigin");
        let (req, _) = parse(&req).unwrap().unwrap();
        assert_eq!((req.path(), req.query()), ("/chat", Some("room=1")));
        assert_eq!(req.cookies().collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
    }

    #[test]
    fn response_headers_cannot_inject() {
        let (req, _) = parse(RFC_REQUEST).unwrap().unwrap();
        let mut resp = Response::accept(&req);
        assert!(resp.add_header("X-Ok", "fine").is_ok());
        assert!(resp.add_header("X-Bad", "a\r\nSet-Cookie: x").is_err());
        assert!(resp.add_header("Bad Name", "v").is_err());
    }
}
