//! What the runtime logs: the documented run and step events are emitted
//! at their levels (README "What it logs").

use std::sync::{Arc, Mutex};

use resumable::{MemoryJournal, Runtime, resumable, step};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Every event's level and message.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(tracing::Level, String)>>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), message.0));
    }
}

#[resumable]
async fn greet(name: String) -> Result<String, String> {
    let greeting = step!("greet", { format!("hello {name}") });
    Ok(greeting)
}

#[tokio::test(flavor = "current_thread")]
async fn runs_and_steps_are_logged_at_their_levels() {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = Runtime::new(MemoryJournal::new());
    rt.run("g", greet("ada".into())).await.unwrap().unwrap();
    let seen = events.0.lock().unwrap().clone();
    for (level, message) in [
        (tracing::Level::INFO, "run started"),
        (tracing::Level::DEBUG, "step recorded"),
        (tracing::Level::INFO, "run finished"),
    ] {
        assert!(
            seen.iter().any(|(l, m)| *l == level && m == message),
            "{level} {message:?} in {seen:?}"
        );
    }
}
