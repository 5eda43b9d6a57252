use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let mut count = 0;
    let doubled = step!("count", {
        count += user;
        let count = 5;
        count * 2
    });
    Ok(count + doubled)
}

fn main() {}
