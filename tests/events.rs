//! Published events: `set_event!` in a workflow, `Client::get_event`
//! outside it, on every journal. The latest value wins; a reader can wait
//! for one; a replay does not publish an earlier value again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;

use common::every_journal;
use resumable::{Client, Runtime, WorkflowRef, resumable, set_event, step};
use tokio::sync::Notify;

#[derive(Default)]
struct Shipping {
    /// Panics after the second publication, outside any step (a crash).
    crash: AtomicBool,
    /// Held before packing until notified.
    hold: AtomicBool,
    go: Notify,
}

impl Shipping {
    #[resumable(name = "ship")]
    async fn ship(&self, order: u64) -> Result<u64, String> {
        set_event!("status", format!("order {order}: packing"));
        let packed = step!("pack", {
            if self.hold.load(Ordering::SeqCst) {
                self.go.notified().await;
            }
            order + 1
        });
        set_event!("status", format!("order {order}: shipped"));
        if self.crash.swap(false, Ordering::SeqCst) {
            panic!("crash after publishing");
        }
        Ok(packed)
    }
}

const SHIP: WorkflowRef<(u64,), Result<u64, String>> = WorkflowRef::named("ship");

#[tokio::test]
async fn the_latest_published_value_wins() {
    let (journals, _keep) = every_journal("events_latest").await;
    for (name, journal) in journals {
        let rt = Runtime::new(journal.clone());
        let client = Client::new(journal);
        let shipping = Shipping::default();
        assert_eq!(
            rt.run("o", shipping.ship(7)).await.unwrap(),
            Ok(8),
            "{name}"
        );
        let status: Option<String> = client
            .get_event(&SHIP, "o", "status", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("order 7: shipped"), "{name}");
        let none: Option<String> = client
            .get_event(&SHIP, "o", "eta", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(none, None, "{name}");
        let ids: Vec<String> = rt
            .run_info("o")
            .await
            .unwrap()
            .unwrap()
            .steps
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(
            ids,
            ["set_event:status#0", "pack#0", "set_event:status#1"],
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waits_for_a_value_while_the_run_goes_on() {
    let (journals, _keep) = every_journal("events_wait").await;
    for (name, journal) in journals {
        let rt = Runtime::new(journal.clone());
        let client = Client::new(journal);
        let shipping = Arc::new(Shipping::default());
        shipping.hold.store(true, Ordering::SeqCst);
        let run = tokio::spawn({
            let (rt, shipping) = (rt.clone(), shipping.clone());
            async move { rt.run("o", shipping.ship(1)).await }
        });
        // Published before the held step: the reader sees it while the run waits.
        let status: Option<String> = client
            .get_event(&SHIP, "o", "status", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("order 1: packing"), "{name}");
        assert!(!run.is_finished(), "{name}");
        shipping.go.notify_one();
        assert_eq!(run.await.unwrap().unwrap(), Ok(2), "{name}");
    }
}

#[tokio::test]
async fn a_replay_does_not_publish_an_earlier_value_again() {
    let (journals, _keep) = every_journal("events_replay").await;
    for (name, journal) in journals {
        let rt = Runtime::new(journal.clone());
        let client = Client::new(journal);
        let shipping = Shipping::default();
        shipping.crash.store(true, Ordering::SeqCst);
        assert!(rt.run("o", shipping.ship(3)).await.is_err(), "{name}");
        let status: Option<String> = client
            .get_event(&SHIP, "o", "status", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("order 3: shipped"), "{name}");
        assert_eq!(
            rt.run("o", shipping.ship(3)).await.unwrap(),
            Ok(4),
            "{name}"
        );
        // Both publications replayed from the journal: each ran once.
        let info = rt.run_info("o").await.unwrap().unwrap();
        for id in ["set_event:status#0", "set_event:status#1"] {
            assert_eq!(info.step(id).unwrap().attempts, 1, "{name}: {id}");
        }
        let status: Option<String> = client
            .get_event(&SHIP, "o", "status", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("order 3: shipped"), "{name}");
    }
}
