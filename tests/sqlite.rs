//! Real process deaths on the SQLite journal: a child process (this test
//! binary, re-run) aborts at every crash point of a three-step workflow;
//! then the run is resumed by the client or by a Completer.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resumable::{Completer, Error, RunStatus, Runtime, SqliteJournal, resumable, step, workflow};

const CHILD_DIR: &str = "RESUMABLE_CRASH_DIR";
const CHILD_KEY: &str = "RESUMABLE_CRASH_KEY";
const CHILD_POINT: &str = "RESUMABLE_CRASH_POINT";
/// The crashing child's lease: short, so its run is free again soon.
const LEASE: Duration = Duration::from_millis(300);
/// The lease of the workers that resume: long, so a loaded machine cannot
/// make them lose a run they are executing.
const RESUMER_LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("order failed")]
struct OrderError;

/// Side effects go to a file, so they survive the process that made them.
struct Shop {
    dir: PathBuf,
    crash_at: Option<u32>,
}

impl Shop {
    fn effect(&self, run: &str, what: &str) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("effects.log"))
            .unwrap();
        // One write per line: processes appending together must not interleave.
        log.write_all(format!("{run} {what}\n").as_bytes()).unwrap();
    }

    fn crash(&self, point: u32) {
        if self.crash_at == Some(point) {
            std::process::abort();
        }
    }

    #[resumable]
    async fn order(&self, id: u32) -> Result<String, OrderError> {
        self.crash(0);
        let a = step!("one", |s| {
            self.effect(s.run_key(), "one");
            self.crash(1);
            format!("{id}-1")
        });
        self.crash(2);
        let b = step!("two", |s| {
            self.effect(s.run_key(), "two");
            self.crash(3);
            format!("{a}-2")
        });
        self.crash(4);
        let c = step!("three", |s| {
            self.effect(s.run_key(), "three");
            self.crash(5);
            format!("{b}-3")
        });
        self.crash(6);
        Ok(c)
    }
}

/// How often each step's side effect has happened once the run completes,
/// after a crash at each point: twice only for a step whose effect happened
/// but whose output was not journaled yet.
const EXPECTED: [(u32, [usize; 3]); 7] = [
    (0, [1, 1, 1]), // before anything
    (1, [2, 1, 1]), // after one's effect, before it was journaled
    (2, [1, 1, 1]), // after one was journaled
    (3, [1, 2, 1]),
    (4, [1, 1, 1]),
    (5, [1, 1, 2]),
    (6, [1, 1, 1]), // after three was journaled, before the outcome
];

fn effects(dir: &Path, run: &str) -> [usize; 3] {
    let log = std::fs::read_to_string(dir.join("effects.log")).unwrap_or_default();
    let count = |what: &str| {
        log.lines()
            .filter(|l| *l == format!("{run} {what}"))
            .count()
    };
    [count("one"), count("two"), count("three")]
}

async fn sqlite_runtime(dir: &Path, lease: Duration) -> Runtime {
    let journal = SqliteJournal::open(dir.join("journal.db")).await.unwrap();
    Runtime::builder(journal)
        .lease_duration(lease)
        .default_retry(common::FAST)
        .build()
}

/// Not a test: the child process of the crash tests (run with `--ignored`).
#[tokio::test]
#[ignore = "entry point of the crash tests' child process"]
async fn crash_child() {
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("run by the crash tests"));
    let key = std::env::var(CHILD_KEY).unwrap();
    let point: u32 = std::env::var(CHILD_POINT).unwrap().parse().unwrap();
    let rt = sqlite_runtime(&dir, LEASE).await;
    let shop = Shop {
        dir: dir.clone(),
        crash_at: Some(point),
    };
    let _ = rt.run(key, shop.order(7)).await;
    unreachable!("the child must have aborted at point {point}");
}

fn crash_in_child(dir: &Path, key: &str, point: u32) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_KEY, key)
        .env(CHILD_POINT, point.to_string())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
        .status;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(6),
        "the child should die of SIGABRT at point {point}, got {status}"
    );
}

/// Resumes like a client that retries until the dead worker's lease expires.
async fn resume(rt: &Runtime, shop: &Shop, key: &str) -> Result<String, OrderError> {
    loop {
        match rt.run(key, shop.order(7)).await {
            Err(Error::Busy { .. }) => tokio::time::sleep(LEASE / 3).await,
            other => return other.unwrap(),
        }
    }
}

#[tokio::test]
async fn a_client_retry_completes_the_run_after_a_crash_at_every_point() {
    for (point, expected) in EXPECTED {
        let dir = tempfile::tempdir().unwrap();
        let key = format!("order-{point}");
        crash_in_child(dir.path(), &key, point);
        let rt = sqlite_runtime(dir.path(), RESUMER_LEASE).await;
        let shop = Shop {
            dir: dir.path().to_owned(),
            crash_at: None,
        };
        assert_eq!(
            resume(&rt, &shop, &key).await,
            Ok("7-1-2-3".to_string()),
            "crash point {point}"
        );
        assert_eq!(
            effects(dir.path(), &key),
            expected,
            "side effects after a crash at point {point}"
        );
        // And it stays done.
        assert_eq!(resume(&rt, &shop, &key).await, Ok("7-1-2-3".to_string()));
        assert_eq!(effects(dir.path(), &key), expected);
        let info = rt.run_info(&key).await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Completed);
        assert_eq!(info.executions, 2, "one execution died, one finished");
    }
}

#[tokio::test]
async fn the_completer_finishes_runs_left_by_killed_processes() {
    let dir = tempfile::tempdir().unwrap();
    for (point, _) in EXPECTED {
        crash_in_child(dir.path(), &format!("orphan-{point}"), point);
    }
    let rt = sqlite_runtime(dir.path(), RESUMER_LEASE).await;
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let shop = Shop {
        dir: dir.path().to_owned(),
        crash_at: None,
    };
    let report = Completer::new(&rt)
        .register(workflow!(Shop::order), shop)
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!(report.finished, EXPECTED.len() as u64);
    for (point, expected) in EXPECTED {
        let key = format!("orphan-{point}");
        assert_eq!(
            rt.run_info(&key).await.unwrap().unwrap().status,
            RunStatus::Completed,
            "{key}"
        );
        assert_eq!(effects(dir.path(), &key), expected, "{key}");
    }
}

/// Watches that no run is ever executed by two workers at once.
#[derive(Default)]
struct Guard {
    active: Mutex<HashMap<String, u32>>,
    overlaps: AtomicU32,
    bodies: Mutex<HashMap<String, u32>>,
}

impl Guard {
    async fn exclusive(&self, run: &str) {
        {
            let mut active = self.active.lock().unwrap();
            let n = active.entry(run.to_owned()).or_default();
            *n += 1;
            if *n > 1 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            *self
                .bodies
                .lock()
                .unwrap()
                .entry(run.to_owned())
                .or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        *self.active.lock().unwrap().get_mut(run).unwrap() -= 1;
    }

    #[resumable]
    async fn guarded(&self, n: u32) -> Result<u32, OrderError> {
        let a = step!("first", |s| {
            self.exclusive(s.run_key()).await;
            n
        });
        let b = step!("second", |s| {
            self.exclusive(s.run_key()).await;
            a + 1
        });
        Ok(b)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_completers_on_one_file_never_run_one_run_at_once() {
    const RUNS: u32 = 60;
    let dir = tempfile::tempdir().unwrap();
    let guard = Arc::new(Guard::default());
    let submitter = sqlite_runtime(dir.path(), RESUMER_LEASE).await;
    for i in 0..RUNS {
        submitter
            .submit(format!("run-{i}"), guard.guarded(i))
            .await
            .unwrap();
    }
    let completers = (0..2).map(|_| {
        let dir = dir.path().to_owned();
        let guard = guard.clone();
        tokio::spawn(async move {
            // Two journals on one file: two connections, as two processes would have.
            let rt = sqlite_runtime(&dir, RESUMER_LEASE).await;
            Completer::new(&rt)
                .concurrency(8)
                .register(workflow!(Guard::guarded), guard)
                .unwrap()
                .run_until_idle()
                .await
                .unwrap()
        })
    });
    let mut finished = 0;
    for completer in completers.collect::<Vec<_>>() {
        finished += completer.await.unwrap().finished;
    }
    assert_eq!(finished, u64::from(RUNS));
    assert_eq!(
        guard.overlaps.load(Ordering::SeqCst),
        0,
        "a run was executed by two workers at once"
    );
    let bodies = guard.bodies.lock().unwrap().clone();
    for i in 0..RUNS {
        assert_eq!(
            bodies.get(&format!("run-{i}")),
            Some(&2),
            "each step body ran once"
        );
        let out = submitter
            .run(format!("run-{i}"), guard.guarded(i))
            .await
            .unwrap();
        assert_eq!(out, Ok(i + 1));
    }
}

#[tokio::test]
async fn a_corrupted_record_in_the_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = "order-corrupt";
    crash_in_child(dir.path(), key, 4); // "one" and "two" are journaled
    let conn = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
    let changed = conn
        .execute(
            // Format version 1, then a checksum that does not match the payload.
            "UPDATE resumable_steps SET output = x'01deadbeef0368656c6c6f' WHERE run_id = (SELECT id FROM resumable_runs WHERE run_key = ?1) AND step_id = 'two#0'",
            [key],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let rt = sqlite_runtime(dir.path(), RESUMER_LEASE).await;
    let shop = Shop {
        dir: dir.path().to_owned(),
        crash_at: None,
    };
    let err = loop {
        match rt.run(key, shop.order(7)).await {
            Err(Error::Busy { .. }) => tokio::time::sleep(LEASE / 3).await,
            other => break other.unwrap_err(),
        }
    };
    match &err {
        Error::Corrupted { run, slot, .. } => {
            assert_eq!(
                (run.as_str(), slot),
                (key, &resumable::Slot::Step("two#0".into()))
            );
        }
        other => panic!("expected Corrupted, got {other}"),
    }
    assert_eq!(
        effects(dir.path(), key),
        [1, 1, 0],
        "nothing after the damaged record ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(
        SqliteJournal::open(dir.path().join("journal.db"))
            .await
            .unwrap(),
    );
    let rt = Runtime::new(journal.clone());
    let shop = Arc::new(Shop {
        dir: dir.path().to_owned(),
        crash_at: None,
    });
    let before = journal.stats();
    let runs: Vec<_> = (0..64)
        .map(|i| {
            let (rt, shop) = (rt.clone(), shop.clone());
            tokio::spawn(async move {
                rt.run(format!("g-{i}"), shop.order(i))
                    .await
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    for run in runs {
        run.await.unwrap();
    }
    let stats = journal.stats();
    let (commits, requests) = (
        stats.commits - before.commits,
        stats.requests - before.requests,
    );
    // open + 3 steps + outcome per run, all committed, in fewer transactions.
    assert!(requests >= 64 * 5, "{requests} requests");
    assert!(
        commits < requests,
        "no commit was shared: {commits} commits for {requests} requests"
    );
}

const COMPLETER_DIR: &str = "RESUMABLE_COMPLETER_DIR";

/// Not a test: a completer process of `two_completer_processes_...` (run with `--ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of a completer child process"]
async fn completer_child() {
    let dir = PathBuf::from(std::env::var(COMPLETER_DIR).expect("run by the completer test"));
    let rt = sqlite_runtime(&dir, RESUMER_LEASE).await;
    let shop = Shop {
        dir: dir.clone(),
        crash_at: None,
    };
    // Both processes start claiming together, so that they contend.
    while !dir.join("go").exists() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let report = Completer::new(&rt)
        .concurrency(4)
        .register(workflow!(Shop::order), shop)
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    println!("finished {}", report.finished);
}

#[tokio::test]
async fn two_completer_processes_on_one_file_run_every_step_once() {
    const RUNS: u32 = 200;
    let dir = tempfile::tempdir().unwrap();
    let rt = sqlite_runtime(dir.path(), RESUMER_LEASE).await;
    let shop = Shop {
        dir: dir.path().to_owned(),
        crash_at: None,
    };
    for i in 0..RUNS {
        rt.submit(format!("p-{i}"), shop.order(i)).await.unwrap();
    }
    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .args(["completer_child", "--exact", "--ignored", "--nocapture"])
            .env(COMPLETER_DIR, dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn()];
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let mut finished = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a completer process failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let by_child = text
            .lines()
            .find_map(|l| l.strip_prefix("finished ")?.parse::<u32>().ok())
            .expect("the child reports what it finished");
        println!("a completer process finished {by_child} runs");
        finished += by_child;
    }
    assert_eq!(
        finished, RUNS,
        "every run was finished by exactly one process"
    );
    for i in 0..RUNS {
        let key = format!("p-{i}");
        assert_eq!(
            effects(dir.path(), &key),
            [1, 1, 1],
            "{key}: a step ran twice"
        );
        let out = rt.run(key, shop.order(i)).await.unwrap();
        assert_eq!(out, Ok(format!("{i}-1-2-3")));
    }
}
