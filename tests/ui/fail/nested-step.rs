use resumable::{resumable, step};

#[resumable]
async fn upload(user: u64) -> Result<u64, String> {
    let id = step!("outer", {
        let inner = step!("inner", { user });
        inner + 1
    });
    Ok(id)
}

fn main() {}
