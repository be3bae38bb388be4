//! The pure bookkeeping of one partition: its high watermark, the produce requests
//! waiting for durability, and the fetch requests long-polling for data.
//!
//! No I/O and no clock: time is an argument. Call order, per event:
//! - after an append that waits for durability: [`Waiters::add_ack`];
//! - when a fetch finds nothing below the high watermark: [`Waiters::add_fetch`];
//! - when the durable end moves (a sync returned; later: Raft commit):
//!   [`Waiters::advance`], which returns what became ready;
//! - periodically: [`Waiters::expire`] with the current time;
//! - when the log is cut (suffix truncation): [`Waiters::truncate`].
//!
//! The high watermark only moves forward, except by `truncate` (which Raft needs
//! only for uncommitted data, never below what was acknowledged).

use std::collections::VecDeque;

/// Identifies a request to the driver that will answer it.
pub type Token = u64;

/// A produce request waiting until its batch is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck {
    pub token: Token,
    pub base_offset: u64,
    pub last_offset: u64,
    pub deadline_ms: i64,
}

/// A fetch request waiting until data lies below the high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingFetch {
    pub token: Token,
    pub offset: u64,
    pub max_bytes: u32,
    pub deadline_ms: i64,
}

/// What became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The batch is durable: answer the producer.
    Acked(PendingAck),
    /// The batch did not become durable in time (indeterminate for the producer: it
    /// may still be appended).
    AckTimedOut(PendingAck),
    /// Data is readable at the fetch's offset now: read and answer.
    Readable(PendingFetch),
    /// The long-poll deadline passed with nothing new: answer with no batches.
    FetchExpired(PendingFetch),
}

/// Limits on what one partition keeps waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitLimits {
    pub acks_max: usize,
    pub fetches_max: usize,
}

impl Default for WaitLimits {
    fn default() -> Self {
        Self {
            acks_max: 64 * 1024,
            fetches_max: 16 * 1024,
        }
    }
}

/// The waiting requests and the high watermark of one partition.
#[derive(Debug, Clone)]
pub struct Waiters {
    high_watermark: u64,
    /// In offset order (appends are ordered), so release pops from the front.
    acks: VecDeque<PendingAck>,
    fetches: Vec<PendingFetch>,
    limits: WaitLimits,
}

/// A waiter could not be added: the partition has too many waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyWaiting;

impl Waiters {
    /// Starts with everything below `high_watermark` readable.
    pub fn new(high_watermark: u64, limits: WaitLimits) -> Self {
        Self {
            high_watermark,
            acks: VecDeque::new(),
            fetches: Vec::new(),
            limits,
        }
    }

    /// Offsets below this are committed and may be served to consumers.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Produce requests waiting.
    pub fn acks_waiting(&self) -> usize {
        self.acks.len()
    }

    /// Fetch requests waiting.
    pub fn fetches_waiting(&self) -> usize {
        self.fetches.len()
    }

    /// Waits for `ack.last_offset` to become durable.
    pub fn add_ack(&mut self, ack: PendingAck) -> Result<(), TooManyWaiting> {
        if self.acks.len() >= self.limits.acks_max {
            return Err(TooManyWaiting);
        }
        if let Some(prev) = self.acks.back() {
            assert!(
                ack.base_offset > prev.last_offset,
                "engine: acks must be added in offset order"
            );
        }
        assert!(
            ack.base_offset >= self.high_watermark,
            "engine: ack for an offset already committed"
        );
        self.acks.push_back(ack);
        Ok(())
    }

    /// Waits until data lies at `fetch.offset` (it is at or above the high watermark).
    pub fn add_fetch(&mut self, fetch: PendingFetch) -> Result<(), TooManyWaiting> {
        if self.fetches.len() >= self.limits.fetches_max {
            return Err(TooManyWaiting);
        }
        self.fetches.push(fetch);
        Ok(())
    }

    /// The durable (committed) end moved to `end`: everything below it is readable.
    /// Appends to `out` what became ready, acks in offset order.
    pub fn advance(&mut self, end: u64, out: &mut Vec<Ready>) {
        if end <= self.high_watermark {
            return;
        }
        self.high_watermark = end;
        while let Some(ack) = self.acks.front().copied() {
            if ack.last_offset >= end {
                break;
            }
            self.acks.pop_front();
            out.push(Ready::Acked(ack));
        }
        let mut i = 0;
        while i < self.fetches.len() {
            match self.fetches.get(i).copied() {
                Some(f) if f.offset < end => {
                    self.fetches.swap_remove(i);
                    out.push(Ready::Readable(f));
                }
                _ => i += 1,
            }
        }
    }

    /// Times out what waited past its deadline.
    pub fn expire(&mut self, now_ms: i64, out: &mut Vec<Ready>) {
        // Acks keep offset order; a late one stays ordered among the rest.
        let mut kept = VecDeque::with_capacity(self.acks.len());
        for ack in self.acks.drain(..) {
            if ack.deadline_ms <= now_ms {
                out.push(Ready::AckTimedOut(ack));
            } else {
                kept.push_back(ack);
            }
        }
        self.acks = kept;
        let mut i = 0;
        while i < self.fetches.len() {
            match self.fetches.get(i).copied() {
                Some(f) if f.deadline_ms <= now_ms => {
                    self.fetches.swap_remove(i);
                    out.push(Ready::FetchExpired(f));
                }
                _ => i += 1,
            }
        }
    }

    /// The log was cut at `end`: acks for offsets at or past it will never be durable
    /// (they time out as indeterminate); the high watermark is clamped.
    pub fn truncate(&mut self, end: u64, out: &mut Vec<Ready>) {
        self.high_watermark = self.high_watermark.min(end);
        while let Some(ack) = self.acks.back().copied() {
            if ack.last_offset < end {
                break;
            }
            self.acks.pop_back();
            out.push(Ready::AckTimedOut(ack));
        }
    }

    /// Everything still waiting, for a shutdown: acks time out (indeterminate),
    /// fetches expire empty.
    pub fn drain(&mut self, out: &mut Vec<Ready>) {
        out.extend(self.acks.drain(..).map(Ready::AckTimedOut));
        out.extend(self.fetches.drain(..).map(Ready::FetchExpired));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(token: Token, base: u64, last: u64, deadline_ms: i64) -> PendingAck {
        PendingAck {
            token,
            base_offset: base,
            last_offset: last,
            deadline_ms,
        }
    }

    fn fetch(token: Token, offset: u64, deadline_ms: i64) -> PendingFetch {
        PendingFetch {
            token,
            offset,
            max_bytes: 1024,
            deadline_ms,
        }
    }

    #[test]
    fn acks_release_in_order_once_durable() {
        let mut w = Waiters::new(0, WaitLimits::default());
        w.add_ack(ack(1, 0, 4, 100)).unwrap();
        w.add_ack(ack(2, 5, 5, 100)).unwrap();
        w.add_ack(ack(3, 6, 9, 100)).unwrap();
        let mut out = Vec::new();
        w.advance(6, &mut out);
        assert_eq!(
            out,
            vec![
                Ready::Acked(ack(1, 0, 4, 100)),
                Ready::Acked(ack(2, 5, 5, 100))
            ]
        );
        assert_eq!(w.high_watermark(), 6);
        out.clear();
        w.advance(5, &mut out);
        assert!(out.is_empty(), "the high watermark never moves back");
        assert_eq!(w.high_watermark(), 6);
        w.advance(10, &mut out);
        assert_eq!(out, vec![Ready::Acked(ack(3, 6, 9, 100))]);
    }

    #[test]
    fn long_poll_wakes_when_data_arrives_or_expires() {
        let mut w = Waiters::new(10, WaitLimits::default());
        w.add_fetch(fetch(1, 10, 500)).unwrap();
        w.add_fetch(fetch(2, 12, 300)).unwrap();
        let mut out = Vec::new();
        w.expire(299, &mut out);
        assert!(out.is_empty());
        w.advance(11, &mut out);
        assert_eq!(out, vec![Ready::Readable(fetch(1, 10, 500))]);
        out.clear();
        w.expire(300, &mut out);
        assert_eq!(out, vec![Ready::FetchExpired(fetch(2, 12, 300))]);
        assert_eq!(w.fetches_waiting(), 0);
    }

    #[test]
    fn late_acks_time_out_as_indeterminate_and_truncation_drops_the_tail() {
        let mut w = Waiters::new(0, WaitLimits::default());
        w.add_ack(ack(1, 0, 0, 50)).unwrap();
        w.add_ack(ack(2, 1, 1, 500)).unwrap();
        w.add_ack(ack(3, 2, 2, 500)).unwrap();
        let mut out = Vec::new();
        w.expire(60, &mut out);
        assert_eq!(out, vec![Ready::AckTimedOut(ack(1, 0, 0, 50))]);
        out.clear();
        w.truncate(2, &mut out);
        assert_eq!(out, vec![Ready::AckTimedOut(ack(3, 2, 2, 500))]);
        out.clear();
        w.advance(2, &mut out);
        assert_eq!(out, vec![Ready::Acked(ack(2, 1, 1, 500))]);
    }

    #[test]
    fn limits_bound_what_waits() {
        let mut w = Waiters::new(
            0,
            WaitLimits {
                acks_max: 1,
                fetches_max: 1,
            },
        );
        w.add_ack(ack(1, 0, 0, 10)).unwrap();
        assert_eq!(w.add_ack(ack(2, 1, 1, 10)), Err(TooManyWaiting));
        w.add_fetch(fetch(3, 0, 10)).unwrap();
        assert_eq!(w.add_fetch(fetch(4, 0, 10)), Err(TooManyWaiting));
        let mut out = Vec::new();
        w.drain(&mut out);
        assert_eq!(out.len(), 2);
    }
}
