//! Fan-out with child workflows: an album is published by rendering each of
//! its photos in a child workflow of its own, all at once, and collecting
//! their results. Each child is a run of its own: it retries, resumes and
//! shows up in the run list on its own, and the parent waits for the
//! children without holding a worker.
//!
//! ```text
//! cargo run --example fan_out
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::join_all;
use resumable::{Completer, Runtime, SqliteJournal, WorkflowRef, child, resumable, step, workflow};
use serde::{Deserialize, Serialize};

/// What rendering a photo produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rendered {
    photo: String,
    bytes: u64,
}

const RENDER: WorkflowRef<(String,), Result<Rendered, String>> =
    WorkflowRef::named("fan_out::render");
const PUBLISH: WorkflowRef<(String, Vec<String>), Result<String, String>> =
    WorkflowRef::named("fan_out::publish");

/// The renderer's state: how many renders really ran.
#[derive(Default)]
struct Studio {
    renders: AtomicU32,
}

impl Studio {
    /// One photo: a child workflow.
    #[resumable(name = "fan_out::render")]
    async fn render(&self, photo: String) -> Result<Rendered, String> {
        let bytes = step!("render", {
            self.renders.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            photo.len() as u64 * 1_000
        });
        Ok(Rendered { photo, bytes })
    }

    /// The album: one child per photo, all started at once, then one step
    /// with everything they rendered.
    #[resumable(name = "fan_out::publish")]
    async fn publish(&self, album: String, photos: Vec<String>) -> Result<String, String> {
        let mut renders = Vec::new();
        for photo in photos {
            renders.push(async move { child!("render", RENDER, (photo,)) });
        }
        let rendered: Vec<Rendered> = join_all(renders)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let total: u64 = rendered.iter().map(|r| r.bytes).sum();
        let page = step!("page", {
            format!("{album}: {} photos, {total} bytes", rendered.len())
        });
        Ok(page)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let journal = SqliteJournal::open(dir.path().join("fan_out.db")).await?;
    let rt = Runtime::new(journal);
    let studio = std::sync::Arc::new(Studio::default());
    let completer = Completer::new(&rt)
        .register(workflow!(Studio::publish), studio.clone())?
        .register(workflow!(Studio::render), studio.clone())?
        .start();

    let photos: Vec<String> = ["beach", "harbour", "lighthouse", "dunes"]
        .map(String::from)
        .to_vec();
    let client = rt.client().poll_interval(Duration::from_millis(100));
    client
        .submit(
            &PUBLISH,
            "album-summer",
            ("summer".to_string(), photos.clone()),
        )
        .await?;
    let page = client.wait(&PUBLISH, "album-summer").await??;
    println!("published {page}");
    for child in rt.runs().children("album-summer").await? {
        println!(
            "  child {} ({}): {:?}",
            child.key, child.workflow, child.status
        );
    }
    completer.shutdown().await?;

    // Running the album again replays it: no child starts or renders again.
    let again = rt
        .run(
            "album-summer",
            studio.publish("summer".into(), photos.clone()),
        )
        .await??;
    let renders = studio.renders.load(Ordering::SeqCst);
    println!("replayed: {again}; photos rendered in all: {renders}");
    let children = rt.runs().children("album-summer").await?.len();
    if renders != 4 || children != 4 {
        return Err(
            format!("expected 4 renders and 4 children, got {renders} and {children}").into(),
        );
    }
    Ok(())
}
