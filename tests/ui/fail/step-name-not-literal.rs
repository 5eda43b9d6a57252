use resumable::{resumable, step};

const NAME: &str = "store";

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let id = step!(NAME, { user });
    Ok(id)
}

fn main() {}
