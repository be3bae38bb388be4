//! One request stream: read a bounded frame, decode and validate it, dispatch it to the
//! service, write the response, wait for it to be acknowledged.
//!
//! Every way a stream can go wrong ends in exactly one of these, and never touches the
//! connection's other streams:
//!
//! | what arrived                                   | the gateway                                 |
//! |------------------------------------------------|---------------------------------------------|
//! | a frame that decodes                           | dispatches it, answers the service's reply  |
//! | a frame that does not decode or validate       | answers `Error` (request id from the header when it is there), finishes |
//! | a length prefix over `frame_bytes_max` / under 4 | stops reading (`STREAM_ERROR_MALFORMED`), answers `Error`, finishes |
//! | bytes after the frame                          | stops reading (`STREAM_ERROR_MALFORMED`), answers `Error`, finishes |
//! | the stream finished inside the prefix or frame | answers `Error` (`InvalidRequest`, truncated), finishes |
//! | nothing complete within `stream_read_timeout`  | stops and resets with `STREAM_ERROR_TIMEOUT` |
//! | the client reset its side                      | resets with `STREAM_ERROR_CANCELLED`         |
//! | a shutdown began before dispatch               | stops and resets with `CONNECTION_ERROR_SHUTDOWN` (refused) |
//!
//! A request counts as in flight from dispatch until its response is acknowledged by the
//! client's QUIC stack, so a shutdown never closes a connection on an answer that has not
//! arrived.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quinn::{ReadError, ReadExactError, RecvStream, SendStream, VarInt, WriteError};
use sluice_proto::wire::{
    decode_request_head, encode_response, encode_response_head, read_frame_len, request_head_len,
    request_id_hint, ErrorBody, ErrorCode, FrameError, RequestKind, Response, ResponseHeader,
    CONNECTION_ERROR_SHUTDOWN, FRAME_LEN_BYTES, HEADER_LEN_BYTES, STREAM_ERROR_CANCELLED,
    STREAM_ERROR_MALFORMED, STREAM_ERROR_TIMEOUT,
};
use tokio::sync::OwnedSemaphorePermit;

use crate::server::{until_interrupt, until_not_running, ConnCtx, Phase};
use crate::service::{Reply, Service};
use crate::stats::GatewayStats;

/// How reading a request frame ended.
enum ReadOutcome {
    /// A whole frame (after its prefix), the stream finished right after it, with the
    /// budget it claimed.
    Frame {
        /// The frame's header length and header ([`request_head_len`] bytes), or the
        /// whole frame when that does not decode.
        head: Vec<u8>,
        /// The rest of the frame: the payload.
        payload: Vec<u8>,
        _permits: Permits,
    },
    /// The frame is bad; answer `error`. `stop`: the stream still has unread bytes.
    Answer {
        error: FrameError,
        request_id: u64,
        stop: bool,
    },
    /// The client reset its send side.
    Cancelled,
    /// The connection is gone.
    Lost,
    TimedOut,
    Draining,
}

/// Budget claimed for one frame, released when the request's handler returns.
struct Permits {
    _connection: OwnedSemaphorePermit,
    _gateway: OwnedSemaphorePermit,
}

struct OpenStream(Arc<GatewayStats>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// Marks a dispatched request answered (in the stats) when dropped.
struct Answered(Arc<GatewayStats>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.answered();
    }
}

fn code(c: u32) -> VarInt {
    VarInt::from_u32(c)
}

pub(crate) async fn serve<S: Service>(
    ctx: Arc<ConnCtx<S>>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let stats = Arc::clone(&ctx.shared.stats);
    stats.stream_opened();
    let _open = OpenStream(Arc::clone(&stats));
    let mut phase = ctx.shared.phase.subscribe();
    if *phase.borrow_and_update() != Phase::Running {
        refuse(&mut send, &mut recv, CONNECTION_ERROR_SHUTDOWN, &stats);
        return;
    }

    let read_timeout = ctx.shared.config.stream_read_timeout;
    let outcome = tokio::select! {
        read = tokio::time::timeout(read_timeout, read_request(&ctx, &mut recv)) => {
            read.unwrap_or(ReadOutcome::TimedOut)
        }
        () = until_not_running(&mut phase) => ReadOutcome::Draining,
    };
    match outcome {
        ReadOutcome::Frame {
            head,
            payload,
            _permits,
        } => {
            dispatch(&ctx, send, head, payload, _permits, phase).await;
        }
        ReadOutcome::Answer {
            error,
            request_id,
            stop,
        } => {
            if stop {
                let _ = recv.stop(code(STREAM_ERROR_MALFORMED));
                stats.stream_reset(STREAM_ERROR_MALFORMED);
            }
            tracing::debug!(request_id, %error, "malformed request stream");
            answer_error(&ctx, &mut send, request_id, error.to_error_body()).await;
            ctx.note_malformed();
        }
        ReadOutcome::Cancelled => {
            let _ = send.reset(code(STREAM_ERROR_CANCELLED));
            stats.stream_reset(STREAM_ERROR_CANCELLED);
        }
        ReadOutcome::Lost => {}
        ReadOutcome::TimedOut => {
            tracing::debug!("request frame did not arrive in time");
            let _ = recv.stop(code(STREAM_ERROR_TIMEOUT));
            let _ = send.reset(code(STREAM_ERROR_TIMEOUT));
            stats.stream_reset(STREAM_ERROR_TIMEOUT);
        }
        ReadOutcome::Draining => refuse(&mut send, &mut recv, CONNECTION_ERROR_SHUTDOWN, &stats),
    }
}

/// Refuses a stream unread: nothing was dispatched.
fn refuse(send: &mut SendStream, recv: &mut RecvStream, error: u32, stats: &GatewayStats) {
    let _ = recv.stop(code(error));
    let _ = send.reset(code(error));
    stats.stream_reset(error);
}

fn read_failed(e: ReadError) -> ReadOutcome {
    match e {
        ReadError::Reset(_) => ReadOutcome::Cancelled,
        ReadError::ConnectionLost(_)
        | ReadError::ClosedStream
        | ReadError::IllegalOrderedRead
        | ReadError::ZeroRttRejected => ReadOutcome::Lost,
    }
}

/// Reads the length prefix, bounds it by `read_frame_len` and claims that much budget
/// before allocating, reads exactly that many bytes, then requires the end of the stream.
async fn read_request<S>(ctx: &ConnCtx<S>, recv: &mut RecvStream) -> ReadOutcome {
    let stats = &ctx.shared.stats;
    let mut prefix = [0u8; FRAME_LEN_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => stats.bytes_in(FRAME_LEN_BYTES),
        Err(ReadExactError::FinishedEarly(have)) => {
            stats.bytes_in(have);
            return ReadOutcome::Answer {
                error: FrameError::Truncated {
                    needed: FRAME_LEN_BYTES,
                    have,
                },
                request_id: 0,
                stop: false,
            };
        }
        Err(ReadExactError::ReadError(e)) => return read_failed(e),
    }
    let len = match read_frame_len(prefix, ctx.shared.limits()) {
        Ok(len) => len,
        Err(error) => {
            return ReadOutcome::Answer {
                error,
                request_id: 0,
                stop: true,
            }
        }
    };
    // `read_frame_len` bounded `len` by `frame_bytes_max`, a u32.
    let claim = u32::try_from(len).unwrap_or(u32::MAX);
    let Ok(connection) = Arc::clone(&ctx.request_budget)
        .acquire_many_owned(claim)
        .await
    else {
        return ReadOutcome::Lost;
    };
    let Ok(gateway) = Arc::clone(&ctx.shared.request_budget)
        .acquire_many_owned(claim)
        .await
    else {
        return ReadOutcome::Lost;
    };
    let permits = Permits {
        _connection: connection,
        _gateway: gateway,
    };

    // The frame arrives in two buffers: its head (header length and header), then the
    // payload, read straight into the buffer the service takes over (no second copy).
    // A head whose header length does not decode keeps the whole frame, for
    // `decode_request_head` to refuse as `decode_request` would. Capacity is reserved, not touched: pages are
    // committed as bytes arrive.
    let limits = ctx.shared.limits();
    let mut head = Vec::new();
    let mut head_len = None;
    let mut payload = Vec::new();
    while head.len() + payload.len() < len {
        let in_payload = head_len.is_some_and(|h| head.len() >= h);
        let want = match head_len {
            _ if in_payload => len - head.len() - payload.len(),
            Some(h) => h - head.len(),
            None => HEADER_LEN_BYTES.saturating_sub(head.len()).max(1),
        };
        match recv.read_chunk(want, true).await {
            Ok(Some(chunk)) => {
                stats.bytes_in(chunk.bytes.len());
                if in_payload {
                    payload.extend_from_slice(&chunk.bytes);
                    continue;
                }
                head.extend_from_slice(&chunk.bytes);
                if head_len.is_none() && head.len() >= HEADER_LEN_BYTES {
                    let h = request_head_len(&head, len, limits).unwrap_or(len);
                    head_len = Some(h);
                    let reserved = if h < len {
                        payload.try_reserve_exact(len - h)
                    } else {
                        head.try_reserve_exact(len - head.len())
                    };
                    if reserved.is_err() {
                        tracing::warn!(len, "cannot allocate a request frame");
                        return ReadOutcome::Lost;
                    }
                }
            }
            Ok(None) => {
                return ReadOutcome::Answer {
                    error: FrameError::Truncated {
                        needed: FRAME_LEN_BYTES + len,
                        have: FRAME_LEN_BYTES + head.len() + payload.len(),
                    },
                    request_id: request_id_hint(&head).unwrap_or(0),
                    stop: false,
                }
            }
            Err(e) => return read_failed(e),
        }
    }
    // One frame per stream: the client finishes its side right after it.
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(None) => break,
            Ok(Some(chunk)) if chunk.bytes.is_empty() => continue,
            Ok(Some(chunk)) => {
                stats.bytes_in(chunk.bytes.len());
                return ReadOutcome::Answer {
                    error: FrameError::TrailingBytes,
                    request_id: request_id_hint(&head).unwrap_or(0),
                    stop: true,
                };
            }
            Err(e) => return read_failed(e),
        }
    }
    ReadOutcome::Frame {
        head,
        payload,
        _permits: permits,
    }
}

/// Whether a decode failure means the stream carried something that is not a Sluice
/// frame at all (as opposed to a well-formed request that breaks a limit or a rule).
fn is_garbage(e: &FrameError) -> bool {
    matches!(
        e,
        FrameError::BadHeader { .. } | FrameError::Truncated { .. } | FrameError::TrailingBytes
    )
}

async fn dispatch<S: Service>(
    ctx: &ConnCtx<S>,
    mut send: SendStream,
    head: Vec<u8>,
    payload: Vec<u8>,
    permits: Permits,
    mut phase: tokio::sync::watch::Receiver<Phase>,
) {
    let stats = &ctx.shared.stats;
    let limits = ctx.shared.limits();
    let (header, request) = match decode_request_head(&head, payload.len(), limits) {
        Ok(decoded) => decoded,
        Err(error) => {
            let request_id = request_id_hint(&head).unwrap_or(0);
            tracing::debug!(request_id, %error, "undecodable request");
            answer_error(ctx, &mut send, request_id, error.to_error_body()).await;
            if is_garbage(&error) {
                ctx.note_malformed();
            }
            return;
        }
    };
    drop(head);

    let _drain = ctx.shared.drain.enter();
    if *phase.borrow_and_update() != Phase::Running {
        let _ = send.reset(code(CONNECTION_ERROR_SHUTDOWN));
        stats.stream_reset(CONNECTION_ERROR_SHUTDOWN);
        return;
    }
    let kind = request.kind();
    let request_id = header.request_id;
    stats.dispatched(kind);
    let _answered = Answered(Arc::clone(stats));
    let started = Instant::now();

    let reply = {
        let handling = ctx.service.handle(header, request, payload);
        tokio::select! {
            biased;
            reply = handling => Some(reply),
            () = until_interrupt(&mut phase) => None,
        }
    };
    drop(permits);
    let reply = reply.unwrap_or_else(|| {
        stats.interrupted();
        let body = if kind.is_write() {
            ErrorBody::new(
                ErrorCode::Interrupted,
                "the broker shut down before the write was confirmed; it may be in the log",
            )
        } else {
            ErrorBody::new(ErrorCode::ShuttingDown, "the broker shut down")
        };
        Reply::new(Response::failed(kind, body))
    });

    let write_timeout = ctx.shared.config.stream_write_timeout;
    let deadline = tokio::time::Instant::now() + write_timeout;
    let (head, payload) = encode_reply(ctx, kind, request_id, reply);
    let written = tokio::time::timeout_at(deadline, async {
        send.write_all(&head).await?;
        if !payload.is_empty() {
            send.write_chunk(Bytes::from(payload)).await?;
        }
        Ok::<(), WriteError>(())
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(request_id, error = %e, "response not delivered");
            return;
        }
        Err(_) => {
            let _ = send.reset(code(STREAM_ERROR_TIMEOUT));
            stats.stream_reset(STREAM_ERROR_TIMEOUT);
            return;
        }
    }
    if send.finish().is_err() {
        return;
    }
    stats.latency(kind, started.elapsed());
    drop(_answered);
    // In flight until the client's stack has acknowledged the whole response.
    if tokio::time::timeout_at(deadline, send.stopped())
        .await
        .is_err()
    {
        let _ = send.reset(code(STREAM_ERROR_TIMEOUT));
        stats.stream_reset(STREAM_ERROR_TIMEOUT);
    }
}

/// The response head and payload to write for `reply`. A reply that answers another kind
/// or does not encode within the limits is a bug in the service: it is logged and
/// replaced by an `Unknown` error, so the client still gets an answer.
fn encode_reply<S>(
    ctx: &ConnCtx<S>,
    kind: RequestKind,
    request_id: u64,
    reply: Reply,
) -> (Vec<u8>, Vec<u8>) {
    let stats = &ctx.shared.stats;
    let limits = ctx.shared.limits();
    let header = ResponseHeader { request_id };
    let encoded = match reply.response.kind() {
        Some(answered) if answered != kind => Err(format!(
            "a {} reply to a {} request",
            answered.as_str(),
            kind.as_str()
        )),
        _ => encode_response_head(&header, &reply.response, reply.payload.len(), limits)
            .map_err(|e| e.to_string()),
    };
    match encoded {
        Ok(head) => {
            if let Some(error) = reply.response.error() {
                stats.error(error.code);
            }
            stats.bytes_out(head.len() + reply.payload.len());
            (head, reply.payload)
        }
        Err(reason) => {
            tracing::error!(request_id, kind = kind.as_str(), %reason, "gateway: service returned an invalid reply");
            let body = ErrorBody::new(
                ErrorCode::Unknown,
                "the broker produced an invalid response",
            );
            stats.error(body.code);
            let response = Response::failed(kind, body);
            // An `Unknown` error within `ERROR_MESSAGE_BYTES_MAX` always encodes
            // (`FrameLimits::check`); an empty frame would only make the client see a
            // protocol error.
            let head = encode_response_head(&header, &response, 0, limits).unwrap_or_default();
            stats.bytes_out(head.len());
            (head, Vec::new())
        }
    }
}

/// Answers a frame the gateway refused before dispatch, then finishes the stream.
async fn answer_error<S>(
    ctx: &ConnCtx<S>,
    send: &mut SendStream,
    request_id: u64,
    body: ErrorBody,
) {
    let stats = &ctx.shared.stats;
    let code_sent = body.code;
    let frame = match encode_response(
        &ResponseHeader { request_id },
        &Response::Error(body),
        &[],
        ctx.shared.limits(),
    ) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::error!(%e, "gateway: cannot encode an error response");
            let _ = send.reset(code(STREAM_ERROR_MALFORMED));
            stats.stream_reset(STREAM_ERROR_MALFORMED);
            return;
        }
    };
    stats.error(code_sent);
    let write_timeout = ctx.shared.config.stream_write_timeout;
    match tokio::time::timeout(write_timeout, send.write_all(&frame)).await {
        Ok(Ok(())) => {
            stats.bytes_out(frame.len());
            let _ = send.finish();
        }
        Ok(Err(_)) => {}
        Err(_) => {
            let _ = send.reset(code(STREAM_ERROR_TIMEOUT));
            stats.stream_reset(STREAM_ERROR_TIMEOUT);
        }
    }
}
