//! Durable steps on PostgreSQL: one run of sequential steps beside the floor
//! (single-row commits from one client, measured here), concurrent runs,
//! and the journal's size per step. Needs `RESUMABLE_TEST_POSTGRES_URL`;
//! each benchmark works in a schema of its own, dropped after.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Steps, concurrent_runs, sequential_run, time_each, tokio_runtime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resumable::conformance::postgres::TestSchema;
use resumable::{PostgresJournal, Runtime};

const SEQUENTIAL_STEPS: u32 = 1_000;
const CONCURRENT_STEPS: u32 = 10;
/// Connections in the journal's pool for the concurrent runs.
const POOL: usize = 32;

async fn journal(schema: &TestSchema, pool: usize) -> Arc<PostgresJournal> {
    Arc::new(schema.builder().pool_size(pool).open().await.unwrap())
}

/// The floor: one client inserting one row per transaction.
fn single_row_commit_floor(c: &mut Criterion) {
    let Some(schema) = TestSchema::new("bench single_row_commit") else {
        return;
    };
    let rt = tokio_runtime();
    let client = rt.block_on(async {
        let client = schema.connect().await;
        let table = format!("\"{}\".floor", schema.name());
        client
            .batch_execute(&format!(
                "CREATE SCHEMA \"{}\"; CREATE TABLE {table} (id bigserial PRIMARY KEY, v bigint)",
                schema.name()
            ))
            .await
            .unwrap();
        let insert = client
            .prepare(&format!("INSERT INTO {table} (v) VALUES ($1)"))
            .await
            .unwrap();
        (client, insert)
    });
    let mut group = c.benchmark_group("postgres");
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_row_commit_floor", |b| {
        let (client, insert) = &client;
        b.to_async(&rt)
            .iter(|| async { client.execute(insert, &[&1i64]).await.unwrap() });
    });
    group.finish();
}

/// One run of 1,000 sequential steps at a time.
fn sequential(c: &mut Criterion) {
    let Some(schema) = TestSchema::new("bench postgres/sequential") else {
        return;
    };
    let rt = tokio_runtime();
    let journal = rt.block_on(journal(&schema, 4));
    let runtime = Runtime::new(journal);
    let steps = Steps::new();
    let mut group = c.benchmark_group("postgres/sequential");
    group.throughput(Throughput::Elements(u64::from(SEQUENTIAL_STEPS)));
    group.sample_size(10);
    group.bench_function(BenchmarkId::from_parameter(SEQUENTIAL_STEPS), |b| {
        let (runtime, steps) = (&runtime, &steps);
        b.to_async(&rt).iter_custom(|iters| async move {
            time_each(iters, || sequential_run(runtime, steps, SEQUENTIAL_STEPS)).await
        });
    });
    group.finish();
}

/// Many runs of 10 steps at once, over a pool of 32 connections.
fn concurrent(c: &mut Criterion) {
    let Some(schema) = TestSchema::new("bench postgres/concurrent") else {
        return;
    };
    let rt = tokio_runtime();
    let journal = rt.block_on(journal(&schema, POOL));
    let runtime = Runtime::new(journal);
    let mut group = c.benchmark_group("postgres/concurrent");
    group.sample_size(10);
    for runs in [1usize, 16, 64, 128, 256] {
        group.throughput(Throughput::Elements(
            runs as u64 * u64::from(CONCURRENT_STEPS),
        ));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{runs}x{CONCURRENT_STEPS}")),
            |b| {
                let runtime = &runtime;
                b.to_async(&rt).iter_custom(|iters| async move {
                    time_each(iters, || concurrent_runs(runtime, runs, CONCURRENT_STEPS)).await
                });
            },
        );
    }
    group.finish();
}

/// Bytes per step in the steps table (with its index and TOAST), for an
/// 8-byte and a 1 KiB output, after `VACUUM`.
fn journal_size(_: &mut Criterion) {
    const RUNS: usize = 500;
    const STEPS: u32 = 10;
    let rt = tokio_runtime();
    for size in [8usize, 1024] {
        let Some(schema) = TestSchema::new("bench postgres/journal_size") else {
            return;
        };
        let bytes = rt.block_on(async {
            let runtime = Runtime::new(journal(&schema, 4).await);
            let deps = Steps::new();
            for i in 0..RUNS {
                runtime
                    .run(format!("size-{i}"), deps.payload(STEPS, size))
                    .await
                    .unwrap()
                    .unwrap();
            }
            let client = schema.connect().await;
            let table = format!("\"{}\".resumable_steps", schema.name());
            client
                .batch_execute(&format!("VACUUM {table}"))
                .await
                .unwrap();
            let row = client
                .query_one(&format!("SELECT pg_total_relation_size('{table}')"), &[])
                .await
                .unwrap();
            row.get::<_, i64>(0)
        });
        println!(
            "postgres/journal_size/{size}B_output: {:.0} bytes per step ({} steps; table, index and TOAST)",
            bytes as f64 / (RUNS as f64 * f64::from(STEPS)),
            RUNS * STEPS as usize,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = single_row_commit_floor, sequential, concurrent, journal_size
}
criterion_main!(benches);
