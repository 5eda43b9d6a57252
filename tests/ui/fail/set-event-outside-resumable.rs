use resumable::set_event;

async fn ship() -> Result<(), String> {
    set_event!("status", "shipped".to_string());
    Ok(())
}

fn main() {}
