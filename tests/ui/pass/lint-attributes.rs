#![deny(unused_variables)]

use resumable::{resumable, step};

/// The function's own lint attributes reach the code in its body.
#[allow(unused_variables)]
#[resumable]
async fn allowed(n: u32) -> Result<u32, String> {
    let unused = 5;
    let doubled = step!("double", { n * 2 });
    Ok(doubled)
}

fn main() {
    let _ = allowed(1);
}
