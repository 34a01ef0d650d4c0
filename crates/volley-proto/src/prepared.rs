//! Prepared messages: a message encoded once, and compressed once, to be sent to many
//! connections by reference count (broadcast, fan-out).

use bytes::{Bytes, BytesMut};

use crate::deflate::{Compressor, DeflateParams};
use crate::frame::{FrameHeader, MessageKind, OpCode};
use crate::utf8::Utf8Bytes;

/// A message whose server-side frame is encoded once. [`Connection::send_prepared`]
/// queues it on a server connection without encoding or copying it again (small
/// frames are copied into the batch buffer, which is cheaper than a reference).
///
/// With [`PreparedMessage::with_deflate`] the payload is also compressed once, as a
/// stand-alone deflate stream. A stand-alone stream is only valid on connections whose
/// server compresses without context takeover (`server_no_context_takeover`), with a
/// window at least as large as the one used here; other connections get the plain
/// frame, so the message is always delivered correctly. Client connections mask every
/// frame, so for them the message is encoded as usual.
///
/// [`Connection::send_prepared`]: crate::Connection::send_prepared
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    opcode: OpCode,
    payload: Bytes,
    header: Bytes,
    compressed: Option<Compressed>,
}

#[derive(Debug, Clone)]
struct Compressed {
    window_bits: u8,
    header: Bytes,
    payload: Bytes,
}

fn header(opcode: OpCode, rsv1: bool, len: usize) -> Bytes {
    let h = FrameHeader {
        fin: true,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode: opcode.as_u8(),
        mask: None,
        payload_len: len as u64,
    };
    let mut b = BytesMut::with_capacity(h.encoded_len());
    h.encode(&mut b);
    b.freeze()
}

impl PreparedMessage {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::new(MessageKind::Text, text.into().into_bytes())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::new(MessageKind::Binary, data.into())
    }

    fn new(kind: MessageKind, payload: Bytes) -> Self {
        let opcode = match kind {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        PreparedMessage { opcode, header: header(opcode, false, payload.len()), payload, compressed: None }
    }

    /// Also compresses the payload once, with a `window_bits` window (9..=15; 12 suits
    /// the default settings) at `level` (0..=9).
    pub fn with_deflate(mut self, window_bits: u8, level: u8) -> Self {
        let window_bits = window_bits.clamp(9, 15);
        let mut c = Compressor::new(window_bits, level, 8);
        let payload = c.compress(&self.payload, true);
        self.compressed = Some(Compressed { window_bits, header: header(self.opcode, true, payload.len()), payload });
        self
    }

    /// The uncompressed payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Whether this is a text or a binary message.
    pub fn kind(&self) -> MessageKind {
        if self.opcode == OpCode::Text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        }
    }

    pub(crate) fn opcode(&self) -> OpCode {
        self.opcode
    }

    pub(crate) fn plain(&self) -> (&Bytes, &Bytes) {
        (&self.header, &self.payload)
    }

    /// The compressed frame, if it is valid for a server with these parameters.
    pub(crate) fn compressed_for(&self, params: &DeflateParams) -> Option<(&Bytes, &Bytes)> {
        let c = self.compressed.as_ref()?;
        (params.server_no_context_takeover && params.server_max_window_bits >= c.window_bits)
            .then_some((&c.header, &c.payload))
    }
}
