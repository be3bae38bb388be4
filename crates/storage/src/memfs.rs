//! An in-memory, fault-injecting [`Storage`]: the disk of the crash suite and of the
//! simulator.
//!
//! The model keeps, per file (inode), the bytes a reader sees now (`current`), the
//! bytes known to be on the platter (`durable`, as of the last successful sync) and
//! the ordered list of changes since (`pending`). The directory is modelled the same
//! way: the names a reader sees now, the names as of the last `sync_dir`, and the
//! pending creates, removes and renames. A *crash image* is a fresh `MemFs` built
//! from that state under one of three [`CrashModel`]s.
//!
//! Every successful mutating call is recorded as an [`Op`] and, if a hook is set,
//! reported to it right after it takes effect, so a harness can take a crash image
//! at every write and fsync boundary of a workload without re-running it.
//!
//! Faults: failing syncs (EIO; the failed sync drops the pending changes from what a
//! crash can keep, as Linux may drop dirty pages after a writeback error), failing
//! writes (EIO after half the bytes landed), and a byte capacity (ENOSPC with a short
//! write, like a full disk).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::rc::Rc;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::fs::{IndexFile, LogFile, OpenMode, Storage};

/// What survives a simulated crash of unsynced state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashModel {
    /// (a) Every unsynced byte and every unsynced directory change is lost.
    LoseUnsynced,
    /// (b) A random prefix of each file's unsynced changes survives, the last of them
    /// torn (a random prefix of its bytes); likewise a prefix of directory changes.
    TornPrefix,
    /// (c) A random subset of each file's unsynced changes survives, applied in a
    /// random order; a prefix of directory changes survives.
    Reorder,
}

impl CrashModel {
    /// All models, for harnesses that try each.
    pub const ALL: [CrashModel; 3] = [
        CrashModel::LoseUnsynced,
        CrashModel::TornPrefix,
        CrashModel::Reorder,
    ];
}

/// One successful mutating operation, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A data file was created (or truncated to zero by `OpenMode::Create`).
    Create { name: String },
    /// Bytes appended to a data file.
    Append { name: String, pos: u64, len: u64 },
    /// Bytes written into a mapped index file.
    IndexWrite { name: String, pos: u64, len: u64 },
    /// A data or index file was synced.
    Sync { name: String },
    /// A file's length was changed (truncate or index resize).
    SetLen { name: String, len: u64 },
    /// A file was removed.
    Remove { name: String },
    /// A file was renamed.
    Rename { from: String, to: String },
    /// The directory was synced.
    SyncDir,
}

impl Op {
    /// Whether this operation is a durability boundary (a sync of anything).
    pub fn is_sync(&self) -> bool {
        matches!(self, Op::Sync { .. } | Op::SyncDir)
    }
}

#[derive(Debug, Clone)]
enum Pending {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Changes ever made: `pending` holds the last `pending.len()` of them.
    changes: u64,
}

impl Inode {
    fn apply(buf: &mut Vec<u8>, change: &Pending) {
        match change {
            Pending::Write { pos, data } => write_into(buf, *pos, data),
            Pending::SetLen(len) => buf.resize(to_usize(*len), 0),
        }
    }

    fn write(&mut self, pos: u64, data: &[u8]) {
        write_into(&mut self.current, pos, data);
        self.pending.push(Pending::Write {
            pos,
            data: data.to_vec(),
        });
        self.changes += 1;
    }

    fn set_len(&mut self, len: u64) {
        self.current.resize(to_usize(len), 0);
        self.pending.push(Pending::SetLen(len));
        self.changes += 1;
    }

    fn sync(&mut self) {
        self.durable.clone_from(&self.current);
        self.pending.clear();
    }

    /// Makes durable the changes made before the `upto`-th, in order, and no later one
    /// (a detached fdatasync issued then; later writes are not promised).
    fn sync_upto(&mut self, upto: u64) {
        let first = self.changes - self.pending.len() as u64;
        let n = usize::try_from(upto.saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(self.pending.len());
        for change in self.pending.drain(..n) {
            Self::apply(&mut self.durable, &change);
        }
    }

    /// The bytes that survive a crash under `model`.
    fn crashed(&self, model: CrashModel, rng: &mut impl Rng) -> Vec<u8> {
        let mut out = self.durable.clone();
        match model {
            CrashModel::LoseUnsynced => {}
            CrashModel::TornPrefix => {
                let keep = rng.random_range(0..=self.pending.len());
                let (whole, rest) = self.pending.split_at(keep);
                for change in whole {
                    Self::apply(&mut out, change);
                }
                if let Some(Pending::Write { pos, data }) = rest.first() {
                    let torn = rng.random_range(0..=data.len());
                    write_into(&mut out, *pos, data.get(..torn).unwrap_or_default());
                }
            }
            CrashModel::Reorder => {
                let mut chosen: Vec<&Pending> = self
                    .pending
                    .iter()
                    .filter(|_| rng.random_bool(0.5))
                    .collect();
                chosen.shuffle(rng);
                for change in chosen {
                    Self::apply(&mut out, change);
                }
            }
        }
        out
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn write_into(buf: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let pos = to_usize(pos);
    let end = pos.saturating_add(data.len());
    if buf.len() < end {
        buf.resize(end, 0);
    }
    if let Some(dst) = buf.get_mut(pos..end) {
        dst.copy_from_slice(data);
    }
}

#[derive(Debug, Clone)]
enum NsOp {
    Link { name: String, ino: u64 },
    Unlink { name: String },
    Rename { from: String, to: String },
}

fn apply_ns(names: &mut BTreeMap<String, u64>, op: &NsOp) {
    match op {
        NsOp::Link { name, ino } => {
            names.insert(name.clone(), *ino);
        }
        NsOp::Unlink { name } => {
            names.remove(name);
        }
        NsOp::Rename { from, to } => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
    }
}

type Hook = Box<dyn FnMut(&MemFs, &Op)>;

#[derive(Default)]
struct State {
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    pending_ns: Vec<NsOp>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    ops: Vec<Op>,
    record_ops: bool,
    hook: Option<Hook>,
    syncs_to_fail: u32,
    writes_to_fail: u32,
    capacity_bytes: Option<u64>,
    faults_injected: u64,
}

impl State {
    fn ino(&self, name: &str) -> io::Result<u64> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    fn inode(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other(format!("stale inode {ino}")))
    }

    fn link_new(&mut self, name: &str) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        if let Some(old) = self.names.insert(name.to_string(), ino) {
            self.gc(old);
        }
        self.pending_ns.push(NsOp::Link {
            name: name.to_string(),
            ino,
        });
        ino
    }

    /// Drops an inode no name (current or durable) refers to any more.
    fn gc(&mut self, ino: u64) {
        let linked = self.names.values().any(|&i| i == ino)
            || self.durable_names.values().any(|&i| i == ino)
            || self
                .pending_ns
                .iter()
                .any(|op| matches!(op, NsOp::Link { ino: i, .. } if *i == ino));
        if !linked {
            self.inodes.remove(&ino);
        }
    }

    fn used_bytes(&self) -> u64 {
        self.names
            .values()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|i| i.current.len() as u64)
            .sum()
    }

    fn take_sync_fault(&mut self) -> bool {
        if self.syncs_to_fail > 0 {
            self.syncs_to_fail -= 1;
            self.faults_injected += 1;
            true
        } else {
            false
        }
    }
}

/// The in-memory fault-injecting file system. Cloning shares the same state.
#[derive(Clone, Default)]
pub struct MemFs {
    state: Rc<RefCell<State>>,
}

impl fmt::Debug for MemFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("MemFs")
            .field("files", &s.names.keys().collect::<Vec<_>>())
            .field("ops", &s.ops.len())
            .finish()
    }
}

impl MemFs {
    /// An empty file system that records its operations.
    pub fn new() -> Self {
        let fs = Self::default();
        fs.state.borrow_mut().record_ops = true;
        fs
    }

    /// Stops (or resumes) keeping the list of operations; the hook still runs.
    pub fn set_record_ops(&self, on: bool) {
        self.state.borrow_mut().record_ops = on;
    }

    /// The operations so far.
    pub fn ops(&self) -> Vec<Op> {
        self.state.borrow().ops.clone()
    }

    /// Sets the hook called after every successful mutating operation.
    pub fn set_hook(&self, hook: Option<Hook>) {
        self.state.borrow_mut().hook = hook;
    }

    /// The next `n` syncs (of a file, an index or the directory) fail with EIO.
    pub fn fail_syncs(&self, n: u32) {
        self.state.borrow_mut().syncs_to_fail = n;
    }

    /// The next `n` writes fail with EIO after half of their bytes landed.
    pub fn fail_writes(&self, n: u32) {
        self.state.borrow_mut().writes_to_fail = n;
    }

    /// Limits the total bytes of all files; writes past it fail with ENOSPC after a
    /// short write. `None` removes the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.borrow_mut().capacity_bytes = bytes;
    }

    /// How many faults have been injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.state.borrow().faults_injected
    }

    /// Total bytes of all files as a reader sees them now.
    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used_bytes()
    }

    /// The names of the files as a reader sees them now, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.state.borrow().names.keys().cloned().collect()
    }

    /// The current bytes of a file.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        let ino = s.names.get(name)?;
        s.inodes.get(ino).map(|i| i.current.clone())
    }

    /// Creates or replaces a file with `bytes`, durably (fixtures, corruption tests).
    pub fn put_file(&self, name: &str, bytes: &[u8]) {
        let mut s = self.state.borrow_mut();
        let ino = s.link_new(name);
        if let Some(inode) = s.inodes.get_mut(&ino) {
            inode.current = bytes.to_vec();
            inode.sync();
        }
        s.durable_names = s.names.clone();
        s.pending_ns.clear();
    }

    /// A fresh file system holding what survives a crash right now under `model`.
    pub fn crash(&self, model: CrashModel, rng: &mut impl Rng) -> MemFs {
        let s = self.state.borrow();
        let mut names = s.durable_names.clone();
        if model != CrashModel::LoseUnsynced {
            let keep = rng.random_range(0..=s.pending_ns.len());
            for op in s.pending_ns.iter().take(keep) {
                apply_ns(&mut names, op);
            }
        }
        let mut out = State {
            record_ops: s.record_ops,
            next_ino: s.next_ino,
            ..State::default()
        };
        let mut images: HashMap<u64, Vec<u8>> = HashMap::new();
        for ino in names.values() {
            if images.contains_key(ino) {
                continue;
            }
            let bytes = s
                .inodes
                .get(ino)
                .map(|i| i.crashed(model, rng))
                .unwrap_or_default();
            images.insert(*ino, bytes);
        }
        for (ino, bytes) in images {
            out.inodes.insert(
                ino,
                Inode {
                    current: bytes.clone(),
                    durable: bytes,
                    pending: Vec::new(),
                    changes: 0,
                },
            );
        }
        out.names = names.clone();
        out.durable_names = names;
        MemFs {
            state: Rc::new(RefCell::new(out)),
        }
    }

    /// Runs `f` on the state, records `op` if it succeeded, then calls the hook.
    fn mutate<T>(
        &self,
        op: impl FnOnce(&T) -> Op,
        f: impl FnOnce(&mut State) -> io::Result<T>,
    ) -> io::Result<T> {
        let (value, op, hook) = {
            let mut s = self.state.borrow_mut();
            let value = f(&mut s)?;
            let op = op(&value);
            if s.record_ops {
                s.ops.push(op.clone());
            }
            let hook = s.hook.take();
            (value, op, hook)
        };
        if let Some(mut hook) = hook {
            hook(self, &op);
            let mut s = self.state.borrow_mut();
            if s.hook.is_none() {
                s.hook = Some(hook);
            }
        }
        Ok(value)
    }

    fn write(&self, ino: u64, name: &str, pos: u64, data: &[u8], index: bool) -> io::Result<()> {
        let len = data.len() as u64;
        let mut short: Option<(usize, io::Error)> = None;
        let result = self.mutate(
            |_| {
                if index {
                    Op::IndexWrite {
                        name: name.to_string(),
                        pos,
                        len,
                    }
                } else {
                    Op::Append {
                        name: name.to_string(),
                        pos,
                        len,
                    }
                }
            },
            |s| {
                // A store into a mapping does not fail; data-file writes may.
                let cap = if index { None } else { s.capacity_bytes };
                if !index && s.writes_to_fail > 0 {
                    s.writes_to_fail -= 1;
                    s.faults_injected += 1;
                    short = Some((data.len() / 2, io::Error::other("injected EIO on write")));
                } else if let Some(cap) = cap {
                    let current = s.inode(ino)?.current.len() as u64;
                    let grow = (pos + len).saturating_sub(current);
                    let free = cap.saturating_sub(s.used_bytes());
                    if grow > free {
                        s.faults_injected += 1;
                        let fit = to_usize(free + (current.saturating_sub(pos))).min(data.len());
                        short = Some((
                            fit,
                            io::Error::new(io::ErrorKind::StorageFull, "injected ENOSPC"),
                        ));
                    }
                }
                let n = short.as_ref().map_or(data.len(), |(n, _)| *n);
                let part = data.get(..n).unwrap_or_default();
                s.inode(ino)?.write(pos, part);
                Ok(())
            },
        );
        result?;
        match short {
            Some((_, err)) => Err(err),
            None => Ok(()),
        }
    }

    /// A sync of `ino`: of every change so far, or (`upto`: a detached fdatasync begun
    /// after that many changes, completing now) of the changes made before it began.
    fn sync_inode(&self, ino: u64, name: &str, upto: Option<u64>) -> io::Result<()> {
        self.mutate(
            |_| Op::Sync {
                name: name.to_string(),
            },
            |s| {
                // A file no name refers to any more (removed, a log reset, say, while
                // a detached fdatasync of it ran): on Linux the handle keeps the inode
                // and the sync succeeds; its bytes are unreachable, so there is nothing
                // to make durable.
                if !s.inodes.contains_key(&ino) {
                    return Ok(());
                }
                if s.take_sync_fault() {
                    // Linux may mark the failed pages clean: what was pending is gone
                    // from what a crash can keep, though readers still see it.
                    let inode = s.inode(ino)?;
                    inode.pending.clear();
                    return Err(io::Error::other("injected EIO on fsync"));
                }
                let inode = s.inode(ino)?;
                match upto {
                    None => inode.sync(),
                    Some(upto) => inode.sync_upto(upto),
                }
                Ok(())
            },
        )
    }

    /// The changes made to `ino` so far (for a detached sync begun now).
    fn changes(&self, ino: u64) -> io::Result<u64> {
        Ok(self.state.borrow_mut().inode(ino)?.changes)
    }

    fn set_len_inode(&self, ino: u64, name: &str, len: u64) -> io::Result<()> {
        self.mutate(
            |_| Op::SetLen {
                name: name.to_string(),
                len,
            },
            |s| {
                s.inode(ino)?.set_len(len);
                Ok(())
            },
        )
    }
}

impl Storage for MemFs {
    type File = MemFile;
    type Index = MemIndex;

    async fn open(&self, name: &str, mode: OpenMode) -> io::Result<MemFile> {
        let ino = match mode {
            OpenMode::Existing => self.state.borrow().ino(name)?,
            OpenMode::Create => self.mutate(
                |_| Op::Create {
                    name: name.to_string(),
                },
                |s| Ok(s.link_new(name)),
            )?,
        };
        let len = self.state.borrow_mut().inode(ino)?.current.len() as u64;
        Ok(MemFile {
            fs: self.clone(),
            name: name.to_string(),
            ino,
            len,
        })
    }

    async fn open_index(&self, name: &str, len: Option<u64>) -> io::Result<MemIndex> {
        let existing = self.state.borrow().names.get(name).copied();
        let ino = match existing {
            Some(ino) => ino,
            None => self.mutate(
                |_| Op::Create {
                    name: name.to_string(),
                },
                |s| Ok(s.link_new(name)),
            )?,
        };
        let mut index = MemIndex {
            fs: self.clone(),
            name: name.to_string(),
            ino,
            mapped: self.state.borrow_mut().inode(ino)?.current.clone(),
        };
        if let Some(len) = len.filter(|&l| l != index.mapped.len() as u64) {
            index.set_len(len).await?;
        }
        Ok(index)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.mutate(
            |_| Op::Remove {
                name: name.to_string(),
            },
            |s| {
                let ino = s.ino(name)?;
                s.names.remove(name);
                s.pending_ns.push(NsOp::Unlink {
                    name: name.to_string(),
                });
                s.gc(ino);
                Ok(())
            },
        )
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.mutate(
            |_| Op::Rename {
                from: from.to_string(),
                to: to.to_string(),
            },
            |s| {
                let ino = s.ino(from)?;
                s.names.remove(from);
                if let Some(old) = s.names.insert(to.to_string(), ino) {
                    s.gc(old);
                }
                s.pending_ns.push(NsOp::Rename {
                    from: from.to_string(),
                    to: to.to_string(),
                });
                Ok(())
            },
        )
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.file_names())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.mutate(
            |_| Op::SyncDir,
            |s| {
                if s.take_sync_fault() {
                    return Err(io::Error::other("injected EIO on directory fsync"));
                }
                s.durable_names = s.names.clone();
                s.pending_ns.clear();
                let live: Vec<u64> = s.inodes.keys().copied().collect();
                for ino in live {
                    s.gc(ino);
                }
                Ok(())
            },
        )
    }
}

/// A data file of [`MemFs`].
#[derive(Debug)]
pub struct MemFile {
    fs: MemFs,
    name: String,
    ino: u64,
    len: u64,
}

impl LogFile for MemFile {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut s = self.fs.state.borrow_mut();
        let data = &s.inode(self.ino)?.current;
        let start = to_usize(pos).min(data.len());
        let end = start.saturating_add(len).min(data.len());
        Ok(data.get(start..end).unwrap_or_default().to_vec())
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let pos = self.len;
        let result = self.fs.write(self.ino, &self.name, pos, data, false);
        // Whatever landed is visible, as after a short write.
        self.len = self.fs.state.borrow_mut().inode(self.ino)?.current.len() as u64;
        result
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.fs.sync_inode(self.ino, &self.name, None)
    }

    /// Makes durable, when polled, exactly the changes made before this call: the
    /// least the contract promises, so a caller that claims more than it may is caught
    /// by a crash.
    fn sync_detached(&self) -> Option<crate::fs::DetachedSync> {
        let (fs, ino, name) = (self.fs.clone(), self.ino, self.name.clone());
        let upto = fs.changes(ino);
        Some(Box::pin(
            async move { fs.sync_inode(ino, &name, Some(upto?)) },
        ))
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.fs.set_len_inode(self.ino, &self.name, len)?;
        self.len = len;
        Ok(())
    }
}

/// A mapped index file of [`MemFs`].
#[derive(Debug)]
pub struct MemIndex {
    fs: MemFs,
    name: String,
    ino: u64,
    mapped: Vec<u8>,
}

impl IndexFile for MemIndex {
    fn bytes(&self) -> &[u8] {
        &self.mapped
    }

    fn write(&mut self, pos: usize, data: &[u8]) -> io::Result<()> {
        let end = pos.saturating_add(data.len());
        let dst = self.mapped.get_mut(pos..end).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "index write out of bounds")
        })?;
        dst.copy_from_slice(data);
        self.fs.write(self.ino, &self.name, pos as u64, data, true)
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.fs.sync_inode(self.ino, &self.name, None)
    }

    async fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.fs.set_len_inode(self.ino, &self.name, len)?;
        self.mapped.resize(to_usize(len), 0);
        Ok(())
    }
}
