use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let id = step!("", { user });
    Ok(id)
}

fn main() {}
