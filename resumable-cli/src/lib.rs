//! The library half of the `resumable` tool: the web view ([`web`]), which
//! you can mount in your own axum app, and what the tool shows of a run's
//! values.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;

use resumable::{Journal, Json, Slot};

pub mod text;
pub mod web;

/// The last time RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_WRITABLE: std::time::Duration = std::time::Duration::from_secs(253_402_300_799);

/// `t` in RFC 3339 (UTC), to the millisecond with `millis`; `never` for a
/// time past year 9999 (a run that waits for a message without a time
/// limit is due at the end of time).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
///
/// assert_eq!(resumable_cli::rfc3339(UNIX_EPOCH + Duration::from_secs(86_400), false), "1970-01-02T00:00:00Z");
/// assert_eq!(resumable_cli::rfc3339(UNIX_EPOCH + Duration::from_secs(1 << 40), false), "never");
/// ```
pub fn rfc3339(t: std::time::SystemTime, millis: bool) -> String {
    let in_range = t
        .duration_since(std::time::UNIX_EPOCH)
        .is_ok_and(|d| d <= LAST_WRITABLE);
    match (in_range, millis) {
        (false, _) => "never".to_owned(),
        (true, true) => humantime::format_rfc3339_millis(t).to_string(),
        (true, false) => humantime::format_rfc3339_seconds(t).to_string(),
    }
}

/// A run's values journaled with the JSON codec, decoded, by `input`,
/// `outcome` and step id; values of other codecs are left out (they cannot
/// be decoded without their types). Empty if no run has the key.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use resumable::{resumable, step, MemoryJournal, Runtime};
///
/// #[resumable(codec = resumable::Json)]
/// async fn double(n: u32) -> Result<u32, String> {
///     Ok(step!("double", { n * 2 }))
/// }
///
/// let journal = std::sync::Arc::new(MemoryJournal::new());
/// Runtime::new(journal.clone()).run("d", double(21)).await?.unwrap();
/// let values = resumable_cli::json_values(&*journal, "d").await?;
/// assert_eq!(values["double#0"], serde_json::json!(42));
/// assert_eq!(values["input"], serde_json::json!([21]));
/// # Ok(())
/// # }
/// ```
pub async fn json_values(
    journal: &dyn Journal,
    key: &str,
) -> resumable::Result<HashMap<String, serde_json::Value>> {
    let mut values = HashMap::new();
    let Some(snapshot) = journal.load_run(key).await? else {
        return Ok(values);
    };
    let run = &snapshot.run;
    let mut put = |name: String, slot: Slot, record: &[u8]| -> resumable::Result<()> {
        if let Some(value) = Json::open_record(key, || slot.clone(), record)? {
            values.insert(name, value);
        }
        Ok(())
    };
    put("input".into(), Slot::Input, &run.input)?;
    if let Some(outcome) = run.outcome.as_deref().filter(|o| !o.is_empty()) {
        put("outcome".into(), Slot::Outcome, outcome)?;
    }
    for step in &snapshot.steps {
        if let Some(output) = step.output.as_deref().filter(|o| !o.is_empty()) {
            put(
                step.step_id.clone(),
                Slot::Step(step.step_id.clone()),
                output,
            )?;
        }
    }
    Ok(values)
}
