use resumable::{resumable, step};

#[resumable]
async fn upload(user: &str) -> Result<usize, String> {
    let n = step!("store", { user.len() });
    Ok(n)
}

fn main() {}
