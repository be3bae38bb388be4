//! The invariants, checked after every event of a run.
//!
//! The checker keeps what the cluster has promised so far: the **committed record**
//! (every batch some node's high watermark has covered, by base offset, with its
//! bytes), the leader of each term, the writes acknowledged to producers and the
//! writes refused definitely. Each check compares a node's real state (its
//! `ReplicaStatus`, its partition log read back through [`Shadow`]) with that record:
//!
//! | name | what must hold |
//! |---|---|
//! | `election-safety` | at most one leader per term, ever |
//! | `log-matching` | two logs holding a batch at the same offset with the same term hold identical logs up to and including it |
//! | `committed-content` | a batch, once committed, never changes: every node's log agrees with the record below its own high watermark (re-checked after every restart and truncation) |
//! | `leader-completeness` | a leader of term T holds every batch committed before T |
//! | `quorum-durability` | every committed batch is fsynced in the logs of a majority (a node that is down counts as holding it): what a crash of any minority cannot lose |
//! | `hw-monotonic` | a node's high watermark never moves back while it runs |
//! | `replica-log-agreement` | the replica's idea of its log (end, start) is the log's, and its high watermark is within it |
//! | `term-durability` | a restarted node's term is at least the last term it ran with |
//! | `acked-not-committed` | an `Ok` reply names the offsets where the committed record holds those values |
//! | `acked-lost` | at the end every node's log holds every acknowledged value, once, at its offset |
//! | `duplicate-value` | no value is committed twice |
//! | `phantom-write` | a write refused definitely (NotLeader, Dropped: "nothing was appended") never appears |
//! | `consumer-order` | a consumer sees offsets in order without gaps, never beyond the high watermark |
//! | `consumer-content` | what a consumer reads is the committed record, and re-reading an offset gives the same value |
//! | `unexpected-failure` | a node's partition fails only when an injected fault (a failed fsync) explains it; no peer message is refused |
//! | `recovery-failed` | a crashed node always reopens |
//! | `panic` | nothing under test panics (an assertion in raft-rs, the replica or the log) |
//! | `convergence` | once faults stop, the cluster converges: a ready leader, every log identical and committed |
//!
//! The committed record's end is the cluster-wide max committed offset: it only grows,
//! and `quorum-durability` is what makes its growth a promise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;

use crate::shadow::{show_value, Shadow, Value};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (see the module docs).
    pub invariant: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            invariant,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// A committed batch.
#[derive(Debug, Clone)]
struct Committed {
    term: u64,
    bytes: Bytes,
}

/// What the cluster has promised. See the module docs.
#[derive(Debug, Default)]
pub struct Checker {
    committed: BTreeMap<u64, Committed>,
    /// The value at each committed offset (the log starts at 0 in the simulator).
    records: Vec<Value>,
    /// For each term a node observed a commit at, the committed end it observed.
    commit_terms: BTreeMap<u64, u64>,
    value_at: BTreeMap<Value, u64>,
    /// The chain hash of the record at each committed batch's end.
    chains: BTreeMap<u64, u64>,
    leaders: BTreeMap<u64, u64>,
    acked: BTreeMap<Value, u64>,
    definite: BTreeSet<Value>,
}

impl Checker {
    /// The cluster-wide committed end: every offset below it is committed.
    pub fn committed_end(&self) -> u64 {
        self.records.len() as u64
    }

    /// Acknowledged values so far.
    pub fn acked(&self) -> usize {
        self.acked.len()
    }

    /// The highest term that had a leader.
    pub fn max_leader_term(&self) -> u64 {
        self.leaders.keys().next_back().copied().unwrap_or(0)
    }

    /// The committed record's chain hash at `offset`, if a committed batch ends there
    /// (0 at offset 0).
    pub fn chain_at(&self, offset: u64) -> Option<u64> {
        if offset == 0 {
            return Some(0);
        }
        self.chains.get(&offset).copied()
    }

    /// The committed value at `offset`.
    pub fn value_at_offset(&self, offset: u64) -> Option<Value> {
        self.records.get(usize::try_from(offset).ok()?).copied()
    }

    /// Election safety: `id` leads `term`.
    pub fn observe_leader(&mut self, term: u64, id: u64) -> Result<(), Violation> {
        match self.leaders.insert(term, id) {
            Some(other) if other != id => Err(Violation::new(
                "election-safety",
                format!("nodes {other} and {id} both lead term {term}"),
            )),
            _ => Ok(()),
        }
    }

    /// Checks node `id`'s log against the committed record, extends the record with
    /// what its high watermark `hw` newly covers, and checks leader completeness.
    pub fn verify_node(
        &mut self,
        id: u64,
        shadow: &mut Shadow,
        hw: u64,
        term: u64,
        is_leader: bool,
    ) -> Result<(), Violation> {
        let mut i = shadow.verified;
        while let Some(b) = shadow.batches.get(i) {
            let below_hw = b.end() <= hw;
            if let Some(c) = self.committed.get(&b.base) {
                if c.bytes != b.bytes || self.chains.get(&b.end()) != Some(&b.chain) {
                    if below_hw {
                        return Err(Violation::new(
                            "committed-content",
                            format!(
                                "node {id} holds a different batch at committed offset {} \
                                 (term {}, committed term {}) below its high watermark {hw}",
                                b.base, b.term, c.term
                            ),
                        ));
                    }
                    break;
                }
            } else if b.base >= self.committed_end() {
                if !below_hw {
                    break;
                }
                assert_eq!(
                    b.base,
                    self.committed_end(),
                    "sim: verified prefix has a gap"
                );
                for (k, v) in b.values.iter().enumerate() {
                    let offset = b.base + k as u64;
                    if let Some(at) = self.value_at.insert(*v, offset) {
                        return Err(Violation::new(
                            "duplicate-value",
                            format!(
                                "{} committed at offset {at} and again at {offset} (node {id})",
                                show_value(*v)
                            ),
                        ));
                    }
                    if self.definite.contains(v) {
                        return Err(Violation::new(
                            "phantom-write",
                            format!(
                                "{} was refused definitely but is committed at offset {offset}",
                                show_value(*v)
                            ),
                        ));
                    }
                    self.records.push(*v);
                }
                self.chains.insert(b.end(), b.chain);
                self.committed.insert(
                    b.base,
                    Committed {
                        term: b.term,
                        bytes: b.bytes.clone(),
                    },
                );
                let e = self.commit_terms.entry(term).or_insert(0);
                *e = (*e).max(b.end());
            } else if below_hw {
                return Err(Violation::new(
                    "committed-content",
                    format!(
                        "node {id} has a batch at {} (term {}) that does not start on a \
                         committed batch boundary, below its high watermark {hw}",
                        b.base, b.term
                    ),
                ));
            } else {
                break;
            }
            i += 1;
        }
        shadow.verified = i;
        if shadow.verified_end() < hw.min(shadow.end()) {
            return Err(Violation::new(
                "committed-content",
                format!(
                    "node {id}'s log agrees with the committed record only up to {} but its \
                     high watermark is {hw}",
                    shadow.verified_end()
                ),
            ));
        }
        if is_leader {
            let need = self
                .commit_terms
                .range(..term)
                .map(|(_, end)| *end)
                .max()
                .unwrap_or(0);
            if shadow.verified_end() < need {
                return Err(Violation::new(
                    "leader-completeness",
                    format!(
                        "node {id} leads term {term} but its log agrees with the committed \
                         record only up to offset {}; offsets up to {need} were committed \
                         before term {term}",
                        shadow.verified_end()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Log matching between two logs (their chains are anchored on the committed
    /// record, so they compare whatever their starts).
    pub fn log_matching(a_id: u64, a: &Shadow, b_id: u64, b: &Shadow) -> Result<(), Violation> {
        let (a_id, a, b_id, b) = if a.end() <= b.end() {
            (a_id, a, b_id, b)
        } else {
            (b_id, b, a_id, a)
        };
        // The last batch of the shorter log that the other holds with the same term:
        // if the prefixes agree there they agree everywhere before.
        for x in a.batches.iter().rev() {
            if x.base < b.start {
                break;
            }
            let Some(y) = b.at(x.base) else {
                continue;
            };
            if y.term != x.term {
                continue;
            }
            if x.chain != y.chain || x.bytes != y.bytes {
                return Err(Violation::new(
                    "log-matching",
                    format!(
                        "nodes {a_id} and {b_id} both hold a batch of term {} at offset {} \
                         but their logs differ up to it",
                        x.term, x.base
                    ),
                ));
            }
            return Ok(());
        }
        Ok(())
    }

    /// Quorum durability: `verified_ends` are the live nodes' agreeing, fsynced
    /// prefixes, `down` the nodes not running, `majority` the quorum size.
    pub fn quorum(
        &self,
        mut verified_ends: Vec<(u64, u64)>,
        down: usize,
        majority: usize,
    ) -> Result<(), Violation> {
        let Some(k) = majority.checked_sub(down).filter(|k| *k > 0) else {
            return Ok(());
        };
        verified_ends.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        let end = self.committed_end();
        match verified_ends.get(k - 1) {
            Some((_, e)) if *e >= end => Ok(()),
            _ => Err(Violation::new(
                "quorum-durability",
                format!(
                    "offsets up to {end} are committed, but with {down} node(s) down only \
                     these logs hold the committed record durably (node, up to): \
                     {verified_ends:?}; {majority} are needed"
                ),
            )),
        }
    }

    /// A producer got `Ok` for `values` at `base..`.
    pub fn on_ack(&mut self, values: &[Value], base: u64, last: u64) -> Result<(), Violation> {
        if last + 1 - base != values.len() as u64 {
            return Err(Violation::new(
                "acked-not-committed",
                format!(
                    "a batch of {} records was acknowledged at offsets {base}..={last}",
                    values.len()
                ),
            ));
        }
        for (k, v) in values.iter().enumerate() {
            let offset = base + k as u64;
            if self.value_at_offset(offset) != Some(*v) {
                return Err(Violation::new(
                    "acked-not-committed",
                    format!(
                        "{} acknowledged at offset {offset}, but the committed record holds {} \
                         there (committed end {})",
                        show_value(*v),
                        self.value_at_offset(offset)
                            .map_or("nothing".to_string(), show_value),
                        self.committed_end()
                    ),
                ));
            }
            self.acked.insert(*v, offset);
        }
        Ok(())
    }

    /// A producer gave up on `values` after definite refusals: nothing was appended.
    pub fn on_definite_failure(&mut self, values: &[Value]) -> Result<(), Violation> {
        for v in values {
            if let Some(at) = self.value_at.get(v) {
                return Err(Violation::new(
                    "phantom-write",
                    format!(
                        "{} was refused definitely but is committed at offset {at}",
                        show_value(*v)
                    ),
                ));
            }
            self.definite.insert(*v);
        }
        Ok(())
    }

    /// The end of the run: every log (all converged) holds every acknowledged value
    /// exactly once, at its offset (unless retention removed that offset), and nothing
    /// refused definitely.
    pub fn final_check(&self, logs: &[(u64, &Shadow)]) -> Result<(), Violation> {
        for (id, shadow) in logs {
            let mut seen: BTreeMap<Value, u64> = BTreeMap::new();
            for b in &shadow.batches {
                for (k, v) in b.values.iter().enumerate() {
                    let offset = b.base + k as u64;
                    if let Some(first) = seen.insert(*v, offset) {
                        return Err(Violation::new(
                            "duplicate-value",
                            format!(
                                "node {id} holds {} at offsets {first} and {offset}",
                                show_value(*v)
                            ),
                        ));
                    }
                    if self.definite.contains(v) {
                        return Err(Violation::new(
                            "phantom-write",
                            format!(
                                "node {id} holds {} at offset {offset}, refused definitely",
                                show_value(*v)
                            ),
                        ));
                    }
                }
            }
            for (v, offset) in &self.acked {
                if *offset >= shadow.start && seen.get(v) != Some(offset) {
                    return Err(Violation::new(
                        "acked-lost",
                        format!(
                            "{} was acknowledged at offset {offset}; node {id} holds it at {:?}",
                            show_value(*v),
                            seen.get(v)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
