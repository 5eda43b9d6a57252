use resumable::{MemoryJournal, Runtime, resumable, step};
use std::sync::atomic::{AtomicU32, Ordering};

struct App {
    calls: AtomicU32,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("boom")]
struct Boom;

impl App {
    #[resumable]
    async fn greet(&self, name: String) -> Result<String, Boom> {
        let greeting = step!("greet", {
            self.calls.fetch_add(1, Ordering::SeqCst);
            format!("hello {name}")
        });
        for i in 0..3u32 {
            step!("loop", |s| {
                let _ = s.idempotency_key();
                i
            });
        }
        Ok(greeting)
    }
}

#[tokio::test]
async fn smoke() {
    let rt = Runtime::new(MemoryJournal::new());
    let app = App { calls: AtomicU32::new(0) };
    let out = rt.run("k1", app.greet("bob".into())).await.unwrap().unwrap();
    assert_eq!(out, "hello bob");
    let out = rt.run("k1", app.greet("bob".into())).await.unwrap().unwrap();
    assert_eq!(out, "hello bob");
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
    let info = rt.run_info("k1").await.unwrap().unwrap();
    println!("{info:#?}");
}
