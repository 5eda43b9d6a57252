//! Procedural macros of [`resumable`](https://docs.rs/resumable): `#[resumable]`,
//! `step!` and `workflow!`. Use them through the `resumable` crate.
//!
//! The attribute does its work in three passes, each its own module:
//! [`args`] parses the attribute, [`ast`] parses and validates the function,
//! [`steps`] finds and checks every `step!` and computes the step structure,
//! and [`expand`] writes the code.

mod args;
mod ast;
mod errors;
mod expand;
mod fingerprint;
mod steps;

use proc_macro::TokenStream;

/// Turns an `async fn` into a durable workflow. See the `resumable` crate.
#[proc_macro_attribute]
pub fn resumable(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::resumable(args.into(), item.into()).into()
}

/// A journaled recovery point. Only meaningful inside a `#[resumable]`
/// function, which rewrites it; anywhere else it is a compile error.
#[proc_macro]
pub fn step(input: TokenStream) -> TokenStream {
    // `#[resumable]` leaves `path!(@used)` behind so that the user's
    // `use resumable::step;` counts as used.
    if input.to_string().replace(' ', "") == "@used" {
        return TokenStream::new();
    }
    quote::quote! {
        ::core::compile_error!(
            "`step!` can only be used inside a `#[resumable]` async function: add `#[resumable]` to the function that contains it"
        )
    }
    .into()
}

/// The resumable form of a `#[resumable]` function, for registering with a
/// completer: `workflow!(App::upload_profile_image)` or `workflow!(transfer)`.
#[proc_macro]
pub fn workflow(input: TokenStream) -> TokenStream {
    expand::workflow_ref(input.into()).into()
}
