//! What a request through the transport can fail with, and what each failure means for
//! a write (DESIGN §4): **definite** (the broker guarantees nothing was appended) or
//! **indeterminate** (it may have been).
//!
//! The rule the transport follows: a request "leaves" when its stream's send side is
//! finished (the gateway dispatches nothing before it has the whole frame and the end of
//! the stream). Anything that fails before that is definite. After it, only an answer
//! from the broker or a stream refused unread (reset with `STREAM_ERROR_TOO_MANY`,
//! `STREAM_ERROR_TIMEOUT` or `CONNECTION_ERROR_SHUTDOWN`) is definite; everything else
//! (a timeout, a lost connection — even one closed with `CONNECTION_ERROR_SHUTDOWN`,
//! which can cut off the answer to a request already acted on — a garbled answer) is
//! indeterminate.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_proto::wire::{
    ErrorBody, FrameError, WriteOutcome, CONNECTION_ERROR_SHUTDOWN, STREAM_ERROR_MALFORMED,
    STREAM_ERROR_TIMEOUT, STREAM_ERROR_TOO_MANY,
};

/// A failed request or connection attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client's own configuration is unusable (e.g. no CA certificate to trust).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// No connection to the broker: unreachable, refused, TLS failed. Nothing was sent.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        addr: SocketAddr,
        reason: String,
        /// False when trying again cannot help (the broker's certificate is not trusted,
        /// ALPN mismatch).
        retriable: bool,
    },
    /// The request breaks a wire rule or limit; refused locally, nothing sent.
    #[error("request refused locally: {0}")]
    InvalidRequest(#[source] FrameError),
    /// The connection closed while the request was open.
    #[error("connection lost: {reason}")]
    ConnectionLost {
        reason: String,
        outcome: WriteOutcome,
    },
    /// No answer within the request's deadline (the client's `request_timeout` plus the
    /// request's own `timeout_ms` or `max_wait_ms`).
    #[error("no response within {after:?}")]
    Timeout {
        after: Duration,
        outcome: WriteOutcome,
    },
    /// The broker reset the stream without reading the request (too many in flight, the
    /// frame arrived too slowly, shutting down): nothing was done.
    #[error("broker refused the request unread (stream error {code}: {})", refusal_reason(*code))]
    Refused { code: u32 },
    /// The broker's answer broke the protocol (bad frame, wrong request id or kind), or
    /// the stream ended without one.
    #[error("protocol error: {reason}")]
    Protocol {
        reason: String,
        outcome: WriteOutcome,
    },
    /// The broker answered with an error.
    #[error("broker error: {0}")]
    Broker(ErrorBody),
}

fn refusal_reason(code: u32) -> &'static str {
    match code {
        STREAM_ERROR_TOO_MANY => "too many requests in flight",
        STREAM_ERROR_TIMEOUT => "the request did not arrive in time",
        CONNECTION_ERROR_SHUTDOWN => "the broker is shutting down",
        STREAM_ERROR_MALFORMED => "malformed request",
        _ => "unknown code",
    }
}

/// Whether a stream reset with `code` by the broker means "refused unread".
pub(crate) fn is_refusal(code: u32) -> bool {
    matches!(
        code,
        STREAM_ERROR_TOO_MANY | STREAM_ERROR_TIMEOUT | CONNECTION_ERROR_SHUTDOWN
    )
}

impl ClientError {
    /// What a failed write may have left in the log. Reads have nothing to leave; for
    /// them this only says whether the request reached the broker.
    pub fn write_outcome(&self) -> WriteOutcome {
        match self {
            ClientError::Config(_)
            | ClientError::Connect { .. }
            | ClientError::InvalidRequest(_)
            | ClientError::Refused { .. } => WriteOutcome::Definite,
            ClientError::ConnectionLost { outcome, .. }
            | ClientError::Timeout { outcome, .. }
            | ClientError::Protocol { outcome, .. } => *outcome,
            ClientError::Broker(e) => e.write_outcome(),
        }
    }

    /// Whether the same request may succeed if sent again (after a reconnect, a metadata
    /// refresh or a backoff). For an indeterminate write, retrying is safe only with the
    /// idempotent producer.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { retriable, .. } => *retriable,
            ClientError::ConnectionLost { .. } | ClientError::Timeout { .. } => true,
            ClientError::Refused { code } => is_refusal(*code),
            ClientError::Config(_)
            | ClientError::InvalidRequest(_)
            | ClientError::Protocol { .. } => false,
            ClientError::Broker(e) => e.is_retriable(),
        }
    }

    /// The broker's error, for [`ClientError::Broker`].
    pub fn broker_error(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Broker(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ErrorBody> for ClientError {
    fn from(e: ErrorBody) -> Self {
        ClientError::Broker(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::wire::ErrorCode;

    #[test]
    fn outcomes_follow_the_design() {
        let lost_after = ClientError::ConnectionLost {
            reason: "reset".into(),
            outcome: WriteOutcome::Indeterminate,
        };
        assert_eq!(lost_after.write_outcome(), WriteOutcome::Indeterminate);
        assert!(lost_after.is_retriable());
        let refused = ClientError::Refused {
            code: STREAM_ERROR_TOO_MANY,
        };
        assert_eq!(refused.write_outcome(), WriteOutcome::Definite);
        assert!(refused.is_retriable());
        let malformed = ClientError::Refused {
            code: STREAM_ERROR_MALFORMED,
        };
        assert!(!malformed.is_retriable());
        let not_leader = ClientError::Broker(ErrorBody::not_leader(Some(2), None));
        assert_eq!(not_leader.write_outcome(), WriteOutcome::Definite);
        assert!(not_leader.is_retriable());
        let timed_out = ClientError::Broker(ErrorBody::new(ErrorCode::RequestTimedOut, "slow"));
        assert_eq!(timed_out.write_outcome(), WriteOutcome::Indeterminate);
        let invalid = ClientError::InvalidRequest(FrameError::TrailingBytes);
        assert_eq!(invalid.write_outcome(), WriteOutcome::Definite);
        assert!(!invalid.is_retriable());
    }
}
