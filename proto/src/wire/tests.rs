use super::*;
use crate::batch::{self, BatchBuilder, BatchError, BatchView};
use crate::codec;
use proptest::collection::vec;
use proptest::prelude::*;

const LIMITS: FrameLimits = FrameLimits::DEFAULT;

/// Hex digits to bytes; whitespace is ignored so vectors can be laid out by field.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The frame after its length prefix, checking the prefix on the way.
fn body(frame: &[u8]) -> &[u8] {
    split_frame(frame, &LIMITS).unwrap()
}

/// The batch of the record-batch golden vector `golden_single` (pinned in `batch/tests.rs`):
/// one record, key "k1", value "hello", header trace=abc, 88 bytes.
fn one_batch(base_offset: u64) -> Vec<u8> {
    let mut b = BatchBuilder::new(batch::Limits::DEFAULT);
    b.push(
        1_700_000_000_000,
        Some(b"k1"),
        Some(b"hello"),
        &[("trace", Some(b"abc"))],
    )
    .unwrap();
    let mut bytes = b.finish().unwrap();
    batch::set_base_offset(&mut bytes, base_offset).unwrap();
    assert_eq!(bytes.len(), 88);
    bytes
}

fn produce_request() -> (RequestHeader, Request) {
    (
        RequestHeader::new(42, "cli"),
        Request::Produce {
            topic: "t".to_owned(),
            partition: 3,
            acks: Acks::All,
            timeout_ms: 30_000,
        },
    )
}

// ---- golden vectors: these bytes are the protocol; changing them means a new API_VERSION ----

#[test]
fn golden_produce_request_frame() {
    let (header, request) = produce_request();
    let batch = one_batch(0);
    let mut golden = hex(concat!(
        "8a000000",         // frame length 138 = 4 + 46 + 88
        "2e000000",         // header length 46
        "0100",             // api_version 1
        "2a00000000000000", // request_id 42
        "0300000000000000", // client_id: 3 bytes
        "636c69",           // "cli"
        "05000000",         // Request variant 5: Produce
        "0100000000000000", // topic: 1 byte
        "74",               // "t"
        "03000000",         // partition 3
        "02000000",         // acks: variant 2, All
        "30750000",         // timeout_ms 30000
    ));
    golden.extend_from_slice(&batch); // payload: the batch as built, not re-encoded

    let frame = encode_request(&header, &request, &batch, &LIMITS).unwrap();
    assert_eq!(to_hex(&frame), to_hex(&golden));
    let (h, r, payload) = decode_request(body(&golden), &LIMITS).unwrap();
    assert_eq!((h, r), (header, request));
    assert_eq!(payload, &batch[..]);
    BatchView::parse(payload, &batch::Limits::DEFAULT).unwrap();
}

#[test]
fn golden_fetch_response_frame() {
    let header = ResponseHeader { request_id: 42 };
    let response = Response::Fetch(Ok(FetchOk {
        high_watermark: 10,
        log_start: 0,
        next_offset: 10,
        batches: 1,
    }));
    let batch = one_batch(9);
    let mut golden = hex(concat!(
        "88000000",         // frame length 136 = 4 + 44 + 88
        "2c000000",         // header length 44
        "2a00000000000000", // request_id 42
        "07000000",         // Response variant 7: Fetch
        "00000000",         // Result variant 0: Ok
        "0a00000000000000", // high_watermark 10
        "0000000000000000", // log_start 0
        "0a00000000000000", // next_offset 10
        "01000000",         // batches 1
    ));
    golden.extend_from_slice(&batch);

    let frame = encode_response(&header, &response, &batch, &LIMITS).unwrap();
    assert_eq!(to_hex(&frame), to_hex(&golden));
    let (h, r, payload) = decode_response(body(&golden), &LIMITS).unwrap();
    assert_eq!((h, r), (header, response));
    let views: Vec<_> = batch::batches(payload, &batch::Limits::DEFAULT)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].header().base_offset, 9);
}

#[test]
fn golden_error_response_frame() {
    let header = ResponseHeader { request_id: 0 };
    let response = Response::Error(ErrorBody::new(ErrorCode::InvalidRequest, "bad"));
    let golden = hex(concat!(
        "21000000",         // frame length 33
        "1d000000",         // header length 29
        "0000000000000000", // request_id 0
        "00000000",         // Response variant 0: Error
        "0200",             // code 2: InvalidRequest (a u16 number, not a variant)
        "0300000000000000", // message: 3 bytes
        "626164",           // "bad"
        "00000000",         // detail variant 0: None
    ));
    let frame = encode_response(&header, &response, &[], &LIMITS).unwrap();
    assert_eq!(to_hex(&frame), to_hex(&golden));
    let (h, r, payload) = decode_response(body(&golden), &LIMITS).unwrap();
    assert_eq!((h, r, payload), (header, response, &[][..]));
}

#[test]
fn golden_not_leader_produce_response_frame() {
    let header = ResponseHeader { request_id: 7 };
    let response = Response::Produce(Err(ErrorBody {
        code: ErrorCode::NotLeader,
        message: String::new(),
        detail: ErrorDetail::NotLeader {
            leader: Some(2),
            addr: Some("h:1".to_owned()),
        },
    }));
    let golden = hex(concat!(
        "33000000",                   // frame length 51
        "2f000000",                   // header length 47
        "0700000000000000",           // request_id 7
        "06000000",                   // Response variant 6: Produce
        "01000000",                   // Result variant 1: Err
        "0900",                       // code 9: NotLeader
        "0000000000000000",           // message: empty
        "01000000",                   // detail variant 1: NotLeader
        "01 02000000",                // leader: Some(2)
        "01 0300000000000000 683a31", // addr: Some("h:1")
    ));
    let frame = encode_response(&header, &response, &[], &LIMITS).unwrap();
    assert_eq!(to_hex(&frame), to_hex(&golden));
    let (h, r, _) = decode_response(body(&golden), &LIMITS).unwrap();
    assert_eq!((h, r), (header, response));
}

/// Every variant position of every wire enum, pinned by its full encoding. Adding a variant
/// adds a line here; no existing line may ever change.
#[test]
fn variant_positions_are_pinned() {
    let t = || "t".to_owned();
    let name = "0100000000000000 74"; // "t"
    let requests: Vec<(Request, String)> = vec![
        (Request::Metadata { topics: None }, "00000000 00".to_owned()),
        (
            Request::Metadata {
                topics: Some(vec![t()]),
            },
            format!("00000000 01 0100000000000000 {name}"),
        ),
        (
            Request::CreateTopic {
                name: t(),
                partitions: 2,
                config: TopicConfig {
                    retention_bytes: Some(1),
                    retention_ms: None,
                    segment_bytes: Some(u64::MAX),
                },
            },
            format!("01000000 {name} 02000000 01 0100000000000000 00 01 ffffffffffffffff"),
        ),
        (
            Request::DeleteTopic { name: t() },
            format!("02000000 {name}"),
        ),
        (Request::ListTopics, "03000000".to_owned()),
        (
            Request::DescribeTopic { name: t() },
            format!("04000000 {name}"),
        ),
        (
            Request::Produce {
                topic: t(),
                partition: 1,
                acks: Acks::None,
                timeout_ms: 1,
            },
            format!("05000000 {name} 01000000 00000000 01000000"),
        ),
        (
            Request::Produce {
                topic: t(),
                partition: 1,
                acks: Acks::Leader,
                timeout_ms: 1,
            },
            format!("05000000 {name} 01000000 01000000 01000000"),
        ),
        (
            Request::Fetch {
                topic: t(),
                partition: 1,
                offset: 5,
                max_bytes: 6,
                max_wait_ms: 7,
            },
            format!("06000000 {name} 01000000 0500000000000000 06000000 07000000"),
        ),
        (
            Request::ListOffsets {
                topic: t(),
                partition: 0,
                spec: OffsetSpec::Earliest,
            },
            format!("07000000 {name} 00000000 00000000"),
        ),
        (
            Request::ListOffsets {
                topic: t(),
                partition: 0,
                spec: OffsetSpec::Latest,
            },
            format!("07000000 {name} 00000000 01000000"),
        ),
        (
            Request::ListOffsets {
                topic: t(),
                partition: 0,
                spec: OffsetSpec::Timestamp(-2),
            },
            format!("07000000 {name} 00000000 02000000 feffffffffffffff"),
        ),
        (Request::DescribeCluster, "08000000".to_owned()),
        (Request::InitProducer, "09000000".to_owned()),
        (
            Request::CreateTopicReplicated {
                name: t(),
                partitions: 2,
                replication_factor: Some(3),
                config: TopicConfig::default(),
            },
            format!("0a000000 {name} 02000000 01 03000000 00 00 00"),
        ),
        (Request::ClusterStatus, "0b000000".to_owned()),
    ];
    for (request, want) in &requests {
        assert_eq!(
            to_hex(&codec::encode(request).unwrap()),
            to_hex(&hex(want)),
            "{request:?}"
        );
        assert_eq!(
            &codec::decode::<Request>(&hex(want), 1024).unwrap(),
            request
        );
    }
    // Every request kind appears above.
    for kind in RequestKind::ALL {
        assert!(requests.iter().any(|(r, _)| r.kind() == kind), "{kind:?}");
    }

    let e = |detail| ErrorBody {
        code: ErrorCode::Unknown,
        message: String::new(),
        detail,
    };
    // An ErrorBody with code 1, empty message: then the detail.
    let eb = "0100 0000000000000000";
    let details = [
        (ErrorDetail::None, "00000000"),
        (
            ErrorDetail::NotLeader {
                leader: None,
                addr: None,
            },
            "01000000 00 00",
        ),
        (
            ErrorDetail::Throttled {
                retry_after_ms: 100,
            },
            "02000000 64000000",
        ),
        (
            ErrorDetail::OffsetOutOfRange {
                log_start: 1,
                log_end: 2,
            },
            "03000000 0100000000000000 0200000000000000",
        ),
        (ErrorDetail::Batch { code: 103 }, "04000000 6700"),
        (
            ErrorDetail::Duplicate {
                base_offset: 1,
                last_offset: 2,
            },
            "05000000 0100000000000000 0200000000000000",
        ),
    ];
    for (detail, want) in details {
        let body = e(detail);
        let want = hex(&format!("{eb} {want}"));
        assert_eq!(to_hex(&codec::encode(&body).unwrap()), to_hex(&want));
        assert_eq!(codec::decode::<ErrorBody>(&want, 1024).unwrap(), body);
    }

    fn err<T>() -> Result<T, ErrorBody> {
        Err(ErrorBody {
            code: ErrorCode::Unknown,
            message: String::new(),
            detail: ErrorDetail::None,
        })
    }
    let err_hex = format!("01000000 {eb} 00000000");
    let responses: Vec<(Response, String)> = vec![
        (
            Response::Error(e(ErrorDetail::None)),
            format!("00000000 {eb} 00000000"),
        ),
        (Response::Metadata(err()), format!("01000000 {err_hex}")),
        (
            Response::Metadata(Ok(MetadataOk {
                brokers: vec![BrokerInfo {
                    node_id: 1,
                    addr: "a".to_owned(),
                }],
                topics: vec![TopicMetadata {
                    name: t(),
                    partitions: vec![PartitionMetadata {
                        partition: 0,
                        leader: Some(1),
                        replicas: vec![1],
                    }],
                    error: None,
                }],
            })),
            format!(
                "01000000 00000000 0100000000000000 01000000 0100000000000000 61 \
                 0100000000000000 {name} 0100000000000000 00000000 01 01000000 \
                 0100000000000000 01000000 00"
            ),
        ),
        (Response::CreateTopic(err()), format!("02000000 {err_hex}")),
        (
            Response::CreateTopic(Ok(TopicSummary {
                name: t(),
                partitions: 3,
            })),
            format!("02000000 00000000 {name} 03000000"),
        ),
        (Response::DeleteTopic(err()), format!("03000000 {err_hex}")),
        (
            Response::DeleteTopic(Ok(())),
            "03000000 00000000".to_owned(),
        ),
        (Response::ListTopics(err()), format!("04000000 {err_hex}")),
        (
            Response::ListTopics(Ok(vec![])),
            "04000000 00000000 0000000000000000".to_owned(),
        ),
        (
            Response::DescribeTopic(err()),
            format!("05000000 {err_hex}"),
        ),
        (
            Response::DescribeTopic(Ok(TopicDescription {
                name: t(),
                config: TopicConfig::default(),
                partitions: vec![PartitionDescription {
                    partition: 0,
                    leader: None,
                    replicas: vec![],
                    log_start: 1,
                    high_watermark: 2,
                    log_bytes: 3,
                }],
            })),
            format!(
                "05000000 00000000 {name} 00 00 00 0100000000000000 00000000 00 \
                 0000000000000000 0100000000000000 0200000000000000 0300000000000000"
            ),
        ),
        (Response::Produce(err()), format!("06000000 {err_hex}")),
        (
            Response::Produce(Ok(ProduceOk {
                base_offset: 1,
                last_offset: 2,
                log_start: 0,
            })),
            "06000000 00000000 0100000000000000 0200000000000000 0000000000000000".to_owned(),
        ),
        (Response::Fetch(err()), format!("07000000 {err_hex}")),
        (Response::ListOffsets(err()), format!("08000000 {err_hex}")),
        (
            Response::ListOffsets(Ok(OffsetOk {
                offset: Some(4),
                timestamp: None,
            })),
            "08000000 00000000 01 0400000000000000 00".to_owned(),
        ),
        (
            Response::DescribeCluster(err()),
            format!("09000000 {err_hex}"),
        ),
        (
            Response::DescribeCluster(Ok(ClusterInfo {
                cluster_id: "c".to_owned(),
                node_id: 1,
                controller: Some(1),
                brokers: vec![],
                topics: 2,
                partitions: 3,
            })),
            "09000000 00000000 0100000000000000 63 01000000 01 01000000 \
             0000000000000000 02000000 03000000"
                .to_owned(),
        ),
        (Response::InitProducer(err()), format!("0a000000 {err_hex}")),
        (
            Response::InitProducer(Ok(ProducerIdOk {
                producer_id: 5,
                producer_epoch: 1,
            })),
            "0a000000 00000000 0500000000000000 0100".to_owned(),
        ),
        (
            Response::ClusterStatus(err()),
            format!("0b000000 {err_hex}"),
        ),
        (
            Response::ClusterStatus(Ok(ClusterStatus {
                cluster_id: "c".to_owned(),
                node_id: 1,
                controller: None,
                nodes: vec![NodeStatus {
                    node_id: 2,
                    addr: "a".to_owned(),
                    peer_addr: "p".to_owned(),
                    alive: true,
                    last_heard_ms: Some(7),
                    leaders: 3,
                    replicas: 4,
                }],
                topics: 5,
                partitions: 6,
                leaderless: 0,
            })),
            "0b000000 00000000 0100000000000000 63 01000000 00 0100000000000000 \
             02000000 0100000000000000 61 0100000000000000 70 01 01 0700000000000000 \
             03000000 04000000 05000000 06000000 00000000"
                .to_owned(),
        ),
    ];
    for (response, want) in &responses {
        assert_eq!(
            to_hex(&codec::encode(response).unwrap()),
            to_hex(&hex(want)),
            "{response:?}"
        );
        assert_eq!(
            &codec::decode::<Response>(&hex(want), 1024).unwrap(),
            response
        );
    }
}

/// Response position k + 1 answers request position k; `failed` and `kind` agree with it.
#[test]
fn response_positions_mirror_request_positions() {
    let e = ErrorBody::new(ErrorCode::Unknown, "");
    for (k, kind) in RequestKind::ALL.into_iter().enumerate() {
        let response = Response::failed(kind, e.clone());
        assert_eq!(response.kind(), Some(kind));
        assert_eq!(response.error(), Some(&e));
        let bytes = codec::encode(&response).unwrap();
        assert_eq!(bytes[..4], (k as u32 + 1).to_le_bytes(), "{kind:?}");
    }
    assert_eq!(Response::Error(e).kind(), None);
}

// ---- error codes ----

/// The table of `PROTOCOL.md`: number, name, retriable, write outcome. Numbers are forever.
const CODE_TABLE: [(u16, ErrorCode, &str, bool, WriteOutcome); 22] = {
    use ErrorCode as C;
    use WriteOutcome::{Definite as D, Indeterminate as I};
    [
        (1, C::Unknown, "Unknown", false, I),
        (2, C::InvalidRequest, "InvalidRequest", false, D),
        (3, C::UnsupportedVersion, "UnsupportedVersion", false, D),
        (4, C::FrameTooLarge, "FrameTooLarge", false, D),
        (5, C::UnknownTopic, "UnknownTopic", true, D),
        (6, C::UnknownPartition, "UnknownPartition", true, D),
        (7, C::TopicExists, "TopicExists", false, D),
        (8, C::OffsetOutOfRange, "OffsetOutOfRange", false, D),
        (9, C::NotLeader, "NotLeader", true, D),
        (10, C::Unauthorized, "Unauthorized", false, D),
        (11, C::Throttled, "Throttled", true, D),
        (12, C::CorruptBatch, "CorruptBatch", false, D),
        (13, C::DuplicateSequence, "DuplicateSequence", false, D),
        (14, C::OutOfOrderSequence, "OutOfOrderSequence", false, D),
        (15, C::RequestTimedOut, "RequestTimedOut", true, I),
        (16, C::StorageFull, "StorageFull", true, D),
        (17, C::StorageFailed, "StorageFailed", false, I),
        (18, C::InvalidConfig, "InvalidConfig", false, D),
        (19, C::TooManyRequests, "TooManyRequests", true, D),
        (20, C::ShuttingDown, "ShuttingDown", true, D),
        (21, C::InvalidTopicName, "InvalidTopicName", false, D),
        (22, C::Interrupted, "Interrupted", true, I),
    ]
};

#[test]
fn error_codes_are_unique_and_stable() {
    assert_eq!(ErrorCode::ALL.len(), CODE_TABLE.len());
    let mut seen = std::collections::BTreeSet::new();
    for (number, code, name, retriable, outcome) in CODE_TABLE {
        assert!(seen.insert(number), "number {number} used twice");
        assert_eq!(code.number(), number, "{name}");
        assert_eq!(code as u16, number, "{name}");
        assert_eq!(code.name(), name);
        assert_eq!(format!("{code:?}"), name);
        assert_eq!(code.is_retriable(), retriable, "{name}");
        assert_eq!(code.write_outcome(), outcome, "{name}");
        assert_eq!(ErrorCode::from_number(number), Some(code));
        assert!(ErrorCode::ALL.contains(&code));
        // On the wire: the u16 number, little-endian.
        assert_eq!(codec::encode(&code).unwrap(), number.to_le_bytes());
    }
    for unknown in [0, 23, 999, u16::MAX] {
        assert_eq!(ErrorCode::from_number(unknown), None);
        let decoded = codec::decode::<ErrorCode>(&unknown.to_le_bytes(), 2).unwrap();
        assert_eq!(decoded, ErrorCode::Unknown);
    }
}

#[test]
fn batch_errors_become_corrupt_batch_with_their_code() {
    let e = BatchError::BadCrc {
        stored: 1,
        computed: 2,
    };
    let body = ErrorBody::from(e.clone());
    assert_eq!(body.code, ErrorCode::CorruptBatch);
    assert_eq!(body.detail, ErrorDetail::Batch { code: 103 });
    assert_eq!(body.message, e.to_string());
    assert_eq!(body.write_outcome(), WriteOutcome::Definite);
    assert!(!body.is_retriable());
}

#[test]
fn error_constructors_bound_the_message() {
    let long = "é".repeat(ERROR_MESSAGE_BYTES_MAX);
    let body = ErrorBody::new(ErrorCode::Unknown, long);
    assert!(body.message.len() <= ERROR_MESSAGE_BYTES_MAX);
    assert!(body.message.len() > ERROR_MESSAGE_BYTES_MAX - 2);
    encode_response(
        &ResponseHeader { request_id: 1 },
        &Response::Error(body),
        &[],
        &LIMITS,
    )
    .unwrap();
    let oor = ErrorBody::offset_out_of_range(9, 1, 5);
    assert_eq!(
        oor.detail,
        ErrorDetail::OffsetOutOfRange {
            log_start: 1,
            log_end: 5
        }
    );
    assert_eq!(
        ErrorBody::throttled(10).detail,
        ErrorDetail::Throttled { retry_after_ms: 10 }
    );
    assert_eq!(ErrorBody::not_leader(None, None).code, ErrorCode::NotLeader);
}

#[test]
fn frame_errors_map_to_the_codes_a_broker_answers() {
    let cases = [
        (
            FrameError::TooLarge { len: 9, max: 8 },
            ErrorCode::FrameTooLarge,
        ),
        (
            FrameError::Truncated { needed: 9, have: 8 },
            ErrorCode::InvalidRequest,
        ),
        (
            FrameError::BadHeader {
                reason: "x".to_owned(),
            },
            ErrorCode::InvalidRequest,
        ),
        (FrameError::TrailingBytes, ErrorCode::InvalidRequest),
        (
            FrameError::Invalid { reason: "x" },
            ErrorCode::InvalidRequest,
        ),
        (
            FrameError::InvalidTopicName { reason: "x" },
            ErrorCode::InvalidTopicName,
        ),
        (
            FrameError::UnsupportedVersion { version: 2 },
            ErrorCode::UnsupportedVersion,
        ),
    ];
    for (e, code) in cases {
        let body = e.to_error_body();
        assert_eq!(body.code, code, "{e:?}");
        assert_eq!(body.message, e.to_string());
        assert_eq!(body.detail, ErrorDetail::None);
        assert_eq!(body.write_outcome(), WriteOutcome::Definite, "{e:?}");
    }
}

// ---- framing and hostile input ----

#[test]
fn a_huge_length_prefix_is_refused_before_reading() {
    assert_eq!(
        read_frame_len([0xff; 4], &LIMITS),
        Err(FrameError::TooLarge {
            len: u32::MAX as usize,
            max: 32 << 20
        })
    );
    let just_over = (LIMITS.frame_bytes_max + 1).to_le_bytes();
    assert!(matches!(
        read_frame_len(just_over, &LIMITS),
        Err(FrameError::TooLarge { .. })
    ));
    let at = LIMITS.frame_bytes_max.to_le_bytes();
    assert_eq!(read_frame_len(at, &LIMITS), Ok(32 << 20));
    for short in 0..4u32 {
        assert_eq!(
            read_frame_len(short.to_le_bytes(), &LIMITS),
            Err(FrameError::Truncated {
                needed: 4,
                have: short as usize
            })
        );
    }
    let mut stream = vec![0xff; 4];
    stream.extend_from_slice(&[0; 100]);
    assert!(matches!(
        split_frame(&stream, &LIMITS),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(
        FrameError::TooLarge { len: 1, max: 0 }.to_error_body().code,
        ErrorCode::FrameTooLarge
    );
}

#[test]
fn split_frame_wants_exactly_one_frame() {
    let (h, r) = produce_request();
    let frame = encode_request(&h, &r, &one_batch(0), &LIMITS).unwrap();
    assert_eq!(split_frame(&frame, &LIMITS).unwrap(), &frame[4..]);
    let mut longer = frame.clone();
    longer.push(0);
    assert_eq!(
        split_frame(&longer, &LIMITS),
        Err(FrameError::TrailingBytes)
    );
    assert_eq!(
        split_frame(&frame[..3], &LIMITS),
        Err(FrameError::Truncated { needed: 4, have: 3 })
    );
}

#[test]
fn every_truncation_of_a_valid_frame_is_refused() {
    let (h, r) = produce_request();
    let frames = [
        encode_request(&h, &r, &one_batch(0), &LIMITS).unwrap(),
        encode_request(&h, &Request::ListTopics, &[], &LIMITS).unwrap(),
    ];
    for frame in &frames {
        for cut in 0..frame.len() {
            let stream = &frame[..cut];
            let e = split_frame(stream, &LIMITS).unwrap_err();
            assert!(
                matches!(e, FrameError::Truncated { .. }),
                "cut {cut}: {e:?}"
            );
            // A transport that was handed a short frame body: the header may be cut.
            if cut > 4 {
                let header_end = 8 + u32::from_le_bytes(frame[4..8].try_into().unwrap());
                if cut < header_end as usize {
                    assert!(
                        decode_request(&frame[4..cut], &LIMITS).is_err(),
                        "cut {cut}"
                    );
                }
            }
        }
    }
    let response = encode_response(
        &ResponseHeader { request_id: 3 },
        &Response::Error(ErrorBody::new(ErrorCode::Unknown, "x")),
        &[],
        &LIMITS,
    )
    .unwrap();
    for cut in 4..response.len() {
        assert!(
            decode_response(&response[4..cut], &LIMITS).is_err(),
            "cut {cut}"
        );
    }
}

#[test]
fn a_header_length_past_the_frame_is_truncated() {
    let (h, r) = produce_request();
    let mut frame = encode_request(&h, &r, &[0; 64], &LIMITS).unwrap();
    let frame_len = frame.len() - 4;
    frame[4..8].copy_from_slice(&(frame_len as u32).to_le_bytes());
    assert_eq!(
        decode_request(&frame[4..], &LIMITS),
        Err(FrameError::Truncated {
            needed: frame_len + 4,
            have: frame_len
        })
    );
    // Over the header limit: refused as too large before it is compared with the frame.
    frame[4..8].copy_from_slice(&(LIMITS.header_bytes_max + 1).to_le_bytes());
    let e = decode_request(&frame[4..], &LIMITS).unwrap_err();
    assert!(matches!(e, FrameError::TooLarge { .. }), "{e:?}");
    assert_eq!(e.to_error_body().code, ErrorCode::FrameTooLarge);
}

/// A frame with `header` as its header bytes and no payload, after the prefix.
fn raw_frame(header: &[u8]) -> Vec<u8> {
    let mut f = (header.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f
}

fn v1_header(request_id: u64) -> Vec<u8> {
    codec::encode(&RequestHeader::new(request_id, "")).unwrap()
}

#[test]
fn an_unknown_request_kind_is_a_bad_header() {
    let mut header = v1_header(5);
    header.extend_from_slice(&12u32.to_le_bytes()); // no request kind 12 (yet)
    let frame = raw_frame(&header);
    let e = decode_request(&frame, &LIMITS).unwrap_err();
    assert_eq!(
        e,
        FrameError::BadHeader {
            reason: "unknown variant 12 of Request".to_owned()
        }
    );
    assert_eq!(e.to_error_body().code, ErrorCode::InvalidRequest);
    assert_eq!(request_id_hint(&frame), Some(5));

    // An unknown Acks variant inside a known request.
    let (h, r) = produce_request();
    let mut frame = encode_request(&h, &r, &[0; 64], &LIMITS).unwrap();
    let acks_at = 8 + 21 + 4 + 9 + 4;
    assert_eq!(frame[acks_at..acks_at + 4], [2, 0, 0, 0]);
    frame[acks_at] = 3;
    let e = decode_request(&frame[4..], &LIMITS).unwrap_err();
    assert_eq!(
        e,
        FrameError::BadHeader {
            reason: "unknown variant 3 of Acks".to_owned()
        }
    );

    // A response kind from a newer broker.
    let mut header = codec::encode(&ResponseHeader { request_id: 1 }).unwrap();
    header.extend_from_slice(&10u32.to_le_bytes());
    let e = decode_response(&raw_frame(&header), &LIMITS).unwrap_err();
    assert!(matches!(e, FrameError::BadHeader { .. }), "{e:?}");
}

#[test]
fn trailing_header_bytes_are_refused() {
    let mut header = v1_header(5);
    header.extend_from_slice(&codec::encode(&Request::ListTopics).unwrap());
    header.push(0);
    assert_eq!(
        decode_request(&raw_frame(&header), &LIMITS),
        Err(FrameError::TrailingBytes)
    );
}

#[test]
fn another_api_version_is_refused_first() {
    // Version 2, followed by bytes that are not a version 1 header at all.
    let frame = raw_frame(&[2, 0, 0xff, 0xff, 0xff]);
    let e = decode_request(&frame, &LIMITS).unwrap_err();
    assert_eq!(e, FrameError::UnsupportedVersion { version: 2 });
    assert_eq!(e.to_error_body().code, ErrorCode::UnsupportedVersion);
    let mut h = RequestHeader::new(1, "");
    h.api_version = 0;
    assert_eq!(
        encode_request(&h, &Request::ListTopics, &[], &LIMITS),
        Err(FrameError::UnsupportedVersion { version: 0 })
    );
}

#[test]
fn a_lying_vec_length_does_not_allocate() {
    // Metadata { topics: Some(vec) } claiming 2^50 names in a tiny header.
    let mut header = v1_header(1);
    header.extend_from_slice(&0u32.to_le_bytes());
    header.push(1);
    header.extend_from_slice(&(1u64 << 50).to_le_bytes());
    header.extend_from_slice(&[0; 16]);
    let e = decode_request(&raw_frame(&header), &LIMITS).unwrap_err();
    assert!(matches!(e, FrameError::BadHeader { .. }), "{e:?}");
    // A client_id claiming 2^40 bytes.
    let mut header = vec![1, 0];
    header.extend_from_slice(&1u64.to_le_bytes());
    header.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let e = decode_request(&raw_frame(&header), &LIMITS).unwrap_err();
    assert!(matches!(e, FrameError::BadHeader { .. }), "{e:?}");
}

#[test]
fn request_id_hint_reads_only_fixed_positions() {
    let frame = encode_request(
        &RequestHeader::new(0x0102_0304_0506_0708, "x"),
        &Request::ListTopics,
        &[],
        &LIMITS,
    )
    .unwrap();
    assert_eq!(request_id_hint(&frame[4..]), Some(0x0102_0304_0506_0708));
    assert_eq!(request_id_hint(&frame[4..17]), None);
    assert_eq!(request_id_hint(&raw_frame(&[1, 0, 5])), None);
    assert_eq!(request_id_hint(&[]), None);
}

// ---- limits and field rules ----

fn request_frame(request: &Request, payload: &[u8]) -> Vec<u8> {
    // Encoded without validation, to test what a decoder does with a hostile frame.
    let mut header = v1_header(1);
    header.extend_from_slice(&codec::encode(request).unwrap());
    let mut f = raw_frame(&header);
    f.extend_from_slice(payload);
    f
}

/// A request both the encoder and the decoder refuse with `want`.
fn assert_refused(request: &Request, payload: &[u8], want: &FrameError) {
    assert_refused_by(&LIMITS, request, payload, want)
}

fn assert_refused_by(limits: &FrameLimits, request: &Request, payload: &[u8], want: &FrameError) {
    let h = RequestHeader::new(1, "");
    assert_eq!(
        encode_request(&h, request, payload, limits).as_ref(),
        Err(want),
        "encode {request:?}"
    );
    assert_eq!(
        decode_request(&request_frame(request, payload), limits).as_ref(),
        Err(want),
        "decode {request:?}"
    );
}

#[test]
fn topic_names_follow_the_rules() {
    for good in ["a", "A-b_c.9", "..a", &"x".repeat(249)] {
        validate_topic_name(good, &LIMITS).unwrap();
    }
    let cases = [
        ("", "empty"),
        (".", "'.' and '..' are reserved"),
        ("..", "'.' and '..' are reserved"),
        ("a/b", "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"),
        ("a b", "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"),
        ("é", "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"),
        ("a\0", "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"),
    ];
    let too_long = "x".repeat(250);
    let cases = cases
        .iter()
        .map(|&(n, r)| (n, r))
        .chain([(too_long.as_str(), "longer than name_bytes_max")]);
    for (name, reason) in cases {
        let want = FrameError::InvalidTopicName { reason };
        assert_eq!(validate_topic_name(name, &LIMITS).as_ref(), Err(&want));
        assert_eq!(want.to_error_body().code, ErrorCode::InvalidTopicName);
        assert_refused(
            &Request::DescribeTopic {
                name: name.to_owned(),
            },
            &[],
            &want,
        );
        assert_refused(
            &Request::Produce {
                topic: name.to_owned(),
                partition: 0,
                acks: Acks::All,
                timeout_ms: 1,
            },
            &[0; 64],
            &want,
        );
    }
}

#[test]
fn request_limits_are_enforced() {
    let t = || "t".to_owned();
    let invalid = |reason| FrameError::Invalid { reason };
    // With the default limits, topics_max + 1 names are over the header limit first.
    let few = FrameLimits {
        topics_max: 10,
        ..LIMITS
    };
    assert_refused_by(
        &few,
        &Request::Metadata {
            topics: Some(vec![t(); 11]),
        },
        &[],
        &invalid("more topics than topics_max"),
    );
    assert_refused(
        &Request::Metadata {
            topics: Some(vec![t(), "bad name".to_owned()]),
        },
        &[],
        &FrameError::InvalidTopicName {
            reason: "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed",
        },
    );
    for partitions in [0, LIMITS.partitions_max + 1] {
        assert_refused(
            &Request::CreateTopic {
                name: t(),
                partitions,
                config: TopicConfig::default(),
            },
            &[],
            &invalid("partitions not in 1..=partitions_max"),
        );
    }
    let fetch = |partition, max_bytes, max_wait_ms| Request::Fetch {
        topic: t(),
        partition,
        offset: 0,
        max_bytes,
        max_wait_ms,
    };
    assert_refused(&fetch(0, 0, 0), &[], &invalid("max_bytes is 0"));
    assert_refused(
        &fetch(0, 1, LIMITS.wait_ms_max + 1),
        &[],
        &invalid("max_wait_ms above wait_ms_max"),
    );
    assert_refused(
        &fetch(LIMITS.partitions_max, 1, 0),
        &[],
        &invalid("partition number not below partitions_max"),
    );
    let produce = |timeout_ms| Request::Produce {
        topic: t(),
        partition: 0,
        acks: Acks::All,
        timeout_ms,
    };
    for timeout_ms in [0, LIMITS.wait_ms_max + 1] {
        assert_refused(
            &produce(timeout_ms),
            &[0; 64],
            &invalid("timeout_ms not in 1..=wait_ms_max"),
        );
    }
    assert_refused(
        &produce(1),
        &[],
        &invalid("produce request without a batch"),
    );
    assert_refused(
        &Request::ListTopics,
        &[0],
        &invalid("payload on a request that carries none"),
    );
    assert_refused(
        &Request::ListOffsets {
            topic: t(),
            partition: u32::MAX,
            spec: OffsetSpec::Latest,
        },
        &[],
        &invalid("partition number not below partitions_max"),
    );
}

#[test]
fn a_huge_client_id_is_refused() {
    let want = FrameError::Invalid {
        reason: "client_id longer than client_id_bytes_max",
    };
    let h = RequestHeader::new(1, "c".repeat(LIMITS.client_id_bytes_max as usize + 1));
    assert_eq!(
        encode_request(&h, &Request::ListTopics, &[], &LIMITS),
        Err(want.clone())
    );
    let mut header = codec::encode(&h).unwrap();
    header.extend_from_slice(&codec::encode(&Request::ListTopics).unwrap());
    assert_eq!(decode_request(&raw_frame(&header), &LIMITS), Err(want));
    // At the limit it is fine.
    let h = RequestHeader::new(1, "c".repeat(LIMITS.client_id_bytes_max as usize));
    encode_request(&h, &Request::ListTopics, &[], &LIMITS).unwrap();
    // And one larger than the whole header limit is too large, not merely invalid.
    let h = RequestHeader::new(1, "c".repeat(LIMITS.header_bytes_max as usize));
    let mut header = codec::encode(&h).unwrap();
    header.extend_from_slice(&codec::encode(&Request::ListTopics).unwrap());
    let e = decode_request(&raw_frame(&header), &LIMITS).unwrap_err();
    assert!(matches!(e, FrameError::TooLarge { .. }), "{e:?}");
}

#[test]
fn a_request_header_at_the_limit_decodes() {
    // Metadata naming as many 1-byte topics as fit in exactly header_bytes_max: the widest
    // legitimate reservation a request makes (24 bytes per 9 encoded).
    let fixed = v1_header(1).len() + 4 + 1 + 8;
    let limits = FrameLimits {
        topics_max: u32::MAX,
        ..LIMITS
    };
    let n = (limits.header_bytes_max as usize - fixed) / 9;
    let request = Request::Metadata {
        topics: Some(vec!["t".to_owned(); n]),
    };
    let frame = encode_request(&RequestHeader::new(1, ""), &request, &[], &limits).unwrap();
    let header_len = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
    assert!(header_len > limits.header_bytes_max as usize - 9);
    let (_, decoded, _) = decode_request(&frame[4..], &limits).unwrap();
    assert_eq!(decoded, request);
}

#[test]
fn message_types_reserve_a_bounded_multiple_of_their_encoding() {
    // (size_of, shortest encoding) of every element type a Vec in a message holds; the codec
    // sizes its reservation limit at CLAIM_FACTOR times the input, which must cover the
    // worst ratio with room for one nested container.
    use std::mem::size_of;
    let elements = [
        ("String", size_of::<String>(), 8),
        ("u32", size_of::<u32>(), 4),
        ("BrokerInfo", size_of::<BrokerInfo>(), 4 + 8),
        (
            "PartitionMetadata",
            size_of::<PartitionMetadata>(),
            4 + 1 + 8,
        ),
        ("TopicMetadata", size_of::<TopicMetadata>(), 8 + 8 + 1),
        ("TopicSummary", size_of::<TopicSummary>(), 8 + 4),
        (
            "PartitionDescription",
            size_of::<PartitionDescription>(),
            4 + 1 + 8 + 8 + 8 + 8,
        ),
    ];
    for (name, size, encoded) in elements {
        assert!(
            2 * size <= codec::CLAIM_FACTOR * encoded,
            "{name}: {size} bytes per {encoded} encoded"
        );
    }
}

#[test]
fn response_rules_are_enforced() {
    let h = ResponseHeader { request_id: 1 };
    let invalid = |reason| FrameError::Invalid { reason };
    let refused = |response: &Response, payload: &[u8], want: FrameError| {
        assert_eq!(
            encode_response(&h, response, payload, &LIMITS).as_ref(),
            Err(&want),
            "encode {response:?}"
        );
        let mut header = codec::encode(&h).unwrap();
        header.extend_from_slice(&codec::encode(response).unwrap());
        let mut frame = raw_frame(&header);
        frame.extend_from_slice(payload);
        assert_eq!(
            decode_response(&frame, &LIMITS).as_ref(),
            Err(&want),
            "decode {response:?}"
        );
    };
    let fetch = |batches| {
        Response::Fetch(Ok(FetchOk {
            high_watermark: 1,
            log_start: 0,
            next_offset: 1,
            batches,
        }))
    };
    refused(
        &fetch(1),
        &[],
        invalid("fetch response counts batches but has no payload"),
    );
    refused(
        &fetch(2),
        &[0; 127],
        invalid("more batches than the fetch payload can hold"),
    );
    refused(
        &fetch(0),
        &[0; 64],
        invalid("payload on a response that carries none"),
    );
    refused(
        &Response::Fetch(Ok(FetchOk {
            high_watermark: 1,
            log_start: 2,
            next_offset: 1,
            batches: 0,
        })),
        &[],
        invalid("log_start above high_watermark"),
    );
    refused(
        &Response::Produce(Ok(ProduceOk {
            base_offset: 2,
            last_offset: 1,
            log_start: 0,
        })),
        &[],
        invalid("base_offset above last_offset"),
    );
    let long = ErrorBody {
        code: ErrorCode::Unknown,
        message: "m".repeat(LIMITS.string_bytes_max as usize + 1),
        detail: ErrorDetail::None,
    };
    refused(
        &Response::Error(long),
        &[],
        invalid("string longer than string_bytes_max"),
    );
    refused(
        &Response::Produce(Err(ErrorBody::new(ErrorCode::CorruptBatch, "")
            .with_detail(ErrorDetail::Batch { code: 12 }))),
        &[],
        invalid("batch error code outside 100..=199"),
    );
    refused(
        &Response::Fetch(Err(ErrorBody::new(ErrorCode::OffsetOutOfRange, "")
            .with_detail(ErrorDetail::OffsetOutOfRange {
                log_start: 5,
                log_end: 4,
            }))),
        &[],
        invalid("offset range with log_start above log_end"),
    );
    let broker = BrokerInfo {
        node_id: 1,
        addr: "a:1".to_owned(),
    };
    refused(
        &Response::Metadata(Ok(MetadataOk {
            brokers: vec![broker; LIMITS.nodes_max as usize + 1],
            topics: vec![],
        })),
        &[],
        invalid("more brokers than nodes_max"),
    );
    refused(
        &Response::ListTopics(Ok(vec![TopicSummary {
            name: "no/slash".to_owned(),
            partitions: 1,
        }])),
        &[],
        FrameError::InvalidTopicName {
            reason: "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed",
        },
    );
    refused(
        &Response::DescribeTopic(Ok(TopicDescription {
            name: "t".to_owned(),
            config: TopicConfig::default(),
            partitions: vec![PartitionDescription {
                partition: 0,
                leader: None,
                replicas: vec![0; LIMITS.nodes_max as usize + 1],
                log_start: 0,
                high_watermark: 0,
                log_bytes: 0,
            }],
        })),
        &[],
        invalid("more replicas than nodes_max"),
    );
}

#[test]
fn head_encoders_write_the_frame_up_to_the_payload() {
    let (h, r) = produce_request();
    let batch = one_batch(0);
    let whole = encode_request(&h, &r, &batch, &LIMITS).unwrap();
    let head = encode_request_head(&h, &r, batch.len(), &LIMITS).unwrap();
    assert_eq!([head.as_slice(), &batch].concat(), whole);

    let rh = ResponseHeader { request_id: 9 };
    let response = Response::Fetch(Ok(FetchOk {
        high_watermark: 1,
        log_start: 0,
        next_offset: 1,
        batches: 1,
    }));
    let whole = encode_response(&rh, &response, &batch, &LIMITS).unwrap();
    let head = encode_response_head(&rh, &response, batch.len(), &LIMITS).unwrap();
    assert_eq!([head.as_slice(), &batch].concat(), whole);
    assert_eq!(head.len(), 8 + FETCH_OK_HEADER_BYTES);
}

#[test]
fn a_fetch_can_fill_the_frame_budget_and_no_more() {
    let rh = ResponseHeader { request_id: 9 };
    let response = Response::Fetch(Ok(FetchOk {
        high_watermark: 1,
        log_start: 0,
        next_offset: 1,
        batches: 1,
    }));
    let max = LIMITS.fetch_payload_bytes_max();
    let frame = encode_response_head(&rh, &response, max, &LIMITS).unwrap();
    assert_eq!(
        u32::from_le_bytes(frame[..4].try_into().unwrap()),
        LIMITS.frame_bytes_max
    );
    assert_eq!(
        encode_response_head(&rh, &response, max + 1, &LIMITS),
        Err(FrameError::TooLarge {
            len: LIMITS.frame_bytes_max as usize + 1,
            max: LIMITS.frame_bytes_max as usize
        })
    );
    assert!(max >= batch::Limits::DEFAULT.batch_bytes_max as usize);
    // A produce request with a maximal batch fits too.
    let (h, r) = produce_request();
    encode_request_head(
        &h,
        &r,
        batch::Limits::DEFAULT.batch_bytes_max as usize,
        &LIMITS,
    )
    .unwrap();
}

#[test]
fn limit_relations_are_checked() {
    let b = batch::Limits::DEFAULT;
    assert_eq!(LIMITS.check(&b), Ok(()));
    let cases = [
        FrameLimits {
            frame_bytes_max: b.batch_bytes_max,
            ..LIMITS
        },
        FrameLimits {
            name_bytes_max: 250,
            ..LIMITS
        },
        FrameLimits {
            header_bytes_max: 256,
            ..LIMITS
        },
        FrameLimits {
            response_header_bytes_max: 64 << 20,
            frame_bytes_max: 128 << 20,
            ..LIMITS
        },
        FrameLimits {
            string_bytes_max: 16,
            ..LIMITS
        },
        FrameLimits {
            partitions_max: 0,
            ..LIMITS
        },
    ];
    for limits in cases {
        assert!(limits.check(&b).is_err(), "{limits:?}");
    }
}

// ---- round trips ----

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,24}"
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn partition() -> impl Strategy<Value = u32> {
    0..LIMITS.partitions_max
}

fn acks() -> impl Strategy<Value = Acks> {
    prop_oneof![Just(Acks::None), Just(Acks::Leader), Just(Acks::All)]
}

fn topic_config() -> impl Strategy<Value = TopicConfig> {
    (
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(retention_bytes, retention_ms, segment_bytes)| TopicConfig {
                retention_bytes,
                retention_ms,
                segment_bytes,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        proptest::option::of(vec(name(), 0..5)).prop_map(|topics| Request::Metadata { topics }),
        (name(), 1..=LIMITS.partitions_max, topic_config()).prop_map(
            |(name, partitions, config)| Request::CreateTopic {
                name,
                partitions,
                config
            }
        ),
        name().prop_map(|name| Request::DeleteTopic { name }),
        Just(Request::ListTopics),
        name().prop_map(|name| Request::DescribeTopic { name }),
        (name(), partition(), acks(), 1..=LIMITS.wait_ms_max).prop_map(
            |(topic, partition, acks, timeout_ms)| Request::Produce {
                topic,
                partition,
                acks,
                timeout_ms
            }
        ),
        (
            name(),
            partition(),
            any::<u64>(),
            1..=u32::MAX,
            0..=LIMITS.wait_ms_max
        )
            .prop_map(|(topic, partition, offset, max_bytes, max_wait_ms)| {
                Request::Fetch {
                    topic,
                    partition,
                    offset,
                    max_bytes,
                    max_wait_ms,
                }
            }),
        (
            name(),
            partition(),
            prop_oneof![
                Just(OffsetSpec::Earliest),
                Just(OffsetSpec::Latest),
                any::<i64>().prop_map(OffsetSpec::Timestamp)
            ]
        )
            .prop_map(|(topic, partition, spec)| Request::ListOffsets {
                topic,
                partition,
                spec
            }),
        Just(Request::DescribeCluster),
        Just(Request::InitProducer),
        (
            name(),
            1u32..=LIMITS.partitions_max,
            proptest::option::of(1u32..=LIMITS.nodes_max),
            topic_config()
        )
            .prop_map(|(name, partitions, replication_factor, config)| {
                Request::CreateTopicReplicated {
                    name,
                    partitions,
                    replication_factor,
                    config,
                }
            }),
        Just(Request::ClusterStatus),
    ]
}

fn request_header() -> impl Strategy<Value = RequestHeader> {
    (any::<u64>(), "[ -~]{0,32}").prop_map(|(id, client)| RequestHeader::new(id, client))
}

fn error_body() -> impl Strategy<Value = ErrorBody> {
    let detail = prop_oneof![
        Just(ErrorDetail::None),
        (any::<Option<u32>>(), proptest::option::of(text()))
            .prop_map(|(leader, addr)| ErrorDetail::NotLeader { leader, addr }),
        any::<u32>().prop_map(|retry_after_ms| ErrorDetail::Throttled { retry_after_ms }),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| ErrorDetail::OffsetOutOfRange {
            log_start: a.min(b),
            log_end: a.max(b)
        }),
        (100u16..=199).prop_map(|code| ErrorDetail::Batch { code }),
        ordered().prop_map(|(base_offset, last_offset)| ErrorDetail::Duplicate {
            base_offset,
            last_offset
        }),
    ];
    (
        proptest::sample::select(ErrorCode::ALL.to_vec()),
        text(),
        detail,
    )
        .prop_map(|(code, message, detail)| ErrorBody {
            code,
            message,
            detail,
        })
}

fn result<T: std::fmt::Debug + Clone>(
    ok: impl Strategy<Value = T>,
) -> impl Strategy<Value = Result<T, ErrorBody>> {
    prop_oneof![ok.prop_map(Ok), error_body().prop_map(Err)]
}

fn broker() -> impl Strategy<Value = BrokerInfo> {
    (any::<u32>(), text()).prop_map(|(node_id, addr)| BrokerInfo { node_id, addr })
}

fn ordered() -> impl Strategy<Value = (u64, u64)> {
    (any::<u64>(), any::<u64>()).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

/// A response and a payload it may carry.
fn response() -> impl Strategy<Value = (Response, Vec<u8>)> {
    let partition_md = (partition(), any::<Option<u32>>(), vec(any::<u32>(), 0..4)).prop_map(
        |(partition, leader, replicas)| PartitionMetadata {
            partition,
            leader,
            replicas,
        },
    );
    let topic_md = (
        name(),
        vec(partition_md, 0..4),
        proptest::option::of(error_body()),
    )
        .prop_map(|(name, partitions, error)| TopicMetadata {
            name,
            partitions,
            error,
        });
    let summary = || {
        (name(), 0..=LIMITS.partitions_max)
            .prop_map(|(name, partitions)| TopicSummary { name, partitions })
    };
    let description_partition = (
        partition(),
        any::<Option<u32>>(),
        vec(any::<u32>(), 0..4),
        ordered(),
        any::<u64>(),
    )
        .prop_map(
            |(partition, leader, replicas, (log_start, high_watermark), log_bytes)| {
                PartitionDescription {
                    partition,
                    leader,
                    replicas,
                    log_start,
                    high_watermark,
                    log_bytes,
                }
            },
        );
    let description = (name(), topic_config(), vec(description_partition, 0..4)).prop_map(
        |(name, config, partitions)| TopicDescription {
            name,
            config,
            partitions,
        },
    );
    let cluster = (
        text(),
        any::<u32>(),
        any::<Option<u32>>(),
        vec(broker(), 0..4),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(cluster_id, node_id, controller, brokers, topics, partitions)| ClusterInfo {
                cluster_id,
                node_id,
                controller,
                brokers,
                topics,
                partitions,
            },
        );
    let node = (
        any::<u32>(),
        text(),
        text(),
        any::<bool>(),
        any::<Option<u64>>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(node_id, addr, peer_addr, alive, last_heard_ms, leaders, replicas)| NodeStatus {
                node_id,
                addr,
                peer_addr,
                alive,
                last_heard_ms,
                leaders,
                replicas,
            },
        );
    let status = (
        text(),
        any::<u32>(),
        any::<Option<u32>>(),
        vec(node, 0..4),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(cluster_id, node_id, controller, nodes, topics, partitions, leaderless)| {
                ClusterStatus {
                    cluster_id,
                    node_id,
                    controller,
                    nodes,
                    topics,
                    partitions,
                    leaderless,
                }
            },
        );
    let fetch_ok = (ordered(), any::<u64>(), 0u32..4, vec(any::<u8>(), 0..64)).prop_map(
        |((log_start, high_watermark), next_offset, batches, extra)| {
            let mut payload = Vec::new();
            if batches > 0 {
                payload = vec![0xab; batches as usize * batch::HEADER_LEN];
                payload.extend(extra);
            }
            let ok = FetchOk {
                high_watermark,
                log_start,
                next_offset,
                batches,
            };
            (Response::Fetch(Ok(ok)), payload)
        },
    );
    let no_payload = prop_oneof![
        error_body().prop_map(Response::Error),
        result(
            (vec(broker(), 0..4), vec(topic_md, 0..4))
                .prop_map(|(brokers, topics)| MetadataOk { brokers, topics })
        )
        .prop_map(Response::Metadata),
        result(summary()).prop_map(Response::CreateTopic),
        result(Just(())).prop_map(Response::DeleteTopic),
        result(vec(summary(), 0..4)).prop_map(Response::ListTopics),
        result(description).prop_map(Response::DescribeTopic),
        result(
            (ordered(), any::<u64>()).prop_map(|((base_offset, last_offset), log_start)| {
                ProduceOk {
                    base_offset,
                    last_offset,
                    log_start,
                }
            })
        )
        .prop_map(Response::Produce),
        error_body().prop_map(|e| Response::Fetch(Err(e))),
        result(
            (any::<Option<u64>>(), any::<Option<i64>>())
                .prop_map(|(offset, timestamp)| OffsetOk { offset, timestamp })
        )
        .prop_map(Response::ListOffsets),
        result(cluster).prop_map(Response::DescribeCluster),
        result(
            (0i64..=i64::MAX, 0i16..=i16::MAX).prop_map(|(producer_id, producer_epoch)| {
                ProducerIdOk {
                    producer_id,
                    producer_epoch,
                }
            })
        )
        .prop_map(Response::InitProducer),
        result(status).prop_map(Response::ClusterStatus),
    ];
    prop_oneof![no_payload.prop_map(|r| (r, Vec::new())), fetch_ok]
}

/// Every variant of every wire enum, so the strategies above are known to reach them all.
#[test]
fn strategies_cover_every_variant() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut requests = std::collections::BTreeSet::new();
    let mut responses = std::collections::BTreeSet::new();
    for _ in 0..2_000 {
        let r = request().new_tree(&mut runner).unwrap().current();
        requests.insert(r.kind());
        let (r, _) = response().new_tree(&mut runner).unwrap().current();
        responses.insert(r.kind());
    }
    assert_eq!(requests.len(), RequestKind::ALL.len());
    assert_eq!(responses.len(), RequestKind::ALL.len() + 1);
}

proptest! {
    #[test]
    fn requests_round_trip(h in request_header(), r in request(), batch in vec(any::<u8>(), 1..200)) {
        let payload = if r.has_payload() { batch } else { Vec::new() };
        let frame = encode_request(&h, &r, &payload, &LIMITS).unwrap();
        let (h2, r2, p2) = decode_request(split_frame(&frame, &LIMITS).unwrap(), &LIMITS).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(r2, r);
        prop_assert_eq!(p2, &payload[..]);
    }

    #[test]
    fn responses_round_trip(id in any::<u64>(), (r, payload) in response()) {
        let h = ResponseHeader { request_id: id };
        let frame = encode_response(&h, &r, &payload, &LIMITS).unwrap();
        let (h2, r2, p2) = decode_response(split_frame(&frame, &LIMITS).unwrap(), &LIMITS).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(r2, r);
        prop_assert_eq!(p2, &payload[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes, &LIMITS);
        let _ = decode_response(&bytes, &LIMITS);
        let _ = split_frame(&bytes, &LIMITS);
        let _ = request_id_hint(&bytes);
        if let Some(prefix) = bytes.first_chunk::<4>() {
            let _ = read_frame_len(*prefix, &LIMITS);
        }
    }

    /// Arbitrary bytes behind a plausible header length, so decoding gets past the framing.
    #[test]
    fn arbitrary_headers_never_panic(header in vec(any::<u8>(), 0..256), version_1 in any::<bool>()) {
        let mut header = header;
        if version_1 && header.len() >= 2 {
            header[..2].copy_from_slice(&API_VERSION.to_le_bytes());
        }
        let frame = raw_frame(&header);
        let _ = decode_request(&frame, &LIMITS);
        let _ = decode_response(&frame, &LIMITS);
    }

    /// A receiver that splits the frame where `request_head_len` says (head, then the
    /// payload read into its own buffer) gets exactly `decode_request`'s decision: for
    /// valid requests, for mutated ones, and for arbitrary bytes.
    #[test]
    fn decoding_the_head_apart_decides_what_decoding_the_frame_decides(
        h in request_header(),
        r in request(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        noise in vec(any::<u8>(), 0..300),
        use_noise in any::<bool>(),
    ) {
        let frame = if use_noise {
            noise
        } else {
            let payload: &[u8] = if r.has_payload() { &[7; 64] } else { &[] };
            let mut f = encode_request(&h, &r, payload, &LIMITS).unwrap()[4..].to_vec();
            for (at, byte) in edits {
                let i = at.index(f.len());
                f[i] = byte;
            }
            f
        };
        let whole = decode_request(&frame, &LIMITS).map(|(h, r, _)| (h, r));
        let split = request_head_len(&frame, frame.len(), &LIMITS).unwrap_or(frame.len());
        let (head, payload) = frame.split_at(split);
        prop_assert_eq!(decode_request_head(head, payload.len(), &LIMITS), whole);
    }

    /// A valid request frame with bytes changed: decoding never panics, and whatever still
    /// decodes re-encodes to exactly the same bytes (the encoding is canonical).
    #[test]
    fn mutated_requests_decode_canonically_or_not_at_all(
        h in request_header(),
        r in request(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let payload: &[u8] = if r.has_payload() { &[7; 64] } else { &[] };
        let mut frame = encode_request(&h, &r, payload, &LIMITS).unwrap();
        for (at, byte) in edits {
            // Leave the length prefix alone: it is the transport's.
            let i = 4 + at.index(frame.len() - 4);
            frame[i] = byte;
        }
        if let Ok((h2, r2, p2)) = decode_request(&frame[4..], &LIMITS) {
            let again = encode_request(&h2, &r2, p2, &LIMITS).unwrap();
            prop_assert_eq!(again, frame);
        }
    }

    /// The same for responses, except that an error code number this build does not know is
    /// read as `Unknown` (so such a frame re-encodes with code 1).
    #[test]
    fn mutated_responses_never_panic(
        (r, payload) in response(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let h = ResponseHeader { request_id: 1 };
        let mut frame = encode_response(&h, &r, &payload, &LIMITS).unwrap();
        for (at, byte) in edits {
            let i = 4 + at.index(frame.len() - 4);
            frame[i] = byte;
        }
        if let Ok((h2, r2, p2)) = decode_response(&frame[4..], &LIMITS) {
            let again = encode_response(&h2, &r2, p2, &LIMITS).unwrap();
            prop_assert_eq!(again.len(), frame.len());
        }
    }
}

#[test]
fn partition_addressed_requests_name_their_partition() {
    let (_, produce) = produce_request();
    assert_eq!(produce.partition(), Some(("t", 3)));
    let fetch = Request::Fetch {
        topic: "t".into(),
        partition: 3,
        offset: 0,
        max_bytes: 1,
        max_wait_ms: 0,
    };
    assert_eq!(fetch.partition(), Some(("t", 3)));
    assert_eq!(Request::ListTopics.partition(), None);
    assert_eq!(Request::InitProducer.partition(), None);
}
