//! The Sluice client SDK: a QUIC [`Client`] with the admin calls, a batching
//! [`Producer`] and a [`Consumer`] of assigned partitions, on tokio.
//!
//! The model, edge to core:
//!
//! - [`transport`]: QUIC connections to the cluster's nodes (TLS 1.3, ALPN `sluice/1`),
//!   one per node, each request routed to its partition's leader (see
//!   [`Client`]'s "Routing"), one bidirectional stream per request, reconnecting when a
//!   connection is lost. Every
//!   failure is a [`ClientError`] that says whether a write may have been appended
//!   ([`ClientError::write_outcome`], DESIGN §4).
//! - [`producer`]: [`Client::producer`] starts one background task that owns the pure
//!   session logic of [`session`] (partitioner, accumulator with linger and a bounded
//!   buffer, per-partition ordered send queue, retry policy) and the cached partition
//!   counts. [`Producer::send`] waits for buffer space (backpressure) and returns a
//!   [`DeliveryFuture`] that resolves to the record's [`RecordMetadata`] or to a
//!   [`DeliveryError`] saying whether the record may be in the log anyway;
//!   [`Producer::send_with`] hands the same outcome to a callback instead (run on the
//!   background task: no future per record, for senders that do not await each one).
//! - [`consumer`]: [`Client::consumer`] fetches the partitions it is assigned, with one
//!   long-polling fetch in flight per partition, and hands out records in offset order
//!   per partition ([`Consumer::next`], [`Consumer::poll`], or as a
//!   `futures::Stream`).
//! - [`session`]: the producer's decisions as plain state machines (time is an
//!   argument), shared with the simulator.
//!
//! Delivery guarantees: with the default `acks = All` a record's future resolves `Ok`
//! only once the broker has it fsynced. The producer is idempotent by default
//! ([`ProducerConfig::idempotence`]): every batch carries a producer id (from the
//! broker's `InitProducer`) and a per-partition sequence, so failures that may have
//! appended (timeouts, a connection lost after the request left) are retried without
//! duplicating records, and a partition's records land once each, in `send` order.
//! Without idempotence such retries are off by default
//! ([`ProducerConfig::retry_indeterminate`]), because they may duplicate records;
//! definite retriable failures are retried with backoff either way.
//!
//! ```no_run
//! use sluice_client::wire::TopicConfig;
//! use sluice_client::{
//!     Client, ClientTls, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo,
//! };
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // A dev broker writes its CA to <data-dir>/tls/ca.pem.
//! let tls = ClientTls::ca_file("sluice-data/tls/ca.pem");
//! let client = Client::connect("127.0.0.1:7878".parse()?, tls).await?;
//! client.create_topic("events", 4, TopicConfig::default()).await?;
//!
//! let producer = client.producer(ProducerConfig::default())?;
//! let delivery = producer
//!     .send(ProducerRecord::new("events", b"hello".to_vec()).key("user-1"))
//!     .await?;
//! let meta = delivery.await?; // acknowledged: fsynced on the broker
//! println!("stored at {}/{} offset {}", meta.topic, meta.partition, meta.offset);
//! producer.close().await;
//!
//! let mut consumer = client.consumer(ConsumerConfig::default())?;
//! consumer.assign("events", [meta.partition]);
//! consumer.seek("events", meta.partition, SeekTo::Offset(meta.offset)).await?;
//! let record = consumer.next().await?;
//! assert_eq!(record.value.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```
//!
//! Runnable examples are in `crates/client/examples/` (`produce`, `consume`, `admin`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod consumer;
pub mod error;
pub mod producer;
mod routing;
pub mod session;
pub mod transport;

pub use consumer::{AutoReset, Consumer, ConsumerConfig, ConsumerError, ConsumerRecord, SeekTo};
pub use error::ClientError;
pub use producer::{
    DeliveryError, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
pub use sluice_proto::wire;
pub use transport::{Client, ClientOptions, ClientTls};
