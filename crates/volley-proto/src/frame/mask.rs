//! Masking (RFC 6455 §5.3): XOR of the payload with a 4-byte key, done a word at a time.

/// XORs `buf` with `key`, as if `buf` started `offset` bytes into a masked payload.
///
/// Works on 8-byte words; the result equals [`apply_mask_bytewise`] at every length and
/// offset (a property test checks this).
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Rotate the key so that byte 0 of `buf` uses key[offset % 4].
    let rot = offset & 3;
    let key = [key[rot], key[(rot + 1) & 3], key[(rot + 2) & 3], key[(rot + 3) & 3]];
    let word = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the rotated key lines up again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The plain byte loop of RFC 6455 §5.3: `j = i MOD 4; out[i] = in[i] XOR key[j]`.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(i + offset) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc6455_5_7_masked_hello() {
        // "A single-frame masked text message": 0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    proptest! {
        #[test]
        fn fast_mask_equals_bytewise(data in proptest::collection::vec(any::<u8>(), 0..300), key in any::<[u8; 4]>(), offset in 0usize..16) {
            let mut a = data.clone();
            let mut b = data;
            apply_mask(&mut a, key, offset);
            apply_mask_bytewise(&mut b, key, offset);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn mask_in_pieces_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..200), key in any::<[u8; 4]>(), cut in 0usize..200) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut pieces = data;
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            prop_assert_eq!(whole, pieces);
        }
    }
}
