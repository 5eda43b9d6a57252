use resumable::{resumable, step};

#[resumable]
async fn upload(users: Vec<u64>) -> Result<Vec<u64>, String> {
    let ids = users.iter().map(|u| step!("store", { *u })).collect();
    Ok(ids)
}

fn main() {}
