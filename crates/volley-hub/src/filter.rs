//! Tags filters: the `tf` of a subscribe (centrifuge-js's `tagsFilter`). A subscriber
//! with a filter receives only the publications whose `tags` match it, live and in
//! recovery. [`validate`] checks a filter once, when the subscription is made (107
//! otherwise); [`matches()`] runs for each publication and allocates nothing.
//!
//! A filter is a tree of [`FilterNode`]s. A leaf (`op` empty) compares one tag: `eq`,
//! `neq`, `in`, `nin` (against `vals`), `ex`, `nex` (the key is there or not), `sw`,
//! `ew`, `ct` (starts with, ends with, contains), and `gt`, `gte`, `lt`, `lte`, which
//! compare decimal numbers exactly (a tag that is not a number does not match). Other
//! nodes combine their `nodes`: `and`, `or`, and `not` (of exactly one).

use std::cmp::Ordering;
use std::collections::BTreeMap;

pub use crate::protocol::FilterNode;

/// Why a filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tags filter: {0}")]
pub struct FilterError(pub String);

fn error(msg: impl Into<String>) -> Result<(), FilterError> {
    Err(FilterError(msg.into()))
}

/// Checks that a filter is well formed: every leaf with a known comparison and the
/// value or values it needs, every `and`/`or` with children, every `not` with one.
pub fn validate(f: &FilterNode) -> Result<(), FilterError> {
    match f.op.as_str() {
        "" => {
            match f.cmp.as_str() {
                "" => return error("a leaf needs cmp"),
                "eq" | "neq" | "sw" | "ew" | "ct" | "gt" | "gte" | "lt" | "lte" => {
                    if f.val.is_empty() {
                        return error(format!("{} needs val", f.cmp));
                    }
                    if !f.vals.is_empty() {
                        return error(format!("{} takes val, not vals", f.cmp));
                    }
                }
                "in" | "nin" => {
                    if f.vals.is_empty() {
                        return error(format!("{} needs vals", f.cmp));
                    }
                    if !f.val.is_empty() {
                        return error(format!("{} takes vals, not val", f.cmp));
                    }
                }
                "ex" | "nex" => {
                    if !f.val.is_empty() || !f.vals.is_empty() {
                        return error(format!("{} takes neither val nor vals", f.cmp));
                    }
                }
                other => return error(format!("unknown comparison {other:?}")),
            }
            if f.key.is_empty() && f.cmp != "ex" && f.cmp != "nex" {
                return error("a leaf needs key");
            }
            Ok(())
        }
        "and" | "or" => {
            if f.nodes.is_empty() {
                return error(format!("{} needs at least one node", f.op));
            }
            f.nodes.iter().try_for_each(validate)
        }
        "not" => {
            if f.nodes.len() != 1 {
                return error("not needs exactly one node");
            }
            validate(&f.nodes[0])
        }
        other => error(format!("unknown op {other:?}")),
    }
}

/// Whether `tags` match a filter that [`validate`] accepted (one it would refuse
/// matches nothing).
pub fn matches(f: &FilterNode, tags: &BTreeMap<String, String>) -> bool {
    match f.op.as_str() {
        "" => {
            let tag = tags.get(&f.key).map(String::as_str);
            match f.cmp.as_str() {
                "eq" => tag == Some(f.val.as_str()),
                "neq" => tag != Some(f.val.as_str()),
                // A missing tag compares as "" (as Centrifugo does).
                "in" => f.vals.iter().any(|v| v == tag.unwrap_or("")),
                "nin" => !f.vals.iter().any(|v| v == tag.unwrap_or("")),
                "ex" => tag.is_some(),
                "nex" => tag.is_none(),
                "sw" => tag.is_some_and(|t| t.starts_with(&f.val)),
                "ew" => tag.is_some_and(|t| t.ends_with(&f.val)),
                "ct" => tag.is_some_and(|t| t.contains(&f.val)),
                "gt" | "gte" | "lt" | "lte" => match tag.and_then(|t| compare_decimals(t, &f.val)) {
                    Some(o) => match f.cmp.as_str() {
                        "gt" => o == Ordering::Greater,
                        "gte" => o != Ordering::Less,
                        "lt" => o == Ordering::Less,
                        _ => o != Ordering::Greater,
                    },
                    None => false,
                },
                _ => false,
            }
        }
        "and" => f.nodes.iter().all(|n| matches(n, tags)),
        "or" => f.nodes.iter().any(|n| matches(n, tags)),
        "not" => f.nodes.len() == 1 && !matches(&f.nodes[0], tags),
        _ => false,
    }
}

/// A decimal number as written: its sign, and its integer and fraction digits without
/// the zeros that do not count.
struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
}

/// Parses `[+-]digits[.digits]`; `None` for anything else.
fn decimal(s: &str) -> Option<Decimal<'_>> {
    let b = s.as_bytes();
    let (negative, rest) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let (int, frac) = match rest.iter().position(|&c| c == b'.') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    if !digits(int) || (rest.len() != int.len() && !digits(frac)) {
        return None;
    }
    let int = &int[int.iter().position(|&c| c != b'0').unwrap_or(int.len())..];
    let frac = &frac[..frac.iter().rposition(|&c| c != b'0').map_or(0, |i| i + 1)];
    // Zero has no sign.
    let negative = negative && !(int.is_empty() && frac.is_empty());
    Some(Decimal { negative, int, frac })
}

/// Compares two decimal numbers exactly, whatever their length; `None` if either is
/// not one.
fn compare_decimals(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (decimal(a)?, decimal(b)?);
    let magnitude = || a.int.len().cmp(&b.int.len()).then_with(|| a.int.cmp(b.int)).then_with(|| a.frac.cmp(b.frac));
    Some(match (a.negative, b.negative) {
        (false, false) => magnitude(),
        (true, true) => magnitude().reverse(),
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode { key: key.into(), cmp: cmp.into(), val: val.into(), ..Default::default() }
    }

    fn set(key: &str, cmp: &str, vals: &[&str]) -> FilterNode {
        FilterNode {
            key: key.into(),
            cmp: cmp.into(),
            vals: vals.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        }
    }

    fn op(op: &str, nodes: Vec<FilterNode>) -> FilterNode {
        FilterNode { op: op.into(), nodes, ..Default::default() }
    }

    fn tags() -> BTreeMap<String, String> {
        [("ticker", "AAPL"), ("source", "NASDAQ"), ("price", "150.25"), ("category", "tech"), ("volume", "1000")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_documented_examples_match() {
        let t = tags();
        for f in [
            leaf("ticker", "eq", "AAPL"),
            leaf("source", "neq", "TEST"),
            set("category", "in", &["tech", "finance"]),
            set("ticker", "nin", &["MSFT", "GOOGL"]),
            leaf("price", "ex", ""),
            leaf("internal_id", "nex", ""),
            leaf("ticker", "sw", "AA"),
            leaf("source", "ew", "DAQ"),
            leaf("category", "ct", "ec"),
            leaf("price", "gt", "100"),
            leaf("volume", "gte", "1000"),
            leaf("price", "lt", "200"),
            leaf("volume", "lte", "1000"),
            op("and", vec![leaf("ticker", "eq", "AAPL"), leaf("category", "eq", "tech")]),
            op("or", vec![leaf("ticker", "eq", "MSFT"), leaf("category", "eq", "tech")]),
            op("not", vec![leaf("source", "eq", "NYSE")]),
        ] {
            assert_eq!(validate(&f), Ok(()), "{f:?}");
            assert!(matches(&f, &t), "{f:?}");
        }
    }

    #[test]
    fn what_does_not_match_does_not() {
        let t = tags();
        for f in [
            leaf("ticker", "eq", "MSFT"),
            leaf("missing", "eq", "x"),
            leaf("ticker", "neq", "AAPL"),
            set("category", "in", &["finance"]),
            leaf("price", "nex", ""),
            leaf("missing", "ex", ""),
            leaf("missing", "sw", "A"),
            leaf("price", "gt", "150.25"),
            leaf("price", "lt", "150.250"),
            // Not a number: never matches a numeric comparison.
            leaf("ticker", "gt", "0"),
            leaf("ticker", "lt", "0"),
            leaf("missing", "lte", "0"),
            op("and", vec![leaf("ticker", "eq", "AAPL"), leaf("category", "eq", "food")]),
            op("or", vec![leaf("ticker", "eq", "X"), leaf("category", "eq", "Y")]),
            op("not", vec![leaf("ticker", "eq", "AAPL")]),
        ] {
            assert!(!matches(&f, &t), "{f:?}");
        }
        // A missing tag is "" for in and nin.
        assert!(matches(&set("missing", "in", &["", "x"]), &t));
        assert!(matches(&set("missing", "nin", &["x"]), &t));
    }

    #[test]
    fn decimals_compare_exactly() {
        use Ordering::*;
        for (a, b, o) in [
            ("1", "1.0", Equal),
            ("-0", "0.000", Equal),
            ("+2", "2", Equal),
            ("007", "7", Equal),
            ("10", "9.99", Greater),
            ("-10", "-9.99", Less),
            ("-1", "1", Less),
            ("0.1", "0.09", Greater),
            ("123456789012345678901234567890.5", "123456789012345678901234567890.49", Greater),
            ("0.30000000000000000000001", "0.3", Greater),
        ] {
            assert_eq!(compare_decimals(a, b), Some(o), "{a} {b}");
            assert_eq!(compare_decimals(b, a), Some(o.reverse()), "{b} {a}");
        }
        for bad in ["", "-", ".5", "5.", "1e3", "0x10", "1,5", " 1", "NaN", "--1", "1.2.3"] {
            assert_eq!(compare_decimals(bad, "1"), None, "{bad:?}");
        }
    }

    #[test]
    fn malformed_filters_are_refused() {
        for f in [
            FilterNode::default(),
            leaf("k", "eq", ""),
            leaf("", "eq", "v"),
            leaf("k", "like", "v"),
            FilterNode { vals: vec!["x".into()], ..leaf("k", "eq", "v") },
            set("k", "in", &[]),
            FilterNode { val: "v".into(), ..set("k", "in", &["x"]) },
            leaf("k", "ex", "v"),
            op("and", vec![]),
            op("or", vec![leaf("k", "eq", "v"), leaf("k", "eq", "")]),
            op("not", vec![]),
            op("not", vec![leaf("k", "eq", "v"), leaf("k", "eq", "w")]),
            op("xor", vec![leaf("k", "eq", "v")]),
        ] {
            assert!(validate(&f).is_err(), "{f:?}");
        }
        // The key may be left out of an existence check.
        assert_eq!(validate(&leaf("", "nex", "")), Ok(()));
    }
}
