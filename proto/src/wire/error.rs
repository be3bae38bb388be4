//! The broker's error codes: one table, stable numbers, and what each means for a retry and
//! for a write (DESIGN §4). `PROTOCOL.md`, "Error codes", is the same table.

use std::fmt;

use crate::batch::BatchError;

/// Whether a failed write may have been appended (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteOutcome {
    /// The broker guarantees this request appended nothing.
    Definite,
    /// The request may have been appended. Retrying is safe only with the idempotent
    /// producer.
    Indeterminate,
}

/// Every error a response can carry. The numbers are the wire encoding (a `u16`, not the
/// variant position) and are never renumbered or reused; new codes are added with new
/// numbers. A decoder maps a number it does not know to [`ErrorCode::Unknown`].
///
/// Each code is sent only in the situation its doc describes; that is what makes
/// [`write_outcome`](Self::write_outcome) a function of the code alone. In particular a
/// broker that has appended (or proposed) a write and then cannot confirm it answers
/// `RequestTimedOut` or `Interrupted`, never `NotLeader` or `ShuttingDown`.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    /// An unexpected broker failure, or a code this build does not know.
    Unknown = 1,
    /// The frame could not be decoded, names an unknown request kind, or a field breaks a
    /// rule or a limit.
    InvalidRequest = 2,
    /// The request's `api_version` is not one the broker speaks.
    UnsupportedVersion = 3,
    /// The frame, or its header, is over the broker's limit.
    FrameTooLarge = 4,
    /// No topic of that name (metadata may lag just after a create).
    UnknownTopic = 5,
    /// The topic has no partition of that number.
    UnknownPartition = 6,
    /// `CreateTopic` for a name that exists.
    TopicExists = 7,
    /// The fetch offset is outside `[log_start, log_end]`; the detail carries the range.
    OffsetOutOfRange = 8,
    /// This node does not lead the partition; sent only before anything was appended. The
    /// detail names the leader when it is known.
    NotLeader = 9,
    /// The client may not do this.
    Unauthorized = 10,
    /// Over quota; refused before dispatch. The detail says when to come back.
    Throttled = 11,
    /// The produced batch failed validation; the detail carries its 1xx batch code.
    CorruptBatch = 12,
    /// The idempotent producer's batch was already appended by an earlier attempt: this
    /// request appended nothing, and the records are in the log.
    DuplicateSequence = 13,
    /// The idempotent producer skipped or reordered a sequence number.
    OutOfOrderSequence = 14,
    /// The broker accepted the request but could not complete it within `timeout_ms`.
    RequestTimedOut = 15,
    /// The broker refuses writes: its disk has no room. Sent before appending (a write that
    /// fails on a full disk after it was accepted is `StorageFailed`).
    StorageFull = 16,
    /// The partition's log is poisoned (a failed write or fsync); the write may be partly
    /// on disk.
    StorageFailed = 17,
    /// `CreateTopic` with a config value the broker does not accept.
    InvalidConfig = 18,
    /// The connection's in-flight request limit is reached; refused before dispatch.
    TooManyRequests = 19,
    /// The broker is shutting down; refused before dispatch (accepted requests are drained
    /// and answered normally).
    ShuttingDown = 20,
    /// A topic name that breaks the naming rules.
    InvalidTopicName = 21,
    /// The write was accepted, then the broker lost the means to confirm it (leadership
    /// lost during replication, a shutdown that could not drain it): it may be in the log.
    Interrupted = 22,
}

impl ErrorCode {
    /// Every code, in number order.
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::Unknown,
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::TopicExists,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::NotLeader,
        ErrorCode::Unauthorized,
        ErrorCode::Throttled,
        ErrorCode::CorruptBatch,
        ErrorCode::DuplicateSequence,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::RequestTimedOut,
        ErrorCode::StorageFull,
        ErrorCode::StorageFailed,
        ErrorCode::InvalidConfig,
        ErrorCode::TooManyRequests,
        ErrorCode::ShuttingDown,
        ErrorCode::InvalidTopicName,
        ErrorCode::Interrupted,
    ];

    /// The stable wire number.
    pub const fn number(self) -> u16 {
        self as u16
    }

    pub fn from_number(number: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.number() == number)
    }

    /// The variant name, e.g. `"NotLeader"` (for logs and metric labels).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::Unknown => "Unknown",
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::UnsupportedVersion => "UnsupportedVersion",
            ErrorCode::FrameTooLarge => "FrameTooLarge",
            ErrorCode::UnknownTopic => "UnknownTopic",
            ErrorCode::UnknownPartition => "UnknownPartition",
            ErrorCode::TopicExists => "TopicExists",
            ErrorCode::OffsetOutOfRange => "OffsetOutOfRange",
            ErrorCode::NotLeader => "NotLeader",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Throttled => "Throttled",
            ErrorCode::CorruptBatch => "CorruptBatch",
            ErrorCode::DuplicateSequence => "DuplicateSequence",
            ErrorCode::OutOfOrderSequence => "OutOfOrderSequence",
            ErrorCode::RequestTimedOut => "RequestTimedOut",
            ErrorCode::StorageFull => "StorageFull",
            ErrorCode::StorageFailed => "StorageFailed",
            ErrorCode::InvalidConfig => "InvalidConfig",
            ErrorCode::TooManyRequests => "TooManyRequests",
            ErrorCode::ShuttingDown => "ShuttingDown",
            ErrorCode::InvalidTopicName => "InvalidTopicName",
            ErrorCode::Interrupted => "Interrupted",
        }
    }

    /// Whether the same request may succeed if sent again (after a metadata refresh for
    /// `UnknownTopic`/`UnknownPartition`/`NotLeader`, after `retry_after_ms` for
    /// `Throttled`, with backoff otherwise). For a write whose outcome is indeterminate, a
    /// retry is only safe with the idempotent producer.
    pub const fn is_retriable(self) -> bool {
        match self {
            ErrorCode::UnknownTopic
            | ErrorCode::UnknownPartition
            | ErrorCode::NotLeader
            | ErrorCode::Throttled
            | ErrorCode::RequestTimedOut
            | ErrorCode::StorageFull
            | ErrorCode::TooManyRequests
            | ErrorCode::ShuttingDown
            | ErrorCode::Interrupted => true,
            ErrorCode::Unknown
            | ErrorCode::InvalidRequest
            | ErrorCode::UnsupportedVersion
            | ErrorCode::FrameTooLarge
            | ErrorCode::TopicExists
            | ErrorCode::OffsetOutOfRange
            | ErrorCode::Unauthorized
            | ErrorCode::CorruptBatch
            | ErrorCode::DuplicateSequence
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::StorageFailed
            | ErrorCode::InvalidConfig
            | ErrorCode::InvalidTopicName => false,
        }
    }

    /// What a write that failed with this code may have left in the log (DESIGN §4).
    /// Where a code could be sent both before and after an append, it is `Indeterminate`.
    pub const fn write_outcome(self) -> WriteOutcome {
        match self {
            ErrorCode::Unknown
            | ErrorCode::RequestTimedOut
            | ErrorCode::StorageFailed
            | ErrorCode::Interrupted => WriteOutcome::Indeterminate,
            ErrorCode::InvalidRequest
            | ErrorCode::UnsupportedVersion
            | ErrorCode::FrameTooLarge
            | ErrorCode::UnknownTopic
            | ErrorCode::UnknownPartition
            | ErrorCode::TopicExists
            | ErrorCode::OffsetOutOfRange
            | ErrorCode::NotLeader
            | ErrorCode::Unauthorized
            | ErrorCode::Throttled
            | ErrorCode::CorruptBatch
            | ErrorCode::DuplicateSequence
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::StorageFull
            | ErrorCode::InvalidConfig
            | ErrorCode::TooManyRequests
            | ErrorCode::ShuttingDown
            | ErrorCode::InvalidTopicName => WriteOutcome::Definite,
        }
    }
}

// `ALL` must list every code once, in number order: with no gaps, position i holds i + 1.
const _: () = {
    let mut rest: &[ErrorCode] = &ErrorCode::ALL;
    let mut expected = 1;
    while let [code, tail @ ..] = rest {
        assert!(code.number() == expected);
        expected += 1;
        rest = tail;
    }
};

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

/// Structured facts that go with some codes. Variants are only ever appended (the wire
/// carries the variant position).
#[derive(Debug, Clone, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub enum ErrorDetail {
    /// 0
    #[default]
    None,
    /// 1: with `NotLeader`. The leader's node id and address, when this node knows them.
    NotLeader {
        leader: Option<u32>,
        addr: Option<String>,
    },
    /// 2: with `Throttled`.
    Throttled { retry_after_ms: u32 },
    /// 3: with `OffsetOutOfRange`. Valid fetch offsets are `log_start..=log_end` (fetching
    /// at `log_end`, the high watermark, waits for new data).
    OffsetOutOfRange { log_start: u64, log_end: u64 },
    /// 4: with `CorruptBatch`. The batch error's 1xx code (`BatchError::code`).
    Batch { code: u16 },
    /// `DuplicateSequence`: the batch was already appended, at these offsets (a retry
    /// of a write that did land). The producer treats it as its acknowledgement.
    Duplicate { base_offset: u64, last_offset: u64 },
}

/// The error part of a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, bincode::Encode, bincode::Decode)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// Human-readable; at most `FrameLimits::string_bytes_max` bytes. Clients must not
    /// parse it: `code` and `detail` are the contract.
    pub message: String,
    pub detail: ErrorDetail,
}

/// Messages built by the constructors are cut to this many bytes (at a character boundary)
/// so an error can always be encoded within the default limits.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

fn bounded(message: impl Into<String>) -> String {
    let mut message = message.into();
    if message.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut end = ERROR_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

impl ErrorBody {
    /// An error with no detail; the message is cut to [`ERROR_MESSAGE_BYTES_MAX`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: bounded(message),
            detail: ErrorDetail::None,
        }
    }

    pub fn with_detail(mut self, detail: ErrorDetail) -> ErrorBody {
        self.detail = detail;
        self
    }

    pub fn not_leader(leader: Option<u32>, addr: Option<String>) -> ErrorBody {
        ErrorBody::new(ErrorCode::NotLeader, "not the partition leader")
            .with_detail(ErrorDetail::NotLeader { leader, addr })
    }

    pub fn throttled(retry_after_ms: u32) -> ErrorBody {
        ErrorBody::new(ErrorCode::Throttled, "over quota")
            .with_detail(ErrorDetail::Throttled { retry_after_ms })
    }

    pub fn offset_out_of_range(offset: u64, log_start: u64, log_end: u64) -> ErrorBody {
        ErrorBody::new(
            ErrorCode::OffsetOutOfRange,
            format!("offset {offset} is outside {log_start}..={log_end}"),
        )
        .with_detail(ErrorDetail::OffsetOutOfRange { log_start, log_end })
    }

    pub fn is_retriable(&self) -> bool {
        self.code.is_retriable()
    }

    pub fn write_outcome(&self) -> WriteOutcome {
        self.code.write_outcome()
    }
}

impl From<BatchError> for ErrorBody {
    /// A batch that failed validation: `CorruptBatch` with the 1xx code in the detail.
    fn from(e: BatchError) -> ErrorBody {
        ErrorBody::new(ErrorCode::CorruptBatch, e.to_string())
            .with_detail(ErrorDetail::Batch { code: e.code() })
    }
}
