use resumable::{resumable, step};

struct Image {
    bytes: Vec<u8>,
}

#[resumable]
async fn upload(user: u64, image: Image) -> Result<usize, String> {
    let n = step!("store", { image.bytes.len() + user as usize });
    Ok(n)
}

fn main() {}
