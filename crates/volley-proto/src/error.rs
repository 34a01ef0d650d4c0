//! Errors: a peer's protocol faults (reported as events, each with its close code) kept
//! apart from local misuse (returned as `Err`).

use crate::frame::CloseCode;

/// A fault of the peer's that failed the connection. The core has queued a close frame
/// with [`ProtocolError::close_code`]; the reason sent to the peer carries no detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame used a reserved opcode.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A frame set an RSV bit no negotiated extension defines.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// A client sent an unmasked frame (§5.1: "a server MUST close the connection upon
    /// receiving a frame that is not masked").
    #[error("unmasked frame from a client")]
    UnmaskedFrame,
    /// A server sent a masked frame (§5.1).
    #[error("masked frame from a server")]
    MaskedFrame,
    /// A control frame had FIN clear (§5.5: "control frames MUST NOT be fragmented").
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A control frame's payload exceeded 125 bytes (§5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(u64),
    /// A continuation frame arrived with no fragmented message in progress.
    #[error("continuation frame with no message in progress")]
    UnexpectedContinuation,
    /// A new data frame arrived while a fragmented message was in progress.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// A 64-bit length had its most significant bit set.
    #[error("invalid frame length")]
    InvalidLength,
    /// A frame exceeded [`Config::max_frame_size`](crate::Config::max_frame_size).
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    FrameTooBig {
        /// The frame's payload length.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message exceeded [`Config::max_message_size`](crate::Config::max_message_size).
    #[error("message of at least {size} bytes exceeds the limit of {max}")]
    MessageTooBig {
        /// The message's size so far.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A text message, or a close reason, was not valid UTF-8.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A compressed message was not a valid deflate stream.
    #[error("invalid compressed data")]
    InvalidCompressedData,
    /// A close frame had a 1-byte payload.
    #[error("close frame with a 1-byte payload")]
    InvalidClosePayload,
    /// A close frame carried a code that may not be sent.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// The transport ended before the closing handshake completed (close code 1006;
    /// nothing is sent).
    #[error("connection closed without a closing handshake")]
    AbnormalClosure,
}

impl ProtocolError {
    /// The close code this fault is answered with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::FrameTooBig { .. } | ProtocolError::MessageTooBig { .. } => CloseCode::MESSAGE_TOO_BIG,
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => CloseCode::INVALID_PAYLOAD,
            ProtocolError::AbnormalClosure => CloseCode::ABNORMAL,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// A local misuse of the connection: a command that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// A close frame was already sent: "the endpoint MUST NOT send any more data frames
    /// after sending a Close frame" (§5.5.1).
    #[error("the connection is closing or closed")]
    Closed,
    /// A control frame payload over 125 bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(usize),
    /// A close code that may not be sent (1005, 1006, 1015, unassigned).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    /// A whole message, or the first fragment of one, while a fragmented message is
    /// still being sent.
    #[error("a fragmented message is in progress")]
    FragmentInProgress,
    /// A continuation fragment with no fragmented message in progress.
    #[error("no fragmented message is in progress")]
    NoFragmentInProgress,
    /// A text fragment that is not valid UTF-8 where the message so far is.
    #[error("invalid UTF-8 in a text fragment")]
    InvalidUtf8,
    /// [`Connection::resend_close`](crate::Connection::resend_close) on a connection
    /// that sent no close frame.
    #[error("no close frame was sent")]
    NoCloseSent,
}
