use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let mut stored = 0;
    step!("store", {
        stored = user * 2;
    });
    Ok(stored)
}

fn main() {}
