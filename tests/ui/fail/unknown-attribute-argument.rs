use resumable::{resumable, step};

#[resumable(retries = 3)]
async fn upload(user: u64) -> Result<u64, String> {
    let id = step!("store", { user });
    Ok(id)
}

fn main() {}
