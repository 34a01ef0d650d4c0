//! The publishing side of `volley bench-hub`: calls of the hub's server API (`POST
//! /api/publish`, `/api/broadcast` with the API key) over kept-alive HTTP/1.1
//! connections, and the payloads they carry: a JSON object of a chosen size holding the
//! time it was meant to be sent, which each receiving client reads back.

use std::net::SocketAddr;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The shortest payload: `{"t":` and a time of up to 12 digits, `,"p":""}`.
pub const MIN_PAYLOAD: usize = 32;

/// One HTTP/1.1 connection to the server API; one call at a time.
pub struct ApiConn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    key: String,
}

impl ApiConn {
    /// Connects to the server at `addr`, whose `Host` is `host`, with API key `key`.
    pub async fn open(addr: SocketAddr, host: &str, key: &str) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("server API: connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("server API: TCP_NODELAY: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("server API: handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(ApiConn { sender, host: host.to_owned(), key: key.to_owned() })
    }

    /// Calls `method` with the JSON `body`; `Ok` once the server answered without an
    /// error (for `broadcast`, without an error for any channel).
    pub async fn call(&mut self, method: &str, body: String) -> Result<(), String> {
        self.sender.ready().await.map_err(|e| format!("server API: {e}"))?;
        let request = hyper::Request::post(format!("/api/{method}"))
            .header(hyper::header::HOST, &self.host)
            .header("x-api-key", &self.key)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
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
