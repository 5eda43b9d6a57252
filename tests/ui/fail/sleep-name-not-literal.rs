use std::time::Duration;

use resumable::{resumable, sleep};

#[resumable]
async fn remind(days: u64) -> Result<(), String> {
    let name = "pause";
    sleep!(name, Duration::from_secs(days * 86_400));
    Ok(())
}

fn main() {}
