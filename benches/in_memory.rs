//! The price of `#[resumable]` itself: a workflow of 1,000 trivial steps on
//! the in-memory journal, fresh and replayed, against the same `async fn`
//! without it. Criterion's throughput is in steps.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Steps, plain_sequence, quiet_deliberate_panics, sequential_run, time_each};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resumable::{Error, MemoryJournal, Runtime};

const STEPS: u32 = 1_000;

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn step_overhead(c: &mut Criterion) {
    quiet_deliberate_panics();
    let rt = tokio();
    let mut group = c.benchmark_group("in_memory");
    group.throughput(Throughput::Elements(u64::from(STEPS)));

    group.bench_function(BenchmarkId::new("plain_fn", STEPS), |b| {
        let steps = Steps::new();
        b.to_async(&rt)
            .iter(|| async { plain_sequence(&steps, STEPS).await.unwrap() });
    });

    group.bench_function(BenchmarkId::new("fresh", STEPS), |b| {
        let steps = Steps::new();
        b.to_async(&rt).iter_custom(|iters| {
            let steps = steps.clone();
            async move {
                time_each(iters, || async {
                    // A journal per run, so runs do not pile up in memory.
                    let runtime = Runtime::new(MemoryJournal::new());
                    sequential_run(&runtime, &steps, STEPS).await
                })
                .await
            }
        });
    });

    group.bench_function(BenchmarkId::new("replay", STEPS), |b| {
        // A run that recorded every step, then crashed before finishing.
        // Resuming it replays all 1,000 steps and crashes again at the same
        // place, so each iteration replays the same run.
        let steps = Steps::new();
        steps.crash_at_end.store(true, Ordering::Relaxed);
        // It must not be dead-lettered however often it crashes.
        let runtime = Runtime::builder(MemoryJournal::new())
            .dead_letter_after(u32::MAX)
            .build();
        let crashed = rt.block_on(runtime.run("replay", steps.sequence(STEPS)));
        assert!(crashed.is_err(), "the seeded run should have crashed");
        b.to_async(&rt).iter(|| async {
            let replayed = runtime.run("replay", steps.sequence(STEPS)).await;
            assert!(
                matches!(replayed, Err(Error::WorkflowPanicked { .. })),
                "the replayed run should have crashed again, got {replayed:?}"
            );
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = step_overhead
}
criterion_main!(benches);
