use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let id = if user > 10 {
        step!("store", { user })
    } else {
        step!("store", { user + 1 })
    };
    Ok(id)
}

fn main() {}
