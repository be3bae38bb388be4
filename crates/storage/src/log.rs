//! The partition log: an ordered list of segments, the last one active.
//!
//! Call order: [`PartitionLog::open`] (recovers), then any mix of `append`, `read*`,
//! `offset_for_timestamp`, `sync` (or `begin_sync` … `finish_sync`, which lets appends
//! go on while the fdatasync runs), `apply_retention`, `truncate_suffix`,
//! `truncate_prefix`; finally [`PartitionLog::close`] for a clean stop (or just drop
//! it: the next open treats that as a crash). Time comes in as `now_ms` arguments.
//!
//! Invariants (asserted where cheap, re-checked by recovery):
//! - segments are contiguous: each segment's `next` is the following one's `base`;
//! - offsets inside a segment are contiguous, every stored batch passed validation;
//! - `log_start <= durable_end <= next_offset` once anything is durable;
//! - a sealed segment was fsynced, with trimmed and fsynced indexes, before the next
//!   segment was created, so only the active segment can hold a torn tail;
//! - after a failed fsync the log is poisoned: every later write is refused.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_proto::{set_base_offset, BatchError, BatchHeader, BatchView, Limits, HEADER_LEN};
use thiserror::Error;

use crate::fs::{DetachedSync, IndexFile, LogFile, OpenMode, Storage};
use crate::index::{Entry, OffsetEntry, OffsetIndex, SparseIndex, TimeEntry, TimeIndex};
use crate::segment::{names, parse_log_name, Cursor, Found, ScanStop, Segment};

/// Marker written by a clean [`PartitionLog::close`] and removed by `open`.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean_shutdown";
/// Atomic checkpoint of the log start offset (prefix truncation).
pub const LOG_START_FILE: &str = "log_start";
const LOG_START_TMP: &str = "log_start.tmp";

/// Tunables of one partition log. Sizes in bytes, times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment when the next batch would take it past this.
    pub segment_bytes_max: u64,
    /// Roll the active segment once its first batch is this old.
    pub segment_age_ms_max: u64,
    /// Add a sparse index entry every this many bytes of log.
    pub index_interval_bytes: u64,
    /// Preallocated size of each offset index file (the time index gets 1.5x).
    pub index_bytes_max: u64,
    /// Delete the oldest sealed segments while the log stays at or above this.
    pub retention_bytes_max: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_age_ms_max: Option<u64>,
    /// Limits every appended batch is validated against.
    pub limits: Limits,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 1 << 30,
            segment_age_ms_max: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            index_bytes_max: 10 << 20,
            retention_bytes_max: None,
            retention_age_ms_max: Some(7 * 24 * 3600 * 1000),
            limits: Limits::default(),
        }
    }
}

impl LogConfig {
    /// Checks the relations between the limits.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |what| Err(LogError::Config(what));
        if self.segment_bytes_max == 0 {
            return bad("segment_bytes_max must be positive");
        }
        // Index positions are u32: a segment plus one oversized batch must fit.
        if self.segment_bytes_max + u64::from(self.limits.batch_bytes_max) > u64::from(u32::MAX) {
            return bad("segment_bytes_max + batch_bytes_max must fit in u32");
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive");
        }
        if self.index_bytes_max < OffsetEntry::BYTES as u64 {
            return bad("index_bytes_max must hold at least one entry");
        }
        Ok(())
    }

    fn time_index_bytes_max(&self) -> u64 {
        self.index_bytes_max / OffsetEntry::BYTES as u64 * TimeEntry::BYTES as u64
    }
}

/// Errors of the partition log.
#[derive(Debug, Error)]
pub enum LogError {
    /// The batch failed validation; nothing was written.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The offset is outside `[start, end]`.
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    /// A sync failed earlier; the log refuses writes until it is reopened.
    #[error("log poisoned by a failed fsync: {reason}")]
    Poisoned { reason: String },
    /// An I/O call failed; what the caller asked for did not happen.
    #[error("{op} {file}: {source}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
    /// Stored bytes are damaged where the log guarantees they are whole.
    #[error("corruption in {file} at byte {position}: {reason}")]
    Corruption {
        file: String,
        position: u64,
        reason: String,
    },
    /// The configuration is inconsistent.
    #[error("bad log config: {0}")]
    Config(&'static str),
    /// [`PartitionLog::append_placed`] got a batch placed at another offset than the
    /// log's next one; nothing was written.
    #[error("batch placed at offset {base_offset} but the log's next offset is {expected}")]
    Misplaced { base_offset: u64, expected: u64 },
}

impl LogError {
    /// Whether this error came from storage running out of space.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

/// What a fetch reads at a time while it skips, by their headers, the batches between
/// the index entry it starts from and the offset asked for.
const FETCH_SKIP_CHUNK_BYTES: usize = 4096;

/// A cursor's answer over the stored range of the segment at `base`, where bytes that
/// are not a batch are corruption.
fn stored<T>(base: u64, scanned: io::Result<Result<T, ScanStop>>) -> Result<T, LogError> {
    let name = || names(base)[0].clone();
    match scanned.map_err(io_err("read", name()))? {
        Ok(found) => Ok(found),
        Err(ScanStop::Bad { pos, reason }) => Err(LogError::Corruption {
            file: name(),
            position: pos,
            reason,
        }),
    }
}

fn io_err(op: &'static str, file: impl Into<String>) -> impl FnOnce(io::Error) -> LogError {
    let file = file.into();
    move |source| LogError::Io { op, file, source }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// Whole stored batches, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batches {
    /// Concatenated batches.
    pub bytes: Vec<u8>,
    /// How many batches `bytes` holds.
    pub count: usize,
    /// One past the last offset of the last batch (where the next read starts).
    pub next_offset: u64,
}

/// What `open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// A clean-shutdown marker was present.
    pub clean: bool,
    /// Segments opened.
    pub segments: usize,
    /// Bytes cut from the tail of the active segment.
    pub truncated_bytes: u64,
    /// Indexes rebuilt by scanning (invalid, or the stop was unclean).
    pub indexes_rebuilt: usize,
    /// Batches scanned.
    pub batches_scanned: u64,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes deleted.
    pub bytes_deleted: u64,
}

/// Counters for the metrics edge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub batches_appended: u64,
    pub bytes_appended: u64,
    pub syncs: u64,
    pub rolls: u64,
    pub segments_deleted: u64,
}

/// A sync begun by [`PartitionLog::begin_sync`]: what its fdatasync makes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTicket {
    /// `next_offset` when the sync began: every offset below it was appended before.
    target: u64,
    /// Which log (unique in the process) and which of its truncation generations.
    log_id: u64,
    generation: u64,
}

impl SyncTicket {
    /// The durable end the sync reaches when it completes.
    pub fn target(&self) -> u64 {
        self.target
    }
}

/// How a sync begins ([`PartitionLog::begin_sync`]).
pub enum SyncStart {
    /// Every append is already durable: nothing to do.
    Durable,
    /// The backend cannot sync apart from its file handle: call [`PartitionLog::sync`].
    Inline,
    /// Run the future (appends may go on meanwhile), then hand its result and the
    /// ticket to [`PartitionLog::finish_sync`].
    Detached(SyncTicket, DetachedSync),
}

impl std::fmt::Debug for SyncStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Durable => f.write_str("Durable"),
            Self::Inline => f.write_str("Inline"),
            Self::Detached(t, _) => f.debug_tuple("Detached").field(t).finish(),
        }
    }
}

/// Process-unique log identities, so a ticket never lands on another log.
fn next_log_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A partition's append-only segment log over a [`Storage`].
#[derive(Debug)]
pub struct PartitionLog<S: Storage> {
    storage: S,
    config: LogConfig,
    /// Oldest first; never empty; the last is active.
    segments: Vec<Segment<S>>,
    log_start: u64,
    durable_end: u64,
    poisoned: Option<String>,
    stats: LogStats,
    /// See [`SyncTicket`]: `generation` moves whenever offsets below `next_offset` are
    /// cut or replaced, so a sync begun before cannot vouch for what replaced them.
    log_id: u64,
    generation: u64,
}

impl<S: Storage> PartitionLog<S> {
    /// Opens the log in `storage`, recovering from whatever stop came before.
    pub async fn open(
        storage: S,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<(Self, RecoveryReport), LogError> {
        config.validate()?;
        let files = storage.list().await.map_err(io_err("list", "."))?;
        let mut report = RecoveryReport {
            clean: files.iter().any(|f| f == CLEAN_SHUTDOWN_FILE),
            ..RecoveryReport::default()
        };
        let mut bases: Vec<u64> = files.iter().filter_map(|f| parse_log_name(f)).collect();
        bases.sort_unstable();
        let checkpoint = read_log_start(&storage, &files).await?;
        let mut dir_changed = false;
        if let Some(cp) = checkpoint {
            // Segments wholly below the checkpoint are garbage an interrupted prefix
            // truncation left: keep from the one holding the checkpoint on.
            let keep_from = bases.partition_point(|&b| b <= cp).saturating_sub(1);
            bases.drain(..keep_from);
        }
        // Leftovers: an unfinished checkpoint, indexes whose log is gone, segments
        // wholly below the checkpoint.
        for f in &files {
            let orphan = f
                .rsplit_once('.')
                .filter(|(_, ext)| matches!(*ext, "log" | "index" | "timeindex"))
                .and_then(|(stem, _)| stem.parse::<u64>().ok())
                .is_some_and(|b| !bases.contains(&b));
            if orphan || f == LOG_START_TMP {
                storage
                    .remove(f)
                    .await
                    .map_err(io_err("remove", f.as_str()))?;
                dir_changed = true;
            }
        }

        let mut segments: Vec<Segment<S>> = Vec::with_capacity(bases.len().max(1));
        let count = bases.len();
        for (i, &base) in bases.iter().enumerate() {
            let active = i + 1 == count;
            let seg =
                open_segment(&storage, &config, base, active, report.clean, &mut report).await?;
            if let Some(prev) = segments.last() {
                if prev.next != seg.base {
                    return Err(LogError::Corruption {
                        file: names(seg.base)[0].clone(),
                        position: 0,
                        reason: format!(
                            "gap: previous segment ends at offset {}, this one starts at {}",
                            prev.next, seg.base
                        ),
                    });
                }
            }
            segments.push(seg);
        }
        report.segments = segments.len();
        let mut log_start = segments.first().map_or(checkpoint.unwrap_or(0), |s| s.base);
        if let Some(cp) = checkpoint {
            log_start = log_start.max(cp);
        }
        if segments.is_empty() {
            segments.push(create_segment(&storage, &config, log_start).await?);
            dir_changed = true;
        }
        let mut log = Self {
            storage,
            config,
            segments,
            log_start,
            durable_end: 0,
            poisoned: None,
            stats: LogStats::default(),
            log_id: next_log_id(),
            generation: 0,
        };
        if log.log_start > log.next_offset() {
            // The checkpoint is past everything stored: start empty there.
            log.reset_to(log.log_start).await?;
        }
        if report.clean {
            log.storage
                .remove(CLEAN_SHUTDOWN_FILE)
                .await
                .map_err(io_err("remove", CLEAN_SHUTDOWN_FILE))?;
            dir_changed = true;
        }
        // What recovery kept may sit only in the page cache (after a kill rather
        // than a power cut): make it durable before calling it durable.
        log.sync_active_and_dir(dir_changed).await?;
        log.durable_end = log.next_offset();
        let now_ms = now_ms.max(0);
        if let Some(active) = log.segments.last_mut() {
            if !active.is_empty() && active.first_append_ms.is_none() {
                active.first_append_ms = Some(now_ms);
            }
        }
        Ok((log, report))
    }

    /// The configuration.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// First offset a read may ask for.
    pub fn log_start_offset(&self) -> u64 {
        self.log_start
    }

    /// Offset the next append gets (one past the last stored).
    pub fn next_offset(&self) -> u64 {
        self.active().next
    }

    /// Every offset below this is known to be fsynced.
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    /// The highest offset known to be fsynced, if any.
    pub fn durable_offset(&self) -> Option<u64> {
        (self.durable_end > self.log_start).then(|| self.durable_end - 1)
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size()).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.base).collect()
    }

    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Why the log is poisoned, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn active(&self) -> &Segment<S> {
        // `segments` is never empty: open creates one and nothing removes the last.
        match self.segments.last() {
            Some(s) => s,
            None => unreachable!("storage: log without segments"),
        }
    }

    fn active_mut(&mut self) -> &mut Segment<S> {
        match self.segments.last_mut() {
            Some(s) => s,
            None => unreachable!("storage: log without segments"),
        }
    }

    fn check_writable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the log poisoned by `err` (a failed sync) and returns the error.
    fn poison(&mut self, what: &str, err: io::Error) -> LogError {
        let reason = format!("{what}: {err}");
        self.poisoned = Some(reason.clone());
        LogError::Poisoned { reason }
    }

    /// Validates `batch`, assigns its base offset (rewriting it in place; the CRC
    /// does not cover it) and appends it to the active segment, rolling first when
    /// the segment is full or old. Not durable until [`PartitionLog::sync`].
    pub async fn append(&mut self, batch: &mut [u8], now_ms: i64) -> Result<Appended, LogError> {
        self.check_writable()?;
        let header = *BatchView::parse(batch, &self.config.limits)?.header();
        self.roll_if_due(&header, now_ms).await?;
        set_base_offset(batch, self.next_offset())?;
        self.append_checked(batch, &header, now_ms).await
    }

    /// [`PartitionLog::append`] for a batch whose base offset is already the one the log
    /// would assign (a replica's entry, stamped when it was proposed): validated the
    /// same way, appended without being copied or rewritten. A batch placed at any
    /// other offset is refused ([`LogError::Misplaced`]) and nothing is written.
    pub async fn append_placed(&mut self, batch: &[u8], now_ms: i64) -> Result<Appended, LogError> {
        self.check_writable()?;
        let header = *BatchView::parse(batch, &self.config.limits)?.header();
        let expected = self.next_offset();
        if header.base_offset != expected {
            return Err(LogError::Misplaced {
                base_offset: header.base_offset,
                expected,
            });
        }
        self.roll_if_due(&header, now_ms).await?;
        self.append_checked(batch, &header, now_ms).await
    }

    /// Rolls the active segment first when `header`'s batch would not fit in it or the
    /// segment is old.
    async fn roll_if_due(&mut self, header: &BatchHeader, now_ms: i64) -> Result<(), LogError> {
        let count = u64::from(header.record_count);
        let len = u64::from(header.length);
        let active = self.active();
        let rel_end = active.next - active.base + count;
        let full = active.size() + len > self.config.segment_bytes_max
            || active.index.is_full()
            || active.time_index.is_full()
            || rel_end > u64::from(u32::MAX);
        let old = active.first_append_ms.is_some_and(|t| {
            now_ms.saturating_sub(t) >= saturating_i64(self.config.segment_age_ms_max)
        });
        if !active.is_empty() && (full || old) {
            self.roll().await?;
        }
        Ok(())
    }

    /// Appends a validated batch whose base offset is the log's next offset.
    async fn append_checked(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        now_ms: i64,
    ) -> Result<Appended, LogError> {
        let count = u64::from(header.record_count);
        let len = u64::from(header.length);
        let base_offset = self.next_offset();
        let interval = self.config.index_interval_bytes;
        let seg = self.active_mut();
        let pos = seg.size();
        let name = names(seg.base)[0].clone();
        if let Err(e) = seg.file.append(batch).await {
            // Undo whatever part landed, so nothing half-written is ever visible.
            if let Err(t) = seg.file.truncate(pos).await {
                return Err(self.poison("truncate after failed append", t));
            }
            return Err(io_err("append", name)(e));
        }
        seg.push_index_if_due(pos, interval)
            .map_err(io_err("index", names(seg.base)[1].clone()))?;
        seg.note_appended(&header_with_base(header, base_offset), now_ms);
        self.stats.batches_appended += 1;
        self.stats.bytes_appended += len;
        Ok(Appended {
            base_offset,
            last_offset: base_offset + count - 1,
        })
    }

    /// fdatasync of the active segment (one call covers every append before it):
    /// returns the new durable end. A failure poisons the log.
    pub async fn sync(&mut self) -> Result<u64, LogError> {
        self.check_writable()?;
        let target = self.next_offset();
        if self.durable_end < target {
            self.sync_active_and_dir(false).await?;
            self.stats.syncs += 1;
        }
        self.durable_end = self.durable_end.max(target);
        Ok(self.durable_end)
    }

    /// Begins a sync that lets appends go on while its fdatasync runs (a pipelined
    /// group commit): see [`SyncStart`]. When the future completes, call
    /// [`PartitionLog::finish_sync`]; only then is anything called durable, and only
    /// what was appended before this call.
    pub fn begin_sync(&mut self) -> Result<SyncStart, LogError> {
        self.check_writable()?;
        let target = self.next_offset();
        if self.durable_end >= target {
            return Ok(SyncStart::Durable);
        }
        Ok(match self.active().file.sync_detached() {
            Some(sync) => SyncStart::Detached(
                SyncTicket {
                    target,
                    log_id: self.log_id,
                    generation: self.generation,
                },
                sync,
            ),
            None => SyncStart::Inline,
        })
    }

    /// Whether `ticket` was issued by this log (not by another one, of a partition of
    /// the same name deleted since).
    pub fn owns(&self, ticket: &SyncTicket) -> bool {
        ticket.log_id == self.log_id
    }

    /// Completes a sync from [`PartitionLog::begin_sync`] with its fdatasync's result:
    /// the new durable end, or `None` when the ticket vouches for nothing here (another
    /// log's, or this log cut or replaced offsets below its target since). A failed
    /// fdatasync poisons the log, as in [`PartitionLog::sync`].
    pub fn finish_sync(
        &mut self,
        ticket: SyncTicket,
        result: io::Result<()>,
    ) -> Result<Option<u64>, LogError> {
        if ticket.log_id != self.log_id {
            return Ok(None);
        }
        if let Err(e) = result {
            return Err(self.poison("fsync", e));
        }
        self.check_writable()?;
        if ticket.generation != self.generation {
            return Ok(None);
        }
        self.stats.syncs += 1;
        self.durable_end = self.durable_end.max(ticket.target.min(self.next_offset()));
        Ok(Some(self.durable_end))
    }

    async fn sync_active_and_dir(&mut self, dir: bool) -> Result<(), LogError> {
        if let Err(e) = self.active_mut().file.sync().await {
            return Err(self.poison("fsync", e));
        }
        if dir {
            self.sync_dir().await?;
        }
        Ok(())
    }

    async fn sync_dir(&mut self) -> Result<(), LogError> {
        match self.storage.sync_dir().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.poison("directory fsync", e)),
        }
    }

    /// Seals the active segment (fsync, trim and fsync its indexes) and starts a new
    /// one at the next offset, durably in the directory.
    async fn roll(&mut self) -> Result<(), LogError> {
        let next = self.next_offset();
        self.seal_active().await?;
        let seg = create_segment(&self.storage, &self.config, next).await?;
        self.segments.push(seg);
        self.sync_dir().await?;
        self.durable_end = self.durable_end.max(next);
        self.stats.rolls += 1;
        Ok(())
    }

    async fn seal_active(&mut self) -> Result<(), LogError> {
        let seg = self.active_mut();
        let synced = async {
            seg.file.sync().await?;
            seg.trim_indexes().await
        }
        .await;
        synced.map_err(|e| self.poison("sealing segment", e))
    }

    /// Reads whole batches starting with the one that holds `from`, up to about
    /// `max_bytes` (at least one batch), as stored.
    pub async fn read(&self, from: u64, max_bytes: usize) -> Result<Batches, LogError> {
        self.read_bounded(from, max_bytes, u64::MAX).await
    }

    /// Like [`PartitionLog::read`] but never returns a batch at or beyond `end`
    /// (for example the high watermark).
    pub async fn read_bounded(
        &self,
        from: u64,
        max_bytes: usize,
        end: u64,
    ) -> Result<Batches, LogError> {
        let next = self.next_offset();
        if from < self.log_start || from > next {
            return Err(LogError::OffsetOutOfRange {
                offset: from,
                start: self.log_start,
                end: next,
            });
        }
        let end = end.min(next);
        let mut out = Batches {
            next_offset: from,
            ..Batches::default()
        };
        if from >= end {
            return Ok(out);
        }
        let seg = self.segment_for(from);
        let (pos, offset) = seg.seek(from);
        let limits = self.config.limits;
        // The batches below `from` between the index entry and it: headers only.
        let mut cursor = seg
            .cursor(&limits, pos, offset)
            .with_chunk(FETCH_SKIP_CHUNK_BYTES);
        stored(seg.base, cursor.skip_below(from).await)?;
        // Then the batches returned, read straight into the buffer that is returned:
        // as much as the budget asks for in one read, the first batch whole.
        let start = cursor.pos();
        cursor.keep_from_here(max_bytes.saturating_add(HEADER_LEN));
        let budget_end = start.saturating_add(max_bytes as u64);
        let mut kept_end = start;
        loop {
            let within = if out.count == 0 { u64::MAX } else { budget_end };
            let Some(found) = stored(seg.base, cursor.next_within(within).await)? else {
                break;
            };
            if found.header.base_offset >= end {
                break;
            }
            out.count += 1;
            out.next_offset = found.header.last_offset() + 1;
            kept_end = found.pos + u64::from(found.header.length);
        }
        out.bytes = cursor.take_kept(kept_end).ok_or_else(|| LogError::Io {
            op: "read",
            file: names(seg.base)[0].clone(),
            source: io::Error::other("the fetched batches are not in the read buffer"),
        })?;
        Ok(out)
    }

    /// The header of every batch from the log start to the end, in order. Reads the
    /// whole log: replication calls it once at open to rebuild its entry map.
    pub async fn batch_headers(&self) -> Result<Vec<BatchHeader>, LogError> {
        let limits = self.config.limits;
        let mut out = Vec::new();
        for seg in &self.segments {
            let mut cursor = seg.cursor(&limits, 0, seg.base);
            while let Some(found) = self.next_stored(&mut cursor, seg).await? {
                if found.header.last_offset() >= self.log_start {
                    out.push(found.header);
                }
            }
        }
        Ok(out)
    }

    /// Replaces the small file `name` in the partition directory atomically and durably
    /// (temp file, fsync, rename over, fsync dir). Replication keeps `raft.state` so.
    pub async fn write_sidecar(&self, name: &str, bytes: &[u8]) -> Result<(), LogError> {
        write_atomic(&self.storage, name, bytes)
            .await
            .map_err(io_err("write", name))
    }

    /// Reads the whole file `name` written by [`PartitionLog::write_sidecar`], or `None`
    /// if there is none.
    pub async fn read_sidecar(&self, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        let files = self.storage.list().await.map_err(io_err("list", "."))?;
        if !files.iter().any(|f| f == name) {
            return Ok(None);
        }
        let file = self
            .storage
            .open(name, OpenMode::Existing)
            .await
            .map_err(io_err("open", name))?;
        let len = usize::try_from(file.len()).unwrap_or(usize::MAX);
        let bytes = file.read_at(0, len).await.map_err(io_err("read", name))?;
        Ok(Some(bytes))
    }

    /// The next batch of a segment that must be whole (inside the stored range).
    async fn next_stored(
        &self,
        cursor: &mut Cursor<'_, S::File>,
        seg: &Segment<S>,
    ) -> Result<Option<Found>, LogError> {
        stored(seg.base, cursor.next().await)
    }

    fn segment_for(&self, offset: u64) -> &Segment<S> {
        let i = self.segments.partition_point(|s| s.base <= offset);
        match self.segments.get(i.saturating_sub(1)) {
            Some(s) => s,
            None => self.active(),
        }
    }

    /// The first offset at or after the log start whose record timestamp is at or
    /// above `timestamp`, searching from the first batch whose max timestamp reaches
    /// it (Kafka's rule for out-of-order timestamps). `None` if no record does.
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>, LogError> {
        let limits = self.config.limits;
        for seg in &self.segments {
            if seg.is_empty() || seg.max_timestamp < timestamp || seg.next <= self.log_start {
                continue;
            }
            let (pos, offset) = seg.seek_time(timestamp);
            let mut cursor = seg.cursor(&limits, pos, offset);
            while let Some(found) = self.next_stored(&mut cursor, seg).await? {
                if found.header.max_timestamp < timestamp
                    || found.header.last_offset() < self.log_start
                {
                    continue;
                }
                let view = BatchView::parse(cursor.bytes(&found), &limits)?;
                let hit = view
                    .records()
                    .find(|r| r.timestamp >= timestamp && r.offset >= self.log_start);
                if let Some(r) = hit {
                    return Ok(Some(r.offset));
                }
            }
        }
        Ok(None)
    }

    /// The log start that [`PartitionLog::apply_retention`] would leave now: the base
    /// of the oldest segment it would keep (the current log start if none would go).
    /// Replication moves its own log-start marker there first, then calls
    /// [`PartitionLog::truncate_prefix`].
    pub fn retention_target(&self, now_ms: i64) -> u64 {
        let mut total = self.size_bytes();
        let mut target = self.log_start;
        let sealed = self.segments.len().saturating_sub(1);
        for (i, seg) in self.segments.iter().take(sealed).enumerate() {
            let by_size = self
                .config
                .retention_bytes_max
                .is_some_and(|max| total - seg.size() >= max);
            let by_age = self.config.retention_age_ms_max.is_some_and(|age| {
                seg.max_timestamp != i64::MIN
                    && seg.max_timestamp < now_ms.saturating_sub(saturating_i64(age))
            });
            if !(by_size || by_age) {
                break;
            }
            total -= seg.size();
            target = self.segments.get(i + 1).map_or(seg.next, |s| s.base);
        }
        target.max(self.log_start)
    }

    /// Deletes whole sealed segments past the retention limits. The active segment
    /// is never deleted.
    pub async fn apply_retention(&mut self, now_ms: i64) -> Result<Retained, LogError> {
        self.check_writable()?;
        let mut done = Retained::default();
        let mut total = self.size_bytes();
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.first() else {
                break;
            };
            let by_size = self
                .config
                .retention_bytes_max
                .is_some_and(|max| total - oldest.size() >= max);
            let by_age = self.config.retention_age_ms_max.is_some_and(|age| {
                oldest.max_timestamp != i64::MIN
                    && oldest.max_timestamp < now_ms.saturating_sub(saturating_i64(age))
            });
            if !(by_size || by_age) {
                break;
            }
            let size = oldest.size();
            self.delete_oldest().await?;
            total -= size;
            done.segments_deleted += 1;
            done.bytes_deleted += size;
        }
        if done.segments_deleted > 0 {
            self.sync_dir().await?;
        }
        Ok(done)
    }

    async fn delete_oldest(&mut self) -> Result<(), LogError> {
        assert!(
            self.segments.len() > 1,
            "storage: deleting the active segment"
        );
        let seg = self.segments.remove(0);
        for name in names(seg.base) {
            self.storage
                .remove(&name)
                .await
                .map_err(io_err("remove", name.as_str()))?;
        }
        let next_base = self.segments.first().map_or(seg.next, |s| s.base);
        self.log_start = self.log_start.max(next_base);
        self.stats.segments_deleted += 1;
        Ok(())
    }

    /// Removes every offset at or after `offset` (Raft's conflict truncation). The
    /// cut is at the start of the batch holding `offset`; returns the new next
    /// offset. Durable on return.
    pub async fn truncate_suffix(&mut self, offset: u64) -> Result<u64, LogError> {
        self.check_writable()?;
        if offset >= self.next_offset() {
            return Ok(self.next_offset());
        }
        if offset < self.log_start {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start,
                end: self.next_offset(),
            });
        }
        // A sync begun before vouches for none of what replaces the cut.
        self.generation += 1;
        // Drop whole later segments, newest first, and make that durable before
        // cutting the survivor: a crash must never bring back segments beyond a cut
        // (and shorter) one.
        let keep = self.segments.partition_point(|s| s.base <= offset).max(1);
        let mut removed = false;
        while self.segments.len() > keep {
            let Some(seg) = self.segments.pop() else {
                break;
            };
            for name in names(seg.base).iter().rev() {
                self.storage
                    .remove(name)
                    .await
                    .map_err(io_err("remove", name.as_str()))?;
            }
            removed = true;
        }
        if removed {
            self.sync_dir().await?;
        }
        // Find where the batch holding `offset` starts.
        let limits = self.config.limits;
        let seg = self.active();
        let (mut pos, start_offset) = seg.seek(offset);
        let mut cut_offset = start_offset;
        let mut cursor = seg.cursor(&limits, pos, start_offset);
        while let Some(found) = self.next_stored(&mut cursor, seg).await? {
            if found.header.last_offset() >= offset {
                break;
            }
            pos = cursor.pos();
            cut_offset = cursor.next_offset();
        }
        let sealed_before = removed;
        let index_len = self.config.index_bytes_max;
        let time_len = self.config.time_index_bytes_max();
        let seg = self.active_mut();
        let rel = cut_offset - seg.base;
        let result: io::Result<()> = async {
            seg.file.truncate(pos).await?;
            seg.index.truncate_to(rel)?;
            seg.time_index.truncate_to(rel)?;
            if sealed_before {
                // It was sealed with trimmed indexes: it takes appends again.
                seg.grow_indexes(index_len, time_len).await?;
            }
            Ok(())
        }
        .await;
        result.map_err(io_err("truncate", names(seg.base)[0].clone()))?;
        seg.next = cut_offset;
        let max_ts = recompute_max_timestamp(seg, &limits).await?;
        let seg = self.active_mut();
        seg.max_timestamp = max_ts;
        seg.since_index_bytes = pos - seg.index.last().map_or(0, |e| u64::from(e.position));
        if seg.is_empty() {
            seg.first_append_ms = None;
        }
        self.sync_active_and_dir(false).await?;
        self.durable_end = self.durable_end.min(cut_offset);
        Ok(cut_offset)
    }

    /// Moves the log start to `offset`: reads below it fail, whole segments below
    /// it are deleted. An offset past the end empties the log, which then continues
    /// at `offset` (a Raft follower resetting to the leader's log start). Durable on
    /// return.
    pub async fn truncate_prefix(&mut self, offset: u64) -> Result<(), LogError> {
        self.check_writable()?;
        if offset <= self.log_start {
            return Ok(());
        }
        write_log_start(&self.storage, offset)
            .await
            .map_err(|e| self.poison("log start checkpoint", e))?;
        if offset > self.next_offset() {
            self.reset_to(offset).await?;
        } else {
            self.log_start = offset;
            while self.segments.len() > 1 && self.segments.first().is_some_and(|s| s.next <= offset)
            {
                self.delete_oldest().await?;
            }
            self.log_start = offset;
        }
        self.sync_dir().await?;
        self.durable_end = self.durable_end.max(self.log_start);
        Ok(())
    }

    /// Replaces every segment with one empty segment at `offset`.
    async fn reset_to(&mut self, offset: u64) -> Result<(), LogError> {
        let seg = create_segment(&self.storage, &self.config, offset).await?;
        self.generation += 1;
        let old = std::mem::replace(&mut self.segments, vec![seg]);
        for s in old.iter().rev() {
            for name in names(s.base) {
                self.storage
                    .remove(&name)
                    .await
                    .map_err(io_err("remove", name.as_str()))?;
            }
        }
        self.log_start = offset;
        self.durable_end = offset;
        self.sync_dir().await
    }

    /// Full consistency check, for tests and operators: rescans every segment from
    /// its start and compares what it finds with the indexes and the in-memory
    /// bookkeeping. Returns the problems found (empty when consistent).
    pub async fn verify(&self) -> Result<Vec<String>, LogError> {
        let mut problems = Vec::new();
        let limits = self.config.limits;
        let mut expect_base = None;
        for seg in &self.segments {
            let name = names(seg.base)[0].clone();
            if expect_base.is_some_and(|b| b != seg.base) {
                problems.push(format!(
                    "{name}: starts at {} after {:?}",
                    seg.base, expect_base
                ));
            }
            expect_base = Some(seg.next);
            let mut cursor = seg.cursor(&limits, 0, seg.base);
            let mut batches: Vec<(u64, sluice_proto::BatchHeader)> = Vec::new();
            loop {
                match cursor.next().await.map_err(io_err("read", name.as_str()))? {
                    Ok(Some(f)) => batches.push((f.pos, f.header)),
                    Ok(None) => break,
                    Err(ScanStop::Bad { pos, reason }) => {
                        problems.push(format!("{name}: bad batch at {pos}: {reason}"));
                        break;
                    }
                }
            }
            if cursor.next_offset() != seg.next {
                problems.push(format!(
                    "{name}: scan ends at offset {}, log says {}",
                    cursor.next_offset(),
                    seg.next
                ));
            }
            let max_ts = batches
                .iter()
                .map(|(_, h)| h.max_timestamp)
                .max()
                .unwrap_or(i64::MIN);
            if max_ts != seg.max_timestamp {
                problems.push(format!(
                    "{name}: max timestamp {} but batches say {max_ts}",
                    seg.max_timestamp
                ));
            }
            for i in 0..seg.index.len() {
                let Some(e) = seg.index.entry(i) else {
                    continue;
                };
                let at = batches.iter().find(|(p, _)| *p == u64::from(e.position));
                if at.is_none_or(|(_, h)| h.base_offset != seg.base + u64::from(e.rel_offset)) {
                    problems.push(format!("{name}: index entry {i} {e:?} matches no batch"));
                }
            }
            for i in 0..seg.time_index.len() {
                let Some(t) = seg.time_index.entry(i) else {
                    continue;
                };
                let start = seg.base + u64::from(t.rel_offset);
                let indexed = seg
                    .index
                    .last_where(|e| e.rel_offset <= t.rel_offset)
                    .is_some_and(|e| e.rel_offset == t.rel_offset);
                let bound_ok = batches
                    .iter()
                    .filter(|(_, h)| h.base_offset < start)
                    .all(|(_, h)| h.max_timestamp <= t.timestamp);
                if !indexed || !bound_ok {
                    problems.push(format!("{name}: time index entry {i} {t:?} is wrong"));
                }
            }
        }
        Ok(problems)
    }

    /// A clean stop: seals nothing, but makes everything durable, trims the active
    /// indexes and leaves the marker that lets the next open trust them.
    pub async fn close(mut self) -> Result<(), LogError> {
        self.check_writable()?;
        self.seal_active().await?;
        let mut marker = self
            .storage
            .open(CLEAN_SHUTDOWN_FILE, OpenMode::Create)
            .await
            .map_err(io_err("create", CLEAN_SHUTDOWN_FILE))?;
        if let Err(e) = marker.sync().await {
            return Err(self.poison("fsync clean-shutdown marker", e));
        }
        self.sync_dir().await
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn header_with_base(h: &sluice_proto::BatchHeader, base: u64) -> sluice_proto::BatchHeader {
    sluice_proto::BatchHeader {
        base_offset: base,
        ..*h
    }
}

/// Max timestamp of a segment after a suffix cut: the last time-index entry bounds
/// everything before the last offset-index entry; scan the rest.
async fn recompute_max_timestamp<S: Storage>(
    seg: &Segment<S>,
    limits: &Limits,
) -> Result<i64, LogError> {
    let mut max = seg.time_index.last().map_or(i64::MIN, |e| e.timestamp);
    let (pos, offset) = match seg.index.last() {
        Some(e) => (u64::from(e.position), seg.base + u64::from(e.rel_offset)),
        None => (0, seg.base),
    };
    let mut cursor = seg.cursor(limits, pos, offset);
    while let Some(found) = stored(seg.base, cursor.next().await)? {
        max = max.max(found.header.max_timestamp);
    }
    Ok(max)
}

async fn create_segment<S: Storage>(
    storage: &S,
    config: &LogConfig,
    base: u64,
) -> Result<Segment<S>, LogError> {
    let [log, index, time] = names(base);
    let file = storage
        .open(&log, OpenMode::Create)
        .await
        .map_err(io_err("create", log.as_str()))?;
    // Zero any stale bytes a crashed earlier incarnation left in a same-named file.
    let mut imap = open_map(storage, &index, Some(0)).await?;
    imap.set_len(config.index_bytes_max)
        .await
        .map_err(io_err("resize", index.as_str()))?;
    let mut tmap = open_map(storage, &time, Some(0)).await?;
    tmap.set_len(config.time_index_bytes_max())
        .await
        .map_err(io_err("resize", time.as_str()))?;
    Ok(Segment {
        base,
        next: base,
        file,
        index: SparseIndex::empty(imap),
        time_index: SparseIndex::empty(tmap),
        max_timestamp: i64::MIN,
        since_index_bytes: 0,
        first_append_ms: None,
    })
}

async fn open_map<S: Storage>(
    storage: &S,
    name: &str,
    len: Option<u64>,
) -> Result<S::Index, LogError> {
    storage
        .open_index(name, len)
        .await
        .map_err(io_err("open index", name))
}

/// Opens one existing segment. The active one is scanned (from its last index entry
/// after a clean stop, from the start otherwise) and cut at the first bad batch; a
/// sealed one is checked from its last index entry to its end, and any bad batch
/// there is corruption.
async fn open_segment<S: Storage>(
    storage: &S,
    config: &LogConfig,
    base: u64,
    active: bool,
    clean: bool,
    report: &mut RecoveryReport,
) -> Result<Segment<S>, LogError> {
    let [log, index_name, time_name] = names(base);
    let file = storage
        .open(&log, OpenMode::Existing)
        .await
        .map_err(io_err("open", log.as_str()))?;
    let size = file.len();
    let imap = open_map(storage, &index_name, None).await?;
    let tmap = open_map(storage, &time_name, None).await?;
    let trust = !active || clean;
    let rel_end = u64::from(u32::MAX);
    let (index, time_index, rebuilt) = if trust {
        let ientries = imap.bytes().len() / OffsetEntry::BYTES;
        let tentries = tmap.bytes().len() / TimeEntry::BYTES;
        match (
            OffsetIndex::load(imap, ientries, rel_end),
            TimeIndex::load(tmap, tentries, rel_end),
        ) {
            (Ok(i), Ok(t)) => (i, t, false),
            (i, t) => (
                SparseIndex::empty(i.map_or_else(|m| m, SparseIndex::into_map)),
                SparseIndex::empty(t.map_or_else(|m| m, SparseIndex::into_map)),
                true,
            ),
        }
    } else {
        (SparseIndex::empty(imap), SparseIndex::empty(tmap), true)
    };
    let mut seg: Segment<S> = Segment {
        base,
        next: base,
        file,
        index,
        time_index,
        max_timestamp: i64::MIN,
        since_index_bytes: 0,
        first_append_ms: None,
    };
    let mut rebuilt = rebuilt;
    if !rebuilt && !index_points_at_batches(&seg, config, size).await? {
        rebuilt = true;
    }
    if rebuilt {
        report.indexes_rebuilt += 1;
        clear_indexes(&mut seg)
            .await
            .map_err(io_err("reset index", index_name.as_str()))?;
    }
    if active || rebuilt {
        seg.grow_indexes(config.index_bytes_max, config.time_index_bytes_max())
            .await
            .map_err(io_err("resize", index_name.as_str()))?;
    }
    // Scan from the last index entry (the start when rebuilding).
    let (pos, offset) = match seg.index.last() {
        Some(e) => (u64::from(e.position), base + u64::from(e.rel_offset)),
        None => (0, base),
    };
    seg.max_timestamp = seg.time_index.last().map_or(i64::MIN, |e| e.timestamp);
    seg.since_index_bytes = 0;
    let limits = config.limits;
    let mut cursor = seg.cursor(&limits, pos, offset);
    let mut found_batches = Vec::new();
    let stop = loop {
        match cursor.next().await.map_err(io_err("read", log.as_str()))? {
            Ok(Some(found)) => found_batches.push(found),
            Ok(None) => break None,
            Err(stop) => break Some(stop),
        }
    };
    let (valid_end, next) = (cursor.pos(), cursor.next_offset());
    drop(cursor);
    for found in &found_batches {
        report.batches_scanned += 1;
        // The batch at the last trusted entry is that entry; later ones may be due.
        if rebuilt || found.pos > pos {
            seg.push_index_if_due(found.pos, config.index_interval_bytes)
                .map_err(io_err("index", index_name.as_str()))?;
        }
        seg.next = found.header.last_offset() + 1;
        seg.max_timestamp = seg.max_timestamp.max(found.header.max_timestamp);
        seg.since_index_bytes += u64::from(found.header.length);
    }
    seg.next = next;
    if let Some(ScanStop::Bad { pos: bad, reason }) = stop {
        if !active {
            return Err(LogError::Corruption {
                file: log,
                position: bad,
                reason,
            });
        }
        report.truncated_bytes += size - valid_end;
        seg.file
            .truncate(valid_end)
            .await
            .map_err(io_err("truncate", log.as_str()))?;
    }
    if rebuilt && !active {
        // A sealed segment keeps its rebuilt indexes trimmed and durable.
        seg.trim_indexes()
            .await
            .map_err(io_err("rebuild index", index_name.as_str()))?;
    }
    Ok(seg)
}

/// Cheap check that a loaded index agrees with the log: its last entry is inside
/// the file and a batch with the right base offset starts there.
async fn index_points_at_batches<S: Storage>(
    seg: &Segment<S>,
    config: &LogConfig,
    size: u64,
) -> Result<bool, LogError> {
    let Some(last) = seg.index.last() else {
        return Ok(true);
    };
    if u64::from(last.position) >= size {
        return Ok(false);
    }
    let mut cursor = seg.cursor(
        &config.limits,
        u64::from(last.position),
        seg.base + u64::from(last.rel_offset),
    );
    let ok = matches!(cursor.next().await, Ok(Ok(Some(_))));
    let time_ok = seg.time_index.last().is_none_or(|t| {
        seg.index
            .last_where(|e| e.rel_offset <= t.rel_offset)
            .is_some_and(|e| e.rel_offset == t.rel_offset)
    });
    Ok(ok && time_ok)
}

async fn clear_indexes<S: Storage>(seg: &mut Segment<S>) -> io::Result<()> {
    seg.index.truncate_to(0)?;
    seg.time_index.truncate_to(0)?;
    // Zero the whole mapping: the entry count is derived from the length later.
    let ilen = seg.index.map_mut().bytes().len() as u64;
    seg.index.map_mut().set_len(0).await?;
    seg.index.map_mut().set_len(ilen).await?;
    let tlen = seg.time_index.map_mut().bytes().len() as u64;
    seg.time_index.map_mut().set_len(0).await?;
    seg.time_index.map_mut().set_len(tlen).await
}

/// Reads the log-start checkpoint: 8 bytes LE offset, 4 bytes LE CRC-32 of them.
async fn read_log_start<S: Storage>(
    storage: &S,
    files: &[String],
) -> Result<Option<u64>, LogError> {
    if !files.iter().any(|f| f == LOG_START_FILE) {
        return Ok(None);
    }
    let file = storage
        .open(LOG_START_FILE, OpenMode::Existing)
        .await
        .map_err(io_err("open", LOG_START_FILE))?;
    let bytes = file
        .read_at(0, 12)
        .await
        .map_err(io_err("read", LOG_START_FILE))?;
    let corrupt = |reason: &str| LogError::Corruption {
        file: LOG_START_FILE.into(),
        position: 0,
        reason: reason.into(),
    };
    let (off, crc) = bytes
        .split_first_chunk::<8>()
        .and_then(|(o, rest)| Some((*o, *rest.first_chunk::<4>()?)))
        .ok_or_else(|| corrupt("short checkpoint"))?;
    if crc32fast::hash(&off) != u32::from_le_bytes(crc) {
        return Err(corrupt("checkpoint CRC mismatch"));
    }
    Ok(Some(u64::from_le_bytes(off)))
}

/// Writes the checkpoint atomically: temp file, fsync, rename over, fsync dir.
async fn write_log_start<S: Storage>(storage: &S, offset: u64) -> io::Result<()> {
    let mut bytes = offset.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&offset.to_le_bytes()).to_le_bytes());
    write_atomic(storage, LOG_START_FILE, &bytes).await
}

/// Replaces `name` atomically: `name.tmp`, fsync, rename over, fsync dir.
async fn write_atomic<S: Storage>(storage: &S, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp_name = format!("{name}.tmp");
    let mut tmp = storage.open(&tmp_name, OpenMode::Create).await?;
    tmp.append(bytes).await?;
    tmp.sync().await?;
    drop(tmp);
    storage.rename(&tmp_name, name).await?;
    storage.sync_dir().await
}
