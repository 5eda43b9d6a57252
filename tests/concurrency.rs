//! Concurrent steps: identity by structure, not timing; replays that wait for
//! other branches; aborts that win over an outcome reached in the same poll.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{Misbehaving, memory_runtime};
use resumable::{Error, MemoryJournal, Runtime, resumable, step};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
enum E {
    #[error("invalid")]
    Invalid,
}

#[derive(Default)]
struct Fx {
    crash: AtomicBool,
    stores: AtomicU32,
}

impl Fx {
    /// Each item fetches, then stores. Item `i` yields `3 - i` times before
    /// its fetch finishes, so on the first run the items reach `store` in
    /// reverse order, while on replay every fetch is ready at once.
    #[resumable]
    async fn fan_out(&self, items: Vec<u32>) -> Result<Vec<String>, E> {
        let branches = items.iter().map(|&i| async move {
            let fetched = step!("fetch", {
                for _ in 0..(3 - i) {
                    tokio::task::yield_now().await;
                }
                i * 10
            });
            let stored = step!("store", |s| {
                self.stores.fetch_add(1, Ordering::SeqCst);
                format!("item {i} stored {fetched} as {}", s.step_id())
            });
            Ok::<_, E>(stored)
        });
        let stored = futures::future::try_join_all(branches).await?;
        if self.crash.load(Ordering::SeqCst) {
            panic!("crash after the fan-out");
        }
        Ok(stored)
    }
}

#[tokio::test]
async fn steps_in_concurrent_blocks_keep_their_identity_on_replay() {
    let (rt, _) = memory_runtime();
    let fx = Fx::default();
    fx.crash.store(true, Ordering::SeqCst);
    rt.run("fan", fx.fan_out(vec![0, 1, 2])).await.unwrap_err();
    fx.crash.store(false, Ordering::SeqCst);
    let out = rt
        .run("fan", fx.fan_out(vec![0, 1, 2]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out,
        [
            "item 0 stored 0 as store@0#0",
            "item 1 stored 10 as store@1#0",
            "item 2 stored 20 as store@2#0"
        ]
    );
    assert_eq!(fx.stores.load(Ordering::SeqCst), 3, "no store ran twice");
}

struct Relay {
    stop_c: AtomicBool,
}

impl Relay {
    /// Branch B waits on a channel that branch A fills between two steps.
    #[resumable]
    async fn relay(&self) -> Result<u32, E> {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (b, c) = tokio::join!(
            async {
                let got = rx.await.unwrap_or_default();
                Ok::<_, E>(step!("b", { got + 1 }))
            },
            async {
                let a = step!("a", { 1 });
                let _ = tx.send(a);
                Ok::<_, E>(step!("c", {
                    if self.stop_c.load(Ordering::SeqCst) {
                        panic!("c interrupted");
                    }
                    a + 100
                }))
            }
        );
        Ok(b? + c?)
    }
}

#[tokio::test]
async fn a_branch_woken_by_another_is_not_mistaken_for_nondeterminism() {
    // No grace at all: only a real stall may be reported.
    let rt = Runtime::builder(MemoryJournal::new())
        .default_retry(common::FAST)
        .stall_timeout(Duration::ZERO)
        .build();
    let relay = Relay {
        stop_c: AtomicBool::new(true),
    };
    let err = rt.run("relay", relay.relay()).await.unwrap_err();
    assert!(matches!(err, Error::StepPanicked { .. }), "{err}");
    relay.stop_c.store(false, Ordering::SeqCst);
    assert_eq!(rt.run("relay", relay.relay()).await.unwrap(), Ok(2 + 101));
}

struct Race;

impl Race {
    #[resumable]
    async fn race(&self) -> Result<u32, E> {
        let (a, b) = tokio::try_join!(async { Ok::<_, E>(step!("a", { 1u32 })) }, async {
            Err::<u32, _>(E::Invalid)
        })?;
        Ok(a + b)
    }
}

#[tokio::test]
async fn a_failed_journal_write_is_not_hidden_behind_an_outcome() {
    let store = std::sync::Arc::new(MemoryJournal::new());
    // Opening the run is the only write that succeeds.
    let faulty = Runtime::builder(Misbehaving::new(store.clone()).failing_after(1))
        .lease_duration(Duration::from_millis(30))
        .build();
    let first = faulty.run("race", Race.race()).await;
    assert!(matches!(first, Err(Error::Storage { .. })), "{first:?}");
    let info = resumable::Journal::load_run(&*store, "race")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        info.run.state,
        resumable::RunState::Incomplete,
        "no outcome was recorded"
    );
    // With a working journal the same run reaches its real outcome.
    let healthy = Runtime::new(store);
    let outcome = loop {
        match healthy.run("race", Race.race()).await {
            Err(Error::Busy { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            other => break other.unwrap(),
        }
    };
    assert_eq!(outcome, Err(E::Invalid));
}

#[tokio::test]
async fn replays_in_sequential_code_are_checked_at_once_without_waiting() {
    // A sanity check of the common case: the concurrent machinery does not
    // slow down a plain replay (no stall is ever detected).
    let (rt, _) = memory_runtime();
    let fx = Fx::default();
    assert_eq!(
        rt.run("seq", fx.fan_out(vec![1]))
            .await
            .unwrap()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        rt.run("seq", fx.fan_out(vec![1]))
            .await
            .unwrap()
            .unwrap()
            .len(),
        1
    );
}
