use resumable::{resumable, sleep};

#[resumable]
async fn remind(seconds: u64) -> Result<(), String> {
    sleep!("pause", seconds);
    Ok(())
}

fn main() {}
