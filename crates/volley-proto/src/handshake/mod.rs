//! The opening handshake (RFC 6455 §4): HTTP/1.1 Upgrade requests and responses,
//! Sec-WebSocket-Key/Accept, version, subprotocols and extension offers. Bytes that
//! arrive after the head are left for the frame decoder.

pub mod client;
pub mod server;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha1::{Digest, Sha1};

pub use client::{ClientRequest, ServerResponse};
pub use server::{Request, Response};

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (§4.2.2 step 5.4): base64 of
/// the SHA-1 of the key followed by the GUID.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// A failed opening handshake. On the server side each error maps to the HTTP status
/// the response carries ([`HandshakeError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes are not an HTTP/1.1 message.
    #[error("malformed HTTP: {0}")]
    Http(String),
    /// The head exceeded the size limit.
    #[error("handshake exceeds {0} bytes")]
    TooLarge(usize),
    /// The head has more header fields than allowed.
    #[error("handshake has more than {0} header fields")]
    TooManyHeaders(usize),
    /// The request method is not GET.
    #[error("method {0} is not GET")]
    Method(String),
    /// The HTTP version is older than 1.1.
    #[error("HTTP version older than 1.1")]
    HttpVersion,
    /// The request has no Host header field.
    #[error("missing Host header")]
    MissingHost,
    /// No `Upgrade: websocket` token.
    #[error("missing or invalid Upgrade header")]
    Upgrade,
    /// No `Connection: Upgrade` token.
    #[error("missing or invalid Connection header")]
    Connection,
    /// Sec-WebSocket-Key is missing or not base64 of 16 bytes.
    #[error("missing or invalid Sec-WebSocket-Key")]
    Key,
    /// Sec-WebSocket-Version is missing or not 13.
    #[error("unsupported WebSocket version {0:?}")]
    Version(Option<String>),
    /// A Sec-WebSocket-Extensions or Sec-WebSocket-Protocol value cannot be parsed.
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    /// A header name or value that cannot be sent (not a token, or a line break).
    #[error("invalid header field {0:?}")]
    InvalidHeader(String),
    /// The server answered with a status other than 101.
    #[error("server answered with status {0}")]
    Status(u16),
    /// The server answered with a redirection (301, 302, 303, 307 or 308) to this
    /// location, as sent (possibly relative).
    #[error("server redirected ({0}) to {1}")]
    Redirect(u16, String),
    /// Sec-WebSocket-Accept did not match the key.
    #[error("Sec-WebSocket-Accept does not match the key")]
    Accept,
    /// The server picked a subprotocol the client did not offer.
    #[error("server chose subprotocol {0:?}, which was not offered")]
    Protocol(String),
    /// The server answered with an extension the client did not offer.
    #[error("server chose extension {0:?}, which was not offered")]
    Extension(String),
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::TooLarge(_) | HandshakeError::TooManyHeaders(_) => 431,
            HandshakeError::Method(_) => 405,
            HandshakeError::Upgrade | HandshakeError::Version(_) => 426,
            _ => 400,
        }
    }

    /// The whole HTTP response a server sends for this error, with the header fields
    /// the RFC asks for (`Sec-WebSocket-Version: 13` with 426, §4.2.2).
    pub fn response(&self) -> Vec<u8> {
        let mut headers: Vec<(&str, &str)> = Vec::new();
        match self {
            HandshakeError::Version(_) => {
                headers.push(("Sec-WebSocket-Version", "13"));
            }
            HandshakeError::Upgrade => {
                headers.push(("Upgrade", "websocket"));
                headers.push(("Sec-WebSocket-Version", "13"));
            }
            HandshakeError::Method(_) => headers.push(("Allow", "GET")),
            _ => {}
        }
        server::reject_response(self.status(), &headers, &format!("{self}\n"))
    }
}

/// Header fields of a request or response, in arrival order, names as received.
///
/// Stored compactly, since a server keeps its connections' request headers for their
/// whole life: one allocation, whatever the number of fields, and 16 bytes inline. It
/// holds the number of fields (a little-endian `u32`), an index (for each field, where
/// its name and its value end, as two little-endian `u32`s), then every field's name
/// and value, one after the other. No fields, no allocation.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    data: Box<[u8]>,
}

impl Headers {
    pub(crate) fn from_httparse(headers: &[httparse::Header<'_>]) -> Self {
        Headers::from_pairs(headers.iter().map(|h| (h.name, h.value)))
    }

    /// Header fields from (name, value) pairs, for requests parsed by another HTTP
    /// stack (hyper, h2).
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let (mut index, mut text) = (Vec::new(), Vec::new());
        for (n, v) in pairs {
            text.extend_from_slice(n.as_ref().as_bytes());
            let name_end = text.len();
            text.extend_from_slice(v.as_ref());
            // Heads are bounded far below 4 GiB (`Config::max_handshake_size`); past
            // that, fields would be cut short rather than wrap around.
            for end in [name_end, text.len()] {
                index.extend_from_slice(&u32::try_from(end).unwrap_or(u32::MAX).to_le_bytes());
            }
        }
        if index.is_empty() {
            return Headers::default();
        }
        let count = u32::try_from(index.len() / 8).unwrap_or(u32::MAX);
        let mut data = Vec::with_capacity(4 + index.len() + text.len());
        data.extend_from_slice(&count.to_le_bytes());
        data.extend_from_slice(&index);
        data.extend_from_slice(&text);
        Headers { data: data.into_boxed_slice() }
    }

    fn count(&self) -> u32 {
        self.data.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
    }

    /// Every field as (name, raw value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let body = self.data.get(4..).unwrap_or_default();
        let (index, text) = body.split_at((self.count() as usize * 8).min(body.len()));
        let mut start = 0usize;
        index.chunks_exact(8).map(move |ends| {
            let end =
                |i: usize| ends.get(i..i + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes) as usize;
            let (name_end, value_end) = (end(0), end(4));
            // Names were `&str`s when they were stored.
            let name = text.get(start..name_end).and_then(|n| std::str::from_utf8(n).ok()).unwrap_or_default();
            let value = text.get(name_end..value_end).unwrap_or_default();
            start = value_end;
            (name, value)
        })
    }

    /// The first value of `name` (case-insensitive) that is valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of `name` (case-insensitive), in order; values that are not UTF-8
    /// are skipped (use [`Headers::iter`] for raw bytes).
    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.count() as usize
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Whether any comma-separated token of any `name` field equals `token`
    /// (case-insensitive), as for `Connection: keep-alive, Upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The comma-separated tokens of every `name` field, trimmed, empty ones dropped.
    pub fn tokens<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.get_all(name).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v)))).finish()
    }
}

/// One offer (or answer) in a Sec-WebSocket-Extensions header: a name and parameters
/// (RFC 6455 §9.1), e.g. `permessage-deflate; client_max_window_bits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters in order, with their value if any (quotes removed).
    pub params: Vec<(String, Option<String>)>,
}

impl ExtensionOffer {
    /// Parses every Sec-WebSocket-Extensions value, in order.
    pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<ExtensionOffer>, HandshakeError> {
        let mut offers = Vec::new();
        for value in values {
            for item in split_outside_quotes(value, ',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let mut parts = split_outside_quotes(item, ';').into_iter().map(str::trim);
                let name = parts.next().unwrap_or_default();
                if !is_token(name) {
                    return Err(HandshakeError::MalformedHeader("Sec-WebSocket-Extensions"));
                }
                let mut params = Vec::new();
                for p in parts {
                    let (k, v) = match p.split_once('=') {
                        Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
                        None => (p, None),
                    };
                    if !is_token(k) {
                        return Err(HandshakeError::MalformedHeader("Sec-WebSocket-Extensions"));
                    }
                    params.push((k.to_string(), v));
                }
                offers.push(ExtensionOffer { name: name.to_string(), params });
            }
        }
        Ok(offers)
    }

    /// The header value for this offer.
    pub fn to_header_value(&self) -> String {
        let mut s = self.name.clone();
        for (k, v) in &self.params {
            s.push_str("; ");
            s.push_str(k);
            if let Some(v) = v {
                s.push('=');
                s.push_str(v);
            }
        }
        s
    }
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> Result<String, HandshakeError> {
    let err = HandshakeError::MalformedHeader("Sec-WebSocket-Extensions");
    let v = match v.strip_prefix('"') {
        Some(inner) => {
            let inner = inner.strip_suffix('"').ok_or(err.clone())?;
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next().ok_or(err.clone())? } else { c });
            }
            out
        }
        None => v.to_string(),
    };
    // RFC 6455 §9.1: a quoted value must still be a token once unquoted.
    if is_token(&v) {
        Ok(v)
    } else {
        Err(err)
    }
}

/// Whether `s` is an HTTP token (RFC 7230 §3.2.6).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a header value can be sent as is (no control characters but tab).
pub(crate) fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_case_repeats_and_raw_bytes() {
        let h = Headers::from_pairs([
            ("Host", &b"example.com"[..]),
            ("Cookie", b"a=1"),
            ("X-Bin", b"\xff\xfe"),
            ("cookie", b"b=2"),
            ("Empty", b""),
        ]);
        assert_eq!(h.len(), 5);
        let all: Vec<(&str, &[u8])> = h.iter().collect();
        assert_eq!(all[0], ("Host", &b"example.com"[..]));
        assert_eq!(all[2], ("X-Bin", &b"\xff\xfe"[..]));
        assert_eq!(all[4], ("Empty", &b""[..]));
        assert_eq!(h.get_all("COOKIE").collect::<Vec<_>>(), ["a=1", "b=2"]);
        assert_eq!(h.get("x-bin"), None, "not UTF-8: only through iter");
        assert_eq!(h.get("empty"), Some(""));
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.clone(), h);
        assert_eq!(format!("{:?}", Headers::from_pairs([("A", "1")])), r#"[("A", "1")]"#);
        let none = Headers::default();
        assert!(none.is_empty() && none.iter().next().is_none());
        let empty = Headers::from_pairs(std::iter::empty::<(&str, &str)>());
        assert!(empty.is_empty() && empty == none);
        // Two words: an empty set allocates nothing (docs/PERFORMANCE.md has the figure).
        assert!(std::mem::size_of::<Headers>() <= 16, "{}", std::mem::size_of::<Headers>());
    }

    #[test]
    fn rfc6455_1_3_accept_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn extension_offers_parse() {
        let offers = ExtensionOffer::parse_all([
            "permessage-deflate; client_max_window_bits; server_max_window_bits=\"10\", permessage-deflate",
            "x-foo",
        ])
        .unwrap();
        assert_eq!(offers.len(), 3);
        assert_eq!(offers[0].name, "permessage-deflate");
        assert_eq!(
            offers[0].params,
            vec![("client_max_window_bits".into(), None), ("server_max_window_bits".into(), Some("10".into()))]
        );
        assert!(offers[1].params.is_empty());
        assert_eq!(offers[2].name, "x-foo");
        assert!(ExtensionOffer::parse_all(["bad name"]).is_err());
        assert!(ExtensionOffer::parse_all(["a; b=\"x y\""]).is_err());
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        let h = Headers::from_pairs([("connection", b"keep-alive, UPGRADE")]);
        assert!(h.has_token("Connection", "upgrade"));
        assert!(!h.has_token("Connection", "close"));
    }
}
