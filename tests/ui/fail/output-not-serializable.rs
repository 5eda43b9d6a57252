use resumable::{resumable, step};

#[derive(Debug)]
struct UploadError;

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upload failed")
    }
}

#[resumable]
async fn upload(user: u64) -> Result<u64, UploadError> {
    let id = step!("store", { user });
    Ok(id)
}

fn main() {}
