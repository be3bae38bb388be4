//! The Sluice client SDK.
//!
//! Today this crate holds the producer's pure session logic ([`session`]):
//! partitioning, batching with linger and a bounded buffer, and per-partition
//! ordered sending with retries. The QUIC transport (tokio + quinn), the `Producer`,
//! `Consumer` and admin API are the single-node broker issue's next steps.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod session;
