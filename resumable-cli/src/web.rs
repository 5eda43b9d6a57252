//! A read-only web view of a journal's runs: the list with filters and
//! counts by state, and one run's page with its steps as a timeline.
//!
//! Plain server-rendered HTML (escaped by `maud`) with a little CSS; no
//! JavaScript. Serve it with `resumable serve` (loopback by default), or
//! mount [`router`] in your own axum app, behind your own authentication:
//!
//! ```no_run
//! # async fn mount(journal: std::sync::Arc<dyn resumable::Journal>) {
//! let app = axum::Router::new().nest("/runs", resumable_cli::web::router(journal));
//! # let _ = app;
//! # }
//! ```

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use resumable::{Journal, RunFilter, RunInfo, RunState, Runs, StepInfo};
use serde::Deserialize;

use crate::text::{ago, name, value_summary};

/// How many runs a list page shows.
const PAGE: usize = 50;
/// Counts by state stop at this (a journal of millions is not counted).
const COUNT_CAP: usize = 10_000;

#[derive(Clone)]
struct App {
    journal: Arc<dyn Journal>,
}

/// The view's routes: `/` (the runs) and `/run?key=..` (one run), relative
/// to where it is mounted.
pub fn router(journal: Arc<dyn Journal>) -> Router {
    Router::new()
        .route("/", get(list))
        .route("/run", get(run))
        .with_state(App { journal })
}

/// Serves the view on `listener` until the process ends.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let journal = resumable::SqliteJournal::open("journal.db").await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// resumable_cli::web::serve(std::sync::Arc::new(journal), listener).await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    journal: Arc<dyn Journal>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    axum::serve(listener, router(journal)).await
}

#[derive(Deserialize, Default)]
struct ListQuery {
    state: Option<String>,
    workflow: Option<String>,
    parent: Option<String>,
    after: Option<String>,
}

async fn list(State(app): State<App>, Query(q): Query<ListQuery>) -> Response {
    let runs = Runs::new(app.journal.clone());
    let state = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(RunState::parse);
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let filter = RunFilter {
        state,
        workflow: nonempty(q.workflow.clone()),
        parent: nonempty(q.parent.clone()),
        after: nonempty(q.after.clone()),
        limit: Some(PAGE),
        ..RunFilter::default()
    };
    let page = match runs.list(&filter).await {
        Ok(page) => page,
        Err(err) => return failure(&err.to_string()),
    };
    let mut counts = Vec::new();
    for s in RunState::ALL {
        let filter = RunFilter {
            state: Some(s),
            limit: Some(COUNT_CAP),
            ..RunFilter::default()
        };
        match app.journal.list_runs(&filter).await {
            Ok(found) => counts.push((s, found.len())),
            Err(err) => return failure(&err.to_string()),
        }
    }
    let next = (page.len() == PAGE)
        .then(|| page.last().map(|r| r.key.clone()))
        .flatten();
    let body = html! {
        h1 { "Runs" }
        nav.counts {
            a href="./" { "all" }
            @for (s, n) in &counts {
                a href={ "./?state=" (s.as_str()) } class=(s.as_str()) {
                    (s.as_str()) " " span.n { (n) @if *n == COUNT_CAP { "+" } }
                }
            }
        }
        form method="get" action="./" {
            label { "state " select name="state" {
                option value="" { "any" }
                @for s in RunState::ALL {
                    option value=(s.as_str()) selected[state == Some(s)] { (s.as_str()) }
                }
            } }
            label { "workflow " input name="workflow" value=(q.workflow.clone().unwrap_or_default()); }
            label { "parent " input name="parent" value=(q.parent.clone().unwrap_or_default()); }
            button { "filter" }
        }
        @if page.is_empty() {
            p.empty { "No runs." }
        } @else {
            table.runs {
                thead { tr { th { "key" } th { "workflow" } th { "status" } th { "executions" } th { "created" } th { "last error" } } }
                tbody {
                    @for r in &page {
                        tr {
                            td { a href={ "run?key=" (encode(&r.key)) } { (r.key) } }
                            td { (r.workflow) }
                            td { span class={ "status " (name(&r.status)) } { (name(&r.status)) } }
                            td.num { (r.executions) }
                            td { (ago(r.created_at)) }
                            td.error { (r.last_error.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p { a href={ "./?" (query(&q, &next)) } { "next page →" } }
        }
    };
    page_html("Runs", body).into_response()
}

#[derive(Deserialize)]
struct RunQuery {
    key: String,
}

async fn run(State(app): State<App>, Query(q): Query<RunQuery>) -> Response {
    let runs = Runs::new(app.journal.clone());
    let run = match runs.info(&q.key).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            let body = html! { h1 { "No such run" } p { "No run has the key " code { (q.key) } "." } p { a href="./" { "← runs" } } };
            return (StatusCode::NOT_FOUND, page_html("No such run", body)).into_response();
        }
        Err(err) => return failure(&err.to_string()),
    };
    let children = match runs.children(&q.key).await {
        Ok(children) => children,
        Err(err) => return failure(&err.to_string()),
    };
    let values = crate::json_values(&*app.journal, &q.key)
        .await
        .unwrap_or_default();
    let shown = |name: &str| {
        values
            .get(name)
            .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
    };
    let body = html! {
        p { a href="./" { "← runs" } }
        h1 { (run.key) " " span class={ "status " (name(&run.status)) } { (name(&run.status)) } }
        dl {
            dt { "workflow" } dd { (run.workflow) }
            dt { "executions" } dd { (run.executions) @if run.failures > 0 { " (" (run.failures) " failed in a row)" } }
            dt { "created" } dd { (stamp(run.created_at)) }
            dt { "updated" } dd { (stamp(run.updated_at)) }
            @if let Some(due) = run.due_at { dt { "due" } dd { (stamp(due)) } }
            @if let Some(owner) = &run.lease_owner {
                dt { "lease" } dd { (owner) @if let Some(t) = run.lease_expires_at { ", expires " (stamp(t)) } }
            }
            @if let Some(t) = run.deadline { dt { "deadline" } dd { (stamp(t)) } }
            @if let Some(t) = run.cancel_requested_at { dt { "cancel requested" } dd { (stamp(t)) } }
            @if let Some(t) = run.resumed_at { dt { "resumed" } dd { (stamp(t)) } }
            @if let Some(parent) = &run.parent { dt { "parent" } dd { a href={ "run?key=" (encode(parent)) } { (parent) } } }
            @if let Some(from) = &run.forked_from { dt { "forked from" } dd { a href={ "run?key=" (encode(from)) } { (from) } } }
            @if let Some(err) = &run.last_error { dt { "last error" } dd.error { (err) } }
        }
        h2 { "Input" }
        (record(&run.input, shown("input")))
        @if let Some(outcome) = &run.outcome {
            h2 { "Outcome" }
            (record(outcome, shown("outcome")))
        }
        h2 { "Steps" }
        @if run.steps.is_empty() {
            p.empty { "No step recorded." }
        } @else {
            (timeline(&run))
            table.steps {
                thead { tr { th { "step" } th { "kind" } th { "status" } th { "attempts" } th { "duration" } th { "output" } th { "error" } } }
                tbody {
                    @for s in &run.steps {
                        tr {
                            td { code { (s.id) } }
                            td { (kind(&s.id)) }
                            td { span class={ "status " (name(&s.status)) } { (name(&s.status)) } }
                            td.num { (s.attempts) @if let Some(t) = s.retry_at { br; small { "next " (stamp(t)) } } }
                            td.num { (s.duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_default()) }
                            td { (s.output.as_ref().map(|o| value_summary(o, values.get(&s.id))).unwrap_or_default()) }
                            td.error { (s.last_error.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        @if !children.is_empty() {
            h2 { "Children" }
            table.runs {
                thead { tr { th { "key" } th { "workflow" } th { "status" } } }
                tbody {
                    @for c in &children {
                        tr {
                            td { a href={ "run?key=" (encode(&c.key)) } { (c.key) } }
                            td { (c.workflow) }
                            td { span class={ "status " (name(&c.status)) } { (name(&c.status)) } }
                        }
                    }
                }
            }
        }
    };
    page_html(&run.key, body).into_response()
}

/// One bar per step, from its first attempt to its record, on the run's
/// time axis; retrying steps reach to now.
fn timeline(run: &RunInfo) -> Markup {
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let start = ms(run.created_at);
    let end = run
        .steps
        .iter()
        .map(|s| ms(s.updated_at).max(s.retry_at.map(ms).unwrap_or(0)))
        .fold(ms(run.updated_at), i64::max)
        .max(start + 1);
    let span = (end - start) as f64;
    let pct = |t: i64| (((t - start) as f64 / span) * 100.0).clamp(0.0, 100.0);
    html! {
        div.timeline {
            @for s in &run.steps {
                @let left = pct(ms(s.started_at));
                @let right = pct(ms(s.updated_at).max(s.retry_at.map(ms).unwrap_or(0)));
                div.lane {
                    span.label { (s.id) }
                    span.track {
                        span class={ "bar " (name(&s.status)) " " (kind(&s.id)) }
                            style=(format!("left:{left:.2}%;width:max(3px,{:.2}%)", right - left))
                            title=(bar_title(s)) {}
                    }
                }
            }
            div.axis { span { (stamp(run.created_at)) } span { (stamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(end as u64))) } }
        }
    }
}

fn bar_title(s: &StepInfo) -> String {
    let mut title = format!("{} — {}, {} attempt(s)", s.id, name(&s.status), s.attempts);
    if let Some(ms) = s.duration_ms {
        title.push_str(&format!(", {ms} ms"));
    }
    if let Some(err) = &s.last_error {
        title.push_str(&format!("; last error: {err}"));
    }
    title
}

/// What a journal entry is, from its id.
fn kind(id: &str) -> &'static str {
    let prefix = |p: &str| id.starts_with(p);
    if prefix("recv-deadline:") {
        "time-limit"
    } else if prefix("recv:") {
        "message"
    } else if prefix("child:") {
        "child-start"
    } else if prefix("child-result:") {
        "child-result"
    } else if prefix("race:") {
        "race"
    } else if prefix("set_event:") {
        "event"
    } else {
        "step"
    }
}

fn record(info: &resumable::RecordInfo, value: Option<String>) -> Markup {
    html! {
        @match value {
            Some(json) => pre.json { (json) },
            None => p.record { (info.size) " bytes" @if let Some(c) = &info.codec { " (" (c) ")" } " — not shown: only values journaled with the JSON codec are decoded here" },
        }
    }
}

fn failure(message: &str) -> Response {
    let body = html! { h1 { "The journal could not be read" } p.error { (message) } };
    (StatusCode::INTERNAL_SERVER_ERROR, page_html("Error", body)).into_response()
}

fn page_html(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " — resumable" }
                    style { (PreEscaped(CSS)) }
                }
                body { main { (body) } }
            }
        }
        .into_string(),
    )
}

fn encode(key: &str) -> String {
    form_urlencoded::byte_serialize(key.as_bytes()).collect()
}

fn query(q: &ListQuery, after: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("state", &q.state),
        ("workflow", &q.workflow),
        ("parent", &q.parent),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            s.append_pair(k, v);
        }
    }
    s.append_pair("after", after);
    s.finish()
}

fn stamp(t: SystemTime) -> String {
    crate::rfc3339(t, false)
}

const CSS: &str = "
body { font: 14px/1.45 system-ui, sans-serif; color: #1d2430; background: #f6f7f9; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 16px; margin: 24px 0 8px; }
a { color: #1f5fbf; text-decoration: none; } a:hover { text-decoration: underline; }
nav.counts { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 12px; }
nav.counts a { background: #fff; border: 1px solid #d8dde5; border-radius: 12px; padding: 2px 10px; }
nav.counts .n { font-weight: 600; }
form { display: flex; gap: 12px; align-items: center; margin-bottom: 12px; }
input, select, button { font: inherit; padding: 2px 6px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #d8dde5; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eceff3; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; } td.num { text-align: right; }
td.error, dd.error, p.error { color: #a3241b; max-width: 420px; overflow-wrap: anywhere; }
.status { border-radius: 10px; padding: 1px 8px; font-size: 12px; font-weight: 600; background: #e5e8ee; }
.completed { background: #d7f2df; color: #17622f; } .failed, .dead_lettered { background: #fbdcd9; color: #8d1d15; }
.running, .pending { background: #dbe7fb; color: #1b4b94; } .waiting, .waiting_to_retry, .backing_off, .retrying { background: #fcefcf; color: #7a5600; }
.cancelled, .deadline_exceeded { background: #e7e2f3; color: #4b3a80; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; background: #fff; border: 1px solid #d8dde5; padding: 12px; }
dt { color: #5b6678; } dd { margin: 0; }
pre.json { background: #fff; border: 1px solid #d8dde5; padding: 10px; overflow-x: auto; }
p.record, p.empty { color: #5b6678; }
.timeline { background: #fff; border: 1px solid #d8dde5; padding: 10px; margin-bottom: 12px; }
.lane { display: flex; align-items: center; gap: 10px; height: 22px; }
.lane .label { width: 230px; font: 12px ui-monospace, monospace; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.track { position: relative; flex: 1; height: 12px; background: #f0f2f5; border-radius: 6px; }
.bar { position: absolute; top: 0; height: 12px; border-radius: 6px; background: #4a9d63; }
.bar.failed { background: #c9483d; } .bar.retrying { background: #e0a526; }
.bar.message, .bar.child-result, .bar.time-limit { background: #8a7bd1; } .bar.event, .bar.race, .bar.child-start { background: #5f8fd6; }
.axis { display: flex; justify-content: space-between; margin-left: 240px; color: #5b6678; font-size: 12px; padding-top: 4px; }
";
