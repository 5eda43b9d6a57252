use std::time::Duration;

use resumable::sleep;

async fn remind() -> Result<(), String> {
    sleep!("pause", Duration::from_secs(60));
    Ok(())
}

fn main() {}
