use resumable::{resumable, step};

#[resumable]
async fn upload(users: Vec<u64>) -> Result<Vec<u64>, String> {
    let store = async |user: u64| Ok::<_, String>(step!("store", { user }));
    let mut ids = Vec::new();
    for user in users {
        ids.push(store(user).await?);
    }
    Ok(ids)
}

fn main() {}
