//! Record batch, version 1: parsing ([`BatchHeader`], [`BatchView`], [`batches`]) and
//! encoding ([`BatchBuilder`]). Layout and rules: `PROTOCOL.md`, "Record batch".

use std::fmt;
use std::iter::FusedIterator;

use crate::varint::{self, VarintError};

/// Size of the fixed header; records start here.
pub const HEADER_LEN: usize = 64;
/// The only batch format version this crate reads and writes.
pub const VERSION: u8 = 1;
/// `producer_id` of a batch from a non-idempotent producer.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producer_epoch` of a batch from a non-idempotent producer.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// `base_sequence` of a batch from a non-idempotent producer.
pub const NO_SEQUENCE: i32 = -1;

// Byte offsets of the header fields. Only the ones patched or checksummed in place get a
// name; `BatchHeader::parse` and `BatchHeader::write_to` walk the header in order.
const BASE_OFFSET_AT: usize = 4;
const LEADER_TERM_AT: usize = 12;
const CRC_AT: usize = 20;
/// The CRC covers `[CRC_START, length)`: everything after the CRC field itself.
const CRC_START: usize = 24;

// The header fields in order with their sizes must add up to the documented layout.
const _: () = assert!(4 + 8 + 8 + 4 + 1 + 1 + 2 + 4 + 8 + 8 + 8 + 2 + 2 + 4 == HEADER_LEN);
const _: () = assert!(BASE_OFFSET_AT + 8 == LEADER_TERM_AT && LEADER_TERM_AT + 8 == CRC_AT);
const _: () = assert!(CRC_AT + 4 == CRC_START);

/// Batch attribute bits 0-2: compression codec. Only 0 (none) exists in version 1.
const ATTR_COMPRESSION_MASK: u8 = 0b0000_0111;
/// Batch attribute bit 4: a control batch (transaction markers and the like), not user data.
const ATTR_CONTROL: u8 = 0b0001_0000;
const ATTR_KNOWN: u8 = ATTR_COMPRESSION_MASK | ATTR_CONTROL;

/// The smallest record: one byte each for body_len, attributes, timestamp_delta,
/// offset_delta, key_len, value_len and header_count.
const RECORD_LEN_MIN: usize = 7;

/// Upper bounds a decoder enforces and an encoder respects. Both ends of a connection need
/// not agree: a broker rejects what exceeds its own limits with a typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole batch, header included.
    pub batch_bytes_max: u32,
    /// Most records in one batch.
    pub records_max: u32,
    /// Longest record key; also bounds each header key.
    pub key_bytes_max: u32,
    /// Longest record value; also bounds each header value.
    pub value_bytes_max: u32,
    /// Most headers on one record.
    pub headers_max: u32,
}

impl Limits {
    /// The defaults, usable in `const` context.
    pub const DEFAULT: Limits = Limits {
        batch_bytes_max: 16 << 20,
        records_max: 262_144,
        key_bytes_max: 64 << 10,
        value_bytes_max: 8 << 20,
        headers_max: 64,
    };
}

// The defaults must admit what they advertise: a record with a maximal key and value fits
// in a batch, and a batch can actually hold `records_max` records.
const _: () = {
    let l = Limits::DEFAULT;
    assert!(HEADER_LEN < l.batch_bytes_max as usize);
    assert!(
        HEADER_LEN
            + 2 * varint::UVARINT_LEN_MAX
            + (l.key_bytes_max + l.value_bytes_max) as usize
            + RECORD_LEN_MIN
            < l.batch_bytes_max as usize
    );
    assert!(HEADER_LEN + RECORD_LEN_MIN * (l.records_max as usize) <= l.batch_bytes_max as usize);
};

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Why a batch was rejected. Every variant is a definite failure: nothing was stored.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header or the batch's own length requires.
    #[error("truncated batch: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    /// The length field is below the header size, above `batch_bytes_max`, or (for a
    /// whole-batch parse) not the size of the slice.
    #[error("bad batch length {length}")]
    BadLength { length: u32 },
    #[error("batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("unsupported batch version {version}")]
    UnsupportedVersion { version: u8 },
    #[error("unsupported compression codec {codec}")]
    UnsupportedCompression { codec: u8 },
    #[error("batch has {count} records, limit is {max}")]
    TooManyRecords { count: u32, max: u32 },
    /// A key, value, header key, header value or header count over its limit.
    #[error("record {index} exceeds a key, value or header limit")]
    RecordTooLarge { index: u32 },
    /// Any other structural fault.
    #[error("malformed batch: {reason}")]
    Malformed { reason: &'static str },
}

impl BatchError {
    /// Stable wire code of this error kind (the table in `PROTOCOL.md`). Codes are never
    /// reused or renumbered.
    pub fn code(&self) -> u16 {
        match self {
            BatchError::Truncated { .. } => 101,
            BatchError::BadLength { .. } => 102,
            BatchError::BadCrc { .. } => 103,
            BatchError::UnsupportedVersion { .. } => 104,
            BatchError::UnsupportedCompression { .. } => 105,
            BatchError::TooManyRecords { .. } => 106,
            BatchError::RecordTooLarge { .. } => 107,
            BatchError::Malformed { .. } => 108,
        }
    }
}

const fn malformed(reason: &'static str) -> BatchError {
    BatchError::Malformed { reason }
}

impl From<VarintError> for BatchError {
    fn from(e: VarintError) -> Self {
        malformed(e.reason())
    }
}

/// Forward-only reader over input bytes. Running out is `Malformed`: it is only used where
/// the enclosing length has already been checked, so a short read means an inner length
/// lied.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, len: usize, reason: &'static str) -> Result<&'a [u8], BatchError> {
        let (head, rest) = self.buf.split_at_checked(len).ok_or(malformed(reason))?;
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BatchError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(malformed("short read"))?;
        self.buf = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, BatchError> {
        self.array::<1>().map(|[b]| b)
    }

    fn uvarint(&mut self) -> Result<u64, BatchError> {
        let (value, len) = varint::read_uvarint(self.buf)?;
        self.take(len, "short read")?;
        Ok(value)
    }

    fn zvarint(&mut self) -> Result<i64, BatchError> {
        let (value, len) = varint::read_zvarint(self.buf)?;
        self.take(len, "short read")?;
        Ok(value)
    }

    /// A uvarint length followed by that many bytes.
    fn bytes(&mut self, overrun: &'static str) -> Result<&'a [u8], BatchError> {
        let len = self.uvarint()?;
        let len = usize::try_from(len).map_err(|_| malformed(overrun))?;
        self.take(len, overrun)
    }

    /// A zvarint length (-1 = null) followed by that many bytes.
    fn nullable(&mut self, overrun: &'static str) -> Result<Option<&'a [u8]>, BatchError> {
        match self.zvarint()? {
            -1 => Ok(None),
            len if len < 0 => Err(malformed("negative length")),
            len => {
                let len = usize::try_from(len).map_err(|_| malformed(overrun))?;
                self.take(len, overrun).map(Some)
            }
        }
    }
}

/// Fixed header fields, parsed without touching the records or the CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Total batch size in bytes, this field included.
    pub length: u32,
    /// Offset of the first record; assigned by the broker, not covered by the CRC.
    pub base_offset: u64,
    /// Raft term of the leader that appended the batch; not covered by the CRC.
    pub leader_term: u64,
    /// CRC-32 (IEEE) of bytes `[24, length)`.
    pub crc: u32,
    pub version: u8,
    pub attributes: u8,
    pub record_count: u32,
    /// Timestamp of the first record (ms since the Unix epoch); record deltas are from it.
    pub first_timestamp: i64,
    /// Greatest record timestamp in the batch.
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Parses the first [`HEADER_LEN`] bytes of `buf` (which may be longer, or be only the
    /// header). Checks the length bounds against `limits`, the version, reserved fields and
    /// bits, compression and `record_count` in `1..=records_max`. Does not check the CRC,
    /// the records, or that `buf` holds the whole batch; that is what lets a log scanner
    /// read the header alone to learn how many bytes to fetch.
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<BatchHeader, BatchError> {
        let (fixed, _) = buf
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(BatchError::Truncated {
                needed: HEADER_LEN,
                have: buf.len(),
            })?;
        let mut c = Cursor::new(fixed);
        let length = u32::from_le_bytes(c.array()?);
        let base_offset = u64::from_le_bytes(c.array()?);
        let leader_term = u64::from_le_bytes(c.array()?);
        let crc = u32::from_le_bytes(c.array()?);
        let version = c.u8()?;
        let attributes = c.u8()?;
        let reserved_a = u16::from_le_bytes(c.array()?);
        let record_count = u32::from_le_bytes(c.array()?);
        let first_timestamp = i64::from_le_bytes(c.array()?);
        let max_timestamp = i64::from_le_bytes(c.array()?);
        let producer_id = i64::from_le_bytes(c.array()?);
        let producer_epoch = i16::from_le_bytes(c.array()?);
        let reserved_b = u16::from_le_bytes(c.array()?);
        let base_sequence = i32::from_le_bytes(c.array()?);
        assert!(
            c.is_empty(),
            "proto: header walk must consume exactly HEADER_LEN bytes"
        );

        // Length first: a scanner recovering a log treats a bad length as the end of the
        // valid data, whatever else the bytes say.
        if (length as usize) < HEADER_LEN || length > limits.batch_bytes_max {
            return Err(BatchError::BadLength { length });
        }
        // Version before anything else is interpreted: a later version may lay out the rest
        // differently.
        if version != VERSION {
            return Err(BatchError::UnsupportedVersion { version });
        }
        if attributes & !ATTR_KNOWN != 0 {
            return Err(malformed("reserved attribute bits set"));
        }
        let codec = attributes & ATTR_COMPRESSION_MASK;
        if codec != 0 {
            return Err(BatchError::UnsupportedCompression { codec });
        }
        if reserved_a != 0 || reserved_b != 0 {
            return Err(malformed("reserved header field set"));
        }
        if record_count == 0 {
            return Err(malformed("record_count is 0"));
        }
        if record_count > limits.records_max {
            return Err(BatchError::TooManyRecords {
                count: record_count,
                max: limits.records_max,
            });
        }
        // The first record is part of the max, so this holds for every valid batch; checking
        // it here rejects an inconsistent header without the record walk.
        if max_timestamp < first_timestamp {
            return Err(malformed("max_timestamp below first_timestamp"));
        }
        // Offsets of the last record must be representable, so `last_offset` and record
        // offsets never overflow.
        if base_offset
            .checked_add(u64::from(record_count - 1))
            .is_none()
        {
            return Err(malformed("offset range overflows u64"));
        }
        Ok(BatchHeader {
            length,
            base_offset,
            leader_term,
            crc,
            version,
            attributes,
            record_count,
            first_timestamp,
            max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
        })
    }

    /// Offset of the last record: `base_offset + record_count - 1`. (Saturating only for a
    /// hand-built header; a parsed one never overflows.)
    pub fn last_offset(&self) -> u64 {
        let last_delta = self.record_count.saturating_sub(1);
        self.base_offset.saturating_add(u64::from(last_delta))
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Serialises the header; the inverse of `parse` field for field.
    fn write_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.leader_term.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.push(self.version);
        out.push(self.attributes);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.record_count.to_le_bytes());
        out.extend_from_slice(&self.first_timestamp.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp.to_le_bytes());
        out.extend_from_slice(&self.producer_id.to_le_bytes());
        out.extend_from_slice(&self.producer_epoch.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.base_sequence.to_le_bytes());
        assert_eq!(out.len() - start, HEADER_LEN, "proto: header encoding size");
    }
}

/// The CRC as stored in the header, and as computed over `[CRC_START, ..)` of `batch`.
fn crc_pair(batch: &[u8]) -> Result<(u32, u32), BatchError> {
    let (head, covered) = batch
        .split_at_checked(CRC_START)
        .ok_or(BatchError::Truncated {
            needed: HEADER_LEN,
            have: batch.len(),
        })?;
    let mut c = Cursor::new(head.get(CRC_AT..).unwrap_or_default());
    let stored = u32::from_le_bytes(c.array()?);
    Ok((stored, crc32fast::hash(covered)))
}

/// Verifies the CRC of one whole batch (`batch.len()` must equal its length field). Cheap:
/// no record walk and no limits, so a log scanner can use it on its own.
pub fn verify_crc(batch: &[u8]) -> Result<(), BatchError> {
    let truncated = BatchError::Truncated {
        needed: HEADER_LEN,
        have: batch.len(),
    };
    if batch.len() < HEADER_LEN {
        return Err(truncated);
    }
    let (length, _) = batch.split_first_chunk::<4>().ok_or(truncated)?;
    let length = u32::from_le_bytes(*length);
    if usize::try_from(length).ok() != Some(batch.len()) {
        return Err(BatchError::BadLength { length });
    }
    let (stored, computed) = crc_pair(batch)?;
    if stored != computed {
        return Err(BatchError::BadCrc { stored, computed });
    }
    Ok(())
}

fn write_at(batch: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), BatchError> {
    let have = batch.len();
    if have < HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: HEADER_LEN,
            have,
        });
    }
    let dst = batch
        .get_mut(at..at + bytes.len())
        .ok_or(BatchError::Truncated {
            needed: HEADER_LEN,
            have,
        })?;
    dst.copy_from_slice(bytes);
    Ok(())
}

/// Sets `base_offset` in place. The field is outside the CRC, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) -> Result<(), BatchError> {
    write_at(batch, BASE_OFFSET_AT, &base_offset.to_le_bytes())
}

/// Sets `leader_term` in place. The field is outside the CRC, so the batch stays valid.
pub fn set_leader_term(batch: &mut [u8], term: u64) -> Result<(), BatchError> {
    write_at(batch, LEADER_TERM_AT, &term.to_le_bytes())
}

/// A record split off the front of the record area: framing and field syntax only.
struct RawRecord<'a> {
    attributes: u8,
    timestamp_delta: i64,
    offset_delta: u64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    header_count: u64,
    /// The rest of the record body: the encoded headers.
    headers: &'a [u8],
}

fn next_record<'a>(c: &mut Cursor<'a>) -> Result<RawRecord<'a>, BatchError> {
    let body = c.bytes("record overruns batch")?;
    let mut b = Cursor::new(body);
    Ok(RawRecord {
        attributes: b.u8()?,
        timestamp_delta: b.zvarint()?,
        offset_delta: b.uvarint()?,
        key: b.nullable("key overruns record")?,
        value: b.nullable("value overruns record")?,
        header_count: b.uvarint()?,
        headers: b.buf,
    })
}

fn next_header<'a>(c: &mut Cursor<'a>) -> Result<(&'a str, Option<&'a [u8]>), BatchError> {
    let key = c.bytes("header key overruns record")?;
    let key = std::str::from_utf8(key).map_err(|_| malformed("header key is not UTF-8"))?;
    let value = c.nullable("header value overruns record")?;
    Ok((key, value))
}

/// Whether a length exceeds a limit (`usize` to `u64` is lossless on every target).
fn over(len: usize, max: u32) -> bool {
    len as u64 > u64::from(max)
}

/// Walks every record and header once, checking everything iteration relies on, so that
/// `RecordIter` and `HeaderIter` cannot meet an error afterwards.
fn validate_records(h: &BatchHeader, records: &[u8], limits: &Limits) -> Result<(), BatchError> {
    let mut c = Cursor::new(records);
    let mut max_timestamp = h.first_timestamp;
    for index in 0..h.record_count {
        let r = next_record(&mut c)?;
        if r.attributes != 0 {
            return Err(malformed("record attributes set"));
        }
        if r.offset_delta != u64::from(index) {
            return Err(malformed("offset delta is not the record index"));
        }
        if index == 0 && r.timestamp_delta != 0 {
            return Err(malformed("first record's timestamp is not first_timestamp"));
        }
        let timestamp = h
            .first_timestamp
            .checked_add(r.timestamp_delta)
            .ok_or(malformed("record timestamp overflows i64"))?;
        max_timestamp = max_timestamp.max(timestamp);

        let too_large = BatchError::RecordTooLarge { index };
        if r.key.is_some_and(|k| over(k.len(), limits.key_bytes_max))
            || r.value
                .is_some_and(|v| over(v.len(), limits.value_bytes_max))
            || r.header_count > u64::from(limits.headers_max)
        {
            return Err(too_large);
        }
        let mut hc = Cursor::new(r.headers);
        for _ in 0..r.header_count {
            let (key, value) = next_header(&mut hc)?;
            if over(key.len(), limits.key_bytes_max)
                || value.is_some_and(|v| over(v.len(), limits.value_bytes_max))
            {
                return Err(too_large);
            }
        }
        if !hc.is_empty() {
            return Err(malformed("record body longer than its fields"));
        }
    }
    if !c.is_empty() {
        return Err(malformed("bytes after the last record"));
    }
    if max_timestamp != h.max_timestamp {
        return Err(malformed(
            "max_timestamp is not the greatest record timestamp",
        ));
    }
    Ok(())
}

/// A fully validated batch over borrowed bytes. Only [`BatchView::parse`] makes one, so
/// holding one means every check has passed and iteration is infallible.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
    header: BatchHeader,
}

impl<'a> BatchView<'a> {
    /// Validates everything: the header, `length == bytes.len()`, the CRC, and every
    /// record against `limits`. Checks run cheapest first, and the CRC before any record
    /// byte is interpreted.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<BatchView<'a>, BatchError> {
        let header = BatchHeader::parse(bytes, limits)?;
        Self::parse_with_header(bytes, header, limits)
    }

    fn parse_with_header(
        bytes: &'a [u8],
        header: BatchHeader,
        limits: &Limits,
    ) -> Result<BatchView<'a>, BatchError> {
        if usize::try_from(header.length).ok() != Some(bytes.len()) {
            return Err(BatchError::BadLength {
                length: header.length,
            });
        }
        let (stored, computed) = crc_pair(bytes)?;
        if stored != computed {
            return Err(BatchError::BadCrc { stored, computed });
        }
        validate_records(&header, bytes.get(HEADER_LEN..).unwrap_or_default(), limits)?;
        Ok(BatchView { bytes, header })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole batch, exactly as parsed (what the log stores and a fetch returns).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            cursor: Cursor::new(self.bytes.get(HEADER_LEN..).unwrap_or_default()),
            base_offset: self.header.base_offset,
            first_timestamp: self.header.first_timestamp,
            next_index: 0,
            count: self.header.record_count,
        }
    }
}

/// The records of a [`BatchView`], in offset order.
pub struct RecordIter<'a> {
    cursor: Cursor<'a>,
    base_offset: u64,
    first_timestamp: i64,
    next_index: u32,
    count: u32,
}

impl fmt::Debug for RecordIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordIter")
            .field("next_index", &self.next_index)
            .field("count", &self.count)
            .finish()
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        if self.next_index >= self.count {
            return None;
        }
        // `validate_records` accepted these exact bytes, so this cannot fail; if it ever
        // did, ending the iteration beats panicking on a broker thread.
        let Ok(r) = next_record(&mut self.cursor) else {
            self.next_index = self.count;
            return None;
        };
        let index = self.next_index;
        self.next_index += 1;
        Some(RecordView {
            offset: self.base_offset.saturating_add(u64::from(index)),
            timestamp: self.first_timestamp.saturating_add(r.timestamp_delta),
            key: r.key,
            value: r.value,
            headers: RecordHeaders {
                bytes: r.headers,
                count: u32::try_from(r.header_count).unwrap_or(0),
            },
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count.saturating_sub(self.next_index) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for RecordIter<'_> {}
impl FusedIterator for RecordIter<'_> {}

/// One record of a validated batch, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// `base_offset` of the batch plus the record's index.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    headers: RecordHeaders<'a>,
}

/// A record's encoded headers. Comparing raw bytes is comparing headers, because the
/// encoding is canonical.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RecordHeaders<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl fmt::Debug for RecordHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> RecordHeaders<'a> {
    fn iter(&self) -> HeaderIter<'a> {
        HeaderIter {
            cursor: Cursor::new(self.bytes),
            left: self.count,
        }
    }
}

impl<'a> RecordView<'a> {
    /// The record's headers in order: (key, value), a null value as `None`.
    pub fn headers(&self) -> HeaderIter<'a> {
        self.headers.iter()
    }

    /// Copies the record out of the batch.
    pub fn to_record(&self) -> Record {
        Record {
            timestamp: self.timestamp,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers()
                .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }
}

/// The headers of one [`RecordView`].
pub struct HeaderIter<'a> {
    cursor: Cursor<'a>,
    left: u32,
}

impl fmt::Debug for HeaderIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderIter")
            .field("left", &self.left)
            .finish()
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // Validated with the batch, as in `RecordIter::next`.
        let Ok(header) = next_header(&mut self.cursor) else {
            self.left = 0;
            return None;
        };
        self.left -= 1;
        Some(header)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}
impl FusedIterator for HeaderIter<'_> {}

/// Iterates over concatenated whole batches (what a fetch returns), validating each with
/// [`BatchView::parse`]. Yields one `Err` and then stops if a batch is bad or the tail is
/// cut short; an empty buffer yields nothing.
pub fn batches<'a>(buf: &'a [u8], limits: &'a Limits) -> BatchIter<'a> {
    BatchIter {
        rest: buf,
        limits,
        done: false,
    }
}

/// See [`batches`].
#[derive(Debug)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
    limits: &'a Limits,
    done: bool,
}

impl<'a> BatchIter<'a> {
    fn split_next(&self) -> Result<(BatchView<'a>, &'a [u8]), BatchError> {
        let header = BatchHeader::parse(self.rest, self.limits)?;
        let have = self.rest.len();
        let needed = header.length as usize;
        let (batch, rest) = self
            .rest
            .split_at_checked(needed)
            .ok_or(BatchError::Truncated { needed, have })?;
        Ok((
            BatchView::parse_with_header(batch, header, self.limits)?,
            rest,
        ))
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<BatchView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        match self.split_next() {
            Ok((view, rest)) => {
                self.rest = rest;
                Some(Ok(view))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for BatchIter<'_> {}

/// An owned record, for building batches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Encodes records into one batch. Call order: [`new`](Self::new), optionally
/// [`producer`](Self::producer) / [`control`](Self::control), any number of
/// [`push`](Self::push), then [`finish`](Self::finish).
///
/// Records are encoded as they are pushed, behind a header-sized gap that `finish` fills,
/// and each is added to the CRC as it is written (its bytes still in cache),
/// so finishing costs no pass over the records and no copy.
pub struct BatchBuilder {
    limits: Limits,
    /// `HEADER_LEN` placeholder bytes, then the encoded records.
    buf: Vec<u8>,
    record_count: u32,
    /// Timestamps of the first record and the greatest so far; `None` until one is pushed.
    timestamps: Option<(i64, i64)>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    control: bool,
    /// CRC of the encoded records so far, taken as each is written (while its bytes
    /// are in cache): `finish` combines it with the header's instead of reading the
    /// whole batch again.
    records_crc: crc32fast::Hasher,
}

impl fmt::Debug for BatchBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the buffer: it can be megabytes.
        f.debug_struct("BatchBuilder")
            .field("record_count", &self.record_count)
            .field("encoded_len", &self.buf.len())
            .field("timestamps", &self.timestamps)
            .field("producer_id", &self.producer_id)
            .field("producer_epoch", &self.producer_epoch)
            .field("base_sequence", &self.base_sequence)
            .field("control", &self.control)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Encoded size of a zvarint-length-prefixed nullable field.
fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint::zvarint_len(-1),
        Some(b) => varint::zvarint_len(b.len() as i64).saturating_add(b.len()),
    }
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => varint::put_zvarint(out, -1),
        Some(b) => {
            varint::put_zvarint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

impl BatchBuilder {
    pub fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, 0)
    }

    /// Like [`BatchBuilder::new`], with room for about `bytes` of encoded batch before
    /// its buffer grows (a producer that knows its batches' usual size skips the
    /// reallocations, each a copy of everything pushed so far). At most the batch
    /// limit is reserved.
    pub fn with_capacity(limits: Limits, bytes: usize) -> Self {
        Self::with_buffer(limits, Vec::new(), bytes)
    }

    /// Like [`BatchBuilder::with_capacity`], in `buf`'s allocation (a finished batch's,
    /// say, once sent): its bytes are discarded, and it grows to `bytes` (at most the
    /// batch limit) only if it is smaller. A reused buffer's pages are already mapped,
    /// where a fresh one of a megabyte pays a page fault and the zeroing of every page.
    pub fn with_buffer(limits: Limits, mut buf: Vec<u8>, bytes: usize) -> Self {
        let max = usize::try_from(limits.batch_bytes_max).unwrap_or(usize::MAX);
        buf.clear();
        buf.reserve(bytes.clamp(HEADER_LEN, max.max(HEADER_LEN)));
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            limits,
            buf,
            record_count: 0,
            timestamps: None,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            control: false,
            records_crc: crc32fast::Hasher::new(),
        }
    }

    /// Marks the batch as from an idempotent producer.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn control(mut self, yes: bool) -> Self {
        self.control = yes;
        self
    }

    /// Appends a record. Fails, leaving the builder unchanged, with `TooManyRecords`,
    /// `RecordTooLarge` or `BadLength` (the batch would outgrow `batch_bytes_max`) if a
    /// limit would break, or `Malformed` if the timestamp is so far from the first record's
    /// that the delta overflows `i64`.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<(), BatchError> {
        self.push_inner(timestamp, key, value, headers.iter().copied())
    }

    pub fn push_record(&mut self, r: &Record) -> Result<(), BatchError> {
        let headers = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        self.push_inner(r.timestamp, r.key.as_deref(), r.value.as_deref(), headers)
    }

    /// `headers` is walked twice (check and size, then write), hence `Clone`.
    fn push_inner<'h, H>(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: H,
    ) -> Result<(), BatchError>
    where
        H: Iterator<Item = (&'h str, Option<&'h [u8]>)> + Clone,
    {
        let limits = &self.limits;
        let index = self.record_count;
        let count = index.saturating_add(1);
        if count > limits.records_max {
            return Err(BatchError::TooManyRecords {
                count,
                max: limits.records_max,
            });
        }
        let too_large = BatchError::RecordTooLarge { index };
        let header_count = headers.clone().count();
        if key.is_some_and(|k| over(k.len(), limits.key_bytes_max))
            || value.is_some_and(|v| over(v.len(), limits.value_bytes_max))
            || over(header_count, limits.headers_max)
        {
            return Err(too_large);
        }
        let mut headers_len = 0usize;
        for (k, v) in headers.clone() {
            if over(k.len(), limits.key_bytes_max)
                || v.is_some_and(|v| over(v.len(), limits.value_bytes_max))
            {
                return Err(too_large);
            }
            let len = varint::uvarint_len(k.len() as u64) + k.len() + nullable_len(v);
            headers_len = headers_len.saturating_add(len);
        }
        let (first, max) = self.timestamps.unwrap_or((timestamp, timestamp));
        let delta = timestamp.checked_sub(first).ok_or(malformed(
            "timestamp delta from the first record overflows i64",
        ))?;

        let body_len = 1usize // attributes
            .saturating_add(varint::zvarint_len(delta))
            .saturating_add(varint::uvarint_len(u64::from(index)))
            .saturating_add(nullable_len(key))
            .saturating_add(nullable_len(value))
            .saturating_add(varint::uvarint_len(header_count as u64))
            .saturating_add(headers_len);
        let record_len = varint::uvarint_len(body_len as u64).saturating_add(body_len);
        let new_len = self.buf.len().saturating_add(record_len);
        if over(new_len, limits.batch_bytes_max) {
            let length = u32::try_from(new_len).unwrap_or(u32::MAX);
            return Err(BatchError::BadLength { length });
        }

        // Every check has passed; from here on the builder changes.
        let start = self.buf.len();
        self.buf.reserve(record_len);
        varint::put_uvarint(&mut self.buf, body_len as u64);
        self.buf.push(0); // record attributes
        varint::put_zvarint(&mut self.buf, delta);
        varint::put_uvarint(&mut self.buf, u64::from(index));
        put_nullable(&mut self.buf, key);
        put_nullable(&mut self.buf, value);
        varint::put_uvarint(&mut self.buf, header_count as u64);
        for (k, v) in headers {
            varint::put_uvarint(&mut self.buf, k.len() as u64);
            self.buf.extend_from_slice(k.as_bytes());
            put_nullable(&mut self.buf, v);
        }
        // Pair assertion with the size model above, which the limit check relied on.
        assert_eq!(
            self.buf.len() - start,
            record_len,
            "proto: record encoding size"
        );
        self.records_crc
            .update(self.buf.get(start..).unwrap_or_default());

        self.record_count = count;
        self.timestamps = Some((first, max.max(timestamp)));
        Ok(())
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.record_count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes [`finish`](Self::finish) would produce (just the header while empty).
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Writes the header and CRC and returns the batch, with `base_offset` and
    /// `leader_term` 0 for the broker to set. `Malformed` if no record was pushed.
    pub fn finish(self) -> Result<Vec<u8>, BatchError> {
        let Some((first_timestamp, max_timestamp)) = self.timestamps else {
            return Err(malformed("batch has no records"));
        };
        let mut buf = self.buf;
        let length =
            u32::try_from(buf.len()).map_err(|_| BatchError::BadLength { length: u32::MAX })?;
        let header = BatchHeader {
            length,
            base_offset: 0,
            leader_term: 0,
            crc: 0,
            version: VERSION,
            attributes: if self.control { ATTR_CONTROL } else { 0 },
            record_count: self.record_count,
            first_timestamp,
            max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
        };
        let mut encoded = Vec::with_capacity(HEADER_LEN);
        header.write_to(&mut encoded);
        write_at(&mut buf, 0, &encoded)?;
        // The CRC covers the header from `CRC_START` on, then the records.
        let mut crc = crc32fast::Hasher::new();
        crc.update(encoded.get(CRC_START..).unwrap_or_default());
        crc.combine(&self.records_crc);
        let computed = crc.finalize();
        debug_assert_eq!(
            crc_pair(&buf).map(|(_, c)| c),
            Ok(computed),
            "proto: incremental batch CRC"
        );
        write_at(&mut buf, CRC_AT, &computed.to_le_bytes())?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests;
