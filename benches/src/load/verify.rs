//! The `--verify` checker: did every acknowledged record land exactly once, where the
//! broker said, in order?
//!
//! Call order: [`Checker::new`]; [`Checker::sent`] once for every record a producer
//! handed to the SDK, with what its delivery future said (any order);
//! [`Checker::expect`] with the offset range read back from each partition; then
//! [`Checker::consumed`] for every record read back, each partition's in offset order
//! (partitions may interleave); finally [`Checker::finish`].
//!
//! What counts as an anomaly (any makes the run fail):
//!
//! - **lost**: acknowledged, but not in the log read back;
//! - **duplicated**: a record of this run read more than once (each extra copy);
//! - **misplaced**: acknowledged at one partition/offset, but its first copy is
//!   elsewhere;
//! - **reordered**: within a partition, a producer's record read after a record of the
//!   same producer with a higher sequence number (the SDK promises send order per
//!   partition);
//! - **written despite a definite failure**: the SDK said the record was definitely
//!   not written, yet it is in the log;
//! - **offset order**: the consumer handed a partition's records out of offset order;
//! - **unknown**: a record of this run that no producer reported sending.
//!
//! Not anomalies, but reported: records whose delivery was indeterminate (or never
//! resolved) found or not found in the log, records of other runs or other writers in
//! the range read (`foreign`), offsets missing inside the range read (`offset_gaps`: a
//! lost *acknowledged* record shows up as `lost` anyway), and whether the read reached
//! the end of every range.

use serde::Serialize;

use super::payload::{decode, RecordId};

/// How many anomalies are described in words in [`VerifyReport::examples`].
pub const EXAMPLES_MAX: usize = 10;

/// What a producer learned about one record it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Acknowledged at this partition and offset.
    Acked { partition: u32, offset: u64 },
    /// Failed; the broker guarantees it was not appended.
    FailedDefinite,
    /// Failed, but it may have been appended.
    FailedIndeterminate,
    /// Handed to the SDK; its delivery never resolved (the run stopped waiting).
    Unresolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No `sent` call for this sequence number.
    Unknown,
    Acked,
    FailedDefinite,
    FailedIndeterminate,
    Unresolved,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: State,
    partition: u32,
    offset: u64,
    /// Copies read back.
    seen: u32,
    /// Whether the first copy was at (`partition`, `offset`).
    first_at_ack: bool,
}

const EMPTY: Slot = Slot {
    state: State::Unknown,
    partition: 0,
    offset: 0,
    seen: 0,
    first_at_ack: false,
};

#[derive(Debug, Clone, Default)]
struct PartitionState {
    /// The range read back: `start..end`.
    range: Option<(u64, u64)>,
    /// The offset after the last record consumed.
    next: Option<u64>,
    /// Per producer, the highest sequence number read so far in this partition.
    max_seq: Vec<Option<u64>>,
}

/// Counts of what the check found. `anomalies() == 0` is a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records acknowledged.
    pub acked: u64,
    /// Records of this run read back (copies included).
    pub consumed: u64,
    /// Acknowledged records not read back.
    pub lost: u64,
    /// Extra copies of records of this run.
    pub duplicated: u64,
    /// Acknowledged records whose first copy is not at the acknowledged offset.
    pub misplaced: u64,
    /// Records read after a higher sequence number of the same producer in the same
    /// partition.
    pub reordered: u64,
    /// Records read back that the SDK said were definitely not written.
    pub written_despite_definite_failure: u64,
    /// Records handed out at or below an offset already handed out in their partition.
    pub offset_order_errors: u64,
    /// Records of this run read back that no producer reported sending.
    pub unknown_records: u64,
    /// Records whose delivery failed definitely (and were not read back).
    pub failed_definite: u64,
    /// Records whose delivery was indeterminate or never resolved, and were read back.
    pub indeterminate_found: u64,
    /// Records whose delivery was indeterminate or never resolved, not read back.
    pub indeterminate_missing: u64,
    /// Records in the ranges read that are not this run's (other runs, other writers,
    /// not a `sluice-bench` payload).
    pub foreign: u64,
    /// Offsets inside the ranges read that held no record.
    pub offset_gaps: u64,
    /// Whether every partition was read to the end of its range.
    pub read_complete: bool,
    /// The first few anomalies, in words.
    pub examples: Vec<String>,
}

impl VerifyReport {
    /// Everything that makes the run fail.
    pub fn anomalies(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.misplaced
            + self.reordered
            + self.written_despite_definite_failure
            + self.offset_order_errors
            + self.unknown_records
    }
}

/// Describes an anomaly in words, while fewer than [`EXAMPLES_MAX`] are.
fn example(report: &mut VerifyReport, text: impl FnOnce() -> String) {
    if report.examples.len() < EXAMPLES_MAX {
        report.examples.push(text());
    }
}

/// The checker. See the module doc for the call order.
#[derive(Debug)]
pub struct Checker {
    run_id: u64,
    /// Per producer, indexed by sequence number.
    slots: Vec<Vec<Slot>>,
    partitions: Vec<PartitionState>,
    report: VerifyReport,
}

impl Checker {
    /// A checker for run `run_id` with `producers` producers over `partitions`
    /// partitions.
    pub fn new(run_id: u64, producers: u32, partitions: u32) -> Checker {
        Checker {
            run_id,
            slots: vec![Vec::new(); producers as usize],
            partitions: (0..partitions)
                .map(|_| PartitionState {
                    max_seq: vec![None; producers as usize],
                    ..PartitionState::default()
                })
                .collect(),
            report: VerifyReport::default(),
        }
    }

    /// Records what the producer learned about record `id`. A producer outside the
    /// range given to [`Checker::new`] is ignored.
    pub fn sent(&mut self, id: RecordId, outcome: Sent) {
        let Some(slots) = self.slots.get_mut(id.producer as usize) else {
            return;
        };
        let Ok(seq) = usize::try_from(id.seq) else {
            return;
        };
        if slots.len() <= seq {
            slots.resize(seq + 1, EMPTY);
        }
        let slot = &mut slots[seq];
        match outcome {
            Sent::Acked { partition, offset } => {
                slot.state = State::Acked;
                slot.partition = partition;
                slot.offset = offset;
            }
            Sent::FailedDefinite => slot.state = State::FailedDefinite,
            Sent::FailedIndeterminate => slot.state = State::FailedIndeterminate,
            Sent::Unresolved => slot.state = State::Unresolved,
        }
    }

    /// The range `start..end` of `partition` that will be read back (for gaps and
    /// completeness).
    pub fn expect(&mut self, partition: u32, start: u64, end: u64) {
        if let Some(p) = self.partitions.get_mut(partition as usize) {
            p.range = Some((start, end.max(start)));
        }
    }

    /// One record read back: `value` is its value (`None`: a null value).
    pub fn consumed(&mut self, partition: u32, offset: u64, value: Option<&[u8]>) {
        let Some(p) = self.partitions.get_mut(partition as usize) else {
            self.report.foreign += 1;
            return;
        };
        // Offsets: strictly increasing, gaps counted.
        match p.next {
            Some(next) if offset < next => {
                self.report.offset_order_errors += 1;
                example(&mut self.report, || {
                    format!("partition {partition}: offset {offset} handed out after {next}")
                });
                return;
            }
            Some(next) => self.report.offset_gaps += offset - next,
            None => {
                if let Some((start, _)) = p.range {
                    self.report.offset_gaps += offset.saturating_sub(start);
                }
            }
        }
        p.next = Some(offset + 1);
        let header = value.and_then(|v| decode(v).ok());
        let Some(header) = header.filter(|h| h.run_id == self.run_id) else {
            self.report.foreign += 1;
            return;
        };
        let id = header.id;
        let slot = self
            .slots
            .get_mut(id.producer as usize)
            .and_then(|s| usize::try_from(id.seq).ok().and_then(|i| s.get_mut(i)));
        let Some(slot) = slot.filter(|s| s.state != State::Unknown) else {
            // This run's payload, but the producers never reported sending it: the tool
            // lost track of a record, or the log holds bytes nobody sent.
            self.report.consumed += 1;
            self.report.unknown_records += 1;
            example(&mut self.report, || {
                format!(
                    "partition {partition} offset {offset}: producer {} seq {} was never sent",
                    id.producer, id.seq
                )
            });
            return;
        };
        self.report.consumed += 1;
        slot.seen = slot.seen.saturating_add(1);
        let (state, acked_at) = (slot.state, (slot.partition, slot.offset));
        let first = slot.seen == 1;
        if first {
            slot.first_at_ack = state == State::Acked && acked_at == (partition, offset);
        }
        if !first {
            self.report.duplicated += 1;
            example(&mut self.report, || {
                format!(
                    "producer {} seq {} read again at partition {partition} offset {offset}",
                    id.producer, id.seq
                )
            });
            return;
        }
        if state == State::FailedDefinite {
            self.report.written_despite_definite_failure += 1;
            example(&mut self.report, || {
                format!(
                    "producer {} seq {} failed definitely but is at partition {partition} \
                     offset {offset}",
                    id.producer, id.seq
                )
            });
        }
        let max = &mut p.max_seq[id.producer as usize];
        match *max {
            Some(m) if id.seq < m => {
                self.report.reordered += 1;
                example(&mut self.report, || {
                    format!(
                        "partition {partition} offset {offset}: producer {} seq {} after seq {m}",
                        id.producer, id.seq
                    )
                });
            }
            _ => *max = Some(id.seq),
        }
    }

    /// The verdict.
    pub fn finish(mut self) -> VerifyReport {
        let mut complete = true;
        for p in &self.partitions {
            if let Some((start, end)) = p.range {
                let reached = p.next.unwrap_or(start);
                if reached < end {
                    complete = false;
                    self.report.offset_gaps += end - reached;
                }
            }
        }
        self.report.read_complete = complete;
        let mut examples = Vec::new();
        for (producer, slots) in self.slots.iter().enumerate() {
            for (seq, slot) in slots.iter().enumerate() {
                match slot.state {
                    State::Acked => {
                        self.report.acked += 1;
                        if slot.seen == 0 {
                            self.report.lost += 1;
                            examples.push(format!(
                                "producer {producer} seq {seq} acked at partition {} offset {} \
                                 was not read back",
                                slot.partition, slot.offset
                            ));
                        } else if !slot.first_at_ack {
                            self.report.misplaced += 1;
                            examples.push(format!(
                                "producer {producer} seq {seq} acked at partition {} offset {} \
                                 was read elsewhere",
                                slot.partition, slot.offset
                            ));
                        }
                    }
                    State::FailedDefinite if slot.seen == 0 => self.report.failed_definite += 1,
                    State::FailedIndeterminate | State::Unresolved => {
                        if slot.seen > 0 {
                            self.report.indeterminate_found += 1;
                        } else {
                            self.report.indeterminate_missing += 1;
                        }
                    }
                    State::FailedDefinite | State::Unknown => {}
                }
            }
        }
        for e in examples {
            example(&mut self.report, || e);
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::payload::{encode, filler, Header};

    const RUN: u64 = 42;

    fn value(run_id: u64, producer: u32, seq: u64) -> Vec<u8> {
        let header = Header {
            run_id,
            id: RecordId { producer, seq },
            send_ns: 0,
        };
        encode(&header, 40, &filler(8))
    }

    fn id(producer: u32, seq: u64) -> RecordId {
        RecordId { producer, seq }
    }

    /// Two producers, two partitions; producer p's record s went to partition
    /// (p + s) % 2 and was acked at the next offset there. Returns the checker with
    /// every record sent and the log as (partition, offset, value).
    fn clean_run(per_producer: u64) -> (Checker, Vec<(u32, u64, Vec<u8>)>) {
        let mut checker = Checker::new(RUN, 2, 2);
        let mut next = [0u64; 2];
        let mut log = Vec::new();
        for seq in 0..per_producer {
            for producer in 0..2u32 {
                let partition = ((u64::from(producer) + seq) % 2) as u32;
                let offset = next[partition as usize];
                next[partition as usize] += 1;
                checker.sent(id(producer, seq), Sent::Acked { partition, offset });
                log.push((partition, offset, value(RUN, producer, seq)));
            }
        }
        for (p, end) in next.iter().enumerate() {
            checker.expect(p as u32, 0, *end);
        }
        (checker, log)
    }

    fn replay(mut checker: Checker, log: &[(u32, u64, Vec<u8>)]) -> VerifyReport {
        for (p, o, v) in log {
            checker.consumed(*p, *o, Some(v));
        }
        checker.finish()
    }

    #[test]
    fn a_clean_log_passes() {
        let (checker, log) = clean_run(50);
        let r = replay(checker, &log);
        assert_eq!(r.anomalies(), 0, "{r:?}");
        assert_eq!(r.acked, 100);
        assert_eq!(r.consumed, 100);
        assert!(r.read_complete);
        assert_eq!(r.offset_gaps, 0);
        assert!(r.examples.is_empty());
    }

    #[test]
    fn a_planted_duplicate_is_found() {
        let (mut checker, mut log) = clean_run(10);
        // Producer 0's seq 4 (partition 0) appended a second time at the end.
        let end = log.iter().filter(|(p, _, _)| *p == 0).count() as u64;
        log.push((0, end, value(RUN, 0, 4)));
        checker.expect(0, 0, end + 1);
        let r = replay(checker, &log);
        assert_eq!(r.duplicated, 1, "{r:?}");
        assert_eq!(r.anomalies(), 1, "{r:?}");
        assert_eq!(r.lost, 0);
        assert!(
            r.examples[0].contains("seq 4 read again"),
            "{:?}",
            r.examples
        );
    }

    #[test]
    fn a_planted_gap_is_a_lost_record() {
        let (checker, mut log) = clean_run(10);
        // Drop partition 1's record at offset 3.
        let i = log.iter().position(|(p, o, _)| (*p, *o) == (1, 3)).unwrap();
        log.remove(i);
        let r = replay(checker, &log);
        assert_eq!(r.lost, 1, "{r:?}");
        assert_eq!(r.offset_gaps, 1, "{r:?}");
        assert_eq!(r.anomalies(), 1, "{r:?}");
        assert!(
            r.examples[0].contains("was not read back"),
            "{:?}",
            r.examples
        );
    }

    #[test]
    fn a_truncated_read_is_incomplete_and_loses_the_tail() {
        let (checker, mut log) = clean_run(10);
        // Partition 0's last two records never read.
        log.retain(|(p, o, _)| !(*p == 0 && *o >= 8));
        let r = replay(checker, &log);
        assert!(!r.read_complete);
        assert_eq!(r.lost, 2, "{r:?}");
        assert_eq!(r.offset_gaps, 2, "{r:?}");
    }

    #[test]
    fn a_planted_reorder_is_found() {
        let (checker, mut log) = clean_run(10);
        // Partition 0 holds producer 0's even seqs and producer 1's odd ones,
        // interleaved: swap producer 0's seqs 2 and 4, so 4 is read before 2.
        let idx = |log: &Vec<(u32, u64, Vec<u8>)>, seq: u64| {
            log.iter()
                .position(|(p, _, v)| *p == 0 && *v == value(RUN, 0, seq))
                .unwrap()
        };
        let (a, b) = (idx(&log, 2), idx(&log, 4));
        let (va, vb) = (log[a].2.clone(), log[b].2.clone());
        log[a].2 = vb;
        log[b].2 = va;
        let r = replay(checker, &log);
        assert_eq!(r.reordered, 1, "{r:?}");
        // Both records are read, each at the other's acked offset.
        assert_eq!(r.misplaced, 2, "{r:?}");
        assert_eq!(r.lost, 0);
        assert_eq!(r.duplicated, 0);
    }

    #[test]
    fn a_record_at_another_offset_is_misplaced() {
        let mut checker = Checker::new(RUN, 1, 1);
        checker.sent(
            id(0, 0),
            Sent::Acked {
                partition: 0,
                offset: 5,
            },
        );
        checker.expect(0, 0, 1);
        checker.consumed(0, 0, Some(&value(RUN, 0, 0)));
        let r = checker.finish();
        assert_eq!(r.misplaced, 1, "{r:?}");
        assert_eq!(r.anomalies(), 1);
    }

    #[test]
    fn failures_are_judged_by_their_outcome() {
        let mut checker = Checker::new(RUN, 1, 1);
        checker.sent(id(0, 0), Sent::FailedDefinite);
        checker.sent(id(0, 1), Sent::FailedIndeterminate);
        checker.sent(id(0, 2), Sent::FailedIndeterminate);
        checker.sent(id(0, 3), Sent::Unresolved);
        checker.sent(id(0, 4), Sent::FailedDefinite);
        checker.expect(0, 0, 3);
        // Seq 1 (indeterminate) landed: fine. Seq 4 (definite) landed: an anomaly.
        checker.consumed(0, 0, Some(&value(RUN, 0, 1)));
        checker.consumed(0, 1, Some(&value(RUN, 0, 3)));
        checker.consumed(0, 2, Some(&value(RUN, 0, 4)));
        let r = checker.finish();
        assert_eq!(r.indeterminate_found, 2, "{r:?}");
        assert_eq!(r.indeterminate_missing, 1, "{r:?}");
        assert_eq!(r.failed_definite, 1, "{r:?}");
        assert_eq!(r.written_despite_definite_failure, 1, "{r:?}");
        assert_eq!(r.anomalies(), 1);
    }

    #[test]
    fn other_runs_and_foreign_bytes_are_not_anomalies() {
        let mut checker = Checker::new(RUN, 1, 1);
        checker.sent(
            id(0, 0),
            Sent::Acked {
                partition: 0,
                offset: 2,
            },
        );
        checker.expect(0, 0, 3);
        checker.consumed(0, 0, Some(&value(RUN + 1, 0, 0)));
        checker.consumed(0, 1, Some(b"hello"));
        checker.consumed(0, 2, Some(&value(RUN, 0, 0)));
        let r = checker.finish();
        assert_eq!(r.foreign, 2, "{r:?}");
        assert_eq!(r.anomalies(), 0, "{r:?}");
        assert!(r.read_complete);
    }

    #[test]
    fn a_record_nobody_sent_is_an_anomaly() {
        let mut checker = Checker::new(RUN, 1, 1);
        checker.sent(id(0, 1), Sent::FailedDefinite);
        checker.expect(0, 0, 2);
        checker.consumed(0, 0, Some(&value(RUN, 0, 0))); // seq 0: slot exists, never sent
        checker.consumed(0, 1, Some(&value(RUN, 0, 7))); // seq 7: no slot at all
        let r = checker.finish();
        assert_eq!(r.unknown_records, 2, "{r:?}");
        assert_eq!(r.anomalies(), 2);
    }

    #[test]
    fn offsets_handed_out_of_order_are_an_anomaly() {
        let mut checker = Checker::new(RUN, 1, 1);
        checker.expect(0, 0, 2);
        checker.consumed(0, 1, Some(b"x"));
        checker.consumed(0, 0, Some(b"y"));
        let r = checker.finish();
        assert_eq!(r.offset_order_errors, 1);
        assert_eq!(r.offset_gaps, 1);
        assert_eq!(r.anomalies(), 1);
    }
}
