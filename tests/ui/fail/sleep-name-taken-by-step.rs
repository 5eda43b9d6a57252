use std::time::Duration;

use resumable::{resumable, sleep, step};

#[resumable]
async fn remind() -> Result<u32, String> {
    let n = step!("remind", { 1 });
    sleep!("remind", Duration::from_secs(60));
    Ok(n)
}

fn main() {}
