use std::time::{Duration, SystemTime};

use resumable::{resumable, step};

#[resumable]
async fn invoice(order: u64) -> Result<String, String> {
    let issued = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let number = step!("number", { format!("{order}-{issued:?}") });
    Ok(number)
}

fn main() {}
