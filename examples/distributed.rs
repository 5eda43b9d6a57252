//! Many workers, one PostgreSQL database: workers (on any machines) run a
//! Completer each; a submitter with only the workflow's types hands them
//! runs and waits for the outcomes. Kill a worker mid-way: its runs are
//! taken over once its lease expires, and no recorded step runs again.
//!
//! ```text
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo run --features postgres --example distributed -- worker --id a     # terminal 1
//! cargo run --features postgres --example distributed -- worker --id b     # terminal 2
//! cargo run --features postgres --example distributed -- submit --count 20 # terminal 3
//! ```

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use resumable::{
    Client, Completer, PostgresJournal, Runtime, WorkflowRef, resumable, step, workflow,
};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Run workers, or submit runs to them, on one PostgreSQL database.")]
struct Cli {
    /// The database, as a URL or a `host=… user=…` string.
    #[arg(long, env = "DATABASE_URL", global = true)]
    url: Option<String>,
    /// The schema holding the journal (created on first use).
    #[arg(long, default_value = "resumable_demo", global = true)]
    schema: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Execute runs until Ctrl-C, then hand unfinished ones back.
    Worker {
        /// This worker's name, as leases and outcomes show it. Restarted
        /// under the same name, it resumes at once the runs it left behind.
        #[arg(long, default_value = "worker")]
        id: String,
        /// Runs executed at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// How long each step pretends to work, in milliseconds.
        #[arg(long, default_value_t = 200)]
        step_ms: u64,
        /// The lease: how soon another worker takes over a killed one's runs.
        #[arg(long, default_value_t = 5)]
        lease_secs: u64,
    },
    /// Submit runs and wait for their outcomes (no workflow code needed).
    Submit {
        /// How many images to render.
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// Run keys are `<prefix>-<n>`: submitting a prefix again only
        /// fetches the outcomes.
        #[arg(long, default_value = "image")]
        prefix: String,
    },
}

/// What a render produced, and which worker executed each step.
#[derive(Debug, Serialize, Deserialize)]
struct Rendered {
    image: u64,
    sizes: Vec<String>,
    steps_by: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("render failed: {0}")]
struct RenderError(String);

/// All a submitter needs: the workflow's name and types.
const RENDER: WorkflowRef<(u64,), Result<Rendered, RenderError>> = WorkflowRef::named("render");

/// What a worker supplies to the runs it executes.
struct Renderer {
    id: String,
    step_time: Duration,
}

impl Renderer {
    /// Fetch an image, resize it three times, store the results. Each step
    /// is a recovery point: a run taken over by another worker goes on
    /// after the last recorded step.
    #[resumable(name = "render")]
    async fn render(&self, image: u64) -> Result<Rendered, RenderError> {
        let fetched_by = step!("fetch", {
            tokio::time::sleep(self.step_time).await;
            self.id.clone()
        });
        let mut steps_by = vec![fetched_by];
        let mut sizes = Vec::new();
        for size in [64, 256, 1024] {
            let resized_by = step!("resize", {
                tokio::time::sleep(self.step_time).await;
                self.id.clone()
            });
            steps_by.push(resized_by);
            sizes.push(format!("{image}@{size}px"));
        }
        let stored_by = step!("store", {
            tokio::time::sleep(self.step_time).await;
            self.id.clone()
        });
        steps_by.push(stored_by);
        Ok(Rendered {
            image,
            sizes,
            steps_by,
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let url = cli
        .url
        .ok_or("give the database with --url or DATABASE_URL")?;
    let journal = PostgresJournal::builder(url)
        .schema(&cli.schema)
        .open()
        .await?;
    match cli.command {
        Cmd::Worker {
            id,
            concurrency,
            step_ms,
            lease_secs,
        } => {
            let rt = Runtime::builder(journal)
                .worker_id(&id)
                .lease_duration(Duration::from_secs(lease_secs))
                .build();
            let renderer = Renderer {
                id: id.clone(),
                step_time: Duration::from_millis(step_ms),
            };
            // The id is stable: take back at once what this worker's last
            // process left leased when it died.
            let recovered = rt.recover_leases().await?;
            if recovered > 0 {
                println!("worker {id}: resuming {recovered} runs its last process left behind");
            }
            let completer = Completer::new(&rt)
                .concurrency(concurrency)
                .register(workflow!(Renderer::render), renderer)?
                .start();
            println!("worker {id}: executing runs; Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            let report = completer.shutdown().await?;
            println!(
                "worker {id}: finished {} runs ({} interrupted), unfinished ones handed back",
                report.finished, report.interrupted
            );
        }
        Cmd::Submit { count, prefix } => {
            let client = Client::new(journal);
            let started = Instant::now();
            for n in 0..count {
                client
                    .submit(&RENDER, format!("{prefix}-{n}"), (n,))
                    .await?;
            }
            println!("submitted {count} runs in {:?}", started.elapsed());
            let mut waiting: FuturesUnordered<_> = (0..count)
                .map(|n| {
                    let client = &client;
                    let key = format!("{prefix}-{n}");
                    async move { (client.wait(&RENDER, &key).await, key) }
                })
                .collect();
            let mut taken_over = 0;
            while let Some((outcome, key)) = waiting.next().await {
                match outcome? {
                    Ok(rendered) => {
                        let by = &rendered.steps_by;
                        taken_over += usize::from(by.iter().any(|w| *w != by[0]));
                        println!(
                            "{key}: {} sizes; steps by {}",
                            rendered.sizes.len(),
                            by.join(", ")
                        );
                    }
                    Err(err) => println!("{key}: {err}"),
                }
            }
            println!(
                "all {count} outcomes in {:?}; {taken_over} runs were finished by another worker than the one that started them",
                started.elapsed()
            );
        }
    }
    Ok(())
}
