//! The one place `bincode` is named (apart from `#[derive(Encode, Decode)]` on the message
//! types). bincode 2.0.1 is pinned and unmaintained (RUSTSEC-2025-0141); keeping it behind
//! these few functions means replacing it later touches this file and the derives only.
//!
//! # The configuration, and what it means for the bytes
//!
//! Little-endian, **fixed-width integers**, no varints. Fixed-int was chosen over varint
//! because the frame header is small next to the batches it carries, and fixed widths make
//! the layout trivial to implement in another language and to read in a hex dump (the golden
//! vectors in `wire/tests.rs` are annotated field by field). Concretely (see `PROTOCOL.md`):
//!
//! - `u8`/`u16`/`u32`/`u64`/`i64`: 1/2/4/8/8 bytes, little-endian; `bool`: one byte 0 or 1.
//! - `String` and `Vec<T>`: a `u64` element count, then the elements (a string's UTF-8 bytes).
//! - `Option<T>`: one byte, `0` = `None`, `1` = `Some` followed by the `T`.
//! - enums (and `Result`, whose `Ok` is 0 and `Err` is 1): the variant's **position** in the
//!   declaration as a `u32`, then its fields in order. Explicit discriminants are ignored,
//!   which is why variants are only ever appended. [`ErrorCode`] is the exception: it is
//!   written as its stable `u16` number by the impls at the end of this file.
//! - structs: their fields in declaration order, nothing in between.
//!
//! # Bounded decoding
//!
//! A `Vec` decoder reserves `len * size_of::<T>()` before it has read the elements that
//! justify it. bincode bounds those reservations with a compile-time limit on "claimed"
//! bytes; [`decode`] picks the smallest of a few limits that is at least
//! [`CLAIM_FACTOR`] times the input limit, so decoding an `n`-byte header can never reserve
//! more than a small multiple of `n` however its length fields lie. Legitimate input needs
//! less than that: a fixed-int decode ends with exactly as many bytes claimed as it read,
//! and a container's reservation is at most ~6.6x the bytes its elements encode to (the
//! widest case is `TopicMetadata`, 112 bytes in memory for 17 encoded; the `wire` tests
//! check every message element type against `CLAIM_FACTOR`).

use bincode::config::{self, Configuration, Fixint, LittleEndian, NoLimit};
use bincode::de::Decoder;
use bincode::enc::{write::Writer, Encoder};
use bincode::error::{DecodeError, EncodeError};

use crate::wire::{ErrorCode, FrameError};

/// Decoding an input of `n` bytes may reserve at most about `CLAIM_FACTOR * n` bytes.
pub(crate) const CLAIM_FACTOR: usize = 16;

/// The claim limits [`decode`] chooses from, smallest first.
const CLAIM_TIER_BYTES: [usize; 3] = [1 << 20, 16 << 20, 64 << 20];
const CLAIM_BYTES_MAX: usize = 64 << 20;

/// The largest input [`decode`] accepts, whatever limit it is given: beyond it the claim
/// bound could not be kept.
pub(crate) const INPUT_BYTES_MAX: usize = CLAIM_BYTES_MAX / CLAIM_FACTOR;

const _: () = assert!(CLAIM_TIER_BYTES[2] == CLAIM_BYTES_MAX);
const _: () = assert!(CLAIM_TIER_BYTES[0] < CLAIM_TIER_BYTES[1]);
const _: () = assert!(CLAIM_TIER_BYTES[1] < CLAIM_TIER_BYTES[2]);

const fn encode_config() -> Configuration<LittleEndian, Fixint, NoLimit> {
    config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
}

const fn decode_config<const CLAIM: usize>(
) -> Configuration<LittleEndian, Fixint, config::Limit<CLAIM>> {
    encode_config().with_limit::<CLAIM>()
}

/// A type with a wire encoding: what the rest of the crate names instead of bincode's traits.
pub(crate) trait Wire: bincode::Encode + bincode::Decode<()> {}

impl<T: bincode::Encode + bincode::Decode<()>> Wire for T {}

/// Appends to a `Vec`; never fails.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl Writer for VecWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends the encoding of `value` to `out`.
///
/// The message types contain nothing whose encoding can fail (no `RefCell`, no mutex) and the
/// writer cannot fail, so an error here is a bug; it is still returned rather than unwrapped,
/// as `BadHeader`, and `out` is then left with a partial encoding the caller discards.
pub(crate) fn encode_into<T: bincode::Encode>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    bincode::encode_into_writer(value, VecWriter(out), encode_config()).map_err(|e| {
        FrameError::BadHeader {
            reason: format!("encode failed: {e}"),
        }
    })
}

/// The encoding of `value`.
#[cfg(test)]
pub(crate) fn encode<T: bincode::Encode>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes one `T` from the front of `bytes` (at most `limit` bytes long) and returns it
/// with the number of bytes it took. Bytes after it are the caller's business.
pub(crate) fn decode_prefix<T: bincode::Decode<()>>(
    bytes: &[u8],
    limit: usize,
) -> Result<(T, usize), FrameError> {
    let max = limit.min(INPUT_BYTES_MAX);
    if bytes.len() > max {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let claim = max.saturating_mul(CLAIM_FACTOR);
    let result = if claim <= CLAIM_TIER_BYTES[0] {
        bincode::decode_from_slice(bytes, decode_config::<{ CLAIM_TIER_BYTES[0] }>())
    } else if claim <= CLAIM_TIER_BYTES[1] {
        bincode::decode_from_slice(bytes, decode_config::<{ CLAIM_TIER_BYTES[1] }>())
    } else {
        bincode::decode_from_slice(bytes, decode_config::<{ CLAIM_TIER_BYTES[2] }>())
    };
    result.map_err(|e| FrameError::BadHeader {
        reason: describe(&e),
    })
}

/// Decodes exactly one `T` from `bytes` (at most `limit` bytes long): bytes left over are
/// `TrailingBytes`, so every accepted input is the one encoding of its value.
pub(crate) fn decode<T: bincode::Decode<()>>(bytes: &[u8], limit: usize) -> Result<T, FrameError> {
    let (value, used) = decode_prefix(bytes, limit)?;
    if used != bytes.len() {
        return Err(FrameError::TrailingBytes);
    }
    Ok(value)
}

/// A short reason for a decode failure. bincode's own `Display` is its `Debug`, full of Rust
/// type paths, and its error type is not part of this crate's API.
fn describe(e: &DecodeError) -> String {
    match e {
        DecodeError::UnexpectedEnd { .. } => "header ends inside a field".to_owned(),
        DecodeError::LimitExceeded => "a length in the header exceeds its size".to_owned(),
        DecodeError::UnexpectedVariant {
            type_name, found, ..
        } => format!("unknown variant {found} of {}", short_type_name(type_name)),
        DecodeError::Utf8 { .. } => "a string is not UTF-8".to_owned(),
        DecodeError::InvalidBooleanValue(b) => format!("bad bool byte {b}"),
        DecodeError::OutsideUsizeRange(n) => format!("length {n} does not fit in memory"),
        _ => "undecodable header".to_owned(),
    }
}

/// `core::option::Option<alloc::string::String>` -> `Option<String>`.
fn short_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut word = String::new();
    for c in name.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or_default());
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or_default());
    out
}

// `ErrorCode` travels as its stable `u16` number, not as a variant position, so codes can be
// sparse and new ones can be added without breaking old decoders.

impl bincode::Encode for ErrorCode {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        bincode::Encode::encode(&self.number(), encoder)
    }
}

impl<Context> bincode::Decode<Context> for ErrorCode {
    /// A number this version does not know is read as [`ErrorCode::Unknown`]: a newer broker
    /// may send codes added after this one was built, and `Unknown` is the conservative
    /// reading (not retriable, indeterminate for a write).
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let number: u16 = bincode::Decode::decode(decoder)?;
        Ok(ErrorCode::from_number(number).unwrap_or(ErrorCode::Unknown))
    }
}

impl<'de, Context> bincode::BorrowDecode<'de, Context> for ErrorCode {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        bincode::Decode::decode(decoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, bincode::Encode, bincode::Decode)]
    struct Sample {
        a: u16,
        b: Option<u32>,
        c: Vec<String>,
    }

    #[test]
    fn layout_is_fixed_int_little_endian() {
        let s = Sample {
            a: 0x0102,
            b: Some(3),
            c: vec!["hi".to_owned()],
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(
            bytes,
            [
                0x02, 0x01, // a
                0x01, 0x03, 0, 0, 0, // Some(3)
                1, 0, 0, 0, 0, 0, 0, 0, // one string
                2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', // "hi"
            ]
        );
        assert_eq!(decode::<Sample>(&bytes, 64).unwrap(), s);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert_eq!(decode::<u32>(&bytes, 64), Err(FrameError::TrailingBytes));
        assert_eq!(decode_prefix::<u32>(&bytes, 64).unwrap(), (7, 4));
    }

    #[test]
    fn input_over_the_limit_is_too_large() {
        let bytes = encode(&7u64).unwrap();
        assert_eq!(
            decode::<u64>(&bytes, 7),
            Err(FrameError::TooLarge { len: 8, max: 7 })
        );
    }

    #[test]
    fn a_lying_length_does_not_allocate() {
        // A Vec<String> claiming 2^40 elements in a 16-byte input: refused by the claim
        // limit before any reservation.
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        let err = decode::<Vec<String>>(&bytes, 1 << 16).unwrap_err();
        assert!(matches!(err, FrameError::BadHeader { .. }), "{err:?}");
        // And a Vec<u8> (the string fast path) likewise.
        let err = decode::<Vec<u8>>(&bytes, 1 << 16).unwrap_err();
        assert!(matches!(err, FrameError::BadHeader { .. }), "{err:?}");
    }

    #[test]
    fn ratio_8_input_at_the_limit_decodes() {
        // Vec<Option<u32>> of `None`s: 1 byte encoded, 8 bytes reserved per element, a worse
        // ratio than any message type (`wire` tests check theirs). At the largest input the
        // smallest tier serves, it must still decode.
        let limit = CLAIM_TIER_BYTES[0] / CLAIM_FACTOR;
        let v: Vec<Option<u32>> = vec![None; limit - 8];
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes.len(), limit);
        assert_eq!(std::mem::size_of::<Option<u32>>(), 8);
        assert_eq!(decode::<Vec<Option<u32>>>(&bytes, limit).unwrap(), v);
    }

    #[test]
    fn error_reasons_are_short() {
        let err = decode::<Option<u8>>(&[7, 0], 64).unwrap_err();
        assert_eq!(
            err,
            FrameError::BadHeader {
                reason: "unknown variant 7 of Option<u8>".to_owned()
            }
        );
        assert_eq!(short_type_name("a::b::C<d::E, F>"), "C<E, F>");
    }

    #[test]
    fn unknown_error_code_numbers_read_as_unknown() {
        assert_eq!(
            decode::<ErrorCode>(&[0xe7, 0x03], 64),
            Ok(ErrorCode::Unknown)
        );
        assert_eq!(
            decode::<ErrorCode>(&encode(&ErrorCode::NotLeader).unwrap(), 64),
            Ok(ErrorCode::NotLeader)
        );
        assert_eq!(encode(&ErrorCode::NotLeader).unwrap(), [9, 0]);
    }
}
