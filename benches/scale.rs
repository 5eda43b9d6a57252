//! What history costs: the same work on journals holding N finished 10-step
//! runs plus 10,000 interrupted ones, for N in `RESUMABLE_SCALE_RUNS`
//! (default `0,1000`; the figures in BENCHMARKS.md use `0,100000,1000000`),
//! on SQLite and, when `RESUMABLE_TEST_POSTGRES_URL` is set, PostgreSQL.
//!
//! History is filled with bulk SQL in the library's own schema (the fast
//! path: through the API, a million runs take hours): finished runs of the
//! benchmark workflow, and interrupted runs of 5 recorded steps that wait
//! out a backoff (so that they weigh on the indexes but are not claimed).
//! Measured at each N: one run of 100 sequential steps, 128 runs of 10 at
//! once, listing incomplete runs and a page of a workflow's runs, loading a
//! run, the sequential run again while another task lists runs in a loop,
//! and a Completer recovering 1,000 due runs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    Steps, concurrent_runs, remove_sqlite_files, sequential_run, time_each, tokio_runtime,
};
use criterion::{Criterion, criterion_group, criterion_main};
use resumable::{
    Completer, Durability, Journal, RunFilter, RunState, Runtime, SqliteJournal, workflow,
};

/// The history sizes to measure.
fn sizes() -> Vec<u64> {
    std::env::var("RESUMABLE_SCALE_RUNS")
        .unwrap_or_else(|_| "0,1000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("RESUMABLE_SCALE_RUNS: numbers, comma-separated")
        })
        .collect()
}

/// Interrupted runs beside the history.
const INTERRUPTED: u64 = 10_000;

fn scale(c: &mut Criterion) {
    let tokio = tokio_runtime();
    for n in sizes() {
        let path = common::bench_dir("bench-scale").join(format!("scale-{n}.db"));
        remove_sqlite_files(&path);
        let journal = tokio.block_on(async {
            // Durable against a process crash (no fsync per commit), so that
            // the figures show what history costs rather than the disk.
            let journal = SqliteJournal::builder(&path)
                .durability(Durability::ProcessCrash)
                .open()
                .await
                .unwrap();
            fill_sqlite(&path, n);
            Arc::new(journal) as Arc<dyn Journal>
        });
        measure(c, &tokio, "sqlite", n, journal);
        remove_sqlite_files(&path);

        #[cfg(all(feature = "postgres", feature = "conformance"))]
        if let Some(schema) = resumable::conformance::postgres::TestSchema::new("scale") {
            let journal = tokio.block_on(async {
                let journal = schema.journal().await;
                fill_postgres(&schema, n).await;
                Arc::new(journal) as Arc<dyn Journal>
            });
            measure(c, &tokio, "postgres", n, journal);
        }
    }
}

/// The benchmark workflow's name and fingerprint, for rows written by SQL.
fn identity() -> (String, i64) {
    let meta = *workflow!(Steps::sequence).meta();
    (meta.name.to_owned(), meta.fingerprint as i64)
}

fn fill_sqlite(path: &std::path::Path, n: u64) {
    let started = Instant::now();
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    let (workflow, fingerprint) = identity();
    let runs = |count: u64, prefix: &str, state: &str, wake_at: i64, steps: u32| {
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO resumable_runs (run_key, workflow, fingerprint, input, state, outcome,
               epoch, wake_at, executions, created_at, updated_at)
             SELECT printf('%s-%08d', ?2, i), ?3, ?4, x'00', ?5, x'00', 1, ?6, 1, i, i FROM n",
            rusqlite::params![count as i64, prefix, workflow, fingerprint, state, wake_at],
        )
        .unwrap();
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1),
               s(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM s WHERE j + 1 < ?3)
             INSERT INTO resumable_steps (run_id, step_id, seq, state, output, attempts, epoch,
               started_at, updated_at)
             SELECT (SELECT id FROM resumable_runs WHERE run_key = printf('%s-%08d', ?2, i)),
               'add#' || j, j, 'completed', x'0001020304050607', 1, 1, i, i FROM n, s",
            rusqlite::params![count as i64, prefix, steps],
        )
        .unwrap();
    };
    runs(n, "history", "completed", 0, 10);
    runs(INTERRUPTED, "interrupted", "incomplete", i64::MAX / 2, 5);
    conn.execute_batch("ANALYZE").unwrap();
    println!("scale/sqlite/{n}: filled in {:.1?}", started.elapsed());
}

#[cfg(all(feature = "postgres", feature = "conformance"))]
async fn fill_postgres(schema: &resumable::conformance::postgres::TestSchema, n: u64) {
    let started = Instant::now();
    let client = schema.connect().await;
    let s = schema.name();
    let (workflow, fingerprint) = identity();
    for (count, prefix, state, wake_at, steps) in [
        (n as i64, "history", "completed", 0i64, 10i32),
        (
            INTERRUPTED as i64,
            "interrupted",
            "incomplete",
            i64::MAX / 2,
            5,
        ),
    ] {
        client
            .execute(
                &format!(
                    "INSERT INTO \"{s}\".resumable_runs (run_key, workflow, fingerprint, input, state,
                       outcome, epoch, wake_at, executions, created_at, updated_at)
                     SELECT $2 || '-' || lpad(i::text, 8, '0'), $3, $4, '\\x00', $5, '\\x00', 1, $6, 1, i, i
                     FROM generate_series(1, $1::bigint) AS i"
                ),
                &[&count, &prefix, &workflow, &fingerprint, &state, &wake_at],
            )
            .await
            .unwrap();
        client
            .execute(
                &format!(
                    "INSERT INTO \"{s}\".resumable_steps (run_id, step_id, seq, state, output,
                       attempts, epoch, started_at, updated_at)
                     SELECT r.id, 'add#' || j, j, 'completed', '\\x0001020304050607', 1, 1,
                       r.created_at, r.created_at
                     FROM \"{s}\".resumable_runs r, generate_series(0, $2 - 1) AS j
                     WHERE r.run_key LIKE $1 || '-%'"
                ),
                &[&prefix, &steps],
            )
            .await
            .unwrap();
    }
    // One statement each: VACUUM cannot run inside a transaction.
    for table in ["resumable_runs", "resumable_steps"] {
        let sql = format!("VACUUM ANALYZE \"{s}\".{table}");
        client.batch_execute(&sql).await.unwrap();
    }
    println!("scale/postgres/{n}: filled in {:.1?}", started.elapsed());
}

fn measure(
    c: &mut Criterion,
    tokio: &tokio::runtime::Runtime,
    backend: &str,
    n: u64,
    journal: Arc<dyn Journal>,
) {
    let rt = Runtime::new(journal.clone());
    let steps = Steps::new();
    let mut group = c.benchmark_group(format!("scale/{backend}/{n}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    group.bench_function("sequential_100", |b| {
        b.to_async(tokio)
            .iter_custom(|iters| time_each(iters, || sequential_run(&rt, &steps, 100)));
    });
    group.bench_function("concurrent_128x10", |b| {
        b.to_async(tokio)
            .iter_custom(|iters| time_each(iters, || concurrent_runs(&rt, 128, 10)));
    });
    let incomplete = RunFilter {
        state: Some(RunState::Incomplete),
        limit: Some(100),
        ..RunFilter::default()
    };
    group.bench_function("list_incomplete_100", |b| {
        b.to_async(tokio)
            .iter(|| async { journal.list_runs(&incomplete).await.unwrap() });
    });
    let page = RunFilter {
        workflow: Some(identity().0),
        after: Some(format!("history-{:08}", (n / 2).max(1))),
        limit: Some(100),
        ..RunFilter::default()
    };
    group.bench_function("list_page_100", |b| {
        b.to_async(tokio)
            .iter(|| async { journal.list_runs(&page).await.unwrap() });
    });
    let key = format!("interrupted-{:08}", INTERRUPTED / 2);
    group.bench_function("load_run", |b| {
        b.to_async(tokio).iter(|| async {
            assert!(journal.load_run(&key).await.unwrap().is_some());
        });
    });
    group.bench_function("sequential_100_while_listing", |b| {
        let stop = Arc::new(AtomicBool::new(false));
        let listings = Arc::new(AtomicU64::new(0));
        let lister = tokio.spawn({
            let (journal, stop, listings) = (journal.clone(), stop.clone(), listings.clone());
            let incomplete = incomplete.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    journal.list_runs(&incomplete).await.unwrap();
                    listings.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        b.to_async(tokio)
            .iter_custom(|iters| time_each(iters, || sequential_run(&rt, &steps, 100)));
        stop.store(true, Ordering::Relaxed);
        tokio.block_on(lister).unwrap();
        println!(
            "scale/{backend}/{n}/sequential_100_while_listing: {} listings beside it",
            listings.load(Ordering::Relaxed)
        );
    });
    group.bench_function("recovery_1000", |b| {
        b.to_async(tokio).iter_custom(|iters| {
            let (rt, steps) = (rt.clone(), steps.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // 1,000 runs submitted (not timed), then recovered.
                    static BATCH: AtomicU64 = AtomicU64::new(0);
                    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
                    for i in 0..1_000 {
                        rt.submit(format!("due-{batch}-{i}"), steps.sequence(6))
                            .await
                            .unwrap();
                    }
                    let started = Instant::now();
                    let report = Completer::new(&rt)
                        .concurrency(256)
                        .register(workflow!(Steps::sequence), steps.clone())
                        .unwrap()
                        .run_until_idle()
                        .await
                        .unwrap();
                    total += started.elapsed();
                    assert_eq!(report.finished, 1_000, "every due run was recovered");
                }
                total
            }
        });
    });
    group.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
