//! Deliberate bugs, for testing the checker that is supposed to catch them (the
//! simulator, `sluice-sim`). Compiled only with the `planted-bugs` feature; each bug is
//! off until [`set`] switches it on for the current thread, so a build with the feature
//! behaves exactly like one without until a test asks otherwise.

use std::cell::Cell;

/// A bug the replica can be told to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// No bug: the replica as written.
    None,
    /// Answer `acks=all` proposals `Ok` as soon as they are appended locally, not once
    /// a quorum has them (violates "never acknowledge what a crash of a quorum could
    /// lose").
    AckBeforeQuorum,
    /// Treat every `Sync` as done the moment it is emitted: raft-rs is told the entries
    /// are durable (so the leader counts itself and followers answer) before the fsync.
    AckBeforeFsync,
    /// On a conflicting append, cut the in-memory log but do not emit
    /// `Write::TruncateSuffix`: the stale suffix stays in the partition log.
    SkipConflictTruncation,
}

impl Bug {
    /// Every bug, for a test that tries each.
    pub const ALL: [Bug; 3] = [
        Bug::AckBeforeQuorum,
        Bug::AckBeforeFsync,
        Bug::SkipConflictTruncation,
    ];
}

thread_local! {
    static ACTIVE: Cell<Bug> = const { Cell::new(Bug::None) };
}

/// Switches `bug` on for replicas driven on this thread (`Bug::None` switches off).
pub fn set(bug: Bug) {
    ACTIVE.with(|a| a.set(bug));
}

/// The bug switched on for this thread.
pub fn get() -> Bug {
    ACTIVE.with(Cell::get)
}

/// Whether `bug` is switched on for this thread.
pub(crate) fn active(bug: Bug) -> bool {
    get() == bug
}
