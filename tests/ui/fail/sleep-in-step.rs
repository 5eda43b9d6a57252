use std::time::Duration;

use resumable::{resumable, sleep, step};

#[resumable]
async fn remind() -> Result<u32, String> {
    let n = step!("send", {
        sleep!("pause", Duration::from_secs(60));
        1
    });
    Ok(n)
}

fn main() {}
