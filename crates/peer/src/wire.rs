//! The peer protocol's bytes: ALPN, the hello, frames, and the QUIC error codes.
//!
//! ```text
//! hello (bi, the dialer's first stream):  node id: u64 LE then FIN  →  FIN (accepted)
//! raft stream (uni, any number):          ( len: u32 LE | len bytes )* then FIN
//! forward stream (bi, any number):        request bytes then FIN  →  answer bytes then FIN
//! ```
//!
//! The acceptor answers the hello (an empty stream) once the client certificate names the
//! claimed node; a refusal closes the connection with [`CONNECTION_ERROR_IDENTITY`]. The
//! dialer opens no other stream before the answer.
//!
//! Readers bound every length by `frame_bytes_max` before allocating, and stop a stream
//! that delivers nothing for `stream_stall_timeout`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{ReadError, RecvStream, SendStream, VarInt, WriteError};

/// The ALPN of peer links; both sides require it.
pub const ALPN: &[u8] = b"sluice-peer/1";

/// Bytes of a frame's length prefix (`u32`, little-endian).
pub const FRAME_HEADER_BYTES: usize = 4;
/// Bytes of the hello (the dialer's node id, `u64` little-endian).
pub const HELLO_BYTES: usize = 8;

/// Connection close: the hello was missing or malformed, the client certificate does not
/// name the node the hello claims, or the dialer claimed the acceptor's own id.
pub const CONNECTION_ERROR_IDENTITY: u32 = 1;
/// Connection close: the node is shutting down.
pub const CONNECTION_ERROR_SHUTDOWN: u32 = 2;
/// Connection close: the dialer redials (the peer's address changed) or stops (the peer
/// was removed).
pub const CONNECTION_ERROR_REDIAL: u32 = 3;

/// Stream stop: a frame or the stream ended inside a frame (truncated input).
pub const STREAM_ERROR_MALFORMED: u32 = 1;
/// Stream stop or reset: a length over `frame_bytes_max`.
pub const STREAM_ERROR_TOO_LARGE: u32 = 2;
/// Stream stop: nothing arrived for `stream_stall_timeout`.
pub const STREAM_ERROR_STALLED: u32 = 3;
/// Stream reset: the writer gave up before the end (cancelled, failed, shutting down);
/// what arrived is not whole.
pub const STREAM_ERROR_CANCELLED: u32 = 4;

/// The length prefix of a frame of `len` bytes.
pub fn frame_header(len: u32) -> [u8; FRAME_HEADER_BYTES] {
    len.to_le_bytes()
}

/// The hello a dialer sends as node `node_id`.
pub fn encode_hello(node_id: u64) -> [u8; HELLO_BYTES] {
    node_id.to_le_bytes()
}

/// The node id a hello claims; `None` unless it is exactly [`HELLO_BYTES`] long.
pub fn decode_hello(bytes: &[u8]) -> Option<u64> {
    let bytes: [u8; HELLO_BYTES] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A send stream that is reset with [`STREAM_ERROR_CANCELLED`], not finished, if dropped
/// before [`Outgoing::finish`] (quinn finishes a dropped stream): a reader must never take
/// a cut-short request, answer or batch for a whole one, whether the writer was cancelled,
/// failed or panicked.
#[derive(Debug)]
pub(crate) struct Outgoing(Option<SendStream>);

impl Outgoing {
    pub(crate) fn new(stream: SendStream) -> Outgoing {
        Outgoing(Some(stream))
    }

    /// Writes `chunks` in order and finishes the stream.
    pub(crate) async fn finish(mut self, chunks: &mut [Bytes]) -> Result<(), WriteError> {
        let stream = self.0.as_mut().ok_or(WriteError::ClosedStream)?;
        stream.write_all_chunks(chunks).await?;
        stream.finish()?;
        // Finished: dropping it now keeps the data flowing.
        self.0 = None;
        Ok(())
    }

    /// Writes `chunks` in order and keeps the stream open for more; on an error the
    /// stream is dropped (reset).
    pub(crate) async fn write(mut self, chunks: &mut [Bytes]) -> Result<Outgoing, WriteError> {
        let stream = self.0.as_mut().ok_or(WriteError::ClosedStream)?;
        stream.write_all_chunks(chunks).await?;
        Ok(self)
    }

    /// Resets the stream with `code`.
    pub(crate) fn reset(mut self, code: u32) {
        if let Some(mut stream) = self.0.take() {
            let _ = stream.reset(VarInt::from_u32(code));
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let Some(mut stream) = self.0.take() {
            let _ = stream.reset(VarInt::from_u32(STREAM_ERROR_CANCELLED));
        }
    }
}

/// Why reading a stream stopped before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("{bytes} bytes is over the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("nothing arrived for {0:?}")]
    Stalled(Duration),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl StreamError {
    /// The code to stop the stream with, when the stream is still open.
    pub(crate) fn stop_code(&self) -> Option<u32> {
        match self {
            StreamError::TooLarge { .. } => Some(STREAM_ERROR_TOO_LARGE),
            StreamError::Truncated => Some(STREAM_ERROR_MALFORMED),
            StreamError::Stalled(_) => Some(STREAM_ERROR_STALLED),
            StreamError::Read(_) => None,
        }
    }
}

/// The next chunk of at most `max` bytes, `None` at the end of the stream. A `stall` of
/// `Duration::MAX` waits for ever (the caller bounds the whole read).
async fn next_chunk(
    recv: &mut RecvStream,
    max: usize,
    stall: Duration,
) -> Result<Option<Bytes>, StreamError> {
    match tokio::time::timeout(stall, recv.read_chunk(max, true)).await {
        Ok(chunk) => Ok(chunk?.map(|chunk| chunk.bytes)),
        Err(_) => Err(StreamError::Stalled(stall)),
    }
}

/// Reads exactly `len` bytes; `Ok(None)` if the stream ends before the first byte.
/// The first bytes may take up to `first_stall` to come, each later chunk `stall`.
async fn read_exact(
    recv: &mut RecvStream,
    len: usize,
    first_stall: Duration,
    stall: Duration,
) -> Result<Option<Bytes>, StreamError> {
    let Some(first) = next_chunk(recv, len, first_stall).await? else {
        return Ok(if len == 0 { Some(Bytes::new()) } else { None });
    };
    if first.len() == len {
        return Ok(Some(first));
    }
    let mut buf = BytesMut::with_capacity(len);
    buf.extend_from_slice(&first);
    while buf.len() < len {
        let want = len - buf.len();
        match next_chunk(recv, want, stall).await? {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => return Err(StreamError::Truncated),
        }
    }
    Ok(Some(buf.freeze()))
}

/// The next length-prefixed frame of a raft stream, `Ok(None)` at its clean end (the end of
/// the stream between two frames).
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    frame_bytes_max: usize,
    stall: Duration,
) -> Result<Option<Bytes>, StreamError> {
    // Between frames a raft stream may rest as long as the connection lives (the
    // sender keeps one stream open per connection); inside a frame, `stall` applies.
    let Some(header) = read_exact(recv, FRAME_HEADER_BYTES, Duration::MAX, stall).await? else {
        return Ok(None);
    };
    let header: [u8; FRAME_HEADER_BYTES] = header
        .as_ref()
        .try_into()
        .map_err(|_| StreamError::Truncated)?;
    let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
    if len > frame_bytes_max {
        return Err(StreamError::TooLarge {
            bytes: len,
            max: frame_bytes_max,
        });
    }
    match read_exact(recv, len, stall, stall).await? {
        Some(frame) => Ok(Some(frame)),
        None => Err(StreamError::Truncated),
    }
}

/// The rest of the stream, at most `bytes_max` bytes.
pub(crate) async fn read_to_end(
    recv: &mut RecvStream,
    bytes_max: usize,
    stall: Duration,
) -> Result<Bytes, StreamError> {
    let mut chunks = Vec::new();
    let mut total = 0usize;
    // Asking for one byte more than allowed tells an over-long stream from a full one.
    while let Some(chunk) = next_chunk(
        recv,
        bytes_max.saturating_add(1).saturating_sub(total),
        stall,
    )
    .await?
    {
        total = total.saturating_add(chunk.len());
        if total > bytes_max {
            return Err(StreamError::TooLarge {
                bytes: total,
                max: bytes_max,
            });
        }
        chunks.push(chunk);
    }
    if chunks.len() == 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut buf = BytesMut::with_capacity(total);
    for chunk in chunks {
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire is a contract: these bytes change only with the ALPN version.
    #[test]
    fn golden_bytes() {
        assert_eq!(ALPN, b"sluice-peer/1");
        assert_eq!(frame_header(5), [5, 0, 0, 0]);
        assert_eq!(frame_header(0x0102_0304), [4, 3, 2, 1]);
        assert_eq!(encode_hello(2), [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode_hello(&[3, 0, 0, 0, 0, 0, 0, 1]),
            Some(0x0100_0000_0000_0003)
        );
        assert_eq!(decode_hello(&encode_hello(u64::MAX)), Some(u64::MAX));
        assert_eq!(decode_hello(&[1, 2, 3]), None);
        assert_eq!(decode_hello(&[0; 9]), None);
    }
}
