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

/// Property cases: `PROPTEST_CASES` if set (for a long run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

/// Runs `future` to its end on a tokio runtime of its own, with two workers
/// (a property case is a plain function).
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

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
    assert_eq!(
        info.status,
        RunStatus::DeadLettered,
        "{name}: refused, not wrapped"
    );
    assert!(info.last_error.unwrap().contains("last epoch"), "{name}");
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
        "UPDATE resumable_steps SET state = 'bogus'
           WHERE run_id = (SELECT id FROM resumable_runs WHERE run_key = 'bad-step-run');
         UPDATE resumable_runs SET epoch = -1 WHERE run_key = 'bad-epoch-run';
         UPDATE resumable_runs SET executions = -5 WHERE run_key = 'bad-counter-run';",
    )
    .unwrap();
    check(&rt, &counter, "sqlite").await;
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
        "UPDATE \"{s}\".resumable_steps SET state = 'bogus'
           WHERE run_id = (SELECT id FROM \"{s}\".resumable_runs WHERE run_key = 'bad-step-run');
         UPDATE \"{s}\".resumable_runs SET epoch = 9223372036854775807 WHERE run_key = 'bad-epoch-run';
         UPDATE \"{s}\".resumable_runs SET executions = -5 WHERE run_key = 'bad-counter-run';"
    );
    schema.connect().await.batch_execute(&sql).await.unwrap();
    check(&rt, &counter, "postgres").await;
}

// ---- random and mutated records through the public decode path ----

mod records {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use resumable::journal::{LeaseRequest, NewRun, Write};
    use resumable::{Error, Journal, MemoryJournal, Runtime, Slot, Timestamp, resumable, step};
    use serde::{Deserialize, Serialize};

    /// A shape with every kind of serde value: strings, sequences, maps,
    /// options, enums of every variant form, recursion.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Tree {
        name: String,
        children: Vec<Tree>,
        tags: BTreeMap<String, Option<Vec<u8>>>,
        kind: Kind,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub enum Kind {
        #[default]
        Leaf,
        Weighted(f64),
        Pair(u64, i16),
        Named {
            label: String,
            next: Option<Box<Tree>>,
        },
    }

    pub struct Forest;

    impl Forest {
        #[resumable(name = "forest")]
        pub async fn grow(&self, seed: u32) -> Result<Tree, String> {
            let tree = step!("tree", {
                Tree {
                    name: format!("t{seed}"),
                    ..Tree::default()
                }
            });
            Ok(tree)
        }
    }

    /// A valid record of a deep, varied tree: mutations start from it.
    fn valid_payload() -> Vec<u8> {
        let leaf = Tree {
            name: "leaf".into(),
            kind: Kind::Pair(7, -3),
            ..Tree::default()
        };
        let tree = Tree {
            name: "root".into(),
            children: vec![leaf.clone(), leaf.clone()],
            tags: [("a".to_string(), Some(vec![1, 2])), ("b".into(), None)].into(),
            kind: Kind::Named {
                label: "x".into(),
                next: Some(Box::new(leaf)),
            },
        };
        <resumable::Bincode as resumable::Codec>::encode(&tree).unwrap()
    }

    /// `payload` framed as record format 2 by bincode, with a correct
    /// checksum, so that it reaches the decoder.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let name = b"bincode2";
        let mut checked = vec![name.len() as u8];
        checked.extend_from_slice(name);
        checked.extend_from_slice(payload);
        let mut record = vec![2];
        record.extend_from_slice(&crc32(&checked).to_le_bytes());
        record.extend_from_slice(&checked);
        record
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// Which journaled value a forged record stands for.
    #[derive(Debug, Clone, Copy)]
    pub enum Forged {
        /// Step `tree#0`'s output.
        Output,
        /// Step `tree#0`'s error (a step that failed for good).
        Error,
        /// The run's outcome.
        Outcome,
    }

    impl Forged {
        fn slot(self) -> Slot {
            match self {
                Forged::Outcome => Slot::Outcome,
                _ => Slot::Step("tree#0".into()),
            }
        }
    }

    /// Journals `record` as `forged` in run `r`, then asks for the run again,
    /// which decodes it.
    fn replay(forged: Forged, record: Vec<u8>) -> resumable::Result<Result<Tree, String>> {
        super::block_on(async {
            let journal = std::sync::Arc::new(MemoryJournal::new());
            let rt = Runtime::new(journal.clone());
            rt.submit("r", Forest.grow(1)).await.unwrap();
            let stored = journal.load_run("r").await.unwrap().unwrap().run;
            let new = NewRun {
                key: "r".into(),
                workflow: stored.workflow,
                fingerprint: stored.fingerprint,
                input: stored.input,
                deadline: None,
            };
            let request = LeaseRequest::new("forger", std::time::Duration::from_secs(60));
            let lease = journal.open_run(new, request).await.unwrap().lease.unwrap();
            let now = Timestamp::now();
            let write = match forged {
                Forged::Outcome => Write::RunFinished {
                    state: resumable::RunState::Completed,
                    outcome: record,
                    at: now,
                },
                _ => Write::StepRecorded {
                    step_id: "tree#0".into(),
                    seq: 0,
                    state: match forged {
                        Forged::Error => resumable::journal::StepState::Failed,
                        _ => resumable::journal::StepState::Completed,
                    },
                    output: record,
                    error: None,
                    attempts: 1,
                    started_at: now,
                    at: now,
                },
            };
            journal.write(&lease, write).await.unwrap();
            if !matches!(forged, Forged::Outcome) {
                let release = Write::Release {
                    last_error: None,
                    wake_at: now,
                    failures: 0,
                    wake_on_message: None,
                    at: now,
                };
                journal.write(&lease, release).await.unwrap();
            }
            rt.run("r", Forest.grow(1)).await
        })
    }

    /// What any record may do: decode, or fail with a typed error naming
    /// the run and the value.
    fn check(
        forged: Forged,
        outcome: resumable::Result<Result<Tree, String>>,
    ) -> Result<(), TestCaseError> {
        match outcome {
            Ok(_) => Ok(()),
            Err(
                Error::Decode { run, slot, .. }
                | Error::Corrupted { run, slot, .. }
                | Error::UnknownRecordVersion { run, slot, .. }
                | Error::CodecMismatch { run, slot, .. }
                | Error::PayloadTooLarge { run, slot, .. },
            ) => {
                prop_assert_eq!(run, "r");
                prop_assert_eq!(slot, forged.slot());
                Ok(())
            }
            Err(other) => Err(TestCaseError::fail(format!("untyped: {other:?}"))),
        }
    }

    /// A forged input: a completer takes the run, and it either completes
    /// or is dead-lettered at once with an error naming its input.
    fn forged_input(record: Vec<u8>) -> Result<(), TestCaseError> {
        super::block_on(async {
            let journal = std::sync::Arc::new(MemoryJournal::new());
            let rt = Runtime::new(journal.clone());
            let meta = *resumable::workflow!(Forest::grow).meta();
            let new = NewRun {
                key: "r".into(),
                workflow: meta.name.into(),
                fingerprint: meta.fingerprint,
                input: record,
                deadline: None,
            };
            journal.create_run(new, Timestamp::now()).await.unwrap();
            resumable::Completer::new(&rt)
                .register(resumable::workflow!(Forest::grow), Forest)
                .unwrap()
                .run_until_idle()
                .await
                .unwrap();
            let info = rt.run_info("r").await.unwrap().unwrap();
            match info.status {
                resumable::RunStatus::Completed => Ok(()),
                resumable::RunStatus::DeadLettered => {
                    let error = info.last_error.unwrap_or_default();
                    prop_assert!(error.contains("input of run \"r\""), "{}", error);
                    Ok(())
                }
                other => Err(TestCaseError::fail(format!("left {other:?}"))),
            }
        })
    }

    fn forged() -> impl Strategy<Value = Forged> {
        prop_oneof![
            Just(Forged::Output),
            Just(Forged::Error),
            Just(Forged::Outcome)
        ]
    }

    proptest! {
        // A few thousand cases in CI; for a long run:
        // PROPTEST_CASES=200000 cargo test --test hostile records
        #![proptest_config(ProptestConfig {
            cases: super::cases(2_000),
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_bytes_in_a_valid_frame_are_decoded_or_refused(
            forged in forged(),
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            check(forged, replay(forged, framed(&payload)))?;
        }

        #[test]
        fn random_records_are_refused_or_decoded(
            forged in forged(),
            record in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            check(forged, replay(forged, record))?;
        }

        #[test]
        fn random_inputs_complete_or_are_dead_lettered(
            framed_payload in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            forged_input(if framed_payload { framed(&bytes) } else { bytes })?;
        }

        #[test]
        fn mutated_records_are_decoded_or_refused(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let mut payload = valid_payload();
            for (at, byte, kind) in edits {
                let i = at.index(payload.len() + 1);
                match kind {
                    0 if i < payload.len() => payload[i] = byte,
                    1 => payload.insert(i, byte),
                    _ if i < payload.len() => { payload.remove(i); }
                    _ => payload.push(byte),
                }
            }
            check(Forged::Output, replay(Forged::Output, framed(&payload)))?;
        }
    }

    #[test]
    fn the_valid_record_replays() {
        let outcome = replay(Forged::Output, framed(&valid_payload()))
            .unwrap()
            .unwrap();
        assert_eq!(outcome.name, "root");
    }
}

// ---- run and step rows tampered with by SQL ----

mod rows {
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;
    use resumable::{Durability, Journal, RunFilter, RunStatus, Runtime, SqliteJournal, workflow};
    use rusqlite::types::Value;

    use super::Counter;

    /// A column of a run or step row, and a value of any SQL type for it.
    fn tamper() -> impl Strategy<Value = (&'static str, &'static str, Value)> {
        let run_columns = prop::sample::select(vec![
            "state",
            "epoch",
            "executions",
            "failures",
            "wake_at",
            "lease_owner",
            "lease_expires_at",
            "fingerprint",
            "input",
            "outcome",
            "workflow",
            "deadline",
            "cancel_requested_at",
            "created_at",
        ]);
        let step_columns = prop::sample::select(vec![
            "state",
            "seq",
            "attempts",
            "epoch",
            "output",
            "retry_at",
            "step_id",
            "started_at",
        ]);
        let value = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            prop::sample::select(vec![
                "completed",
                "incomplete",
                "failed",
                "retrying",
                "dead_lettered",
                "bogus",
                "",
            ])
            .prop_map(|s| Value::Text(s.to_owned())),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Blob),
            any::<f64>().prop_map(Value::Real),
        ];
        prop_oneof![
            (Just("resumable_runs"), run_columns, value.clone()),
            (Just("resumable_steps"), step_columns, value),
        ]
        .prop_map(|(table, column, value)| (table, column, value))
    }

    /// Set by any panic, on any thread (a completer's tasks included).
    static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// One tampered run beside good ones: the good ones all finish, nothing
    /// panics, and the journal answers every question with a value or a
    /// typed error.
    fn check(case: impl FnOnce() -> Result<(), TestCaseError>) -> Result<(), TestCaseError> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
                default(info);
            }));
        });
        let outcome = case();
        prop_assert!(
            !PANICKED.load(std::sync::atomic::Ordering::SeqCst),
            "something panicked"
        );
        outcome
    }

    /// The condition matching the victim's rows in `table`: its run row, or
    /// its steps (which refer to it by id, looked up in `runs`).
    fn victim(table: &str, runs: &str) -> String {
        match table {
            "resumable_runs" => "run_key = 'victim'".to_owned(),
            _ => format!("run_id = (SELECT id FROM {runs} WHERE run_key = 'victim')"),
        }
    }

    fn run_tampered(table: &str, column: &str, value: Value) -> Result<(), TestCaseError> {
        super::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal.db");
            let journal = SqliteJournal::builder(&path)
                .durability(Durability::ProcessCrash)
                .open()
                .await
                .unwrap();
            scenario(Arc::new(journal), async || {
                let conn = rusqlite::Connection::open(&path).unwrap();
                let victim = victim(table, "resumable_runs");
                let sql = format!("UPDATE {table} SET {column} = ?1 WHERE {victim}");
                // A value a column refuses (NULL in a NOT NULL column) is no tampering.
                let _ = conn.execute(&sql, [value]);
            })
            .await
        })
    }

    /// The same on PostgreSQL, in a schema of its own per case.
    #[cfg(all(feature = "postgres", feature = "conformance"))]
    fn run_tampered_postgres(table: &str, column: &str, value: Value) -> Result<(), TestCaseError> {
        let Some(schema) = resumable::conformance::postgres::TestSchema::new("tampered_rows")
        else {
            return Ok(());
        };
        super::block_on(async {
            let journal = schema.journal().await;
            let literal = match &value {
                Value::Null => "NULL".to_owned(),
                Value::Integer(i) => i.to_string(),
                Value::Real(f) if f.is_finite() => format!("{f:e}"),
                Value::Real(_) => "'NaN'".to_owned(),
                Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
                Value::Blob(b) => {
                    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                    format!("'\\x{hex}'::bytea")
                }
            };
            let s = schema.name();
            let victim = victim(table, &format!("\"{s}\".resumable_runs"));
            let sql = format!("UPDATE \"{s}\".{table} SET {column} = {literal} WHERE {victim}");
            let client = schema.connect().await;
            scenario(Arc::new(journal), async || {
                // A value of the wrong type for the column is no tampering.
                let _ = client.batch_execute(&sql).await;
            })
            .await
        })
    }

    /// Three good runs and a forked `victim`, whose row `tamper` changes;
    /// then a completer runs, and questions are asked about the victim.
    async fn scenario(
        journal: Arc<dyn Journal>,
        tamper: impl AsyncFnOnce(),
    ) -> Result<(), TestCaseError> {
        let rt = Runtime::new(journal.clone());
        let counter = Arc::new(Counter::default());
        rt.run("victim-source", counter.count(0))
            .await
            .unwrap()
            .unwrap();
        rt.runs().fork("victim-source", 1, "victim").await.unwrap();
        for n in 0..3 {
            rt.submit(format!("good-{n}"), counter.count(n))
                .await
                .unwrap();
        }
        tamper().await;
        let completer = resumable::Completer::new(&rt)
            .register(workflow!(Counter::count), counter.clone())
            .unwrap()
            .run_until_idle();
        match tokio::time::timeout(Duration::from_secs(30), completer).await {
            Err(_) => return Err(TestCaseError::fail("the completer hung")),
            Ok(Err(err)) => return Err(TestCaseError::fail(format!("claims stopped: {err}"))),
            Ok(Ok(_)) => {}
        }
        for n in 0..3 {
            let info = rt.run_info(&format!("good-{n}")).await.unwrap().unwrap();
            prop_assert_eq!(info.status, RunStatus::Completed);
        }
        // Questions about the tampered run get answers or typed errors.
        let _ = rt.run_info("victim").await;
        let _ = rt.list_runs(&RunFilter::default()).await;
        let _ = rt.runs().cancel("victim").await;
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: super::cases(200),
            ..ProptestConfig::default()
        })]

        #[test]
        fn a_tampered_row_never_stops_the_other_runs((table, column, value) in tamper()) {
            check(|| run_tampered(table, column, value))?;
        }
    }

    #[cfg(all(feature = "postgres", feature = "conformance"))]
    proptest! {
        // A schema per case: fewer cases by default.
        #![proptest_config(ProptestConfig {
            cases: super::cases(40),
            ..ProptestConfig::default()
        })]

        #[test]
        fn a_tampered_row_never_stops_the_other_runs_on_postgres((table, column, value) in tamper()) {
            check(|| run_tampered_postgres(table, column, value))?;
        }
    }
}
