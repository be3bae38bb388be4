//! The wire protocol: frames, requests, responses and error codes. The bytes are specified
//! in `PROTOCOL.md`, "Frames and requests"; the golden vectors in `wire/tests.rs` pin them.
//!
//! The model:
//!
//! - **One request per stream.** A client opens a bidirectional QUIC stream (ALPN
//!   [`ALPN`]), writes one request frame and finishes its send side; the broker writes one
//!   response frame and finishes. Nothing else travels on a stream, so there is no
//!   multiplexing state to get wrong.
//! - **Frame = length, header, payload.** A `u32` length, a `u32` header length, the
//!   bincode-encoded header (the configuration is in `PROTOCOL.md`), then the payload:
//!   raw record batches, exactly as the producer built them or the log stores them, never
//!   re-encoded. Only `Produce` requests and `Fetch` responses have a payload.
//! - **Bounded, validated decoding.** [`read_frame_len`] bounds a read before the transport
//!   allocates; [`decode_request`] and [`decode_response`] check the header length, decode
//!   with bounded reservations, reject trailing bytes, then check every field against
//!   [`FrameLimits`]. Every failure is a [`FrameError`], and
//!   [`FrameError::to_error_body`] is what the broker answers with.
//! - **Encoders check what decoders check.** The `encode_*` functions run the same
//!   validation, so a client learns locally that a broker would refuse its frame.
//!
//! ```
//! use sluice_proto::wire::*;
//!
//! let limits = FrameLimits::default();
//! let header = RequestHeader::new(7, "docs");
//! let frame = encode_request(&header, &Request::ListTopics, &[], &limits).unwrap();
//!
//! // The transport reads the 4-byte length, bounds its read by it, then decodes the rest.
//! let (prefix, rest) = frame.split_first_chunk::<4>().unwrap();
//! assert_eq!(read_frame_len(*prefix, &limits).unwrap(), rest.len());
//! let (h, request, payload) = decode_request(rest, &limits).unwrap();
//! assert_eq!((h, request, payload), (header, Request::ListTopics, &[][..]));
//! ```

mod error;
mod message;
mod validate;

pub use error::*;
pub use message::*;
pub use validate::validate_topic_name;

use crate::batch::{self, Limits};
use crate::codec;

/// The only `RequestHeader::api_version` this crate speaks.
pub const API_VERSION: u16 = 1;

/// The TLS ALPN protocol id of this protocol version.
pub const ALPN: &[u8] = b"sluice/1";

/// The largest UDP payload Sluice's QUIC endpoints accept from a peer and search for
/// with path MTU discovery. On a path with a smaller MTU (1500-byte Ethernet) discovery
/// settles below it by itself (QUIC's usual ceiling is 1452).
///
/// Bounded by segmentation offload: quinn hands the kernel up to
/// [`QUIC_GSO_SEGMENTS_MAX`] datagrams per `sendmsg` (UDP GSO), and the kernel refuses a
/// batch past one IP datagram's 65,507 bytes of payload, after which quinn-udp turns
/// GSO off for the socket for good and sends every packet with its own system call.
/// That is what sank the larger sizes tried before (a jumbo frame's 8952: RF=3 39–45k
/// msgs/s, p99 136–141 ms, against 55–61k at 4000; 16000: load generator CPU +40%).
/// Within the bound, larger packets pay: 6400 against 4000 (single node, full speed, 1M
/// records, three interleaved pairs) cost the broker 2.02–2.09 s of CPU against
/// 2.24–2.42 s and the load generator 1.46–1.53 s against 1.58–1.66 s; 16000 in
/// batches capped at 64 KiB (a throwaway socket wrapper) did no better than 6400.
pub const UDP_PAYLOAD_MAX: u16 = 6400;

/// Datagrams quinn (0.11) puts into one UDP GSO batch at most (its
/// `MAX_TRANSMIT_SEGMENTS`); see [`UDP_PAYLOAD_MAX`].
pub const QUIC_GSO_SEGMENTS_MAX: usize = 10;

/// The largest UDP payload of one IPv4 datagram: what a GSO batch may carry in all.
pub const UDP_DATAGRAM_PAYLOAD_MAX: usize = 65_507;

const _: () = assert!(
    UDP_PAYLOAD_MAX as usize * QUIC_GSO_SEGMENTS_MAX <= UDP_DATAGRAM_PAYLOAD_MAX,
    "a full GSO batch of the largest packets must fit one UDP datagram"
);

/// The send and receive buffer each QUIC endpoint asks of its UDP socket (the kernel
/// caps it at `net.core.rmem_max` / `wmem_max` unless the process may force past them:
/// `sluice_quic::bind_udp`). At the 208 KiB Linux default, bursts (a produce of a few
/// hundred KiB, a fetch, a leader's appends to a follower) overflowed the receive
/// buffer: 578–816 datagrams dropped per 300k-message RF=3 run, each costing a loss
/// recovery (p99 54–66 ms against 38–45 ms with 4 MiB). At 4 MiB a single broker at full
/// speed (four producers, 4096 records in flight each) still lost 123–380 packets per
/// connection per 1M records, in 2–6 congestion events; at 16 MiB none. The kernel
/// charges a socket for what it holds, not for this size.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 16 << 20;

// QUIC application error codes: stream resets / STOP_SENDING and CONNECTION_CLOSE reasons.
// Stable; never renumbered.

/// Normal close: a client done with its connection, a broker that has drained.
pub const APP_NO_ERROR: u32 = 0;
/// Stream: the frame on it is malformed and the broker will not read further (e.g. a length
/// over the limit, or bytes after the frame). The broker still answers with an `Error`
/// response first when the stream's send side is open.
pub const STREAM_ERROR_MALFORMED: u32 = 1;
/// Connection: the peer broke the protocol at connection level (a unidirectional stream, a
/// stream opened by the broker side, or repeated malformed streams).
pub const CONNECTION_ERROR_PROTOCOL: u32 = 2;
/// Stream: refused unread because the connection has too many requests in flight.
pub const STREAM_ERROR_TOO_MANY: u32 = 3;
/// Stream: the request frame did not arrive complete in time.
pub const STREAM_ERROR_TIMEOUT: u32 = 4;
/// Stream: the client gave up on the request (its future was dropped).
pub const STREAM_ERROR_CANCELLED: u32 = 5;
/// Connection: the broker is shutting down and has answered or refused what was in flight.
pub const CONNECTION_ERROR_SHUTDOWN: u32 = 6;

/// Bytes of the frame length prefix.
pub const FRAME_LEN_BYTES: usize = 4;
/// Bytes of the header length field that starts every frame (after the prefix).
pub const HEADER_LEN_BYTES: usize = 4;

/// Longest topic name any broker accepts (as Kafka: it must fit a file name with a
/// partition suffix).
pub const NAME_BYTES_MAX: u32 = 249;

/// Header bytes of a successful `Fetch` response: `ResponseHeader` (8), the `Response`
/// variant (4), `Ok` (4) and `FetchOk` (8 + 8 + 8 + 4).
pub const FETCH_OK_HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8 + 4;

/// A request whose header names one maximal topic and client id needs at most this many
/// header bytes on top of those two strings: the `RequestHeader` fields and string length
/// (2 + 8 + 8), the variant (4), the name's length (8), and the largest fixed fields
/// (`Fetch`: 4 + 8 + 4 + 4; `CreateTopic`: 4 + 3 * 9).
const ONE_NAME_REQUEST_OVERHEAD_BYTES: usize = 2 + 8 + 8 + 4 + 8 + 31;

/// Upper bounds the wire codec enforces. Both ends need not agree: a broker refuses what
/// exceeds its own limits. Lengths are bytes; counts are elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame, counted after the length prefix (header length field, header and
    /// payload).
    pub frame_bytes_max: u32,
    /// Largest header (bincode part) of a request frame: what a broker decodes from a
    /// client before anything else is checked.
    pub header_bytes_max: u32,
    /// Largest header of a response frame. Larger than requests' because a `Metadata` or
    /// `ListTopics` answer grows with the cluster.
    pub response_header_bytes_max: u32,
    /// Longest topic name; at most [`NAME_BYTES_MAX`].
    pub name_bytes_max: u32,
    /// Most topics named in a `Metadata` request or listed in a response.
    pub topics_max: u32,
    /// Most partitions of one topic; every partition number is below it.
    pub partitions_max: u32,
    /// Most brokers in a response, and replicas of one partition.
    pub nodes_max: u32,
    /// Longest `RequestHeader::client_id`.
    pub client_id_bytes_max: u32,
    /// Longest other string: error messages, broker addresses, the cluster id.
    pub string_bytes_max: u32,
    /// Longest `Produce::timeout_ms` and `Fetch::max_wait_ms`.
    pub wait_ms_max: u32,
}

impl FrameLimits {
    /// The defaults, usable in `const` context.
    pub const DEFAULT: FrameLimits = FrameLimits {
        frame_bytes_max: 32 << 20,
        header_bytes_max: 64 << 10,
        response_header_bytes_max: 4 << 20,
        name_bytes_max: NAME_BYTES_MAX,
        topics_max: 16_384,
        partitions_max: 4_096,
        nodes_max: 1_024,
        client_id_bytes_max: 256,
        string_bytes_max: 4_096,
        wait_ms_max: 300_000,
    };

    /// Checks the relations between the limits, against the record-batch `batch` limits the
    /// frames must carry. The defaults pass (a compile-time assertion); a broker calls this
    /// on its configured limits at start.
    pub const fn check(&self, batch: &Limits) -> Result<(), &'static str> {
        let frame = self.frame_bytes_max as usize;
        let request_header = self.header_bytes_max as usize;
        let response_header = self.response_header_bytes_max as usize;
        let batch_max = batch.batch_bytes_max as usize;
        if self.frame_bytes_max > u32::MAX - FRAME_LEN_BYTES as u32 {
            return Err("frame_bytes_max must leave room for the length prefix in a u32");
        }
        // A produce request with a maximal batch and a maximal header fits in a frame.
        if HEADER_LEN_BYTES + request_header + batch_max > frame {
            return Err("frame_bytes_max must hold header_bytes_max plus a maximal batch");
        }
        // A fetch response can always carry at least one maximal batch.
        if HEADER_LEN_BYTES + FETCH_OK_HEADER_BYTES + batch_max > frame {
            return Err("frame_bytes_max must hold a fetch response with a maximal batch");
        }
        if HEADER_LEN_BYTES + response_header > frame {
            return Err("frame_bytes_max must hold response_header_bytes_max");
        }
        if request_header > codec::INPUT_BYTES_MAX || response_header > codec::INPUT_BYTES_MAX {
            return Err("header limits must not exceed the codec's input bound");
        }
        if self.name_bytes_max == 0 || self.name_bytes_max > NAME_BYTES_MAX {
            return Err("name_bytes_max must be in 1..=249");
        }
        if self.partitions_max == 0 || self.topics_max == 0 || self.nodes_max == 0 {
            return Err("count limits must be positive");
        }
        // Any single-topic request with a maximal client id fits in a request header.
        if ONE_NAME_REQUEST_OVERHEAD_BYTES
            + self.client_id_bytes_max as usize
            + self.name_bytes_max as usize
            > request_header
        {
            return Err("header_bytes_max must hold a request with a maximal name and client id");
        }
        // An error built by `ErrorBody::new` is always within bounds, and a response carrying
        // one fits in a response header with room to spare.
        if (self.string_bytes_max as usize) < ERROR_MESSAGE_BYTES_MAX {
            return Err("string_bytes_max must admit ERROR_MESSAGE_BYTES_MAX");
        }
        if 4 * self.string_bytes_max as usize > response_header {
            return Err("response_header_bytes_max must hold a few maximal strings");
        }
        Ok(())
    }

    /// The most payload bytes a `Fetch` response can carry within `frame_bytes_max`. A
    /// broker fills at most `min(max_bytes, this)`, except that it always returns the first
    /// batch whole (which `check` guarantees fits).
    pub const fn fetch_payload_bytes_max(&self) -> usize {
        (self.frame_bytes_max as usize).saturating_sub(HEADER_LEN_BYTES + FETCH_OK_HEADER_BYTES)
    }
}

const _: () = assert!(FrameLimits::DEFAULT.check(&Limits::DEFAULT).is_ok());
// The frame must exceed a maximal batch with room for a header, as the batch limit is 16 MiB.
const _: () = assert!(FrameLimits::DEFAULT.frame_bytes_max > Limits::DEFAULT.batch_bytes_max);
// Both length fields are u32s; the layout tables in PROTOCOL.md say so.
const _: () = assert!(FRAME_LEN_BYTES == 4 && HEADER_LEN_BYTES == 4);

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits::DEFAULT
    }
}

/// Why a frame was refused. [`to_error_body`](Self::to_error_body) is the broker's answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame, or its header, is longer than its limit.
    #[error("frame too large: {len} bytes, limit {max}")]
    TooLarge { len: usize, max: usize },
    /// Fewer bytes than a length field says follow.
    #[error("truncated frame: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    /// The header is not a valid encoding of the expected types (an unknown variant, a
    /// string that is not UTF-8, a length that runs past the header, ...).
    #[error("bad frame header: {reason}")]
    BadHeader { reason: String },
    /// Bytes after the value they should end with (the header after the request or
    /// response, or the stream after the frame).
    #[error("trailing bytes after the frame or header")]
    TrailingBytes,
    /// Decoded, but a field breaks a rule or a limit.
    #[error("invalid frame: {reason}")]
    Invalid { reason: &'static str },
    /// A topic name that breaks the naming rules.
    #[error("invalid topic name: {reason}")]
    InvalidTopicName { reason: &'static str },
    /// A request `api_version` this crate does not speak.
    #[error("unsupported api version {version} (this broker speaks {API_VERSION})")]
    UnsupportedVersion { version: u16 },
}

impl FrameError {
    /// The code a broker answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
            FrameError::Truncated { .. }
            | FrameError::BadHeader { .. }
            | FrameError::TrailingBytes
            | FrameError::Invalid { .. } => ErrorCode::InvalidRequest,
        }
    }

    /// What a broker answers a request frame that failed to decode with, as
    /// `Response::Error` (all of these are definite: nothing was dispatched).
    pub fn to_error_body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }
}

const fn invalid(reason: &'static str) -> FrameError {
    FrameError::Invalid { reason }
}

/// The frame length from its 4-byte prefix: how many bytes the transport must read next.
/// `TooLarge` above `frame_bytes_max`, so a transport never allocates for a lie; a length
/// too short to hold the header length field is `Truncated`.
pub fn read_frame_len(prefix: [u8; 4], limits: &FrameLimits) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix);
    if len > limits.frame_bytes_max {
        return Err(FrameError::TooLarge {
            len: len as usize,
            max: limits.frame_bytes_max as usize,
        });
    }
    let len = len as usize;
    if len < HEADER_LEN_BYTES {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN_BYTES,
            have: len,
        });
    }
    Ok(len)
}

/// For a transport that reads a whole stream: checks that `stream` is exactly one frame
/// (prefix included) and returns the frame after the prefix, for `decode_*`.
pub fn split_frame<'a>(stream: &'a [u8], limits: &FrameLimits) -> Result<&'a [u8], FrameError> {
    let (prefix, rest) =
        stream
            .split_first_chunk::<FRAME_LEN_BYTES>()
            .ok_or(FrameError::Truncated {
                needed: FRAME_LEN_BYTES,
                have: stream.len(),
            })?;
    let len = read_frame_len(*prefix, limits)?;
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(FrameError::Truncated {
            needed: FRAME_LEN_BYTES + len,
            have: stream.len(),
        }),
        std::cmp::Ordering::Greater => Err(FrameError::TrailingBytes),
        std::cmp::Ordering::Equal => Ok(rest),
    }
}

/// The `request_id` of a request frame (after the prefix) if its header is long enough to
/// hold one, without decoding or validating anything else: what a broker echoes when it
/// answers a frame that failed to decode. Header bytes `2..10` hold it in every version.
pub fn request_id_hint(frame: &[u8]) -> Option<u64> {
    let (header_len, rest) = frame.split_first_chunk::<HEADER_LEN_BYTES>()?;
    if u32::from_le_bytes(*header_len) < 10 {
        return None;
    }
    let id = rest.get(2..10)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*id))
}

/// Splits a frame (after the prefix) into header bytes and payload.
fn split_header(
    frame: &[u8],
    frame_bytes_max: u32,
    header_bytes_max: u32,
) -> Result<(&[u8], &[u8]), FrameError> {
    if frame.len() > frame_bytes_max as usize {
        return Err(FrameError::TooLarge {
            len: frame.len(),
            max: frame_bytes_max as usize,
        });
    }
    let (header_len, rest) =
        frame
            .split_first_chunk::<HEADER_LEN_BYTES>()
            .ok_or(FrameError::Truncated {
                needed: HEADER_LEN_BYTES,
                have: frame.len(),
            })?;
    let header_len = u32::from_le_bytes(*header_len);
    if header_len > header_bytes_max {
        return Err(FrameError::TooLarge {
            len: header_len as usize,
            max: header_bytes_max as usize,
        });
    }
    let header_len = header_len as usize;
    rest.split_at_checked(header_len)
        .ok_or(FrameError::Truncated {
            needed: HEADER_LEN_BYTES + header_len,
            have: frame.len(),
        })
}

/// Decodes `H` then `B` filling `header` exactly.
fn decode_header<H, B>(header: &[u8], limit: usize) -> Result<(H, B), FrameError>
where
    H: codec::Wire,
    B: codec::Wire,
{
    let (h, used) = codec::decode_prefix::<H>(header, limit)?;
    let body = codec::decode::<B>(header.get(used..).unwrap_or_default(), limit)?;
    Ok((h, body))
}

/// Encodes prefix, header length, `H` and `B`, for a frame whose payload of `payload_len`
/// bytes follows. Checks the header and frame limits.
fn encode_head<H, B>(
    h: &H,
    body: &B,
    payload_len: usize,
    payload_capacity: usize,
    frame_bytes_max: u32,
    header_bytes_max: u32,
) -> Result<Vec<u8>, FrameError>
where
    H: codec::Wire,
    B: codec::Wire,
{
    const HEADER_AT: usize = FRAME_LEN_BYTES + HEADER_LEN_BYTES;
    let mut out = Vec::with_capacity(HEADER_AT + 64 + payload_capacity);
    out.extend_from_slice(&[0; HEADER_AT]);
    codec::encode_into(h, &mut out)?;
    codec::encode_into(body, &mut out)?;
    let header_len = out.len() - HEADER_AT;
    if header_len > header_bytes_max as usize {
        return Err(FrameError::TooLarge {
            len: header_len,
            max: header_bytes_max as usize,
        });
    }
    let frame_len = HEADER_LEN_BYTES
        .saturating_add(header_len)
        .saturating_add(payload_len);
    if frame_len > frame_bytes_max as usize {
        return Err(FrameError::TooLarge {
            len: frame_len,
            max: frame_bytes_max as usize,
        });
    }
    // Both fit in a u32: they are bounded by `frame_bytes_max`.
    let (prefix, _) = out
        .split_first_chunk_mut::<HEADER_AT>()
        .ok_or(invalid("frame buffer shorter than its fixed fields"))?;
    let (frame_len_field, header_len_field) = prefix.split_at_mut(FRAME_LEN_BYTES);
    frame_len_field.copy_from_slice(&(frame_len as u32).to_le_bytes());
    header_len_field.copy_from_slice(&(header_len as u32).to_le_bytes());
    Ok(out)
}

fn check_request(
    header: &RequestHeader,
    request: &Request,
    payload_len: usize,
    limits: &FrameLimits,
) -> Result<(), FrameError> {
    if header.api_version != API_VERSION {
        return Err(FrameError::UnsupportedVersion {
            version: header.api_version,
        });
    }
    validate::request_header(header, limits)?;
    validate::request(request, limits)?;
    match (request.has_payload(), payload_len) {
        (true, 0) => Err(invalid("produce request without a batch")),
        (false, 1..) => Err(invalid("payload on a request that carries none")),
        _ => Ok(()),
    }
}

fn check_response(
    response: &Response,
    payload_len: usize,
    limits: &FrameLimits,
) -> Result<(), FrameError> {
    validate::response(response, limits)?;
    match response {
        Response::Fetch(Ok(ok)) if ok.batches > 0 => {
            if payload_len == 0 {
                return Err(invalid("fetch response counts batches but has no payload"));
            }
            if (ok.batches as usize).saturating_mul(batch::HEADER_LEN) > payload_len {
                return Err(invalid("more batches than the fetch payload can hold"));
            }
            Ok(())
        }
        _ if payload_len > 0 => Err(invalid("payload on a response that carries none")),
        _ => Ok(()),
    }
}

/// Encodes a whole request frame, length prefix included: what a client writes before
/// finishing its stream. `payload` is the produce request's one batch, empty otherwise.
pub fn encode_request(
    header: &RequestHeader,
    request: &Request,
    payload: &[u8],
    limits: &FrameLimits,
) -> Result<Vec<u8>, FrameError> {
    check_request(header, request, payload.len(), limits)?;
    let mut out = encode_head(
        header,
        request,
        payload.len(),
        payload.len(),
        limits.frame_bytes_max,
        limits.header_bytes_max,
    )?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// Like [`encode_request`] without copying the payload: returns the frame up to the end of
/// the header, for a transport that then writes the `payload_len` payload bytes itself.
pub fn encode_request_head(
    header: &RequestHeader,
    request: &Request,
    payload_len: usize,
    limits: &FrameLimits,
) -> Result<Vec<u8>, FrameError> {
    check_request(header, request, payload_len, limits)?;
    encode_head(
        header,
        request,
        payload_len,
        0,
        limits.frame_bytes_max,
        limits.header_bytes_max,
    )
}

/// Decodes and validates a request frame. `frame` is the frame **after** its length prefix
/// (what [`read_frame_len`] said to read, or what [`split_frame`] returns). Returns the
/// header, the request and the payload (a sub-slice of `frame`: the produce batch, not yet
/// validated as a batch; empty for every other kind).
///
/// The `api_version` is checked first, from the header's first two bytes, so a frame of
/// another version is `UnsupportedVersion` however the rest of it is laid out.
pub fn decode_request<'a>(
    frame: &'a [u8],
    limits: &FrameLimits,
) -> Result<(RequestHeader, Request, &'a [u8]), FrameError> {
    let (header_bytes, payload) =
        split_header(frame, limits.frame_bytes_max, limits.header_bytes_max)?;
    let (header, request) = decode_request_header(header_bytes, payload.len(), limits)?;
    Ok((header, request, payload))
}

/// The request header and body from a frame's header bytes, checked against a payload
/// of `payload_len` bytes.
fn decode_request_header(
    header_bytes: &[u8],
    payload_len: usize,
    limits: &FrameLimits,
) -> Result<(RequestHeader, Request), FrameError> {
    if let Some(version) = header_bytes.first_chunk::<2>() {
        let version = u16::from_le_bytes(*version);
        if version != API_VERSION {
            return Err(FrameError::UnsupportedVersion { version });
        }
    }
    let (header, request): (RequestHeader, Request) =
        decode_header(header_bytes, limits.header_bytes_max as usize)?;
    check_request(&header, &request, payload_len, limits)?;
    Ok((header, request))
}

/// How many bytes of a request frame (after its prefix) [`decode_request_head`] needs
/// in front of the payload, read off the frame's first bytes: `None` while fewer than
/// `HEADER_LEN_BYTES` are there, or when the header length they give exceeds
/// `limits.header_bytes_max` or does not fit in `frame_len` (such a frame does not
/// decode: keep it whole and let [`decode_request`] say why).
pub fn request_head_len(first: &[u8], frame_len: usize, limits: &FrameLimits) -> Option<usize> {
    let header_len = u32::from_le_bytes(*first.first_chunk::<HEADER_LEN_BYTES>()?);
    if header_len > limits.header_bytes_max {
        return None;
    }
    let head = HEADER_LEN_BYTES + header_len as usize;
    (head <= frame_len).then_some(head)
}

/// [`decode_request`] for a frame received in two buffers: `head`, its first
/// [`request_head_len`] bytes, and the payload after them, of which only the length is
/// needed (so a receiver can read the payload straight into its own buffer and hand
/// it on without moving it). Decides exactly what `decode_request` decides for the
/// whole frame. A `head` of any other length is decoded as the whole frame when
/// `payload_len` is 0, and refused as truncated otherwise.
pub fn decode_request_head(
    head: &[u8],
    payload_len: usize,
    limits: &FrameLimits,
) -> Result<(RequestHeader, Request), FrameError> {
    if payload_len == 0 {
        return decode_request(head, limits).map(|(h, r, _)| (h, r));
    }
    let len = head.len().saturating_add(payload_len);
    if request_head_len(head, len, limits) != Some(head.len()) {
        return Err(FrameError::Truncated {
            needed: head.len() + 1,
            have: head.len(),
        });
    }
    if len > limits.frame_bytes_max as usize {
        return Err(FrameError::TooLarge {
            len,
            max: limits.frame_bytes_max as usize,
        });
    }
    let header_bytes = head.get(HEADER_LEN_BYTES..).unwrap_or_default();
    decode_request_header(header_bytes, payload_len, limits)
}

/// Encodes a whole response frame, length prefix included: what a broker writes before
/// finishing its stream. `payload` is a successful fetch's concatenated batches, empty
/// otherwise.
pub fn encode_response(
    header: &ResponseHeader,
    response: &Response,
    payload: &[u8],
    limits: &FrameLimits,
) -> Result<Vec<u8>, FrameError> {
    check_response(response, payload.len(), limits)?;
    let mut out = encode_head(
        header,
        response,
        payload.len(),
        payload.len(),
        limits.frame_bytes_max,
        limits.response_header_bytes_max,
    )?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// Like [`encode_response`] without the payload: the frame up to the end of the header,
/// for a broker that then writes the stored batches (`payload_len` bytes in all) straight
/// from the log.
pub fn encode_response_head(
    header: &ResponseHeader,
    response: &Response,
    payload_len: usize,
    limits: &FrameLimits,
) -> Result<Vec<u8>, FrameError> {
    check_response(response, payload_len, limits)?;
    encode_head(
        header,
        response,
        payload_len,
        0,
        limits.frame_bytes_max,
        limits.response_header_bytes_max,
    )
}

/// Decodes and validates a response frame (after its length prefix, as for
/// [`decode_request`]). The payload is a sub-slice of `frame`: for a successful fetch, the
/// batches to read with [`crate::batch::batches`], which validates each one.
pub fn decode_response<'a>(
    frame: &'a [u8],
    limits: &FrameLimits,
) -> Result<(ResponseHeader, Response, &'a [u8]), FrameError> {
    let (header_bytes, payload) = split_header(
        frame,
        limits.frame_bytes_max,
        limits.response_header_bytes_max,
    )?;
    let (header, response): (ResponseHeader, Response) =
        decode_header(header_bytes, limits.response_header_bytes_max as usize)?;
    check_response(&response, payload.len(), limits)?;
    Ok((header, response, payload))
}

#[cfg(test)]
mod tests;
