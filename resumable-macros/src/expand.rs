//! Code generation for `#[resumable]`, `step!` and `workflow!`.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Expr, Ident, ItemFn, LitStr, Path, Type};

use crate::args::Args;
use crate::ast::{Function, NameElidedLifetimes, invocation_lifetime};
use crate::errors::Errors;
use crate::fingerprint::fnv1a64;
use crate::steps::{ChildCall, RaceCall, RecvCall, SleepCall, StepCall, StepRewriter};

/// What every generated step needs to know about its workflow.
pub struct Expander {
    krate: Path,
    codec: Type,
    ret: Type,
}

pub fn resumable(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = Args::parse(args, &mut errors);
    let item_fn: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            errors.at(
                Span::call_site(),
                "#[resumable] can only be used on an `async fn` (a free function or a `&self` method)",
            );
            let errors = errors.to_compile_errors();
            return quote!(#errors #item);
        }
    };
    let krate = args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::resumable));
    match Function::parse(item_fn.clone(), &mut errors) {
        Some(function) => {
            let expanded = expand(&args, krate, function, &mut errors);
            let errors = errors.to_compile_errors();
            quote!(#errors #expanded)
        }
        None => {
            // Emit the user's function, steps reduced to their bodies, so the
            // errors above are the only ones and IDEs keep working.
            let mut plain = item_fn;
            for input in plain.sig.inputs.iter_mut() {
                if let syn::FnArg::Typed(t) = input {
                    t.attrs.retain(|a| !a.path().is_ident("dep"));
                }
            }
            let expander = Expander {
                krate,
                codec: syn::parse_quote!(()),
                ret: syn::parse_quote!(()),
            };
            let mut ignored = Errors::default();
            StepRewriter::new(&mut ignored, &expander, true).visit_block_mut(&mut plain.block);
            let errors = errors.to_compile_errors();
            quote! {
                #errors
                #[allow(unused_braces, unused_variables, unreachable_code, dead_code)]
                #plain
            }
        }
    }
}

fn expand(args: &Args, krate: Path, f: Function, errors: &mut Errors) -> TokenStream {
    let codec: Type = args
        .codec
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(#krate::Bincode));
    let expander = Expander {
        krate: krate.clone(),
        codec: codec.clone(),
        ret: f.ret.clone(),
    };
    let mut block = (*f.item.block).clone();
    let shape = {
        let mut rewriter = StepRewriter::new(errors, &expander, false);
        rewriter.visit_block_mut(&mut block);
        rewriter.shape()
    };
    let ident = &f.item.sig.ident;
    let name = args
        .name
        .as_ref()
        .map_or_else(|| ident.to_string(), |l| l.value());
    let body_fn = format_ident!("__resumable_body_{}", ident);
    let meta_fn = format_ident!("__resumable_meta_{}", ident);
    let (call, meta_call) = if f.method {
        (quote!(Self::#body_fn), quote!(Self::#meta_fn()))
    } else {
        (quote!(#body_fn), quote!(#meta_fn()))
    };
    let input_tys: Vec<&Type> = f.inputs().map(|a| &a.ty).collect();
    let input_names: Vec<&Ident> = f.inputs().map(|a| &a.name).collect();
    let g = Generator {
        f: &f,
        krate: &krate,
        codec: &codec,
        input_ty: quote!((#(#input_tys,)*)),
        input_pat: quote!((#(#input_names,)*)),
        call,
        meta_call,
        ctx: Ident::new("__resumable_ctx", Span::call_site()),
        cfg_attrs: attrs_named(&f, &["cfg"]),
    };
    let hash = shape_hash(&name, &input_tys, &f.ret, &shape);
    // Once an error is reported, what it leaves behind (an unreachable tail,
    // an unused variable) is noise.
    let quiet = !errors.is_empty();
    let outer = g.outer(&input_tys);
    let body = g.body(&body_fn, &block, quiet);
    let meta = g.meta(&meta_fn, &name, hash, args);
    let workflow = g.workflow(&format_ident!("__resumable_workflow_{}", ident));
    quote!(#outer #body #meta #workflow)
}

/// The fingerprint of what makes runs of two versions compatible: the name,
/// input and output types, and step structure (the codec is mixed in at run time).
fn shape_hash(name: &str, input_tys: &[&Type], ret: &Type, shape: &str) -> u64 {
    let inputs: Vec<String> = input_tys
        .iter()
        .map(|t| canonical(t.to_token_stream()))
        .collect();
    fnv1a64(&format!(
        "workflow={name};input=({});output={};steps=[{shape}]",
        inputs.join(","),
        canonical(ret.to_token_stream()),
    ))
}

/// The function's own attributes with one of these names.
fn attrs_named<'f>(f: &'f Function, names: &[&str]) -> Vec<&'f syn::Attribute> {
    let named = |a: &&syn::Attribute| names.iter().any(|n| a.path().is_ident(n));
    f.item.attrs.iter().filter(named).collect()
}

/// Writes the four items of a workflow from one parsed function.
struct Generator<'a> {
    f: &'a Function,
    krate: &'a Path,
    codec: &'a Type,
    /// `(A, B,)`: the journaled input's type and its destructuring pattern.
    input_ty: TokenStream,
    input_pat: TokenStream,
    /// How to call the body fn, and the meta fn.
    call: TokenStream,
    meta_call: TokenStream,
    ctx: Ident,
    cfg_attrs: Vec<&'a syn::Attribute>,
}

impl Generator<'_> {
    /// Input:  #[resumable] async fn upload(&self, #[dep] db: &Db, user: u64) -> Result<T, E> { body }
    /// Output: fn upload<'r>(&'r self, db: &'r Db, user: u64) -> Invocation<'r, (u64,), Result<T, E>, Codec>
    ///         that journals `(user,)` and starts the body fn.
    fn outer(&self, input_tys: &[&Type]) -> TokenStream {
        let Generator {
            f,
            krate,
            codec,
            input_ty,
            input_pat,
            call,
            meta_call,
            ctx,
            ..
        } = self;
        let (ident, ret) = (&f.item.sig.ident, &f.ret);
        let lt = invocation_lifetime();
        let vis = &f.item.vis;
        // `expect` goes to the body only, where its lint can fire.
        let attrs = f.item.attrs.iter().filter(|a| !a.path().is_ident("expect"));
        let params = f.args.iter().map(|a| {
            let name = &a.name;
            let mut ty = a.ty.clone();
            if a.dep {
                NameElidedLifetimes.visit_type_mut(&mut ty);
            }
            quote!(#name: #ty)
        });
        let receiver = f.method.then(|| quote!(&#lt self,));
        let self_arg = f.method.then(|| quote!(self,));
        let arg_names = f.args.iter().map(|a| &a.name);
        let input_checks = input_tys.iter().map(
            |ty| quote_spanned!(ty.span()=> let _ = #krate::__private::assert_journaled::<#ty>;),
        );
        let ret_check =
            quote_spanned!(ret.span()=> let _ = #krate::__private::assert_workflow_result::<#ret>;);
        quote! {
            #(#attrs)*
            #vis fn #ident<#lt>(#receiver #(#params),*) -> #krate::Invocation<#lt, #input_ty, #ret, #codec> {
                #(#input_checks)*
                #ret_check
                #krate::__private::invocation::<_, _, #codec, _>(
                    #meta_call,
                    #input_pat,
                    move |#ctx, #input_pat| -> #krate::__private::BoxFuture<#lt, #ret> {
                        #krate::__private::Box::pin(#call(#self_arg #ctx, #(#arg_names),*))
                    },
                )
            }
        }
    }

    /// The user's body, with every step rewritten, taking the run context first.
    fn body(&self, body_fn: &Ident, block: &syn::Block, quiet: bool) -> TokenStream {
        let Generator {
            f,
            krate,
            codec,
            ctx,
            ..
        } = self;
        let ret = &f.ret;
        let params = f.args.iter().map(|a| {
            let (pat, ty) = (&a.pat, &a.ty);
            quote!(#pat: #ty)
        });
        let self_param = f.method.then(|| quote!(&self,));
        let quiet = quiet.then(|| quote!(#[allow(unreachable_code, unused_variables)]));
        // Lints and `cfg` of the function govern the body, where the user's code is.
        let attrs = attrs_named(
            f,
            &[
                "allow", "warn", "deny", "forbid", "expect", "cfg", "cfg_attr",
            ],
        );
        let errors = quote_spanned! {ret.span()=>
            let __resumable_errors = &#krate::__private::error_codec::<
                #codec,
                <#ret as #krate::__private::WorkflowResult>::Err,
            >();
        };
        quote! {
            #[doc(hidden)]
            #[allow(clippy::too_many_arguments, clippy::needless_question_mark, unused_braces)]
            #quiet
            #(#attrs)*
            async fn #body_fn(#self_param __resumable_ctx_owned: #krate::__private::Ctx, #(#params),*) -> #ret {
                let #ctx: &#krate::__private::Ctx = &__resumable_ctx_owned;
                #errors
                #block
            }
        }
    }

    /// The workflow's description, with `file!()`/`line!()` of the function.
    fn meta(&self, meta_fn: &Ident, name: &str, hash: u64, args: &Args) -> TokenStream {
        let Generator {
            f,
            krate,
            codec,
            cfg_attrs,
            ..
        } = self;
        let retry = option(args.retry.as_ref());
        let compatible = &args.compatible;
        // The identity: the explicit name, kept as written; else the module
        // path and the function's name, with a method's type between them,
        // so that workflows of one name never adopt each other's runs. The
        // type's name is only known to the compiler: it is read once.
        let (name_cell, name) = match (&args.name, f.method) {
            (Some(_), _) => (None, quote!(#name)),
            (None, false) => (
                None,
                quote!(::core::concat!(::core::module_path!(), "::", #name)),
            ),
            (None, true) => (
                Some(quote! {
                    static NAME: #krate::__private::NameCell = #krate::__private::NameCell::new();
                }),
                quote! {
                    #krate::__private::method_identity(
                        &NAME,
                        ::core::module_path!(),
                        ::core::any::type_name::<Self>(),
                        #name,
                    )
                },
            ),
        };
        let location = location(krate, f.item.sig.ident.span());
        let meta = quote! {
            #[doc(hidden)]
            #(#cfg_attrs)*
            fn #meta_fn() -> #krate::__private::WorkflowMeta {
                #name_cell
                #krate::__private::WorkflowMeta {
                    name: #name,
                    fingerprint: #krate::__private::fingerprint(#hash, <#codec as #krate::Codec>::NAME),
                    compatible: &[#(#compatible),*],
                    retry: #retry,
                    location: #location,
                }
            }
        };
        meta
    }

    /// Input:  the same function.
    /// Output: fn __resumable_workflow_upload() -> Workflow<Deps, (u64,), Result<T, E>, Codec>,
    ///         where Deps holds what is not journaled (the receiver, then the
    ///         `#[dep]`s), for the completer.
    fn workflow(&self, workflow_fn: &Ident) -> TokenStream {
        let Generator {
            f,
            krate,
            codec,
            input_ty,
            input_pat,
            call,
            meta_call,
            ctx,
            cfg_attrs,
        } = self;
        let ret = &f.ret;
        let vis = &f.item.vis;
        // (stored type, passed by reference)
        let mut deps: Vec<(Type, bool)> = Vec::new();
        if f.method {
            deps.push((syn::parse_quote!(Self), true));
        }
        for a in f.deps() {
            match &a.ty {
                // `&'static T` is a value like any other: stored and copied.
                Type::Reference(r) if r.lifetime.as_ref().is_none_or(|l| l.ident == "_") => {
                    deps.push(((*r.elem).clone(), true))
                }
                ty => deps.push((ty.clone(), false)),
            }
        }
        let deps_ty = match deps.len() {
            0 => quote!(()),
            1 => deps[0].0.to_token_stream(),
            _ => {
                let tys = deps.iter().map(|d| &d.0);
                quote!((#(#tys,)*))
            }
        };
        let dep_access = |i: usize| -> TokenStream {
            let (ty, by_ref) = &deps[i];
            let access = if deps.len() == 1 {
                quote!(__resumable_deps)
            } else {
                let index = syn::Index::from(i);
                quote!(&__resumable_deps.#index)
            };
            if *by_ref {
                access
            } else {
                // Spanned on the type: a dependency that cannot be cloned is reported there.
                quote_spanned!(ty.span()=> #krate::__private::clone_dependency::<#ty>(#access))
            }
        };
        // The body fn's arguments in order: receiver, context, then each argument.
        let mut next_dep = 0..;
        let mut resume_args = Vec::new();
        if f.method {
            resume_args.push(dep_access(next_dep.next().unwrap_or_default()));
        }
        resume_args.push(ctx.to_token_stream());
        for a in &f.args {
            resume_args.push(if a.dep {
                dep_access(next_dep.next().unwrap_or_default())
            } else {
                a.name.to_token_stream()
            });
        }
        let deps_param = if deps.is_empty() {
            quote!(_)
        } else {
            quote!(__resumable_deps)
        };
        quote! {
            #[doc(hidden)]
            #(#cfg_attrs)*
            #vis fn #workflow_fn() -> #krate::Workflow<#deps_ty, #input_ty, #ret, #codec> {
                #krate::__private::workflow::<_, _, _, #codec>(
                    #meta_call,
                    |#deps_param, #ctx, #input_pat| #krate::__private::Box::pin(#call(#(#resume_args),*)),
                )
            }
        }
    }
}

fn option(expr: Option<&Expr>) -> TokenStream {
    match expr {
        Some(e) => quote!(::core::option::Option::Some(#e)),
        None => quote!(::core::option::Option::None),
    }
}

/// `Location { file, line, column }` of `span`: its own line and column
/// (1-based, as `column!()`), which `line!()` in generated code cannot give
/// (it reports the outermost macro call, the `#[resumable]` attribute).
fn location(krate: &Path, span: Span) -> TokenStream {
    let start = span.start();
    let (line, column) = (start.line as u32, start.column as u32 + 1);
    quote! {
        #krate::__private::Location {
            file: ::core::file!(),
            line: #line,
            column: #column,
        }
    }
}

/// Tokens as text that does not depend on the compiler's pretty-printer, so
/// a fingerprint survives a toolchain upgrade.
fn canonical(tokens: TokenStream) -> String {
    let mut out = Vec::new();
    for tt in tokens {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push(format!("{open}{}{close}", canonical(g.stream())));
            }
            TokenTree::Ident(i) => out.push(i.to_string()),
            TokenTree::Punct(p) => out.push(p.as_char().to_string()),
            TokenTree::Literal(l) => out.push(l.to_string()),
        }
    }
    out.join(" ")
}

impl Expander {
    /// Input:  step!("name", retry = P, |s| { body })
    /// Output: a loop that replays the journaled output or runs `body` under
    ///         the retry policy, journaling its output before yielding it;
    ///         a failed step's error propagates with `?`.
    pub fn step(&self, call: &StepCall) -> Expr {
        let Expander {
            krate: k,
            codec,
            ret,
        } = self;
        let span = call.span;
        let name = &call.name;
        let body = &call.body;
        let retry = option(call.retry.as_ref());
        let timeout = call.timeout.as_ref().map(|limit| {
            // Spanned on the value: one of another type is reported there.
            let limit = quote_spanned!(limit.span()=> ::core::option::Option::<::core::time::Duration>::Some(#limit));
            quote!(.with_timeout(#limit))
        });
        let ctx = Ident::new("__resumable_ctx", Span::call_site());
        let bind = call.context.as_ref().map(|pat| match pat {
            syn::Pat::Type(_) => quote!(let #pat = __resumable_step.context();),
            _ => quote!(let #pat: #k::__private::StepContext = __resumable_step.context();),
        });
        let location = location(k, span);
        let site = quote! {
            static __RESUMABLE_SITE: #k::__private::StepSite = #k::__private::StepSite {
                name: #name,
                location: #location,
            };
        };
        let path = &call.path;
        // Spanned on the `step!` itself, so a step output that cannot be
        // journaled, or an error that does not convert, is reported there.
        syn::parse_quote_spanned! {span=>
            ({
                #path!(@used);
                #site
                let mut __resumable_step =
                    #k::__private::Step::new(#ctx, &__RESUMABLE_SITE, #retry, __resumable_errors)
                        #timeout;
                loop {
                    if let #k::__private::Prepared::Replayed(__resumable_recorded) = __resumable_step
                        .prepare::<#codec, _>()
                        .await
                    {
                        break __resumable_recorded;
                    }
                    #bind
                    let __resumable_result = __resumable_step
                        .attempt(async {
                            ::core::result::Result::<_, <#ret as #k::__private::WorkflowResult>::Err>::Ok(#body)
                        })
                        .await;
                    let __resumable_terminal = match &__resumable_result {
                        ::core::result::Result::Ok(::core::result::Result::Err(__resumable_error)) => {
                            #[allow(unused_imports)]
                            use #k::__private::{ViaClassify as _, ViaDefault as _};
                            (&#k::__private::Classifier(__resumable_error)).is_terminal()
                        }
                        _ => false,
                    };
                    match __resumable_step.settle::<#codec, _>(__resumable_result, __resumable_terminal).await {
                        #k::__private::Settled::Done(__resumable_value) => {
                            #[allow(unused_imports)]
                            use #k::__private::OutputCheckFallback as _;
                            #k::__private::OutputCheck::<
                                _,
                                <#ret as #k::__private::WorkflowResult>::Err,
                            >::new(&__resumable_value)
                            .check();
                            break ::core::result::Result::Ok(__resumable_value)
                        }
                        #k::__private::Settled::Retry => {}
                        #k::__private::Settled::Failed(__resumable_error) => {
                            break ::core::result::Result::Err(__resumable_error)
                        }
                    }
                }
            })?
        }
    }

    /// Input:  sleep!("name", duration)  /  sleep_until!("name", time)
    /// Output: sleep::<Codec, _>(ctx, &SITE, Wake::After(duration), errors).await
    ///         (the wake time is journaled as the step `name#<n>`)
    pub fn sleep(&self, call: &SleepCall, span: Span) -> Expr {
        let k = &self.krate;
        let codec = &self.codec;
        let name = &call.name;
        let wake = &call.wake;
        let ctx = Ident::new("__resumable_ctx", Span::call_site());
        let location = location(k, span);
        let site = quote! {
            static __RESUMABLE_SITE: #k::__private::StepSite = #k::__private::StepSite {
                name: #name,
                location: #location,
            };
        };
        // Spanned on the argument: a value of another type is reported there.
        let wake = match call.until {
            true => quote_spanned!(wake.span()=> #k::__private::Wake::At(#wake)),
            false => quote_spanned!(wake.span()=> #k::__private::Wake::After(#wake)),
        };
        let path = &call.path;
        syn::parse_quote_spanned! {span=>
            {
                #path!(@used);
                #site
                #k::__private::sleep::<#codec, _>(#ctx, &__RESUMABLE_SITE, #wake, __resumable_errors)
                    .await
            }
        }
    }

    /// Input:  recv!("topic")  /  recv!("topic", timeout = duration)
    /// Output: recv::<Codec, _, _>(ctx, &SITE, "topic", errors).await
    ///         (with a time limit: recv_until(.., Some((&DEADLINE, duration)), ..),
    ///         an Option)
    pub fn recv(&self, call: &RecvCall, span: Span) -> Expr {
        let k = &self.krate;
        let codec = &self.codec;
        let topic = &call.topic;
        let name = LitStr::new(&format!("recv:{}", topic.value()), topic.span());
        let deadline = LitStr::new(&format!("recv-deadline:{}", topic.value()), topic.span());
        let ctx = Ident::new("__resumable_ctx", Span::call_site());
        let location = location(k, span);
        let path = &call.path;
        let site = quote! {
            static __RESUMABLE_SITE: #k::__private::StepSite = #k::__private::StepSite {
                name: #name,
                location: #location,
            };
        };
        let receive = match &call.timeout {
            None => quote! {
                #k::__private::recv::<#codec, _, _>(#ctx, &__RESUMABLE_SITE, #topic, __resumable_errors)
            },
            Some(timeout) => {
                // Spanned on the argument: a value of another type is reported there.
                let limit = quote_spanned!(timeout.span()=> {
                    let __resumable_limit: ::core::time::Duration = #timeout;
                    __resumable_limit
                });
                quote! {
                    static __RESUMABLE_DEADLINE: #k::__private::StepSite = #k::__private::StepSite {
                        name: #deadline,
                        location: #location,
                    };
                    #k::__private::recv_until::<#codec, _, _>(
                        #ctx,
                        &__RESUMABLE_SITE,
                        #topic,
                        ::core::option::Option::Some((&__RESUMABLE_DEADLINE, #limit)),
                        __resumable_errors,
                    )
                }
            }
        };
        syn::parse_quote_spanned! {span=>
            {
                #path!(@used);
                #site
                #receive.await
            }
        }
    }

    /// Input:  child!("name", WORKFLOW, input)  /  child!(.., key = k)
    /// Output: child::<Codec, _, _, _, _>(ctx, &SITES, &WORKFLOW, input, key, errors).await
    pub fn child(&self, call: &ChildCall, span: Span) -> Expr {
        let k = &self.krate;
        let codec = &self.codec;
        let name = &call.name;
        let start = LitStr::new(&format!("child:{}", name.value()), name.span());
        let result = LitStr::new(&format!("child-result:{}", name.value()), name.span());
        let ctx = Ident::new("__resumable_ctx", Span::call_site());
        let location = location(k, span);
        let path = &call.path;
        let workflow = &call.workflow;
        let input = &call.input;
        let key = match &call.key {
            Some(key) => quote_spanned!(key.span()=> ::core::option::Option::Some(
                ::std::string::String::from(#key)
            )),
            None => quote!(::core::option::Option::None),
        };
        syn::parse_quote_spanned! {span=>
            {
                #path!(@used);
                static __RESUMABLE_CHILD: #k::__private::ChildSites = #k::__private::ChildSites {
                    start: #k::__private::StepSite { name: #start, location: #location },
                    result: #k::__private::StepSite { name: #result, location: #location },
                };
                #k::__private::child::<#codec, _, _, _, _>(
                    #ctx,
                    &__RESUMABLE_CHILD,
                    &(#workflow),
                    #input,
                    #key,
                    __resumable_errors,
                )
                .await
            }
        }
    }

    /// The child reduced to its arguments, where it cannot be journaled:
    /// keeps the reported error the only one.
    pub fn plain_child(&self, call: &ChildCall) -> Expr {
        let k = &self.krate;
        let path = &call.path;
        let (workflow, input) = (&call.workflow, &call.input);
        let key = call.key.iter();
        // Of the child's output type, so that the code around it type-checks.
        syn::parse_quote!({
            #path!(@used);
            #(let _ = &#key;)*
            #k::__private::child_unreachable(&(#workflow), #input)
        })
    }

    /// Input:  race!("name", async { .. }, async { .. })
    /// Output: race::<Codec, _, _>(ctx, &SITE, vec![(scope, Box::pin(branch)), ..], errors).await
    ///         each branch built in a scope of its own, which the race
    ///         forgets if the branch loses.
    pub fn race(&self, call: &RaceCall, span: Span) -> Expr {
        let k = &self.krate;
        let codec = &self.codec;
        let name = LitStr::new(&format!("race:{}", call.name.value()), call.name.span());
        let ctx = Ident::new("__resumable_ctx", Span::call_site());
        let location = location(k, span);
        let path = &call.path;
        let branches = call.branches.iter().map(|branch| {
            quote! {
                {
                    let __resumable_branch = #k::__private::Ctx::child(#ctx);
                    let #ctx: &#k::__private::Ctx = &__resumable_branch;
                    let __resumable_future: #k::__private::BoxFuture<'_, _> =
                        #k::__private::Box::pin(#branch);
                    (__resumable_branch.clone(), __resumable_future)
                }
            }
        });
        syn::parse_quote_spanned! {span=>
            {
                #path!(@used);
                static __RESUMABLE_SITE: #k::__private::StepSite = #k::__private::StepSite {
                    name: #name,
                    location: #location,
                };
                let __resumable_branches = ::std::vec![#(#branches),*];
                #k::__private::race::<#codec, _, _>(
                    #ctx,
                    &__RESUMABLE_SITE,
                    __resumable_branches,
                    __resumable_errors,
                )
                .await
            }
        }
    }

    /// The race reduced to its branches, where it cannot be journaled:
    /// keeps the reported error the only one.
    pub fn plain_race(call: &RaceCall) -> Expr {
        let path = &call.path;
        let branches = &call.branches;
        syn::parse_quote!({
            #path!(@used);
            #(let _ = #branches;)*
            ::core::panic!()
        })
    }

    /// The receive reduced to its argument, where it cannot be journaled:
    /// keeps the reported error the only one.
    pub fn plain_recv(call: &RecvCall) -> Expr {
        let path = &call.path;
        match &call.timeout {
            Some(timeout) => {
                syn::parse_quote!({ #path!(@used); let _ = #timeout; ::core::panic!() })
            }
            None => syn::parse_quote!({ #path!(@used); ::core::panic!() }),
        }
    }

    /// The sleep reduced to its argument, where it cannot be journaled:
    /// keeps the reported error the only one.
    pub fn plain_sleep(call: &SleepCall) -> Expr {
        let path = &call.path;
        let wake = &call.wake;
        syn::parse_quote!({ #path!(@used); let _ = #wake; })
    }

    /// Input:  async { ..steps.. }   (a block that may run concurrently with others)
    /// Output: { let scope = ctx.child(); async { let ctx = &scope; ..steps.. } }
    ///         so its steps are numbered in a scope fixed when the block is
    ///         created, not by when they run.
    pub fn scoped(&self, block: &syn::ExprAsync) -> Expr {
        let k = &self.krate;
        let ctx = Ident::new("__resumable_ctx", Span::call_site());
        let attrs = &block.attrs;
        let capture = &block.capture;
        let stmts = &block.block.stmts;
        syn::parse_quote! {
            {
                let __resumable_scope = #k::__private::Ctx::child(#ctx);
                #(#attrs)*
                async #capture {
                    let __resumable_scope = __resumable_scope;
                    let #ctx: &#k::__private::Ctx = &__resumable_scope;
                    #(#stmts)*
                }
            }
        }
    }

    pub fn krate(&self) -> &Path {
        &self.krate
    }

    /// The workflow's codec type.
    pub fn codec(&self) -> &Type {
        &self.codec
    }

    /// The step reduced to its body, where it cannot be journaled (the
    /// function has fatal errors, or the step is misplaced): keeps the
    /// reported error the only one.
    pub fn plain_step(call: &StepCall) -> Expr {
        let path = &call.path;
        let body = &call.body;
        match &call.context {
            Some(pat) => syn::parse_quote!({ #path!(@used); let #pat = ::core::panic!(); #body }),
            None => syn::parse_quote!({ #path!(@used); #body }),
        }
    }
}

/// Input:  workflow!(App::upload)
/// Output: App::__resumable_workflow_upload()
pub fn workflow_ref(input: TokenStream) -> TokenStream {
    let mut path: Path = match syn::parse2(input) {
        Ok(p) => p,
        Err(e) => {
            return syn::Error::new(
                e.span(),
                "workflow! takes the path of a #[resumable] function, like `workflow!(App::upload)` or `workflow!(transfer)`",
            )
            .to_compile_error();
        }
    };
    let Some(last) = path.segments.last_mut() else {
        return quote!(::core::compile_error!("workflow! needs a path"));
    };
    if !last.arguments.is_none() {
        return syn::Error::new_spanned(
            &last.arguments,
            "workflows are not generic: remove the type arguments",
        )
        .to_compile_error();
    }
    last.ident = format_ident!(
        "__resumable_workflow_{}",
        last.ident,
        span = last.ident.span()
    );
    quote!(#path())
}
