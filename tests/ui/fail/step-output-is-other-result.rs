// A transient error of another type than the workflow's, journaled as the
// step's success: a warning (denied here, as a project may).
#![deny(deprecated)]

use resumable::{resumable, step};

#[derive(serde::Serialize, serde::Deserialize)]
struct Busy;

async fn reserve(seats: u32) -> Result<u32, Busy> {
    Ok(seats)
}

#[resumable]
async fn book(seats: u32) -> Result<u32, String> {
    let reserved = step!("reserve", { reserve(seats).await });
    Ok(reserved.unwrap_or(0))
}

fn main() {}
