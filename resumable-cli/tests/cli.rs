//! The `resumable` tool as a person or a script runs it: a journal with
//! runs in several states, the binary run on it, its output and exit codes.

use std::path::Path;
use std::process::{Command, Output};

use std::time::Duration;

use resumable::{Error, Runtime, SqliteJournal, recv, resumable, set_event, step};

#[resumable(name = "cli::charge")]
async fn charge(cents: u64) -> Result<u64, String> {
    let fee = step!("fee", { cents / 10 });
    if cents == 0 {
        return Err("nothing to charge".into());
    }
    let total = step!("total", { cents + fee });
    Ok(total)
}

/// A workflow journaled with the JSON codec: the tool prints its values,
/// and can send it messages.
#[resumable(name = "cli::approve", codec = resumable::Json)]
async fn approve(order: u64) -> Result<String, String> {
    set_event!("status", "waiting".to_string());
    let ok: bool = recv!("decision");
    Ok(format!("order {order}: {ok}"))
}

fn tool(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resumable"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("RESUMABLE_DB")
        .env_remove("RESUMABLE_URL")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A journal with a completed, a failed, a pending and a cancelled run.
async fn journal(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("journal.db");
    let rt = Runtime::new(SqliteJournal::open(&path).await.unwrap());
    rt.run("paid", charge(100)).await.unwrap().unwrap();
    rt.run("empty", charge(0)).await.unwrap().unwrap_err();
    rt.submit("waiting", charge(5)).await.unwrap();
    rt.submit("dropped", charge(7)).await.unwrap();
    rt.runs().cancel("dropped").await.unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_show_print_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = journal(dir.path()).await;

    let out = tool(&db, &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("KEY") && header.contains("STATUS"),
        "{text}"
    );
    for (key, status) in [
        ("paid", "completed"),
        ("empty", "failed"),
        ("waiting", "pending"),
        ("dropped", "cancelled"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.contains(status) && line.contains("cli::charge"),
            "{line}"
        );
    }

    let out = tool(&db, &["--json", "list", "--state", "failed"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["key"], "empty");
    assert_eq!(lines[0]["status"], "failed");
    assert!(lines[0]["created_at"].as_str().unwrap().ends_with('Z'));

    let out = tool(&db, &["show", "paid"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("status  completed"), "{text}");
    for step in ["fee#0", "total#0"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(step) && l.contains("completed")),
            "{text}"
        );
    }

    let out = tool(&db, &["show", "paid", "--json"]);
    let run: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(run["steps"].as_array().unwrap().len(), 2);
    assert_eq!(run["steps"][1]["id"], "total#0");
    assert_eq!(run["outcome"]["codec"], "bincode2");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_steer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = journal(dir.path()).await;

    let out = tool(&db, &["cancel", "waiting"]);
    assert_eq!(
        stdout(&out).trim(),
        "waiting: now cancelled",
        "{}",
        stderr(&out)
    );
    let out = tool(&db, &["resume", "waiting"]);
    assert_eq!(stdout(&out).trim(), "waiting: now incomplete");
    let out = tool(&db, &["cancel", "paid"]);
    assert_eq!(stdout(&out).trim(), "paid: unchanged (completed)");
    let out = tool(&db, &["--json", "retry-now", "waiting"]);
    let done: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(done["run"], "waiting");

    let out = tool(
        &db,
        &[
            "fork",
            "paid",
            "--from-step",
            "1",
            "--new-key",
            "paid-again",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("paid-again"));
    let out = tool(&db, &["--json", "show", "paid-again"]);
    let fork: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(fork["forked_from"], "paid");
    assert_eq!(fork["steps"].as_array().unwrap().len(), 1);

    let out = tool(&db, &["purge", "--older-than", "0s", "--dry-run"]);
    assert_eq!(
        stdout(&out).trim(),
        "would purge 3 finished runs",
        "{}",
        stderr(&out)
    );
    let out = tool(&db, &["--json", "purge", "--older-than", "0s"]);
    let purged: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(purged["purged"], 3);
    let out = tool(&db, &["list"]);
    let text = stdout(&out);
    let keys: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(keys, ["waiting", "paid-again"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mistakes_get_one_line_and_an_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let db = journal(dir.path()).await;

    let out = tool(&db, &["show", "nobody"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stderr(&out).trim(), "error: no run has the key \"nobody\"");
    let out = tool(&db, &["cancel", "nobody"]);
    assert_eq!(out.status.code(), Some(3));

    let out = tool(&dir.path().join("missing.db"), &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: no journal file at") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        !dir.path().join("missing.db").exists(),
        "a missing journal is not created"
    );

    let out = tool(&db, &["list", "--state", "sleeping"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown state \"sleeping\""),
        "{}",
        stderr(&out)
    );

    let out = tool(
        &db,
        &["fork", "paid", "--from-step", "0", "--new-key", "empty"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));

    let no_journal = Command::new(env!("CARGO_BIN_EXE_resumable"))
        .arg("list")
        .env_remove("RESUMABLE_DB")
        .env_remove("RESUMABLE_URL")
        .output()
        .unwrap();
    assert_eq!(no_journal.status.code(), Some(2));
    assert!(
        stderr(&no_journal).contains("--db"),
        "{}",
        stderr(&no_journal)
    );

    let not_sqlite = dir.path().join("notes.txt");
    std::fs::write(&not_sqlite, "not a database").unwrap();
    let out = tool(&not_sqlite, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: ") && stderr(&out).lines().count() == 1,
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_runs_show_their_values_take_messages_and_publish_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = journal(dir.path()).await;
    let rt = Runtime::builder(SqliteJournal::open(&db).await.unwrap())
        .hold_waits(Duration::ZERO)
        .build();
    assert!(matches!(
        rt.run("a", approve(3)).await,
        Err(Error::WaitingForMessage { .. })
    ));

    // Waiting for a message without a time limit: due never.
    let out = tool(&db, &["show", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("due  never"), "{}", stdout(&out));
    let out = tool(&db, &["--json", "show", "a"]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["due_at"], "never");

    let out = tool(&db, &["events", "a", "status"]);
    assert_eq!(stdout(&out).trim(), "\"waiting\"", "{}", stderr(&out));
    let out = tool(&db, &["events", "a", "eta"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no event \"eta\""),
        "{}",
        stderr(&out)
    );

    let out = tool(
        &db,
        &["send", "a", "decision", "true", "--idempotency-key", "k1"],
    );
    assert_eq!(
        stdout(&out).trim(),
        "a: message sent on \"decision\"",
        "{}",
        stderr(&out)
    );
    let out = tool(
        &db,
        &["send", "a", "decision", "false", "--idempotency-key", "k1"],
    );
    assert!(
        stdout(&out).contains("sent before; nothing sent"),
        "{}",
        stdout(&out)
    );
    let out = tool(
        &db,
        &[
            "send",
            "a",
            "decision",
            "yes please",
            "--idempotency-key",
            "k2",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: the message is not JSON"),
        "{}",
        stderr(&out)
    );
    let out = tool(
        &db,
        &["send", "paid", "decision", "true", "--idempotency-key", "k"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("codec bincode2, not json"),
        "{}",
        stderr(&out)
    );

    assert_eq!(
        rt.run("a", approve(3)).await.unwrap().unwrap(),
        "order 3: true"
    );
    let out = tool(&db, &["show", "a"]);
    let text = stdout(&out);
    assert!(
        text.contains("input  [3]") && text.contains("\"order 3: true\""),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("recv:decision#0") && l.contains("true")),
        "{text}"
    );

    let out = tool(&db, &["export", "a"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["run"]["key"], "a");
    assert_eq!(lines[0]["run"]["input"]["value"], serde_json::json!([3]));
    assert_eq!(
        lines[0]["run"]["outcome"]["value"],
        serde_json::json!({"Ok": "order 3: true"})
    );
    let received = lines
        .iter()
        .find(|l| l["step"]["id"] == "recv:decision#0")
        .expect("the receive is exported");
    assert_eq!(received["step"]["output"]["value"], true);
}
