use resumable::{Completer, MemoryJournal, Runtime, resumable, step, workflow};

struct Db;

struct App {
    db: Db,
}

impl App {
    /// Documented, public, with a receiver.
    #[resumable(name = "app.upload")]
    pub async fn upload(&self, user: u64, image: Vec<u8>) -> Result<String, String> {
        let _db = &self.db;
        let key = step!("store", { format!("{user}-{}", image.len()) });
        Ok(key)
    }
}

#[resumable]
async fn transfer(#[dep] db: &Db, #[dep] retries: u32, from: String, amount: u64) -> Result<u64, String> {
    let _ = (db, retries);
    let moved = step!("debit", |s| {
        let _key: String = s.idempotency_key();
        amount
    });
    Ok(moved + from.len() as u64)
}

#[resumable]
async fn no_arguments() -> Result<(), String> {
    Ok(())
}

fn main() {
    let rt = Runtime::new(MemoryJournal::new());
    let app = App { db: Db };
    let _run = rt.run("a", app.upload(1, vec![1, 2, 3]));
    let _run = rt.run("b", transfer(&app.db, 3, "x".into(), 5));
    let _run = rt.run("c", no_arguments());
    let _completer = Completer::new(&rt)
        .register(workflow!(App::upload), App { db: Db })
        .and_then(|c| c.register(workflow!(transfer), (Db, 3)))
        .and_then(|c| c.register(workflow!(no_arguments), ()));
}
