//! The attribute's arguments: `#[resumable(name = "...", retry = ..., codec = ..., compatible = [...], crate = ...)]`.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, LitStr, Path, Token};

use crate::errors::Errors;

const VALID: &str = "valid arguments are `name = \"...\"`, `retry = <RetryPolicy>`, `codec = <type>`, `compatible = [\"<fingerprint>\", ...]` and `crate = <path>`";

#[derive(Default)]
pub struct Args {
    pub name: Option<LitStr>,
    pub retry: Option<Expr>,
    pub codec: Option<syn::Type>,
    pub compatible: Vec<u64>,
    pub krate: Option<Path>,
}

enum Arg {
    Name(LitStr),
    Retry(Expr),
    Codec(syn::Type),
    Compatible(Vec<(u64, LitStr)>),
    Crate(Path),
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(Token![crate]) {
            input.parse::<Token![crate]>()?;
            input.parse::<Token![=]>()?;
            return Ok(Arg::Crate(input.parse()?));
        }
        let key: syn::Ident = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), format!("expected an argument; {VALID}")))?;
        input
            .parse::<Token![=]>()
            .map_err(|e| syn::Error::new(e.span(), format!("expected `=` after `{key}`")))?;
        match key.to_string().as_str() {
            "name" => Ok(Arg::Name(input.parse()?)),
            "retry" => Ok(Arg::Retry(input.parse()?)),
            "codec" => Ok(Arg::Codec(input.parse()?)),
            "compatible" => {
                let content;
                syn::bracketed!(content in input);
                let list = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
                let mut out = Vec::new();
                for lit in list {
                    let text = lit.value();
                    let digits = text.trim_start_matches("0x");
                    match u64::from_str_radix(digits, 16) {
                        Ok(v) if !digits.is_empty() => out.push((v, lit)),
                        _ => {
                            return Err(syn::Error::new_spanned(
                                lit,
                                "a fingerprint is 16 hexadecimal digits, as printed in the version mismatch error",
                            ));
                        }
                    }
                }
                Ok(Arg::Compatible(out))
            }
            other => Err(syn::Error::new_spanned(
                &key,
                format!("unknown argument `{other}` of #[resumable]; {VALID}"),
            )),
        }
    }
}

impl Args {
    pub fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
        let mut args = Args::default();
        let parsed =
            syn::parse::Parser::parse2(Punctuated::<Arg, Token![,]>::parse_terminated, tokens);
        let list = match parsed {
            Ok(list) => list,
            Err(e) => {
                errors.push(e);
                return args;
            }
        };
        for arg in list {
            match arg {
                Arg::Name(lit) if lit.value().trim().is_empty() => {
                    errors.spanned(&lit, "a workflow name must not be empty")
                }
                Arg::Name(lit) => args.name = Some(lit),
                Arg::Retry(expr) => args.retry = Some(expr),
                Arg::Codec(ty) => args.codec = Some(ty),
                Arg::Compatible(list) => args.compatible.extend(list.into_iter().map(|(v, _)| v)),
                Arg::Crate(path) => args.krate = Some(path),
            }
        }
        args
    }
}
