//! Messages at scale: runs that each wait for one message (`recv!`), on
//! SQLite and, when `RESUMABLE_TEST_POSTGRES_URL` is set, PostgreSQL.
//!
//! One completer, running all along, takes every run to its receive, where
//! each is given back to wait. Then one message is sent to each run, one
//! after another, as a webhook handler would. Printed: how long getting
//! them all to wait took, this process's CPU while they all wait, the rate
//! messages were sent at, how long each run took from its message's send to
//! the step after its receive (median and p99), and the rate runs were
//! delivered their message and finished at. 10,000 runs under `cargo bench`
//! (`RESUMABLE_MESSAGE_RUNS` for another count); 200 when run once as a test.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_dir, cpu_time, remove_sqlite_files, run_count, tokio_runtime};
use criterion::{Criterion, criterion_group, criterion_main};
use resumable::{
    Completer, Journal, Runtime, SqliteJournal, Timestamp, WorkflowRef, recv, resumable, step,
    workflow,
};

/// The workflow's (empty) dependencies.
#[derive(Default)]
struct Receivers;

const WAIT: WorkflowRef<(), Result<u64, String>> = WorkflowRef::named("bench::wait");

impl Receivers {
    #[resumable(name = "bench::wait")]
    async fn wait(&self) -> Result<u64, String> {
        let sent_at: i64 = recv!("go");
        // Delivery time: this step's start against the message's send.
        step!("after", {});
        Ok(sent_at as u64)
    }
}

fn runs() -> usize {
    run_count("RESUMABLE_MESSAGE_RUNS", 10_000)
}

fn receivers(_: &mut Criterion) {
    let tokio = tokio_runtime();
    let runs = runs();
    let path = bench_dir("bench-messages").join("messages.db");
    remove_sqlite_files(&path);
    tokio.block_on(async {
        let journal = SqliteJournal::open(&path).await.unwrap();
        measure("sqlite", Arc::new(journal), runs).await;
    });
    remove_sqlite_files(&path);

    #[cfg(all(feature = "postgres", feature = "conformance"))]
    if let Some(schema) = resumable::conformance::postgres::TestSchema::new("messages") {
        tokio.block_on(async {
            let journal = schema.journal().await;
            measure("postgres", Arc::new(journal), runs).await;
        });
    }
}

async fn measure(backend: &str, journal: Arc<dyn Journal>, runs: usize) {
    let rt = Runtime::new(journal.clone());
    let receivers = Arc::new(Receivers);
    for i in 0..runs {
        rt.submit(format!("wait-{i}"), receivers.wait())
            .await
            .unwrap();
    }
    let started = Instant::now();
    let completer = Completer::new(&rt)
        .concurrency(256)
        .register(workflow!(Receivers::wait), receivers.clone())
        .unwrap()
        .start();
    let deadline = Instant::now() + Duration::from_secs(600);
    while completer.report().waiting < runs as u64 {
        assert!(Instant::now() < deadline, "runs never went to wait");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_wait = started.elapsed();

    // All waiting: the completer idles beside them.
    let window = Duration::from_secs(2);
    let cpu_before = cpu_time();
    tokio::time::sleep(window).await;
    let cpu = cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    assert_eq!(completer.report().finished, 0, "none had a message yet");

    let client = rt.client();
    let sending = Instant::now();
    for i in 0..runs {
        let now = Timestamp::now().0;
        client
            .send(&WAIT, &format!("wait-{i}"), "go", &now, "m")
            .await
            .unwrap();
    }
    let sent_in = sending.elapsed();
    while completer.report().finished < runs as u64 {
        assert!(Instant::now() < deadline, "messages left undelivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_in = sending.elapsed();
    completer.shutdown().await.unwrap();

    let mut latency = Vec::with_capacity(runs);
    for i in 0..runs {
        let key = format!("wait-{i}");
        let sent_at = client.outcome(&WAIT, &key).await.unwrap().unwrap().unwrap() as i64;
        let snapshot = journal.load_run(&key).await.unwrap().unwrap();
        let after = snapshot
            .steps
            .iter()
            .find(|s| s.step_id == "after#0")
            .expect("delivered");
        latency.push(after.started_at.0 - sent_at);
    }
    latency.sort_unstable();
    let pct = |p: usize| latency[(latency.len() * p / 100).min(latency.len() - 1)];
    println!(
        "messages/{backend}/{runs}: all waiting in {to_wait:.2?}; CPU while they waited: {} over {window:?}; \
         {:.0} messages sent per second; send to next step median {} ms, p99 {} ms, max {} ms; \
         all delivered and finished {all_in:.2?} after the first send ({:.0} runs per second)",
        cpu.map_or("unknown".to_owned(), |c| format!("{c:?}")),
        runs as f64 / sent_in.as_secs_f64(),
        pct(50),
        pct(99),
        latency.last().unwrap(),
        runs as f64 / all_in.as_secs_f64(),
    );
}

criterion_group!(benches, receivers);
criterion_main!(benches);
