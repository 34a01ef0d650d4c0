//! Messages as the application sends and receives them.

use bytes::Bytes;
use volley_proto::{CloseFrame, Utf8Bytes};

/// A WebSocket message, or a control frame the application sees or sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping. Received pings are answered automatically; sending one asks the peer
    /// for a pong.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame: received, the peer's (the closing handshake is complete when the
    /// stream hands it out); sent, starts the closing handshake (`None` sends 1000).
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Utf8Bytes>) -> Self {
        Message::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Message::Binary(b.into())
    }

    /// Whether this is a text or binary message (not a control frame).
    pub fn is_data(&self) -> bool {
        matches!(self, Message::Text(_) | Message::Binary(_))
    }

    /// Whether the message may be sent on an open connection: a ping or pong payload
    /// of at most 125 bytes, a close frame with a code valid on the wire and a reason
    /// of at most 123 bytes. The checks sending it makes, for a caller that validates
    /// it before queueing it (the writer half of a split connection does).
    pub fn check(&self) -> Result<(), volley_proto::SendError> {
        match self {
            Message::Ping(b) | Message::Pong(b) => volley_proto::check_control_payload(b.len()),
            Message::Close(Some(f)) => volley_proto::check_close(f.code, &f.reason),
            Message::Text(_) | Message::Binary(_) | Message::Close(None) => Ok(()),
        }
    }

    /// The payload bytes.
    pub fn into_data(self) -> Bytes {
        match self {
            Message::Text(t) => t.into_bytes(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
            Message::Close(Some(f)) => f.reason.into_bytes(),
            Message::Close(None) => Bytes::new(),
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.into())
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::Binary(v.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}
