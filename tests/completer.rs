//! The Completer on the in-memory journal: what it claims, how it backs off,
//! and how it shuts down.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::FAST;
use resumable::{
    Client, Completer, Error, MemoryJournal, RetryPolicy, RunStatus, Runtime, WorkflowRef,
    resumable, step, workflow,
};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("job failed")]
struct JobError;

#[derive(Default)]
struct Jobs {
    broken: AtomicBool,
    hang: AtomicBool,
    release: tokio::sync::Notify,
    started: tokio::sync::Notify,
    runs: AtomicU32,
}

impl Jobs {
    #[resumable(name = "job")]
    async fn job(&self, n: u32) -> Result<u32, JobError> {
        let doubled = step!("double", {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                self.started.notify_one();
                self.release.notified().await;
            }
            n * 2
        });
        if self.broken.load(Ordering::SeqCst) {
            panic!("bug in the workflow body");
        }
        Ok(doubled)
    }

    #[resumable(name = "other")]
    async fn other(&self) -> Result<(), JobError> {
        Ok(())
    }
}

/// `Jobs::job` as a client without its code sees it.
const JOB: WorkflowRef<(u32,), Result<u32, JobError>> = WorkflowRef::named("job");

fn runtime(journal: Arc<MemoryJournal>, backoff: Duration) -> Runtime {
    Runtime::builder(journal)
        .default_retry(FAST)
        .run_backoff(
            RetryPolicy::exponential(u32::MAX)
                .initial_delay(backoff)
                .jitter(0.0),
        )
        .build()
}

#[tokio::test]
async fn submitted_runs_are_executed_by_the_completer() {
    let journal = Arc::new(MemoryJournal::new());
    let rt = runtime(journal, Duration::from_secs(60));
    let jobs = Arc::new(Jobs::default());
    for n in 0..5 {
        rt.submit(format!("job-{n}"), jobs.job(n)).await.unwrap();
    }
    assert_eq!(
        rt.run_info("job-3").await.unwrap().unwrap().status,
        RunStatus::Pending
    );
    let report = Completer::new(&rt)
        .concurrency(2)
        .register(workflow!(Jobs::job), jobs.clone())
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!((report.finished, report.interrupted), (5, 0));
    assert_eq!(jobs.runs.load(Ordering::SeqCst), 5);
    assert_eq!(rt.run("job-3", jobs.job(3)).await.unwrap(), Ok(6));
    assert_eq!(
        jobs.runs.load(Ordering::SeqCst),
        5,
        "the outcome comes from the journal"
    );
}

#[tokio::test]
async fn failing_runs_are_backed_off_with_their_error_visible_then_resumed() {
    let journal = Arc::new(MemoryJournal::new());
    let rt = runtime(journal, Duration::from_millis(300));
    let jobs = Arc::new(Jobs::default());
    jobs.broken.store(true, Ordering::SeqCst);
    let err = rt.run("b", jobs.job(4)).await.unwrap_err();
    assert!(matches!(err, Error::WorkflowPanicked { .. }), "{err}");

    // Backing off: not due yet, so an idle pass leaves it alone.
    let info = rt.run_info("b").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::BackingOff);
    assert!(
        info.last_error
            .as_deref()
            .unwrap()
            .contains("bug in the workflow body")
    );
    let completer = || {
        Completer::new(&rt)
            .register(workflow!(Jobs::job), jobs.clone())
            .unwrap()
    };
    assert_eq!(completer().run_until_idle().await.unwrap().finished, 0);

    // Due again, still broken: interrupted again, and the backoff grows.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let report = completer().run_until_idle().await.unwrap();
    assert_eq!((report.finished, report.interrupted), (0, 1));
    let info = rt.run_info("b").await.unwrap().unwrap();
    assert_eq!((info.status, info.executions), (RunStatus::BackingOff, 2));

    // The fix is deployed: the next due pass completes it, and the step did not run again.
    jobs.broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(completer().run_until_idle().await.unwrap().finished, 1);
    assert_eq!(rt.run("b", jobs.job(4)).await.unwrap(), Ok(8));
    assert_eq!(jobs.runs.load(Ordering::SeqCst), 1);
}

/// A completer takes only runs of the workflows it has the code for: a run
/// of another is left due, untouched, for a worker that has its code.
#[tokio::test]
async fn a_run_of_an_unregistered_workflow_is_left_for_a_worker_with_its_code() {
    let rt = runtime(Arc::new(MemoryJournal::new()), Duration::from_secs(60));
    let jobs = Arc::new(Jobs::default());
    rt.submit("o", jobs.other()).await.unwrap();
    let report = Completer::new(&rt)
        .register(workflow!(Jobs::job), jobs.clone())
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!((report.finished, report.interrupted), (0, 0));
    let info = rt.run_info("o").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Pending);
    assert_eq!((info.executions, info.last_error), (0, None));
    // A worker with its code finishes it.
    let report = Completer::new(&rt)
        .register(workflow!(Jobs::other), jobs.clone())
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!(report.finished, 1);
}

#[test]
fn registering_two_workflows_under_one_name_is_refused() {
    let rt = Runtime::new(MemoryJournal::new());
    let jobs = Arc::new(Jobs::default());
    let err = Completer::new(&rt)
        .register(workflow!(Jobs::job), jobs.clone())
        .unwrap()
        .register(workflow!(Jobs::job), jobs)
        .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateWorkflow { ref workflow } if workflow == "job"),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_hands_unfinished_runs_to_the_next_worker() {
    let journal = Arc::new(MemoryJournal::new());
    let rt = runtime(journal, Duration::from_secs(60));
    let jobs = Arc::new(Jobs::default());
    jobs.hang.store(true, Ordering::SeqCst);
    rt.submit("h", jobs.job(21)).await.unwrap();
    let handle = Completer::new(&rt)
        .poll_interval(Duration::from_millis(10))
        .shutdown_grace(Duration::from_millis(50))
        .register(workflow!(Jobs::job), jobs.clone())
        .unwrap()
        .start();
    jobs.started.notified().await;
    assert_eq!(
        rt.run_info("h").await.unwrap().unwrap().status,
        RunStatus::Running
    );
    handle.shutdown().await.unwrap();

    // Given back at once, not left leased until the lease expires.
    let info = rt.run_info("h").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Pending);
    assert!(
        info.last_error
            .unwrap()
            .contains("interrupted before it finished")
    );

    jobs.hang.store(false, Ordering::SeqCst);
    let report = Completer::new(&rt)
        .register(workflow!(Jobs::job), jobs.clone())
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!(report.finished, 1);
    assert_eq!(rt.run("h", jobs.job(21)).await.unwrap(), Ok(42));
}

#[tokio::test]
async fn a_started_completer_picks_up_new_runs_until_shut_down() {
    let rt = runtime(Arc::new(MemoryJournal::new()), Duration::from_secs(60));
    let jobs = Arc::new(Jobs::default());
    let handle = Completer::new(&rt)
        .poll_interval(Duration::from_millis(10))
        .register(workflow!(Jobs::job), jobs.clone())
        .unwrap()
        .start();
    for n in 0..3 {
        rt.submit(format!("late-{n}"), jobs.job(n)).await.unwrap();
    }
    while handle.report().finished < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handle.shutdown().await.unwrap().finished, 3);
}

/// A started completer and a client that both poll only once an hour, so
/// that only the journal's wake-ups can make them act; runs stopped by an
/// error wait `backoff`.
fn idle_completer_and_client(
    backoff: Duration,
) -> (Runtime, Arc<Jobs>, resumable::CompleterHandle, Client) {
    let journal = Arc::new(MemoryJournal::new());
    let rt = runtime(journal.clone(), backoff);
    let jobs = Arc::new(Jobs::default());
    let hour = Duration::from_secs(3600);
    let completer = Completer::new(&rt)
        .poll_interval(hour)
        .register(workflow!(Jobs::job), jobs.clone())
        .unwrap()
        .start();
    let client = Client::new(journal).poll_interval(hour);
    (rt, jobs, completer, client)
}

/// A client without the workflow's code submits and waits; the journal's
/// in-process wake-ups start the run on a completer that polls once an
/// hour, wake the client, and a run given back with a backoff is retried
/// when it falls due, not at the next poll.
#[tokio::test]
async fn a_client_submits_and_waits_while_an_idle_completer_is_woken() {
    let (rt, jobs, completer, client) = idle_completer_and_client(Duration::from_millis(50));
    let outcome = tokio::time::timeout(Duration::from_secs(30), client.run(&JOB, "c-1", (21,)))
        .await
        .expect("woken, not polled");
    assert_eq!(outcome.unwrap(), Ok(42));

    // A body that panics is given back with a 50 ms backoff: the completer
    // wakes when it falls due and, once fixed, finishes it.
    jobs.broken.store(true, Ordering::SeqCst);
    client.submit(&JOB, "c-2", (1,)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while rt.run_info("c-2").await.unwrap().unwrap().executions < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("retried when due, not at the next poll");
    jobs.broken.store(false, Ordering::SeqCst);
    let outcome = tokio::time::timeout(Duration::from_secs(30), client.wait(&JOB, "c-2"))
        .await
        .expect("woken when it finished");
    assert_eq!(outcome.unwrap(), Ok(2));
    completer.shutdown().await.unwrap();
}

/// Runs given back with backoffs that end at different times each wake an
/// idle completer when they fall due, not only the earliest of them.
#[tokio::test]
async fn an_idle_completer_wakes_for_every_run_that_falls_due() {
    let (rt, jobs, completer, client) = idle_completer_and_client(Duration::from_millis(300));
    jobs.broken.store(true, Ordering::SeqCst);
    client.submit(&JOB, "due-1", (1,)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.submit(&JOB, "due-2", (2,)).await.unwrap();
    // Both failed once and wait out backoffs that end 100 ms apart.
    tokio::time::timeout(Duration::from_secs(30), async {
        for key in ["due-1", "due-2"] {
            while rt
                .run_info(key)
                .await
                .unwrap()
                .unwrap()
                .last_error
                .is_none()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await
    .expect("both runs fail at once");
    jobs.broken.store(false, Ordering::SeqCst);
    for (key, n) in [("due-1", 1), ("due-2", 2)] {
        let outcome = tokio::time::timeout(Duration::from_secs(30), client.wait(&JOB, key))
            .await
            .unwrap_or_else(|_| panic!("{key} was not retried when it fell due"));
        assert_eq!(outcome.unwrap(), Ok(n * 2));
    }
    completer.shutdown().await.unwrap();
}
