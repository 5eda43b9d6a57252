#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[doc(inline)]
pub use resumable_macros::{
    child, race, recv, resumable, set_event, sleep, sleep_until, step, workflow,
};
#[doc(inline)]
pub use resumable_runtime::*;
