//! One replicated partition: a [`Replica`] driven over the real [`PartitionLog`].
//!
//! This is the seam between the pure replication core and storage. It performs the
//! replica's actions against the partition log (append, cut, `raft.state`, reset,
//! cold reads), collects what must leave the node (Raft messages, produce replies),
//! and holds the sync the replica asked for until the owner runs [`sync`] — the
//! owner (a shard, or the simulator's node) calls `sync` on every dirty partition
//! once per flush cycle, which is the group commit. A pipelined owner (the engine's
//! shard driver) splits it: [`ReplicatedPartition::begin_sync`] starts the fdatasync
//! without holding the partition, appends go on while it runs, and
//! [`ReplicatedPartition::finish_sync`] reports to the replica only the writes that
//! came before it began.
//!
//! A storage failure (an fsync error poisons the log) is returned as an error and
//! leaves the partition unusable: the owner treats it as a crash of that replica and
//! reopens it, and recovery plus Raft repair what the crash left.
//!
//! It also keeps the partition's idempotent-producer table ([`crate::producers`]) in
//! step with the log: every batch it appends is recorded, a suffix cut rebuilds the
//! table from the batch headers left, a log reset keeps only what retention took
//! earlier. Before retention deletes anything, the producers it takes wholly out of the
//! log are written to `producers.state`, merged back at open, and handed to the replica,
//! which sends them with its log-start marker; a follower whose log is reset to it
//! merges them into its own `producers.state`. The leader checks a
//! produced batch against the table ([`ReplicatedPartition::check_sequence`]) before
//! proposing.
//!
//! [`sync`]: ReplicatedPartition::sync

use bytes::Bytes;
use sluice_proto::{BatchHeader, Limits};
use sluice_replica::{
    Acks, Action, Message, PersistentState, Produced, ProposeError, Replica, ReplicaConfig,
    ReplicaError, ReplyError, StoredBatch, Write,
};
use sluice_storage::{
    Batches, DetachedSync, LogConfig, PartitionLog, RecoveryReport, Storage, SyncStart, SyncTicket,
};

use crate::producers::{ProducerTable, SequenceCheck, PRODUCERS_FILE};
use crate::shard::EngineError;

/// The file beside the segments that holds the replica's Raft state.
pub const RAFT_STATE_FILE: &str = "raft.state";

/// A produce answered by the replica: the token given to `propose`, and the outcome.
pub type ProduceReply = (u64, Result<Produced, ReplyError>);

/// A sync begun by [`ReplicatedPartition::begin_sync`] and still running: give it back
/// to [`ReplicatedPartition::finish_sync`] with its fdatasync's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSync {
    /// The replica's persist number the sync vouches for.
    number: u64,
    ticket: SyncTicket,
}

/// A partition replica over its log. See the module docs.
#[derive(Debug)]
pub struct ReplicatedPartition<S: Storage> {
    log: PartitionLog<S>,
    replica: Replica,
    limits: Limits,
    outbox: Vec<Message>,
    replies: Vec<ProduceReply>,
    sync_wanted: Option<u64>,
    /// A detached fdatasync begun here ([`ReplicatedPartition::begin_sync`]) is still
    /// to be finished: the next one waits for it.
    syncing: bool,
    failed: Option<String>,
    /// The idempotent-producer table of the local log.
    producers: ProducerTable,
    /// What `producers.state` holds: producers whose batches retention deleted.
    retained: ProducerTable,
    /// The end offset of the log as `open` found it on disk (before this run appended).
    opened_end: u64,
}

impl<S: Storage> ReplicatedPartition<S> {
    /// Opens the log, reads `raft.state` and every batch header, rebuilds the replica
    /// and performs its repairs.
    pub async fn open(
        storage: S,
        log_config: LogConfig,
        config: ReplicaConfig,
        now_ms: i64,
    ) -> Result<(Self, RecoveryReport), EngineError> {
        let limits = log_config.limits;
        let (log, report) = PartitionLog::open(storage, log_config, now_ms)
            .await
            .map_err(EngineError::from_log)?;
        let state = match log
            .read_sidecar(RAFT_STATE_FILE)
            .await
            .map_err(EngineError::from_log)?
        {
            Some(bytes) => Some(
                PersistentState::decode(&bytes)
                    .map_err(|e| EngineError::Corruption(format!("{RAFT_STATE_FILE}: {e}")))?,
            ),
            None => None,
        };
        let all = log.batch_headers().await.map_err(EngineError::from_log)?;
        let retained = match log
            .read_sidecar(PRODUCERS_FILE)
            .await
            .map_err(EngineError::from_log)?
        {
            Some(bytes) => ProducerTable::decode(&bytes)
                .map_err(|e| EngineError::Corruption(format!("{PRODUCERS_FILE}: {e}")))?,
            None => ProducerTable::new(),
        };
        let mut producers = ProducerTable::from_headers(&all);
        producers.merge_below(&retained, log.log_start_offset());
        let headers: Vec<StoredBatch> = all
            .into_iter()
            .map(|h| StoredBatch {
                base_offset: h.base_offset,
                records: h.record_count,
                term: h.leader_term,
                bytes: h.length,
            })
            .collect();
        let mut replica = Replica::open(config, state, log.log_start_offset(), &headers)
            .map_err(|e| EngineError::Corruption(e.to_string()))?;
        replica.set_snapshot_extra(retained.encode_below(u64::MAX));
        let opened_end = log.next_offset();
        let mut p = ReplicatedPartition {
            opened_end,
            log,
            replica,
            limits,
            outbox: Vec::new(),
            replies: Vec::new(),
            sync_wanted: None,
            syncing: false,
            failed: None,
            producers,
            retained,
        };
        p.run(now_ms).await?;
        // `retain_from` writes the replica's new log start before it cuts the log: a
        // crash between the two leaves offsets below the replica's start in the log.
        // Finish the cut, so nothing the replica no longer vouches for is served.
        let start = p.replica.status().log_start_offset;
        if start > p.log.log_start_offset() {
            p.save_retained(start).await?;
            if let Err(e) = p.log.truncate_prefix(start).await {
                return Err(p.fail(EngineError::from_log(e)));
            }
        }
        Ok((p, report))
    }

    /// The end offset of the log when it was opened: everything below was on disk
    /// before this run (survived a restart), everything above was appended since.
    pub fn log_end_at_open(&self) -> u64 {
        self.opened_end
    }

    /// The replica, for its status and high watermark.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The partition log.
    pub fn log(&self) -> &PartitionLog<S> {
        &self.log
    }

    /// The idempotent-producer table of the local log.
    pub fn producers(&self) -> &ProducerTable {
        &self.producers
    }

    /// The idempotent-producer check of a produced batch, on the leader, before it is
    /// proposed (`Ok`: propose it). A batch appended already is answered
    /// `DuplicateSequence` with its offsets once it is as durable as `acks` asks
    /// (committed for `All`, in the local durable log for `Leader`, appended for `None`)
    /// and `TimedOut` before that (indeterminate: the producer retries and then gets the
    /// duplicate answer, or, if the entry is cut, a fresh append). A sequence older than
    /// the table remembers is `DuplicateSequence` without offsets; a gap or an older
    /// epoch is `OutOfOrderSequence`. All of these but `TimedOut` are definite: nothing
    /// was appended for this request. On a replica that does not lead, every batch
    /// passes (the proposal is refused as `NotLeader`).
    ///
    /// Appends happen inside [`propose`](Self::propose) (the leader writes its entry in
    /// the same call), so a batch checked after another was proposed sees it.
    pub fn check_sequence(&self, header: &BatchHeader, acks: Acks) -> Result<(), EngineError> {
        if !self.replica.status().is_leader {
            return Ok(());
        }
        match self.producers.check(header) {
            SequenceCheck::Accept => Ok(()),
            SequenceCheck::Malformed(reason) => Err(EngineError::InvalidBatch(
                sluice_proto::BatchError::Malformed { reason },
            )),
            SequenceCheck::Duplicate(b) => {
                let acked_below = match acks {
                    Acks::All => self.replica.high_watermark(),
                    Acks::Leader => self.replica.high_watermark().max(self.log.durable_end()),
                    Acks::None => self.log.next_offset(),
                };
                if b.last_offset < acked_below {
                    Err(EngineError::DuplicateSequence {
                        base_offset: Some(b.base_offset),
                        last_offset: Some(b.last_offset),
                    })
                } else {
                    Err(EngineError::TimedOut)
                }
            }
            SequenceCheck::Stale => Err(EngineError::DuplicateSequence {
                base_offset: None,
                last_offset: None,
            }),
            SequenceCheck::OutOfOrder { expected, got } => Err(EngineError::OutOfOrderSequence {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                expected,
                got,
            }),
            SequenceCheck::Fenced { current, got } => Err(EngineError::ProducerFenced {
                producer_id: header.producer_id,
                current,
                got,
            }),
        }
    }

    /// Why the partition stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Whether a sync is wanted (the partition is dirty).
    pub fn needs_sync(&self) -> bool {
        self.sync_wanted.is_some()
    }

    /// Whether a detached sync may begin now: one is wanted and none is in flight (a
    /// partition has at most one).
    pub fn can_begin_sync(&self) -> bool {
        self.needs_sync() && !self.syncing
    }

    /// Raft messages to send, in order.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbox)
    }

    /// Produce replies, in order.
    pub fn take_replies(&mut self) -> Vec<ProduceReply> {
        std::mem::take(&mut self.replies)
    }

    /// One logical tick.
    pub async fn tick(&mut self, now_ms: i64) -> Result<(), EngineError> {
        self.check()?;
        self.replica.handle_tick();
        self.run(now_ms).await
    }

    /// [`Replica::transfer_leadership`], then whatever it set off.
    pub async fn transfer_leadership(
        &mut self,
        to: u64,
        lag_max: u64,
        now_ms: i64,
    ) -> Result<bool, EngineError> {
        self.check()?;
        let started = self.replica.transfer_leadership(to, lag_max);
        self.run(now_ms).await?;
        Ok(started)
    }

    /// Starts an election now.
    pub async fn campaign(&mut self, now_ms: i64) -> Result<(), EngineError> {
        self.check()?;
        self.replica.campaign();
        self.run(now_ms).await
    }

    /// Steps a Raft message from a peer. A malformed message is refused and changes
    /// nothing.
    pub async fn step(&mut self, msg: Message, now_ms: i64) -> Result<(), StepError> {
        self.check().map_err(StepError::Engine)?;
        let r = self.replica.handle_message(msg);
        self.run(now_ms).await.map_err(StepError::Engine)?;
        r.map_err(StepError::Replica)
    }

    /// Proposes a batch; the answer comes through [`take_replies`] with `token`.
    ///
    /// [`take_replies`]: ReplicatedPartition::take_replies
    pub async fn propose(
        &mut self,
        token: u64,
        batch: Vec<u8>,
        acks: Acks,
        now_ms: i64,
    ) -> Result<(), ProposeError> {
        if let Some(f) = &self.failed {
            return Err(ProposeError::Failed(f.clone()));
        }
        let r = self.replica.handle_propose(token, batch, acks);
        self.run(now_ms)
            .await
            .map_err(|e| ProposeError::Failed(e.to_string()))?;
        r
    }

    /// Makes every write so far durable (one fdatasync of the log; `raft.state` writes
    /// are durable on their own) and tells the replica.
    pub async fn sync(&mut self, now_ms: i64) -> Result<(), EngineError> {
        self.check()?;
        let Some(number) = self.sync_wanted.take() else {
            return Ok(());
        };
        if let Err(e) = self.log.sync().await {
            return Err(self.fail(EngineError::from_log(e)));
        }
        self.replica.handle_persisted(number);
        self.run(now_ms).await
    }

    /// Begins the sync [`ReplicatedPartition::sync`] would do, without waiting for it:
    /// `Some` with the fdatasync to run (appends may go on meanwhile) when the backend
    /// can sync detached; otherwise (or when nothing waits) the sync is done here, in
    /// full, and the answer is `None`.
    pub async fn begin_sync(
        &mut self,
        now_ms: i64,
    ) -> Result<Option<(PendingSync, DetachedSync)>, EngineError> {
        self.check()?;
        let Some(number) = self.sync_wanted else {
            return Ok(None);
        };
        match self.log.begin_sync() {
            Ok(SyncStart::Detached(ticket, sync)) => {
                self.sync_wanted = None;
                self.syncing = true;
                Ok(Some((PendingSync { number, ticket }, sync)))
            }
            // Durable already (a roll or a cut synced it), or no detached sync here.
            Ok(SyncStart::Durable | SyncStart::Inline) => self.sync(now_ms).await.map(|()| None),
            Err(e) => Err(self.fail(EngineError::from_log(e))),
        }
    }

    /// Completes a sync from [`ReplicatedPartition::begin_sync`]: tells the replica
    /// what the fdatasync made durable (nothing when the log cut or replaced offsets
    /// it covered meanwhile: a later sync vouches for those) and runs what follows.
    pub async fn finish_sync(
        &mut self,
        pending: PendingSync,
        result: std::io::Result<()>,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        if !self.log.owns(&pending.ticket) {
            // Begun on a partition of the same name that is gone (this one's own sync
            // in flight, if any, is still to come).
            self.check()?;
            return Ok(());
        }
        self.syncing = false;
        self.check()?;
        match self.log.finish_sync(pending.ticket, result) {
            Ok(Some(_)) => self.replica.handle_persisted(pending.number),
            Ok(None) => {
                // The persist number stays owed: ask for a sync again.
                self.sync_wanted = Some(
                    self.sync_wanted
                        .map_or(pending.number, |n| n.max(pending.number)),
                );
                return Ok(());
            }
            Err(e) => return Err(self.fail(EngineError::from_log(e))),
        }
        self.run(now_ms).await
    }

    /// Whole committed batches from `offset`, up to about `max_bytes`: never beyond the
    /// high watermark.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<Batches, EngineError> {
        let hw = self.replica.high_watermark();
        let start = self.log.log_start_offset();
        if offset < start || offset > hw {
            return Err(EngineError::OffsetOutOfRange {
                offset,
                log_start: start,
                high_watermark: hw,
            });
        }
        self.log
            .read_bounded(offset, max_bytes, hw)
            .await
            .map_err(EngineError::from_log)
    }

    /// Moves the log start up to `offset` for retention (the replica's state first,
    /// then the segments).
    pub async fn retain_from(&mut self, offset: u64, now_ms: i64) -> Result<u64, EngineError> {
        self.check()?;
        let reached = self.replica.compact_to(offset);
        self.run(now_ms).await?;
        if reached > self.log.log_start_offset() {
            self.save_retained(reached).await?;
            if let Err(e) = self.log.truncate_prefix(reached).await {
                return Err(self.fail(EngineError::from_log(e)));
            }
        }
        Ok(reached)
    }

    /// Closes the log cleanly (a final sync and the clean-shutdown marker).
    pub async fn close(self) -> Result<(), EngineError> {
        self.log.close().await.map_err(EngineError::from_log)
    }

    /// Before the log start moves up to `start`: writes the producers that will then be
    /// known from no batch in the log (`producers.state`, atomically and durably), so a
    /// reopen still knows them. Nothing is written when that set did not change.
    async fn save_retained(&mut self, start: u64) -> Result<(), EngineError> {
        let below = self.producers.below(start);
        if below == self.retained {
            return Ok(());
        }
        self.store_retained(below).await
    }

    /// Writes `retained` to `producers.state` and hands it to the replica, which sends it
    /// to followers with its log-start marker.
    async fn store_retained(&mut self, retained: ProducerTable) -> Result<(), EngineError> {
        let bytes = retained.encode_below(u64::MAX);
        if let Err(e) = self.log.write_sidecar(PRODUCERS_FILE, &bytes).await {
            return Err(self.fail(EngineError::from_log(e)));
        }
        self.replica.set_snapshot_extra(bytes);
        self.retained = retained;
        Ok(())
    }

    fn check(&self) -> Result<(), EngineError> {
        match &self.failed {
            Some(f) => Err(EngineError::StorageFailed(f.clone())),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: EngineError) -> EngineError {
        self.failed = Some(e.to_string());
        e
    }

    /// Performs every action the replica has queued.
    async fn run(&mut self, now_ms: i64) -> Result<(), EngineError> {
        while let Some(action) = self.replica.poll_action() {
            match action {
                Action::Send(m) => self.outbox.push(m),
                Action::Write(w) => {
                    if let Err(e) = self.write(w, now_ms).await {
                        return Err(self.fail(e));
                    }
                }
                Action::Sync { number } => {
                    self.sync_wanted = Some(self.sync_wanted.map_or(number, |n| n.max(number)));
                }
                Action::Fetch {
                    id,
                    offset,
                    max_bytes,
                } => {
                    let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
                    let batches = match self.log.read(offset, max).await {
                        Ok(b) => split(&b.bytes, &self.limits),
                        // Gone (retention) or unreadable: raft-rs asks again or falls
                        // back to the log-start marker.
                        Err(_) => Vec::new(),
                    };
                    self.replica.handle_entries_fetched(id, batches);
                }
                Action::Reply { token, result } => self.replies.push((token, result)),
                Action::Committed { .. } => {}
            }
        }
        if let Some(f) = self.replica.failure() {
            let e = EngineError::Corruption(format!("replica failed: {f}"));
            return Err(self.fail(e));
        }
        Ok(())
    }

    async fn write(&mut self, w: Write, now_ms: i64) -> Result<(), EngineError> {
        match w {
            Write::Append { batches } => {
                for b in batches {
                    let header =
                        BatchHeader::parse(&b, &self.limits).map_err(EngineError::InvalidBatch)?;
                    // The replica stamped the offset; the log checks it and writes the
                    // entry's bytes as they are.
                    self.log
                        .append_placed(&b, now_ms)
                        .await
                        .map_err(EngineError::from_log)?;
                    self.producers.appended(&header);
                }
            }
            Write::TruncateSuffix { offset } => {
                self.log
                    .truncate_suffix(offset)
                    .await
                    .map_err(EngineError::from_log)?;
                let headers = self
                    .log
                    .batch_headers()
                    .await
                    .map_err(EngineError::from_log)?;
                self.producers = self
                    .producers
                    .rebuilt(&headers, self.log.log_start_offset());
            }
            Write::SaveState { state } => {
                self.log
                    .write_sidecar(RAFT_STATE_FILE, &state)
                    .await
                    .map_err(EngineError::from_log)?;
            }
            Write::ResetLog { offset } => {
                let start = self.log.log_start_offset();
                if self.log.next_offset() > start {
                    self.log
                        .truncate_suffix(start)
                        .await
                        .map_err(EngineError::from_log)?;
                }
                if offset > start {
                    self.log
                        .truncate_prefix(offset)
                        .await
                        .map_err(EngineError::from_log)?;
                }
                // The log is empty now. Known still: what retention took here earlier and
                // what the leader's retention took (it sends that with its log start);
                // both committed, so true in every replica's history.
                let mut retained = self.retained.clone();
                if let Some(extra) = self.replica.take_installed_extra() {
                    // A malformed extra from a peer is dropped, not trusted.
                    if let Ok(leader) = ProducerTable::decode(&extra) {
                        retained.union_newest(&leader);
                    }
                }
                if retained != self.retained {
                    self.store_retained(retained).await?;
                }
                self.producers = self.retained.clone();
            }
        }
        Ok(())
    }
}

/// Why a peer message was not stepped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Replica(ReplicaError),
    #[error(transparent)]
    Engine(EngineError),
}

/// Splits concatenated stored batches into one `Bytes` each.
fn split(bytes: &[u8], limits: &Limits) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(h) = BatchHeader::parse(rest, limits) {
        let len = h.length as usize;
        let Some((one, tail)) = rest.split_at_checked(len) else {
            break;
        };
        out.push(Bytes::copy_from_slice(one));
        rest = tail;
    }
    out
}
