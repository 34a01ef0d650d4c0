//! Close codes and close frames (RFC 6455 §5.5.1, §7.4).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::utf8::Utf8Bytes;

/// A close status code. The code space is open (3000-4999 are for libraries and
/// applications), so any `u16` fits; the constants name the codes RFC 6455 §7.4.1 and
/// the IANA registry define.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: reserved; means "no status code was present". Never sent on the wire.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: reserved; means "closed without a close frame". Never sent on the wire.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a message's data was inconsistent with its type (invalid UTF-8 text).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violated the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message was too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected the server to negotiate an extension.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting (IANA registry).
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (IANA registry).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: bad gateway (IANA registry).
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
    /// 1015: reserved; means "TLS handshake failed". Never sent on the wire.
    pub const TLS_HANDSHAKE: CloseCode = CloseCode(1015);

    /// Whether this code may appear in a close frame on the wire.
    ///
    /// Codes below 1000, 1004 (reserved), the "MUST NOT be set as a status code" codes
    /// 1005, 1006 and 1015 (§7.4.1), the unassigned rest of 1000-2999 and anything above
    /// 4999 are invalid; 3000-4999 are open to libraries and applications.
    pub const fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u16> for CloseCode {
    fn from(v: u16) -> Self {
        CloseCode(v)
    }
}

impl From<CloseCode> for u16 {
    fn from(c: CloseCode) -> u16 {
        c.0
    }
}

/// The body of a close frame: a status code and a UTF-8 reason (at most 123 bytes, so
/// the frame fits the 125-byte control frame limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, possibly empty.
    pub reason: Utf8Bytes,
}

/// Why a received close payload is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClosePayloadError {
    /// One byte: "If there is a body, the first two bytes of the body MUST be a 2-byte
    /// unsigned integer".
    OneByte,
    /// A code that may not be sent.
    InvalidCode(u16),
    /// The reason is not UTF-8.
    InvalidUtf8,
}

impl CloseFrame {
    /// A close frame with a code and a reason.
    pub fn new(code: CloseCode, reason: impl Into<Utf8Bytes>) -> Self {
        CloseFrame { code, reason: reason.into() }
    }

    /// Parses the payload of a received close frame; `Ok(None)` for an empty body.
    pub(crate) fn parse(payload: &Bytes) -> Result<Option<CloseFrame>, ClosePayloadError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(ClosePayloadError::OneByte),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(ClosePayloadError::InvalidCode(code.0));
                }
                let reason = Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| ClosePayloadError::InvalidUtf8)?;
                Ok(Some(CloseFrame { code, reason }))
            }
        }
    }

    /// The wire payload: the code in network byte order, then the reason.
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(2 + self.reason.len());
        b.put_u16(self.code.0);
        b.put_slice(self.reason.as_bytes());
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_7_4_1_code_validity() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
            assert!(CloseCode(ok).is_valid_on_wire(), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!CloseCode(bad).is_valid_on_wire(), "{bad}");
        }
    }

    #[test]
    fn close_payload_parsing() {
        assert_eq!(CloseFrame::parse(&Bytes::new()), Ok(None));
        assert_eq!(CloseFrame::parse(&Bytes::from_static(&[3])), Err(ClosePayloadError::OneByte));
        assert_eq!(CloseFrame::parse(&Bytes::from_static(&[0x03, 0xed])), Err(ClosePayloadError::InvalidCode(1005)));
        assert_eq!(CloseFrame::parse(&Bytes::from_static(&[0x03, 0xe8, 0xff])), Err(ClosePayloadError::InvalidUtf8));
        let f = CloseFrame::parse(&Bytes::from_static(b"\x03\xe8bye")).unwrap().unwrap();
        assert_eq!(f, CloseFrame::new(CloseCode::NORMAL, "bye"));
        assert_eq!(&f.encode()[..], b"\x03\xe8bye");
    }
}
