//! The bytes of one peer-link Raft frame: every Raft message one shard sends one peer
//! in a cycle, each with its partition. The peer link carries frames as opaque bytes;
//! this is their content.
//!
//! Layout (little-endian): `u32` message count, then per message: `u16` topic length,
//! the topic (UTF-8), `u32` partition, `u32` message length, the message (raft-rs
//! protobuf, [`sluice_replica::encode_message`]). Decoding is bounded by the frame's
//! own length and refuses trailing bytes; it never panics on input.

use sluice_replica::{decode_message, encode_message, Message};
use thiserror::Error;

use crate::TopicPartition;

/// Why a frame was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RaftFrameError {
    #[error("raft frame truncated")]
    Truncated,
    #[error("raft frame has trailing bytes")]
    TrailingBytes,
    #[error("raft frame topic is not UTF-8")]
    BadTopic,
    #[error("raft frame message does not decode: {0}")]
    BadMessage(String),
}

/// Encodes `messages` (all to the same peer) as one frame.
pub fn encode(messages: &[(TopicPartition, Message)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * messages.len() + 4);
    out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    for (tp, m) in messages {
        let topic = tp.topic.as_bytes();
        // Topic names are at most 249 bytes (validated on creation).
        out.extend_from_slice(&(topic.len().min(u16::MAX as usize) as u16).to_le_bytes());
        out.extend_from_slice(
            topic
                .get(..topic.len().min(u16::MAX as usize))
                .unwrap_or(topic),
        );
        out.extend_from_slice(&tp.partition.to_le_bytes());
        let bytes = encode_message(m);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RaftFrameError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(RaftFrameError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RaftFrameError> {
        let b = self.take(N)?;
        b.try_into().map_err(|_| RaftFrameError::Truncated)
    }
}

/// Decodes one frame. The count is checked against the bytes present before anything
/// is reserved, so a lying count costs nothing.
pub fn decode(frame: &[u8]) -> Result<Vec<(TopicPartition, Message)>, RaftFrameError> {
    let mut c = Cursor(frame);
    let count = u32::from_le_bytes(c.array()?) as usize;
    // Every message takes at least 10 bytes of fixed fields.
    if count > frame.len() / 10 + 1 {
        return Err(RaftFrameError::Truncated);
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let topic_len = u16::from_le_bytes(c.array()?) as usize;
        let topic =
            std::str::from_utf8(c.take(topic_len)?).map_err(|_| RaftFrameError::BadTopic)?;
        let partition = u32::from_le_bytes(c.array()?);
        let len = u32::from_le_bytes(c.array()?) as usize;
        let msg =
            decode_message(c.take(len)?).map_err(|e| RaftFrameError::BadMessage(e.to_string()))?;
        out.push((TopicPartition::new(topic, partition), msg));
    }
    if !c.0.is_empty() {
        return Err(RaftFrameError::TrailingBytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_replica::MessageType;

    fn msg(to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.to = to;
        m.from = 1;
        m.term = term;
        m
    }

    #[test]
    fn round_trip() {
        let msgs = vec![
            (TopicPartition::new("a", 0), msg(2, 3)),
            (TopicPartition::new("__cluster", 7), msg(2, 4)),
        ];
        let frame = encode(&msgs);
        assert_eq!(decode(&frame).unwrap(), msgs);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn damaged_frames_are_refused() {
        let frame = encode(&[(TopicPartition::new("a", 0), msg(2, 3))]);
        for cut in 0..frame.len() {
            assert!(decode(&frame[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = frame.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(RaftFrameError::TrailingBytes));
        let mut lying = frame.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&lying), Err(RaftFrameError::Truncated));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
