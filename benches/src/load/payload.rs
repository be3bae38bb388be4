//! The bytes of every message `sluice-bench` produces.
//!
//! Layout (little-endian), then filler up to the message size:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SLB1` |
//! | 4..12 | run id: random per run, so records of earlier runs in the same topic are told apart |
//! | 12..16 | producer id (0-based) |
//! | 16..24 | sequence number of the record within its producer (0-based, dense) |
//! | 24..32 | send time: nanoseconds since the run's epoch (an `Instant` shared by the process's producers and consumers); the scheduled time in open loop |
//!
//! `(producer, seq)` is unique within a run, which is what `--verify` checks against the
//! log; the send time is what `e2e` subtracts from the time a consumer got the record.

/// First bytes of every payload.
pub const MAGIC: [u8; 4] = *b"SLB1";

/// Bytes of the header at the start of every payload; the smallest message size.
pub const HEADER_BYTES: usize = 32;

/// A record's identity within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    /// The producer that sent it.
    pub producer: u32,
    /// Its position in that producer's sends.
    pub seq: u64,
}

/// The decoded header of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The run that sent it.
    pub run_id: u64,
    /// Who sent it, and which of their records it is.
    pub id: RecordId,
    /// Nanoseconds since the run's epoch at which it was (scheduled to be) sent.
    pub send_ns: u64,
}

/// Why bytes are not a `sluice-bench` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than [`HEADER_BYTES`].
    TooShort(usize),
    /// Does not start with [`MAGIC`].
    BadMagic,
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::TooShort(n) => write!(f, "payload of {n} bytes < {HEADER_BYTES}"),
            PayloadError::BadMagic => f.write_str("payload does not start with SLB1"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// The filler bytes after the header: `len` pseudo-random bytes from a fixed seed (not
/// compressible, reproducible). Built once per producer and copied into each payload.
pub fn filler(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x5eed_1ce0_0000_0002;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The header's bytes.
pub fn header_bytes(header: &Header) -> [u8; HEADER_BYTES] {
    let mut out = [0u8; HEADER_BYTES];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..12].copy_from_slice(&header.run_id.to_le_bytes());
    out[12..16].copy_from_slice(&header.id.producer.to_le_bytes());
    out[16..24].copy_from_slice(&header.id.seq.to_le_bytes());
    out[24..32].copy_from_slice(&header.send_ns.to_le_bytes());
    out
}

/// A payload of `size` bytes: the header, then the first `size - HEADER_BYTES` bytes of
/// `filler`. Panics if `size < HEADER_BYTES` or `filler` is too short (the binary checks
/// the size when it parses its flags and builds the filler from it).
pub fn encode(header: &Header, size: usize, filler: &[u8]) -> Vec<u8> {
    assert!(
        size >= HEADER_BYTES,
        "bench: payload size {size} < {HEADER_BYTES}"
    );
    let rest = size - HEADER_BYTES;
    assert!(
        filler.len() >= rest,
        "bench: filler {} < {rest}",
        filler.len()
    );
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&header_bytes(header));
    out.extend_from_slice(&filler[..rest]);
    out
}

/// The header of a payload (the filler is not looked at).
pub fn decode(value: &[u8]) -> Result<Header, PayloadError> {
    let Some(head) = value.get(..HEADER_BYTES) else {
        return Err(PayloadError::TooShort(value.len()));
    };
    if head[0..4] != MAGIC {
        return Err(PayloadError::BadMagic);
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut producer = [0u8; 4];
    producer.copy_from_slice(&head[12..16]);
    Ok(Header {
        run_id: u64_at(4),
        id: RecordId {
            producer: u32::from_le_bytes(producer),
            seq: u64_at(16),
        },
        send_ns: u64_at(24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            run_id: 0x0102_0304_0506_0708,
            id: RecordId {
                producer: 7,
                seq: 123_456_789_012,
            },
            send_ns: 987_654_321,
        }
    }

    #[test]
    fn encode_then_decode_gives_the_header_back() {
        let fill = filler(1024);
        for size in [HEADER_BYTES, HEADER_BYTES + 1, 100, 1024] {
            let bytes = encode(&header(), size, &fill);
            assert_eq!(bytes.len(), size);
            assert_eq!(decode(&bytes), Ok(header()));
            assert_eq!(&bytes[HEADER_BYTES..], &fill[..size - HEADER_BYTES]);
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let bytes = header_bytes(&header());
        assert_eq!(&bytes[0..4], b"SLB1");
        assert_eq!(bytes[4], 0x08, "run id little-endian");
        assert_eq!(bytes[12], 7, "producer");
        assert_eq!(
            u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
            123_456_789_012
        );
        assert_eq!(
            u64::from_le_bytes(bytes[24..32].try_into().unwrap()),
            987_654_321
        );
    }

    #[test]
    fn decode_refuses_what_is_not_a_payload() {
        assert_eq!(decode(b"short"), Err(PayloadError::TooShort(5)));
        let mut bytes = encode(&header(), 64, &filler(64));
        bytes[0] = b'X';
        assert_eq!(decode(&bytes), Err(PayloadError::BadMagic));
        assert_eq!(decode(&[]), Err(PayloadError::TooShort(0)));
    }

    #[test]
    fn filler_is_deterministic_and_not_constant() {
        assert_eq!(filler(100), filler(100));
        assert_eq!(filler(13).len(), 13);
        let f = filler(64);
        assert!(f.iter().any(|b| *b != f[0]));
    }
}
