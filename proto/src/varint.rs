//! LEB128 varints as the record encoding uses them.
//!
//! Decoding is strict: an encoding must be the shortest one for its value. Because every
//! value then has exactly one encoding, two records are equal exactly when their bytes are,
//! and an accepted batch re-encodes to the same bytes.

/// A `u64` never needs more than ten 7-bit groups.
pub(crate) const UVARINT_LEN_MAX: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended while the continuation bit was still set.
    Truncated,
    /// A longer encoding than needed (a final group of zero after the first).
    Overlong,
    /// More than 64 bits of payload.
    Overflow,
}

impl VarintError {
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            VarintError::Truncated => "truncated varint",
            VarintError::Overlong => "overlong varint",
            VarintError::Overflow => "varint overflows 64 bits",
        }
    }
}

/// Decodes an unsigned LEB128 value from the front of `buf`; returns it and its length.
pub(crate) fn read_uvarint(buf: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(UVARINT_LEN_MAX).enumerate() {
        // The tenth group holds only bit 63: anything above it (including another
        // continuation bit) cannot fit in a u64.
        if i == UVARINT_LEN_MAX - 1 && byte > 1 {
            return Err(VarintError::Overflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(VarintError::Overlong);
            }
            return Ok((value, i + 1));
        }
    }
    // The loop returns by the tenth byte whenever there is one, so we ran out of input.
    Err(VarintError::Truncated)
}

/// Decodes a zigzag LEB128 value from the front of `buf`; returns it and its length.
pub(crate) fn read_zvarint(buf: &[u8]) -> Result<(i64, usize), VarintError> {
    read_uvarint(buf).map(|(v, n)| (unzigzag(v), n))
}

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn put_zvarint(out: &mut Vec<u8>, value: i64) {
    put_uvarint(out, zigzag(value));
}

/// Bytes `put_uvarint` writes for `value`.
pub(crate) const fn uvarint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes `put_zvarint` writes for `value`.
pub(crate) const fn zvarint_len(value: i64) -> usize {
    uvarint_len(zigzag(value))
}

/// Maps small magnitudes of either sign to small codes: 0, -1, 1, -2, … → 0, 1, 2, 3, ….
pub(crate) const fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub(crate) const fn unzigzag(code: u64) -> i64 {
    ((code >> 1) as i64) ^ -((code & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_uvarint(&mut out, v);
        out
    }

    #[test]
    fn known_encodings() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (
                1 << 63,
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            ),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for &(value, bytes) in cases {
            assert_eq!(encode(value), bytes, "encode {value}");
            assert_eq!(uvarint_len(value), bytes.len(), "len {value}");
            assert_eq!(
                read_uvarint(bytes),
                Ok((value, bytes.len())),
                "decode {value}"
            );
        }
    }

    #[test]
    fn decode_stops_at_first_final_group() {
        assert_eq!(read_uvarint(&[0xac, 0x02, 0xff, 0xff]), Ok((300, 2)));
    }

    #[test]
    fn overlong_is_rejected() {
        for bytes in [
            &[0x80, 0x00][..],
            &[0x81, 0x00],
            &[0xff, 0x80, 0x00],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
        ] {
            assert_eq!(
                read_uvarint(bytes),
                Err(VarintError::Overlong),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn overflow_is_rejected() {
        let mut ten = vec![0xff; 9];
        ten.push(0x02); // bit 64
        assert_eq!(read_uvarint(&ten), Err(VarintError::Overflow));
        let mut eleven = vec![0xff; 10]; // continuation bit on the tenth byte
        eleven.push(0x01);
        assert_eq!(read_uvarint(&eleven), Err(VarintError::Overflow));
        assert_eq!(read_uvarint(&[0x80; 32]), Err(VarintError::Overflow));
    }

    #[test]
    fn truncated_is_rejected() {
        assert_eq!(read_uvarint(&[]), Err(VarintError::Truncated));
        assert_eq!(read_uvarint(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(read_uvarint(&[0xff; 9]), Err(VarintError::Truncated));
    }

    #[test]
    fn zigzag_mapping() {
        let cases = [
            (0i64, 0u64),
            (-1, 1),
            (1, 2),
            (-2, 3),
            (i64::MAX, u64::MAX - 1),
            (i64::MIN, u64::MAX),
        ];
        for (signed, code) in cases {
            assert_eq!(zigzag(signed), code);
            assert_eq!(unzigzag(code), signed);
        }
        assert_eq!(zvarint_len(-1), 1);
        assert_eq!(zvarint_len(i64::MIN), UVARINT_LEN_MAX);
    }

    proptest! {
        #[test]
        fn uvarint_round_trip(value in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut bytes = encode(value);
            prop_assert_eq!(bytes.len(), uvarint_len(value));
            let len = bytes.len();
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(read_uvarint(&bytes), Ok((value, len)));
        }

        #[test]
        fn zvarint_round_trip(value in any::<i64>()) {
            let mut bytes = Vec::new();
            put_zvarint(&mut bytes, value);
            prop_assert_eq!(bytes.len(), zvarint_len(value));
            prop_assert_eq!(read_zvarint(&bytes), Ok((value, bytes.len())));
        }

        #[test]
        fn uvarint_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok((value, len)) = read_uvarint(&bytes) {
                // Strictness: whatever decodes is the canonical encoding of its value.
                prop_assert_eq!(encode(value), &bytes[..len]);
            }
        }
    }
}
