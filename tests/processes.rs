//! The run lifecycle across real processes: a cancel sent from one process
//! stops a run executing in another; a process killed with SIGKILL leaves
//! runs that a restarted process takes over at once; a worker process that
//! keeps dying on a run dead-letters it; processes opening one new SQLite
//! file together all succeed; a run sleeping when its process is killed is
//! finished by another process once due.
//!
//! Each child is this test binary re-run on one `#[ignore]`d entry point.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use resumable::{
    CommandOutcome, Completer, Journal, RunState, RunStatus, Runtime, SqliteJournal, WorkflowRef,
    child, race, recv, resumable, sleep, step, workflow,
};

/// The directory a child shares with its parent.
const DIR_VAR: &str = "RESUMABLE_PROCESSES_DIR";
/// The run key a child works on.
const KEY_VAR: &str = "RESUMABLE_PROCESSES_KEY";
/// The PostgreSQL server and schema a child uses, if not the SQLite file.
const URL_VAR: &str = "RESUMABLE_TEST_POSTGRES_URL";
const SCHEMA_VAR: &str = "RESUMABLE_PROCESSES_SCHEMA";

/// The child workflow `Worker::family` starts.
const SLOW: WorkflowRef<(), Result<u32, String>> = WorkflowRef::named("processes::slow");

/// Steps that say, in a file the parent reads, that they ran.
struct Worker {
    dir: PathBuf,
}

impl Worker {
    #[resumable]
    async fn order(&self, n: u32) -> Result<u32, String> {
        let reserved = step!("reserve", { self.mark("reserve") + n });
        let charged = step!("charge", {
            self.mark("charge");
            // Held until the parent says go.
            while !self.dir.join("go").exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            reserved + 1
        });
        let shipped = step!("ship", { self.mark("ship") + charged + 1 });
        Ok(shipped)
    }

    /// Kills its process before its first step while the file `poison` exists.
    #[resumable]
    async fn poison(&self) -> Result<u32, String> {
        if self.dir.join("poison").exists() {
            self.mark("abort");
            std::process::abort();
        }
        let done = step!("done", { self.mark("done") + 1 });
        Ok(done)
    }

    /// One quick step.
    #[resumable]
    async fn quick(&self, n: u32) -> Result<u32, String> {
        let done = step!("mark", { self.mark(&format!("quick-{n}")) + n });
        Ok(done)
    }

    /// A step, a durable sleep of three seconds, a step.
    #[resumable]
    async fn nap(&self) -> Result<u32, String> {
        let before = step!("before", { self.mark("before") + 1 });
        sleep!("nap", Duration::from_secs(3));
        let after = step!("after", { self.mark("after") + before });
        Ok(after)
    }

    /// A step, a receive on topic `go`, a step that marks what it received.
    #[resumable(name = "processes::approve")]
    async fn approve(&self) -> Result<u32, String> {
        step!("before", { self.mark("before") });
        let n: u32 = recv!("go");
        let after = step!("after", { self.mark(&format!("after-{n}")) + n });
        Ok(after)
    }

    /// Starts a child (`Worker::slow`) and takes a step with its outcome.
    #[resumable(name = "processes::family")]
    async fn family(&self) -> Result<u32, String> {
        let n = child!("slow", SLOW, ())?;
        let after = step!("after", { self.mark("parent-after") + n });
        Ok(after)
    }

    /// A step held until the parent test says go.
    #[resumable(name = "processes::slow")]
    async fn slow(&self) -> Result<u32, String> {
        let n = step!("work", {
            self.mark("child-work");
            while !self.dir.join("go").exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            5
        });
        Ok(n)
    }

    /// A race: branch A records a step, then (while the file `slow` exists)
    /// works a second more; branch B sleeps 50 ms durably. Then a pause.
    #[resumable(name = "processes::racer")]
    async fn racer(&self) -> Result<String, String> {
        let won = race!(
            "a_or_b",
            async {
                step!("a", { self.mark("a") });
                // Not journaled on purpose: the test makes A slow, then fast.
                #[unjournaled]
                if self.dir.join("slow").exists() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok::<_, String>("a".to_string())
            },
            async {
                sleep!("b", Duration::from_millis(50));
                Ok("b".to_string())
            }
        )?;
        sleep!("pause", Duration::from_secs(2));
        Ok(won)
    }

    fn mark(&self, step: &str) -> u32 {
        let mut ran = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ran"))
            .unwrap();
        // One write: processes append to the file at the same time.
        ran.write_all(format!("{step}\n").as_bytes()).unwrap();
        ran.sync_all().unwrap();
        0
    }
}

fn ran(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("ran"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The journal a child or its parent opens: the PostgreSQL schema if the
/// child was given one, else the SQLite file in `dir`.
async fn open_journal(dir: &Path) -> Arc<dyn Journal> {
    #[cfg(feature = "postgres")]
    if let (Ok(url), Ok(schema)) = (std::env::var(URL_VAR), std::env::var(SCHEMA_VAR)) {
        let journal = resumable::PostgresJournal::builder(url)
            .schema(schema)
            .open()
            .await
            .unwrap();
        return Arc::new(journal);
    }
    Arc::new(SqliteJournal::open(dir.join("journal.db")).await.unwrap())
}

fn child(entry: &str, dir: &Path, key: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            entry,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(KEY_VAR, key)
        .env_remove(SCHEMA_VAR)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

fn child_env() -> (PathBuf, String) {
    let dir = std::env::var(DIR_VAR).expect("run by a parent test");
    (PathBuf::from(dir), std::env::var(KEY_VAR).unwrap())
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn spawn(mut command: Command) -> Self {
        KillOnDrop(Some(command.spawn().unwrap()))
    }

    /// Waits for the child to exit, and returns what it printed.
    fn output(mut self) -> String {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (a minute at most: a hang guard, not a timing claim) until `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Not a test: runs `Worker::order` with default settings and prints the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn order_child() {
    let (dir, key) = child_env();
    let rt = Runtime::new(open_journal(&dir).await);
    let worker = Worker { dir: dir.clone() };
    let outcome = rt.run(key, worker.order(1)).await;
    println!("outcome: {outcome:?}");
}

/// Not a test: a completer with default settings but a dead-letter limit
/// of 3, finishing what it can, then printing the run's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn completer_child() {
    let (dir, key) = child_env();
    let rt = Runtime::builder(open_journal(&dir).await)
        .dead_letter_after(3)
        .build();
    Completer::new(&rt)
        .register(workflow!(Worker::poison), Worker { dir })
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    let info = rt.run_info(&key).await.unwrap().unwrap();
    println!("state: {:?}", info.status);
}

/// Not a test: a completer that finishes every `Worker::quick` run it finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn quick_worker_child() {
    let (dir, _) = child_env();
    let rt = Runtime::new(open_journal(&dir).await);
    let report = Completer::new(&rt)
        .concurrency(8)
        .register(workflow!(Worker::quick), Worker { dir })
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    println!("finished: {}", report.finished);
}

/// Not a test: a completer of `Worker::nap` runs that works until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn nap_worker_child() {
    let (dir, _) = child_env();
    let rt = Runtime::new(open_journal(&dir).await);
    let _completer = Completer::new(&rt)
        .poll_interval(Duration::from_millis(50))
        .register(workflow!(Worker::nap), Worker { dir })
        .unwrap()
        .start();
    std::future::pending::<()>().await;
}

/// Not a test: a completer of `Worker::approve` runs that works until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn approve_worker_child() {
    let (dir, _) = child_env();
    let rt = Runtime::new(open_journal(&dir).await);
    let _completer = Completer::new(&rt)
        .poll_interval(Duration::from_millis(50))
        .register(workflow!(Worker::approve), Worker { dir })
        .unwrap()
        .start();
    std::future::pending::<()>().await;
}

/// Not a test: a completer of `Worker::family` and `Worker::slow` runs that
/// works until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn family_worker_child() {
    let (dir, _) = child_env();
    let rt = Runtime::new(open_journal(&dir).await);
    let worker = Arc::new(Worker { dir });
    let _completer = Completer::new(&rt)
        .poll_interval(Duration::from_millis(50))
        .register(workflow!(Worker::family), worker.clone())
        .unwrap()
        .register(workflow!(Worker::slow), worker)
        .unwrap()
        .start();
    std::future::pending::<()>().await;
}

/// Not a test: a completer of `Worker::racer` runs that works until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a child process"]
async fn racer_worker_child() {
    let (dir, _) = child_env();
    let rt = Runtime::new(open_journal(&dir).await);
    let _completer = Completer::new(&rt)
        .poll_interval(Duration::from_millis(50))
        .register(workflow!(Worker::racer), Worker { dir })
        .unwrap()
        .start();
    std::future::pending::<()>().await;
}

/// Not a test: opens the SQLite file once the parent says go.
#[test]
#[ignore = "entry point of a child process"]
fn open_child() {
    let (dir, _) = child_env();
    while !dir.join("go").exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(SqliteJournal::open(dir.join("journal.db"))) {
        Ok(_) => println!("opened"),
        Err(err) => println!("failed: {err}"),
    }
}

/// A cancel sent by this process, through `journal`, stops the run that a
/// child process is executing (on the same SQLite file in `dir`, or on the
/// PostgreSQL schema `postgres`): the step in flight finishes and is
/// journaled, the next never starts, and the outcome is `Cancelled`.
async fn cancel_from_another_process(
    dir: &Path,
    journal: Arc<dyn Journal>,
    postgres: Option<(&str, &str)>,
) {
    let rt = Runtime::new(journal);
    let mut command = child("order_child", dir, "o");
    if let Some((url, schema)) = postgres {
        command.env(URL_VAR, url).env(SCHEMA_VAR, schema);
    }
    let child = KillOnDrop(Some(command.spawn().unwrap()));
    eventually("the child to start its charge step", || {
        ran(dir).contains(&"charge".to_owned())
    });
    assert_eq!(
        rt.runs().cancel("o").await.unwrap(),
        CommandOutcome::Requested
    );
    std::fs::write(dir.join("go"), "").unwrap();
    let out = child.output();
    assert!(
        out.contains("outcome: Err(Cancelled"),
        "the child's run is cancelled: {out}"
    );
    assert_eq!(ran(dir), ["reserve", "charge"], "ship never started");
    let info = rt.run_info("o").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Cancelled);
    assert!(
        info.step("charge#0").is_some(),
        "the step in flight was journaled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_process_stops_a_run_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path()).await;
    cancel_from_another_process(dir.path(), journal, None).await;
}

#[cfg(all(feature = "postgres", feature = "conformance"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_process_stops_a_run_on_postgres() {
    let Some(schema) =
        resumable::conformance::postgres::TestSchema::new("a_cancel_from_another_process")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(schema.journal().await);
    let postgres = Some((schema.url(), schema.name()));
    cancel_from_another_process(dir.path(), journal, postgres).await;
}

/// A process killed with SIGKILL mid-run leaves its run leased for 30 s
/// (the default). A process started after it on the same machine, with
/// default settings, takes the run over at once: told not to wait for busy
/// runs, it would fail with `Busy` if it had to wait out the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_process_takes_over_at_once_the_runs_of_a_killed_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = child("order_child", dir.path(), "o").spawn().unwrap();
    eventually("the child to start its charge step", || {
        ran(dir.path()).contains(&"charge".to_owned())
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::fs::write(dir.path().join("go"), "").unwrap();

    let journal = open_journal(dir.path()).await;
    let run = journal.load_run("o").await.unwrap().unwrap().run;
    assert!(
        run.is_leased_at(resumable::Timestamp::now()),
        "the killed process still holds the run's lease"
    );
    let rt = Runtime::builder(journal).wait_when_busy(false).build();
    let worker = Worker {
        dir: dir.path().to_owned(),
    };
    assert_eq!(rt.run("o", worker.order(1)).await.unwrap(), Ok(3));
    assert_eq!(
        ran(dir.path()),
        ["reserve", "charge", "charge", "ship"],
        "the recorded step replayed; the one in flight ran again"
    );
}

/// A worker process that dies on a run before recording anything, again
/// and again, dead-letters it: the completer of the process started after
/// the third death sets it aside without running its code, and no completer
/// takes it again until an operator resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_keeps_killing_its_worker_process_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("poison"), "").unwrap();
    let rt = Runtime::new(open_journal(dir.path()).await);
    let worker = Worker {
        dir: dir.path().to_owned(),
    };
    rt.submit("p", worker.poison()).await.unwrap();
    for death in 1..=3 {
        let status = child("completer_child", dir.path(), "p").status().unwrap();
        assert!(
            !status.success(),
            "worker process {death} must die on the run"
        );
    }
    assert_eq!(ran(dir.path()), ["abort", "abort", "abort"]);
    let out = KillOnDrop::spawn(child("completer_child", dir.path(), "p")).output();
    assert!(out.contains("state: DeadLettered"), "{out}");
    assert_eq!(ran(dir.path()).len(), 3, "the fourth execution ran no code");
    let info = rt.run_info("p").await.unwrap().unwrap();
    assert!(
        info.last_error
            .unwrap()
            .contains("without recording a step")
    );
    // Left alone by the next completer, until resumed.
    let out = KillOnDrop::spawn(child("completer_child", dir.path(), "p")).output();
    assert!(out.contains("state: DeadLettered"), "{out}");
    assert_eq!(ran(dir.path()).len(), 3);
    std::fs::remove_file(dir.path().join("poison")).unwrap();
    assert_eq!(
        rt.runs().resume("p").await.unwrap(),
        CommandOutcome::Done(RunState::Incomplete)
    );
    let out = KillOnDrop::spawn(child("completer_child", dir.path(), "p")).output();
    assert!(out.contains("state: Completed"), "{out}");
    assert_eq!(rt.run("p", worker.poison()).await.unwrap(), Ok(1));
}

/// A purge running in this process beside two worker processes busy on one
/// SQLite file deletes only finished runs: every run is completed, and each
/// is either purged or still there, completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_beside_worker_processes_loses_no_unfinished_run() {
    const RUNS: u32 = 300;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(open_journal(dir.path()).await);
    let worker = Worker {
        dir: dir.path().to_owned(),
    };
    for n in 0..RUNS {
        rt.submit(format!("q-{n}"), worker.quick(n)).await.unwrap();
    }
    let workers: Vec<KillOnDrop> = (0..2)
        .map(|_| KillOnDrop::spawn(child("quick_worker_child", dir.path(), "")))
        .collect();
    let mut purged = 0;
    let incomplete = resumable::RunFilter {
        state: Some(RunState::Incomplete),
        limit: Some(1),
        ..resumable::RunFilter::default()
    };
    loop {
        purged += rt.runs().purge(Duration::ZERO).await.unwrap();
        if rt.list_runs(&incomplete).await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let finished: u64 = workers
        .into_iter()
        .map(|w| {
            let out = w.output();
            let n = out
                .split("finished: ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next());
            n.unwrap_or_else(|| panic!("a worker failed: {out}"))
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(finished, u64::from(RUNS), "the workers finished every run");
    let mut marked = ran(dir.path());
    marked.sort();
    marked.dedup();
    assert_eq!(marked.len(), RUNS as usize, "every run's step ran");
    let left = rt
        .list_runs(&resumable::RunFilter::default())
        .await
        .unwrap();
    assert!(left.iter().all(|r| r.status == RunStatus::Completed));
    assert_eq!(
        purged + left.len() as u64,
        u64::from(RUNS),
        "each run purged or kept"
    );
}

/// Processes opening one new SQLite file at the same moment all succeed
/// (switching a new file to WAL takes a lock that others must wait for).
#[test]
fn processes_opening_one_new_sqlite_file_together_all_succeed() {
    const PROCESSES: usize = 6;
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let children: Vec<KillOnDrop> = (0..PROCESSES)
            .map(|_| KillOnDrop::spawn(child("open_child", dir.path(), "")))
            .collect();
        // Let them all start and wait, then release them together.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.path().join("go"), "").unwrap();
        for child in children {
            let out = child.output();
            assert!(out.contains("opened"), "round {round}: {out}");
        }
    }
}

/// A run sleeps (its wake time journaled, the run given back) in a worker
/// process that is then killed with SIGKILL; a completer in another process,
/// started afterwards, finishes it once the sleep is due, without running
/// the step before the sleep again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_sleeping_when_its_process_is_killed_is_finished_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(open_journal(dir.path()).await);
    let worker = Worker {
        dir: dir.path().to_owned(),
    };
    rt.submit("n", worker.nap()).await.unwrap();
    let mut child = child("nap_worker_child", dir.path(), "n").spawn().unwrap();
    let sleeping = || async {
        let info = rt.run_info("n").await.unwrap().unwrap();
        info.status == RunStatus::Waiting
    };
    let start = Instant::now();
    while !sleeping().await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run never slept"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(ran(dir.path()), ["before"]);

    let completer = Completer::new(&rt)
        .poll_interval(Duration::from_millis(50))
        .register(workflow!(Worker::nap), worker)
        .unwrap()
        .start();
    let start = Instant::now();
    loop {
        let info = rt.run_info("n").await.unwrap().unwrap();
        if info.status == RunStatus::Completed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "left {:?}",
            info.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    completer.shutdown().await.unwrap();
    assert_eq!(ran(dir.path()), ["before", "after"]);
}

/// Waits until run `key` has `status`, for a minute at most.
async fn wait_for_status(rt: &Runtime, key: &str, status: RunStatus) {
    let start = Instant::now();
    loop {
        let info = rt.run_info(key).await.unwrap().unwrap();
        if info.status == status {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "run {key} never reached {status:?}; it is {:?}",
            info.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A run waits for a message in a worker process that is then killed with
/// SIGKILL; while no worker runs, a sender sends it a message, retries the
/// same send, and sends a second message. A worker process started
/// afterwards delivers the first message exactly once: the step before the
/// receive does not run again, and the step after it sees that message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_the_receiver_is_down_is_delivered_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(open_journal(dir.path()).await);
    let worker = Worker {
        dir: dir.path().to_owned(),
    };
    rt.submit("a", worker.approve()).await.unwrap();
    let mut first = child("approve_worker_child", dir.path(), "a")
        .spawn()
        .unwrap();
    wait_for_status(&rt, "a", RunStatus::Waiting).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert_eq!(ran(dir.path()), ["before"]);

    const APPROVE: resumable::WorkflowRef<(), Result<u32, String>> =
        resumable::WorkflowRef::named("processes::approve");
    let client = rt.client();
    assert!(
        client
            .send(&APPROVE, "a", "go", &7u32, "first")
            .await
            .unwrap()
    );
    assert!(
        !client
            .send(&APPROVE, "a", "go", &7u32, "first")
            .await
            .unwrap()
    );
    assert!(
        client
            .send(&APPROVE, "a", "go", &8u32, "second")
            .await
            .unwrap()
    );

    let second = KillOnDrop::spawn(child("approve_worker_child", dir.path(), "a"));
    wait_for_status(&rt, "a", RunStatus::Completed).await;
    drop(second);
    assert_eq!(ran(dir.path()), ["before", "after-7"]);
    assert_eq!(client.outcome(&APPROVE, "a").await.unwrap(), Some(Ok(7)));
}

/// A worker process is killed with SIGKILL right after a parent run started
/// its child (the child is executing); a new worker process finishes both.
/// The parent adopts the child it started: one child run, whose outcome the
/// parent's next step sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_killed_after_starting_its_child_adopts_that_child() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(open_journal(dir.path()).await);
    let worker = Worker {
        dir: dir.path().to_owned(),
    };
    rt.submit("f", worker.family()).await.unwrap();
    let mut first = child("family_worker_child", dir.path(), "f")
        .spawn()
        .unwrap();
    eventually("the child run starts", || {
        ran(dir.path()).contains(&"child-work".to_owned())
    });
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert_eq!(rt.runs().children("f").await.unwrap().len(), 1);

    let second = KillOnDrop::spawn(child("family_worker_child", dir.path(), "f"));
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_for_status(&rt, "f", RunStatus::Completed).await;
    drop(second);
    let children = rt.runs().children("f").await.unwrap();
    assert_eq!(children.len(), 1, "one child, adopted: {children:?}");
    assert_eq!(children[0].status, RunStatus::Completed);
    let marks = ran(dir.path());
    assert_eq!(
        marks.iter().filter(|m| *m == "parent-after").count(),
        1,
        "{marks:?}"
    );
    const FAMILY: WorkflowRef<(), Result<u32, String>> = WorkflowRef::named("processes::family");
    assert_eq!(
        rt.client().outcome(&FAMILY, "f").await.unwrap(),
        Some(Ok(5))
    );
}

/// A race's winner (B: A was slow) is journaled by a worker process that is
/// then killed with SIGKILL; replayed by another process in which A would
/// now finish first (its step is recorded and it is no longer slow), the
/// run still takes B's branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_replayed_in_another_process_takes_the_recorded_branch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slow"), "").unwrap();
    let rt = Runtime::new(open_journal(dir.path()).await);
    let worker = Worker {
        dir: dir.path().to_owned(),
    };
    rt.submit("r", worker.racer()).await.unwrap();
    let mut first = child("racer_worker_child", dir.path(), "r")
        .spawn()
        .unwrap();
    wait_for_status(&rt, "r", RunStatus::Waiting).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(
        rt.run_info("r")
            .await
            .unwrap()
            .unwrap()
            .step("race:a_or_b#0")
            .is_some()
    );

    std::fs::remove_file(dir.path().join("slow")).unwrap();
    let second = KillOnDrop::spawn(child("racer_worker_child", dir.path(), "r"));
    wait_for_status(&rt, "r", RunStatus::Completed).await;
    drop(second);
    const RACER: WorkflowRef<(), Result<String, String>> = WorkflowRef::named("processes::racer");
    assert_eq!(
        rt.client().outcome(&RACER, "r").await.unwrap(),
        Some(Ok("b".to_string()))
    );
    assert_eq!(ran(dir.path()), ["a"], "A's step ran once");
}
