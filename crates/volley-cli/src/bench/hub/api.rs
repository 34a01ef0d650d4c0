//! The publishing side of `volley bench-hub`: calls of the server's HTTP API over
//! kept-alive HTTP/1.1 connections, and the payloads they carry: a JSON object of a
//! chosen size holding the time it was meant to be sent, which each receiving client
//! reads back. The API is the hub's server API (`POST /api/publish`, `/api/broadcast`
//! with the API key), Pusher's HTTP API (`POST /apps/{id}/events`, signed with the app's
//! secret), or the `POST /publish` of the Socket.IO server the peer benchmarks run.

use std::net::SocketAddr;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The shortest payload: `{"t":` and a time of up to 12 digits, `,"p":""}`.
pub const MIN_PAYLOAD: usize = 32;

/// The name of the events the Pusher and Socket.IO publishers send.
pub const EVENT: &str = "bench";

/// Which HTTP API publications go through, with its credentials.
#[derive(Clone, Debug)]
pub enum Publisher {
    /// The hub's server API, with its key (`X-API-Key`).
    Centrifugo {
        /// The API key.
        key: String,
    },
    /// Pusher's HTTP API of one app: `POST /apps/{id}/events`, signed.
    Pusher {
        /// The app's id.
        app_id: String,
        /// The app's key (`auth_key`).
        key: String,
        /// The app's secret, which signs each request.
        secret: String,
    },
    /// The Socket.IO bench server's `POST /publish` (`{"room", "event", "data"}`).
    SocketIo,
}

impl Publisher {
    /// The call that publishes `data` to `channels`, ready to send: made before the
    /// time it is due, so that building it (the channels' names, the body, a Pusher
    /// request's signature) is not counted in the latencies measured from that time.
    pub fn call(&self, channels: &[String], data: &str) -> Call {
        match self {
            Publisher::Centrifugo { .. } => {
                let (method, body) = publish_body(channels.iter().map(String::as_str), data);
                Call { kind: CallKind::Api { method }, body: Bytes::from(body) }
            }
            Publisher::Pusher { app_id, key, secret } => {
                let body = pusher_body(channels, data);
                let path = format!("/apps/{app_id}/events");
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let uri = pusher_signed_uri(&path, key, secret, now.as_secs(), &body);
                Call { kind: CallKind::Post { what: "Pusher HTTP API", uri }, body: Bytes::from(body) }
            }
            Publisher::SocketIo => {
                let body = socketio_body(channels, data);
                let kind = CallKind::Post { what: "Socket.IO /publish", uri: "/publish".to_string() };
                Call { kind, body: Bytes::from(body) }
            }
        }
    }
}

/// A publishing call ready to send ([`Publisher::call`]).
#[derive(Debug, Clone)]
pub struct Call {
    kind: CallKind,
    body: Bytes,
}

#[derive(Debug, Clone)]
enum CallKind {
    /// A method of the hub's server API.
    Api { method: &'static str },
    /// A `POST` of the body to `uri` (path and query), `what` naming it in errors.
    Post { what: &'static str, uri: String },
}

/// One HTTP/1.1 connection to the server API; one call at a time.
pub struct ApiConn {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    host: String,
    publisher: Publisher,
}

impl ApiConn {
    /// Connects to the server at `addr`, whose `Host` is `host`, to publish through
    /// `publisher`.
    pub async fn open(addr: SocketAddr, host: &str, publisher: &Publisher) -> Result<Self, String> {
        let sender = connect(addr).await?;
        Ok(ApiConn { sender, addr, host: host.to_owned(), publisher: publisher.clone() })
    }

    /// Publishes `data` (a JSON object) to `channels` in one call: `publish` or
    /// `broadcast` of the server API, one Pusher event to several channels, or one
    /// Socket.IO emit to several rooms. `Ok` once the server answered without an error.
    pub async fn publish(&mut self, channels: &[String], data: &str) -> Result<(), String> {
        let call = self.publisher.call(channels, data);
        self.send_call(call).await
    }

    /// Makes a call made ready by [`Publisher::call`]. `Ok` once the server answered
    /// without an error.
    pub async fn send_call(&mut self, call: Call) -> Result<(), String> {
        match call.kind {
            CallKind::Api { method } => self.call(method, call.body).await,
            CallKind::Post { what, uri } => self.send(what, &uri, call.body).await.map(drop),
        }
    }

    /// Calls `method` with the JSON `body`; `Ok` once the server answered without an
    /// error (for `broadcast`, without an error for any channel).
    pub async fn call(&mut self, method: &str, body: impl Into<Bytes>) -> Result<(), String> {
        let Publisher::Centrifugo { key } = &self.publisher else {
            return Err(format!("server API {method}: not a Centrifugo publisher"));
        };
        self.sender.ready().await.map_err(|e| format!("server API: {e}"))?;
        let request = hyper::Request::post(format!("/api/{method}"))
            .header(hyper::header::HOST, &self.host)
            .header("x-api-key", key)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))
            .map_err(|e| format!("server API: {e}"))?;
        let response = self.sender.send_request(request).await.map_err(|e| format!("server API {method}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("server API {method}: reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("server API {method}: HTTP {status}: {}", excerpt(&body)));
        }
        if contains(&body, b"\"error\"") {
            return Err(format!("server API {method}: {}", excerpt(&body)));
        }
        Ok(())
    }

    /// POSTs the JSON `body` to `uri`; the answer's body if its status is a success. A
    /// connection the server closed between two requests (Sockudo closes kept-alive
    /// ones) is opened again, and a request it closed before answering sent once more
    /// on the new one, as an HTTP client's pool does.
    async fn send(&mut self, what: &str, uri: &str, body: Bytes) -> Result<Bytes, String> {
        let mut again = false;
        let response = loop {
            if self.sender.ready().await.is_err() {
                self.sender = connect(self.addr).await.map_err(|e| format!("{what}: {e}"))?;
                self.sender.ready().await.map_err(|e| format!("{what}: {e}"))?;
            }
            let request = hyper::Request::post(uri)
                .header(hyper::header::HOST, &self.host)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| format!("{what}: {e}"))?;
            match self.sender.send_request(request).await {
                Ok(response) => break response,
                Err(e) if !again && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                    again = true;
                    self.sender = connect(self.addr).await.map_err(|e| format!("{what}: {e}"))?;
                }
                Err(e) => return Err(format!("{what}: {e}")),
            }
        };
        let status = response.status();
        let body =
            response.into_body().collect().await.map_err(|e| format!("{what}: reading the answer: {e}"))?.to_bytes();
        if !status.is_success() {
            return Err(format!("{what}: HTTP {status}: {}", excerpt(&body)));
        }
        Ok(body)
    }
}

/// A kept-alive HTTP/1.1 connection to `addr`.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("server API: connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("server API: TCP_NODELAY: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("server API: handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The body of a Pusher `events` request: event [`EVENT`] to `channels`, its `data` the
/// JSON text of `data` as a string (as the Pusher SDKs send an object).
pub fn pusher_body(channels: &[String], data: &str) -> String {
    let mut body = String::with_capacity(64 + data.len() * 2 + channels.len() * 16);
    body.push_str("{\"name\":\"");
    body.push_str(EVENT);
    body.push_str("\",\"channels\":[");
    for (i, c) in channels.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_json_string(&mut body, c);
    }
    body.push_str("],\"data\":");
    push_json_string(&mut body, data);
    body.push('}');
    body
}

/// The path and signed query of a Pusher HTTP API `POST` of `body` to `path` at Unix
/// time `now_s`: `auth_key`, `auth_timestamp`, `auth_version=1.0`, `body_md5`, then
/// `auth_signature`, the HMAC-SHA256 (hex) with the app's secret of `POST`, the path and
/// the other parameters sorted by name, one a line.
pub fn pusher_signed_uri(path: &str, key: &str, secret: &str, now_s: u64, body: &str) -> String {
    let query = volley_hub::pusher::sign::signed_query(key, secret, "POST", path, body.as_bytes(), now_s);
    format!("{path}?{query}")
}

/// The body of the Socket.IO server's `/publish`: `data` emitted as event [`EVENT`] to
/// a room, or to several at once (`io.to([...])`).
pub fn socketio_body(rooms: &[String], data: &str) -> String {
    let mut body = String::with_capacity(64 + data.len() + rooms.len() * 16);
    body.push_str("{\"room\":");
    if let [room] = rooms {
        push_json_string(&mut body, room);
    } else {
        body.push('[');
        for (i, r) in rooms.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            push_json_string(&mut body, r);
        }
        body.push(']');
    }
    body.push_str(",\"event\":\"");
    body.push_str(EVENT);
    body.push_str("\",\"data\":");
    body.push_str(data);
    body.push('}');
    body
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// A payload of exactly `size` bytes (at least [`MIN_PAYLOAD`]): `{"t":T,"p":"xx..."}`,
/// T the send time in microseconds since the generator's start.
pub fn payload(t_us: u64, size: usize) -> String {
    let head = format!("{{\"t\":{t_us},\"p\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The body of a `publish` (one channel) or `broadcast` (several) of `data`, and the
/// method to call.
pub fn publish_body<'a>(channels: impl ExactSizeIterator<Item = &'a str>, data: &str) -> (&'static str, String) {
    let one = channels.len() == 1;
    let mut body = String::with_capacity(64 + data.len() + channels.len() * 16);
    body.push_str(if one { "{\"channel\":" } else { "{\"channels\":[" });
    for (i, c) in channels.enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_json_string(&mut body, c);
    }
    body.push_str(if one { ",\"data\":" } else { "],\"data\":" });
    body.push_str(data);
    body.push('}');
    (if one { "publish" } else { "broadcast" }, body)
}

/// Appends `s` as a JSON string.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The send time (microseconds) of a publication's data as a push carries it: the
/// digits after `"t":` in the object after `"data":` (`{"push":{"channel":...,"pub":
/// {"data":{...,"t":T,...`; the server may reorder the payload's keys).
pub fn sent_at(push: &[u8]) -> Option<u64> {
    let data = find(push, b"\"data\":{")?;
    let at = data + find(&push[data..], b"\"t\":")? + 4;
    let digits = push[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&push[at..at + digits]).ok()?.parse().ok()
}

/// The send time (microseconds) a Pusher event or a Socket.IO event carries: the digits
/// after the first `"t":` of the message, or `\\"t\\":` inside a Pusher event's `data`
/// string (the payload's only key `t`, ahead of its padding).
pub fn sent_at_anywhere(msg: &[u8]) -> Option<u64> {
    let at = match (find(msg, b"\\\"t\\\":"), find(msg, b"\"t\":")) {
        (Some(escaped), _) => escaped + 6,
        (None, Some(plain)) => plain + 4,
        (None, None) => return None,
    };
    let digits = msg[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&msg[at..at + digits]).ok()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_asked_and_their_time_reads_back() {
        for t in [0u64, 7, 123_456_789_012] {
            let p = payload(t, 100);
            assert_eq!(p.len(), 100);
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert_eq!(v["t"], t);
            let push = format!("{{\"push\":{{\"channel\":\"bench:1\",\"pub\":{{\"data\":{p}}}}}}}");
            assert_eq!(sent_at(push.as_bytes()), Some(t));
        }
        assert_eq!(payload(1, MIN_PAYLOAD).len(), MIN_PAYLOAD);
        // Keys in another order (the server API may sort them).
        let sorted = br#"{"push":{"channel":"bench:1","pub":{"data":{"p":"xxt","t":1422992},"time":1796}}}"#;
        assert_eq!(sent_at(sorted), Some(1_422_992));
        assert_eq!(sent_at(b"{\"push\":{\"channel\":\"x\",\"pub\":{\"data\":\"text\"}}}"), None);
    }

    #[test]
    fn pusher_and_socketio_events_carry_the_time() {
        let p = payload(42_000, 64);
        let body: serde_json::Value = serde_json::from_str(&pusher_body(&["bench-1".to_string()], &p)).unwrap();
        assert_eq!(body["name"], EVENT);
        assert_eq!(body["channels"], serde_json::json!(["bench-1"]));
        assert_eq!(body["data"], p, "the data is the payload's JSON text, as a string");
        // What a Pusher server delivers: the event with its data string as it came.
        let event = serde_json::json!({"event": EVENT, "channel": "bench-1", "data": p}).to_string();
        assert_eq!(sent_at_anywhere(event.as_bytes()), Some(42_000));
        let body: serde_json::Value =
            serde_json::from_str(&socketio_body(&["a".to_string(), "b".to_string()], &p)).unwrap();
        assert_eq!(body["room"], serde_json::json!(["a", "b"]));
        assert_eq!(body["data"]["t"], 42_000);
        let one: serde_json::Value = serde_json::from_str(&socketio_body(&["a".to_string()], &p)).unwrap();
        assert_eq!(one["room"], "a");
        let emitted = format!("42[\"{EVENT}\",{p}]");
        assert_eq!(sent_at_anywhere(emitted.as_bytes()), Some(42_000));
        assert_eq!(sent_at_anywhere(b"42[\"bench\",{}]"), None);
    }

    #[test]
    fn pusher_requests_are_signed_as_the_http_api_documents() {
        // The example of Pusher's HTTP API reference ("Worked authentication example").
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let uri = pusher_signed_uri("/apps/3/events", "278d425bdf160c739803", "7ad3773142a6692b25b8", 1353088179, body);
        assert_eq!(
            uri,
            "/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn bodies_are_json_for_one_channel_and_several() {
        let (method, body) = publish_body(["bench:1"].into_iter(), "{\"t\":1}");
        assert_eq!(method, "publish");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["channel"], "bench:1");
        assert_eq!(v["data"]["t"], 1);
        let (method, body) = publish_body(["a", "b\"c"].into_iter(), "{}");
        assert_eq!(method, "broadcast");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["channels"], serde_json::json!(["a", "b\"c"]));
    }
}
