//! What the benchmarks share: the workflows they time, the interruptions
//! they seed, and the counts they print beside criterion's timings.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use resumable::{Journal, RunFilter, RunState, Runtime, resumable, step};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The benchmarked workflows never fail; this is their error type.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("never happens")]
pub struct Never;

/// The workflows' dependencies. By default every run goes straight through;
/// the switches interrupt runs the way a crash would, to seed replays and
/// recoveries.
#[derive(Default)]
pub struct Steps {
    /// A run panics after its last step, outside any step: it stays
    /// incomplete with every step recorded (a crash before finishing).
    pub crash_at_end: AtomicBool,
    /// Step bodies with this index wait forever, so that the runs can be
    /// dropped there (a crash in the middle of that step).
    pub hold_at: Option<u32>,
    /// How many runs are waiting in a held step.
    pub held: AtomicUsize,
    /// Notified each time a run reaches the held step.
    pub reached: Notify,
}

impl Steps {
    /// Runs that go straight through.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Runs that stop inside step `index` (from 0).
    fn holding_at(index: u32) -> Arc<Self> {
        Arc::new(Steps {
            hold_at: Some(index),
            ..Steps::default()
        })
    }

    /// `n` trivial steps, each journaling its index (a `u64`).
    #[resumable]
    pub async fn sequence(&self, n: u32) -> Result<u64, Never> {
        let mut sum = 0u64;
        for i in 0..n {
            sum += step!("add", {
                if self.hold_at == Some(i) {
                    self.held.fetch_add(1, Ordering::SeqCst);
                    self.reached.notify_one();
                    std::future::pending::<()>().await;
                }
                u64::from(i)
            });
        }
        if self.crash_at_end.load(Ordering::Relaxed) {
            panic!("interrupted on purpose after the last step");
        }
        Ok(sum)
    }

    /// `n` steps, each journaling `size` bytes.
    #[resumable]
    pub async fn payload(&self, n: u32, size: usize) -> Result<usize, Never> {
        let mut total = 0;
        for i in 0..n {
            let bytes: Vec<u8> = step!("bytes", { vec![i as u8; size] });
            total += bytes.len();
        }
        Ok(total)
    }
}

/// [`Steps::sequence`] without `#[resumable]`: the same loop, the same
/// `async` block per step, nothing journaled.
pub async fn plain_sequence(steps: &Steps, n: u32) -> Result<u64, Never> {
    let mut sum = 0u64;
    for i in 0..n {
        sum += async {
            if steps.hold_at == Some(i) {
                std::future::pending::<()>().await;
            }
            u64::from(i)
        }
        .await;
    }
    if steps.crash_at_end.load(Ordering::Relaxed) {
        panic!("interrupted on purpose after the last step");
    }
    Ok(std::hint::black_box(sum))
}

/// Keeps the runs the benchmarks interrupt on purpose from printing their
/// panics; every other panic is printed as usual.
pub fn quiet_deliberate_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let deliberate = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.contains("on purpose"));
        if !deliberate {
            default(info);
        }
    }));
}

/// Starts `runs` runs of [`Steps::sequence`] with `steps` steps, named
/// `{prefix}{i}`, and interrupts each inside step `hold_at` (its earlier steps
/// recorded). Dropping an execution gives its run back, due at once: the
/// state a crashed worker's runs are in once their leases expire, or once a
/// restarted worker with a stable id calls `Runtime::recover_leases`.
pub async fn seed_interrupted(rt: &Runtime, prefix: &str, runs: usize, steps: u32, hold_at: u32) {
    let deps = Steps::holding_at(hold_at);
    let mut executions = tokio::task::JoinSet::new();
    for i in 0..runs {
        let (rt, deps) = (rt.clone(), deps.clone());
        let key = format!("{prefix}{i}");
        executions.spawn(async move { rt.run(key, deps.sequence(steps)).await });
    }
    while deps.held.load(Ordering::SeqCst) < runs {
        tokio::select! {
            _ = deps.reached.notified() => {}
            Some(ended) = executions.join_next() => {
                panic!("a run ended before its held step: {ended:?}")
            }
        }
    }
    executions.abort_all();
    while executions.join_next().await.is_some() {}
    // The given-back leases are released by tasks of their own: wait for them.
    let leased = RunFilter {
        state: Some(RunState::Incomplete),
        lease_owner: Some(rt.worker_id().to_owned()),
        ..RunFilter::default()
    };
    while !rt.journal().list_runs(&leased).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `runs` workflows of `steps` steps at once, each under a fresh key,
/// and returns how long it took until all had finished.
pub async fn concurrent_runs(rt: &Runtime, runs: usize, steps: u32) -> Duration {
    let deps = Steps::new();
    let batch = fresh_key("c");
    let started = Instant::now();
    let mut executions = tokio::task::JoinSet::new();
    for i in 0..runs {
        let (rt, deps) = (rt.clone(), deps.clone());
        let key = format!("{batch}-{i}");
        executions.spawn(async move { rt.run(key, deps.sequence(steps)).await });
    }
    while let Some(outcome) = executions.join_next().await {
        outcome.unwrap().unwrap().unwrap();
    }
    started.elapsed()
}

/// Runs one workflow of `n` sequential steps under a fresh key, and returns
/// how long it took.
pub async fn sequential_run(rt: &Runtime, steps: &Steps, n: u32) -> Duration {
    let started = Instant::now();
    rt.run(fresh_key("seq"), steps.sequence(n))
        .await
        .unwrap()
        .unwrap();
    started.elapsed()
}

/// A multi-threaded tokio runtime, one worker per core, as a server has.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A directory for `bench`'s files under `target/`, on the project's file system.
pub fn bench_dir(bench: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(bench);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes a SQLite database and its log files, if there are any.
pub fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A key no earlier iteration used.
fn fresh_key(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Times `iters` repetitions of `once`, which returns the time of its own
/// measured part (set-up excluded).
pub async fn time_each<F, Fut>(iters: u64, mut once: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += once().await;
    }
    total
}

/// Counts a benchmark's workflow steps and journal commits over all of
/// criterion's iterations, to print steps per commit after it.
#[derive(Debug, Default)]
pub struct Tally {
    steps: AtomicU64,
    commits: AtomicU64,
}

impl Tally {
    pub fn add(&self, steps: u64, commits: u64) {
        self.steps.fetch_add(steps, Ordering::Relaxed);
        self.commits.fetch_add(commits, Ordering::Relaxed);
    }

    /// Prints `label: S steps per commit` (and resets).
    pub fn report(&self, label: &str, commit: &str) {
        let steps = self.steps.swap(0, Ordering::Relaxed);
        let commits = self.commits.swap(0, Ordering::Relaxed);
        if commits > 0 {
            println!(
                "{label}: {:.1} steps per {commit} ({steps} steps, {commits} commits)",
                steps as f64 / commits as f64
            );
        }
    }
}

/// Whether exactly `runs` runs in the journal are completed: a check that a
/// benchmark did its work.
pub async fn completed(journal: &dyn Journal, runs: usize) -> bool {
    let done = RunFilter {
        state: Some(RunState::Completed),
        limit: Some(runs + 1),
        ..RunFilter::default()
    };
    journal.list_runs(&done).await.unwrap().len() == runs
}

/// Closes a SQLite journal once nothing else holds it (tasks that give runs
/// back hold it briefly after their runs look released): its last connection
/// checkpoints the log into the database file and removes the log.
#[cfg(feature = "sqlite")]
pub async fn close_sqlite(journal: Arc<resumable::SqliteJournal>) {
    while Arc::strong_count(&journal) > 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(journal);
}

/// This process's CPU time (user and system), from `/proc/self/stat`.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th fields of the line, in clock ticks (100 a second).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// How many runs a scale benchmark uses: `var` if set, else `bench_runs`
/// under `cargo bench` and 200 when run once as a test.
pub fn run_count(var: &str, bench_runs: usize) -> usize {
    let bench = std::env::args().any(|a| a == "--bench");
    std::env::var(var)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if bench { bench_runs } else { 200 })
}
