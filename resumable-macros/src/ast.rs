//! The parsed view of a `#[resumable]` function, and the checks on its signature.

use proc_macro2::Span;
use syn::visit_mut::VisitMut;
use syn::{FnArg, Ident, ItemFn, Lifetime, Pat, ReturnType, Type};

use crate::errors::Errors;

/// One argument other than the receiver.
pub struct Arg {
    /// The pattern as written (`mut image`), used in the body function.
    pub pat: Pat,
    /// The bound name (`image`).
    pub name: Ident,
    pub ty: Type,
    /// Marked `#[dep]`: supplied again on resume, never journaled.
    pub dep: bool,
}

pub struct Function {
    pub item: ItemFn,
    /// `&self` present.
    pub method: bool,
    pub args: Vec<Arg>,
    pub ret: Type,
}

/// The lifetime every borrowed dependency of an invocation shares.
pub fn invocation_lifetime() -> Lifetime {
    Lifetime::new("'__resumable", Span::call_site())
}

impl Function {
    /// Parses and checks the signature. Problems go to `errors`; `None` means
    /// the function cannot be rewritten at all.
    pub fn parse(mut item: ItemFn, errors: &mut Errors) -> Option<Function> {
        let sig = &item.sig;
        let mut fatal = false;
        if sig.asyncness.is_none() {
            errors.spanned(
                sig.fn_token,
                "#[resumable] can only be used on an `async fn`: write `async fn` (a workflow awaits its steps)",
            );
            fatal = true;
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.spanned(
                &sig.generics,
                "generic workflows are not supported: a run is resumed from its journaled input, so its types must be concrete; write a non-generic #[resumable] function for each type",
            );
            fatal = true;
        }
        if let Some(c) = &sig.constness {
            errors.spanned(c, "a #[resumable] function cannot be `const`");
            fatal = true;
        }
        if let Some(u) = &sig.unsafety {
            errors.spanned(u, "a #[resumable] function cannot be `unsafe`");
            fatal = true;
        }
        if let Some(abi) = &sig.abi {
            errors.spanned(abi, "a #[resumable] function cannot have an `extern` ABI");
            fatal = true;
        }
        if let Some(v) = &sig.variadic {
            errors.spanned(v, "a #[resumable] function cannot be variadic");
            fatal = true;
        }
        let ret = match &sig.output {
            ReturnType::Type(_, ty) if obviously_not_result(ty) => {
                errors.spanned(
                    ty,
                    "a #[resumable] function must return `Result<T, E>`: its outcome is journaled, and a failed step returns its error `E`",
                );
                fatal = true;
                (**ty).clone()
            }
            ReturnType::Type(_, ty) if mentions_impl_trait(ty) => {
                errors.spanned(
                    ty,
                    "a #[resumable] function cannot return `impl Trait`: its outcome is journaled and decoded again, so name a concrete type",
                );
                fatal = true;
                (**ty).clone()
            }
            ReturnType::Type(_, ty) => (**ty).clone(),
            ReturnType::Default => {
                errors.spanned(
                    &sig.ident,
                    "a #[resumable] function must return `Result<T, E>`: its outcome is journaled, and a failed step returns its error `E`",
                );
                fatal = true;
                syn::parse_quote!(())
            }
        };

        let mut method = false;
        let mut args = Vec::new();
        for input in item.sig.inputs.iter_mut() {
            match input {
                FnArg::Receiver(recv) => {
                    let shared_ref = recv.reference.is_some()
                        && recv.mutability.is_none()
                        && recv.colon_token.is_none();
                    if !shared_ref {
                        errors.spanned(
                            &*recv,
                            "a #[resumable] method must take `&self`: the receiver is shared by every run the completer resumes",
                        );
                        fatal = true;
                    }
                    method = true;
                }
                FnArg::Typed(typed) => {
                    let before = typed.attrs.len();
                    typed.attrs.retain(|a| !a.path().is_ident("dep"));
                    let dep = typed.attrs.len() != before;
                    let name = match &*typed.pat {
                        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
                            p.ident.clone()
                        }
                        other => {
                            errors.spanned(
                                other,
                                "use a plain name for each argument of a #[resumable] function (destructure it inside the body)",
                            );
                            fatal = true;
                            continue;
                        }
                    };
                    fatal |= !check_arg_type(&name, &typed.ty, dep, errors);
                    args.push(Arg {
                        pat: (*typed.pat).clone(),
                        name,
                        ty: (*typed.ty).clone(),
                        dep,
                    });
                }
            }
        }
        if fatal {
            return None;
        }
        Some(Function {
            item,
            method,
            args,
            ret,
        })
    }

    pub fn inputs(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|a| !a.dep)
    }

    pub fn deps(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|a| a.dep)
    }
}

/// A type that is certainly not a `Result` (aliases such as `io::Result`
/// cannot be told apart here; the `WorkflowResult` bound catches those).
fn obviously_not_result(ty: &Type) -> bool {
    const NOT_RESULT: &[&str] = &[
        "bool", "char", "str", "String", "Vec", "Option", "Box", "u8", "u16", "u32", "u64", "u128",
        "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32", "f64",
    ];
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| NOT_RESULT.contains(&s.ident.to_string().as_str())),
        Type::Paren(p) => obviously_not_result(&p.elem),
        Type::Group(g) => obviously_not_result(&g.elem),
        Type::Macro(_) | Type::Verbatim(_) => false,
        _ => true,
    }
}

fn mentions_impl_trait(ty: &Type) -> bool {
    struct Finds(bool);
    impl syn::visit::Visit<'_> for Finds {
        fn visit_type_impl_trait(&mut self, _: &syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finds = Finds(false);
    syn::visit::Visit::visit_type(&mut finds, ty);
    finds.0
}

/// Reports an argument type a workflow cannot take; `false` if it is one.
fn check_arg_type(name: &Ident, ty: &Type, dep: bool, errors: &mut Errors) -> bool {
    let message = match ty {
        Type::ImplTrait(_) => format!(
            "`{name}` has an `impl Trait` type, which makes the workflow generic; use a concrete type"
        ),
        Type::Reference(r) if dep && r.mutability.is_some() => format!(
            "dependency `{name}` cannot be a `&mut` reference: dependencies are shared by concurrent runs; take `&` and use interior mutability"
        ),
        Type::Reference(_) if !dep => format!(
            "workflow input `{name}` is a reference, but inputs are journaled and must be owned: take an owned type (e.g. `String` for `&str`), or mark it `#[dep]` if it is a client or handle supplied again on resume"
        ),
        _ => return true,
    };
    errors.spanned(ty, message);
    false
}

/// Gives elided lifetimes in a dependency's type the invocation's lifetime,
/// so the invocation can borrow it: `&Db` becomes `&'__resumable Db`.
pub struct NameElidedLifetimes;

impl VisitMut for NameElidedLifetimes {
    fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
        if r.lifetime.is_none() {
            r.lifetime = Some(invocation_lifetime());
        }
        syn::visit_mut::visit_type_reference_mut(self, r);
    }

    fn visit_lifetime_mut(&mut self, l: &mut Lifetime) {
        if l.ident == "_" {
            *l = invocation_lifetime();
        }
    }
}
