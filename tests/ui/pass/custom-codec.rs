use resumable::{BoxError, Codec, resumable, step};

/// JSON instead of bincode.
struct Json;

impl Codec for Json {
    const NAME: &'static str = "json";
    fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }
    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[resumable(codec = Json, compatible = ["00000000000000aa"])]
async fn upload(user: u64) -> Result<u64, String> {
    let id = resumable::step!("store", { user });
    Ok(id)
}

mod renamed {
    pub use resumable as durable;
}

#[renamed::durable::resumable(crate = renamed::durable)]
async fn with_renamed_crate(user: u64) -> Result<u64, String> {
    let id = step!("store", { user });
    Ok(id)
}

fn main() {}
