//! The web view in a real browser: a journal with runs in every state, the
//! server on a free port, the pages loaded by headless Chromium (Debian's
//! package), their content checked and screenshots saved under
//! `target/screenshots/`.
//!
//! Without Chromium the test says so and passes, unless
//! `RESUMABLE_REQUIRE_CHROMIUM` is set (CI sets it, and installs Chromium).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use resumable::{
    Journal, RetryPolicy, Runtime, SqliteJournal, WorkflowRef, child, recv, resumable, step,
};

/// The child's reference names its codec: its input is sealed with it.
const PACK: WorkflowRef<(u32,), Result<String, String>, resumable::Json> =
    WorkflowRef::named("web::pack");

#[resumable(name = "web::pack", codec = resumable::Json)]
async fn pack(item: u32) -> Result<String, String> {
    let label = step!("label", { format!("parcel-{item}") });
    Ok(label)
}

#[resumable(name = "web::order", codec = resumable::Json)]
async fn order(items: u32) -> Result<Vec<String>, String> {
    let reserved = step!("reserve", { items * 2 });
    let mut parcels = Vec::new();
    for item in 0..items {
        parcels.push(child!("pack", PACK, (item,))?);
    }
    let approved: bool = recv!("approval");
    if !approved {
        return Err(format!("refused after reserving {reserved}"));
    }
    Ok(parcels)
}

#[resumable(name = "web::flaky")]
async fn flaky() -> Result<u32, String> {
    let later = RetryPolicy::exponential(5)
        .initial_delay(Duration::from_secs(600))
        .max_delay(Duration::from_secs(600));
    let n = step!("call", retry = later, {
        Err::<u32, String>("the service is down".into())?
    });
    Ok(n)
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8(found.stdout).ok()?;
            let path = path.trim();
            (!path.is_empty()).then(|| PathBuf::from(path))
        })
}

fn browser(chromium: &Path, args: &[&str]) -> String {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs in every state, and one with a hostile key.
async fn journal(path: &Path) -> Arc<dyn Journal> {
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(path).await.unwrap());
    let rt = Runtime::builder(journal.clone())
        .hold_waits(Duration::ZERO)
        .dead_letter_after(1)
        .build();
    let completer = || {
        resumable::Completer::new(&rt)
            .register(resumable::workflow!(pack), ())
            .unwrap()
            .register(resumable::workflow!(flaky), ())
            .unwrap()
    };
    // An order waiting for approval, its two children done.
    let _ = rt.run("order-1", order(2)).await;
    for _ in 0..2 {
        completer().run_until_idle().await.unwrap();
        let _ = rt.run("order-1", order(2)).await;
    }
    // One approved and completed, one refused (failed).
    for (key, ok) in [("order-2", true), ("order-3", false)] {
        rt.submit(key, order(0)).await.unwrap();
        rt.client()
            .send(
                &WorkflowRef::<(u32,), Result<Vec<String>, String>, resumable::Json>::named(
                    "web::order",
                ),
                key,
                "approval",
                &ok,
                "a",
            )
            .await
            .unwrap();
        let _ = rt.run(key, order(0)).await;
    }
    // Retrying a step, due in ten minutes: given back by a completer.
    rt.submit("flaky-1", flaky()).await.unwrap();
    completer().run_until_idle().await.unwrap();
    rt.submit("pending-1", pack(9)).await.unwrap();
    rt.submit("cancelled-1", pack(8)).await.unwrap();
    rt.runs().cancel("cancelled-1").await.unwrap();
    rt.submit("<script>alert(1)</script>", pack(7))
        .await
        .unwrap();
    journal
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pages_show_runs_in_every_state_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("RESUMABLE_REQUIRE_CHROMIUM").is_none(),
            "Chromium is required (RESUMABLE_REQUIRE_CHROMIUM is set) but not installed"
        );
        eprintln!("skipped: no Chromium on this machine (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(&dir.path().join("journal.db")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(resumable_cli::web::serve(journal, listener));
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let list = tokio::task::spawn_blocking({
        let (chromium, base) = (chromium.clone(), base.clone());
        move || browser(&chromium, &["--dump-dom", &base])
    })
    .await
    .unwrap();
    for text in [
        "order-1",
        "order-2",
        "order-3",
        "flaky-1",
        "pending-1",
        "cancelled-1",
        "web::pack",
    ] {
        assert!(list.contains(text), "the list shows {text}: {list}");
    }
    for status in [
        "waiting",
        "completed",
        "failed",
        "backing_off",
        "pending",
        "cancelled",
    ] {
        assert!(
            list.contains(&format!("status {status}")),
            "a {status} run: {list}"
        );
    }
    // A hostile key is text, not markup.
    assert!(
        list.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !list.contains("<script>alert"),
        "{list}"
    );

    let order_page = format!("{base}run?key=order-1");
    let page = tokio::task::spawn_blocking({
        let (chromium, url) = (chromium.clone(), order_page.clone());
        move || browser(&chromium, &["--dump-dom", &url])
    })
    .await
    .unwrap();
    for text in [
        "reserve#0",
        "child:pack#0",
        "child-result:pack#1",
        "class=\"lane\"",
        "order-1/child:pack#0",
    ] {
        assert!(page.contains(text), "the run page shows {text}: {page}");
    }
    assert!(
        page.contains("<pre class=\"json\">[\n  2\n]</pre>"),
        "the input, decoded as JSON: {page}"
    );

    let failed = tokio::task::spawn_blocking({
        let (chromium, url) = (chromium.clone(), format!("{base}run?key=order-3"));
        move || browser(&chromium, &["--dump-dom", &url])
    })
    .await
    .unwrap();
    assert!(
        failed.contains("refused after reserving 0"),
        "the outcome, with its error: {failed}"
    );

    let missing = tokio::task::spawn_blocking({
        let (chromium, url) = (chromium.clone(), format!("{base}run?key=nobody"));
        move || browser(&chromium, &["--dump-dom", &url])
    })
    .await
    .unwrap();
    assert!(missing.contains("No run has the key"), "{missing}");

    for (name, url) in [
        ("runs.png", base.clone()),
        ("run.png", order_page),
        ("retrying.png", format!("{base}run?key=flaky-1")),
    ] {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        let arg = format!("--screenshot={}", path.display());
        tokio::task::spawn_blocking({
            let chromium = chromium.clone();
            move || browser(&chromium, &[&arg, "--window-size=1280,1000", &url])
        })
        .await
        .unwrap();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{name} is a real picture ({size} bytes)");
    }
}
