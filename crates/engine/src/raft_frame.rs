//! The bytes of one peer-link Raft frame: every Raft message one shard sends one peer
//! in a cycle, each with its partition. The peer link carries frames as opaque bytes;
//! this is their content.
//!
//! Layout (little-endian): `u32` message count, then per message: `u16` topic length,
//! the topic (UTF-8), `u32` partition, `u32` message length, the message (raft-rs
//! protobuf, [`sluice_replica::encode_message`]). Decoding is bounded by the frame's
//! own length and refuses trailing bytes; it never panics on input.

use sluice_replica::{decode_message, encode_message_into, encoded_message_len, Message};
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

/// Encodes `messages` (all to the same peer) as one frame: sized first, then each
/// message written straight into it (entries carry whole batches: no second copy).
pub fn encode(messages: &[(TopicPartition, Message)]) -> Vec<u8> {
    // Topic names are at most 249 bytes (validated on creation).
    fn topic(tp: &TopicPartition) -> &[u8] {
        let t = tp.topic.as_bytes();
        t.get(..t.len().min(u16::MAX as usize)).unwrap_or(t)
    }
    let size = 4 + messages
        .iter()
        .map(|(tp, m)| 2 + topic(tp).len() + 4 + 4 + encoded_message_len(m))
        .sum::<usize>();
    // One byte of slack: rust-protobuf's writer reserves one spare byte after each
    // message, which at an exact fit would reallocate (and copy) the whole frame.
    let mut out = Vec::with_capacity(size + 1);
    out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    for (tp, m) in messages {
        let topic = topic(tp);
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&tp.partition.to_le_bytes());
        let at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        let len = encode_message_into(m, &mut out) as u32;
        if let Some(field) = out.get_mut(at..at + 4) {
            field.copy_from_slice(&len.to_le_bytes());
        }
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
    fn messages_with_entries_keep_the_layout_and_their_bytes() {
        let mut append = msg(3, 5);
        append.set_msg_type(MessageType::MsgAppend);
        for (i, len) in [0usize, 1, 300, 70_000].into_iter().enumerate() {
            append.entries.push(sluice_replica::Entry {
                index: 10 + i as u64,
                term: 5,
                data: (0..len).map(|b| b as u8).collect::<Vec<u8>>().into(),
                ..Default::default()
            });
        }
        let msgs = vec![
            (TopicPartition::new("orders", 3), append.clone()),
            (TopicPartition::new("b", 1), msg(3, 5)),
        ];
        let frame = encode(&msgs);
        // The documented layout, field by field, for the first message.
        let body = sluice_replica::encode_message(&append);
        assert_eq!(&frame[..4], &2u32.to_le_bytes());
        assert_eq!(&frame[4..6], &6u16.to_le_bytes());
        assert_eq!(&frame[6..12], b"orders");
        assert_eq!(&frame[12..16], &3u32.to_le_bytes());
        assert_eq!(&frame[16..20], &(body.len() as u32).to_le_bytes());
        assert_eq!(&frame[20..20 + body.len()], &body[..]);
        assert_eq!(decode(&frame).unwrap(), msgs);
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
