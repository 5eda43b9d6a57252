use resumable::{resumable, set_event, step};

#[resumable]
async fn ship() -> Result<u32, String> {
    let n = step!("pack", {
        set_event!("status", "packing".to_string());
        1
    });
    Ok(n)
}

fn main() {}
