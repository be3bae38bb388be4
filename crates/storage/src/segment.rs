//! One segment: a log file of whole batches plus its two sparse indexes, and the
//! buffered cursor that scans batches for recovery, reads and timestamp search.

use sluice_proto::{verify_crc, BatchError, BatchHeader, Limits, HEADER_LEN};

use crate::fs::IndexFile;

use crate::fs::{LogFile, Storage};
use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};

/// Bytes a cursor reads from the file at a time (more when one batch is larger).
pub(crate) const SCAN_CHUNK_BYTES: usize = 256 * 1024;

/// File names of the segment starting at `base`.
pub(crate) fn names(base: u64) -> [String; 3] {
    [
        format!("{base:020}.log"),
        format!("{base:020}.index"),
        format!("{base:020}.timeindex"),
    ]
}

/// Parses `00000000000000000042.log` into 42.
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// The bytes at `pos` are not a valid batch.
    Bad { pos: u64, reason: String },
}

/// A batch found by a [`Cursor`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub pos: u64,
    pub header: BatchHeader,
}

/// Scans whole, CRC-checked batches of one file from a known position and offset.
///
/// It reads the file in chunks into one buffer. By default each chunk replaces the
/// last; once [`Cursor::keep_from_here`] is called, chunks are appended instead, so
/// the batches from that point on stay in the buffer, contiguous, and
/// [`Cursor::take_kept`] hands them over without another copy (a fetch's response).
pub(crate) struct Cursor<'a, F> {
    file: &'a F,
    limits: &'a Limits,
    end: u64,
    /// Offsets stay below this, so relative offsets fit the indexes' u32.
    offset_end: u64,
    buf: Vec<u8>,
    buf_pos: u64,
    pos: u64,
    expect_offset: u64,
    /// Bytes read at a time (more when one batch is larger).
    chunk: usize,
    /// Whether the buffer grows (everything from `buf_pos` stays) instead of being
    /// replaced.
    keep: bool,
}

impl<'a, F: LogFile> Cursor<'a, F> {
    /// A cursor at `pos`, where a batch with base offset `offset` must start, that
    /// stops at file position `end`, in a segment whose base offset is `base`.
    pub fn new(
        file: &'a F,
        limits: &'a Limits,
        base: u64,
        pos: u64,
        offset: u64,
        end: u64,
    ) -> Self {
        Self {
            file,
            limits,
            end,
            offset_end: base.saturating_add(u64::from(u32::MAX)),
            buf: Vec::new(),
            buf_pos: pos,
            pos,
            expect_offset: offset,
            chunk: SCAN_CHUNK_BYTES,
            keep: false,
        }
    }

    /// Position of the next batch.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Base offset the next batch must have.
    pub fn next_offset(&self) -> u64 {
        self.expect_offset
    }

    /// Reads `chunk` bytes at a time (more when one batch is larger).
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(HEADER_LEN);
        self
    }

    /// From now on the buffer starts at the next batch and keeps every byte read after
    /// it, reading `chunk` bytes at a time.
    pub fn keep_from_here(&mut self, chunk: usize) {
        self.keep = true;
        self.chunk = chunk.max(HEADER_LEN);
        self.buf.clear();
        self.buf_pos = self.pos;
    }

    /// The kept bytes up to file position `end`, which must not pass what was read:
    /// every batch returned since [`Cursor::keep_from_here`] and before `end`.
    pub fn take_kept(mut self, end: u64) -> Option<Vec<u8>> {
        let len = usize::try_from(end.checked_sub(self.buf_pos)?).ok()?;
        if !self.keep || len > self.buf.len() {
            return None;
        }
        self.buf.truncate(len);
        Some(self.buf)
    }

    /// Makes `[pos, pos + len)` resident; false if the file ends first.
    async fn fill(&mut self, len: usize) -> Result<bool, std::io::Error> {
        let have_from = self.pos - self.buf_pos;
        let resident = (self.buf.len() as u64).saturating_sub(have_from);
        if resident >= len as u64 {
            return Ok(true);
        }
        let want_end = self
            .pos
            .saturating_add(len.max(self.chunk) as u64)
            .min(self.end);
        if self.keep {
            // `pos` is inside the buffer or at its end: read on from there.
            let buf_end = self.buf_pos + self.buf.len() as u64;
            let want = usize::try_from(want_end.saturating_sub(buf_end)).unwrap_or(usize::MAX);
            self.file.read_append(buf_end, want, &mut self.buf).await?;
        } else {
            let want = usize::try_from(want_end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
            self.buf.clear();
            self.buf_pos = self.pos;
            self.file.read_append(self.pos, want, &mut self.buf).await?;
        }
        Ok(self.buf_pos + self.buf.len() as u64 >= self.pos + len as u64)
    }

    /// The bytes of the batch just returned by `next`.
    pub fn bytes(&self, found: &Found) -> &[u8] {
        let start = (found.pos - self.buf_pos) as usize;
        self.buf
            .get(start..start + found.header.length as usize)
            .unwrap_or_default()
    }

    /// The header of the batch at `pos`, checked against where it lies: its base
    /// offset is the one expected and its offsets fit the segment.
    async fn header(&mut self) -> Result<Result<BatchHeader, ScanStop>, std::io::Error> {
        let pos = self.pos;
        let bad = |reason: String| Ok(Err(ScanStop::Bad { pos, reason }));
        if !self.fill(HEADER_LEN).await? {
            return bad("truncated batch header".into());
        }
        let start = (pos - self.buf_pos) as usize;
        let header =
            match BatchHeader::parse(self.buf.get(start..).unwrap_or_default(), self.limits) {
                Ok(h) => h,
                Err(e) => return bad(e.to_string()),
            };
        if header.base_offset != self.expect_offset {
            return bad(format!(
                "base offset {} where {} was expected",
                header.base_offset, self.expect_offset
            ));
        }
        if header.last_offset() >= self.offset_end {
            return bad("offsets overflow the segment's relative offset range".into());
        }
        if pos + u64::from(header.length) > self.end {
            return bad(BatchError::Truncated {
                needed: header.length as usize,
                have: (self.end - pos) as usize,
            }
            .to_string());
        }
        Ok(Ok(header))
    }

    /// Moves past every batch whose offsets all lie below `offset`, reading only their
    /// headers (their CRCs are not checked: nothing of them is returned).
    pub async fn skip_below(
        &mut self,
        offset: u64,
    ) -> Result<Result<(), ScanStop>, std::io::Error> {
        while self.pos < self.end {
            let header = match self.header().await? {
                Ok(h) => h,
                Err(stop) => return Ok(Err(stop)),
            };
            if header.last_offset() >= offset {
                break;
            }
            self.pos += u64::from(header.length);
            self.expect_offset = header.last_offset() + 1;
        }
        Ok(Ok(()))
    }

    /// The next batch, `Ok(None)` at `end`, or why the bytes there are not one.
    pub async fn next(&mut self) -> Result<Result<Option<Found>, ScanStop>, std::io::Error> {
        self.next_within(u64::MAX).await
    }

    /// Like [`Cursor::next`], but `Ok(None)` also when the next batch would end past
    /// file position `end` (it is not read).
    pub async fn next_within(
        &mut self,
        end: u64,
    ) -> Result<Result<Option<Found>, ScanStop>, std::io::Error> {
        if self.pos >= self.end {
            return Ok(Ok(None));
        }
        let pos = self.pos;
        let header = match self.header().await? {
            Ok(h) => h,
            Err(stop) => return Ok(Err(stop)),
        };
        let len = header.length as usize;
        if pos + len as u64 > end {
            return Ok(Ok(None));
        }
        if !self.fill(len).await? {
            return Ok(Err(ScanStop::Bad {
                pos,
                reason: BatchError::Truncated {
                    needed: len,
                    have: (self.end - pos) as usize,
                }
                .to_string(),
            }));
        }
        let start = (pos - self.buf_pos) as usize;
        if let Err(e) = verify_crc(self.buf.get(start..start + len).unwrap_or_default()) {
            return Ok(Err(ScanStop::Bad {
                pos,
                reason: e.to_string(),
            }));
        }
        self.pos += len as u64;
        self.expect_offset = header.last_offset() + 1;
        Ok(Ok(Some(Found { pos, header })))
    }
}

/// One segment of a partition log.
#[derive(Debug)]
pub(crate) struct Segment<S: Storage> {
    pub base: u64,
    /// One past the last offset stored.
    pub next: u64,
    pub file: S::File,
    pub index: OffsetIndex<S::Index>,
    pub time_index: TimeIndex<S::Index>,
    /// Max timestamp of every batch, `i64::MIN` when empty.
    pub max_timestamp: i64,
    /// Bytes appended since the last index entry.
    pub since_index_bytes: u64,
    /// When the segment took its first batch (for roll by age).
    pub first_append_ms: Option<i64>,
}

impl<S: Storage> Segment<S> {
    pub fn size(&self) -> u64 {
        self.file.len()
    }

    /// Trims both indexes to their entries and fsyncs them: a sealed segment's state.
    pub async fn trim_indexes(&mut self) -> std::io::Result<()> {
        let used = self.index.used_bytes();
        self.index.map_mut().set_len(used).await?;
        self.index.map_mut().sync().await?;
        let used = self.time_index.used_bytes();
        self.time_index.map_mut().set_len(used).await?;
        self.time_index.map_mut().sync().await
    }

    /// Extends both index files to their preallocated sizes: an active segment's state.
    pub async fn grow_indexes(&mut self, index_bytes: u64, time_bytes: u64) -> std::io::Result<()> {
        self.index.map_mut().set_len(index_bytes).await?;
        self.time_index.map_mut().set_len(time_bytes).await
    }

    /// A batch cursor over this segment's file, at `pos` where offset `offset` starts.
    pub fn cursor<'a>(&'a self, limits: &'a Limits, pos: u64, offset: u64) -> Cursor<'a, S::File> {
        Cursor::new(&self.file, limits, self.base, pos, offset, self.size())
    }

    pub fn is_empty(&self) -> bool {
        self.next == self.base
    }

    /// Adds the index entries due for a batch about to be recorded at `pos` (the
    /// end of the log). Appends and recovery both call this, so a rebuilt index is
    /// the one appends wrote.
    pub fn push_index_if_due(&mut self, pos: u64, interval_bytes: u64) -> std::io::Result<()> {
        // A full index only gets sparser (lookups scan further); appends roll before
        // that, so this happens only when a segment is reopened with a smaller limit.
        if self.since_index_bytes < interval_bytes || pos == 0 || self.index.is_full() {
            return Ok(());
        }
        let rel_offset = rel(self.base, self.next);
        self.index.push(OffsetEntry {
            rel_offset,
            position: u32::try_from(pos).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "segment position over u32",
                )
            })?,
        })?;
        if self.max_timestamp > self.time_index.last().map_or(i64::MIN, |e| e.timestamp)
            && !self.time_index.is_full()
        {
            self.time_index.push(TimeEntry {
                timestamp: self.max_timestamp,
                rel_offset,
            })?;
        }
        self.since_index_bytes = 0;
        Ok(())
    }

    /// Records a batch appended at the end (index bookkeeping is done before).
    pub fn note_appended(&mut self, header: &BatchHeader, now_ms: i64) {
        self.next = header.last_offset() + 1;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.since_index_bytes += u64::from(header.length);
        self.first_append_ms.get_or_insert(now_ms);
    }

    /// Position and base offset from which to scan for `offset` (in this segment).
    pub fn seek(&self, offset: u64) -> (u64, u64) {
        let target = rel(self.base, offset);
        match self.index.last_where(|e| e.rel_offset <= target) {
            Some(e) => (u64::from(e.position), self.base + u64::from(e.rel_offset)),
            None => (0, self.base),
        }
    }

    /// Position and base offset from which to scan for the first batch whose max
    /// timestamp is at or above `timestamp`.
    pub fn seek_time(&self, timestamp: i64) -> (u64, u64) {
        match self.time_index.last_where(|e| e.timestamp < timestamp) {
            Some(t) => self.seek(self.base + u64::from(t.rel_offset)),
            None => (0, self.base),
        }
    }
}

/// `offset - base` as the u32 the indexes store; the log rolls before it overflows.
pub(crate) fn rel(base: u64, offset: u64) -> u32 {
    let r = offset.saturating_sub(base);
    assert!(
        r <= u64::from(u32::MAX),
        "storage: relative offset overflow"
    );
    r as u32
}
