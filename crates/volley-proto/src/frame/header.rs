//! The frame header (RFC 6455 §5.2): FIN, RSV1-3, opcode, mask bit and key, and the
//! 7, 16 or 64-bit payload length.

use bytes::BufMut;

/// The largest header: 2 bytes + 8 bytes of extended length + 4 bytes of masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// A decoded or to-be-encoded frame header. The opcode is kept raw so that a reserved
/// opcode can be reported rather than lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the final fragment of a message.
    pub fin: bool,
    /// RSV1 (used by permessage-deflate).
    pub rsv1: bool,
    /// RSV2.
    pub rsv2: bool,
    /// RSV3.
    pub rsv3: bool,
    /// The raw 4-bit opcode.
    pub opcode: u8,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

/// A header that cannot be a frame header at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// A 64-bit length with its most significant bit set (§5.2: "the most significant
    /// bit MUST be 0").
    #[error("64-bit payload length has its most significant bit set")]
    LengthOverflow,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`. Returns `Ok(None)` when more bytes are
    /// needed, otherwise the header and the number of bytes it took.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut pos) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(HeaderError::LengthOverflow);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(key)
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin: b0 & 0x80 != 0,
                rsv1: b0 & 0x40 != 0,
                rsv2: b0 & 0x20 != 0,
                rsv3: b0 & 0x10 != 0,
                opcode: b0 & 0x0f,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// The encoded size of this header.
    pub fn encoded_len(&self) -> usize {
        let len = match self.payload_len {
            0..=125 => 2,
            126..=0xffff => 4,
            _ => 10,
        };
        len + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Appends the header to `dst`, using the minimal length encoding (§5.2: "the
    /// minimal number of bytes MUST be used to encode the length").
    pub fn encode(&self, dst: &mut impl BufMut) {
        let b0 = (u8::from(self.fin) << 7)
            | (u8::from(self.rsv1) << 6)
            | (u8::from(self.rsv2) << 5)
            | (u8::from(self.rsv3) << 4)
            | (self.opcode & 0x0f);
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        dst.put_u8(b0);
        match self.payload_len {
            n @ 0..=125 => dst.put_u8(mask_bit | n as u8),
            n @ 126..=0xffff => {
                dst.put_u8(mask_bit | 126);
                dst.put_u16(n as u16);
            }
            n => {
                dst.put_u8(mask_bit | 127);
                dst.put_u64(n);
            }
        }
        if let Some(key) = self.mask {
            dst.put_slice(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(fin: bool, opcode: u8, mask: Option<[u8; 4]>, len: u64) -> FrameHeader {
        FrameHeader { fin, rsv1: false, rsv2: false, rsv3: false, opcode, mask, payload_len: len }
    }

    #[test]
    fn rfc6455_5_7_unmasked_hello_header() {
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, n) = FrameHeader::parse(&bytes).unwrap().unwrap();
        assert_eq!(n, 2);
        assert_eq!(h, header(true, 1, None, 5));
    }

    #[test]
    fn rfc6455_5_7_fragmented_headers() {
        // "A fragmented unmasked text message": 0x01 0x03 "Hel", 0x80 0x02 "lo"
        let (h, _) = FrameHeader::parse(&[0x01, 0x03]).unwrap().unwrap();
        assert_eq!(h, header(false, 1, None, 3));
        let (h, _) = FrameHeader::parse(&[0x80, 0x02]).unwrap().unwrap();
        assert_eq!(h, header(true, 0, None, 2));
    }

    #[test]
    fn rfc6455_5_7_length_encodings() {
        // "256 bytes binary message in a single unmasked frame": 0x82 0x7E 0x0100
        let (h, n) = FrameHeader::parse(&[0x82, 0x7e, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (256, 4));
        // "64KiB binary message in a single unmasked frame": 0x82 0x7F 0x0000000000010000
        let b = [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0];
        let (h, n) = FrameHeader::parse(&b).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out, b);
    }

    #[test]
    fn length_msb_set_is_an_error() {
        let b = [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(FrameHeader::parse(&b), Err(HeaderError::LengthOverflow));
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let b = [0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4];
        for cut in 0..b.len() {
            assert_eq!(FrameHeader::parse(&b[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(FrameHeader::parse(&b).unwrap().is_some());
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(fin: bool, rsv1: bool, rsv2: bool, rsv3: bool, opcode in 0u8..16,
                                         mask: Option<[u8; 4]>, len in prop_oneof![0u64..130, 60000u64..70000, 0u64..(1u64 << 63)]) {
            let h = FrameHeader { fin, rsv1, rsv2, rsv3, opcode, mask, payload_len: len };
            let mut out = Vec::new();
            h.encode(&mut out);
            prop_assert_eq!(out.len(), h.encoded_len());
            prop_assert_eq!(FrameHeader::parse(&out), Ok(Some((h, out.len()))));
        }
    }
}
