use std::time::Duration;

use resumable::{recv, resumable};

#[resumable]
async fn approve(topic: String) -> Result<Option<bool>, String> {
    let answer: Option<bool> = recv!(topic, timeout = Duration::from_secs(60));
    Ok(answer)
}

fn main() {}
