//! Durable races: `race!` on every journal. The winner is journaled, so a
//! replay runs the recorded winner's branch even when the other would now
//! finish first, and what a losing branch journaled is never replayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod common;

use common::every_journal;
use resumable::{
    Completer, Error, Runtime, WorkflowRef, race, recv, resumable, sleep, step, workflow,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Won {
    A(u32),
    B(u32),
    Timeout,
}

#[derive(Default)]
struct Racer {
    fast: AtomicU32,
    /// How long branch A of `slow_a` works after its step, in ms.
    a_delay: std::sync::atomic::AtomicU64,
}

const TWO: WorkflowRef<(), Result<(Won, u32), String>> = WorkflowRef::named("races::two");
const WINDOW: WorkflowRef<(u64,), Result<Won, String>> = WorkflowRef::named("races::window");
const SLOW_A: WorkflowRef<(), Result<Won, String>> = WorkflowRef::named("races::slow_a");

impl Racer {
    /// Two receives race; then a sleep long enough to give the run back (so
    /// that it replays), then the other topic is received.
    #[resumable(name = "races::two")]
    async fn two(&self) -> Result<(Won, u32), String> {
        // B first: a replay that raced again would poll it first.
        let won = race!("first", async { Won::B(recv!("b")) }, async {
            Won::A(recv!("a"))
        });
        sleep!("pause", Duration::from_millis(1_500));
        let other: u32 = match won {
            Won::A(_) => recv!("b"),
            _ => recv!("a"),
        };
        Ok((won, other))
    }

    /// A message against a time limit; the message branch records a step
    /// first, which a lost race never replays.
    #[resumable(name = "races::window")]
    async fn window(&self, limit_ms: u64) -> Result<Won, String> {
        let won = race!(
            "paid_or_timeout",
            async {
                step!("fast", { self.fast.fetch_add(1, Ordering::SeqCst) });
                Ok::<_, String>(Won::A(recv!("paid")))
            },
            async {
                sleep!("window", Duration::from_millis(limit_ms));
                Ok(Won::Timeout)
            }
        )?;
        sleep!("pause", Duration::from_millis(1_500));
        Ok(won)
    }
}

impl Racer {
    /// Branch A records its step at once but then works (outside any step)
    /// for `a_delay`; branch B sleeps 50 ms durably.
    #[resumable(name = "races::slow_a")]
    async fn slow_a(&self) -> Result<Won, String> {
        let won = race!(
            "a_or_b",
            async {
                let v = step!("a", { 7 });
                let delay = self.a_delay.load(Ordering::SeqCst);
                // Not journaled on purpose: how long A works is the test's to vary.
                #[unjournaled]
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                Ok::<_, String>(Won::A(v))
            },
            async {
                sleep!("b", Duration::from_millis(50));
                Ok(Won::B(0))
            }
        )?;
        sleep!("pause", Duration::from_millis(1_500));
        Ok(won)
    }
}

fn completer(rt: &Runtime, racer: &Arc<Racer>) -> Completer {
    Completer::new(rt)
        .register(workflow!(Racer::two), racer.clone())
        .unwrap()
        .register(workflow!(Racer::window), racer.clone())
        .unwrap()
        .register(workflow!(Racer::slow_a), racer.clone())
        .unwrap()
}

#[tokio::test]
async fn a_replay_keeps_the_recorded_winner_when_the_loser_now_finishes_first() {
    for (name, journal) in every_journal("race_loser_first").await.0 {
        let rt = Runtime::new(journal);
        let racer = Arc::new(Racer::default());
        // A is slow this time: B wins, though A's step is recorded.
        racer.a_delay.store(1_000, Ordering::SeqCst);
        assert!(
            matches!(
                rt.run("s", racer.slow_a()).await,
                Err(Error::Sleeping { .. })
            ),
            "{name}"
        );
        // Replayed, A would finish at once (its step replays, no delay).
        racer.a_delay.store(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1_700)).await;
        completer(&rt, &racer).run_until_idle().await.unwrap();
        assert_eq!(
            rt.client().outcome(&SLOW_A, "s").await.unwrap(),
            Some(Ok(Won::B(0))),
            "{name}: the replay took the recorded winner"
        );
    }
}

#[tokio::test]
async fn a_replay_takes_the_recorded_branch_even_when_the_other_is_now_ready() {
    for (name, journal) in every_journal("race_replay").await.0 {
        let rt = Runtime::new(journal);
        let racer = Arc::new(Racer::default());
        let client = rt.client();
        client.submit(&TWO, "r", ()).await.unwrap();
        client.send(&TWO, "r", "a", &1u32, "a").await.unwrap();
        // A wins (only its message is there), then the run sleeps.
        assert!(
            matches!(rt.run("r", racer.two()).await, Err(Error::Sleeping { .. })),
            "{name}"
        );
        let info = rt.run_info("r").await.unwrap().unwrap();
        assert!(
            info.step("race:first#0").is_some(),
            "{name}: the winner is journaled"
        );
        // Now B's message is there too: a race run again might pick B.
        client.send(&TWO, "r", "b", &2u32, "b").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_700)).await;
        completer(&rt, &racer).run_until_idle().await.unwrap();
        assert_eq!(
            client.outcome(&TWO, "r").await.unwrap(),
            Some(Ok((Won::A(1), 2))),
            "{name}: the replay took the recorded branch, and B's message was left for later"
        );
    }
}

#[tokio::test]
async fn a_lost_branchs_records_are_never_replayed() {
    for (name, journal) in every_journal("race_lost").await.0 {
        let rt = Runtime::new(journal);
        let racer = Arc::new(Racer::default());
        // The time limit wins; the message branch had recorded its step.
        assert!(
            matches!(
                rt.run("w", racer.window(50)).await,
                Err(Error::Sleeping { .. })
            ),
            "{name}"
        );
        let client = rt.client();
        client
            .send(&WINDOW, "w", "paid", &9u32, "late")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1_700)).await;
        completer(&rt, &racer).run_until_idle().await.unwrap();
        assert_eq!(
            client.outcome(&WINDOW, "w").await.unwrap(),
            Some(Ok(Won::Timeout)),
            "{name}"
        );
        assert_eq!(
            racer.fast.load(Ordering::SeqCst),
            1,
            "{name}: nothing ran again"
        );
    }
}
