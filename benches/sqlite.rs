//! Durable steps on SQLite: one run of sequential steps beside the floor (a
//! raw `fdatasync` loop in the same directory), concurrent runs with group
//! commit, and the journal's size on disk per step.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Steps, Tally, close_sqlite, concurrent_runs, remove_sqlite_files, sequential_run, time_each,
    tokio_runtime,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resumable::{Durability, Journal, Runtime, SqliteJournal};

const SEQUENTIAL_STEPS: u32 = 1_000;
const CONCURRENT_STEPS: u32 = 10;

/// Where the journals go: under `target/`, on the project's file system.
fn bench_dir() -> PathBuf {
    common::bench_dir("bench-sqlite")
}

fn label(durability: Durability) -> &'static str {
    match durability {
        Durability::PowerLoss => "power_loss",
        Durability::ProcessCrash => "process_crash",
    }
}

/// What one commit costs under `durability`, for the steps-per-commit lines.
fn commit(durability: Durability) -> &'static str {
    match durability {
        Durability::PowerLoss => "commit (one fsync each)",
        Durability::ProcessCrash => "commit (no fsync)",
    }
}

async fn journal(name: &str, durability: Durability) -> Arc<SqliteJournal> {
    let path = bench_dir().join(format!("{name}-{}.db", std::process::id()));
    remove_sqlite_files(&path);
    let journal = SqliteJournal::builder(&path)
        .durability(durability)
        .open()
        .await
        .unwrap();
    Arc::new(journal)
}

/// The floor: overwrite part of a preallocated file and `fdatasync` it, as
/// one commit of a write-ahead log must at least do. 512 bytes is the least
/// a commit writes; 8 KiB is what a step's commit appends to SQLite's log
/// (a page of the steps table and a page of its index).
fn fdatasync_floor(c: &mut Criterion) {
    let path = bench_dir().join(format!("fdatasync-{}.bin", std::process::id()));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
    file.sync_all().unwrap();
    let mut group = c.benchmark_group("sqlite/fdatasync_floor");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    for bytes in [512usize, 8192] {
        group.bench_function(BenchmarkId::from_parameter(format!("{bytes}B")), |b| {
            b.iter(|| write_and_sync(&file, &mut n, bytes));
        });
    }
    group.finish();
    drop(file);
    let _ = std::fs::remove_file(path);
}

/// Writes `bytes` at the next offset (wrapping within the first MiB) and syncs.
fn write_and_sync(file: &File, n: &mut u64, bytes: usize) {
    *n += 1;
    let offset = (*n * bytes as u64) % (1 << 20);
    file.write_all_at(&n.to_le_bytes().repeat(bytes / 8), offset)
        .unwrap();
    file.sync_data().unwrap();
}

/// What every request pays besides its SQL: the trip to the writer thread
/// and back, and an empty transaction (a read of a run that does not exist).
fn round_trip(c: &mut Criterion) {
    let rt = tokio_runtime();
    let journal = rt.block_on(journal("round_trip", Durability::ProcessCrash));
    let mut group = c.benchmark_group("sqlite");
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip", |b| {
        b.to_async(&rt)
            .iter(|| async { journal.load_run("missing").await.unwrap() });
    });
    group.finish();
}

/// One run of 1,000 sequential steps at a time, under each durability.
fn sequential(c: &mut Criterion) {
    let rt = tokio_runtime();
    let mut group = c.benchmark_group("sqlite/sequential");
    group.throughput(Throughput::Elements(u64::from(SEQUENTIAL_STEPS)));
    group.sample_size(10);
    for durability in [Durability::PowerLoss, Durability::ProcessCrash] {
        let journal = rt.block_on(journal("sequential", durability));
        let runtime = Runtime::new(journal.clone());
        let steps = Steps::new();
        let tally = Tally::default();
        group.bench_function(BenchmarkId::new(label(durability), SEQUENTIAL_STEPS), |b| {
            let (journal, runtime, steps, tally) = (&journal, &runtime, &steps, &tally);
            b.to_async(&rt).iter_custom(|iters| async move {
                let before = journal.stats();
                let took =
                    time_each(iters, || sequential_run(runtime, steps, SEQUENTIAL_STEPS)).await;
                let commits = journal.stats().commits - before.commits;
                tally.add(iters * u64::from(SEQUENTIAL_STEPS), commits);
                took
            });
        });
        tally.report(
            &format!("sqlite/sequential/{}", label(durability)),
            commit(durability),
        );
    }
    group.finish();
}

/// Many runs of 10 steps at once: concurrent runs share commits (and fsyncs).
fn concurrent(c: &mut Criterion) {
    let rt = tokio_runtime();
    let mut group = c.benchmark_group("sqlite/concurrent");
    group.sample_size(10);
    for durability in [Durability::PowerLoss, Durability::ProcessCrash] {
        let journal = rt.block_on(journal("concurrent", durability));
        let runtime = Runtime::new(journal.clone());
        for runs in [1usize, 16, 64, 128, 256] {
            let tally = Tally::default();
            group.throughput(Throughput::Elements(
                runs as u64 * u64::from(CONCURRENT_STEPS),
            ));
            let id = BenchmarkId::new(label(durability), format!("{runs}x{CONCURRENT_STEPS}"));
            group.bench_function(id, |b| {
                let (journal, runtime, tally) = (&journal, &runtime, &tally);
                b.to_async(&rt).iter_custom(|iters| async move {
                    let before = journal.stats();
                    let took =
                        time_each(iters, || concurrent_runs(runtime, runs, CONCURRENT_STEPS)).await;
                    let commits = journal.stats().commits - before.commits;
                    tally.add(iters * runs as u64 * u64::from(CONCURRENT_STEPS), commits);
                    took
                });
            });
            tally.report(
                &format!(
                    "sqlite/concurrent/{}/{runs}x{CONCURRENT_STEPS}",
                    label(durability)
                ),
                commit(durability),
            );
        }
    }
    group.finish();
}

/// Bytes on disk per step, for an 8-byte and a 1 KiB output: the growth of
/// the checkpointed database file between runs of 10 and of 20 steps.
fn journal_size(_: &mut Criterion) {
    let rt = tokio_runtime();
    const RUNS: usize = 500;
    for size in [8usize, 1024] {
        let bytes = |steps: u32| {
            rt.block_on(async {
                let journal =
                    journal(&format!("size-{size}-{steps}"), Durability::ProcessCrash).await;
                let path = journal.path().to_owned();
                let runtime = Runtime::new(journal.clone());
                let deps = Steps::new();
                for i in 0..RUNS {
                    runtime
                        .run(format!("size-{i}"), deps.payload(steps, size))
                        .await
                        .unwrap()
                        .unwrap();
                }
                drop(runtime);
                close_sqlite(journal).await;
                let len = std::fs::metadata(&path).unwrap().len();
                let _ = std::fs::remove_file(&path);
                len
            })
        };
        let (ten, twenty) = (bytes(10), bytes(20));
        println!(
            "sqlite/journal_size/{size}B_output: {:.0} bytes per step ({} runs: {ten} bytes with 10 steps each, {twenty} with 20)",
            (twenty - ten) as f64 / (RUNS * 10) as f64,
            RUNS,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = fdatasync_floor, round_trip, sequential, concurrent, journal_size
}
criterion_main!(benches);
