//! Fossil deltas: a publication sent as the difference from the previous one the
//! subscriber received, in the delta format of the Fossil SCM that centrifuge-js and
//! centrifuge-python decode (subscriptions made with `delta: "fossil"`).
//!
//! [`encode`] builds the delta that turns a source into a target, and
//! [`encode_if_smaller`] gives it only when it is shorter than the target (the rule for
//! sending a publication with `delta: true`). [`apply`] rebuilds the target from the source
//! and a delta, bounded by a size limit and strict about the format.
//!
//! # The format
//!
//! ```text
//! LENGTH "\n"  { COUNT "@" OFFSET "," | COUNT ":" BYTES }  CHECKSUM ";"
//! ```
//!
//! Numbers are unsigned integers in base 64, most significant digit first, with the digits
//! `0-9`, `A-Z`, `_`, `a-z`, `~` (in that order). `LENGTH` is the target's length in bytes.
//! `COUNT@OFFSET,` copies `COUNT` bytes of the source starting at `OFFSET`; `COUNT:` inserts
//! the `COUNT` bytes that follow the colon. The commands, in order, produce the target.
//! `CHECKSUM` is the sum, wrapping at 32 bits, of the target read as big-endian 32-bit words,
//! the last one padded with zero bytes. Decoders verify it: centrifuge-js (5.x) and
//! centrifuge-python reject a delta whose checksum does not match its output ("bad
//! checksum"), as the fossil-delta library does by default, and so does [`apply`]. Encoders
//! differ in details that every decoder takes: Fossil's writes an empty insert (`0:`) for an
//! empty target when the source is short, [`encode`] never writes an empty command.
//!
//! # Text
//!
//! On the JSON protocol a delta travels as a JSON string, which clients turn back into bytes
//! as UTF-8 before applying it. When the target is valid UTF-8, [`encode`] cuts it only at
//! character boundaries, so every inserted run is whole characters and the delta is valid
//! UTF-8 as well (the commands themselves are ASCII). A delta that split a character would
//! not survive the trip through a string.
//!
//! # The encoder
//!
//! The source is cut into blocks of [`NHASH`] bytes, each indexed by a fingerprint of its
//! bytes (two sums that can be rolled one byte at a time). A window of the same size slides
//! over the target; where its fingerprint names source blocks, the bytes are compared and the
//! match is grown forwards and backwards, and the longest one becomes a copy. Bytes that no
//! copy covers are inserted. The work is linear in the sizes of source and target, times a
//! bounded number of candidates per window. The deltas are not byte for byte those of Fossil's
//! own encoder (which matches differently), but every decoder applies them alike.

use std::fmt;

/// The size of the window the encoder matches with, and of the source blocks it indexes:
/// a copy is found only where at least this many bytes match.
pub const NHASH: usize = 16;

/// The 64 digits of the format's numbers, by value.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// How many source blocks of one bucket the encoder looks at for one window of the target.
const MAX_CANDIDATES: usize = 64;

/// A copy at least this long is taken without looking for a longer one (at other source
/// blocks or nearby windows). With [`MAX_CANDIDATES`], it bounds the work per window.
const GOOD_MATCH: usize = 256;

/// Why [`apply`] refused a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeltaError {
    /// The delta ends inside a command or before its checksum.
    Truncated,
    /// A number is missing where one is due, or does not fit in 64 bits.
    BadNumber {
        /// Where in the delta the number starts.
        at: usize,
    },
    /// A byte other than the separator or command due at that place.
    Unexpected {
        /// Where in the delta the byte is.
        at: usize,
        /// The byte found.
        found: u8,
        /// What was due there.
        expected: &'static str,
    },
    /// The delta declares a target longer than the caller's limit.
    TooLarge {
        /// The length the delta declares.
        declared: u64,
        /// The caller's limit.
        limit: usize,
    },
    /// A copy reaches past the end of the source.
    CopyOutOfRange {
        /// The copy's offset in the source.
        offset: u64,
        /// The copy's length.
        len: u64,
        /// The source's length.
        source_len: usize,
    },
    /// An insert is longer than what is left of the delta.
    InsertOutOfRange {
        /// The insert's length.
        len: u64,
        /// The bytes left in the delta after the command.
        available: usize,
    },
    /// The commands produce more bytes than the delta declares.
    Overrun {
        /// The length the delta declares.
        declared: usize,
    },
    /// The commands produce fewer bytes than the delta declares.
    SizeMismatch {
        /// The length the delta declares.
        declared: usize,
        /// The length the commands produce.
        produced: usize,
    },
    /// The checksum in the delta is not the checksum of what its commands produce.
    BadChecksum {
        /// The checksum the delta carries.
        expected: u64,
        /// The checksum of the output.
        actual: u32,
    },
    /// Bytes follow the checksum.
    TrailingData {
        /// Where in the delta they start.
        at: usize,
    },
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeltaError::Truncated => f.write_str("delta ends before its checksum"),
            DeltaError::BadNumber { at } => write!(f, "delta has no valid number at byte {at}"),
            DeltaError::Unexpected { at, found, expected } => {
                write!(f, "delta has byte {found:#04x} at {at} where {expected} is due")
            }
            DeltaError::TooLarge { declared, limit } => {
                write!(f, "delta declares a {declared}-byte target, over the limit of {limit}")
            }
            DeltaError::CopyOutOfRange { offset, len, source_len } => {
                write!(f, "delta copies {len} bytes at {offset} from a {source_len}-byte source")
            }
            DeltaError::InsertOutOfRange { len, available } => {
                write!(f, "delta inserts {len} bytes with {available} left")
            }
            DeltaError::Overrun { declared } => {
                write!(f, "delta produces more than the {declared} bytes it declares")
            }
            DeltaError::SizeMismatch { declared, produced } => {
                write!(f, "delta declares {declared} bytes and produces {produced}")
            }
            DeltaError::BadChecksum { expected, actual } => {
                write!(f, "delta checksum {expected:#x} does not match the output's {actual:#x}")
            }
            DeltaError::TrailingData { at } => write!(f, "delta has bytes after its checksum, at {at}"),
        }
    }
}

impl std::error::Error for DeltaError {}

/// The delta that turns `source` into `target`.
///
/// Any decoder of the format (centrifuge-js, centrifuge-python, [`apply`]) rebuilds `target`
/// from it. It can be longer than `target` when the two have little in common; see
/// [`encode_if_smaller`].
pub fn encode(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() / 8 + 32);
    encode_into(source, target, usize::MAX, &mut out);
    out
}

/// The delta that turns `source` into `target` if it is shorter than `target`, else `None`
/// (the encoder stops as soon as it is clear the delta will not be shorter).
///
/// Centrifugo sends a publication as a delta only in that case; otherwise the full payload
/// goes out with `delta: false`.
pub fn encode_if_smaller(source: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(target.len() / 8 + 32);
    encode_into(source, target, target.len(), &mut out).then_some(out)
}

/// Rebuilds the target from `source` and `delta`, refusing a delta that declares a target
/// longer than `limit` bytes.
///
/// Every malformed or inconsistent delta is an error: bad numbers or separators, copies past
/// the source, inserts past the delta, output longer or shorter than declared, a wrong
/// checksum, bytes after the checksum. The output never grows past the declared length, so
/// memory is bounded by `limit`.
pub fn apply(source: &[u8], delta: &[u8], limit: usize) -> Result<Vec<u8>, DeltaError> {
    let mut r = Reader { data: delta, pos: 0 };
    let declared = r.number()?;
    r.expect(b'\n', "a newline after the length")?;
    let declared =
        usize::try_from(declared).ok().filter(|&n| n <= limit).ok_or(DeltaError::TooLarge { declared, limit })?;
    // The delta may claim more than it can produce: reserve no more than it can plausibly
    // hold, and let the vector grow (never past `declared`) if it really is that long.
    let mut out = Vec::with_capacity(declared.min(source.len().saturating_add(delta.len())));
    loop {
        let count = r.number()?;
        let at = r.pos;
        match r.byte()? {
            b'@' => {
                let offset = r.number()?;
                r.expect(b',', "a comma after a copy")?;
                let out_of_range = DeltaError::CopyOutOfRange { offset, len: count, source_len: source.len() };
                let start = usize::try_from(offset).map_err(|_| out_of_range.clone())?;
                let len = usize::try_from(count).map_err(|_| out_of_range.clone())?;
                let end = start.checked_add(len).filter(|&end| end <= source.len()).ok_or(out_of_range)?;
                if len > declared - out.len() {
                    return Err(DeltaError::Overrun { declared });
                }
                out.extend_from_slice(&source[start..end]);
            }
            b':' => {
                let available = delta.len() - r.pos;
                let len = usize::try_from(count)
                    .ok()
                    .filter(|&len| len <= available)
                    .ok_or(DeltaError::InsertOutOfRange { len: count, available })?;
                if len > declared - out.len() {
                    return Err(DeltaError::Overrun { declared });
                }
                out.extend_from_slice(&delta[r.pos..r.pos + len]);
                r.pos += len;
            }
            b';' => {
                if out.len() != declared {
                    return Err(DeltaError::SizeMismatch { declared, produced: out.len() });
                }
                let actual = checksum(&out);
                if count != u64::from(actual) {
                    return Err(DeltaError::BadChecksum { expected: count, actual });
                }
                if r.pos != delta.len() {
                    return Err(DeltaError::TrailingData { at: r.pos });
                }
                return Ok(out);
            }
            found => return Err(DeltaError::Unexpected { at, found, expected: "a command ('@', ':' or ';')" }),
        }
    }
}

/// The format's checksum of `data`: the wrapping sum of its big-endian 32-bit words, the last
/// one padded with zero bytes.
fn checksum(data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(4);
    let mut sum = 0u32;
    for word in &mut words {
        sum = sum.wrapping_add(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut last = [0u8; 4];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    sum.wrapping_add(u32::from_be_bytes(last))
}

/// Writes `v` in the format's base 64.
fn put_number(out: &mut Vec<u8>, mut v: u64) {
    // 64 bits take at most 11 digits of 6 bits.
    let mut digits = [0u8; 11];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = DIGITS[(v & 63) as usize];
        v >>= 6;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// How many digits [`put_number`] writes for `v`.
fn digit_count(v: usize) -> usize {
    let mut count = 1;
    let mut rest = v >> 6;
    while rest != 0 {
        count += 1;
        rest >>= 6;
    }
    count
}

/// The value of a digit of the format's base 64, `None` for any other byte.
fn digit_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'Z' => Some(b - b'A' + 10),
        b'_' => Some(36),
        b'a'..=b'z' => Some(b - b'a' + 37),
        b'~' => Some(63),
        _ => None,
    }
}

/// A cursor over a delta being applied.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DeltaError> {
        let b = *self.data.get(self.pos).ok_or(DeltaError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn expect(&mut self, want: u8, expected: &'static str) -> Result<(), DeltaError> {
        let at = self.pos;
        match self.byte()? {
            b if b == want => Ok(()),
            found => Err(DeltaError::Unexpected { at, found, expected }),
        }
    }

    /// A number of at least one digit.
    fn number(&mut self) -> Result<u64, DeltaError> {
        let start = self.pos;
        let mut v = 0u64;
        while let Some(d) = self.data.get(self.pos).and_then(|&b| digit_value(b)) {
            v = v
                .checked_mul(64)
                .and_then(|v| v.checked_add(u64::from(d)))
                .ok_or(DeltaError::BadNumber { at: start })?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(if start == self.data.len() {
                DeltaError::Truncated
            } else {
                DeltaError::BadNumber { at: start }
            });
        }
        Ok(v)
    }
}

/// A fingerprint of a window of [`NHASH`] bytes that can be moved along by one byte:
/// `a` is the sum of the bytes, `b` the sum weighted by distance from the window's end
/// (`NHASH` for the first byte, 1 for the last).
#[derive(Clone, Copy)]
struct Rolling {
    a: u32,
    b: u32,
}

impl Rolling {
    fn new(window: &[u8]) -> Rolling {
        debug_assert_eq!(window.len(), NHASH);
        let (mut a, mut b) = (0u32, 0u32);
        for &x in window {
            a += u32::from(x);
            b += a;
        }
        Rolling { a, b }
    }

    /// Moves the window one byte on: `old` leaves at the front, `new` enters at the back.
    fn roll(&mut self, old: u8, new: u8) {
        self.a = self.a - u32::from(old) + u32::from(new);
        self.b = self.b - NHASH as u32 * u32::from(old) + self.a;
    }

    /// Both sums in one word: `a` takes 12 bits (at most 16 × 255), `b` 16 (at most 136 × 255).
    fn fingerprint(self) -> u32 {
        (self.b << 12) | self.a
    }
}

/// The source's blocks of [`NHASH`] bytes, found by fingerprint.
struct SourceIndex {
    /// By bucket, the first block in it, as block number + 1 (0: none).
    heads: Vec<u32>,
    /// By block, the next block in its bucket, as block number + 1 (0: none).
    next: Vec<u32>,
    /// By block, its fingerprint.
    fingerprints: Vec<u32>,
    /// The bucket is the top `bits` bits of a multiplicative hash of the fingerprint.
    bits: u32,
}

impl SourceIndex {
    fn new(source: &[u8]) -> SourceIndex {
        let blocks = (source.len() / NHASH).min(u32::MAX as usize - 1);
        let buckets = blocks.next_power_of_two().max(2);
        let bits = buckets.trailing_zeros();
        let mut index =
            SourceIndex { heads: vec![0; buckets], next: vec![0; blocks], fingerprints: vec![0; blocks], bits };
        // Backwards, so that each bucket lists its blocks from the start of the source: on a
        // tie the earlier block wins, with a shorter offset to write.
        for block in (0..blocks).rev() {
            let fingerprint = Rolling::new(&source[block * NHASH..][..NHASH]).fingerprint();
            let bucket = index.bucket(fingerprint);
            index.fingerprints[block] = fingerprint;
            index.next[block] = index.heads[bucket];
            index.heads[bucket] = block as u32 + 1;
        }
        index
    }

    fn bucket(&self, fingerprint: u32) -> usize {
        (u64::from(fingerprint).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// The longest run of the target shared with the source that contains the window at
    /// `pos` and starts no earlier than `base`.
    fn best_match(&self, source: &[u8], target: &[u8], base: usize, pos: usize, fingerprint: u32) -> Option<Match> {
        let mut best: Option<Match> = None;
        let mut link = self.heads[self.bucket(fingerprint)];
        let mut looked = 0;
        while link != 0 && looked < MAX_CANDIDATES {
            looked += 1;
            let block = (link - 1) as usize;
            link = self.next[block];
            if self.fingerprints[block] != fingerprint {
                continue;
            }
            let at = block * NHASH;
            let forward = common_prefix(&source[at..], &target[pos..]);
            if forward < NHASH {
                continue;
            }
            let backward = common_suffix(&source[..at], &target[base..pos]);
            let len = backward + forward;
            if best.as_ref().is_none_or(|best| len > best.len) {
                best = Some(Match { start: pos - backward, source: at - backward, len });
            }
            // Good enough, or as long as it can be: stop looking.
            if len >= GOOD_MATCH || pos + forward == target.len() {
                break;
            }
        }
        best
    }
}

/// A run of the target that the source holds too.
#[derive(Clone, Copy, Debug)]
struct Match {
    /// Where it starts in the target.
    start: usize,
    /// Where it starts in the source.
    source: usize,
    len: usize,
}

impl Match {
    fn end(&self) -> usize {
        self.start + self.len
    }

    /// The match shrunk to the target's character boundaries (the target being valid
    /// UTF-8), `None` if nothing is left.
    fn within_chars(self, target: &[u8]) -> Option<Match> {
        let boundary = |i: usize| target.get(i).is_none_or(|&b| b & 0xC0 != 0x80);
        let (mut start, mut end) = (self.start, self.end());
        while start < end && !boundary(start) {
            start += 1;
        }
        while end > start && !boundary(end) {
            end -= 1;
        }
        (end > start).then(|| Match { start, source: self.source + (start - self.start), len: end - start })
    }

    /// Whether copying saves bytes over inserting: the copy command, plus the header of the
    /// insert that has to follow it if it ends before the target does, against the bytes.
    fn worth_copying(&self, target_len: usize) -> bool {
        let copy = digit_count(self.len) + digit_count(self.source) + 2;
        let next_insert = if self.end() < target_len { digit_count(target_len - self.end()) + 1 } else { 0 };
        self.len > copy + next_insert
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count()
}

fn put_insert(out: &mut Vec<u8>, bytes: &[u8]) {
    put_number(out, bytes.len() as u64);
    out.push(b':');
    out.extend_from_slice(bytes);
}

fn put_copy(out: &mut Vec<u8>, m: &Match) {
    put_number(out, m.len as u64);
    out.push(b'@');
    put_number(out, m.source as u64);
    out.push(b',');
}

/// Writes the delta from `source` to `target` into `out`; gives up and returns `false` as soon
/// as it is `budget` bytes or longer.
fn encode_into(source: &[u8], target: &[u8], budget: usize, out: &mut Vec<u8>) -> bool {
    put_number(out, target.len() as u64);
    out.push(b'\n');
    let text = std::str::from_utf8(target).is_ok();
    // Everything before `base` is in the delta already.
    let mut base = 0;
    if source.len() >= NHASH && target.len() >= NHASH {
        let index = SourceIndex::new(source);
        // The window is target[pos..pos + NHASH].
        let mut pos = 0;
        let mut window = Rolling::new(&target[..NHASH]);
        let copy_at = |base: usize, pos: usize, window: Rolling| {
            index
                .best_match(source, target, base, pos, window.fingerprint())
                .and_then(|m| if text { m.within_chars(target) } else { Some(m) })
                .filter(|m| m.worth_copying(target.len()))
        };
        loop {
            if let Some(mut m) = copy_at(base, pos, window) {
                // The first window that matches may have met a run shared by chance (in JSON,
                // the keys between two records), while the run the target was made from lines
                // up with a source block a few bytes on. Look at the windows up to one block
                // further, unless the match is long enough already, and keep the longest.
                if m.len < GOOD_MATCH {
                    let mut ahead = window;
                    for p in pos + 1..(pos + NHASH).min(target.len() - NHASH + 1) {
                        ahead.roll(target[p - 1], target[p - 1 + NHASH]);
                        if let Some(other) = copy_at(base, p, ahead).filter(|other| other.len > m.len) {
                            m = other;
                            if m.len >= GOOD_MATCH {
                                break;
                            }
                        }
                    }
                }
                if m.start > base {
                    put_insert(out, &target[base..m.start]);
                }
                put_copy(out, &m);
                if out.len() >= budget {
                    return false;
                }
                base = m.end();
                pos = base;
                if pos + NHASH > target.len() {
                    break;
                }
                window = Rolling::new(&target[pos..pos + NHASH]);
                continue;
            }
            if pos + NHASH == target.len() {
                break;
            }
            window.roll(target[pos], target[pos + NHASH]);
            pos += 1;
        }
    }
    if base < target.len() {
        put_insert(out, &target[base..]);
    }
    put_number(out, u64::from(checksum(target)));
    out.push(b';');
    out.len() < budget
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 16 << 20;

    /// Encodes, checks that the delta rebuilds the target, and returns it.
    fn round_trip(source: &[u8], target: &[u8]) -> Vec<u8> {
        let delta = encode(source, target);
        assert_eq!(apply(source, &delta, LIMIT).as_deref(), Ok(target), "delta {:?}", String::from_utf8_lossy(&delta));
        if std::str::from_utf8(target).is_ok() {
            assert!(std::str::from_utf8(&delta).is_ok(), "delta of text is not text: {delta:?}");
        }
        match encode_if_smaller(source, target) {
            Some(smaller) => {
                assert_eq!(smaller, delta);
                assert!(smaller.len() < target.len());
            }
            None => assert!(delta.len() >= target.len()),
        }
        delta
    }

    fn count(delta: &[u8], command: u8) -> usize {
        // Only for deltas whose inserts hold none of the command bytes.
        delta.iter().filter(|&&b| b == command).count()
    }

    /// A JSON document of about `len` bytes, a few dozen bytes per record.
    fn json_doc(len: usize, seed: u64) -> String {
        let mut rng = seed;
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            rng >> 33
        };
        let mut doc = String::from("{\"items\":[");
        let mut i = 0;
        while doc.len() < len {
            if i > 0 {
                doc.push(',');
            }
            let n = next();
            doc.push_str(&format!(
                "{{\"id\":{i},\"name\":\"user-{n:x}\",\"score\":{},\"online\":{}}}",
                n % 1000,
                n % 2 == 0
            ));
            i += 1;
        }
        doc.push_str("]}");
        doc
    }

    #[test]
    fn numbers_are_base_64_most_significant_first() {
        for (v, text) in [(0u64, "0"), (9, "9"), (10, "A"), (35, "Z"), (36, "_"), (37, "a"), (62, "z"), (63, "~")] {
            let mut out = Vec::new();
            put_number(&mut out, v);
            assert_eq!(out, text.as_bytes());
        }
        for (v, text) in [(64u64, "10"), (4095, "~~"), (4096, "100"), (u64::MAX, "F~~~~~~~~~~")] {
            let mut out = Vec::new();
            put_number(&mut out, v);
            assert_eq!(out, text.as_bytes());
            assert_eq!(digit_count(v as usize), text.len());
            let mut r = Reader { data: &out, pos: 0 };
            assert_eq!(r.number(), Ok(v));
        }
        let mut r = Reader { data: b"G0000000000\n", pos: 0 };
        assert_eq!(r.number(), Err(DeltaError::BadNumber { at: 0 }), "2^64 does not fit");
    }

    #[test]
    fn checksum_sums_big_endian_words_with_the_tail_zero_padded() {
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"abcd"), 0x6162_6364);
        assert_eq!(checksum(b"abcde"), 0x6162_6364 + 0x6500_0000);
        assert_eq!(checksum(b"abcdefg"), 0x6162_6364 + 0x6566_6700);
        assert_eq!(checksum(&[0xff; 8]), 0xffff_fffe, "wraps at 32 bits");
    }

    #[test]
    fn empty_source_and_target() {
        assert_eq!(round_trip(b"", b""), b"0\n0;");
        assert_eq!(round_trip(b"some previous payload", b""), b"0\n0;");
        // As the fossil-delta npm package writes it (checksum included).
        assert_eq!(round_trip(b"", b"{\"a\":1}"), b"7\n7:{\"a\":1}2qKytY;");
        assert_eq!(
            round_trip(b"fifteen bytes!!", b"fifteen bytes!! and more"),
            b"O\nO:fifteen bytes!! and more1lHp2U;"
        );
    }

    #[test]
    fn identical_payload_is_one_copy() {
        let doc = json_doc(2000, 1);
        let delta = round_trip(doc.as_bytes(), doc.as_bytes());
        let mut expected = Vec::new();
        put_number(&mut expected, doc.len() as u64);
        expected.push(b'\n');
        put_number(&mut expected, doc.len() as u64);
        expected.extend_from_slice(b"@0,");
        put_number(&mut expected, u64::from(checksum(doc.as_bytes())));
        expected.push(b';');
        assert_eq!(delta, expected);
    }

    #[test]
    fn small_edits_give_small_deltas() {
        let doc = json_doc(3000, 2);
        // A changed value in the middle.
        let edited = doc.replacen("\"score\":", "\"score\":12345", 20);
        let delta = round_trip(doc.as_bytes(), edited.as_bytes());
        // Twenty times `5:12345` and a copy of a few bytes.
        assert!(delta.len() < 280, "{} bytes", delta.len());
        // One field changed.
        let at = doc.len() / 2;
        let mut one = doc.clone().into_bytes();
        one[at] = b'#';
        let delta = round_trip(doc.as_bytes(), &one);
        assert!(delta.len() < 40, "{:?}", String::from_utf8_lossy(&delta));
        assert_eq!(count(&delta, b'@'), 2);
        // Deleted and inserted runs.
        let deleted = format!("{}{}", &doc[..1000], &doc[1300..]);
        let delta = round_trip(doc.as_bytes(), deleted.as_bytes());
        assert!(delta.len() < 30, "{:?}", String::from_utf8_lossy(&delta));
        let inserted = format!("{}{}{}", &doc[..1000], "{\"id\":\"new\"},", &doc[1000..]);
        let delta = round_trip(doc.as_bytes(), inserted.as_bytes());
        assert!(delta.len() < 50, "{:?}", String::from_utf8_lossy(&delta));
    }

    #[test]
    fn appended_and_prepended_data() {
        let doc = json_doc(1500, 3);
        let appended = format!("{doc}, and some more");
        let delta = round_trip(doc.as_bytes(), appended.as_bytes());
        let mut expected = Vec::new();
        put_number(&mut expected, appended.len() as u64);
        expected.push(b'\n');
        put_number(&mut expected, doc.len() as u64);
        expected.extend_from_slice(b"@0,F:, and some more");
        put_number(&mut expected, u64::from(checksum(appended.as_bytes())));
        expected.push(b';');
        assert_eq!(delta, expected);

        let prepended = format!("first, {doc}");
        let delta = round_trip(doc.as_bytes(), prepended.as_bytes());
        assert!(delta.starts_with(format!("{}\n7:first, ", base64_of(prepended.len())).as_bytes()));
        assert_eq!(count(&delta, b'@'), 1);
    }

    fn base64_of(v: usize) -> String {
        let mut out = Vec::new();
        put_number(&mut out, v as u64);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn short_sources_and_targets_are_inserted() {
        assert_eq!(count(&round_trip(b"fifteen bytes!!", b"fifteen bytes!! and more"), b'@'), 0);
        assert_eq!(count(&round_trip(b"a source long enough to index", b"a source"), b'@'), 0);
        round_trip(b"0123456789abcdef", b"0123456789abcdef");
        round_trip(b"0123456789abcdef", b"x0123456789abcdefx");
    }

    #[test]
    fn random_bytes() {
        let mut rng = 7u64;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (rng >> 56) as u8
                })
                .collect()
        };
        let a = bytes(5000);
        let b = bytes(5000);
        // Unrelated: all inserted, the delta a little longer than the target.
        let delta = round_trip(&a, &b);
        assert!(delta.len() <= b.len() + 20);
        assert_eq!(encode_if_smaller(&a, &b), None);
        // A copy of the random source with pieces replaced.
        let mut c = a.clone();
        c[100..110].copy_from_slice(&b[..10]);
        c[4000..4100].copy_from_slice(&b[10..110]);
        c.extend_from_slice(&b[200..300]);
        let delta = round_trip(&a, &c);
        assert!(delta.len() < 300, "{} bytes", delta.len());
    }

    #[test]
    fn repetitive_data() {
        let a = "ab".repeat(500);
        let b = "ab".repeat(600);
        assert!(round_trip(a.as_bytes(), b.as_bytes()).len() <= 20);
        let zeros = vec![0u8; 50_000];
        let mut c = zeros.clone();
        c[25_000] = 1;
        assert!(round_trip(&zeros, &c).len() < 40);
        round_trip(&zeros, &[0u8; 120_000]);
    }

    #[test]
    fn large_json_with_small_changes() {
        let doc = json_doc(100_000, 4);
        assert!(doc.len() >= 100_000);
        let mut changed = doc.replacen("\"online\":true", "\"online\":false", 3);
        changed = changed.replacen("user-", "member-", 2);
        changed.insert_str(50_000, "{\"id\":-1},");
        let delta = round_trip(doc.as_bytes(), changed.as_bytes());
        assert!(delta.len() < 250, "{} bytes: {:?}", delta.len(), String::from_utf8_lossy(&delta));
        // The encoder is not confused by a source that shares nothing.
        let other = json_doc(100_000, 5);
        let delta = round_trip(other.as_bytes(), changed.as_bytes());
        assert!(delta.len() < changed.len() + 100);
    }

    #[test]
    fn text_is_cut_at_character_boundaries() {
        // Copies that would end or start inside a multi-byte character are shrunk to its
        // edges, so the inserted runs are whole characters.
        let source = "{\"city\":\"Zürich\",\"note\":\"日本語のテキスト、そして 😀 もっと\",\"n\":1}".repeat(3);
        let target = source.replace("テキスト", "テクスト").replace("😀", "😁").replace("ü", "u");
        round_trip(source.as_bytes(), target.as_bytes());
        let target = source.replace('日', "月");
        round_trip(source.as_bytes(), target.as_bytes());
    }

    #[test]
    fn malformed_deltas_are_errors() {
        let source = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let cases: &[(&[u8], DeltaError)] = &[
            (b"", DeltaError::Truncated),
            (b"5", DeltaError::Truncated),
            (b"\n", DeltaError::BadNumber { at: 0 }),
            (b"5;", DeltaError::Unexpected { at: 1, found: b';', expected: "a newline after the length" }),
            (b"5\n", DeltaError::Truncated),
            (b"5\n5:hel", DeltaError::InsertOutOfRange { len: 5, available: 3 }),
            (b"5\n5:hello", DeltaError::Truncated),
            (b"5\n5@0,", DeltaError::Truncated),
            (b"5\n5@0", DeltaError::Truncated),
            (b"5\n5@0;", DeltaError::Unexpected { at: 5, found: b';', expected: "a comma after a copy" }),
            (b"5\n5@", DeltaError::Truncated),
            (b"5\n5@,", DeltaError::BadNumber { at: 4 }),
            (b"5\n5!", DeltaError::Unexpected { at: 3, found: b'!', expected: "a command ('@', ':' or ';')" }),
            (b"5\n:", DeltaError::BadNumber { at: 2 }),
            (b"5\n5@a,0;", DeltaError::CopyOutOfRange { offset: 37, len: 5, source_len: 36 }),
            (b"5\n5@~~~~~~~~~~~,0;", DeltaError::BadNumber { at: 4 }),
            (b"5\nF~~~~~~~~~~@1,0;", DeltaError::CopyOutOfRange { offset: 1, len: u64::MAX, source_len: 36 }),
            (b"5\n6@0,0;", DeltaError::Overrun { declared: 5 }),
            (b"5\n3:abc3:def0;", DeltaError::Overrun { declared: 5 }),
            (b"5\n4:abcd0;", DeltaError::SizeMismatch { declared: 5, produced: 4 }),
            (b"5\n5:hello0;", DeltaError::BadChecksum { expected: 0, actual: 0x68656c6c + 0x6f000000 }),
            (b"0\n0;x", DeltaError::TrailingData { at: 4 }),
            (b"0\n0;0;", DeltaError::TrailingData { at: 4 }),
        ];
        for (delta, error) in cases {
            assert_eq!(apply(source, delta, LIMIT).as_ref(), Err(error), "{:?}", String::from_utf8_lossy(delta));
        }
        // The declared length is checked against the limit before anything is reserved.
        assert_eq!(
            apply(source, b"~~~~~~~~~~\n0;", 1 << 40),
            Err(DeltaError::TooLarge { declared: (1 << 60) - 1, limit: 1 << 40 })
        );
        // Without a limit, a claim the delta cannot back is still no allocation of that size.
        assert_eq!(
            apply(source, b"~~~~~~~~~~\n0;", usize::MAX),
            Err(DeltaError::SizeMismatch { declared: (1 << 60) - 1, produced: 0 })
        );
        let mut big = encode(b"", &[b'x'; 1001]);
        assert_eq!(apply(b"", &big, 1000), Err(DeltaError::TooLarge { declared: 1001, limit: 1000 }));
        assert_eq!(apply(b"", &big, 1001).map(|v| v.len()), Ok(1001));
        // A wrong checksum is caught.
        let n = big.len();
        big[n - 2] = if big[n - 2] == b'0' { b'1' } else { b'0' };
        assert!(matches!(apply(b"", &big, 1001), Err(DeltaError::BadChecksum { .. })));
        // A delta for another source does not apply.
        let delta = encode(b"0123456789abcdefghijklmnopqrstuvwxyz", b"0123456789abcdefghijklmnopqrstuvwxyz!");
        assert!(apply(b"0123456789abcdefghijklmnopqrstuvwxyZ", &delta, LIMIT).is_err());
        assert!(apply(b"0123456789", &delta, LIMIT).is_err());
        assert!(DeltaError::Truncated.to_string().contains("checksum"));
    }

    /// Test vectors in `tests/fixtures/fossil-delta.json`. Each case holds a source and a
    /// target, `reference`: the delta that the fossil-delta npm package (2.0.0, `createDelta`)
    /// makes, and `ours`: the delta [`encode`] made when the file was written, which the
    /// decoders of centrifuge-js (5.8.0, its bundled `applyDelta`), centrifuge-python (0.7.0,
    /// `apply_delta`) and fossil-delta (`applyDelta`), all verifying the checksum, turned back
    /// into the target; for text targets also after a trip through a JSON string, as the
    /// clients' JSON codecs take it. The same check passed on a few hundred more cases, not
    /// kept: JSON documents of up to 100 KB with edits, edited UTF-8 text, random and periodic
    /// bytes. Bytes are in hex. If the encoder changes, the file has to be made again and
    /// checked with those decoders.
    #[test]
    fn independent_encoder_and_decoders_agree() {
        let fixtures: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/fossil-delta.json")).expect("fixture parses");
        let cases = fixtures["cases"].as_array().expect("cases");
        assert!(cases.len() >= 10);
        let hex = |case: &serde_json::Value, field: &str| -> Vec<u8> {
            let text = case[field].as_str().unwrap_or_else(|| panic!("{field} in {case}"));
            (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
        };
        for case in cases {
            let name = case["name"].as_str().expect("name");
            let (source, target) = (hex(case, "source"), hex(case, "target"));
            let reference = hex(case, "reference");
            assert_eq!(apply(&source, &reference, LIMIT), Ok(target.clone()), "{name}: the reference delta");
            let ours = hex(case, "ours");
            assert_eq!(encode(&source, &target), ours, "{name}: our encoder's output changed");
            assert_eq!(apply(&source, &ours, LIMIT), Ok(target), "{name}: our delta");
        }
    }

    /// Targets made from the source by a few edits, as publications of one channel are.
    fn edited() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let source = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            "[ -~]{0,600}".prop_map(String::into_bytes),
            "\\PC{0,200}".prop_map(String::into_bytes),
            proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..600),
        ];
        let edits = proptest::collection::vec(
            (any::<prop::sample::Index>(), 0usize..40, proptest::collection::vec(any::<u8>(), 0..40)),
            0..6,
        );
        (source, edits).prop_map(|(source, edits)| {
            let mut target = source.clone();
            for (at, remove, insert) in edits {
                let at = at.index(target.len() + 1);
                let end = (at + remove).min(target.len());
                target.splice(at..end, insert);
            }
            (source, target)
        })
    }

    proptest! {
        #[test]
        fn edited_payloads_round_trip((source, target) in edited()) {
            let delta = encode(&source, &target);
            prop_assert_eq!(apply(&source, &delta, target.len()), Ok(target.clone()));
        }

        #[test]
        fn unrelated_payloads_round_trip(source in proptest::collection::vec(any::<u8>(), 0..300),
                                         target in proptest::collection::vec(any::<u8>(), 0..300)) {
            let delta = encode(&source, &target);
            prop_assert_eq!(apply(&source, &delta, target.len()), Ok(target.clone()));
            // Never much longer than the target: one insert and the checksum.
            prop_assert!(delta.len() <= target.len() + 2 * digit_count(target.len()) + 9);
        }

        #[test]
        fn text_deltas_are_text(source in "\\PC{0,300}", edits in proptest::collection::vec((any::<prop::sample::Index>(), "\\PC{0,8}"), 0..5)) {
            let mut target = source.clone();
            for (at, insert) in edits {
                let mut at = at.index(target.len() + 1);
                while !target.is_char_boundary(at) {
                    at -= 1;
                }
                target.insert_str(at, &insert);
            }
            let delta = encode(source.as_bytes(), target.as_bytes());
            prop_assert!(std::str::from_utf8(&delta).is_ok());
            prop_assert_eq!(apply(source.as_bytes(), &delta, LIMIT), Ok(target.into_bytes()));
        }

        #[test]
        fn arbitrary_deltas_never_panic(source in proptest::collection::vec(any::<u8>(), 0..64),
                                        delta in proptest::collection::vec(any::<u8>(), 0..64),
                                        limit in 0usize..200) {
            if let Ok(out) = apply(&source, &delta, limit) {
                prop_assert!(out.len() <= limit);
            }
        }

        #[test]
        fn damaged_deltas_never_panic((source, target) in edited(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut delta = encode(&source, &target);
            let at = at.index(delta.len());
            delta[at] = byte;
            // Mostly an error; where the change still makes a consistent delta, the output
            // keeps within the limit.
            if let Ok(out) = apply(&source, &delta, target.len()) {
                prop_assert!(out.len() <= target.len());
            }
        }
    }
}
