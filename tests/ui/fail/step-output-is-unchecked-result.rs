#![deny(deprecated)]

use resumable::{resumable, step};

async fn save(user: u64) -> Result<u64, String> {
    Ok(user)
}

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    // Forgot the `?`: the step's output would be `Result<u64, String>`.
    let saved = step!("save", { save(user).await });
    Ok(saved.unwrap_or_default())
}

fn main() {}
