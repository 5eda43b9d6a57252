use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let id = step!("store", {
        if user == 0 {
            return Ok(0);
        }
        user
    });
    Ok(id)
}

fn main() {}
