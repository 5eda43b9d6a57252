use resumable::{resumable, step};

struct Pool;

#[resumable]
async fn upload(#[dep] pool: Pool, user: u64) -> Result<u64, String> {
    let _ = &pool;
    let id = step!("store", { user });
    Ok(id)
}

fn main() {}
