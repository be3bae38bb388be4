//! [`Replica`]: one partition replica, a raft-rs `RawNode` whose log is the partition log.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_proto::batch::{set_base_offset, set_leader_term, BatchError, BatchHeader, Limits};
use thiserror::Error;

use crate::state::{LogStart, Marker, MarkerKind, Membership, PersistentState};
use crate::store::{LogStore, Meta};

/// How a replica is set up.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's node id (raft ids start at 1).
    pub id: u64,
    /// Every voter of the group, this one included; used when there is no `raft.state`.
    pub voters: Vec<u64>,
    /// Election timeout in ticks: each timeout is drawn from `[election_tick,
    /// 2 * election_tick)` with the replica's own seeded RNG.
    pub election_tick: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_tick: usize,
    /// Largest append message, bytes of entries.
    pub max_size_per_msg: u64,
    /// Most append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Most uncommitted entry bytes a leader accepts before refusing proposals.
    pub max_uncommitted_bytes: u64,
    /// Budget for cached batch bytes beyond what is not yet applied.
    pub cache_bytes: usize,
    /// Seeds the election-timeout RNG. Give each replica its own.
    pub seed: u64,
    /// Limits for parsing batch headers.
    pub limits: Limits,
    /// The group is being created now on every voter (the opener knows it: a topic
    /// created after this node had its data): a replica opened without `raft.state`
    /// then has nothing to forget and votes normally. Otherwise (the default) such a
    /// replica may be a node that lost its disk, and it keeps the vote guard until it
    /// caught up (`Replica::is_catching_up`).
    pub new_group: bool,
}

impl ReplicaConfig {
    /// The defaults for node `id` in a group of `voters`.
    pub fn new(id: u64, voters: Vec<u64>) -> ReplicaConfig {
        ReplicaConfig {
            id,
            voters,
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 64 << 20,
            cache_bytes: 8 << 20,
            seed: id,
            limits: Limits::DEFAULT,
            new_group: false,
        }
    }
}

/// The header fields of one batch stored in the partition log, read at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: u64,
    pub records: u32,
    /// The batch header's leader-term field: the Raft term of its entry.
    pub term: u64,
    pub bytes: u32,
}

/// A storage operation the driver performs, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Append these batches (base offset and term already set) to the partition log.
    Append { batches: Vec<Bytes> },
    /// Cut the partition log at record `offset`, durably, before anything after it.
    TruncateSuffix { offset: u64 },
    /// Replace `raft.state` atomically and durably (temp file, fsync, rename, fsync dir)
    /// before performing any later write.
    SaveState { state: Vec<u8> },
    /// Drop the whole partition log and restart it, empty, at record `offset` (the
    /// follower's side of catching up past the leader's retention).
    ResetLog { offset: u64 },
}

/// A produce answered by the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub base_offset: u64,
    pub last_offset: u64,
}

/// Why a proposal was not accepted. Every variant but `Failed` is definite: nothing was
/// appended. `Failed` means the replica (or, through `sluice-engine`'s
/// `ReplicatedPartition::propose`, its storage) stopped, possibly after accepting the
/// entry: indeterminate (the broker answers `StorageFailed`, an indeterminate code).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the leader is not ready yet (it has not committed an entry of its term)")]
    NotReady,
    #[error("proposal dropped (too much uncommitted data, or a leadership transfer)")]
    Dropped,
    #[error("invalid batch: {0}")]
    Invalid(String),
    #[error("the replica has failed: {0}")]
    Failed(String),
}

/// Why an accepted proposal was not acknowledged. The write may or may not survive.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("leadership was lost before the entry committed; it may or may not be kept")]
    LeadershipLost,
}

/// How far a produce must get before its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Once the entry is appended locally (not yet durable).
    None,
    /// Once the leader's own log has it durably.
    Leader,
    /// Once it is committed: a quorum has it durably.
    All,
}

/// Something the driver must do. See [`Replica`] for the contract.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a Raft message to `msg.to`.
    Send(Message),
    /// Perform a storage operation; writes are performed in order.
    Write(Write),
    /// Make every write issued so far durable, then call
    /// [`Replica::handle_persisted`] with `number`. Syncs may be coalesced: persisting
    /// number `n` also covers every smaller number.
    Sync { number: u64 },
    /// Read whole batches from record `offset` on, up to about `max_bytes`, and hand
    /// them to [`Replica::handle_entries_fetched`] with `id`.
    Fetch {
        id: u64,
        offset: u64,
        max_bytes: u64,
    },
    /// Answer the produce `token`.
    Reply {
        token: u64,
        result: Result<Produced, ReplyError>,
    },
    /// The high watermark (committed record offset) moved up to this value.
    Committed { high_watermark: u64 },
}

/// Why a replica could not open or went out of service.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplicaError {
    #[error("raft: {0}")]
    Raft(String),
    #[error("partition log and raft.state disagree: {0}")]
    Inconsistent(String),
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("the replica has failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    token: u64,
    term: u64,
    acks: Acks,
}

/// A replica's counters and state, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaStatus {
    pub id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub first_index: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub cached_bytes: usize,
    pub pending_proposals: usize,
}

/// One partition replica: a pure state machine over raft-rs.
///
/// # Call order
///
/// 1. [`Replica::open`] with `raft.state` (if any) and the header of every batch in the
///    partition log; then drain [`Replica::poll_action`] — the first actions may be
///    repairs (a suffix cut, a state rewrite) that must run before anything else.
/// 2. Feed inputs as they come: [`Replica::handle_tick`] on a fixed interval,
///    [`Replica::handle_message`] for each Raft message from a peer,
///    [`Replica::handle_propose`] for each produce, [`Replica::handle_persisted`] when a
///    requested sync is done, [`Replica::handle_entries_fetched`] when a requested read
///    is done.
/// 3. After each input, drain [`Replica::poll_action`] and perform the actions:
///    `Send` at once (batched per destination as the driver likes); `Write`s in order;
///    `Sync` after the writes before it; `Fetch` whenever; `Reply` and `Committed` go
///    to the producers and consumers. A driver may hold several replicas' syncs and
///    cover them with one fdatasync round (group commit).
///
/// Nothing here performs I/O, reads a clock or spawns anything; the only randomness is
/// the election timeout, from the replica's seeded RNG.
pub struct Replica {
    raw: RawNode<LogStore>,
    id: u64,
    rng: SmallRng,
    election_tick: usize,
    max_size_per_msg: u64,
    limits: Limits,
    actions: VecDeque<Action>,
    pending: BTreeMap<u64, Pending>,
    /// Messages to send once the Ready of that number is persisted.
    after_persist: VecDeque<(u64, Vec<Message>)>,
    /// Last entry index of each Ready that wrote entries, by number.
    unsynced: VecDeque<(u64, u64)>,
    persisted_index: u64,
    applied: u64,
    high_watermark: u64,
    leader_ready: bool,
    role: (u64, StateRole, u64),
    fetch_seq: u64,
    fetches: BTreeMap<u64, raft::GetEntriesContext>,
    failed: Option<String>,
    /// The extra bytes of the last log-start marker installed from a leader, until taken.
    installed_extra: Option<Vec<u8>>,
    /// Followers found to have lost their log (`notice_lost_log`).
    lost_logs: u64,
    /// Opened without any persisted state in a group of several voters (and not as a
    /// new group): this replica may be a node that lost its disk and forgot what it
    /// acknowledged and whom it voted for. Until it caught up (`check_caught_up`), it
    /// grants no vote to a candidate whose log is not empty (`guard_vote`).
    catching_up: bool,
    /// Votes refused by that guard.
    votes_withheld: u64,
    /// The end offset of the log when the vote guard ended in this run (kept after):
    /// every record committed before this replica started empty lies below it.
    caught_up_at: Option<u64>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

fn raft_err(e: raft::Error) -> ReplicaError {
    ReplicaError::Raft(e.to_string())
}

impl Replica {
    /// Opens a replica over its stored state. `log_start_offset` is the partition log's
    /// first offset; `batches` the header of every batch in it, in order.
    ///
    /// Rebuilds the entry sequence by walking `raft.state`'s markers and the batches
    /// together from the log-start marker; whatever does not continue that sequence (a
    /// batch written after a marker whose state never became durable, markers whose
    /// data never became durable) is cut, through the first actions.
    pub fn open(
        config: ReplicaConfig,
        state: Option<PersistentState>,
        log_start_offset: u64,
        batches: &[StoredBatch],
    ) -> Result<Replica, ReplicaError> {
        let had_state = state.is_some();
        let state = state.unwrap_or_else(|| PersistentState {
            // A log with data but no raft.state was written by a single-node broker
            // before replication: it is kept and readable, and Raft starts after it.
            start: LogStart {
                index: 0,
                term: 0,
                offset: batches
                    .last()
                    .map_or(log_start_offset, |b| b.base_offset + u64::from(b.records)),
            },
            membership: Membership {
                voters: config.voters.clone(),
                ..Membership::default()
            },
            ..PersistentState::default()
        });
        let mut store = LogStore::new(state.start, config.cache_bytes);
        store.set_membership(&state.membership);
        store.hard.term = state.term;
        store.hard.vote = state.vote;

        // Walk markers and batches together.
        let mut markers = state.markers.iter().peekable();
        let skip = if had_state {
            batches.partition_point(|b| b.base_offset < state.start.offset)
        } else {
            batches.len()
        };
        let mut rest = batches.get(skip..).unwrap_or_default();
        let mut repairs = Vec::new();
        let log_end = batches
            .last()
            .map_or(log_start_offset, |b| b.base_offset + u64::from(b.records));
        // No batch starts at the state's start (the log ends before it, or a batch
        // straddles it).
        let misaligned = rest.first().map_or(log_end != state.start.offset, |b| {
            b.base_offset > state.start.offset
        });
        if had_state && misaligned {
            // A crash while installing a leader's log start (`install_snapshot`): the new
            // raft.state is durable, the log was not reset yet. raft.state is the
            // authority: the log restarts, empty, at its start.
            repairs.push(Write::ResetLog {
                offset: state.start.offset,
            });
            rest = &[];
        }
        let mut stored = rest.iter().peekable();
        let mut offset = state.start.offset;
        let mut term = state.start.term;
        let mut kept_markers = 0usize;
        loop {
            let index = store.last() + 1;
            if let Some(m) = markers.peek() {
                if m.index == index && m.offset == offset && m.term >= term {
                    term = m.term;
                    store.markers.insert(index, (*m).clone());
                    store.push(
                        Meta {
                            term,
                            offset,
                            records: 0,
                            bytes: 0,
                        },
                        None,
                    );
                    kept_markers += 1;
                    markers.next();
                    continue;
                }
            }
            match stored.peek() {
                Some(b) if b.base_offset == offset && b.term >= term && b.records > 0 => {
                    term = b.term;
                    store.push(
                        Meta {
                            term,
                            offset,
                            records: b.records,
                            bytes: b.bytes,
                        },
                        None,
                    );
                    offset += u64::from(b.records);
                    stored.next();
                }
                _ => break,
            }
        }
        if stored.peek().is_some() {
            repairs.push(Write::TruncateSuffix { offset });
        }
        let last = store.last();
        store.hard.commit = state.commit.min(last);
        let applied = store.hard.commit;
        let high_watermark = store.end_offset_at(applied);

        let mut cfg = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: config.max_uncommitted_bytes,
            ..raft::Config::default()
        };
        cfg.min_election_tick = config.election_tick;
        cfg.max_election_tick = config.election_tick * 2;
        cfg.validate().map_err(raft_err)?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&cfg, store, &logger).map_err(raft_err)?;
        let mut replica = Replica {
            role: (raw.raft.term, raw.raft.state, raw.raft.leader_id),
            raw,
            id: config.id,
            rng: SmallRng::seed_from_u64(config.seed),
            election_tick: config.election_tick,
            max_size_per_msg: config.max_size_per_msg,
            limits: config.limits,
            actions: VecDeque::new(),
            pending: BTreeMap::new(),
            after_persist: VecDeque::new(),
            unsynced: VecDeque::new(),
            persisted_index: last,
            applied,
            high_watermark,
            leader_ready: false,
            fetch_seq: 0,
            fetches: BTreeMap::new(),
            failed: None,
            installed_extra: None,
            lost_logs: 0,
            catching_up: if had_state {
                state.catching_up
            } else {
                config.voters.len() > 1 && !config.new_group
            },
            votes_withheld: 0,
            caught_up_at: None,
        };
        replica.reroll_timeout();
        let markers_dropped = kept_markers != state.markers.len();
        if !had_state || markers_dropped {
            repairs.push(Write::SaveState {
                state: replica.persistent_state().encode(),
            });
        }
        replica
            .actions
            .extend(repairs.into_iter().map(Action::Write));
        Ok(replica)
    }

    /// The state `raft.state` should hold now.
    pub fn persistent_state(&self) -> PersistentState {
        let s = self.raw.store();
        PersistentState {
            term: s.hard.term,
            vote: s.hard.vote,
            commit: s.hard.commit.min(self.persisted_index),
            start: s.start,
            membership: s.membership(),
            markers: s.markers.values().cloned().collect(),
            catching_up: self.catching_up,
        }
    }

    /// Counters and state.
    pub fn status(&self) -> ReplicaStatus {
        let s = self.raw.store();
        let leader = self.raw.raft.leader_id;
        ReplicaStatus {
            id: self.id,
            term: self.raw.raft.term,
            leader: (leader != raft::INVALID_ID).then_some(leader),
            is_leader: self.raw.raft.state == StateRole::Leader,
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: self.applied,
            last_index: s.last(),
            first_index: s.first(),
            high_watermark: self.high_watermark,
            log_start_offset: s.start.offset,
            log_end_offset: s.end_offset(),
            cached_bytes: s.cached_bytes(),
            pending_proposals: self.pending.len(),
        }
    }

    /// The committed record offset: consumers may read below it.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Whether this replica leads and has committed an entry of its own term, so that
    /// its high watermark covers everything any earlier leader acknowledged.
    pub fn is_ready_leader(&self) -> bool {
        self.leader_ready && self.raw.raft.state == StateRole::Leader
    }

    /// Hands leadership to voter `to` (its preferred leader, say) if this replica is the
    /// ready leader, `to` is another voter heard from within the last election timeout
    /// and at most `lag_max` entries behind, and no transfer is under way. raft-rs then
    /// sends `to` whatever it lacks and has it campaign at once (`MsgTimeoutNow`);
    /// meanwhile proposals are refused ([`ProposeError::Dropped`], retriable), for at
    /// most an election timeout if the transfer does not complete. True if started.
    pub fn transfer_leadership(&mut self, to: u64, lag_max: u64) -> bool {
        let raft = &self.raw.raft;
        if !self.is_ready_leader() || to == self.id || raft.lead_transferee.is_some() {
            return false;
        }
        let last = raft.raft_log.last_index();
        let Some(pr) = raft.prs().get(to) else {
            return false;
        };
        if !pr.recent_active || last.saturating_sub(pr.matched) > lag_max {
            return false;
        }
        self.raw.transfer_leader(to);
        self.after_call();
        true
    }

    /// How many voters the group has (this replica's view of its configuration).
    pub fn voter_count(&self) -> usize {
        self.raw.raft.prs().conf().voters().ids().len()
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<u64> {
        let l = self.raw.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }

    /// Why the replica stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Opaque bytes this replica sends, as a leader, with its log-start marker (the Raft
    /// snapshot that restarts a follower's log at the leader's log start). The engine
    /// puts there what its log start took away that the follower cannot derive from the
    /// log (the idempotent producers known only from deleted batches).
    pub fn set_snapshot_extra(&mut self, bytes: Vec<u8>) {
        self.raw.mut_store().snapshot_extra = bytes;
    }

    /// The extra bytes of the log-start marker last installed from a leader (set when
    /// its `Write::ResetLog` is issued), once.
    pub fn take_installed_extra(&mut self) -> Option<Vec<u8>> {
        self.installed_extra.take()
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Advances the logical clock by one tick.
    pub fn handle_tick(&mut self) {
        if self.failed.is_some() {
            return;
        }
        // A log start installed from the leader is applied in raft-rs only once it is
        // durable (see `persisted`); until then a campaign would read "unapplied"
        // entries below the new first index and raft-rs would abort. The leader was
        // heard from just now, so holding the election clock for that long is harmless.
        if self.raw.raft.raft_log.applied < self.applied {
            return;
        }
        self.raw.tick();
        self.after_call();
    }

    /// Starts an election now (tests, and a single-voter group at start-up).
    pub fn campaign(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.raw.campaign() {
            self.fail(format!("campaign: {e}"));
        }
        self.after_call();
    }

    /// Steps a Raft message from a peer. A message that does not belong to this group's
    /// protocol is refused; raft-rs ignores stale ones itself.
    pub fn handle_message(&mut self, msg: Message) -> Result<(), ReplicaError> {
        if let Some(f) = &self.failed {
            return Err(ReplicaError::Failed(f.clone()));
        }
        if msg.to != self.id {
            return Err(ReplicaError::BadMessage(format!(
                "addressed to {}, this is {}",
                msg.to, self.id
            )));
        }
        let mut msg = msg;
        let last_index = self.raw.raft.raft_log.last_index();
        // A leader's heartbeat carries the commit index up to what this replica
        // acknowledged: past the end of our log, we lost entries we had acknowledged.
        let lost = (msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last_index)
            .then_some((msg.from, msg.term, msg.commit));
        sanitize(&mut msg, last_index)?;
        self.notice_lost_log(&msg);
        if !self.guard_vote(&msg) {
            return Ok(());
        }
        let result = self.raw.step(msg);
        if let Some((leader, term, commit)) = lost {
            self.report_lost_log(leader, term, commit);
        }
        self.after_call();
        self.check_caught_up();
        match result {
            Ok(()) | Err(raft::Error::StepPeerNotFound) => Ok(()),
            Err(raft::Error::StepLocalMsg) => {
                Err(ReplicaError::BadMessage("a local message type".into()))
            }
            Err(e) => Err(raft_err(e)),
        }
    }

    /// A follower that refuses an append with a hint below the index it acknowledged
    /// lost its log: its data directory was emptied or replaced, and it restarted
    /// empty. raft-rs assumes an acknowledged index never goes back, so it would take
    /// every such refusal for a stale one and never send that follower anything again.
    /// Probe it afresh instead, from what it says it has (the log start marker if that
    /// is below this leader's log). Messages of one peer arrive in order, so a refusal
    /// that arrives after the acknowledgement was sent after it: it is not stale.
    fn notice_lost_log(&mut self, msg: &Message) {
        let raft = &mut self.raw.raft;
        if msg.get_msg_type() != MessageType::MsgAppendResponse
            || !msg.reject
            || msg.term != raft.term
            || raft.state != StateRole::Leader
        {
            return;
        }
        let Some(pr) = raft.mut_prs().get_mut(msg.from) else {
            return;
        };
        if msg.reject_hint >= pr.matched {
            return;
        }
        pr.matched = 0;
        pr.become_probe();
        // What raft-rs's probe expects of a refusal it takes: the index it sent after.
        pr.next_idx = msg.index.saturating_add(1);
        self.lost_logs += 1;
    }

    /// The vote guard of a replica that started empty (`catching_up`): false to drop
    /// `msg`, a vote request from a candidate with a non-empty log. Were such a replica
    /// a node that lost its disk, its vote could elect a candidate missing entries that
    /// were committed with this node's (forgotten) acknowledgement. A group that is new
    /// everywhere (and not opened as `new_group`) still elects: its candidates' logs are
    /// empty.
    fn guard_vote(&mut self, msg: &Message) -> bool {
        if !self.catching_up {
            return true;
        }
        let vote = matches!(
            msg.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        );
        if vote && msg.index > 0 {
            self.votes_withheld += 1;
            return false;
        }
        true
    }

    /// Ends the vote guard once this replica holds every entry committed before it
    /// started: when its commit index reaches an entry of the current leader's term
    /// (that leader holds every entry committed in earlier terms, and our log matches
    /// its up to there), or when it is elected itself (a majority found its log
    /// complete). Not on the leader's commit index alone: a leader new in its term
    /// reports a commit index that lags until it commits an entry of its own.
    fn check_caught_up(&mut self) {
        if !self.catching_up {
            return;
        }
        let raft = &self.raw.raft;
        let committed = raft.raft_log.committed;
        let done = raft.state == StateRole::Leader
            || (raft.state == StateRole::Follower
                && committed > 0
                && raft.raft_log.term(committed).is_ok_and(|t| t == raft.term));
        if done {
            self.catching_up = false;
            self.caught_up_at = Some(self.raw.store().end_offset());
            // Durably: a restart from here on votes normally.
            self.save_state();
        }
    }

    /// The end offset of the log when the vote guard ended in this run: every record
    /// committed before this replica started without state (or with the guard kept
    /// from an earlier run) lies below it. `None`: not guarded in this run, or not
    /// caught up yet.
    pub fn caught_up_at(&self) -> Option<u64> {
        self.caught_up_at
    }

    /// Whether the vote guard is on (see [`Replica::votes_withheld`]).
    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    /// Vote requests this replica dropped because it started empty and has not yet
    /// caught up with a leader.
    pub fn votes_withheld(&self) -> u64 {
        self.votes_withheld
    }

    /// The follower's side of `notice_lost_log`: told by `leader`'s heartbeat that the
    /// commit index is `commit`, past the end of this replica's log, it answers with a
    /// refusal the leader would get had it sent an append after `commit`, hinting at
    /// where this log really ends. Heartbeats alone never make raft-rs send that
    /// refusal, and an idle group sends nothing else.
    fn report_lost_log(&mut self, leader: u64, term: u64, commit: u64) {
        let raft = &self.raw.raft;
        if raft.term != term || raft.leader_id != leader || raft.state == StateRole::Leader {
            return;
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppendResponse);
        m.from = self.id;
        m.to = leader;
        m.term = term;
        m.index = commit;
        m.reject = true;
        m.reject_hint = raft.raft_log.last_index();
        self.actions.push_back(Action::Send(m));
    }

    /// How many times a follower was found to have lost its log (see
    /// `notice_lost_log`) since this replica opened.
    pub fn lost_logs(&self) -> u64 {
        self.lost_logs
    }

    /// Decodes and steps a message received as bytes.
    pub fn handle_message_bytes(&mut self, bytes: &[u8]) -> Result<(), ReplicaError> {
        let msg = decode_message(bytes)?;
        self.handle_message(msg)
    }

    /// Proposes one record batch. On success the answer comes later as
    /// [`Action::Reply`] with `token`; an error means nothing was appended.
    pub fn handle_propose(
        &mut self,
        token: u64,
        mut batch: Vec<u8>,
        acks: Acks,
    ) -> Result<(), ProposeError> {
        if let Some(f) = &self.failed {
            return Err(ProposeError::Failed(f.clone()));
        }
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        let header = BatchHeader::parse(&batch, &self.limits)
            .map_err(|e| ProposeError::Invalid(e.to_string()))?;
        if header.length as usize != batch.len() {
            return Err(ProposeError::Invalid(format!(
                "batch length field {} but {} bytes",
                header.length,
                batch.len()
            )));
        }
        let term = self.raw.raft.term;
        let before = self.raw.raft.raft_log.last_index();
        // With nothing proposed and not yet persisted, this entry lands at the log's
        // end: stamp its offset and term now, in the buffer we own, so that
        // `persist_entries` takes the entry as it is instead of stamping a copy (it
        // checks both fields and still copies when they do not match).
        let store = self.raw.store();
        if before == store.last() {
            stamp(&mut batch, store.end_offset(), term)
                .map_err(|e| ProposeError::Invalid(e.to_string()))?;
        }
        let result = self.raw.propose(Vec::new(), batch);
        let index = self.raw.raft.raft_log.last_index();
        let outcome = match result {
            Ok(()) if index == before + 1 => {
                // Before processing the Ready, so acks=none is answered at the append.
                self.pending.insert(index, Pending { token, term, acks });
                Ok(())
            }
            Ok(()) => Err(ProposeError::Dropped),
            Err(raft::Error::ProposalDropped) => Err(ProposeError::Dropped),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        };
        self.after_call();
        outcome
    }

    /// The sync of Ready `number` (and every one before it) is done.
    pub fn handle_persisted(&mut self, number: u64) {
        if self.failed.is_some() {
            return;
        }
        self.persisted(number);
        self.after_call();
    }

    /// The bookkeeping of [`Replica::handle_persisted`]: tell raft-rs, release the
    /// messages that waited for the sync, answer `acks=leader` proposals.
    fn persisted(&mut self, number: u64) {
        while let Some(&(n, index)) = self.unsynced.front() {
            if n > number {
                break;
            }
            self.unsynced.pop_front();
            self.persisted_index = self.persisted_index.max(index);
        }
        self.raw.on_persist_ready(number);
        // raft-rs keeps its own applied index; an installed log start moves only ours
        // (`install_snapshot`). Once raft-rs knows it is durable, move its index too,
        // or its next campaign reads below the new first index and aborts.
        let log = &self.raw.raft.raft_log;
        if log.applied < self.applied && self.applied <= log.committed.min(log.persisted) {
            self.raw.advance_apply_to(self.applied);
        }
        while let Some((n, _)) = self.after_persist.front() {
            if *n > number {
                break;
            }
            if let Some((_, msgs)) = self.after_persist.pop_front() {
                self.actions.extend(msgs.into_iter().map(Action::Send));
            }
        }
        // acks=leader: answered once the leader's own log has the entry durably.
        let persisted = self.persisted_index;
        let ready: Vec<u64> = self
            .pending
            .range(..=persisted)
            .filter(|(_, p)| p.acks == Acks::Leader)
            .map(|(i, _)| *i)
            .collect();
        for index in ready {
            if let Some(p) = self.pending.remove(&index) {
                let result = self.produced(index, p.term);
                self.reply(p.token, result);
            }
        }
    }

    /// The read requested by [`Action::Fetch`] `id` is done: `batches` are whole stored
    /// batches (possibly none, if the read failed or the range is gone).
    pub fn handle_entries_fetched(&mut self, id: u64, batches: Vec<Bytes>) {
        let Some(context) = self.fetches.remove(&id) else {
            return;
        };
        let store = self.raw.mut_store();
        for b in batches {
            let Ok(h) = BatchHeader::parse(&b, &self.limits) else {
                continue;
            };
            if let Some(index) = store.index_of_offset(h.base_offset) {
                if store.meta(index).is_some_and(|m| {
                    m.offset == h.base_offset
                        && m.records == h.record_count
                        && m.term == h.leader_term
                }) {
                    store.cache_insert(index, b);
                }
            }
        }
        if self.failed.is_none() {
            self.raw.on_entries_fetched(context);
            self.after_call();
        }
    }

    /// Moves the log start up to record `offset` (which must be a batch boundary at or
    /// below the high watermark), for retention: returns the offset actually reached.
    /// Emits a `SaveState` that must be durable *before* the driver deletes anything
    /// below it.
    pub fn compact_to(&mut self, offset: u64) -> u64 {
        let store = self.raw.store();
        let mut index = store.start.index;
        let mut i = store.first();
        while i <= self.applied {
            match store.meta(i) {
                Some(m) if m.end() <= offset => {
                    index = i;
                    i += 1;
                }
                _ => break,
            }
        }
        if index == store.start.index {
            return store.start.offset;
        }
        let start = LogStart {
            index,
            term: store.term_of(index).unwrap_or(store.start.term),
            offset: store.end_offset_at(index),
        };
        self.raw.mut_store().compact_to(start);
        self.save_state();
        start.offset
    }

    fn produced(&self, index: u64, term: u64) -> Result<Produced, ReplyError> {
        match self.raw.store().meta(index) {
            Some(m) if m.term == term && m.records > 0 => Ok(Produced {
                base_offset: m.offset,
                last_offset: m.end() - 1,
            }),
            _ => Err(ReplyError::LeadershipLost),
        }
    }

    fn reply(&mut self, token: u64, result: Result<Produced, ReplyError>) {
        self.actions.push_back(Action::Reply { token, result });
    }

    fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            self.failed = Some(why);
            let pending = std::mem::take(&mut self.pending);
            for p in pending.into_values() {
                self.reply(p.token, Err(ReplyError::LeadershipLost));
            }
        }
    }

    fn save_state(&mut self) {
        let state = self.persistent_state().encode();
        self.actions
            .push_back(Action::Write(Write::SaveState { state }));
    }

    /// After every call into raft-rs: re-draw the election timeout if raft-rs reset it,
    /// settle a change of leadership, pick up reads raft-rs asked for, and process
    /// whatever is ready.
    fn after_call(&mut self) {
        let now = (
            self.raw.raft.term,
            self.raw.raft.state,
            self.raw.raft.leader_id,
        );
        if now != self.role {
            let was_leader = self.role.1 == StateRole::Leader;
            self.role = now;
            self.reroll_timeout();
            if was_leader && now.1 != StateRole::Leader {
                self.leader_ready = false;
                let pending = std::mem::take(&mut self.pending);
                for p in pending.into_values() {
                    self.reply(p.token, Err(ReplyError::LeadershipLost));
                }
            }
        }
        self.take_fetches();
        self.drive();
    }

    /// Draws this replica's next election timeout from its own seeded RNG.
    ///
    /// raft-rs draws one from `thread_rng` whenever it resets the election clock
    /// (becoming follower, pre-candidate, candidate or leader), and
    /// `set_randomized_election_timeout` asserts `min <= t < max`. DESIGN §7's recipe,
    /// `max_election_tick = min + 1`, would make that draw deterministic but would also
    /// leave `min` as the only legal timeout, so every replica would time out on the
    /// same tick and split votes would repeat. Instead the range stays `[min, 2 * min)`
    /// and this runs after every call into raft-rs that changed (term, role, leader),
    /// before the next tick can read the value: raft-rs's own draw is never used, and
    /// the simulator replays exactly.
    fn reroll_timeout(&mut self) {
        let t = self
            .rng
            .random_range(self.election_tick..self.election_tick * 2);
        self.raw.raft.set_randomized_election_timeout(t);
    }

    fn take_fetches(&mut self) {
        let requests: Vec<_> = self.raw.store().fetches.borrow_mut().drain(..).collect();
        for r in requests {
            let store = self.raw.store();
            let Some(m) = (r.low..r.high).find_map(|i| store.meta(i).filter(|m| m.records > 0))
            else {
                continue;
            };
            let offset = m.offset;
            self.fetch_seq += 1;
            let id = self.fetch_seq;
            self.fetches.insert(id, r.context);
            self.actions.push_back(Action::Fetch {
                id,
                offset,
                max_bytes: self.max_size_per_msg.max(1),
            });
        }
    }

    fn drive(&mut self) {
        while self.failed.is_none() && self.raw.has_ready() {
            let mut rd = self.raw.ready();
            let number = rd.number();
            let mut snapshots_sent = Vec::new();
            for m in rd.take_messages() {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    snapshots_sent.push(m.to);
                }
                self.actions.push_back(Action::Send(m));
            }
            let mut wrote = false;
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                if let Err(e) = self.install_snapshot(&snap) {
                    self.fail(e);
                    return;
                }
                wrote = true;
            }
            let mut state_dirty = false;
            if let Some(hs) = rd.hs() {
                let store = self.raw.mut_store();
                if hs.term != store.hard.term || hs.vote != store.hard.vote {
                    state_dirty = true;
                }
                store.hard = hs.clone();
            }
            let entries = rd.take_entries();
            if !entries.is_empty() {
                let last = entries.last().map_or(0, |e| e.index);
                if let Err(e) = self.persist_entries(entries, state_dirty) {
                    self.fail(e);
                    return;
                }
                self.unsynced.push_back((number, last));
                wrote = true;
            } else if state_dirty {
                self.save_state();
                wrote = true;
            }
            let persisted_msgs = rd.take_persisted_messages();
            let committed = rd.take_committed_entries();
            self.raw.advance_append_async(rd);
            // Our snapshot is the log-start marker and rides in that one message, so it
            // is "sent" once handed to the driver. raft-rs sends a follower nothing more
            // until it hears how the snapshot went: report it now, so that a lost one is
            // noticed by the next probe (rejected below our log start) and sent again.
            for to in snapshots_sent {
                self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
            }
            if wrote || !persisted_msgs.is_empty() {
                self.actions.push_back(Action::Sync { number });
                self.after_persist.push_back((number, persisted_msgs));
                #[cfg(feature = "planted-bugs")]
                if crate::planted::active(crate::planted::Bug::AckBeforeFsync) {
                    self.persisted(number);
                }
            }
            self.apply(committed);
        }
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), String> {
        let md = snap.get_metadata();
        let offset = snap
            .data
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or("snapshot without a log-start offset")?;
        let start = LogStart {
            index: md.index,
            term: md.term,
            offset,
        };
        self.installed_extra = snap.data.get(8..).map(<[u8]>::to_vec);
        let store = self.raw.mut_store();
        store.reset(start);
        store.conf = md.get_conf_state().clone();
        store.hard.commit = store.hard.commit.max(md.index);
        let pending = std::mem::take(&mut self.pending);
        for p in pending.into_values() {
            self.reply(p.token, Err(ReplyError::LeadershipLost));
        }
        self.persisted_index = md.index;
        self.applied = md.index;
        // The new log start is durable before the log it replaces is dropped: a crash
        // between the two leaves a state that `open` repairs (it resets the log to the
        // state's start), never the old state over an emptied log, which would have
        // lost entries this replica acknowledged.
        self.save_state();
        self.actions
            .push_back(Action::Write(Write::ResetLog { offset }));
        if offset > self.high_watermark {
            self.high_watermark = offset;
            self.actions.push_back(Action::Committed {
                high_watermark: offset,
            });
        }
        Ok(())
    }

    /// Stores entries raft-rs handed over: cut a conflicting suffix, record markers in
    /// the state, append data batches. The order of the writes is what makes every crash
    /// leave a prefix of the log (see `docs/STORAGE_FORMAT.md`, "raft.state").
    fn persist_entries(
        &mut self,
        entries: Vec<Entry>,
        mut state_dirty: bool,
    ) -> Result<(), String> {
        let first = entries.first().map_or(0, |e| e.index);
        let store = self.raw.store();
        if first <= store.last() {
            let cut = store.meta(first).map_or(store.end_offset(), |m| m.offset);
            let had_markers = store.markers.range(first..).next().is_some();
            self.raw.mut_store().truncate_from(first);
            self.persisted_index = self.persisted_index.min(first - 1);
            // Syncs still in flight cover at most what survives the cut: their entries
            // from `first` on are gone, and the new ones are not theirs to claim.
            for (_, last) in self.unsynced.iter_mut() {
                *last = (*last).min(first - 1);
            }
            if had_markers {
                self.save_state();
            }
            #[cfg(feature = "planted-bugs")]
            let skip = crate::planted::active(crate::planted::Bug::SkipConflictTruncation);
            #[cfg(not(feature = "planted-bugs"))]
            let skip = false;
            if !skip {
                self.actions
                    .push_back(Action::Write(Write::TruncateSuffix { offset: cut }));
            }
            // Proposals whose entries were cut are lost.
            let cut_pending = self.pending.split_off(&first);
            for p in cut_pending.into_values() {
                self.reply(p.token, Err(ReplyError::LeadershipLost));
            }
        } else if first != store.last() + 1 {
            return Err(format!(
                "entries start at {first} but the log ends at {}",
                store.last()
            ));
        }
        let mut batches = Vec::new();
        for e in entries {
            let store = self.raw.mut_store();
            let offset = store.end_offset();
            let kind = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => Some(MarkerKind::NoOp),
                EntryType::EntryNormal => None,
                EntryType::EntryConfChange => Some(MarkerKind::ConfChange),
                EntryType::EntryConfChangeV2 => Some(MarkerKind::ConfChangeV2),
            };
            if let Some(kind) = kind {
                store.markers.insert(
                    e.index,
                    Marker {
                        index: e.index,
                        term: e.term,
                        offset,
                        kind,
                        data: e.data.to_vec(),
                        context: e.context.to_vec(),
                    },
                );
                store.push(
                    Meta {
                        term: e.term,
                        offset,
                        records: 0,
                        bytes: 0,
                    },
                    None,
                );
                state_dirty = true;
                continue;
            }
            let header = BatchHeader::parse(&e.data, &self.limits)
                .map_err(|err| format!("entry {} is not a valid batch: {err}", e.index))?;
            let bytes = if header.base_offset == offset && header.leader_term == e.term {
                e.data.clone()
            } else {
                let mut v = e.data.to_vec();
                stamp(&mut v, offset, e.term).map_err(|err| err.to_string())?;
                Bytes::from(v)
            };
            let len = bytes.len();
            store.push(
                Meta {
                    term: e.term,
                    offset,
                    records: header.record_count,
                    bytes: u32::try_from(len).unwrap_or(u32::MAX),
                },
                Some(bytes.clone()),
            );
            batches.push(bytes);
            #[cfg(feature = "planted-bugs")]
            let early = crate::planted::active(crate::planted::Bug::AckBeforeQuorum);
            #[cfg(not(feature = "planted-bugs"))]
            let early = false;
            if let Some(p) = self.pending.get(&e.index) {
                if (p.acks == Acks::None || early) && p.term == e.term {
                    let token = p.token;
                    self.pending.remove(&e.index);
                    self.reply(
                        token,
                        Ok(Produced {
                            base_offset: offset,
                            last_offset: offset + u64::from(header.record_count) - 1,
                        }),
                    );
                }
            }
        }
        // Markers (and a new term or vote) are durable before any batch after them.
        if state_dirty {
            self.save_state();
        }
        if !batches.is_empty() {
            self.actions
                .push_back(Action::Write(Write::Append { batches }));
        }
        Ok(())
    }

    fn apply(&mut self, committed: Vec<Entry>) {
        let Some(last) = committed.last().map(|e| e.index) else {
            return;
        };
        for e in &committed {
            match e.get_entry_type() {
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    if cc.merge_from_bytes(&e.data).is_ok() {
                        let r = self.raw.apply_conf_change(&cc);
                        self.conf_changed(r);
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    if cc.merge_from_bytes(&e.data).is_ok() {
                        let r = self.raw.apply_conf_change(&cc);
                        self.conf_changed(r);
                    }
                }
                EntryType::EntryNormal => {}
            }
            if e.term == self.raw.raft.term && self.raw.raft.state == StateRole::Leader {
                self.leader_ready = true;
            }
            if let Some(p) = self.pending.remove(&e.index) {
                let result = if p.term == e.term {
                    self.produced(e.index, p.term)
                } else {
                    Err(ReplyError::LeadershipLost)
                };
                self.reply(p.token, result);
            }
        }
        // Proposals below what committed that were not matched were overwritten.
        let stale: Vec<u64> = self.pending.range(..=last).map(|(i, _)| *i).collect();
        for i in stale {
            if let Some(p) = self.pending.remove(&i) {
                self.reply(p.token, Err(ReplyError::LeadershipLost));
            }
        }
        self.applied = last;
        self.raw.advance_apply_to(last);
        let hw = self.raw.store().end_offset_at(last);
        if hw > self.high_watermark {
            self.high_watermark = hw;
            self.actions
                .push_back(Action::Committed { high_watermark: hw });
        }
        let held = self.held_everywhere(last);
        self.raw.mut_store().evict(last, held);
    }

    /// The last index every replica this one may send entries to holds: on a leader,
    /// the least any peer's progress matched (raft-rs tracks voters and learners); on
    /// anyone else `applied`, since a follower sends nothing (one that becomes leader
    /// reads what a peer lacks from the partition log).
    fn held_everywhere(&self, applied: u64) -> u64 {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return applied;
        }
        raft.prs()
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, pr)| pr.matched)
            .min()
            .unwrap_or(applied)
    }

    fn conf_changed(&mut self, result: raft::Result<raft::eraftpb::ConfState>) {
        match result {
            Ok(cs) => {
                self.raw.mut_store().conf = cs;
                self.save_state();
            }
            Err(e) => self.fail(format!("conf change: {e}")),
        }
    }
}

/// Refuses or repairs, at the network boundary, what raft-rs would abort on. Only the
/// message types replication exchanges between peers are accepted, each with a term
/// (raft-rs reserves term 0 for local messages; forwarded proposals, read-index and
/// leader-transfer requests are not used here); a heartbeat whose commit index passes
/// the end of this log (a correct leader never sends one; raft-rs would panic) is
/// clamped to it. Peers are authenticated, so this guards against a buggy peer, not an
/// anonymous one.
fn sanitize(msg: &mut Message, last_index: u64) -> Result<(), ReplicaError> {
    use MessageType::*;
    let kind = msg.get_msg_type();
    let peer_kind = matches!(
        kind,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgSnapshot
            | MsgTimeoutNow
    );
    if !peer_kind {
        return Err(ReplicaError::BadMessage(format!(
            "{kind:?} is not a message peers exchange"
        )));
    }
    if msg.term == 0 {
        return Err(ReplicaError::BadMessage(format!(
            "{kind:?} with term 0 (reserved for local messages)"
        )));
    }
    if kind == MsgHeartbeat && msg.commit > last_index {
        msg.commit = last_index;
    }
    if kind == MsgAppend {
        // raft-rs reads term 0 as "no entry" and would match it past the end of the log.
        if msg.index > 0 && msg.log_term == 0 {
            return Err(ReplicaError::BadMessage(
                "append after an entry of term 0".into(),
            ));
        }
        let mut prev_term = msg.log_term;
        for (i, e) in msg.entries.iter().enumerate() {
            let want = msg.index.saturating_add(1).saturating_add(i as u64);
            if e.index != want || e.term < prev_term.max(1) || e.term > msg.term {
                return Err(ReplicaError::BadMessage(format!(
                    "append entry {i}: index {} term {} (expected index {want}, term in [{}, {}])",
                    e.index,
                    e.term,
                    prev_term.max(1),
                    msg.term
                )));
            }
            prev_term = e.term;
        }
    }
    Ok(())
}

/// Encodes a Raft message for the wire.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    msg.write_to_bytes().unwrap_or_default()
}

/// [`encode_message`] appended to `out` (no intermediate buffer); returns the bytes
/// appended. A message that does not encode appends nothing, as `encode_message`
/// returns nothing for it.
pub fn encode_message_into(msg: &Message, out: &mut Vec<u8>) -> usize {
    let at = out.len();
    if msg.write_to_vec(out).is_err() {
        out.truncate(at);
    }
    out.len() - at
}

/// The length of [`encode_message`]'s bytes for `msg`.
pub fn encoded_message_len(msg: &Message) -> usize {
    msg.compute_size() as usize
}

/// Writes the broker-owned header fields of an entry's batch: the base offset it takes
/// in the partition log and the term of the leader that appended it (neither is covered
/// by the CRC).
fn stamp(batch: &mut [u8], offset: u64, term: u64) -> Result<(), BatchError> {
    set_base_offset(batch, offset)?;
    set_leader_term(batch, term)
}

/// Decodes a Raft message from the wire.
pub fn decode_message(bytes: &[u8]) -> Result<Message, ReplicaError> {
    Message::parse_from_bytes(bytes).map_err(|e| ReplicaError::BadMessage(e.to_string()))
}
