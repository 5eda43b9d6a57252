//! Crash consistency: for every N, a journal that fails after N writes leaves
//! a run that, resumed, reaches the same outcome, and no journaled step runs again.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{FAST, Misbehaving};
use resumable::journal::StepState;
use resumable::{Error, Journal, MemoryJournal, Runtime, resumable, step};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Default)]
struct Counted {
    effects: Mutex<HashMap<String, usize>>,
}

impl Counted {
    fn effect(&self, step: &str) {
        *self
            .effects
            .lock()
            .unwrap()
            .entry(step.to_owned())
            .or_default() += 1;
    }

    #[resumable]
    async fn pipeline(&self, items: Vec<u32>) -> Result<u32, Never> {
        let mut sum = 0;
        for item in items {
            sum += step!("add", |s| {
                self.effect(s.step_id());
                item
            });
        }
        let doubled = step!("double", |s| {
            self.effect(s.step_id());
            sum * 2
        });
        Ok(doubled)
    }
}

fn runtime(journal: impl Journal) -> Runtime {
    Runtime::builder(journal)
        .default_retry(FAST)
        .lease_duration(Duration::from_millis(30))
        .build()
}

#[tokio::test]
async fn every_write_failure_point_resumes_to_the_same_outcome() {
    let items = vec![1, 2, 3, 4];
    // open_run + one write per step (5) + the outcome: 7 writes; go past it.
    for budget in 0..=8 {
        let store = Arc::new(MemoryJournal::new());
        let app = Counted::default();
        let faulty = runtime(Misbehaving::new(store.clone()).failing_after(budget));
        let first = faulty.run("p", app.pipeline(items.clone())).await;
        if budget >= 7 {
            assert_eq!(first.unwrap(), Ok(20), "budget {budget}");
            continue;
        }
        assert!(
            matches!(first, Err(Error::Storage { .. })),
            "budget {budget}: {first:?}"
        );
        let journaled: Vec<String> = match store.load_run("p").await.unwrap() {
            Some(s) => s
                .steps
                .into_iter()
                .filter(|s| s.state == StepState::Completed)
                .map(|s| s.step_id)
                .collect(),
            None => Vec::new(),
        };

        let healthy = runtime(store.clone());
        let outcome = loop {
            match healthy.run("p", app.pipeline(items.clone())).await {
                Err(Error::Busy { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => break other.unwrap(),
            }
        };
        assert_eq!(outcome, Ok(20), "budget {budget}");
        let effects = app.effects.lock().unwrap();
        for (step, count) in effects.iter() {
            if journaled.contains(step) {
                assert_eq!(
                    *count, 1,
                    "budget {budget}: journaled step {step} ran again"
                );
            } else {
                assert!(
                    *count <= 2,
                    "budget {budget}: step {step} ran {count} times"
                );
            }
        }
        // Only the step whose journal write failed can have run twice.
        assert!(
            effects.values().filter(|c| **c == 2).count() <= 1,
            "budget {budget}: {effects:?}"
        );
        assert_eq!(effects.len(), 5, "budget {budget}: every step ran");
    }
}
