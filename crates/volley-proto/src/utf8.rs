//! UTF-8: the `Utf8Bytes` text payload type and the incremental, fail-fast validator
//! that checks text messages as their bytes arrive (RFC 6455 §8.1).

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use simdutf8::{basic, compat};

/// Bytes that are known to be valid UTF-8: the payload of a text message. Cloning is a
/// reference count, like [`Bytes`].
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

/// Bytes that are not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct Utf8Error;

impl Utf8Bytes {
    /// An empty string.
    pub const fn new() -> Self {
        Utf8Bytes(Bytes::new())
    }

    /// A string from a static `str`, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(s.as_bytes()))
    }

    /// The text. Validation ran when the value was made; this re-check is a SIMD pass
    /// that cannot fail, kept so the crate needs no `unsafe`.
    pub fn as_str(&self) -> &str {
        basic::from_utf8(&self.0).unwrap_or_default()
    }

    /// Wraps bytes the caller has already validated.
    pub(crate) fn from_validated(b: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&b).is_ok());
        Utf8Bytes(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying [`Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = Utf8Error;
    fn try_from(b: Bytes) -> Result<Self, Utf8Error> {
        basic::from_utf8(&b).map_err(|_| Utf8Error)?;
        Ok(Utf8Bytes(b))
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Utf8Bytes(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(s: Utf8Bytes) -> Bytes {
        s.0
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

/// Validates a byte stream as UTF-8 piece by piece, failing at the first byte that can
/// never be part of valid UTF-8, even when the sequence it belongs to is split across
/// pieces.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// Up to this length, an all-ASCII piece is recognised without the SIMD validator.
const SHORT_ASCII: usize = 256;

/// The length of the sequence a valid lead byte starts.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        _ => 2,
    }
}

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next piece of the stream.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            let have = usize::from(self.partial_len);
            let need = sequence_len(self.partial[0]) - have;
            let take = need.min(input.len());
            self.partial[have..have + take].copy_from_slice(&input[..take]);
            let len = have + take;
            input = &input[take..];
            match compat::from_utf8(&self.partial[..len]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_some() => return Err(Utf8Error),
                Err(_) => {
                    // Still a valid prefix; the input ran out before the sequence ended.
                    self.partial_len = len as u8;
                    return Ok(());
                }
            }
        }
        // Short ASCII (most chat and signalling messages) is checked a word at a time;
        // the SIMD validator's set-up costs more than that below a few hundred bytes.
        if input.len() <= SHORT_ASCII && input.is_ascii() || basic::from_utf8(input).is_ok() {
            return Ok(());
        }
        match compat::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(e) => {
                let tail = &input[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Checks that the stream did not end inside a sequence, and resets for the next one.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }

    /// Forgets any partial sequence.
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate_in_pieces(data: &[u8], cuts: &[usize]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &c in cuts {
            let c = c.clamp(start, data.len());
            v.feed(&data[start..c])?;
            start = c;
        }
        v.feed(&data[start..])?;
        v.finish()
    }

    #[test]
    fn fails_fast_inside_a_split_sequence() {
        let mut v = Utf8Validator::new();
        // "κόσμε" then the start of a 4-byte sequence, then a byte that cannot follow it.
        v.feed("κόσμε".as_bytes()).unwrap();
        v.feed(&[0xf4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(Utf8Error)); // U+110000 and above are invalid
    }

    #[test]
    fn split_valid_sequences_pass() {
        let s = "héllo ✓ 😀".as_bytes();
        for cut in 0..=s.len() {
            assert_eq!(validate_in_pieces(s, &[cut]), Ok(()), "cut at {cut}");
        }
    }

    #[test]
    fn ascii_fast_path_agrees_with_the_validator_around_its_limit() {
        for len in [0, 1, 7, 8, 9, SHORT_ASCII - 1, SHORT_ASCII, SHORT_ASCII + 1, 1000] {
            let ascii = vec![b'a'; len];
            assert_eq!(validate_in_pieces(&ascii, &[]), Ok(()), "{len} ASCII bytes");
            for bad in [0x80u8, 0xff, 0xc3] {
                let mut text = ascii.clone();
                text.push(bad);
                assert_eq!(validate_in_pieces(&text, &[]), Err(Utf8Error), "{len} + {bad:#x}");
                text.insert(len / 2, bad);
                assert_eq!(validate_in_pieces(&text, &[]), Err(Utf8Error), "{len} with {bad:#x} inside");
            }
        }
    }

    #[test]
    fn truncated_sequence_fails_on_finish() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xe2, 0x9c]).unwrap();
        assert_eq!(v.finish(), Err(Utf8Error));
    }

    proptest! {
        #[test]
        fn pieces_agree_with_whole(data in proptest::collection::vec(any::<u8>(), 0..64), a in 0usize..64, b in 0usize..64) {
            let whole = std::str::from_utf8(&data).is_ok();
            let mut cuts = [a, b];
            cuts.sort();
            prop_assert_eq!(validate_in_pieces(&data, &cuts).is_ok(), whole);
        }

        #[test]
        fn pieces_agree_on_mostly_valid_text(s in "\\PC{0,20}", noise in proptest::collection::vec(any::<u8>(), 0..3), at in 0usize..80, cut in 0usize..90) {
            let mut data = s.into_bytes();
            let at = at.min(data.len());
            data.splice(at..at, noise);
            let whole = std::str::from_utf8(&data).is_ok();
            prop_assert_eq!(validate_in_pieces(&data, &[cut]).is_ok(), whole);
        }
    }
}
