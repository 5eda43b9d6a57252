//! Durable sleep at scale: runs that each sleep once (`sleep!`), on SQLite
//! and, when `RESUMABLE_TEST_POSTGRES_URL` is set, PostgreSQL.
//!
//! One completer, running all along, takes every run to its sleep, where
//! each is given back, and resumes each when due. Printed: how long getting
//! them all to sleep took, this process's CPU while they all sleep (the
//! completer idle beside them), and,
//! once they are due, how late each was resumed (median and p99, from its
//! journaled wake time to its next step) and the rate the completer resumed
//! them at. 10,000 runs under `cargo bench` (`RESUMABLE_SLEEP_RUNS` for
//! another count); 200 when run once as a test.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_dir, cpu_time, remove_sqlite_files, run_count, tokio_runtime};
use criterion::{Criterion, criterion_group, criterion_main};
use resumable::{
    Completer, Journal, Runtime, SqliteJournal, Timestamp, resumable, sleep, step, workflow,
};

/// The workflow's (empty) dependencies.
#[derive(Default)]
struct Sleepers;

impl Sleepers {
    #[resumable]
    async fn nap(&self, sleep_ms: u64) -> Result<(), String> {
        step!("before", {});
        sleep!("nap", Duration::from_millis(sleep_ms));
        // How late it resumed: this step's start against the journaled wake time.
        step!("after", {});
        Ok(())
    }
}

fn runs() -> usize {
    run_count("RESUMABLE_SLEEP_RUNS", 10_000)
}

fn sleepers(_: &mut Criterion) {
    let tokio = tokio_runtime();
    let runs = runs();
    let path = bench_dir("bench-sleep").join("sleep.db");
    remove_sqlite_files(&path);
    tokio.block_on(async {
        let journal = SqliteJournal::open(&path).await.unwrap();
        measure("sqlite", Arc::new(journal), runs).await;
    });
    remove_sqlite_files(&path);

    #[cfg(all(feature = "postgres", feature = "conformance"))]
    if let Some(schema) = resumable::conformance::postgres::TestSchema::new("sleep") {
        tokio.block_on(async {
            let journal = schema.journal().await;
            measure("postgres", Arc::new(journal), runs).await;
        });
    }
}

async fn measure(backend: &str, journal: Arc<dyn Journal>, runs: usize) {
    let rt = Runtime::new(journal.clone());
    let sleepers = Arc::new(Sleepers);
    // Long enough for every run to reach its sleep first.
    let sleep_ms = (runs as u64 * 2).max(3_000) + 5_000;
    for i in 0..runs {
        rt.submit(format!("nap-{i}"), sleepers.nap(sleep_ms))
            .await
            .unwrap();
    }
    // One completer, running all along as a worker would: it takes every
    // run to its sleep, then resumes each when due.
    let started = Instant::now();
    let completer = Completer::new(&rt)
        .concurrency(256)
        .register(workflow!(Sleepers::nap), sleepers.clone())
        .unwrap()
        .start();
    let deadline = Instant::now() + Duration::from_secs(600);
    while completer.report().waiting < runs as u64 {
        assert!(Instant::now() < deadline, "runs never went to sleep");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_sleep = started.elapsed();

    // All asleep: the completer waits beside them.
    let window = Duration::from_secs(2);
    let cpu_before = cpu_time();
    tokio::time::sleep(window).await;
    let cpu = cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    assert_eq!(completer.report().finished, 0, "none was due yet");

    // Each run's wake time, from its journaled sleep.
    let mut wakes = Vec::with_capacity(runs);
    for i in 0..runs {
        let snapshot = journal
            .load_run(&format!("nap-{i}"))
            .await
            .unwrap()
            .unwrap();
        wakes.push(snapshot.run.wake_at.0);
    }
    let first_due = *wakes.iter().min().unwrap();
    while completer.report().finished < runs as u64 {
        assert!(Instant::now() < deadline, "runs left asleep");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_done = Timestamp::now().0;
    completer.shutdown().await.unwrap();

    let mut lateness = Vec::with_capacity(runs);
    for (i, wake) in wakes.iter().enumerate() {
        let snapshot = journal
            .load_run(&format!("nap-{i}"))
            .await
            .unwrap()
            .unwrap();
        let after = snapshot
            .steps
            .iter()
            .find(|s| s.step_id == "after#0")
            .expect("resumed");
        lateness.push(after.started_at.0 - wake);
    }
    lateness.sort_unstable();
    let pct = |p: usize| lateness[(lateness.len() * p / 100).min(lateness.len() - 1)];
    let span = Duration::from_millis((last_done - first_due).max(1) as u64);
    println!(
        "sleep/{backend}/{runs}: all asleep in {to_sleep:.2?}; CPU while they slept: {} over {window:?}; \
         resumed late by median {} ms, p99 {} ms, max {} ms; {:.0} runs resumed per second",
        cpu.map_or("unknown".to_owned(), |c| format!("{c:?}")),
        pct(50),
        pct(99),
        lateness.last().unwrap(),
        runs as f64 / span.as_secs_f64(),
    );
}

criterion_group!(benches, sleepers);
criterion_main!(benches);
