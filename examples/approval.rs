//! An expense that waits for a human: the workflow asks an approver, waits
//! for their decision as a message (with a time limit), sends a reminder
//! and sleeps if none comes, asks once more, and gives up after that. While
//! it waits, it holds no worker: kill the worker, restart it, and the run
//! goes on where it was.
//!
//! ```text
//! cargo run --example approval                      # the whole story in one process
//! cargo run --example approval -- worker            # terminal 1: executes runs
//! cargo run --example approval -- request --id 7 --amount 120
//! cargo run --example approval -- decide --id 7 --approve
//! cargo run --example approval -- status --id 7 --wait
//! ```
//!
//! The commands share one SQLite file (`--db`, default `approval.db`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use resumable::{
    Client, Completer, Runtime, SqliteJournal, WorkflowRef, recv, resumable, set_event, sleep,
    step, workflow,
};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Expenses that wait for an approver's decision.")]
struct Cli {
    /// The journal file, shared by every command.
    #[arg(long, default_value = "approval.db", global = true)]
    db: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Execute runs until Ctrl-C.
    Worker {
        /// How long the approver has to answer, and the reminder's delay, in seconds.
        #[arg(long, default_value_t = 60)]
        patience_secs: u64,
    },
    /// Ask for an expense to be approved.
    Request {
        #[arg(long)]
        id: u64,
        /// In whole currency units.
        #[arg(long)]
        amount: u64,
    },
    /// Send the approver's decision to the expense's run.
    Decide {
        #[arg(long)]
        id: u64,
        /// Approve (without it: reject).
        #[arg(long)]
        approve: bool,
    },
    /// Show where an expense is, or wait for its outcome.
    Status {
        #[arg(long)]
        id: u64,
        /// Wait until it is decided.
        #[arg(long)]
        wait: bool,
    },
}

/// How an expense ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Outcome {
    Paid { amount: u64 },
    Rejected,
    NoAnswer,
}

/// All a process without the workflow's code needs: its name and types.
const EXPENSE: WorkflowRef<(u64, u64), Result<Outcome, String>> =
    WorkflowRef::named("approval::expense");

/// What the workflow needs from its worker.
struct Office {
    /// How long the approver has to answer; the reminder waits as long.
    patience: Duration,
}

impl Office {
    #[resumable(name = "approval::expense")]
    async fn expense(&self, id: u64, amount: u64) -> Result<Outcome, String> {
        step!("ask_approver", {
            println!("expense {id}: asked the approver about {amount}");
        });
        set_event!("status", "waiting for the approver".to_string());
        let mut decision: Option<bool> = recv!("decision", timeout = self.patience);
        if decision.is_none() {
            step!("remind", {
                println!("expense {id}: no answer yet; reminder sent");
            });
            set_event!("status", "reminded the approver".to_string());
            // Give the reminder time to be read before asking again.
            sleep!("reminder_delay", self.patience);
            decision = recv!("decision", timeout = self.patience);
        }
        let outcome = match decision {
            Some(true) => {
                step!("pay", {
                    println!("expense {id}: paid {amount}");
                });
                Outcome::Paid { amount }
            }
            Some(false) => Outcome::Rejected,
            None => Outcome::NoAnswer,
        };
        set_event!("status", format!("{outcome:?}"));
        Ok(outcome)
    }
}

fn key(id: u64) -> String {
    format!("expense-{id}")
}

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        return story().await;
    };
    let journal = SqliteJournal::open(&cli.db).await?;
    match command {
        Cmd::Worker { patience_secs } => {
            let rt = Runtime::new(journal);
            let office = Office {
                patience: Duration::from_secs(patience_secs),
            };
            let completer = Completer::new(&rt)
                .poll_interval(Duration::from_millis(500))
                .register(workflow!(Office::expense), office)?
                .start();
            println!("worker: executing expenses; Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            completer.shutdown().await?;
        }
        Cmd::Request { id, amount } => {
            Client::new(journal)
                .submit(&EXPENSE, key(id), (id, amount))
                .await?;
            println!("expense {id}: requested");
        }
        Cmd::Decide { id, approve } => {
            // The idempotency key: deciding twice sends one decision.
            let sent = Client::new(journal)
                .send(&EXPENSE, &key(id), "decision", &approve, "decision")
                .await?;
            match sent {
                true => println!("expense {id}: decision sent"),
                false => println!("expense {id}: a decision was sent before; this one is ignored"),
            }
        }
        Cmd::Status { id, wait } => {
            let client = Client::new(journal).poll_interval(Duration::from_millis(200));
            if wait {
                println!("expense {id}: {:?}", client.wait(&EXPENSE, &key(id)).await?);
            } else {
                let status: Option<String> = client
                    .get_event(&EXPENSE, &key(id), "status", Duration::ZERO)
                    .await?;
                let status = status.unwrap_or_else(|| "not started".into());
                println!("expense {id}: {status}");
            }
        }
    }
    Ok(())
}

/// The whole story in one process, with a short patience: one expense is
/// approved while it waits, one is rejected after a reminder, and one gets
/// no answer at all.
async fn story() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let journal = SqliteJournal::open(dir.path().join("approval.db")).await?;
    let rt = Runtime::new(journal);
    let patience = Duration::from_millis(1_500);
    let completer = Completer::new(&rt)
        .register(workflow!(Office::expense), Office { patience })?
        .start();
    let client = rt.client().poll_interval(Duration::from_millis(100));
    for (id, amount) in [(1, 120), (2, 990), (3, 40)] {
        client.submit(&EXPENSE, key(id), (id, amount)).await?;
    }
    // The approver answers expense 1 when asked, and expense 2 when reminded.
    wait_for_status(&client, 1, "waiting for the approver").await?;
    client
        .send(&EXPENSE, &key(1), "decision", &true, "decision")
        .await?;
    wait_for_status(&client, 2, "reminded the approver").await?;
    client
        .send(&EXPENSE, &key(2), "decision", &false, "decision")
        .await?;
    let mut outcomes = Vec::new();
    for id in [1, 2, 3] {
        let outcome = client.wait(&EXPENSE, &key(id)).await?;
        println!("expense {id}: {outcome:?}");
        outcomes.push(outcome?);
    }
    completer.shutdown().await?;
    let expected = [
        Outcome::Paid { amount: 120 },
        Outcome::Rejected,
        Outcome::NoAnswer,
    ];
    if outcomes != expected {
        return Err(format!("expected {expected:?}, got {outcomes:?}").into());
    }
    println!("all 3 expenses decided");
    Ok(())
}

/// Waits until expense `id` publishes `status`.
async fn wait_for_status(
    client: &Client,
    id: u64,
    status: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    loop {
        let now: Option<String> = client
            .get_event(&EXPENSE, &key(id), "status", Duration::from_secs(30))
            .await?;
        match now {
            Some(now) if now == status => return Ok(()),
            None => return Err(format!("expense {id} never said {status:?}").into()),
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
