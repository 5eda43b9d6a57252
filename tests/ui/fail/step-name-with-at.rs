use resumable::{resumable, step};

#[resumable]
async fn notify() -> Result<u32, String> {
    let sent = step!("mail@home", { 1 });
    Ok(sent)
}

fn main() {}
