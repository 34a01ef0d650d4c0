//! The resume token of the unidirectional transports: one encoding and one parser for
//! the SSE event id (and `Last-Event-ID`), the HTTP stream's and the long poll's
//! `since` cursor. It carries, for every channel a reader names, the position of the
//! bidirectional protocol (`offset`, `epoch`), so a reader moves between transports
//! (WebSocket included) without losing or repeating a publication.
//!
//! The format: one `OFFSET.EPOCH` per channel, joined by `,`, in the sorted order of
//! the channel names (the reader's channel list, sorted and without duplicates). An
//! offset is a decimal `u64`; an epoch is up to 64 of `A-Z a-z 0-9 _ -` (empty when the
//! channel has no history yet). Example for channels `a` and `b`: `12.xyZ,0.`

use std::fmt;

/// The most channels a token may carry.
pub const MAX_CHANNELS: usize = 128;
/// The longest epoch accepted.
pub const MAX_EPOCH: usize = 64;

/// A channel's position: the offset of the last publication seen, in an epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The offset of the last publication seen.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// Why a resume token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PositionError {
    /// The token carries another number of positions than the reader names channels.
    #[error("the position names {got} channels, the request {want}")]
    Count {
        /// Positions in the token.
        got: usize,
        /// Channels named.
        want: usize,
    },
    /// One entry is not `OFFSET.EPOCH`.
    #[error("position {index} is not OFFSET.EPOCH: {reason}")]
    Entry {
        /// The entry's place in the token (from 0).
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The token is longer than any valid one.
    #[error("the position is too long")]
    TooLong,
}

/// Formats positions as a resume token.
pub fn format(positions: &[Position]) -> String {
    Token(positions).to_string()
}

struct Token<'a>(&'a [Position]);

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}.{}", p.offset, p.epoch)?;
        }
        Ok(())
    }
}

/// Parses a resume token for `channels` channels.
pub fn parse(token: &str, channels: usize) -> Result<Vec<Position>, PositionError> {
    // 20 digits, a dot, an epoch and a comma per channel.
    if token.len() > MAX_CHANNELS * (22 + MAX_EPOCH) {
        return Err(PositionError::TooLong);
    }
    let entries: Vec<&str> = token.split(',').collect();
    if entries.len() != channels {
        return Err(PositionError::Count { got: entries.len(), want: channels });
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            let bad = |reason| PositionError::Entry { index, reason };
            let (offset, epoch) = e.split_once('.').ok_or(bad("no '.'"))?;
            if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the offset is not a decimal number"));
            }
            let offset = offset.parse().map_err(|_| bad("the offset is too large"))?;
            if epoch.len() > MAX_EPOCH {
                return Err(bad("the epoch is too long"));
            }
            if !epoch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(bad("the epoch has a character other than A-Z a-z 0-9 _ -"));
            }
            Ok(Position { offset, epoch: epoch.to_owned() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(offset: u64, epoch: &str) -> Position {
        Position { offset, epoch: epoch.into() }
    }

    #[test]
    fn round_trip() {
        for ps in [vec![p(0, "")], vec![p(12, "xyZ_-9"), p(0, ""), p(u64::MAX, "e")]] {
            let t = format(&ps);
            assert_eq!(parse(&t, ps.len()).unwrap(), ps, "{t}");
        }
        assert_eq!(format(&[p(12, "ab"), p(3, "")]), "12.ab,3.");
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        assert_eq!(parse("1.a", 2), Err(PositionError::Count { got: 1, want: 2 }));
        assert_eq!(parse("1.a,2.b", 1), Err(PositionError::Count { got: 2, want: 1 }));
        for bad in ["", "12", ".a", "x.a", "-1.a", "1 .a", "1.a b", "1.a.b", "1.é", "99999999999999999999.a"] {
            assert!(matches!(parse(bad, 1), Err(PositionError::Entry { index: 0, .. })), "{bad:?}");
        }
        assert!(matches!(parse("1.a,", 2), Err(PositionError::Entry { index: 1, .. })));
        assert!(parse(&format!("1.{}", "e".repeat(MAX_EPOCH + 1)), 1).is_err());
        assert_eq!(parse(&"1".repeat(100_000), 1), Err(PositionError::TooLong));
        assert!(parse("18446744073709551615.e", 1).is_ok());
    }
}
