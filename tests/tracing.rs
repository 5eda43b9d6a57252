//! Every run and every step emits a span with its run key, workflow, step id,
//! attempt, and whether it was replayed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::memory_runtime;
use resumable::{resumable, step};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

type Spans = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

struct Capture(Spans);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), fields));
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("e")]
struct E;

struct App(std::sync::atomic::AtomicBool);

impl App {
    #[resumable(name = "traced")]
    async fn traced(&self) -> Result<u32, E> {
        let a = step!("first", { 1 });
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("stop after the first step");
        }
        let b = step!("second", { 2 });
        Ok(a + b)
    }
}

fn field<'a>(span: &'a (String, BTreeMap<String, String>), name: &str) -> &'a str {
    span.1.get(name).map(String::as_str).unwrap_or("<missing>")
}

#[tokio::test]
async fn runs_and_steps_have_spans_that_say_replayed_or_executed() {
    let spans: Spans = Arc::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Capture(spans.clone())),
    );
    let (rt, _) = memory_runtime();
    let app = App(true.into());
    rt.run("t-1", app.traced()).await.unwrap_err();
    app.0.store(false, std::sync::atomic::Ordering::SeqCst);
    rt.run("t-1", app.traced()).await.unwrap().unwrap();

    let spans = spans.lock().unwrap();
    let runs: Vec<_> = spans.iter().filter(|s| s.0 == "run").collect();
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(
            (field(run, "run"), field(run, "workflow")),
            ("t-1", "\"traced\"")
        );
    }
    let steps: Vec<(&str, &str, &str)> = spans
        .iter()
        .filter(|s| s.0 == "step")
        .inspect(|s| {
            assert_eq!(
                (field(s, "run"), field(s, "workflow")),
                ("t-1", "\"traced\"")
            )
        })
        .map(|s| (field(s, "step"), field(s, "attempt"), field(s, "replayed")))
        .collect();
    assert_eq!(
        steps,
        [
            ("first#0", "1", "false"),
            ("first#0", "1", "true"),
            ("second#0", "1", "false")
        ]
    );
}
