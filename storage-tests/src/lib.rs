//! Crash-consistency harness for the Sluice partition log (DESIGN §5).
//!
//! A workload (scripted or drawn from a seed) runs against a [`PartitionLog`] over the
//! fault-injecting [`MemFs`]. After every file-system operation of the workload — every
//! write, fsync, truncate, create, remove and rename — the harness takes a crash image
//! under each [`CrashModel`], and once the log operation in flight has finished it
//! recovers every image and checks it against a reference model:
//!
//! - **lost**: a batch at or below the durable watermark known before the operation is
//!   missing or differs byte for byte;
//! - **corrupt-exposed**: recovery failed, or the recovered log holds a batch that fails
//!   its CRC, offsets that are not contiguous, or bytes no model state ever held (the log
//!   must be a contiguous range of the state before or after the operation);
//! - **index-mismatch**: the recovered indexes disagree with a full scan
//!   ([`PartitionLog::verify`]), or a timestamp lookup disagrees with the model.
//!
//! Each recovered log then takes one more append and sync, so recovery leaves a log that
//! works, not only one that reads.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_proto::{BatchBuilder, BatchView, Limits};
use sluice_storage::{CrashModel, LogConfig, MemFs, Op, PartitionLog};

/// Totals of a run, and a description of each failure.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// File-system operation boundaries at which a crash was simulated.
    pub crash_points: u64,
    /// Crash images recovered and checked.
    pub cases: u64,
    /// Durable batches missing after recovery.
    pub lost: u64,
    /// Recoveries that failed or exposed bad or foreign bytes.
    pub corrupt_exposed: u64,
    /// Recoveries whose indexes disagreed with a scan or the model.
    pub index_mismatch: u64,
    /// First failures, with the seed and step that reproduce them.
    pub failures: Vec<String>,
}

impl Summary {
    /// Adds another summary's counts.
    pub fn merge(&mut self, other: Summary) {
        self.crash_points += other.crash_points;
        self.cases += other.cases;
        self.lost += other.lost;
        self.corrupt_exposed += other.corrupt_exposed;
        self.index_mismatch += other.index_mismatch;
        let room = 20usize.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
    }

    /// Whether every check held.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.corrupt_exposed == 0 && self.index_mismatch == 0
    }

    /// The one summary line the suite prints.
    pub fn line(&self) -> String {
        format!(
            "storage-tests: crash points {}, cases {}, lost {}, corrupt-exposed {}, index-mismatch {}",
            self.crash_points, self.cases, self.lost, self.corrupt_exposed, self.index_mismatch
        )
    }
}

/// One step of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Append a batch of records with these value sizes, at time `now_ms`.
    Append { sizes: Vec<usize>, now_ms: i64 },
    /// fdatasync.
    Sync,
    /// Apply retention at `now_ms`.
    Retention { now_ms: i64 },
    /// Truncate the suffix at a point `frac` (per mille) of the way into the log.
    TruncateSuffix { per_mille: u32 },
    /// Move the log start `per_mille` of the way into the log (past the end when over 1000).
    TruncatePrefix { per_mille: u32 },
    /// Clean close and reopen.
    Reopen,
}

/// A small configuration that makes every mechanism happen within a few hundred steps:
/// tiny segments, dense indexes, index files that fill up, tight retention.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 6 * 1024,
        segment_age_ms_max: 60_000,
        index_interval_bytes: 700,
        index_bytes_max: 8 * 6,
        retention_bytes_max: Some(40 * 1024),
        retention_age_ms_max: Some(600_000),
        limits: Limits::default(),
    }
}

/// A random workload of `len` steps.
pub fn random_workload(seed: u64, len: usize) -> Vec<Step> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut now = 1_000_000i64;
    let mut steps = Vec::with_capacity(len);
    for _ in 0..len {
        now += rng.random_range(0..2_000);
        let step = match rng.random_range(0..100) {
            0..=54 => {
                let n = rng.random_range(1..=4);
                let sizes = (0..n)
                    .map(|_| match rng.random_range(0..10) {
                        0 => rng.random_range(1_000..2_500),
                        _ => rng.random_range(0..300),
                    })
                    .collect();
                // Out-of-order timestamps now and then exercise the time index.
                let skew = if rng.random_bool(0.1) { -5_000 } else { 0 };
                Step::Append {
                    sizes,
                    now_ms: now + skew,
                }
            }
            55..=79 => Step::Sync,
            80..=85 => Step::Retention { now_ms: now },
            86..=91 => Step::TruncateSuffix {
                per_mille: rng.random_range(500..1000),
            },
            92..=94 => Step::TruncatePrefix {
                per_mille: if rng.random_bool(0.1) {
                    1200
                } else {
                    rng.random_range(0..500)
                },
            },
            _ => Step::Reopen,
        };
        steps.push(step);
    }
    steps
}

/// Scripted workloads, each aimed at one mechanism.
pub fn scripted_workloads() -> Vec<(&'static str, Vec<Step>)> {
    let appends = |n: usize, size: usize, t0: i64| -> Vec<Step> {
        (0..n)
            .flat_map(|i| {
                [
                    Step::Append {
                        sizes: vec![size, size / 2],
                        now_ms: t0 + i as i64 * 10,
                    },
                    Step::Sync,
                ]
            })
            .collect()
    };
    let mut roll_and_retain = appends(30, 900, 1_000);
    roll_and_retain.push(Step::Retention { now_ms: 10_000 });
    roll_and_retain.extend(appends(10, 900, 20_000));
    roll_and_retain.push(Step::Retention { now_ms: 2_000_000 });
    let mut truncations = appends(20, 700, 1_000);
    truncations.push(Step::TruncateSuffix { per_mille: 400 });
    truncations.extend(appends(5, 700, 5_000));
    truncations.push(Step::TruncatePrefix { per_mille: 300 });
    truncations.extend(appends(5, 700, 6_000));
    truncations.push(Step::TruncatePrefix { per_mille: 1500 });
    truncations.extend(appends(5, 700, 7_000));
    let mut group_commit: Vec<Step> = (0..40)
        .map(|i| Step::Append {
            sizes: vec![100 + i * 7],
            now_ms: 1_000 + i as i64,
        })
        .collect();
    group_commit.insert(20, Step::Sync);
    group_commit.push(Step::Sync);
    let mut reopen = appends(8, 1_200, 1_000);
    reopen.push(Step::Reopen);
    reopen.extend(appends(8, 1_200, 2_000));
    reopen.push(Step::Reopen);
    vec![
        ("roll-and-retention", roll_and_retain),
        ("truncations", truncations),
        ("group-commit", group_commit),
        ("clean-reopen", reopen),
    ]
}

/// The reference model: what the log must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    /// Stored bytes (base offset written in) by base offset.
    batches: BTreeMap<u64, Vec<u8>>,
    log_start: u64,
    next: u64,
}

impl Model {
    /// Batches wholly or partly at or above the log start, in order.
    fn visible(&self) -> impl Iterator<Item = (&u64, &Vec<u8>)> {
        self.batches
            .iter()
            .filter(|(_, b)| last_offset(b) >= self.log_start)
    }

    /// Reference timestamp lookup (Kafka's rule).
    fn offset_for_timestamp(&self, ts: i64) -> Option<u64> {
        let limits = Limits::default();
        for (_, bytes) in self.visible() {
            let view = BatchView::parse(bytes, &limits).ok()?;
            if view.header().max_timestamp < ts {
                continue;
            }
            if let Some(r) = view
                .records()
                .find(|r| r.timestamp >= ts && r.offset >= self.log_start)
            {
                return Some(r.offset);
            }
        }
        None
    }
}

fn last_offset(batch: &[u8]) -> u64 {
    sluice_proto::BatchHeader::parse(batch, &Limits::default())
        .map(|h| h.last_offset())
        .unwrap_or(0)
}

/// A crash image taken during a log operation.
struct Image {
    fs: MemFs,
    model: CrashModel,
    op: Op,
}

/// Runs one workload, crashing after every file-system operation under every model.
/// `name` and `seed` only label failures.
pub fn run_workload(name: &str, seed: u64, steps: &[Step], config: &LogConfig) -> Summary {
    pollster::block_on(run_workload_async(name, seed, steps, config))
}

async fn run_workload_async(name: &str, seed: u64, steps: &[Step], config: &LogConfig) -> Summary {
    let mut summary = Summary::default();
    let fs = MemFs::new();
    fs.set_record_ops(false);
    let images: Rc<RefCell<Vec<Image>>> = Rc::default();
    let rng = Rc::new(RefCell::new(SmallRng::seed_from_u64(seed ^ 0x5eed)));
    {
        let images = images.clone();
        let rng = rng.clone();
        fs.set_hook(Some(Box::new(move |fs: &MemFs, op: &Op| {
            let mut rng = rng.borrow_mut();
            for model in CrashModel::ALL {
                images.borrow_mut().push(Image {
                    fs: fs.crash(model, &mut *rng),
                    model,
                    op: op.clone(),
                });
            }
        })));
    }
    let mut log = match PartitionLog::open(fs.clone(), config.clone(), 0).await {
        Ok((log, _)) => log,
        Err(e) => {
            summary.corrupt_exposed += 1;
            summary
                .failures
                .push(format!("{name} seed {seed}: initial open: {e}"));
            return summary;
        }
    };
    images.borrow_mut().clear();
    let mut model = Model::default();
    let mut check_rng = SmallRng::seed_from_u64(seed ^ 0xc4ec);
    let mut batch_no = 0u64;
    for (i, step) in steps.iter().enumerate() {
        let before = model.clone();
        let durable_before = log.durable_end();
        let label = format!("{name} seed {seed} step {i} {step:?}");
        match apply(log, &fs, config, step, &mut model, &mut batch_no).await {
            Ok(l) => log = l,
            Err(e) => {
                summary.corrupt_exposed += 1;
                summary
                    .failures
                    .push(format!("{label}: operation failed: {e}"));
                return summary;
            }
        }
        let taken: Vec<Image> = images.borrow_mut().drain(..).collect();
        summary.crash_points += (taken.len() / CrashModel::ALL.len()) as u64;
        for image in taken {
            summary.cases += 1;
            let verdict = check_image(
                &image,
                config,
                &before,
                &model,
                durable_before,
                &mut check_rng,
            )
            .await;
            if let Err((kind, why)) = verdict {
                match kind {
                    Failure::Lost => summary.lost += 1,
                    Failure::Corrupt => summary.corrupt_exposed += 1,
                    Failure::Index => summary.index_mismatch += 1,
                }
                if summary.failures.len() < 20 {
                    summary.failures.push(format!(
                        "{label}: crash after {:?} under {:?}: {why}",
                        image.op, image.model
                    ));
                }
            }
        }
    }
    summary
}

/// Applies one step to the log and the model. Returns the log (replaced on reopen).
async fn apply(
    mut log: PartitionLog<MemFs>,
    fs: &MemFs,
    config: &LogConfig,
    step: &Step,
    model: &mut Model,
    batch_no: &mut u64,
) -> Result<PartitionLog<MemFs>, String> {
    let e = |e: sluice_storage::LogError| e.to_string();
    match step {
        Step::Append { sizes, now_ms } => {
            let mut batch = make_batch(*batch_no, sizes, *now_ms);
            *batch_no += 1;
            let at = log.append(&mut batch, *now_ms).await.map_err(e)?;
            if at.base_offset != model.next {
                return Err(format!(
                    "append at {} but model expects {}",
                    at.base_offset, model.next
                ));
            }
            model.next = at.last_offset + 1;
            model.batches.insert(at.base_offset, batch);
        }
        Step::Sync => {
            log.sync().await.map_err(e)?;
        }
        Step::Retention { now_ms } => {
            log.apply_retention(*now_ms).await.map_err(e)?;
            model.log_start = log.log_start_offset();
            model
                .batches
                .retain(|_, b| last_offset(b) >= model.log_start);
        }
        Step::TruncateSuffix { per_mille } => {
            let span = model.next - model.log_start;
            let at = model.log_start + span * u64::from(*per_mille) / 1000;
            let cut = log.truncate_suffix(at).await.map_err(e)?;
            model.batches.retain(|&b, _| b < cut);
            model.next = cut;
        }
        Step::TruncatePrefix { per_mille } => {
            let span = model.next - model.log_start;
            let at = model.log_start + span * u64::from(*per_mille) / 1000;
            log.truncate_prefix(at).await.map_err(e)?;
            model.log_start = log.log_start_offset();
            if at > model.next {
                model.batches.clear();
                model.next = at;
            }
            model
                .batches
                .retain(|_, b| last_offset(b) >= model.log_start);
        }
        Step::Reopen => {
            log.close().await.map_err(e)?;
            let (reopened, report) = PartitionLog::open(fs.clone(), config.clone(), 0)
                .await
                .map_err(e)?;
            if !report.clean {
                return Err("clean close was not seen as clean".into());
            }
            return Ok(reopened);
        }
    }
    Ok(log)
}

enum Failure {
    Lost,
    Corrupt,
    Index,
}

/// Recovers one crash image and checks it against the states before and after the
/// operation that was in flight.
async fn check_image(
    image: &Image,
    config: &LogConfig,
    before: &Model,
    after: &Model,
    durable_before: u64,
    rng: &mut SmallRng,
) -> Result<(), (Failure, String)> {
    let corrupt = |why: String| (Failure::Corrupt, why);
    let (mut log, _) = PartitionLog::open(image.fs.clone(), config.clone(), 0)
        .await
        .map_err(|e| corrupt(format!("recovery failed: {e}")))?;
    // Read everything back.
    let limits = config.limits;
    let mut got: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut at = log.log_start_offset();
    let mut expect_base: Option<u64> = None;
    while at < log.next_offset() {
        let read = log
            .read(at, 16 * 1024)
            .await
            .map_err(|e| corrupt(format!("read at {at}: {e}")))?;
        if read.count == 0 {
            return Err(corrupt(format!("read at {at} returned nothing")));
        }
        for batch in sluice_proto::batches(&read.bytes, &limits) {
            let view = batch.map_err(|e| corrupt(format!("returned batch fails: {e}")))?;
            let h = view.header();
            if expect_base.is_some_and(|b| b != h.base_offset) {
                return Err(corrupt(format!(
                    "offset gap: {} after {:?}",
                    h.base_offset, expect_base
                )));
            }
            expect_base = Some(h.last_offset() + 1);
            got.insert(h.base_offset, view.as_bytes().to_vec());
        }
        at = read.next_offset;
    }
    // The recovered log must be a contiguous run of one model state.
    let matches = |m: &Model| got.iter().all(|(b, bytes)| m.batches.get(b) == Some(bytes));
    if !matches(before) && !matches(after) {
        return Err(corrupt(
            "recovered bytes match neither the state before nor after".into(),
        ));
    }
    // Everything durable before the operation, and still meant to exist after it, is there.
    for (base, bytes) in before.visible() {
        let required = last_offset(bytes) < durable_before
            && after.batches.get(base) == Some(bytes)
            && last_offset(bytes) >= after.log_start;
        if required && got.get(base) != Some(bytes) {
            return Err((
                Failure::Lost,
                format!("durable batch {base} missing or changed"),
            ));
        }
    }
    let problems = log
        .verify()
        .await
        .map_err(|e| corrupt(format!("verify: {e}")))?;
    if let Some(p) = problems.first() {
        return Err((Failure::Index, p.clone()));
    }
    // Timestamp lookups agree with whichever state the log recovered to.
    let recovered = Model {
        batches: got.clone(),
        log_start: log.log_start_offset(),
        next: log.next_offset(),
    };
    for _ in 0..2 {
        let ts = 1_000_000 + rng.random_range(-10_000i64..400_000);
        let want = recovered.offset_for_timestamp(ts);
        let have = log
            .offset_for_timestamp(ts)
            .await
            .map_err(|e| corrupt(format!("offset_for_timestamp: {e}")))?;
        if want != have {
            return Err((
                Failure::Index,
                format!("offset_for_timestamp({ts}) = {have:?}, model {want:?}"),
            ));
        }
    }
    // The recovered log takes appends where it left off.
    let next = log.next_offset();
    let mut batch = make_batch(u64::MAX, &[10], 5_000_000);
    let appended = log
        .append(&mut batch, 5_000_000)
        .await
        .map_err(|e| corrupt(format!("append after recovery: {e}")))?;
    log.sync()
        .await
        .map_err(|e| corrupt(format!("sync after recovery: {e}")))?;
    if appended.base_offset != next {
        return Err(corrupt(format!(
            "append after recovery at {} not {next}",
            appended.base_offset
        )));
    }
    Ok(())
}

/// A batch whose records carry unique values derived from `no`.
pub fn make_batch(no: u64, sizes: &[usize], now_ms: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default());
    for (i, &size) in sizes.iter().enumerate() {
        let mut value = format!("b{no}-r{i}-").into_bytes();
        value.resize(size.max(value.len()), b'a' + (no % 26) as u8);
        let key = (i % 2 == 0).then(|| no.to_le_bytes());
        // Records inside a batch may go back in time a little.
        let ts = now_ms + (i as i64 % 3) * 7 - 5;
        b.push(
            ts,
            key.as_ref().map(|k| &k[..]),
            Some(&value),
            &[("n", Some(&no.to_le_bytes()[..]))],
        )
        .unwrap_or_else(|e| panic!("test batch: {e}"));
    }
    b.finish().unwrap_or_else(|e| panic!("test batch: {e}"))
}

/// The configuration of the SIGKILL test's log: segments small enough that rounds
/// roll several of them.
pub fn process_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 256 * 1024,
        index_interval_bytes: 4096,
        index_bytes_max: 4096,
        retention_bytes_max: None,
        retention_age_ms_max: None,
        ..LogConfig::default()
    }
}

/// Batch number `n` of the SIGKILL test: 1 to 4 records of odd sizes (so appends are
/// never block-aligned), the key of each record is `n`.
pub fn process_batch(n: u64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default());
    for i in 0..(1 + n % 4) {
        let size = 100 + ((n * 7919 + i * 104_729) % 6_000) as usize;
        let mut value = format!("batch {n} record {i} ").into_bytes();
        value.resize(size, b'0' + (n % 10) as u8);
        b.push(n as i64, Some(&n.to_le_bytes()), Some(&value), &[])
            .unwrap_or_else(|e| panic!("test batch: {e}"));
    }
    b.finish().unwrap_or_else(|e| panic!("test batch: {e}"))
}
