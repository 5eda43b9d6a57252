//! How the tool prints runs: aligned tables for people, JSON for scripts.

use std::collections::HashMap;
use std::time::SystemTime;

use resumable::{CommandOutcome, RecordInfo, RunInfo, StepInfo};
use serde::Serialize;
use serde_json::Value;

use resumable_cli::text::{ago, cut, name, value_summary as record};

use crate::Failure;

/// Journaled values decoded as JSON (those the JSON codec wrote), by
/// `input`, `outcome` and step id.
pub type Values = HashMap<String, Value>;

/// No values.
static NONE: std::sync::LazyLock<Values> = std::sync::LazyLock::new(Values::new);

/// Where and how output goes.
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Runs, as a table or one JSON object per line.
    pub fn runs(&self, runs: &[RunInfo]) {
        if self.json {
            for run in runs {
                println!("{}", json(&RunView::of(run, false, &NONE)));
            }
            return;
        }
        if runs.is_empty() {
            println!("no runs");
            return;
        }
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|r| {
                vec![
                    r.key.clone(),
                    r.workflow.clone(),
                    name(&r.status),
                    r.executions.to_string(),
                    ago(r.created_at),
                    r.last_error
                        .as_deref()
                        .map(|e| cut(e, 80))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &[
                "KEY",
                "WORKFLOW",
                "STATUS",
                "EXECUTIONS",
                "CREATED",
                "LAST ERROR",
            ],
            &rows,
        );
    }

    /// One run with its steps and children.
    pub fn run(&self, run: &RunInfo, children: &[RunInfo], values: &Values) {
        if self.json {
            let mut view = RunView::of(run, true, values);
            view.children = Some(children.iter().map(|c| c.key.as_str()).collect());
            println!("{}", json(&view));
            return;
        }
        let mut fields: Vec<(&str, String)> = vec![
            ("run", run.key.clone()),
            ("workflow", run.workflow.clone()),
            ("status", name(&run.status)),
            ("executions", run.executions.to_string()),
            ("created", stamp(run.created_at)),
            ("updated", stamp(run.updated_at)),
            ("input", record(&run.input, values.get("input"))),
        ];
        let optional = [
            (
                "outcome",
                run.outcome
                    .as_ref()
                    .map(|o| record(o, values.get("outcome"))),
            ),
            ("last error", run.last_error.as_deref().map(|e| cut(e, 80))),
            (
                "failures",
                (run.failures > 0).then(|| run.failures.to_string()),
            ),
            (
                "lease",
                run.lease_owner.as_ref().map(|owner| {
                    format!(
                        "{owner}, expires {}",
                        run.lease_expires_at.map(stamp).unwrap_or_default()
                    )
                }),
            ),
            ("due", run.due_at.map(stamp)),
            ("deadline", run.deadline.map(stamp)),
            ("cancel requested", run.cancel_requested_at.map(stamp)),
            ("resumed", run.resumed_at.map(stamp)),
            ("forked from", run.forked_from.clone()),
            ("parent", run.parent.clone()),
        ];
        fields.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &fields {
            println!("{k:>width$}  {v}");
        }
        println!();
        if run.steps.is_empty() {
            println!("no steps recorded");
        } else {
            let rows: Vec<Vec<String>> = run.steps.iter().map(|s| step_row(s, values)).collect();
            table(
                &[
                    "STEP",
                    "STATUS",
                    "ATTEMPTS",
                    "DURATION",
                    "OUTPUT",
                    "LAST ERROR",
                ],
                &rows,
            );
        }
        if !children.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = children
                .iter()
                .map(|c| vec![c.key.clone(), c.workflow.clone(), name(&c.status)])
                .collect();
            table(&["CHILD", "WORKFLOW", "STATUS"], &rows);
        }
    }

    /// What an operator's command did to run `key`.
    pub fn outcome(&self, key: &str, outcome: CommandOutcome) -> Result<(), Failure> {
        if self.json {
            println!(
                "{}",
                json(&serde_json::json!({ "run": key, "outcome": outcome }))
            );
            return Ok(());
        }
        match outcome {
            CommandOutcome::Done(state) => println!("{key}: now {state}"),
            CommandOutcome::Requested => {
                println!("{key}: cancel requested; its worker stops at the next step")
            }
            CommandOutcome::Unchanged(state) => println!("{key}: unchanged ({state})"),
        }
        Ok(())
    }

    /// A line of progress or a summary, as JSON `{ key: value }` or text.
    pub fn line(&self, text: &str, key: &str, value: u64) {
        match self.json {
            true => println!("{}", json(&serde_json::json!({ key: value }))),
            false => println!("{text}"),
        }
    }
}

/// The run, then each of its steps, one JSON object per line.
pub fn export(run: &RunInfo, values: &Values) {
    let view = RunView::of(run, false, values);
    println!("{}", json(&serde_json::json!({ "run": view })));
    for step in &run.steps {
        println!(
            "{}",
            json(&serde_json::json!({ "run": run.key, "step": StepView::of(step, values) }))
        );
    }
}

/// An event's value: JSON where the JSON codec wrote it, else its size.
pub fn event(out: &Out, name: &str, info: &RecordInfo, value: Option<&Value>) {
    if out.json {
        let view = RecordView::of(info, value);
        println!(
            "{}",
            json(&serde_json::json!({ "event": name, "value": view }))
        );
        return;
    }
    match value {
        Some(value) => println!("{value}"),
        None => println!("{name}: {}", record(info, None)),
    }
}

fn step_row(step: &StepInfo, values: &Values) -> Vec<String> {
    vec![
        step.id.clone(),
        name(&step.status),
        step.attempts.to_string(),
        step.duration_ms
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_default(),
        step.output
            .as_ref()
            .map(|o| record(o, values.get(&step.id)))
            .unwrap_or_default(),
        step.last_error
            .as_deref()
            .map(|e| cut(e, 80))
            .unwrap_or_default(),
    ]
}

/// A run as `--json` prints it: times in RFC 3339.
#[derive(Serialize)]
struct RunView<'a> {
    key: &'a str,
    workflow: &'a str,
    status: String,
    executions: u32,
    failures: u32,
    last_error: Option<&'a str>,
    lease_owner: Option<&'a str>,
    lease_expires_at: Option<String>,
    due_at: Option<String>,
    deadline: Option<String>,
    cancel_requested_at: Option<String>,
    resumed_at: Option<String>,
    forked_from: Option<&'a str>,
    parent: Option<&'a str>,
    created_at: String,
    updated_at: String,
    input: RecordView<'a>,
    outcome: Option<RecordView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<StepView<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    children: Option<Vec<&'a str>>,
}

#[derive(Serialize)]
struct StepView<'a> {
    id: &'a str,
    status: String,
    attempts: u32,
    started_at: String,
    updated_at: String,
    duration_ms: Option<u64>,
    retry_at: Option<String>,
    output: Option<RecordView<'a>>,
    last_error: Option<&'a str>,
}

/// A journaled value: its size and codec, and its value where the JSON
/// codec wrote it.
#[derive(Serialize)]
struct RecordView<'a> {
    size: usize,
    codec: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a Value>,
}

impl<'a> RecordView<'a> {
    fn of(info: &'a RecordInfo, value: Option<&'a Value>) -> Self {
        RecordView {
            size: info.size,
            codec: info.codec.as_deref(),
            value,
        }
    }
}

impl<'a> StepView<'a> {
    fn of(s: &'a StepInfo, values: &'a Values) -> Self {
        StepView {
            id: &s.id,
            status: name(&s.status),
            attempts: s.attempts,
            started_at: rfc3339(s.started_at),
            updated_at: rfc3339(s.updated_at),
            duration_ms: s.duration_ms,
            retry_at: s.retry_at.map(rfc3339),
            output: s
                .output
                .as_ref()
                .map(|o| RecordView::of(o, values.get(&s.id))),
            last_error: s.last_error.as_deref(),
        }
    }
}

impl<'a> RunView<'a> {
    fn of(run: &'a RunInfo, with_steps: bool, values: &'a Values) -> Self {
        let time = |t: Option<SystemTime>| t.map(rfc3339);
        RunView {
            key: &run.key,
            workflow: &run.workflow,
            status: name(&run.status),
            executions: run.executions,
            failures: run.failures,
            last_error: run.last_error.as_deref(),
            lease_owner: run.lease_owner.as_deref(),
            lease_expires_at: time(run.lease_expires_at),
            due_at: time(run.due_at),
            deadline: time(run.deadline),
            cancel_requested_at: time(run.cancel_requested_at),
            resumed_at: time(run.resumed_at),
            forked_from: run.forked_from.as_deref(),
            parent: run.parent.as_deref(),
            created_at: rfc3339(run.created_at),
            updated_at: rfc3339(run.updated_at),
            input: RecordView::of(&run.input, values.get("input")),
            outcome: run
                .outcome
                .as_ref()
                .map(|o| RecordView::of(o, values.get("outcome"))),
            steps: with_steps.then(|| run.steps.iter().map(|s| StepView::of(s, values)).collect()),
            children: None,
        }
    }
}

fn json(value: &impl Serialize) -> String {
    // Views hold strings, numbers and options only: they always serialize.
    serde_json::to_string(value).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
}

fn rfc3339(t: SystemTime) -> String {
    resumable_cli::rfc3339(t, true)
}

fn stamp(t: SystemTime) -> String {
    match resumable_cli::rfc3339(t, false) {
        never if never == "never" => never,
        text => format!("{text} ({})", ago(t)),
    }
}

/// Prints `rows` under `header`, columns aligned.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match i == last {
                true => (*c).to_string(),
                false => format!("{c:<width$}", width = widths[i]),
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
