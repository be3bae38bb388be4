//! Why a command failed, and the documented exit code that goes with it.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the broker answered with an error, or a request failed after the connection was up (including a failed write) |
//! | 2 | usage: bad flags or arguments (clap's own errors exit 2 too), bad input lines |
//! | 3 | cannot connect: nothing listening, handshake timeout, TLS failure, CA file unusable, address unresolvable |

use std::fmt;

use sluice_client::ClientError;
use sluice_proto::wire::{ErrorBody, ErrorCode, ErrorDetail};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the broker refused or a request failed.
pub const EXIT_BROKER: u8 = 1;
/// Exit code: bad usage or input. Matches clap's exit code for parse errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no connection to the broker could be made.
pub const EXIT_CONNECT: u8 = 3;

/// A failed command: the exit code and the message printed to stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Fail {
    pub fn broker(message: impl Into<String>) -> Fail {
        Fail {
            code: EXIT_BROKER,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    pub fn connect(message: impl Into<String>) -> Fail {
        Fail {
            code: EXIT_CONNECT,
            message: message.into(),
        }
    }

    /// A failed client call; `context` says what was being done ("describe topic 'x'").
    pub fn client(context: &str, e: &ClientError) -> Fail {
        match e {
            ClientError::Config(reason) => Fail::connect(format!(
                "{reason}; pass the broker's CA certificate with --ca PATH or SLUICE_CA \
                 (a dev broker writes it to <data-dir>/tls/ca.pem)"
            )),
            ClientError::Connect {
                addr,
                reason,
                retriable: false,
            } => Fail::connect(format!(
                "cannot connect to {addr}: TLS handshake failed: {reason}; the broker's \
                 certificate must be signed by the CA given with --ca and valid for the name \
                 given with --tls-server-name"
            )),
            ClientError::Connect { addr, reason, .. } => Fail::connect(format!(
                "cannot connect to {addr}: {reason}; is a broker listening there? \
                 (set --server or SLUICE_SERVER)"
            )),
            ClientError::Broker(body) => Fail::broker(format!("{context}: {}", explain(body))),
            other => Fail::broker(format!("{context}: {other}")),
        }
    }
}

/// A broker error in words, with the facts its detail carries.
pub fn explain(body: &ErrorBody) -> String {
    match (&body.code, &body.detail) {
        (ErrorCode::OffsetOutOfRange, ErrorDetail::OffsetOutOfRange { log_start, log_end }) => {
            format!(
                "offset out of range: valid offsets are {log_start}..={log_end} \
                 (OffsetOutOfRange: {})",
                body.message
            )
        }
        (ErrorCode::UnknownTopic, _) => {
            format!("the topic does not exist (UnknownTopic: {})", body.message)
        }
        (ErrorCode::NotLeader, ErrorDetail::NotLeader { leader, addr }) => {
            let leader = leader.map_or_else(|| "unknown".to_owned(), |l| l.to_string());
            let addr = addr.as_deref().unwrap_or("unknown address");
            format!(
                "this broker does not lead the partition (NotLeader; leader {leader} at {addr})"
            )
        }
        (ErrorCode::Throttled, ErrorDetail::Throttled { retry_after_ms }) => {
            format!("over quota, retry after {retry_after_ms} ms (Throttled)")
        }
        (code, _) => format!("{}: {}", code.name(), body.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn exit_codes_follow_the_table() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = ClientError::Connect {
            addr,
            reason: "timed out".into(),
            retriable: true,
        };
        assert_eq!(Fail::client("x", &refused).code, EXIT_CONNECT);
        let tls = ClientError::Connect {
            addr,
            reason: "bad cert".into(),
            retriable: false,
        };
        let f = Fail::client("x", &tls);
        assert_eq!(f.code, EXIT_CONNECT);
        assert!(f.message.contains("TLS"), "{f}");
        let config = ClientError::Config("CA file: not found".into());
        assert_eq!(Fail::client("x", &config).code, EXIT_CONNECT);
        let oor = ClientError::Broker(ErrorBody::offset_out_of_range(50, 3, 10));
        let f = Fail::client("consume t/0", &oor);
        assert_eq!(f.code, EXIT_BROKER);
        assert!(f.message.contains("3..=10"), "{f}");
        assert!(f.message.starts_with("consume t/0: "), "{f}");
    }
}
