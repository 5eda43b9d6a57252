use resumable::{resumable, step};

struct Connection;

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let _conn = step!("connect", { Connection });
    Ok(user)
}

fn main() {}
