use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let id = step!("store", attempts = 5, { user });
    Ok(id)
}

fn main() {}
