use resumable::{race, recv, resumable};

#[resumable]
async fn checkout() -> Result<u64, String> {
    let paid: u64 = race!("paid", recv!("card"), async { recv!("cash") });
    Ok(paid)
}

fn main() {}
