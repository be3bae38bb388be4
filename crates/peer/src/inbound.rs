//! The accept side: one task per inbound connection. After the TLS handshake (client
//! certificate verified against the cluster CA by rustls) the first bi stream must be the
//! hello, and the certificate must name the node it claims; the hello is answered (an
//! empty stream) only then, and nothing else is read before. Then raft streams are read
//! one after another (so frames reach the handler in the order the dialer sent them) and
//! each forward stream gets a task of its own.

use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::sync::OwnedSemaphorePermit;

use crate::links::Shared;
use crate::stats::{bump, Inbound};
use crate::tls::certificate_names_node;
use crate::wire::{self, Outgoing, StreamError, CONNECTION_ERROR_IDENTITY, HELLO_BYTES};

pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(slot) = Arc::clone(&shared.inbound_slots).try_acquire_owned() else {
            bump(&shared.counters.inbound_refused);
            tracing::warn!(remote = %incoming.remote_address(), "peer connection refused: too many inbound connections");
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve(Arc::clone(&shared), incoming, slot));
    }
}

/// One inbound connection, from handshake to close.
async fn serve(shared: Arc<Shared>, incoming: Incoming, _slot: OwnedSemaphorePermit) {
    let remote = incoming.remote_address();
    let timeout = shared.config.idle_timeout;
    let handshake = match incoming.accept() {
        Ok(connecting) => tokio::time::timeout(timeout, connecting).await,
        Err(error) => Ok(Err(error)),
    };
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            bump(&shared.counters.handshakes_failed);
            tracing::warn!(%remote, %error, "peer handshake failed (a certificate not from the cluster CA?)");
            return;
        }
        Err(_) => {
            bump(&shared.counters.handshakes_failed);
            tracing::warn!(%remote, "peer handshake timed out");
            return;
        }
    };
    let from = match identify(&shared, &conn).await {
        Ok((from, mut answer)) => {
            // Accepted: the empty answer tells the dialer its link is up.
            let _ = answer.finish();
            from
        }
        Err(reason) => {
            bump(&shared.counters.identity_refused);
            tracing::warn!(%remote, reason, "peer connection refused");
            conn.close(
                VarInt::from_u32(CONNECTION_ERROR_IDENTITY),
                reason.as_bytes(),
            );
            return;
        }
    };
    let inbound = shared.inbound(from);
    let _open = inbound.open();
    inbound.heard();
    tracing::info!(from, %remote, "inbound peer link up");
    let ctx = Arc::new(Ctx {
        shared,
        conn,
        from,
        inbound,
    });
    tokio::join!(receive_raft(&ctx), receive_forwards(&ctx));
    tracing::info!(
        from,
        %remote,
        reason = %ctx.conn.close_reason().map(|r| r.to_string()).unwrap_or_default(),
        "inbound peer link down"
    );
}

/// The node id the dialer proved, with the hello's answer stream, or why it did not.
async fn identify(shared: &Shared, conn: &Connection) -> Result<(u64, SendStream), &'static str> {
    let config = &shared.config;
    let deadline = tokio::time::Instant::now() + config.idle_timeout;
    let (mut answer, mut recv) = tokio::time::timeout_at(deadline, conn.accept_bi())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or("no hello")?;
    let hello = tokio::time::timeout_at(
        deadline,
        wire::read_to_end(&mut recv, HELLO_BYTES, config.stream_stall_timeout),
    )
    .await;
    let verdict = match hello {
        Err(_) => Err("no hello in time"),
        Ok(Err(_)) => Err("malformed hello"),
        Ok(Ok(hello)) => match wire::decode_hello(&hello) {
            None => Err("malformed hello"),
            Some(from) if from == config.node_id => Err("the dialer claims our own node id"),
            Some(from) if !certificate_names_node(conn, from) => {
                Err("the client certificate does not name the node the hello claims")
            }
            Some(from) => Ok(from),
        },
    };
    match verdict {
        Ok(from) => Ok((from, answer)),
        Err(reason) => {
            // Dropping the stream would finish it, which reads as "accepted".
            let _ = answer.reset(VarInt::from_u32(CONNECTION_ERROR_IDENTITY));
            Err(reason)
        }
    }
}

/// One identified inbound connection.
struct Ctx {
    shared: Arc<Shared>,
    conn: Connection,
    from: u64,
    inbound: Arc<Inbound>,
}

impl Ctx {
    /// Stops a stream that sent bad input (or none) and counts it.
    fn refuse(&self, recv: &mut RecvStream, error: &StreamError, what: &str) {
        match error.stop_code() {
            Some(code) => {
                bump(&self.shared.counters.malformed_streams);
                tracing::warn!(from = self.from, %error, "{what} stream stopped");
                let _ = recv.stop(VarInt::from_u32(code));
            }
            None => tracing::debug!(from = self.from, %error, "{what} stream ended"),
        }
    }
}

/// Reads the raft streams in the order they were opened, frame by frame.
async fn receive_raft(ctx: &Ctx) {
    let config = &ctx.shared.config;
    while let Ok(mut recv) = ctx.conn.accept_uni().await {
        loop {
            match wire::read_frame(
                &mut recv,
                config.frame_bytes_max,
                config.stream_stall_timeout,
            )
            .await
            {
                Ok(Some(frame)) => {
                    ctx.inbound.frame(frame.len());
                    ctx.shared.handler.raft(ctx.from, frame);
                }
                Ok(None) => break,
                Err(error) => {
                    ctx.refuse(&mut recv, &error, "raft");
                    break;
                }
            }
        }
    }
}

/// Serves each forward stream on a task of its own.
async fn receive_forwards(ctx: &Arc<Ctx>) {
    while let Ok((send, recv)) = ctx.conn.accept_bi().await {
        tokio::spawn(serve_forward(Arc::clone(ctx), send, recv));
    }
}

async fn serve_forward(ctx: Arc<Ctx>, send: SendStream, mut recv: RecvStream) {
    // Reset, not finished, if the handler panics or the task is dropped: the dialer must
    // not read a missing answer as an empty one.
    let send = Outgoing::new(send);
    let config = &ctx.shared.config;
    let request = match wire::read_to_end(
        &mut recv,
        config.frame_bytes_max,
        config.stream_stall_timeout,
    )
    .await
    {
        Ok(request) => request,
        Err(error) => {
            ctx.refuse(&mut recv, &error, "forward");
            if let Some(code) = error.stop_code() {
                send.reset(code);
            }
            return;
        }
    };
    ctx.inbound.heard();
    bump(&ctx.shared.counters.forwards_served);
    let answer: Bytes = tokio::select! {
        answer = ctx.shared.handler.forward(ctx.from, request) => answer,
        _ = ctx.conn.closed() => return,
    };
    if answer.len() > config.frame_bytes_max {
        tracing::warn!(
            from = ctx.from,
            bytes = answer.len(),
            max = config.frame_bytes_max,
            "forward answer over the limit; stream reset"
        );
        send.reset(wire::STREAM_ERROR_TOO_LARGE);
        return;
    }
    if let Err(error) = send.finish(&mut [answer]).await {
        tracing::debug!(from = ctx.from, %error, "forward answer not delivered");
    }
}
