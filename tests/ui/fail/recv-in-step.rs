use resumable::{recv, resumable, step};

#[resumable]
async fn approve() -> Result<bool, String> {
    let ok = step!("ask", {
        let answer: bool = recv!("decision");
        answer
    });
    Ok(ok)
}

fn main() {}
