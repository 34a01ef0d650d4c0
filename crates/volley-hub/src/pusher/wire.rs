//! Pusher's wire shape: the JSON messages a Pusher client gets (`{"event", "channel",
//! "data", "user_id"}`), each sent as one WebSocket text frame.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use super::{external_channel, TAG_EVENT, TAG_EXCLUDE, TAG_USER_ID};
use crate::protocol::Publication;

/// What starts the Pusher names of the internal channels of watchlist events: their
/// events go without a channel, as Pusher sends them.
pub(crate) const WATCHLIST_PREFIX: &str = "#watchlist-";

/// Whether a publication is not to go to the socket `socket_id` (it sent it, or the
/// HTTP API's `socket_id` names it).
pub(crate) fn excluded(p: &Publication, socket_id: &str) -> bool {
    p.tags.get(TAG_EXCLUDE).is_some_and(|s| s == socket_id)
}

/// A publication of a Pusher channel (`internal` is its engine name) as the event a
/// Pusher client gets; `None` when it is not a Pusher event (no event name, or data
/// that is not JSON).
pub(crate) fn encode_event(internal: &str, p: &Publication) -> Option<Bytes> {
    let (_, channel) = external_channel(internal)?;
    let event = p.tags.get(TAG_EVENT)?;
    if !p.data.is_empty() && !p.is_json() {
        return None;
    }
    let mut out = BytesMut::with_capacity(48 + event.len() + channel.len() + p.data.len());
    out.put_slice(b"{\"event\":");
    put_str(&mut out, event);
    if !channel.starts_with(WATCHLIST_PREFIX) {
        out.put_slice(b",\"channel\":");
        put_str(&mut out, channel);
    }
    out.put_slice(b",\"data\":");
    if p.data.is_empty() {
        out.put_slice(b"\"\"");
    } else {
        out.put_slice(&p.data);
    }
    if let Some(user) = p.tags.get(TAG_USER_ID) {
        out.put_slice(b",\"user_id\":");
        put_str(&mut out, user);
    }
    out.put_u8(b'}');
    Some(out.freeze())
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_slice(serde_json::to_string(s).expect("a string serializes").as_bytes());
}

/// A message from the server: `data` as a JSON string of `data` (as Pusher sends its
/// own events), on `channel` if given.
pub(crate) fn message(event: &str, channel: Option<&str>, data: &Value) -> Bytes {
    let mut m = serde_json::json!({ "event": event, "data": data.to_string() });
    if let Some(c) = channel {
        m["channel"] = Value::from(c);
    }
    Bytes::from(m.to_string())
}

/// `pusher:error` with a code and message (data as an object, as Pusher sends it).
pub(crate) fn error(code: Option<u16>, text: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "event": "pusher:error", "data": { "code": code, "message": text } }).to_string())
}

/// `pusher:subscription_error` on a channel, in the shape pusher-js gives its own
/// authorization failures.
pub(crate) fn subscription_error(channel: &str, status: u16, text: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "event": "pusher:subscription_error",
            "channel": channel,
            "data": { "type": "AuthError", "error": text, "status": status },
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PayloadKind;

    fn publication(data: &'static str, tags: &[(&str, &str)]) -> Publication {
        Publication {
            data: Bytes::from_static(data.as_bytes()),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            kind: PayloadKind::Json,
            ..Default::default()
        }
    }

    #[test]
    fn events_are_encoded_in_pushers_shape() {
        let ch = super::super::internal_channel("1", "presence-room");
        let p = publication("\"hi \\\"there\\\"\"", &[(TAG_EVENT, "client-msg"), (TAG_USER_ID, "u\"1")]);
        let b = encode_event(&ch, &p).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "client-msg", "channel": "presence-room", "data": "hi \"there\"", "user_id": "u\"1"})
        );
        let p = publication("{\"a\":1}", &[(TAG_EVENT, "e")]);
        assert_eq!(&encode_event(&ch, &p).unwrap()[..], br#"{"event":"e","channel":"presence-room","data":{"a":1}}"#);
        assert!(encode_event("news", &p).is_none(), "not a Pusher channel");
        assert!(encode_event(&ch, &publication("{}", &[])).is_none(), "no event name");
    }

    #[test]
    fn the_excluded_socket_is_the_tagged_one() {
        let p = publication("1", &[(TAG_EXCLUDE, "1.2")]);
        assert!(excluded(&p, "1.2"));
        assert!(!excluded(&p, "1.3"));
        assert!(!excluded(&publication("1", &[]), "1.2"));
    }

    #[test]
    fn server_messages_carry_data_as_a_string() {
        let m: Value = serde_json::from_slice(&message("pusher:pong", None, &serde_json::json!({}))).unwrap();
        assert_eq!(m, serde_json::json!({"event": "pusher:pong", "data": "{}"}));
        let e: Value = serde_json::from_slice(&error(Some(4301), "slow down")).unwrap();
        assert_eq!(e["data"]["code"], 4301);
    }
}
