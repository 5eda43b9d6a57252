use std::time::Duration;

use resumable::{resumable, step};

async fn charge() -> u32 {
    1
}

#[resumable]
async fn pay() -> Result<u32, String> {
    let paid = tokio::select! {
        paid = async { step!("charge", { charge().await }) } => paid,
        _ = tokio::time::sleep(Duration::from_secs(5)) => 0,
    };
    Ok(paid)
}

fn main() {}
