//! The shapes of the comparison with DBOS Transact (`bench/compare.sh`), on
//! PostgreSQL: one workflow of 1,000 sequential steps; 128 concurrent
//! workflows of 10 steps; 1,000 workflows of 6 steps interrupted after 3,
//! resumed by a Completer in a fresh journal (as a restarted process would).
//!
//! `cargo bench --features postgres,conformance --bench peer_shapes -- [--json]`
//! with `RESUMABLE_TEST_POSTGRES_URL` set. Each shape works in a schema of
//! its own, dropped after. Not a criterion benchmark: each shape runs once,
//! after a warm-up, as the peer's script does.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Steps, completed, concurrent_runs, seed_interrupted, sequential_run};
use resumable::conformance::postgres::TestSchema;
use resumable::{Completer, PostgresJournal, Runtime, workflow};

const SEQUENTIAL_STEPS: u32 = 1_000;
const CONCURRENT_RUNS: usize = 128;
const CONCURRENT_STEPS: u32 = 10;
const RECOVERY_RUNS: usize = 1_000;
const RECOVERY_STEPS: u32 = 6;
/// Inside the 4th step: 3 of 6 recorded.
const RECOVERY_HOLD_AT: u32 = 3;
const POOL: usize = 32;

struct Figure {
    shape: &'static str,
    workflows: usize,
    steps_per_workflow: u32,
    /// Steps that ran in the timed part.
    steps_timed: usize,
    took: Duration,
    note: String,
}

impl Figure {
    fn print(&self, json: bool) {
        let seconds = self.took.as_secs_f64();
        let steps_per_s = self.steps_timed as f64 / seconds;
        let workflows_per_s = self.workflows as f64 / seconds;
        if json {
            println!(
                "{{\"system\": \"resumable\", \"shape\": \"{}\", \"workflows\": {}, \"steps_per_workflow\": {}, \
                 \"seconds\": {seconds:.4}, \"steps_per_s\": {steps_per_s:.1}, \"workflows_per_s\": {workflows_per_s:.1}, \
                 \"note\": \"{}\"}}",
                self.shape, self.workflows, self.steps_per_workflow, self.note
            );
        } else {
            println!(
                "{:<10} {:>5} x {:<4} {seconds:>8.3} s {steps_per_s:>10.0} steps/s {workflows_per_s:>9.1} workflows/s  ({})",
                self.shape, self.workflows, self.steps_per_workflow, self.note
            );
        }
    }
}

async fn journal(schema: &TestSchema) -> Arc<PostgresJournal> {
    Arc::new(schema.builder().pool_size(POOL).open().await.unwrap())
}

async fn sequential() -> Option<Figure> {
    let schema = TestSchema::new("peer_shapes sequential")?;
    let rt = Runtime::new(journal(&schema).await);
    let steps = Steps::new();
    sequential_run(&rt, &steps, 10).await; // warm-up
    let took = sequential_run(&rt, &steps, SEQUENTIAL_STEPS).await;
    Some(Figure {
        shape: "sequential",
        workflows: 1,
        steps_per_workflow: SEQUENTIAL_STEPS,
        steps_timed: SEQUENTIAL_STEPS as usize,
        took,
        note: "Runtime::run, one run".into(),
    })
}

async fn concurrent() -> Option<Figure> {
    let schema = TestSchema::new("peer_shapes concurrent")?;
    let rt = Runtime::new(journal(&schema).await);
    // Untimed: the same shape once, so the pool's connections are open.
    concurrent_runs(&rt, CONCURRENT_RUNS, CONCURRENT_STEPS).await;
    let took = concurrent_runs(&rt, CONCURRENT_RUNS, CONCURRENT_STEPS).await;
    Some(Figure {
        shape: "concurrent",
        workflows: CONCURRENT_RUNS,
        steps_per_workflow: CONCURRENT_STEPS,
        steps_timed: CONCURRENT_RUNS * CONCURRENT_STEPS as usize,
        took,
        note: format!("one tokio task per run, pool of {POOL} connections"),
    })
}

async fn recovery() -> Option<Figure> {
    let schema = TestSchema::new("peer_shapes recovery")?;
    {
        let crashed = Runtime::builder(journal(&schema).await)
            .worker_id("crashed")
            .build();
        seed_interrupted(
            &crashed,
            "r",
            RECOVERY_RUNS,
            RECOVERY_STEPS,
            RECOVERY_HOLD_AT,
        )
        .await;
    }
    // Timed from opening the journal, as a restarted process would.
    let started = Instant::now();
    let journal = journal(&schema).await;
    let rt = Runtime::new(journal.clone());
    let report = Completer::new(&rt)
        .concurrency(256)
        .register(workflow!(Steps::sequence), Steps::new())
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(report.finished, RECOVERY_RUNS as u64, "{report:?}");
    assert!(completed(&*journal, RECOVERY_RUNS).await);
    Some(Figure {
        shape: "recovery",
        workflows: RECOVERY_RUNS,
        steps_per_workflow: RECOVERY_STEPS,
        steps_timed: RECOVERY_RUNS * (RECOVERY_STEPS - RECOVERY_HOLD_AT) as usize,
        took,
        note: "journal opened + Completer::run_until_idle, concurrency 256; steps/s counts the 3 steps run after the restart".into(),
    })
}

fn main() {
    // `cargo bench` passes `--bench`; the only option of our own is `--json`.
    let json = std::env::args().any(|a| a == "--json");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for figure in [sequential().await, concurrent().await, recovery().await]
            .into_iter()
            .flatten()
        {
            figure.print(json);
        }
    });
}
