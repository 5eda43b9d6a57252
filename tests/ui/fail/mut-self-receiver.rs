use resumable::{resumable, step};

struct App {
    uploads: u32,
}

impl App {
    #[resumable]
    async fn upload(&mut self, user: u64) -> Result<u64, String> {
        let id = step!("store", { user });
        Ok(id)
    }
}

fn main() {}
