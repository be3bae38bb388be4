//! The pure bookkeeping of one partition's readers: its high watermark and the fetch
//! requests long-polling for data. (Produce acknowledgements come from the partition's
//! replica, by token; the shard keeps their deadlines.)
//!
//! No I/O and no clock: time is an argument. Call order, per event:
//! - when a fetch finds nothing below the high watermark: [`Waiters::add_fetch`];
//! - when the committed end moves: [`Waiters::advance`], which returns what became
//!   ready;
//! - periodically: [`Waiters::expire`] with the current time.
//!
//! The high watermark only moves forward.

/// Identifies a request to the driver that will answer it.
pub type Token = u64;

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
    /// Data is readable at the fetch's offset now: read and answer.
    Readable(PendingFetch),
    /// The long-poll deadline passed with nothing new: answer with no batches.
    FetchExpired(PendingFetch),
}

/// Limits on what one partition keeps waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitLimits {
    /// Produce requests awaiting their acknowledgement (kept by the shard).
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

/// The waiting fetches and the high watermark of one partition.
#[derive(Debug, Clone)]
pub struct Waiters {
    high_watermark: u64,
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
            fetches: Vec::new(),
            limits,
        }
    }

    /// Offsets below this are committed and may be served to consumers.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Fetch requests waiting.
    pub fn fetches_waiting(&self) -> usize {
        self.fetches.len()
    }

    /// Waits until data lies at `fetch.offset` (it is at or above the high watermark).
    pub fn add_fetch(&mut self, fetch: PendingFetch) -> Result<(), TooManyWaiting> {
        if self.fetches.len() >= self.limits.fetches_max {
            return Err(TooManyWaiting);
        }
        self.fetches.push(fetch);
        Ok(())
    }

    /// The committed end moved to `end`: everything below it is readable. Appends to
    /// `out` the fetches that became ready.
    pub fn advance(&mut self, end: u64, out: &mut Vec<Ready>) {
        if end <= self.high_watermark {
            return;
        }
        self.high_watermark = end;
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

    /// Everything still waiting, for a shutdown: fetches expire empty.
    pub fn drain(&mut self, out: &mut Vec<Ready>) {
        out.extend(self.fetches.drain(..).map(Ready::FetchExpired));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(token: Token, offset: u64, deadline_ms: i64) -> PendingFetch {
        PendingFetch {
            token,
            offset,
            max_bytes: 1024,
            deadline_ms,
        }
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
    fn limits_bound_what_waits() {
        let mut w = Waiters::new(
            0,
            WaitLimits {
                acks_max: 1,
                fetches_max: 1,
            },
        );
        w.add_fetch(fetch(3, 0, 10)).unwrap();
        assert_eq!(w.add_fetch(fetch(4, 0, 10)), Err(TooManyWaiting));
        let mut out = Vec::new();
        w.drain(&mut out);
        assert_eq!(out, vec![Ready::FetchExpired(fetch(3, 0, 10))]);
    }
}
