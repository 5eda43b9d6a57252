use resumable::{resumable, step};

#[resumable]
async fn upload(users: Vec<u64>) -> Result<u64, String> {
    let mut last = 0;
    for user in users {
        last = step!("store", {
            if user == 0 {
                break;
            }
            user
        });
    }
    Ok(last)
}

fn main() {}
