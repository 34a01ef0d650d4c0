//! The client side of the opening handshake: build the request (RFC 6455 §4.1) and
//! check the server's answer, including Sec-WebSocket-Accept, the subprotocol and the
//! extensions.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::{accept_key, is_header_value, is_token, ExtensionOffer, HandshakeError, Headers};
use crate::config::Config;

/// A client's opening handshake request.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    host: String,
    target: String,
    key: String,
    protocols: Vec<String>,
    extensions: Vec<ExtensionOffer>,
    headers: Vec<(String, String)>,
}

impl ClientRequest {
    /// A request for `target` (path and query, e.g. `/chat?room=1`) on `host` (the Host
    /// header: host, and port when not the default), with a fresh key from the
    /// configuration's random source.
    pub fn new(host: &str, target: &str, config: &Config) -> Self {
        let mut nonce = [0u8; 16];
        config.random.fill(&mut nonce);
        let target = if target.is_empty() { "/" } else { target };
        ClientRequest {
            host: host.to_string(),
            target: target.to_string(),
            key: BASE64.encode(nonce),
            protocols: Vec::new(),
            extensions: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Offers a subprotocol; the order of calls is the order of preference.
    pub fn add_protocol(&mut self, protocol: &str) -> Result<(), HandshakeError> {
        if !is_token(protocol) {
            return Err(HandshakeError::InvalidHeader(format!("Sec-WebSocket-Protocol: {protocol}")));
        }
        self.protocols.push(protocol.to_string());
        Ok(())
    }

    /// Offers an extension.
    pub fn add_extension(&mut self, offer: ExtensionOffer) {
        self.extensions.push(offer);
    }

    /// Adds a header field (Origin, Cookie, Authorization, ...). Names must be tokens and
    /// values free of line breaks. The fields the handshake itself sets are refused.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), HandshakeError> {
        const OWN: [&str; 6] =
            ["host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "sec-websocket-accept"];
        if !is_token(name) || !is_header_value(value) || OWN.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(HandshakeError::InvalidHeader(name.to_string()));
        }
        self.headers.push((name.to_string(), value.to_string()));
        Ok(())
    }

    /// The Sec-WebSocket-Key sent.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subprotocols offered.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// The request head.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(256);
        let _ = write!(
            s,
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
            self.target, self.host, self.key
        );
        if !self.protocols.is_empty() {
            let _ = write!(s, "Sec-WebSocket-Protocol: {}\r\n", self.protocols.join(", "));
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

    /// Parses and checks the server's answer at the start of `buf` (§4.1, "the client
    /// MUST validate the server's response"). `Ok(None)` means more bytes are needed;
    /// `Ok(Some((response, n)))` means the head took `n` bytes and the rest belongs to
    /// the frame decoder.
    pub fn parse_response(
        &self,
        buf: &[u8],
        config: &Config,
    ) -> Result<Option<(ServerResponse, usize)>, HandshakeError> {
        let mut headers = vec![httparse::EMPTY_HEADER; config.max_headers];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(buf) {
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
        let status = resp.code.unwrap_or(0);
        let headers = Headers::from_httparse(resp.headers);
        // 1: "If the status code received from the server is not 101, the client
        // handles the response per HTTP procedures."
        if status != 101 {
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                if let Some(location) = headers.get("Location") {
                    return Err(HandshakeError::Redirect(status, location.trim().to_string()));
                }
            }
            return Err(HandshakeError::Status(status));
        }
        // 2, 3: Upgrade "websocket" and Connection "Upgrade", case-insensitive.
        if !headers.has_token("Upgrade", "websocket") {
            return Err(HandshakeError::Upgrade);
        }
        if !headers.has_token("Connection", "Upgrade") {
            return Err(HandshakeError::Connection);
        }
        // 4: Sec-WebSocket-Accept must be the hash of our key.
        {
            let mut accepts = headers.get_all("Sec-WebSocket-Accept");
            let accept = accepts.next().map(str::trim);
            if accept != Some(accept_key(self.key.as_bytes()).as_str()) || accepts.next().is_some() {
                return Err(HandshakeError::Accept);
            }
        }
        // 5: "If the response includes a |Sec-WebSocket-Extensions| header field and
        // this header field indicates the use of an extension that was not present in
        // the client's handshake ... the client MUST _Fail the WebSocket Connection_."
        let extensions = ExtensionOffer::parse_all(headers.get_all("Sec-WebSocket-Extensions"))?;
        for e in &extensions {
            if !self.extensions.iter().any(|o| o.name == e.name) {
                return Err(HandshakeError::Extension(e.name.clone()));
            }
        }
        // 6: "If the response includes a |Sec-WebSocket-Protocol| header field and this
        // header field indicates the use of a subprotocol that was not present in the
        // client's handshake ... the client MUST _Fail the WebSocket Connection_."
        let protocol = {
            let mut protos = headers.tokens("Sec-WebSocket-Protocol");
            let protocol = protos.next().map(str::to_string);
            if let Some(p) = &protocol {
                if protos.next().is_some() || !self.protocols.contains(p) {
                    return Err(HandshakeError::Protocol(p.clone()));
                }
            }
            protocol
        };
        Ok(Some((ServerResponse { status, headers, protocol, extensions }, n)))
    }
}

/// A checked 101 answer from the server.
#[derive(Debug, Clone)]
pub struct ServerResponse {
    status: u16,
    headers: Headers,
    protocol: Option<String>,
    extensions: Vec<ExtensionOffer>,
}

impl ServerResponse {
    /// An answer checked elsewhere: the 200 to an HTTP/2 extended CONNECT (RFC 8441),
    /// whose status, header fields, subprotocol and extensions a runtime checked with
    /// its HTTP/2 stack, so that both versions report the answer the same way.
    pub fn new(status: u16, headers: Headers, protocol: Option<String>, extensions: Vec<ExtensionOffer>) -> Self {
        ServerResponse { status, headers, protocol, extensions }
    }

    /// The status code (101, or 200 over HTTP/2).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// All header fields of the answer.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The subprotocol the server chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The extensions the server accepted.
    pub fn extensions(&self) -> &[ExtensionOffer] {
        &self.extensions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RandomSource;
    use crate::handshake::server::{Request, Response};

    fn config() -> Config {
        Config { random: RandomSource::fixed([1, 2, 3, 4]), ..Config::default() }
    }

    #[test]
    fn request_is_byte_exact_with_a_fixed_random_source() {
        let mut req = ClientRequest::new("example.com:8080", "/chat?x=1", &config());
        req.add_protocol("chat").unwrap();
        req.add_header("Origin", "http://example.com").unwrap();
        assert_eq!(
            String::from_utf8(req.encode()).unwrap(),
            "GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: AQIDBAECAwQBAgMEAQIDBA==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\
             Origin: http://example.com\r\n\r\n"
        );
        assert!(req.add_header("Host", "evil").is_err());
        assert!(req.add_header("X", "a\nb").is_err());
    }

    #[test]
    fn client_and_server_agree() {
        let mut req = ClientRequest::new("h", "/", &config());
        req.add_protocol("a").unwrap();
        req.add_protocol("b").unwrap();
        let bytes = req.encode();
        let (sreq, _) = Request::parse(&bytes, &config()).unwrap().unwrap();
        let mut resp = Response::accept(&sreq);
        resp.set_protocol(&sreq, sreq.pick_protocol(&["b"]).unwrap()).unwrap();
        let mut wire = resp.encode();
        wire.extend_from_slice(b"\x81\x00");
        let (answer, n) = req.parse_response(&wire, &config()).unwrap().unwrap();
        assert_eq!(answer.protocol(), Some("b"));
        assert_eq!(&wire[n..], b"\x81\x00");
    }

    #[test]
    fn rfc6455_4_1_client_checks() {
        let req = ClientRequest::new("h", "/", &config());
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(req.key().as_bytes())
        );
        let check = |s: String| req.parse_response(s.as_bytes(), &config());
        assert!(check(good.clone()).unwrap().is_some());
        assert_eq!(check(good.replace("101 Switching Protocols", "200 OK")).unwrap_err(), HandshakeError::Status(200));
        assert_eq!(check(good.replace("Upgrade: websocket", "Upgrade: x")).unwrap_err(), HandshakeError::Upgrade);
        assert_eq!(
            check(good.replace("Connection: Upgrade", "Connection: close")).unwrap_err(),
            HandshakeError::Connection
        );
        let wrong = good.replace("Accept: ", "Accept: x");
        assert_eq!(check(wrong).unwrap_err(), HandshakeError::Accept);
        let proto = good.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n");
        assert_eq!(check(proto).unwrap_err(), HandshakeError::Protocol("chat".into()));
        let ext = good.replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        assert_eq!(check(ext).unwrap_err(), HandshakeError::Extension("permessage-deflate".into()));
    }
}
