use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> u64 {
    step!("store", { user })
}

fn main() {}
