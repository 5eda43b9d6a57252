use resumable::step;

async fn upload() -> Result<u32, String> {
    let n = step!("count", { 1 });
    Ok(n)
}

fn main() {}
