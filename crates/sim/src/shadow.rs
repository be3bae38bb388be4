//! A node's partition log as the checker sees it: every stored batch (base offset,
//! term, bytes, the workload values it carries) read back from the real
//! `PartitionLog` over the node's `MemFs`, with a hash chain over the batches so two
//! logs' prefixes compare in O(1).
//!
//! It is refreshed after every event: appended batches are read from the old end; a
//! truncation (seen through the `MemFs` op hook: a `.log` file cut or removed) or a
//! restart rereads the whole log.

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use sluice_proto::{batches, Limits};
use sluice_storage::{MemFs, Op, PartitionLog};

/// A workload value: producer id in the high bits, its sequence number below. Encoded
/// in a record's value as `p<producer>-<seq>`.
pub type Value = u64;

/// Encodes a value as a record value.
pub fn value_bytes(v: Value) -> Vec<u8> {
    format!("p{}-{}", v >> 40, v & ((1 << 40) - 1)).into_bytes()
}

/// Decodes a record value written by [`value_bytes`].
pub fn parse_value(b: &[u8]) -> Option<Value> {
    let s = std::str::from_utf8(b).ok()?.strip_prefix('p')?;
    let (p, seq) = s.split_once('-')?;
    let p: u64 = p.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    (p < (1 << 24) && seq < (1 << 40)).then_some((p << 40) | seq)
}

/// Shows a value as its record value.
pub fn show_value(v: Value) -> String {
    String::from_utf8_lossy(&value_bytes(v)).into_owned()
}

/// One stored batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub base: u64,
    pub records: u32,
    pub term: u64,
    pub crc: u32,
    /// Hash of this batch and every one before it in the log.
    pub chain: u64,
    /// The batch as stored (base offset and term written in).
    pub bytes: Bytes,
    /// The value of each record, in offset order.
    pub values: Vec<Value>,
}

impl StoredBatch {
    /// The offset after the batch.
    pub fn end(&self) -> u64 {
        self.base + u64::from(self.records)
    }
}

fn mix(h: u64, v: u64) -> u64 {
    (h ^ v)
        .wrapping_mul(0x0000_0100_0000_01b3)
        .rotate_left(23)
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
}

/// Extends the chain hash `h` with a batch.
pub fn chain(h: u64, base: u64, term: u64, crc: u32, length: u32) -> u64 {
    [base, term, u64::from(crc), u64::from(length)]
        .into_iter()
        .fold(h, mix)
}

/// Flags the `MemFs` hook raises.
#[derive(Debug, Default)]
pub struct FsFlags {
    /// A data file grew.
    pub appended: Cell<bool>,
    /// A data file was cut, removed or recreated: reread everything.
    pub truncated: Cell<bool>,
}

/// Installs the hook that raises `flags` on `fs` (a crash image starts without one).
pub fn watch(fs: &MemFs, flags: &Rc<FsFlags>) {
    let flags = Rc::clone(flags);
    fs.set_record_ops(false);
    fs.set_hook(Some(Box::new(move |_, op| match op {
        Op::Append { name, .. } if name.ends_with(".log") => flags.appended.set(true),
        Op::SetLen { name, .. } | Op::Remove { name } | Op::Create { name }
            if name.ends_with(".log") =>
        {
            flags.truncated.set(true);
        }
        Op::Rename { to, .. } if to.ends_with(".log") => flags.truncated.set(true),
        _ => {}
    })));
}

/// The checker's copy of one node's log.
#[derive(Debug, Default)]
pub struct Shadow {
    pub start: u64,
    /// The chain hash of the committed record at `start`.
    pub anchor: u64,
    pub batches: Vec<StoredBatch>,
    /// How many leading batches have been checked against the committed record.
    pub verified: usize,
    /// Whether the last refresh changed anything.
    pub changed: bool,
}

impl Shadow {
    /// The offset after the last batch.
    pub fn end(&self) -> u64 {
        self.batches.last().map_or(self.start, StoredBatch::end)
    }

    /// The chain hash at the end of the log (its anchor when it holds nothing).
    pub fn end_chain(&self) -> u64 {
        self.batches.last().map_or(self.anchor, |b| b.chain)
    }

    /// The offset after the verified prefix.
    pub fn verified_end(&self) -> u64 {
        match self.verified.checked_sub(1) {
            Some(i) => self.batches[i].end(),
            None => self.start,
        }
    }

    /// The batch that starts at `base`, if any.
    pub fn at(&self, base: u64) -> Option<&StoredBatch> {
        let i = self.batches.partition_point(|b| b.base < base);
        self.batches.get(i).filter(|b| b.base == base)
    }

    /// Forgets everything (the node crashed: its log is unknown until it reopens).
    pub fn clear(&mut self) {
        *self = Shadow {
            changed: true,
            ..Shadow::default()
        };
    }

    /// Brings the copy up to date with `log`. Errors describe a log that cannot be read
    /// back or holds something the workload never wrote.
    ///
    /// `anchor(offset)` is the committed record's chain hash at `offset` (0 at 0): a log
    /// that starts above 0 (retention) continues the chain from there, so logs with
    /// different starts still compare.
    pub fn refresh(
        &mut self,
        log: &PartitionLog<MemFs>,
        flags: &FsFlags,
        limits: &Limits,
        anchor: impl Fn(u64) -> Option<u64>,
    ) -> Result<(), String> {
        self.changed = false;
        let truncated = flags.truncated.replace(false);
        let appended = flags.appended.replace(false);
        let start = log.log_start_offset();
        let next = log.next_offset();
        if truncated || start != self.start || next < self.end() {
            self.batches.clear();
            self.verified = 0;
            self.start = start;
            self.anchor = anchor(start).ok_or_else(|| {
                format!("the log starts at {start}, which is not a committed batch boundary")
            })?;
            self.changed = true;
        } else if !appended && next == self.end() {
            return Ok(());
        }
        // A read stops at the end of a segment: read until the log's end.
        while self.end() < next {
            let from = self.end();
            let read = pollster::block_on(log.read(from, usize::MAX))
                .map_err(|e| format!("reading the log from {from}: {e}"))?;
            if read.count == 0 {
                break;
            }
            self.push_all(&read.bytes, limits)?;
        }
        if self.end() != next {
            return Err(format!(
                "the log reads back to offset {} but says it ends at {next}",
                self.end()
            ));
        }
        Ok(())
    }

    fn push_all(&mut self, bytes: &[u8], limits: &Limits) -> Result<(), String> {
        let mut chain = self.batches.last().map_or(self.anchor, |b| b.chain);
        for view in batches(bytes, limits) {
            let view = view.map_err(|e| format!("a stored batch does not parse: {e}"))?;
            let h = *view.header();
            if h.base_offset != self.end() {
                return Err(format!(
                    "stored batch at offset {} follows one ending at {}",
                    h.base_offset,
                    self.end()
                ));
            }
            let mut values = Vec::with_capacity(h.record_count as usize);
            for r in view.records() {
                let v = r.value.and_then(parse_value).ok_or_else(|| {
                    format!("record at offset {} has a value nobody wrote", r.offset)
                })?;
                values.push(v);
            }
            chain = self::chain(chain, h.base_offset, h.leader_term, h.crc, h.length);
            self.batches.push(StoredBatch {
                base: h.base_offset,
                records: h.record_count,
                term: h.leader_term,
                crc: h.crc,
                chain,
                bytes: Bytes::copy_from_slice(view.as_bytes()),
                values,
            });
            self.changed = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for v in [0, 1, (3 << 40) | 17, ((1 << 24) - 1) << 40] {
            assert_eq!(parse_value(&value_bytes(v)), Some(v));
        }
        assert_eq!(show_value((2 << 40) | 5), "p2-5");
        assert_eq!(parse_value(b"x1-2"), None);
        assert_eq!(parse_value(b"p1-"), None);
    }
}
