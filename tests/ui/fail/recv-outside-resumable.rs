use resumable::recv;

async fn approve() -> bool {
    recv!("decision")
}

fn main() {}
