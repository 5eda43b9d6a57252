//! Many workers on one PostgreSQL database: wake-ups across journals,
//! fencing of a paused worker, lost connections, and worker processes
//! killed mid-way. Each test uses a schema of its own on the server named
//! by `RESUMABLE_TEST_POSTGRES_URL`, and is skipped (saying so) without it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use resumable::conformance::postgres::{TestSchema, URL_VAR};
use resumable::journal::{Lease, StepState, Timestamp, Write};
use resumable::{
    Client, Completer, Error, Journal, LeaseRecord, PostgresJournal, RunFilter, RunState, Runtime,
    WorkflowRef, resumable, step, workflow,
};
use tokio::sync::Notify;

const SCHEMA_VAR: &str = "RESUMABLE_TEST_SCHEMA";
const ROLE_VAR: &str = "RESUMABLE_TEST_ROLE";
const STEPS: u64 = 6;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

/// Records every execution of a step body in a table of the test schema,
/// so that executions in killed processes are counted too.
struct Effects {
    client: tokio_postgres::Client,
    table: String,
    /// How long the `slow` step sleeps in this process.
    slow_step: Duration,
    /// Opened by the reconnect test to let the gated step finish.
    gate: Arc<Notify>,
}

impl Effects {
    async fn connect(url: &str, schema: &str) -> Self {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let table = format!("\"{schema}\".effects");
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS {table} (key TEXT NOT NULL, pid INTEGER NOT NULL)"
            ))
            .await
            .unwrap();
        Effects {
            client,
            table,
            slow_step: Duration::ZERO,
            gate: Arc::new(Notify::new()),
        }
    }

    async fn record(&self, key: &str) -> Result<(), Failed> {
        let pid = std::process::id() as i32;
        self.client
            .execute(
                &format!("INSERT INTO {} (key, pid) VALUES ($1, $2)", self.table),
                &[&key, &pid],
            )
            .await
            .map(drop)
            .map_err(|e| Failed(e.to_string()))
    }

    async fn counts(&self) -> HashMap<String, i64> {
        let sql = format!("SELECT key, count(*) FROM {} GROUP BY key", self.table);
        let rows = self.client.query(&sql, &[]).await.unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    /// Six steps, each recording its execution.
    #[resumable(name = "pipeline")]
    async fn pipeline(&self, n: u64) -> Result<u64, Failed> {
        let mut acc = n;
        for i in 0..STEPS {
            acc = step!("add", |s| {
                self.record(&s.idempotency_key()).await?;
                acc * 2 + i
            });
        }
        Ok(acc)
    }

    /// A step that takes `slow_step` between recording and returning.
    #[resumable(name = "slow")]
    async fn slow(&self, n: u64) -> Result<u64, Failed> {
        let a = step!("before", |s| {
            self.record(&s.idempotency_key()).await?;
            n + 1
        });
        let b = step!("slow", |s| {
            self.record(&s.idempotency_key()).await?;
            tokio::time::sleep(self.slow_step).await;
            a + 1
        });
        Ok(b + 1)
    }

    /// A step that waits for `gate` before finishing.
    #[resumable]
    async fn gated(&self, n: u64) -> Result<u64, Failed> {
        let a = step!("one", |s| {
            self.record(&s.idempotency_key()).await?;
            n + 1
        });
        let b = step!("two", |s| {
            self.record(&s.idempotency_key()).await?;
            self.gate.notified().await;
            a + 1
        });
        let c = step!("three", |s| {
            self.record(&s.idempotency_key()).await?;
            b + 1
        });
        Ok(c)
    }
}

fn expected_pipeline(n: u64) -> u64 {
    (0..STEPS).fold(n, |acc, i| acc * 2 + i)
}

const PIPELINE: WorkflowRef<(u64,), Result<u64, Failed>> = WorkflowRef::named("pipeline");

async fn effects_for(schema: &TestSchema) -> Arc<Effects> {
    Arc::new(Effects::connect(schema.url(), schema.name()).await)
}

/// Waits for `cond`, polling; panics after `limit` (a hang guard, not a
/// timing assertion: it is far above what the test needs).
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut cond: F) {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two journals stand for two machines: a client submits on one and waits;
/// a worker polling only once an hour runs it on the other. Only the
/// notifications can have woken the worker and the waiting client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_run_starts_on_another_worker_without_waiting_for_a_poll() {
    let Some(schema) = TestSchema::new("a_submitted_run_starts_on_another_worker") else {
        return;
    };
    let effects = effects_for(&schema).await;
    let worker = Runtime::new(schema.journal().await);
    let hour = Duration::from_secs(3600);
    let completer = Completer::new(&worker)
        .poll_interval(hour)
        .register(workflow!(Effects::pipeline), effects.clone())
        .unwrap()
        .start();
    // Let the completer's first (empty) claim pass, so it is idle.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let client = Client::new(schema.journal().await).poll_interval(hour);
    for n in 0..5u64 {
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            client.run(&PIPELINE, format!("submitted-{n}"), (n,)),
        )
        .await
        .expect("only a notification could have started the run and woken the client");
        assert_eq!(outcome.unwrap(), Ok(expected_pipeline(n)));
        println!("run {n}: submitted to outcome in {:?}", started.elapsed());
    }
    let report = completer.shutdown().await.unwrap();
    assert_eq!(report.finished, 5);

    // The first worker pinned each run to its code's fingerprint.
    let run = worker.journal().load_run("submitted-0").await.unwrap();
    assert_eq!(
        run.unwrap().run.fingerprint,
        workflow!(Effects::pipeline).meta().fingerprint
    );
}

#[tokio::test]
async fn a_client_is_told_about_mismatches_and_unknown_runs() {
    let Some(schema) = TestSchema::new("a_client_is_told_about_mismatches") else {
        return;
    };
    let client = Client::new(schema.journal().await);
    client.submit(&PIPELINE, "k", (1,)).await.unwrap();
    client.submit(&PIPELINE, "k", (1,)).await.unwrap();
    let other_input = client.submit(&PIPELINE, "k", (2,)).await.unwrap_err();
    assert!(
        matches!(&other_input, Error::InputMismatch { run } if run == "k"),
        "{other_input:?}"
    );
    const OTHER: WorkflowRef<(u64,), Result<u64, Failed>> = WorkflowRef::named("other");
    let other_workflow = client.submit(&OTHER, "k", (1,)).await.unwrap_err();
    assert!(
        matches!(other_workflow, Error::WorkflowMismatch { .. }),
        "{other_workflow:?}"
    );
    let unknown = client.wait(&PIPELINE, "nobody").await.unwrap_err();
    assert!(
        matches!(&unknown, Error::UnknownRun { run } if run == "nobody"),
        "{unknown:?}"
    );
    assert_eq!(
        client.status("k").await.unwrap(),
        Some(RunState::Incomplete)
    );
}

// ---- fencing: a worker paused past its lease ----

const KEY_VAR: &str = "RESUMABLE_TEST_KEY";

/// Not a test: the worker that `a_paused_worker_...` stops with SIGSTOP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn paused_worker_child() {
    let key = std::env::var(KEY_VAR).unwrap();
    // The slow step lasts long enough for the parent to see it start and
    // stop this process.
    run_slow_in_child(
        &key,
        "paused-worker",
        Duration::from_millis(600),
        Duration::from_secs(10),
    )
    .await;
}

/// What a child process does: run `Effects::slow` as `worker`, and print
/// the outcome.
async fn run_slow_in_child(key: &str, worker: &str, lease: Duration, slow_step: Duration) {
    let (url, schema) = child_env();
    let mut effects = Effects::connect(&url, &schema).await;
    effects.slow_step = slow_step;
    let journal = PostgresJournal::builder(&url)
        .schema(&schema)
        .open()
        .await
        .unwrap();
    let rt = Runtime::builder(journal)
        .worker_id(worker)
        .lease_duration(lease)
        .build();
    let outcome = rt.run(key, effects.slow(1)).await;
    println!("outcome: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_whose_run_was_taken_over_cannot_write() {
    let Some(schema) = TestSchema::new("a_paused_worker_cannot_write") else {
        return;
    };
    let effects = effects_for(&schema).await;
    let journal = Arc::new(schema.journal().await);
    let key = "paused";
    let child = child_command("paused_worker_child", &schema)
        .env(KEY_VAR, key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let child = KillOnDrop(Some(child));
    eventually(
        "the child to start its slow step",
        Duration::from_secs(60),
        async || effects.counts().await.contains_key("paused/slow#0"),
    )
    .await;
    signal("-STOP", &pid);

    // Another worker takes the run once the paused worker's lease expired.
    let rt = Runtime::builder(journal.clone())
        .worker_id("rescuer")
        .build();
    eventually(
        "the paused worker's lease to expire",
        Duration::from_secs(60),
        async || {
            let run = journal.load_run(key).await.unwrap().unwrap().run;
            !run.is_leased_at(Timestamp::now())
        },
    )
    .await;
    let outcome = rt.run(key, effects.slow(1)).await.unwrap();
    assert_eq!(outcome, Ok(4));

    signal("-CONT", &pid);
    let out = child.wait_with_output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // Its write was refused (LeaseLost), and since the run finished
    // elsewhere it gets the recorded outcome.
    assert!(
        stdout.contains("outcome: Ok(Ok(4))"),
        "the resumed worker must get the outcome recorded by the rescuer: {stdout}"
    );

    // The journal: the step was recorded once, under the rescuer's lease.
    let snapshot = journal.load_run(key).await.unwrap().unwrap();
    let slow = snapshot
        .steps
        .iter()
        .find(|s| s.step_id == "slow#0")
        .unwrap();
    assert_eq!((slow.state, slow.epoch), (StepState::Completed, 2));
    let history = journal.lease_history(key).await.unwrap();
    let owners: Vec<&str> = history.iter().map(|l| l.owner.as_str()).collect();
    assert_eq!(owners, ["paused-worker", "rescuer"]);
    assert_leases_never_overlap(key, &history);
    // And any write under the old lease is refused by the database itself.
    let old = Lease {
        run_key: key.to_owned(),
        owner: "paused-worker".to_owned(),
        epoch: 1,
        expires_at: history[0].expires_at,
    };
    let late = Write::AttemptFailed {
        step_id: "late#0".into(),
        attempts: 1,
        error: "late".into(),
        retry_at: None,
        started_at: Timestamp::now(),
        at: Timestamp::now(),
    };
    let refused = journal.write(&old, late).await.unwrap_err();
    assert!(
        matches!(refused, Error::LeaseLost { epoch: 1, .. }),
        "{refused:?}"
    );
    // The slow step's body ran in both workers: at least once, never recorded twice.
    assert_eq!(effects.counts().await["paused/slow#0"], 2);
}

/// Kills the child process if the test fails before it is waited for.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SIGKILL also ends a stopped process.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- a restarted worker with a stable id ----

/// Not a test: the worker that `a_restarted_worker_...` kills mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn stable_worker_child() {
    let hour = Duration::from_secs(3600);
    run_slow_in_child("left-behind", "stable-worker", hour, hour).await;
}

/// A worker killed while executing a run, whose lease would last an hour,
/// restarts under the same id: its run resumes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_with_a_stable_id_resumes_its_runs_at_once() {
    let Some(schema) = TestSchema::new("a_restarted_worker_resumes_its_runs") else {
        return;
    };
    let effects = effects_for(&schema).await;
    let child = child_command("stable_worker_child", &schema)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let child = KillOnDrop(Some(child));
    eventually(
        "the child to start its slow step",
        Duration::from_secs(60),
        async || effects.counts().await.contains_key("left-behind/slow#0"),
    )
    .await;
    drop(child); // SIGKILL, with an hour of lease left

    let journal = Arc::new(schema.journal().await);
    let rt = Runtime::builder(journal.clone())
        .worker_id("stable-worker")
        .lease_duration(Duration::from_secs(3600))
        .build();
    let other = Runtime::builder(journal.clone()).worker_id("other").build();
    assert_eq!(other.recover_leases().await.unwrap(), 0, "not its runs");
    assert_eq!(rt.recover_leases().await.unwrap(), 1);
    let info = rt.run_info("left-behind").await.unwrap().unwrap();
    assert!(
        info.last_error.unwrap().contains("restarted"),
        "the reason stays visible"
    );
    let completer = Completer::new(&rt)
        .poll_interval(Duration::from_secs(3600))
        .register(workflow!(Effects::slow), effects.clone())
        .unwrap()
        .start();
    const SLOW: WorkflowRef<(u64,), Result<u64, Failed>> = WorkflowRef::named("slow");
    let client = Client::new(journal.clone());
    let outcome = tokio::time::timeout(Duration::from_secs(60), client.wait(&SLOW, "left-behind"))
        .await
        .expect("resumed at once, not after the hour-long lease");
    assert_eq!(outcome.unwrap(), Ok(4));
    completer.shutdown().await.unwrap();
    let counts = effects.counts().await;
    assert_eq!(
        counts["left-behind/before#0"], 1,
        "a recorded step never runs again"
    );
    assert_eq!(
        counts["left-behind/slow#0"], 2,
        "the interrupted step runs again"
    );
    let history = journal.lease_history("left-behind").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_leases_never_overlap("left-behind", &history);
}

fn signal(sig: &str, pid: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// Consecutive leases of a run never overlap: each lease starts after the
/// one before it was given back or had expired (as last renewed).
fn assert_leases_never_overlap(key: &str, history: &[LeaseRecord]) {
    for (i, lease) in history.iter().enumerate() {
        assert_eq!(
            lease.epoch,
            i as u64 + 1,
            "{key}: epochs must follow each other"
        );
    }
    for pair in history.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let ended = before
            .released_at
            .map_or(before.expires_at, |r| r.min(before.expires_at));
        assert!(
            ended <= after.acquired_at,
            "{key}: lease {} of {} (ended {ended:?}) overlaps lease {} of {} (from {:?})",
            before.epoch,
            before.owner,
            after.epoch,
            after.owner,
            after.acquired_at
        );
    }
}

// ---- lost connections ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_its_connections_being_terminated() {
    let Some(schema) = TestSchema::new("a_run_survives_terminated_connections") else {
        return;
    };
    let effects = effects_for(&schema).await;
    let app = format!("resumable-{}", schema.name());
    let journal = Arc::new(
        schema
            .builder()
            .application_name(&app)
            .open()
            .await
            .unwrap(),
    );
    let rt = Runtime::new(journal.clone());
    let run = tokio::spawn({
        let rt = rt.clone();
        let effects = effects.clone();
        async move { rt.run("gated", effects.gated(1)).await }
    });
    eventually(
        "the gated step to start",
        Duration::from_secs(60),
        async || effects.counts().await.contains_key("gated/two#0"),
    )
    .await;

    let admin = schema.connect().await;
    let terminated: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1) AS t",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        terminated >= 2,
        "a pooled connection and the listener must have been terminated, got {terminated}"
    );
    effects.gate.notify_one();
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run must complete after reconnecting")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Ok(4));
    let counts = effects.counts().await;
    for step in ["one", "two", "three"] {
        assert_eq!(counts[&format!("gated/{step}#0")], 1, "{step} ran again");
    }
    let snapshot = journal.load_run("gated").await.unwrap().unwrap();
    assert_eq!(snapshot.steps.len(), 3);
    assert_eq!(journal.lease_history("gated").await.unwrap().len(), 1);

    // The listener reconnected: a run submitted now still wakes a completer
    // that polls once an hour.
    let completer = Completer::new(&rt)
        .poll_interval(Duration::from_secs(3600))
        .register(workflow!(Effects::pipeline), effects.clone())
        .unwrap()
        .start();
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    let client = Client::new(journal.clone()).poll_interval(Duration::from_secs(3600));
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        client.run(&PIPELINE, "after-reconnect", (3,)),
    )
    .await
    .expect("the reconnected listeners must wake the completer and the client");
    assert_eq!(outcome.unwrap(), Ok(expected_pipeline(3)));
    completer.shutdown().await.unwrap();
}

// ---- worker processes killed mid-way ----

const WORKERS: usize = 3;
const RUNS: u64 = 1_000;
/// The workers' lease: the killed worker's runs wait this long at most.
const WORKER_LEASE: Duration = Duration::from_secs(2);

/// Not a test: one of the worker processes of `many_worker_processes_...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn pipeline_worker_child() {
    let (url, schema) = child_env();
    let role = std::env::var(ROLE_VAR).unwrap();
    let effects = Arc::new(Effects::connect(&url, &schema).await);
    let journal = PostgresJournal::builder(&url)
        .schema(&schema)
        .application_name(format!("resumable-{role}"))
        .open()
        .await
        .unwrap();
    let rt = Runtime::builder(journal)
        .worker_id(role)
        .lease_duration(WORKER_LEASE)
        .build();
    let completer = Completer::new(&rt)
        .concurrency(16)
        .poll_interval(Duration::from_millis(250))
        .register(workflow!(Effects::pipeline), effects)
        .unwrap()
        .start();
    // Done when no run is left incomplete.
    let incomplete = RunFilter {
        state: Some(RunState::Incomplete),
        limit: Some(1),
        ..RunFilter::default()
    };
    while !rt.list_runs(&incomplete).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = completer.shutdown().await.unwrap();
    println!("finished {}", report.finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_worker_processes_with_one_killed_complete_every_run_once() {
    let Some(schema) = TestSchema::new("many_worker_processes") else {
        return;
    };
    let effects = effects_for(&schema).await;
    let journal = Arc::new(schema.journal().await);
    let client = Client::new(journal.clone());
    let started = Instant::now();
    futures::stream::iter(0..RUNS)
        .map(|n| {
            let client = &client;
            async move { client.submit(&PIPELINE, format!("run-{n}"), (n,)).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let submitted = started.elapsed();

    let mut workers: Vec<KillOnDrop> = (0..WORKERS)
        .map(|i| {
            let child = child_command("pipeline_worker_child", &schema)
                .env(ROLE_VAR, format!("worker-{i}"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            KillOnDrop(Some(child))
        })
        .collect();
    let completed = async || {
        let filter = RunFilter {
            state: Some(RunState::Completed),
            ..RunFilter::default()
        };
        journal.list_runs(&filter).await.unwrap().len() as u64
    };
    // Kill worker 0 while it executes runs: its leases expire unreleased.
    eventually(
        "a fifth of the runs to complete",
        Duration::from_secs(300),
        async || completed().await >= RUNS / 5,
    )
    .await;
    let killed_at = completed().await;
    drop(workers.remove(0)); // SIGKILL
    // And cut another worker off the database: it reconnects and goes on.
    let admin = schema.connect().await;
    let cut: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'resumable-worker-1') AS t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cut >= 1, "worker-1 must have had connections to terminate");
    eventually(
        "every run to complete",
        Duration::from_secs(300),
        async || completed().await == RUNS,
    )
    .await;
    let duration = started.elapsed();
    let mut finished_by_survivors = 0;
    for worker in workers {
        let out = worker.wait_with_output();
        assert!(out.status.success(), "a worker process failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        finished_by_survivors += text
            .lines()
            .find_map(|l| l.split("finished ").nth(1)?.parse::<u64>().ok())
            .expect("a worker reports what it finished");
    }

    // Every run completed with the right outcome; every step recorded once.
    let counts = effects.counts().await;
    let mut taken_over = 0;
    let mut re_executed = 0;
    for n in 0..RUNS {
        let key = format!("run-{n}");
        let snapshot = journal.load_run(&key).await.unwrap().unwrap();
        let outcome: Result<u64, Failed> = client.wait(&PIPELINE, &key).await.unwrap();
        assert_eq!(outcome, Ok(expected_pipeline(n)), "{key}");
        assert_eq!(snapshot.steps.len() as u64, STEPS, "{key}");
        let history = journal.lease_history(&key).await.unwrap();
        assert_leases_never_overlap(&key, &history);
        let held_by_killed = history.iter().any(|l| l.owner == "worker-0");
        let killed_unreleased = history
            .iter()
            .any(|l| l.owner == "worker-0" && l.released_at.is_none());
        taken_over += killed_unreleased as u32;
        for step in &snapshot.steps {
            assert_eq!(step.state, StepState::Completed, "{key} {}", step.step_id);
            // Recorded under a lease the history knows, held by a worker.
            let lease = &history[step.epoch as usize - 1];
            assert!(lease.owner.starts_with("worker-"), "{key}: {lease:?}");
            let executions = counts[&format!("{key}/{}", step.step_id)];
            assert!(executions >= 1);
            if executions > 1 {
                // At least once: only a step the killed worker was executing runs again.
                assert!(
                    held_by_killed,
                    "{key} {} ran {executions} times",
                    step.step_id
                );
                re_executed += 1;
            }
        }
    }
    assert!(
        taken_over > 0,
        "the killed worker must have left runs for the others to take over"
    );
    println!(
        "{RUNS} runs x {STEPS} steps, {WORKERS} worker processes, 1 killed after {killed_at} runs \
         completed, {cut} connections of another terminated: {taken_over} runs taken over from it, {re_executed} step bodies re-executed, \
         {finished_by_survivors} runs finished by the survivors; submitted in {submitted:?}, \
         all complete in {duration:?}"
    );
}

// ---- child processes ----

fn child_env() -> (String, String) {
    let url = std::env::var(URL_VAR).expect("run by a test that sets the URL");
    let schema = std::env::var(SCHEMA_VAR).expect("run by a test that sets the schema");
    (url, schema)
}

fn child_command(entry: &str, schema: &TestSchema) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            entry,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URL_VAR, schema.url())
        .env(SCHEMA_VAR, schema.name())
        .env("RUST_BACKTRACE", "0");
    command
}

// ---- replies lost with their connection ----

/// A TCP proxy to the server that can lose the reply to one chosen
/// message: it forwards the message, then closes the client's connection
/// without relaying the answer.
struct LossyProxy {
    port: u16,
    trap: Arc<std::sync::Mutex<Option<Trap>>>,
}

/// Which message's reply to lose, and when to close the client's side.
struct Trap {
    /// Bytes the message contains (a run key, a worker id).
    needle: Vec<u8>,
    /// Messages with the needle to let through first.
    skip: usize,
    /// Close once the server answered (the statement is done), or at once
    /// (it may still be running when the client retries).
    after_answer: bool,
}

impl LossyProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let trap = Arc::new(std::sync::Mutex::new(None::<Trap>));
        let armed = trap.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, armed.clone()));
            }
        });
        LossyProxy { port, trap }
    }

    /// Loses the reply to the next message that contains `needle`, once
    /// the server has answered it.
    fn lose_reply_to(&self, needle: &str) {
        self.arm(needle, 0, true);
    }

    fn arm(&self, needle: &str, skip: usize, after_answer: bool) {
        *self.trap.lock().unwrap() = Some(Trap {
            needle: needle.as_bytes().to_vec(),
            skip,
            after_answer,
        });
    }

    fn fired(&self) -> bool {
        self.trap.lock().unwrap().is_none()
    }

    /// A connection string for `config`'s database through this proxy.
    fn url(&self, config: &tokio_postgres::Config) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.port,
            config.get_user().unwrap_or("postgres"),
            config.get_dbname().unwrap_or("postgres"),
        )
    }
}

/// A proxy in front of the test server, and the URL that goes through it.
async fn proxied(schema: &TestSchema) -> (LossyProxy, String) {
    let config: tokio_postgres::Config = schema.url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("{URL_VAR} must name a TCP host for this test"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let proxy = LossyProxy::start(format!("{host}:{port}")).await;
    let url = proxy.url(&config);
    (proxy, url)
}

/// Whether `message` springs the trap (disarming it).
fn springs(trap: &std::sync::Mutex<Option<Trap>>, message: &[u8]) -> Option<bool> {
    let mut armed = trap.lock().unwrap();
    let t = armed.as_mut()?;
    if !message.windows(t.needle.len()).any(|w| w == t.needle) {
        return None;
    }
    if t.skip > 0 {
        t.skip -= 1;
        return None;
    }
    armed.take().map(|t| t.after_answer)
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    trap: Arc<std::sync::Mutex<Option<Trap>>>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cut = Arc::new(AtomicBool::new(false));
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let answers = {
        let cut = cut.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 64 * 1024];
            while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                if cut.load(Ordering::SeqCst) || to_client.write_all(&buf[..n]).await.is_err() {
                    return; // drops the client's socket: the reply is lost
                }
            }
        })
    };
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
        let sprung = springs(&trap, &buf[..n]);
        if sprung.is_some() {
            cut.store(true, Ordering::SeqCst);
        }
        if to_server.write_all(&buf[..n]).await.is_err() {
            break;
        }
        match sprung {
            Some(true) => break,
            Some(false) => {
                // The client sees its connection close while the server
                // still runs the message (it finishes it all the same).
                answers.abort();
                return;
            }
            None => {}
        }
    }
    // The server still runs what it received; its answer goes nowhere.
    let _ = answers.await;
}

/// Every journal operation whose reply is lost with its connection is
/// retried on a new one and has the effect of one call: no second lease,
/// no second record, no false refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_whose_reply_was_lost_take_effect_once() {
    use resumable::journal::RunState as State;
    let Some(schema) = TestSchema::new("operations_whose_reply_was_lost") else {
        return;
    };
    let (proxy, url) = proxied(&schema).await;
    let journal = PostgresJournal::builder(url)
        .schema(schema.name())
        .open()
        .await
        .unwrap();
    let key = "lost-replies";
    let t = Timestamp::now();
    let request = |owner: &str, now: i64| lease_request(t, owner, now);
    let run = journal_run(key);

    proxy.lose_reply_to(key);
    let opened = journal.open_run(run, request("first", 0)).await.unwrap();
    assert!(proxy.fired());
    let lease = opened
        .lease
        .expect("the retry finds the lease its lost attempt took");
    assert!(opened.created);
    assert_eq!((lease.epoch, opened.snapshot.run.executions), (1, 1));

    let step = |id: &str, out: &[u8]| Write::StepRecorded {
        step_id: id.to_owned(),
        seq: 0,
        state: StepState::Completed,
        output: out.to_vec(),
        error: None,
        attempts: 1,
        started_at: t,
        at: t,
    };
    proxy.lose_reply_to(key);
    journal.write(&lease, step("a#0", b"out")).await.unwrap();
    assert!(proxy.fired());
    // A genuine second record is still refused.
    let again = journal
        .write(&lease, step("a#0", b"other"))
        .await
        .unwrap_err();
    assert!(
        matches!(again, Error::StepAlreadyRecorded { .. }),
        "{again:?}"
    );

    proxy.lose_reply_to(key);
    let renewed = journal
        .renew(&lease, Timestamp(t.0 + 90_000))
        .await
        .unwrap();
    assert!(proxy.fired());
    assert_eq!(renewed.expires_at, Timestamp(t.0 + 90_000));

    let release = Write::Release {
        last_error: Some("stopped".into()),
        wake_at: Timestamp(t.0 + 10),
        failures: 0,
        wake_on_message: None,
        at: Timestamp(t.0 + 10),
    };
    proxy.lose_reply_to(key);
    journal.write(&lease, release).await.unwrap();
    assert!(proxy.fired());

    proxy.lose_reply_to("second");
    let claimed = journal.claim_due(request("second", 20), 10).await.unwrap();
    assert!(proxy.fired());
    assert_eq!(claimed.len(), 1);
    let (snapshot, lease2) = &claimed[0];
    assert_eq!((lease2.epoch, snapshot.run.executions), (2, 2));
    assert_eq!(snapshot.steps.len(), 1);

    let finish = Write::RunFinished {
        state: State::Completed,
        outcome: b"done".to_vec(),
        at: Timestamp(t.0 + 30),
    };
    proxy.lose_reply_to(key);
    journal.write(lease2, finish).await.unwrap();
    assert!(proxy.fired());

    let snapshot = journal.load_run(key).await.unwrap().unwrap();
    assert_eq!(snapshot.run.state, State::Completed);
    assert_eq!(snapshot.run.outcome.as_deref(), Some(&b"done"[..]));
    assert_eq!((snapshot.run.epoch, snapshot.run.executions), (2, 2));
    let history = journal.lease_history(key).await.unwrap();
    let owners: Vec<&str> = history.iter().map(|l| l.owner.as_str()).collect();
    assert_eq!(owners, ["first", "second"], "one lease per lease request");
    assert_leases_never_overlap(key, &history);
}

/// A run as a journal test creates it directly.
fn journal_run(key: &str) -> resumable::journal::NewRun {
    resumable::journal::NewRun {
        key: key.to_owned(),
        workflow: "wf".to_owned(),
        fingerprint: 7,
        input: b"input".to_vec(),
        deadline: None,
    }
}

/// A minute-long lease for `owner`, asked for `now` ms after `t`.
fn lease_request(t: Timestamp, owner: &str, now: i64) -> resumable::journal::LeaseRequest {
    resumable::journal::LeaseRequest {
        owner: owner.to_owned(),
        now: Timestamp(t.0 + now),
        until: Timestamp(t.0 + now + 60_000),
        workflows: None,
    }
}

/// A retry can overtake its first attempt: the reply was lost while the
/// statement still waited for a lock on the server. The retry waits for it
/// and returns the lease that attempt took, instead of finding the run
/// leased (to itself) and answering `Busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_overtakes_its_lost_first_attempt_returns_that_lease() {
    let Some(schema) = TestSchema::new("a_retry_that_overtakes_its_first_attempt") else {
        return;
    };
    let (proxy, url) = proxied(&schema).await;
    let journal = Arc::new(
        PostgresJournal::builder(url)
            .schema(schema.name())
            .open()
            .await
            .unwrap(),
    );
    let key = "overtaken";
    let t = Timestamp::now();
    let request = move |owner: &str, now: i64| lease_request(t, owner, now);
    let run = journal_run(key);
    // A run given back, free for the next lease.
    let first = journal
        .open_run(run.clone(), request("first", 0))
        .await
        .unwrap();
    let release = Write::Release {
        last_error: None,
        wake_at: Timestamp(t.0 + 1),
        failures: 0,
        wake_on_message: None,
        at: Timestamp(t.0 + 1),
    };
    journal.write(&first.lease.unwrap(), release).await.unwrap();

    // Hold the run row's lock, so that taking the lease has to wait.
    let mut admin = schema.connect().await;
    let tx = admin.transaction().await.unwrap();
    let runs = format!("\"{}\".resumable_runs", schema.name());
    tx.query(
        &format!("SELECT 1 FROM {runs} WHERE run_key = $1 FOR UPDATE"),
        &[&key],
    )
    .await
    .unwrap();
    // The owner's first message is the insert, which finds the run; the
    // second takes the lease: its connection closes while it waits.
    proxy.arm("overtaker", 1, false);
    let opening = tokio::spawn({
        let journal = journal.clone();
        async move { journal.open_run(run, request("overtaker", 10)).await }
    });
    let monitor = schema.connect().await;
    eventually(
        "the lost attempt and its retry to wait for the lock",
        Duration::from_secs(60),
        async || {
            let waiting: i64 = monitor
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0",
                    &[&schema.name()],
                )
                .await
                .unwrap()
                .get(0);
            waiting >= 2
        },
    )
    .await;
    assert!(proxy.fired());
    tx.commit().await.unwrap();

    let opened = opening.await.unwrap().unwrap();
    let lease = opened
        .lease
        .expect("the retry returns the lease its first attempt took");
    assert_eq!(lease.epoch, 2);
    assert!(!opened.created);
    let history = journal.lease_history(key).await.unwrap();
    let owners: Vec<&str> = history.iter().map(|l| l.owner.as_str()).collect();
    assert_eq!(
        owners,
        ["first", "overtaker"],
        "one lease per lease request"
    );
    journal
        .renew(&lease, Timestamp(t.0 + 90_000))
        .await
        .expect("the lease returned is the current one");
}
