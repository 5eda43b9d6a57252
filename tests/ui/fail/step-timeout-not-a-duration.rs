use resumable::{resumable, step};

#[resumable]
async fn pay() -> Result<u32, String> {
    let n = step!("charge", timeout = 5, { 1 });
    Ok(n)
}

fn main() {}
