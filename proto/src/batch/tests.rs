use super::*;
use proptest::collection::vec;
use proptest::prelude::*;

const LIMITS: Limits = Limits::DEFAULT;

/// Hex digits to bytes; whitespace is ignored so vectors can be laid out by field.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn records_of(view: &BatchView<'_>) -> Vec<Record> {
    view.records().map(|r| r.to_record()).collect()
}

fn headers_of<'a>(r: &RecordView<'a>) -> Vec<(&'a str, Option<&'a [u8]>)> {
    r.headers().collect()
}

/// Recomputes the CRC after a test has tampered with covered bytes, so the fault under
/// test is reached instead of `BadCrc`.
fn reseal(batch: &mut [u8]) {
    let crc = crc32fast::hash(&batch[CRC_START..]);
    batch[CRC_AT..CRC_START].copy_from_slice(&crc.to_le_bytes());
}

/// Re-encodes a parsed batch from its decoded content (and broker fields).
fn reencode(view: &BatchView<'_>) -> Vec<u8> {
    let h = view.header();
    let mut b = BatchBuilder::new(LIMITS)
        .producer(h.producer_id, h.producer_epoch, h.base_sequence)
        .control(h.is_control());
    for r in records_of(view) {
        b.push_record(&r).unwrap();
    }
    let mut bytes = b.finish().unwrap();
    set_base_offset(&mut bytes, h.base_offset).unwrap();
    set_leader_term(&mut bytes, h.leader_term).unwrap();
    bytes
}

// ---- golden vectors: these bytes are the format; changing them means a new VERSION ----

fn golden_single() -> Vec<u8> {
    hex(concat!(
        "58000000",         // length 88
        "0000000000000000", // base_offset 0
        "0000000000000000", // leader_term 0
        "da2fed01",         // crc 0x01ed2fda
        "01",               // version 1
        "00",               // attributes: no compression, not control
        "0000",             // reserved
        "01000000",         // record_count 1
        "0068e5cf8b010000", // first_timestamp 1_700_000_000_000
        "0068e5cf8b010000", // max_timestamp 1_700_000_000_000
        "ffffffffffffffff", // producer_id -1
        "ffff",             // producer_epoch -1
        "0000",             // reserved
        "ffffffff",         // base_sequence -1
        // record 0
        "17",            // body_len 23
        "00",            // attributes
        "00",            // timestamp_delta 0
        "00",            // offset_delta 0
        "04 6b31",       // key_len 2, "k1"
        "0a 68656c6c6f", // value_len 5, "hello"
        "01",            // header_count 1
        "05 7472616365", // header key_len 5, "trace"
        "06 616263",     // header value_len 3, "abc"
    ))
}

fn golden_producer() -> Vec<u8> {
    hex(concat!(
        "64000000",         // length 100
        "0000000000000000", // base_offset 0
        "0000000000000000", // leader_term 0
        "9b361c0c",         // crc 0x0c1c369b
        "01",               // version 1
        "00",               // attributes
        "0000",             // reserved
        "03000000",         // record_count 3
        "f469e5cf8b010000", // first_timestamp 1_700_000_000_500
        "f969e5cf8b010000", // max_timestamp 1_700_000_000_505
        "2a00000000000000", // producer_id 42
        "0300",             // producer_epoch 3
        "0000",             // reserved
        "64000000",         // base_sequence 100
        // record 0: null key, value "v0", no headers
        "08 00 00 00",
        "01",      // key_len -1 (null)
        "04 7630", // value_len 2, "v0"
        "00",      // header_count 0
        // record 1: timestamp_delta -10, key "k", null value, header ("h", null)
        "0a 00",
        "13", // timestamp_delta -10 (zigzag 19)
        "01", // offset_delta 1
        "02 6b",
        "01",       // value_len -1 (null)
        "01",       // header_count 1
        "01 68 01", // "h" = null
        // record 2: delta +5, empty key, value "x", headers ("a", ""), ("b", "12")
        "0f 00",
        "0a", // timestamp_delta 5 (zigzag 10)
        "02", // offset_delta 2
        "00", // key_len 0 (empty, not null)
        "02 78",
        "02",
        "01 61 00",
        "01 62 04 3132",
    ))
}

#[test]
fn golden_single_record() {
    let mut b = BatchBuilder::new(LIMITS);
    b.push(
        1_700_000_000_000,
        Some(b"k1"),
        Some(b"hello"),
        &[("trace", Some(b"abc"))],
    )
    .unwrap();
    assert_eq!(b.encoded_len(), 88);
    let bytes = b.finish().unwrap();
    assert_eq!(bytes, golden_single());

    let golden = golden_single();
    let view = BatchView::parse(&golden, &LIMITS).unwrap();
    let h = view.header();
    assert_eq!((h.length, h.crc, h.record_count), (88, 0x01ed_2fda, 1));
    assert_eq!(
        (h.producer_id, h.producer_epoch),
        (NO_PRODUCER_ID, NO_PRODUCER_EPOCH)
    );
    assert_eq!(h.base_sequence, NO_SEQUENCE);
    assert!(!h.is_control());
    let records: Vec<_> = view.records().collect();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.offset, r.timestamp), (0, 1_700_000_000_000));
    assert_eq!((r.key, r.value), (Some(&b"k1"[..]), Some(&b"hello"[..])));
    assert_eq!(headers_of(r), [("trace", Some(&b"abc"[..]))]);
    assert_eq!(view.as_bytes(), &golden[..]);
}

#[test]
fn golden_producer_batch_with_nulls_and_negative_delta() {
    let mut b = BatchBuilder::new(LIMITS).producer(42, 3, 100);
    b.push(1_700_000_000_500, None, Some(b"v0"), &[]).unwrap();
    b.push(1_700_000_000_490, Some(b"k"), None, &[("h", None)])
        .unwrap();
    b.push(
        1_700_000_000_505,
        Some(b""),
        Some(b"x"),
        &[("a", Some(b"")), ("b", Some(b"12"))],
    )
    .unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(b.finish().unwrap(), golden_producer());

    // The broker assigns offset and term in place; the CRC does not change.
    let mut golden = golden_producer();
    set_base_offset(&mut golden, 500).unwrap();
    set_leader_term(&mut golden, 7).unwrap();
    verify_crc(&golden).unwrap();
    let view = BatchView::parse(&golden, &LIMITS).unwrap();
    let h = *view.header();
    assert_eq!((h.base_offset, h.leader_term, h.crc), (500, 7, 0x0c1c_369b));
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (42, 3, 100)
    );
    assert_eq!(
        (h.first_timestamp, h.max_timestamp),
        (1_700_000_000_500, 1_700_000_000_505)
    );
    assert_eq!(h.last_offset(), 502);

    let r: Vec<_> = view.records().collect();
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].offset, r[0].timestamp), (500, 1_700_000_000_500));
    assert_eq!((r[0].key, r[0].value), (None, Some(&b"v0"[..])));
    assert_eq!(headers_of(&r[0]), []);
    assert_eq!((r[1].offset, r[1].timestamp), (501, 1_700_000_000_490));
    assert_eq!((r[1].key, r[1].value), (Some(&b"k"[..]), None));
    assert_eq!(headers_of(&r[1]), [("h", None)]);
    assert_eq!((r[2].offset, r[2].timestamp), (502, 1_700_000_000_505));
    assert_eq!((r[2].key, r[2].value), (Some(&b""[..]), Some(&b"x"[..])));
    assert_eq!(
        headers_of(&r[2]),
        [("a", Some(&b""[..])), ("b", Some(&b"12"[..]))]
    );
}

// ---- corruption ----

/// Every single-byte corruption of a batch is either caught or confined to the two
/// broker-owned fields the CRC leaves out by design.
#[test]
fn every_single_byte_flip_is_detected_or_confined_to_broker_fields() {
    let mut original = golden_producer();
    set_base_offset(&mut original, 1000).unwrap();
    set_leader_term(&mut original, 7).unwrap();
    let view = BatchView::parse(&original, &LIMITS).unwrap();
    let (header, records) = (*view.header(), records_of(&view));

    for at in 0..original.len() {
        for mask in [0xff, 0x01] {
            let mut flipped = original.clone();
            flipped[at] ^= mask;
            let parsed = BatchView::parse(&flipped, &LIMITS);
            // batches() must agree with parsing the lone batch directly.
            let mut it = batches(&flipped, &LIMITS);
            // (The error may differ: a length past the buffer is Truncated there.)
            let via_iter = it.next().unwrap().map(|v| *v.header()).ok();
            assert_eq!(
                via_iter,
                parsed.as_ref().ok().map(|v| *v.header()),
                "byte {at}"
            );
            assert!(it.next().is_none());

            if !(BASE_OFFSET_AT..CRC_AT).contains(&at) {
                assert!(parsed.is_err(), "byte {at} ^ {mask:#04x} went undetected");
                continue;
            }
            let v = parsed.unwrap_or_else(|e| panic!("byte {at} ^ {mask:#04x}: {e}"));
            let base_offset = u64::from_le_bytes(flipped[4..12].try_into().unwrap());
            let leader_term = u64::from_le_bytes(flipped[12..20].try_into().unwrap());
            assert_ne!(
                (base_offset, leader_term),
                (header.base_offset, header.leader_term)
            );
            assert_eq!(
                *v.header(),
                BatchHeader {
                    base_offset,
                    leader_term,
                    ..header
                }
            );
            assert_eq!(records_of(&v), records, "byte {at}: record content changed");
            let offsets: Vec<u64> = v.records().map(|r| r.offset).collect();
            assert_eq!(offsets, [base_offset, base_offset + 1, base_offset + 2]);
        }
    }
}

/// Applies `tamper` to a copy of the producer golden batch, reseals it and parses it.
fn tampered(tamper: impl FnOnce(&mut Vec<u8>)) -> Result<(), BatchError> {
    let mut bytes = golden_producer();
    tamper(&mut bytes);
    if bytes.len() >= HEADER_LEN {
        let length = bytes.len() as u32;
        bytes[0..4].copy_from_slice(&length.to_le_bytes());
        reseal(&mut bytes);
    }
    BatchView::parse(&bytes, &LIMITS).map(|_| ())
}

fn is_malformed(r: Result<(), BatchError>) -> bool {
    matches!(r, Err(BatchError::Malformed { .. }))
}

#[test]
fn header_faults_are_typed() {
    assert_eq!(tampered(|_| {}), Ok(()));
    assert_eq!(
        tampered(|b| b[24] = 2),
        Err(BatchError::UnsupportedVersion { version: 2 })
    );
    assert_eq!(
        tampered(|b| b[24] = 0),
        Err(BatchError::UnsupportedVersion { version: 0 })
    );
    assert_eq!(
        tampered(|b| b[25] = 0x01),
        Err(BatchError::UnsupportedCompression { codec: 1 })
    );
    assert_eq!(
        tampered(|b| b[25] = 0x17),
        Err(BatchError::UnsupportedCompression { codec: 7 })
    );
    for bit in [3, 5, 6, 7] {
        assert!(
            is_malformed(tampered(|b| b[25] = 1 << bit)),
            "attribute bit {bit}"
        );
    }
    assert!(is_malformed(tampered(|b| b[26] = 1)), "reserved u16 at 26");
    assert!(
        is_malformed(tampered(|b| b[59] = 0x80)),
        "reserved u16 at 58"
    );
    assert!(
        is_malformed(tampered(|b| b[28..32].copy_from_slice(&[0; 4]))),
        "0 records"
    );
    assert_eq!(
        tampered(|b| b[28..32].copy_from_slice(&u32::MAX.to_le_bytes())),
        Err(BatchError::TooManyRecords {
            count: u32::MAX,
            max: LIMITS.records_max
        })
    );
    // A count the bytes cannot hold runs out of records.
    assert!(is_malformed(tampered(|b| b[28] = 4)));
    assert!(is_malformed(tampered(|b| b[28] = 2)), "a record left over");
    // max_timestamp below first, and above the true max.
    assert!(is_malformed(tampered(|b| b[40] = 0)));
    assert!(is_malformed(tampered(|b| b[40] = 0xfa)));
    // An offset range that does not fit in u64 (base_offset is not checksummed).
    let mut bytes = golden_producer();
    set_base_offset(&mut bytes, u64::MAX - 1).unwrap();
    assert!(is_malformed(BatchView::parse(&bytes, &LIMITS).map(|_| ())));
    set_base_offset(&mut bytes, u64::MAX - 2).unwrap();
    assert_eq!(
        BatchView::parse(&bytes, &LIMITS)
            .unwrap()
            .header()
            .last_offset(),
        u64::MAX
    );
}

#[test]
fn length_faults_are_typed() {
    let golden = golden_producer();
    let mut bytes = golden.clone();
    bytes[0] = 63; // shorter than a header
    assert_eq!(
        BatchHeader::parse(&bytes, &LIMITS),
        Err(BatchError::BadLength { length: 63 })
    );
    bytes[0] = 101; // longer than the slice
    assert_eq!(
        BatchView::parse(&bytes, &LIMITS).map(|_| ()),
        Err(BatchError::BadLength { length: 101 })
    );
    assert_eq!(
        verify_crc(&bytes),
        Err(BatchError::BadLength { length: 101 })
    );
    let mut longer = golden.clone();
    longer.push(0); // slice longer than the length field
    assert_eq!(
        BatchView::parse(&longer, &LIMITS).map(|_| ()),
        Err(BatchError::BadLength { length: 100 })
    );
    let tight = Limits {
        batch_bytes_max: 99,
        ..LIMITS
    };
    assert_eq!(
        BatchHeader::parse(&golden, &tight),
        Err(BatchError::BadLength { length: 100 })
    );
    assert_eq!(
        BatchHeader::parse(&golden[..63], &LIMITS),
        Err(BatchError::Truncated {
            needed: 64,
            have: 63
        })
    );
    // The header alone is enough for BatchHeader::parse, not for the others.
    assert_eq!(
        BatchHeader::parse(&golden[..64], &LIMITS).unwrap().length,
        100
    );
    assert_eq!(
        BatchView::parse(&golden[..64], &LIMITS).map(|_| ()),
        Err(BatchError::BadLength { length: 100 })
    );
}

#[test]
fn record_faults_are_malformed() {
    // Offsets into golden_producer's record area (record 0 starts at 64).
    let r1 = 64 + 9;
    let r2 = r1 + 11;
    type Tamper = Box<dyn FnOnce(&mut Vec<u8>)>;
    fn case(name: &str, f: impl FnOnce(&mut Vec<u8>) + 'static) -> (&str, Tamper) {
        (name, Box::new(f))
    }
    let cases = [
        case("record attributes", |b| b[65] = 1),
        case("first delta not 0", |b| b[66] = 2),
        case("offset delta", move |b| b[r1 + 3] = 2),
        case("negative length", |b| b[68] = 3), // key_len -2
        case("key overruns", |b| b[68] = 0x7e),
        case("body_len too short", |b| b[64] = 7),
        case("body_len too long", |b| b[64] = 9),
        case("body_len overruns batch", |b| b[64] = 0x70),
        case("overlong varint", move |b| {
            drop(b.splice(r2 + 2..r2 + 3, [0x85, 0x00]))
        }),
        case("non-UTF-8 header key", move |b| b[r2 + 9] = 0xff),
        case("header count too high", move |b| b[r2 + 7] = 3),
        case("trailing byte", |b| b.push(0)),
        case("missing byte", |b| {
            b.pop();
        }),
    ];
    for (name, tamper) in cases {
        let result = tampered(tamper);
        assert!(is_malformed(result.clone()), "{name}: {result:?}");
    }
}

#[test]
fn decoder_enforces_limits() {
    let golden = golden_producer();
    let parse = |limits: Limits| BatchView::parse(&golden, &limits).map(|_| ());
    assert_eq!(
        parse(Limits {
            records_max: 2,
            ..LIMITS
        }),
        Err(BatchError::TooManyRecords { count: 3, max: 2 })
    );
    assert_eq!(
        parse(Limits {
            value_bytes_max: 1,
            ..LIMITS
        }),
        Err(BatchError::RecordTooLarge { index: 0 })
    );
    assert_eq!(
        parse(Limits {
            key_bytes_max: 0,
            ..LIMITS
        }),
        Err(BatchError::RecordTooLarge { index: 1 })
    );
    assert_eq!(
        parse(Limits {
            headers_max: 1,
            ..LIMITS
        }),
        Err(BatchError::RecordTooLarge { index: 2 })
    );
    // Header keys and values count against the key and value limits too.
    let mut b = BatchBuilder::new(LIMITS);
    b.push(0, Some(b"k"), Some(b"v"), &[("long", Some(b"long"))])
        .unwrap();
    let bytes = b.finish().unwrap();
    for tight in [
        Limits {
            value_bytes_max: 3,
            ..LIMITS
        },
        Limits {
            key_bytes_max: 3,
            ..LIMITS
        },
    ] {
        let result = BatchView::parse(&bytes, &tight).map(|_| ());
        assert_eq!(
            result,
            Err(BatchError::RecordTooLarge { index: 0 }),
            "{tight:?}"
        );
    }
    assert_eq!(
        parse(Limits {
            batch_bytes_max: 100,
            ..LIMITS
        }),
        Ok(())
    );
}

#[test]
fn builder_limits_leave_builder_unchanged() {
    let limits = Limits {
        batch_bytes_max: 128,
        records_max: 3,
        key_bytes_max: 4,
        value_bytes_max: 8,
        headers_max: 1,
    };
    let mut b = BatchBuilder::new(limits);
    b.push(10, Some(b"key"), Some(b"value"), &[]).unwrap();
    let before = (b.len(), b.encoded_len());
    let too_large = Err(BatchError::RecordTooLarge { index: 1 });
    assert_eq!(b.push(10, Some(b"12345"), None, &[]), too_large);
    assert_eq!(b.push(10, None, Some(b"123456789"), &[]), too_large);
    assert_eq!(
        b.push(10, None, None, &[("a", None), ("b", None)]),
        too_large
    );
    assert_eq!(b.push(10, None, None, &[("12345", None)]), too_large);
    assert_eq!(
        b.push(10, None, None, &[("k", Some(b"123456789"))]),
        too_large
    );
    assert!(
        is_malformed(b.push(i64::MIN, None, None, &[])),
        "delta overflows"
    );
    assert_eq!(
        b.push(10, None, Some(&[0; 8]), &[("k", Some(&[0; 8]))]),
        Ok(())
    );
    let len = b.encoded_len() as u32;
    assert_eq!(len, 105);
    // A 30-byte record would take the batch past 128.
    assert_eq!(
        b.push(10, Some(b"1234"), Some(&[0; 8]), &[("k", Some(&[0; 8]))]),
        Err(BatchError::BadLength { length: len + 30 })
    );
    b.push(11, None, None, &[]).unwrap();
    assert_eq!(
        b.push(12, None, None, &[]),
        Err(BatchError::TooManyRecords { count: 4, max: 3 })
    );
    assert_ne!(before, (b.len(), b.encoded_len()));
    let (count, encoded_len) = (b.len(), b.encoded_len());
    let bytes = b.finish().unwrap();
    assert_eq!((count, encoded_len), (3, bytes.len()));
    let view = BatchView::parse(&bytes, &limits).unwrap();
    let timestamps: Vec<i64> = view.records().map(|r| r.timestamp).collect();
    assert_eq!(timestamps, [10, 10, 11]);
}

#[test]
fn builder_edge_cases() {
    assert!(is_malformed(BatchBuilder::new(LIMITS).finish().map(|_| ())));
    assert_eq!(BatchBuilder::new(LIMITS).encoded_len(), HEADER_LEN);
    assert!(BatchBuilder::new(LIMITS).is_empty());
    // Extreme timestamps work as long as deltas fit.
    let mut b = BatchBuilder::new(LIMITS).control(true);
    b.push(i64::MAX, None, None, &[]).unwrap();
    b.push(-1, None, None, &[]).unwrap();
    assert!(is_malformed(b.push(-2, None, None, &[])));
    let bytes = b.finish().unwrap();
    let view = BatchView::parse(&bytes, &LIMITS).unwrap();
    assert!(view.header().is_control());
    assert_eq!(view.header().max_timestamp, i64::MAX);
    let timestamps: Vec<i64> = view.records().map(|r| r.timestamp).collect();
    assert_eq!(timestamps, [i64::MAX, -1]);
}

#[test]
fn batches_stops_after_first_error() {
    let mut buf = golden_single();
    buf.extend(golden_producer());
    let good_len = buf.len();
    buf.extend(golden_single());
    buf[good_len + 70] ^= 1; // corrupt the third batch
    buf.extend(golden_single()); // never reached
    let items: Vec<_> = batches(&buf, &LIMITS)
        .map(|r| r.map(|v| v.header().record_count))
        .collect();
    assert_eq!(items.len(), 3);
    assert_eq!(items[..2], [Ok(1), Ok(3)]);
    assert!(matches!(items[2], Err(BatchError::BadCrc { .. })));

    // A cut tail is reported as truncation, with what the batch needs.
    let cut = &buf[..good_len + 70];
    let last = batches(cut, &LIMITS).last().unwrap();
    assert_eq!(
        last.map(|_| ()),
        Err(BatchError::Truncated {
            needed: 88,
            have: 70
        })
    );
    let cut = &buf[..good_len + 10];
    let last = batches(cut, &LIMITS).last().unwrap();
    assert_eq!(
        last.map(|_| ()),
        Err(BatchError::Truncated {
            needed: 64,
            have: 10
        })
    );
    assert!(batches(&[], &LIMITS).next().is_none());
}

#[test]
fn short_buffers_are_truncated_not_panics() {
    for len in 0..HEADER_LEN {
        let mut buf = vec![0u8; len];
        let truncated = Err(BatchError::Truncated {
            needed: HEADER_LEN,
            have: len,
        });
        assert_eq!(verify_crc(&buf), truncated);
        assert_eq!(set_base_offset(&mut buf, 1), truncated);
        assert_eq!(set_leader_term(&mut buf, 1), truncated);
        assert_eq!(BatchHeader::parse(&buf, &LIMITS).map(|_| ()), truncated);
    }
}

#[test]
fn error_codes_are_stable() {
    let all = [
        (BatchError::Truncated { needed: 0, have: 0 }, 101),
        (BatchError::BadLength { length: 0 }, 102),
        (
            BatchError::BadCrc {
                stored: 0,
                computed: 0,
            },
            103,
        ),
        (BatchError::UnsupportedVersion { version: 0 }, 104),
        (BatchError::UnsupportedCompression { codec: 0 }, 105),
        (BatchError::TooManyRecords { count: 0, max: 0 }, 106),
        (BatchError::RecordTooLarge { index: 0 }, 107),
        (BatchError::Malformed { reason: "" }, 108),
    ];
    for (error, code) in all {
        assert_eq!(error.code(), code, "{error}");
    }
}

// ---- properties ----

fn record() -> impl Strategy<Value = Record> {
    let timestamp = prop_oneof![4 => -(1i64 << 50)..(1i64 << 50), 1 => any::<i64>()];
    let bytes = |max| proptest::option::of(vec(any::<u8>(), 0..max));
    (
        timestamp,
        bytes(24),
        bytes(48),
        vec((".{0,6}", bytes(8)), 0..4),
    )
        .prop_map(|(timestamp, key, value, headers)| Record {
            timestamp,
            key,
            value,
            headers,
        })
}

#[derive(Debug, Clone)]
struct BatchSpec {
    records: Vec<Record>,
    producer: Option<(i64, i16, i32)>,
    control: bool,
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    (
        vec(record(), 1..12),
        proptest::option::of(any::<(i64, i16, i32)>()),
        any::<bool>(),
    )
        .prop_map(|(records, producer, control)| BatchSpec {
            records,
            producer,
            control,
        })
}

/// Builds the batch, skipping records whose timestamp delta overflows (and checking that
/// is the only reason a push fails). Returns the bytes and the records that went in.
fn build(spec: &BatchSpec) -> (Vec<u8>, Vec<Record>) {
    let mut b = BatchBuilder::new(LIMITS).control(spec.control);
    if let Some((id, epoch, seq)) = spec.producer {
        b = b.producer(id, epoch, seq);
    }
    let mut accepted: Vec<Record> = Vec::new();
    for r in &spec.records {
        let before = b.encoded_len();
        match b.push_record(r) {
            Ok(()) => accepted.push(r.clone()),
            Err(e) => {
                let first = accepted[0].timestamp;
                assert!(r.timestamp.checked_sub(first).is_none(), "{e}");
                assert!(matches!(e, BatchError::Malformed { .. }));
                assert_eq!(b.encoded_len(), before);
            }
        }
    }
    assert_eq!(b.len(), accepted.len());
    let encoded_len = b.encoded_len();
    let bytes = b.finish().unwrap();
    assert_eq!(bytes.len(), encoded_len);
    (bytes, accepted)
}

/// A valid batch with some broker fields set, for mutation-based properties.
fn valid_batch() -> impl Strategy<Value = Vec<u8>> {
    (batch_spec(), any::<u32>(), any::<u64>()).prop_map(|(spec, base, term)| {
        let (mut bytes, _) = build(&spec);
        set_base_offset(&mut bytes, u64::from(base)).unwrap();
        set_leader_term(&mut bytes, term).unwrap();
        bytes
    })
}

/// Feeds `bytes` to every decoder entry point; none may panic, and what they accept must
/// be consistent with itself.
fn exercise(bytes: &[u8]) -> Result<(), TestCaseError> {
    let header = BatchHeader::parse(bytes, &LIMITS);
    let _ = verify_crc(bytes);
    let view = BatchView::parse(bytes, &LIMITS);
    if let Ok(v) = &view {
        prop_assert_eq!(Ok(*v.header()), header);
        prop_assert_eq!(verify_crc(bytes), Ok(()));
        let records: Vec<_> = v.records().collect();
        prop_assert_eq!(records.len(), v.header().record_count as usize);
        for r in &records {
            prop_assert_eq!(r.headers().len(), r.headers().count());
        }
        // Canonical encoding: whatever parses re-encodes to exactly the same bytes.
        prop_assert_eq!(reencode(v), bytes);
    }
    let items: Vec<_> = batches(bytes, &LIMITS).collect();
    prop_assert!(items.iter().filter(|i| i.is_err()).count() <= 1);
    prop_assert!(items
        .iter()
        .take(items.len().saturating_sub(1))
        .all(|i| i.is_ok()));
    Ok(())
}

proptest! {
    #[test]
    fn round_trip_records(spec in batch_spec()) {
        let (bytes, records) = build(&spec);
        let view = BatchView::parse(&bytes, &LIMITS).unwrap();
        prop_assert_eq!(records_of(&view), records.clone());
        let h = view.header();
        prop_assert_eq!(h.record_count as usize, records.len());
        prop_assert_eq!((h.base_offset, h.leader_term), (0, 0));
        prop_assert_eq!(h.first_timestamp, records[0].timestamp);
        prop_assert_eq!(h.max_timestamp, records.iter().map(|r| r.timestamp).max().unwrap());
        let producer = spec.producer.unwrap_or((NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE));
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), producer);
        prop_assert_eq!(h.is_control(), spec.control);
        prop_assert_eq!(verify_crc(&bytes), Ok(()));
        let offsets: Vec<u64> = view.records().map(|r| r.offset).collect();
        prop_assert_eq!(offsets, (0..records.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn round_trip_concatenated_batches(specs in vec(batch_spec(), 1..5)) {
        let mut buf = Vec::new();
        let mut expected = Vec::new();
        for spec in &specs {
            let (bytes, records) = build(spec);
            buf.extend_from_slice(&bytes);
            expected.push((bytes, records));
        }
        let views: Vec<_> = batches(&buf, &LIMITS).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(views.len(), expected.len());
        for (view, (bytes, records)) in views.iter().zip(&expected) {
            prop_assert_eq!(view.as_bytes(), &bytes[..]);
            prop_assert_eq!(&records_of(view), records);
        }
    }

    #[test]
    fn set_base_offset_keeps_crc_and_shifts_offsets(
        spec in batch_spec(),
        base in 0..u64::MAX - u64::from(LIMITS.records_max),
        term in any::<u64>(),
    ) {
        let (mut bytes, records) = build(&spec);
        let crc_before = BatchHeader::parse(&bytes, &LIMITS).unwrap().crc;
        set_base_offset(&mut bytes, base).unwrap();
        set_leader_term(&mut bytes, term).unwrap();
        prop_assert_eq!(verify_crc(&bytes), Ok(()));
        let view = BatchView::parse(&bytes, &LIMITS).unwrap();
        let h = view.header();
        prop_assert_eq!((h.base_offset, h.leader_term, h.crc), (base, term, crc_before));
        prop_assert_eq!(h.last_offset(), base + records.len() as u64 - 1);
        let offsets: Vec<u64> = view.records().map(|r| r.offset).collect();
        prop_assert_eq!(offsets, (0..records.len() as u64).map(|i| base + i).collect::<Vec<_>>());
        prop_assert_eq!(records_of(&view), records);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        exercise(&bytes)?;
    }

    /// Arbitrary record bytes behind a header that passes its own checks and the CRC, so
    /// the record walk itself meets garbage.
    #[test]
    fn garbage_records_behind_a_valid_header_never_panic(
        record_count in 1u32..8,
        max_delta in 0i64..4,
        records in vec(any::<u8>(), 0..96),
    ) {
        let header = BatchHeader {
            length: (HEADER_LEN + records.len()) as u32,
            base_offset: 0,
            leader_term: 0,
            crc: 0,
            version: VERSION,
            attributes: 0,
            record_count,
            first_timestamp: 0,
            max_timestamp: max_delta,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
        };
        let mut bytes = Vec::new();
        header.write_to(&mut bytes);
        bytes.extend_from_slice(&records);
        reseal(&mut bytes);
        exercise(&bytes)?;
    }

    #[test]
    fn resealed_mutations_of_a_valid_batch_never_panic(
        mut bytes in valid_batch(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        for (at, value) in edits {
            let at = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
            bytes[at] = value;
        }
        reseal(&mut bytes);
        exercise(&bytes)?;
    }

    #[test]
    fn truncations_of_a_valid_batch_are_rejected(bytes in valid_batch()) {
        exercise(&bytes)?;
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            exercise(prefix)?;
            prop_assert!(BatchView::parse(prefix, &LIMITS).is_err());
            let items: Vec<_> = batches(prefix, &LIMITS).collect();
            prop_assert_eq!(items.len(), usize::from(len > 0));
            if let Some(item) = items.first() {
                prop_assert!(item.is_err());
            }
        }
    }
}

#[test]
fn a_builder_with_capacity_encodes_what_a_plain_one_does() {
    let value = vec![7u8; 300];
    for capacity in [0, 1, HEADER_LEN, 500, 4096, usize::MAX] {
        let mut plain = BatchBuilder::new(LIMITS);
        let mut reserved = BatchBuilder::with_capacity(LIMITS, capacity);
        assert_eq!(reserved.encoded_len(), HEADER_LEN, "capacity {capacity}");
        for i in 0..10 {
            plain.push(1000 + i, Some(b"k"), Some(&value), &[]).unwrap();
            reserved
                .push(1000 + i, Some(b"k"), Some(&value), &[])
                .unwrap();
        }
        assert_eq!(plain.finish().unwrap(), reserved.finish().unwrap());
    }
}

#[test]
fn a_builder_in_a_used_buffer_encodes_what_a_fresh_one_does_in_the_same_allocation() {
    let value = vec![9u8; 300];
    let mut first = BatchBuilder::new(LIMITS);
    for i in 0..20 {
        first.push(i, None, Some(&value), &[]).unwrap();
    }
    let used = first.finish().unwrap();
    let (ptr, cap) = (used.as_ptr(), used.capacity());
    let build = |b: BatchBuilder| {
        let mut b = b;
        b.push(5, Some(b"k"), Some(b"v"), &[("h", None)]).unwrap();
        b.finish().unwrap()
    };
    // Room enough: the old allocation, none of the old bytes.
    let reused = build(BatchBuilder::with_buffer(LIMITS, used, 1000));
    assert_eq!(reused, build(BatchBuilder::new(LIMITS)));
    assert_eq!((reused.as_ptr(), reused.capacity()), (ptr, cap));
    // Asked for more than it holds: it grows to that.
    let grown = BatchBuilder::with_buffer(LIMITS, reused, cap + 4096);
    assert!(grown.buf.capacity() >= cap + 4096);
    assert_eq!(build(grown), build(BatchBuilder::new(LIMITS)));
}
