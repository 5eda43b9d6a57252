use resumable::{child, resumable, WorkflowRef};

const PACK: WorkflowRef<(u32,), Result<String, String>> = WorkflowRef::named("pack");

#[resumable]
async fn order() -> Result<String, String> {
    let packed = child!("pack", PACK, ("one",))?;
    Ok(packed)
}

fn main() {}
