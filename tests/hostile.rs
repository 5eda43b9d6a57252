//! Hostile rows: a journal holding rows no code wrote (tampered, corrupted,
//! or at the end of their ranges) never stops the other runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use resumable::{Completer, Journal, RunStatus, Runtime, SqliteJournal, resumable, step, workflow};

#[derive(Default)]
struct Counter {
    done: AtomicU32,
}

impl Counter {
    #[resumable]
    async fn count(&self, n: u32) -> Result<u32, String> {
        let first = step!("first", { n + 1 });
        let second = step!("second", {
            self.done.fetch_add(1, Ordering::SeqCst);
            first + 1
        });
        Ok(second)
    }
}

const GOOD: u32 = 20;

/// Submits the good runs and the runs about to be tampered with, with
/// their first step recorded.
async fn seed(rt: &Runtime, counter: &Arc<Counter>) {
    for key in ["bad-step", "bad-epoch", "bad-counter"] {
        rt.run(key, counter.count(0)).await.unwrap().unwrap();
        // Back to incomplete, as if it had stopped after its first step.
        let forked = rt.runs().fork(key, 1, &format!("{key}-run")).await.unwrap();
        assert_eq!(forked.status, RunStatus::Pending);
    }
    for n in 0..GOOD {
        rt.submit(format!("good-{n}"), counter.count(n))
            .await
            .unwrap();
    }
}

/// Runs a completer over the journal, then checks that every good run and
/// the run with an out-of-range counter finished, and that the runs whose
/// rows cannot be read were set aside with an error that names them.
async fn check(rt: &Runtime, counter: &Arc<Counter>, name: &str) {
    let before = counter.done.load(Ordering::SeqCst);
    let report = Completer::new(rt)
        .register(workflow!(Counter::count), counter.clone())
        .unwrap()
        .run_until_idle()
        .await
        .unwrap_or_else(|e| panic!("{name}: a bad row stopped the completer: {e}"));
    assert_eq!(report.finished, u64::from(GOOD) + 1, "{name}: {report:?}");
    assert_eq!(
        counter.done.load(Ordering::SeqCst) - before,
        GOOD + 1,
        "{name}"
    );
    // Listed among the dead letters (its run row reads), with an error
    // naming it; loading its steps names it too.
    let dead = rt.runs().dead_letters(10).await.unwrap();
    let bad = dead
        .iter()
        .find(|r| r.key == "bad-step-run")
        .expect("set aside");
    let error = bad.last_error.clone().unwrap();
    assert!(
        error.contains("\"bad-step-run\"") && error.contains("bogus"),
        "{name}: {error}"
    );
    let err = rt.run_info("bad-step-run").await.unwrap_err();
    assert!(
        err.to_string().contains("\"bad-step-run\""),
        "{name}: {err}"
    );
    let info = rt.run_info("bad-counter-run").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Completed, "{name}");
    let info = rt.run_info("bad-epoch-run").await.unwrap().unwrap();
    assert_ne!(
        info.status,
        RunStatus::Completed,
        "{name}: a run at its last epoch is not taken"
    );
}

#[tokio::test]
async fn bad_rows_on_sqlite_are_set_aside_and_the_other_runs_proceed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(&path).await.unwrap());
    let rt = Runtime::new(journal);
    let counter = Arc::new(Counter::default());
    seed(&rt, &counter).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE resumable_steps SET state = 'bogus' WHERE run_key = 'bad-step-run';
         UPDATE resumable_runs SET epoch = -1 WHERE run_key = 'bad-epoch-run';
         UPDATE resumable_runs SET executions = -5 WHERE run_key = 'bad-counter-run';",
    )
    .unwrap();
    check(&rt, &counter, "sqlite").await;
    let info = rt.run_info("bad-epoch-run").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::DeadLettered, "refused, not wrapped");
    assert!(info.last_error.unwrap().contains("last epoch"));
}

#[cfg(all(feature = "postgres", feature = "conformance"))]
#[tokio::test]
async fn bad_rows_on_postgres_are_set_aside_and_the_other_runs_proceed() {
    let Some(schema) = resumable::conformance::postgres::TestSchema::new("bad_rows") else {
        return;
    };
    let journal: Arc<dyn Journal> = Arc::new(schema.journal().await);
    let rt = Runtime::new(journal);
    let counter = Arc::new(Counter::default());
    seed(&rt, &counter).await;
    let s = schema.name();
    let sql = format!(
        "UPDATE \"{s}\".resumable_steps SET state = 'bogus' WHERE run_key = 'bad-step-run';
         UPDATE \"{s}\".resumable_runs SET epoch = 9223372036854775807 WHERE run_key = 'bad-epoch-run';
         UPDATE \"{s}\".resumable_runs SET executions = -5 WHERE run_key = 'bad-counter-run';"
    );
    schema.connect().await.batch_execute(&sql).await.unwrap();
    check(&rt, &counter, "postgres").await;
}
