//! The seam between the gateway and the broker: the gateway decodes and validates, the
//! [`Service`] decides.

use std::future::Future;

use sluice_proto::wire::{Request, RequestHeader, Response};

/// What a [`Service`] answers: the response and, for a successful `Fetch`, the stored
/// batches to send after it (empty otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub response: Response,
    pub payload: Vec<u8>,
}

impl Reply {
    /// A reply without payload.
    pub fn new(response: Response) -> Reply {
        Reply {
            response,
            payload: Vec::new(),
        }
    }

    /// A reply with payload (a successful `Fetch`'s whole batches, as stored).
    pub fn with_payload(response: Response, payload: Vec<u8>) -> Reply {
        Reply { response, payload }
    }
}

/// The broker behind the gateway. The gateway knows nothing of the engine: it calls
/// `handle` once per request, concurrently for many requests, and writes the reply.
///
/// What reaches `handle` has passed [`decode_request`](sluice_proto::wire::decode_request)
/// against the gateway's `FrameLimits`: a supported `api_version`, every field within its
/// limit, a payload exactly when the request is a `Produce` (its batch, not yet validated
/// as a batch: that is the engine's job). Malformed frames are answered by the gateway and
/// never get here.
///
/// The reply must answer the request's kind (`Response::failed(kind, ..)` for an error) or
/// be `Response::Error`, and must encode within the gateway's limits; a reply that breaks
/// this is logged as a bug and replaced by an `Unknown` error.
///
/// Cancellation: during a shutdown whose grace runs out, the gateway drops the `handle`
/// future and answers `Interrupted` (writes) or `ShuttingDown` (reads). A write that was
/// already handed to the engine may still be appended: that is what `Interrupted` says.
pub trait Service: Send + Sync + 'static {
    fn handle(
        &self,
        header: RequestHeader,
        request: Request,
        payload: Vec<u8>,
    ) -> impl Future<Output = Reply> + Send;
}
