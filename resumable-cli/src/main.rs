//! `resumable`: look at and steer the runs of a journal from the command
//! line — list them, show one with its steps, export it, cancel, resume,
//! retry now, fork, list dead letters, purge old finished runs, send a
//! message, read an event. Human tables by default, `--json` for scripts.
//! Values journaled with the JSON codec are printed as JSON.
//!
//! ```text
//! resumable --db journal.db list --state dead_lettered
//! resumable --url postgres://user@host/db --schema shop show order-7
//! resumable --db journal.db purge --older-than 30d --dry-run
//! ```
//!
//! Exit codes: 0 done, 1 failed (the journal cannot be opened or read, a
//! command was refused), 2 bad usage, 3 no run has the key.
#![forbid(unsafe_code)]

mod commands;
mod open;
mod render;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Look at and steer the runs of a resumable journal.
#[derive(Parser)]
#[command(name = "resumable", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    journal: open::JournalArgs,
    /// Print JSON (one object per line for lists) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

const EXIT_CODES: &str = "Exit codes: 0 done, 1 failed, 2 bad usage, 3 no run has the key.";

#[derive(Subcommand)]
enum Cmd {
    /// List runs, oldest first.
    List(commands::ListArgs),
    /// Show one run and its steps.
    Show {
        /// The run key.
        key: String,
    },
    /// Cancel a run (a worker executing it stops at its next step) and its
    /// unfinished child workflows.
    Cancel {
        /// The run key.
        key: String,
    },
    /// Resume a failed, cancelled, timed-out or dead-lettered run.
    Resume {
        /// The run key.
        key: String,
    },
    /// Make an incomplete run due now, its retrying steps too.
    RetryNow {
        /// The run key.
        key: String,
    },
    /// Create a run from another's input and its first steps.
    Fork {
        /// The run to fork.
        key: String,
        /// How many of its recorded steps to keep (0: start over).
        #[arg(long)]
        from_step: u64,
        /// The new run's key.
        #[arg(long)]
        new_key: String,
    },
    /// List dead-lettered runs, oldest first.
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print a run and then its steps, one JSON object per line.
    Export {
        /// The run key.
        key: String,
    },
    /// Send a message (JSON) to a run journaled with the JSON codec.
    Send {
        /// The run key.
        key: String,
        /// The topic its `recv!` waits on.
        topic: String,
        /// The message, as JSON (`true`, `42`, `'{"ok": true}'`).
        value: String,
        /// Sending again with this key sends nothing more.
        #[arg(long)]
        idempotency_key: String,
    },
    /// Print the value a run last published as an event (`set_event!`).
    Events {
        /// The run key.
        key: String,
        /// The event's name.
        name: String,
        /// Wait up to this long for one to be published (`10s`).
        #[arg(long)]
        wait: Option<humantime::Duration>,
    },
    /// Serve a read-only web view of the runs until Ctrl-C.
    Serve {
        /// Where to listen; loopback by default (put it behind your own
        /// authentication before listening elsewhere).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Delete finished runs that last changed longer ago than a duration.
    Purge {
        /// `30d`, `12h`, `90m`...
        #[arg(long)]
        older_than: humantime::Duration,
        /// Count what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A failure the tool reports in one line, with its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub message: String,
    pub code: u8,
}

impl From<resumable::Error> for Failure {
    fn from(err: resumable::Error) -> Self {
        let code = match err {
            resumable::Error::UnknownRun { .. } => 3,
            _ => 1,
        };
        Failure {
            message: err.to_string(),
            code,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let journal = open::open(&cli.journal).await?;
    let runs = resumable::Runs::new(journal.clone());
    let out = render::Out { json: cli.json };
    match cli.command {
        Cmd::List(args) => commands::list(&runs, &out, args).await,
        Cmd::Show { key } => commands::show(&*journal, &runs, &out, &key).await,
        Cmd::Export { key } => commands::export(&*journal, &runs, &key).await,
        Cmd::Send {
            key,
            topic,
            value,
            idempotency_key,
        } => commands::send(journal, &out, &key, &topic, &value, &idempotency_key).await,
        Cmd::Events { key, name, wait } => {
            commands::events(&*journal, &out, &key, &name, wait.map(Into::into)).await
        }
        Cmd::Cancel { key } => out.outcome(&key, runs.cancel(&key).await?),
        Cmd::Resume { key } => out.outcome(&key, runs.resume(&key).await?),
        Cmd::RetryNow { key } => out.outcome(&key, runs.retry_now(&key).await?),
        Cmd::Fork {
            key,
            from_step,
            new_key,
        } => {
            let fork = runs.fork(&key, from_step, &new_key).await?;
            out.runs(&[fork]);
            Ok(())
        }
        Cmd::DeadLetters { limit } => {
            out.runs(&runs.dead_letters(limit).await?);
            Ok(())
        }
        Cmd::Serve { listen } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|err| Failure {
                    message: format!("cannot listen on {listen}: {err}"),
                    code: 1,
                })?;
            let bound = listener.local_addr().map_err(|err| Failure {
                message: err.to_string(),
                code: 1,
            })?;
            println!("serving the runs at http://{bound}/ (Ctrl-C to stop)");
            tokio::select! {
                served = resumable_cli::web::serve(journal, listener) => served.map_err(|err| Failure {
                    message: format!("the web view stopped: {err}"),
                    code: 1,
                }),
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        Cmd::Purge {
            older_than,
            dry_run,
        } => commands::purge(&runs, &out, older_than.into(), dry_run).await,
    }
}
