//! permessage-deflate (RFC 7692): negotiation in both roles and the per-message codec.
//!
//! Negotiation: a server calls [`negotiate`] with the client's offers and puts the
//! returned answer in its 101 response; a client sends [`client_offer`] and checks the
//! server's answer with [`accept_response`]. Either way the result is a
//! [`DeflateParams`], handed to [`Connection::enable_deflate`](crate::Connection::enable_deflate).
//!
//! The codec compresses each message with a sync flush and removes the final
//! `00 00 ff ff` (§7.2.1), marks the first frame with RSV1, and inflates received
//! messages frame by frame into the message buffer, checking the inflated size against
//! [`Config::max_message_size`](crate::Config::max_message_size) after every chunk of
//! output, so a decompression bomb fails with 1009 after at most one chunk past the
//! limit. The compressor and decompressor are created on first use, so a connection that
//! negotiates the extension but sends only small messages pays nothing for it; in a
//! direction without context takeover they are dropped after every message, so an idle
//! connection holds no compression state at all.
//!
//! Window bits 8: zlib cannot compress with a 256-byte window (it silently uses 512
//! bytes), so this endpoint never agrees to compress with 8 bits. It does agree to
//! decompress a peer's 8-bit stream, using a 9-bit window, which reads it unchanged.

use bytes::{Bytes, BytesMut};
use zlib_rs::{DeflateConfig as ZConfig, DeflateFlush, InflateFlush, Status};

use crate::handshake::{ExtensionOffer, HandshakeError};
use crate::utf8::Utf8Validator;

/// The extension's name.
pub const EXTENSION: &str = "permessage-deflate";

/// The tail every sync-flushed message ends with, removed on send and restored on
/// receive (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is produced in chunks of at most this size, so a bomb overshoots the limit by
/// at most this much before it is stopped.
const CHUNK: usize = 32 << 10;

/// This endpoint's permessage-deflate settings. "Local" is the direction this endpoint
/// compresses, "remote" the direction it decompresses; they map to the RFC's `server_*`
/// and `client_*` parameters according to the role.
///
/// The defaults come from the tables in docs/DEFLATE.md: 12-bit windows and memory level
/// 5 keep a busy connection's compression state at about 214 KiB instead of 379 KiB with
/// zlib's 15/8, for the same ratio on typical traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Largest window this endpoint compresses with (9..=15). Default 12.
    pub local_max_window_bits: u8,
    /// Largest window the peer is asked to compress with, when it lets us ask (9..=15).
    /// Default 12.
    pub remote_max_window_bits: u8,
    /// Reset the compressor after every message (no context takeover in this endpoint's
    /// direction): less memory held between messages, less compression. Default off.
    pub local_no_context_takeover: bool,
    /// Ask the peer to reset its compressor after every message. Default off.
    pub remote_no_context_takeover: bool,
    /// Compression level, 0 (store) to 9 (best). Default 6, zlib's default.
    pub level: u8,
    /// zlib memory level of the compressor, 1..=9: the size of its hash table and
    /// symbol buffer. Default 5.
    pub mem_level: u8,
    /// Messages shorter than this many bytes are sent uncompressed: small payloads do
    /// not shrink and cost time. Default 64.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            local_max_window_bits: 12,
            remote_max_window_bits: 12,
            local_no_context_takeover: false,
            remote_no_context_takeover: false,
            level: 6,
            mem_level: 5,
            threshold: 64,
        }
    }
}

impl DeflateConfig {
    /// Checks the ranges of every setting.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if !(9..=15).contains(&self.local_max_window_bits) {
            return Err(crate::ConfigError("deflate local_max_window_bits must be 9..=15"));
        }
        if !(9..=15).contains(&self.remote_max_window_bits) {
            return Err(crate::ConfigError("deflate remote_max_window_bits must be 9..=15"));
        }
        if self.level > 9 {
            return Err(crate::ConfigError("deflate level must be 0..=9"));
        }
        if !(1..=9).contains(&self.mem_level) {
            return Err(crate::ConfigError("deflate mem_level must be 1..=9"));
        }
        Ok(())
    }
}

/// The agreed parameters of a permessage-deflate connection, in the RFC's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// The server compresses with at most this window (15 when not negotiated).
    pub server_max_window_bits: u8,
    /// The client compresses with at most this window (15 when not negotiated).
    pub client_max_window_bits: u8,
}

/// The parameters of one offer or answer, checked per RFC 7692 §7.1: known names only,
/// each at most once, values where (and only where) allowed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_max_window_bits: Option<Option<u8>>,
}

fn parse_bits(v: &str) -> Option<u8> {
    // "a decimal integer value without leading zeroes between 8 to 15, inclusive"
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 2 {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

fn parse_params(offer: &ExtensionOffer) -> Option<Parsed> {
    let mut p = Parsed::default();
    let mut seen = [false; 4];
    for (name, value) in &offer.params {
        let i = match name.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
        match (i, value.as_deref()) {
            (0, None) => p.server_no_context_takeover = true,
            (1, None) => p.client_no_context_takeover = true,
            (2, Some(v)) => p.server_max_window_bits = Some(parse_bits(v)?),
            (3, None) => p.client_max_window_bits = Some(None),
            (3, Some(v)) => p.client_max_window_bits = Some(Some(parse_bits(v)?)),
            _ => return None,
        }
    }
    Some(p)
}

/// Server side: picks the first permessage-deflate offer this endpoint can accept
/// (RFC 7692 §7.1: offers with unknown, duplicate or invalid parameters are declined)
/// and returns the agreed parameters and the answer for the response.
pub fn negotiate(offers: &[ExtensionOffer], config: &DeflateConfig) -> Option<(DeflateParams, ExtensionOffer)> {
    offers.iter().filter(|o| o.name == EXTENSION).find_map(|o| {
        let p = parse_params(o)?;
        // The window the server compresses with: ours, or less if the client asks.
        let server_bits =
            p.server_max_window_bits.map_or(config.local_max_window_bits, |b| b.min(config.local_max_window_bits));
        if server_bits < 9 {
            return None; // zlib cannot compress with an 8-bit window: decline.
        }
        // The window the client compresses with: we may only limit it if it offered
        // client_max_window_bits (§7.1.2.2).
        let wanted = config.remote_max_window_bits.max(9);
        let (client_bits, answer_client_bits) = match p.client_max_window_bits {
            None => (15, false),
            Some(None) => (wanted, wanted < 15),
            // The client already promised at most `b`; answer only to ask for less.
            Some(Some(b)) => (b.min(wanted), wanted < b),
        };
        let params = DeflateParams {
            server_no_context_takeover: p.server_no_context_takeover || config.local_no_context_takeover,
            client_no_context_takeover: p.client_no_context_takeover || config.remote_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        };
        let mut answer = ExtensionOffer { name: EXTENSION.to_string(), params: Vec::new() };
        if params.server_no_context_takeover {
            answer.params.push(("server_no_context_takeover".into(), None));
        }
        if params.client_no_context_takeover {
            answer.params.push(("client_no_context_takeover".into(), None));
        }
        if server_bits < 15 || p.server_max_window_bits.is_some() {
            answer.params.push(("server_max_window_bits".into(), Some(server_bits.to_string())));
        }
        if answer_client_bits {
            answer.params.push(("client_max_window_bits".into(), Some(client_bits.to_string())));
        }
        Some((params, answer))
    })
}

/// Client side: the offer to send.
pub fn client_offer(config: &DeflateConfig) -> ExtensionOffer {
    let mut params = Vec::new();
    if config.remote_no_context_takeover {
        params.push(("server_no_context_takeover".into(), None));
    }
    if config.local_no_context_takeover {
        params.push(("client_no_context_takeover".into(), None));
    }
    if config.remote_max_window_bits < 15 {
        params.push(("server_max_window_bits".into(), Some(config.remote_max_window_bits.max(9).to_string())));
    }
    // We can compress with any window the server asks for, down to 9 bits.
    params.push(("client_max_window_bits".into(), None));
    ExtensionOffer { name: EXTENSION.to_string(), params }
}

/// Client side: checks the server's answer to [`client_offer`] (RFC 7692 §7.1: a client
/// fails the connection on parameters it did not allow).
pub fn accept_response(answer: &ExtensionOffer, config: &DeflateConfig) -> Result<DeflateParams, HandshakeError> {
    let bad = |why: &str| HandshakeError::Extension(format!("{EXTENSION}: {why}"));
    let p = parse_params(answer).ok_or_else(|| bad("invalid parameters"))?;
    let requested = config.remote_max_window_bits.max(9);
    let server_bits = match p.server_max_window_bits {
        Some(b) if requested < 15 && b > requested => return Err(bad("server_max_window_bits above the offer")),
        Some(b) => b,
        None if requested < 15 => return Err(bad("server_max_window_bits missing")),
        None => 15,
    };
    let client_bits = match p.client_max_window_bits {
        None => config.local_max_window_bits,
        Some(None) => return Err(bad("client_max_window_bits without a value")),
        Some(Some(8)) => return Err(bad("client_max_window_bits=8 is not supported")),
        Some(Some(b)) => b.min(config.local_max_window_bits),
    };
    Ok(DeflateParams {
        server_no_context_takeover: p.server_no_context_takeover,
        client_no_context_takeover: p.client_no_context_takeover || config.local_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    })
}

/// Why inflating a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// The inflated message passed the size limit.
    TooBig,
    /// The data is not a valid deflate stream.
    Corrupt,
    /// The inflated text is not UTF-8.
    Utf8,
}

/// The compressing half.
pub(crate) struct Compressor {
    z: zlib_rs::Deflate,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Compressor {
    pub(crate) fn new(window_bits: u8, level: u8, mem_level: u8) -> Self {
        let z = zlib_rs::Deflate::new_with_config(ZConfig {
            level: i32::from(level.min(9)),
            window_bits: -i32::from(window_bits.clamp(9, 15)),
            mem_level: i32::from(mem_level.clamp(1, 9)),
            ..ZConfig::default()
        });
        Compressor { z }
    }

    /// Compresses one fragment (the whole message when `fin`), sync-flushed; on the last
    /// fragment the `00 00 ff ff` tail is removed.
    pub(crate) fn compress(&mut self, input: &[u8], fin: bool) -> Bytes {
        let mut out = BytesMut::with_capacity(input.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(CHUNK.min(input.len() + 64));
            }
            let start = out.len();
            out.resize(out.capacity(), 0);
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self.z.compress(&input[consumed..], &mut out[start..], DeflateFlush::SyncFlush);
            consumed += (self.z.total_in() - in0) as usize;
            let produced = (self.z.total_out() - out0) as usize;
            let space = out.len() - start;
            out.truncate(start + produced);
            // With a sync flush, output space left over means everything was flushed.
            if r.is_err() || (consumed == input.len() && produced < space) {
                break;
            }
        }
        if fin {
            if out.ends_with(&TAIL) {
                out.truncate(out.len() - TAIL.len());
            }
            if out.is_empty() {
                // §7.2.3.6: an empty message compresses to a single 0x00 octet.
                out.extend_from_slice(&[0x00]);
            }
        }
        out.freeze()
    }
}

/// The decompressing half.
pub(crate) struct Decompressor {
    z: zlib_rs::Inflate,
    window_bits: u8,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor").finish_non_exhaustive()
    }
}

impl Decompressor {
    pub(crate) fn new(window_bits: u8) -> Self {
        // An 8-bit stream is read with a 9-bit window (see the module docs).
        let window_bits = window_bits.clamp(9, 15);
        Decompressor { z: zlib_rs::Inflate::new(false, window_bits), window_bits }
    }

    fn fresh(&mut self) {
        self.z = zlib_rs::Inflate::new(false, self.window_bits);
    }

    /// Inflates one frame's payload into `out` (restoring the tail after the last
    /// frame), stopping as soon as `out` passes `limit` bytes or the text stops being
    /// UTF-8.
    pub(crate) fn inflate(
        &mut self,
        payload: &[u8],
        fin: bool,
        out: &mut BytesMut,
        limit: usize,
        mut utf8: Option<&mut Utf8Validator>,
    ) -> Result<(), InflateError> {
        // A payload that ends its deflate stream (BFINAL) exactly has no tail to restore.
        let result = self.run(payload, out, limit, &mut utf8).and_then(|ended| {
            if fin && !ended {
                self.run(&TAIL, out, limit, &mut utf8).map(drop)
            } else {
                Ok(())
            }
        });
        if result.is_err() {
            self.fresh();
        }
        result
    }

    fn run(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        limit: usize,
        utf8: &mut Option<&mut Utf8Validator>,
    ) -> Result<bool, InflateError> {
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(CHUNK.min((input.len() - consumed).saturating_mul(4).max(4096)));
            }
            let start = out.len();
            let space = (out.capacity() - start).min(CHUNK);
            out.resize(start + space, 0);
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self.z.decompress(&input[consumed..], &mut out[start..], InflateFlush::SyncFlush);
            let used = (self.z.total_in() - in0) as usize;
            let produced = (self.z.total_out() - out0) as usize;
            consumed += used;
            out.truncate(start + produced);
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if let Some(v) = utf8.as_deref_mut() {
                v.feed(&out[start..]).map_err(|_| InflateError::Utf8)?;
            }
            match r {
                Err(_) => return Err(InflateError::Corrupt),
                Ok(Status::StreamEnd) => {
                    // The peer ended the deflate stream (BFINAL): whatever follows starts
                    // a new one.
                    self.fresh();
                    if consumed == input.len() {
                        return Ok(true);
                    }
                }
                Ok(_) => {
                    if consumed == input.len() && produced < space {
                        return Ok(false);
                    }
                    if used == 0 && produced == 0 {
                        return Err(InflateError::Corrupt);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &str) -> Vec<ExtensionOffer> {
        ExtensionOffer::parse_all([s]).unwrap()
    }

    #[test]
    fn rfc7692_7_2_3_1_hello_golden() {
        // "Hello" compressed in one frame: 0xf2 0x48 0xcd 0xc9 0xc9 0x07 0x00.
        let wire = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut d = Decompressor::new(15);
        let mut out = BytesMut::new();
        d.inflate(&wire, true, &mut out, 1 << 20, None).unwrap();
        assert_eq!(&out[..], b"Hello");
        let mut c = Compressor::new(15, 6, 8);
        assert_eq!(&c.compress(b"Hello", true)[..], &wire);
    }

    #[test]
    fn rfc7692_7_2_3_2_context_takeover_golden() {
        // The second "Hello" with context takeover: 0xf2 0x00 0x11 0x00 0x00.
        let mut c = Compressor::new(15, 6, 8);
        c.compress(b"Hello", true);
        assert_eq!(&c.compress(b"Hello", true)[..], [0xf2, 0x00, 0x11, 0x00, 0x00]);
        let mut d = Decompressor::new(15);
        let mut out = BytesMut::new();
        d.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut out, 1 << 20, None).unwrap();
        out.clear();
        d.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], true, &mut out, 1 << 20, None).unwrap();
        assert_eq!(&out[..], b"Hello");
    }

    #[test]
    fn rfc7692_7_2_3_3_stored_block_golden() {
        // "Hello" in a DEFLATE block with no compression: 0x00 0x05 0x00 0xfa 0xff "Hello" 0x00.
        let mut d = Decompressor::new(15);
        let mut out = BytesMut::new();
        d.inflate(b"\x00\x05\x00\xfa\xffHello\x00", true, &mut out, 1 << 20, None).unwrap();
        assert_eq!(&out[..], b"Hello");
    }

    #[test]
    fn rfc7692_7_2_3_4_bfinal_golden() {
        // "Hello" in a block with BFINAL set: 0xf3 0x48 0xcd 0xc9 0xc9 0x07 0x00 0x00. The
        // stream ends; the next message starts a new one.
        let mut d = Decompressor::new(15);
        let mut out = BytesMut::new();
        d.inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00], true, &mut out, 1 << 20, None).unwrap();
        assert_eq!(&out[..], b"Hello");
        out.clear();
        // A peer that ends the stream without the empty block is read too.
        d.inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut out, 1 << 20, None).unwrap();
        out.clear();
        d.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut out, 1 << 20, None).unwrap();
        assert_eq!(&out[..], b"Hello");
    }

    #[test]
    fn rfc7692_7_2_3_5_two_blocks_golden() {
        // "He" and "llo" in two DEFLATE blocks in one message.
        let wire = [0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00];
        let mut d = Decompressor::new(15);
        let mut out = BytesMut::new();
        d.inflate(&wire, true, &mut out, 1 << 20, None).unwrap();
        assert_eq!(&out[..], b"Hello");
    }

    #[test]
    fn rfc7692_7_2_3_6_empty_message() {
        let mut c = Compressor::new(15, 6, 8);
        assert_eq!(&c.compress(b"", true)[..], [0x00]);
        let mut d = Decompressor::new(15);
        let mut out = BytesMut::new();
        d.inflate(&[0x00], true, &mut out, 10, None).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut c = Compressor::new(15, 9, 9);
        let bomb = c.compress(&zeros, true);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let mut d = Decompressor::new(15);
        let mut out = BytesMut::new();
        assert_eq!(d.inflate(&bomb, true, &mut out, 1 << 20, None), Err(InflateError::TooBig));
        // Stopped within one chunk of the limit, never sized to the inflated total.
        assert!(out.len() <= (1 << 20) + CHUNK, "{}", out.len());
        assert!(out.capacity() <= 2 * ((1 << 20) + CHUNK), "{}", out.capacity());
    }

    #[test]
    fn corrupt_data_is_an_error() {
        let mut d = Decompressor::new(15);
        let mut out = BytesMut::new();
        assert_eq!(d.inflate(&[0xff, 0xff, 0xff, 0xff], true, &mut out, 1 << 20, None), Err(InflateError::Corrupt));
    }

    #[test]
    fn negotiation_server_side() {
        let c = DeflateConfig::default();
        // Chrome's offer.
        let (p, answer) = negotiate(&offer("permessage-deflate; client_max_window_bits"), &c).unwrap();
        assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (12, 12));
        assert_eq!(
            answer.to_header_value(),
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        );
        // Without client_max_window_bits we may not limit the client.
        let (p, answer) = negotiate(&offer("permessage-deflate"), &c).unwrap();
        assert_eq!(p.client_max_window_bits, 15);
        assert_eq!(answer.to_header_value(), "permessage-deflate; server_max_window_bits=12");
        // Requests are honoured.
        let (p, answer) = negotiate(
            &offer(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
            ),
            &c,
        )
        .unwrap();
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        assert_eq!(p.server_max_window_bits, 10);
        assert_eq!(
            answer.to_header_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        );
        // Invalid offers are declined; the next valid one is taken.
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=8",
        ] {
            assert!(negotiate(&offer(bad), &c).is_none(), "{bad}");
            let two = format!("{bad}, permessage-deflate; client_max_window_bits=9");
            let (p, _) = negotiate(&offer(&two), &c).unwrap();
            assert_eq!(p.client_max_window_bits, 9, "{two}");
        }
        assert!(negotiate(&offer("x-webkit-deflate-frame"), &c).is_none());
    }

    #[test]
    fn negotiation_client_side() {
        let c = DeflateConfig::default();
        let o = client_offer(&c);
        assert_eq!(o.to_header_value(), "permessage-deflate; server_max_window_bits=12; client_max_window_bits");
        let (server_view, answer) = negotiate(&[o], &DeflateConfig::default()).unwrap();
        let client_view = accept_response(&answer, &c).unwrap();
        assert_eq!(server_view, client_view);
        let ans = |s: &str| accept_response(&offer(s)[0], &c);
        assert!(ans("permessage-deflate; server_max_window_bits=13").is_err());
        assert!(ans("permessage-deflate").is_err());
        assert!(ans("permessage-deflate; server_max_window_bits=10; unknown").is_err());
        assert!(ans("permessage-deflate; server_max_window_bits=10; client_max_window_bits").is_err());
        assert!(ans("permessage-deflate; server_max_window_bits=10; client_max_window_bits=8").is_err());
        assert_eq!(
            ans("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9")
                .unwrap()
                .client_max_window_bits,
            9
        );
    }
}
