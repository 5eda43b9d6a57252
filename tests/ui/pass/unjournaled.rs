//! Calls that read the world are fine inside a step, and outside one when
//! the statement says `#[unjournaled]`.

use std::time::{Instant, SystemTime};

use resumable::{resumable, step};

#[resumable]
async fn invoice(order: u64) -> Result<String, String> {
    let issued = step!("issued", { SystemTime::now() });
    #[unjournaled]
    let started = Instant::now();
    let number = step!("number", { format!("{order}-{issued:?}") });
    #[unjournaled]
    if started.elapsed().as_secs() > 60 {
        eprintln!("slow invoice {order}");
    }
    Ok(number)
}

fn main() {}
