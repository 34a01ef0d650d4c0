//! `FrameHeader::parse` on arbitrary bytes: a parsed header re-encodes (minimally) to
//! bytes that parse back to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley_proto::frame::{FrameHeader, HeaderError, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    match FrameHeader::parse(data) {
        Ok(Some((h, n))) => {
            assert!((2..=MAX_HEADER_LEN).contains(&n) && n <= data.len());
            let mut out = Vec::new();
            h.encode(&mut out);
            assert_eq!(out.len(), h.encoded_len());
            assert!(out.len() <= n, "minimal encoding longer than the input's");
            assert_eq!(FrameHeader::parse(&out), Ok(Some((h, out.len()))));
            if out.len() == n {
                // The input used the minimal length encoding: same bytes.
                assert_eq!(&out[..], &data[..n]);
            }
            for cut in 0..n {
                assert_eq!(FrameHeader::parse(&data[..cut]), Ok(None), "prefix of {cut}");
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEADER_LEN),
        Err(HeaderError::LengthOverflow) => {
            assert!(data.len() >= 10 && data[1] & 0x7f == 127 && data[2] & 0x80 != 0);
        }
        Err(e) => panic!("unexpected {e:?}"),
    }
});
