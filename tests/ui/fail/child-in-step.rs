use resumable::{child, resumable, step, WorkflowRef};

const PACK: WorkflowRef<(u32,), Result<String, String>> = WorkflowRef::named("pack");

#[resumable]
async fn order() -> Result<String, String> {
    let packed = step!("ship", {
        child!("pack", PACK, (1,))?
    });
    Ok(packed)
}

fn main() {}
