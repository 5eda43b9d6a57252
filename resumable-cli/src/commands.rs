//! The commands that do more than one call: listing with filters, showing
//! and exporting a run, sending a message, reading an event, purging.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use resumable::{
    Client, Codec, Journal, Json, PURGE_BATCH, RecordInfo, RunFilter, RunState, Runs, Slot,
    WorkflowRef,
};

use crate::Failure;
use crate::render::{self, Out, Values};

/// Which runs `list` prints.
#[derive(Args)]
pub struct ListArgs {
    /// Only runs in this state: incomplete, completed, failed, cancelled,
    /// deadline_exceeded, dead_lettered.
    #[arg(long, value_parser = parse_state)]
    state: Option<RunState>,
    /// Only runs of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Only the child workflows of this run.
    #[arg(long)]
    parent: Option<String>,
    /// Only runs created longer ago than this (`2h`, `7d`).
    #[arg(long)]
    older_than: Option<humantime::Duration>,
    /// The runs after this key (the last key of the previous page).
    #[arg(long)]
    after: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

fn parse_state(s: &str) -> Result<RunState, String> {
    RunState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state {s:?}; one of {}", names.join(", "))
    })
}

pub async fn list(runs: &Runs, out: &Out, args: ListArgs) -> Result<(), Failure> {
    let filter = RunFilter {
        state: args.state,
        workflow: args.workflow,
        parent: args.parent,
        created_before: args
            .older_than
            .map(|d| timestamp(SystemTime::now() - Duration::from(d))),
        after: args.after,
        limit: Some(args.limit),
        ..RunFilter::default()
    };
    out.runs(&runs.list(&filter).await?);
    Ok(())
}

pub async fn show(journal: &dyn Journal, runs: &Runs, out: &Out, key: &str) -> Result<(), Failure> {
    let run = info(runs, key).await?;
    let values = values(journal, key).await?;
    let children = runs.children(key).await?;
    out.run(&run, &children, &values);
    Ok(())
}

/// The run, then each step, one JSON object per line.
pub async fn export(journal: &dyn Journal, runs: &Runs, key: &str) -> Result<(), Failure> {
    let run = info(runs, key).await?;
    let values = values(journal, key).await?;
    render::export(&run, &values);
    Ok(())
}

async fn info(runs: &Runs, key: &str) -> Result<resumable::RunInfo, Failure> {
    runs.info(key).await?.ok_or_else(|| {
        resumable::Error::UnknownRun {
            run: key.to_owned(),
        }
        .into()
    })
}

async fn values(journal: &dyn Journal, key: &str) -> Result<Values, Failure> {
    Ok(resumable_cli::json_values(journal, key).await?)
}

/// Sends a JSON message to a run whose workflow journals with the JSON
/// codec (a message in another codec could not be decoded by its receive).
pub async fn send(
    journal: Arc<dyn Journal>,
    out: &Out,
    key: &str,
    topic: &str,
    value: &str,
    idempotency_key: &str,
) -> Result<(), Failure> {
    let value: serde_json::Value = serde_json::from_str(value).map_err(|err| Failure {
        message: format!("the message is not JSON: {err}"),
        code: 2,
    })?;
    let Some(snapshot) = journal.load_run(key).await? else {
        return Err(resumable::Error::UnknownRun {
            run: key.to_owned(),
        }
        .into());
    };
    let codec = RecordInfo::of_record(&snapshot.run.input).codec;
    if codec.as_deref() != Some(Json::NAME) {
        return Err(Failure {
            message: format!(
                "run {key:?} journals with codec {}, not json: its receives could not decode this message; send it from your code with Client::send",
                codec.as_deref().unwrap_or("unknown")
            ),
            code: 1,
        });
    }
    // Only the codec of the reference matters to a send.
    let workflow: WorkflowRef<(), (), Json> = WorkflowRef::named("");
    let stored = Client::new(journal)
        .send(&workflow, key, topic, &value, idempotency_key)
        .await?;
    let text = match stored {
        true => format!("{key}: message sent on {topic:?}"),
        false => {
            format!("{key}: a message with this idempotency key was sent before; nothing sent")
        }
    };
    out.line(&text, "sent", u64::from(stored));
    Ok(())
}

/// Prints the run's event `name`, waiting up to `wait` for one.
pub async fn events(
    journal: &dyn Journal,
    out: &Out,
    key: &str,
    name: &str,
    wait: Option<Duration>,
) -> Result<(), Failure> {
    let until = tokio::time::Instant::now() + wait.unwrap_or_default();
    let record = loop {
        if let Some(record) = journal.get_event(key, name).await? {
            break record;
        }
        if tokio::time::Instant::now() >= until {
            if journal.load_run(key).await?.is_none() {
                return Err(resumable::Error::UnknownRun {
                    run: key.to_owned(),
                }
                .into());
            }
            return Err(Failure {
                message: format!("run {key:?} has published no event {name:?}"),
                code: 1,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let value = Json::open_record(key, || Slot::Event(name.to_owned()), &record)?;
    render::event(out, name, &RecordInfo::of_record(&record), value.as_ref());
    Ok(())
}

/// Deletes finished runs that last changed before `older_than` ago, a
/// batch at a time, saying how far it got; or, with `dry_run`, counts them.
pub async fn purge(
    runs: &Runs,
    out: &Out,
    older_than: Duration,
    dry_run: bool,
) -> Result<(), Failure> {
    let before = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if dry_run {
        let n = count_finished_before(runs, before).await?;
        out.line(&format!("would purge {}", runs_count(n)), "would_purge", n);
        return Ok(());
    }
    let mut purged = 0u64;
    loop {
        let n = runs.purge_batch(before, PURGE_BATCH).await? as u64;
        purged += n;
        if n > 0 && !out.json {
            eprint!("\rpurged {purged} runs…");
        }
        if n < PURGE_BATCH as u64 {
            break;
        }
    }
    if purged > 0 && !out.json {
        eprintln!();
    }
    out.line(&format!("purged {}", runs_count(purged)), "purged", purged);
    Ok(())
}

async fn count_finished_before(runs: &Runs, before: SystemTime) -> Result<u64, Failure> {
    let mut n = 0u64;
    for state in RunState::ALL.into_iter().filter(|s| s.is_finished()) {
        let mut after = None;
        loop {
            let filter = RunFilter {
                state: Some(state),
                after: after.take(),
                limit: Some(1000),
                ..RunFilter::default()
            };
            let page = runs.list(&filter).await?;
            n += page.iter().filter(|r| r.updated_at < before).count() as u64;
            if page.len() < 1000 {
                break;
            }
            after = page.last().map(|r| r.key.clone());
        }
    }
    Ok(n)
}

/// `1 finished run`, `3 finished runs`.
fn runs_count(n: u64) -> String {
    match n {
        1 => "1 finished run".to_owned(),
        n => format!("{n} finished runs"),
    }
}

fn timestamp(t: SystemTime) -> resumable::Timestamp {
    resumable::Timestamp::from(t)
}
