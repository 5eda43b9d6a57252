//! How the tool and the web view write runs as text: statuses, times,
//! journaled values.

use std::time::SystemTime;

use resumable::RecordInfo;
use serde::Serialize;
use serde_json::Value;

/// A status's or state's name as stored and printed (`dead_lettered`).
///
/// ```
/// assert_eq!(resumable_cli::text::name(&resumable::RunStatus::DeadLettered), "dead_lettered");
/// ```
pub fn name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

/// A journaled value in a table cell: its JSON cut at 60 characters where
/// it was decoded, else its size and codec.
///
/// ```
/// use resumable::RecordInfo;
///
/// let info = RecordInfo { size: 37, codec: Some("bincode2".into()) };
/// assert_eq!(resumable_cli::text::value_summary(&info, None), "37 bytes (bincode2)");
/// let value = serde_json::json!({"ok": true});
/// assert_eq!(resumable_cli::text::value_summary(&info, Some(&value)), r#"{"ok":true}"#);
/// ```
pub fn value_summary(info: &RecordInfo, value: Option<&Value>) -> String {
    if let Some(value) = value {
        return cut(&value.to_string(), 60);
    }
    match &info.codec {
        Some(codec) => format!("{} bytes ({codec})", info.size),
        None => format!("{} bytes", info.size),
    }
}

/// `text` on one line, at most `max` characters (an ellipsis ends a cut).
///
/// ```
/// assert_eq!(resumable_cli::text::cut("a\n  b", 10), "a b");
/// assert_eq!(resumable_cli::text::cut("abcdef", 3), "abc…");
/// ```
pub fn cut(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

/// How long ago `t` was (or how far ahead), in its largest unit: `5m ago`,
/// `in 2h`.
///
/// ```
/// use std::time::{Duration, SystemTime};
///
/// let earlier = SystemTime::now() - Duration::from_secs(300);
/// assert_eq!(resumable_cli::text::ago(earlier), "5m ago");
/// ```
pub fn ago(t: SystemTime) -> String {
    let (d, past) = match SystemTime::now().duration_since(t) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let s = d.as_secs();
    let text = match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    };
    match past {
        true => format!("{text} ago"),
        false => format!("in {text}"),
    }
}
