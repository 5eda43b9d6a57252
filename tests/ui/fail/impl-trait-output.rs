use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> Result<impl serde::Serialize, String> {
    let id = step!("store", { user });
    Ok(id)
}

fn main() {}
