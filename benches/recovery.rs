//! Recovery on SQLite: a Completer resuming runs that a crash interrupted,
//! from a copy of a journal seeded once. Criterion's throughput is in runs.
//!
//! - 10,000 runs of 6 steps, interrupted inside their 6th step (5 recorded);
//! - 1,000 runs of 6 steps, interrupted half-way (inside their 4th step).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Steps, close_sqlite, completed, remove_sqlite_files, seed_interrupted, time_each, tokio_runtime,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resumable::{Completer, Durability, Runtime, SqliteJournal, workflow};

const STEPS: u32 = 6;
/// Runs the Completer executes at once.
const CONCURRENCY: usize = 256;

fn bench_dir() -> PathBuf {
    common::bench_dir("bench-recovery")
}

/// A journal file holding `runs` runs interrupted inside step `hold_at`,
/// checkpointed and closed, ready to be copied.
async fn seeded(runs: usize, hold_at: u32) -> PathBuf {
    let path = bench_dir().join(format!("seed-{runs}-{hold_at}-{}.db", std::process::id()));
    remove_sqlite_files(&path);
    let journal = SqliteJournal::builder(&path)
        .durability(Durability::ProcessCrash)
        .open()
        .await
        .unwrap();
    let journal = Arc::new(journal);
    let rt = Runtime::builder(journal.clone())
        .worker_id("crashed")
        .build();
    seed_interrupted(&rt, "r", runs, STEPS, hold_at).await;
    drop(rt);
    close_sqlite(journal).await;
    path
}

fn recovery(c: &mut Criterion) {
    let tokio = tokio_runtime();
    let mut group = c.benchmark_group("sqlite/recovery");
    group.sample_size(10);
    for (runs, hold_at) in [(10_000usize, 5u32), (1_000, 3)] {
        let seed = tokio.block_on(seeded(runs, hold_at));
        let copy = bench_dir().join(format!("copy-{}.db", std::process::id()));
        group.throughput(Throughput::Elements(runs as u64));
        let id = BenchmarkId::new(
            "power_loss",
            format!("{runs}_runs_after_{hold_at}_of_{STEPS}_steps"),
        );
        group.bench_function(id, |b| {
            let (seed, copy) = (&seed, &copy);
            b.to_async(&tokio).iter_custom(|iters| async move {
                time_each(iters, || async {
                    // Untimed: a fresh copy of the interrupted journal, opened.
                    remove_sqlite_files(copy);
                    std::fs::copy(seed, copy).unwrap();
                    let journal = Arc::new(SqliteJournal::open(copy).await.unwrap());
                    let rt = Runtime::new(journal.clone());
                    let completer = Completer::new(&rt)
                        .concurrency(CONCURRENCY)
                        .register(workflow!(Steps::sequence), Steps::new())
                        .unwrap();
                    let started = Instant::now();
                    let report = completer.run_until_idle().await.unwrap();
                    let took = started.elapsed();
                    assert_eq!(report.finished, runs as u64, "{report:?}");
                    assert!(completed(&*journal, runs).await);
                    took
                })
                .await
            });
        });
        remove_sqlite_files(&seed);
        remove_sqlite_files(&copy);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    targets = recovery
}
criterion_main!(benches);
