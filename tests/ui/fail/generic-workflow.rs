use resumable::{resumable, step};

#[resumable]
async fn upload<T: serde::Serialize>(item: T) -> Result<u64, String> {
    let n = step!("store", { 1 });
    Ok(n)
}

fn main() {}
