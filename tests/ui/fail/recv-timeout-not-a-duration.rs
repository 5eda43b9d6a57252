use resumable::{recv, resumable};

#[resumable]
async fn approve() -> Result<Option<bool>, String> {
    let answer: Option<bool> = recv!("decision", timeout = 60);
    Ok(answer)
}

fn main() {}
