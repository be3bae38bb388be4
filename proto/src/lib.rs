//! Sluice's two byte formats: the record batch (the unit a producer sends, the Raft log
//! stores and a consumer fetches) and the wire protocol that carries it (frames, requests,
//! responses and error codes, in [`wire`]). The exact bytes are specified in `PROTOCOL.md`
//! beside this crate. Pure: no runtime, socket, file or clock.
//!
//! The record batch's model:
//!
//! - **Zero-copy.** A batch travels as the producer encoded it. [`BatchView`] validates a
//!   borrowed byte slice once and then hands out keys, values and headers as sub-slices of
//!   it; nothing is decoded into owned memory on the broker's path.
//! - **CRC coverage.** The CRC-32 covers every byte after the `crc` field. The two fields
//!   in front of it, `base_offset` and `leader_term`, are assigned by the broker when it
//!   appends the batch, so they are left out: [`set_base_offset`] and [`set_leader_term`]
//!   patch them in place without re-checksumming. Everything the producer wrote is covered.
//! - **Bounded decoding.** Every length read from input is checked against the bytes that
//!   are actually there and against [`Limits`] before it is used; errors are typed
//!   ([`BatchError`], each with a stable wire code). After [`BatchView::parse`] succeeds,
//!   iterating records and headers cannot fail.
//! - **One encoding per value.** Varints must be minimal and records must fill the batch
//!   exactly, so any batch that parses re-encodes with [`BatchBuilder`] to the same bytes.
//!
//! The wire protocol's model is on [`wire`]. Its header encoding is bincode 2.0.1, pinned
//! and unmaintained (RUSTSEC-2025-0141), named only in the private `codec` module and the
//! derives on the message types.
//!
//! ```
//! use sluice_proto::{set_base_offset, BatchBuilder, BatchView, Limits};
//!
//! let limits = Limits::default();
//! let mut b = BatchBuilder::new(limits);
//! b.push(1_700_000_000_000, Some(b"k"), Some(b"hello"), &[("trace", Some(b"1"))])
//!     .unwrap();
//! let mut batch = b.finish().unwrap();
//! set_base_offset(&mut batch, 42).unwrap(); // the broker's rewrite: no re-checksum
//! let view = BatchView::parse(&batch, &limits).unwrap();
//! let r = view.records().next().unwrap();
//! assert_eq!((r.offset, r.value), (42, Some(&b"hello"[..])));
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod batch;
mod codec;
mod varint;
pub mod wire;

pub use batch::*;
pub use wire::*;
