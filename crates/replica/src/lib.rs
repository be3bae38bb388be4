//! Sluice's replication core: one partition replica as a pure state machine.
//!
//! Each partition is a Raft group (raft-rs `RawNode`) whose log **is** the partition
//! log: an entry carries one record batch as the producer sent it, and record offsets
//! are derived from log order, so every replica computes the same base offset for the
//! same entry. Raft's no-op and configuration entries take no record offsets; they are
//! kept in `raft.state` beside the log ([`state`]). The high watermark is the record
//! offset after the last committed entry.
//!
//! The crate performs no I/O and names no runtime: a [`Replica`] takes inputs (ticks,
//! peer messages, proposals, "sync done", "read done") and emits [`Action`]s (send,
//! write, sync, fetch, reply, committed). The engine drives it on glommio over the real
//! partition log; the simulator (`sluice-sim`) drives it over a simulated disk and
//! network with virtual time.

mod replica;
pub mod state;
mod store;

pub use raft::eraftpb::{Entry, Message, MessageType};
pub use replica::{
    decode_message, encode_message, encode_message_into, encoded_message_len, Acks, Action,
    Produced, ProposeError, Replica, ReplicaConfig, ReplicaError, ReplicaStatus, ReplyError,
    StoredBatch, Write,
};
pub use state::{PersistentState, StateError};
pub use store::LogStore;

#[cfg(feature = "planted-bugs")]
pub mod planted;
