//! Finds every `step!` (and `sleep!`, `sleep_until!`, `set_event!`, `recv!`, which
//! are journaled as steps) in a workflow body, checks it, rewrites it, and
//! records the step structure the fingerprint is computed from.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Expr, Ident, LitStr, Macro, Pat, Stmt, Token};

use crate::checks;
use crate::errors::Errors;
use crate::expand::Expander;

/// A parsed `step!("name", [option = value,]* body)`.
pub struct StepCall {
    /// The macro's path as written (`step`, `resumable::step`).
    pub path: syn::Path,
    pub name: LitStr,
    pub retry: Option<Expr>,
    /// How long one attempt may take (a `Duration`).
    pub timeout: Option<Expr>,
    /// `|s| ...` binds the step's context to `s`.
    pub context: Option<Pat>,
    pub body: Expr,
    pub span: Span,
}

const STEP_FORM: &str = "write a step as `step!(\"name\", { ... })`, `step!(\"name\", |step| { ... })`, or with options: `step!(\"name\", retry = <RetryPolicy>, timeout = <Duration>, { ... })`";

impl Parse for StepCall {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let span = input.span();
        let name: LitStr = match input.parse::<syn::Lit>() {
            Ok(syn::Lit::Str(s)) => s,
            Ok(other) => {
                return Err(syn::Error::new_spanned(
                    other,
                    "a step name must be a string literal, like `step!(\"charge_card\", { ... })`",
                ));
            }
            Err(_) => {
                let what: TokenStream = input.parse()?;
                let target = if what.is_empty() { span } else { what.span() };
                return Err(syn::Error::new(
                    target,
                    "a step name must be a string literal, like `step!(\"charge_card\", { ... })`: the name is the step's identity in the journal, so it cannot be computed",
                ));
            }
        };
        input.parse::<Token![,]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected `,` after the step name; {STEP_FORM}"),
            )
        })?;
        let mut retry = None;
        let mut timeout = None;
        while input.peek(Ident) && input.peek2(Token![=]) && !input.peek2(Token![==]) {
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let value: Expr = input.parse()?;
            match key.to_string().as_str() {
                "retry" => retry = Some(value),
                "timeout" => timeout = Some(value),
                other => {
                    return Err(syn::Error::new_spanned(
                        key,
                        format!(
                            "unknown step option `{other}`; the valid options are `retry = <RetryPolicy>` and `timeout = <Duration>` (each attempt's limit)"
                        ),
                    ));
                }
            }
            input.parse::<Token![,]>()?;
        }
        let body: Expr = input.parse()?;
        let _ = input.parse::<Option<Token![,]>>()?;
        if !input.is_empty() {
            return Err(input.error(format!(
                "unexpected tokens after the step body; {STEP_FORM}"
            )));
        }
        match body {
            Expr::Block(_) => Ok(StepCall {
                path: syn::parse_quote!(step),
                name,
                retry,
                timeout,
                context: None,
                body,
                span,
            }),
            Expr::Closure(c)
                if c.inputs.len() == 1 && c.asyncness.is_none() && c.capture.is_none() =>
            {
                Ok(StepCall {
                    path: syn::parse_quote!(step),
                    name,
                    retry,
                    timeout,
                    context: c.inputs.into_iter().next(),
                    body: *c.body,
                    span,
                })
            }
            other => Err(syn::Error::new_spanned(
                other,
                format!(
                    "a step body must be a block `{{ ... }}` or a one-argument closure `|step| {{ ... }}`; {STEP_FORM}"
                ),
            )),
        }
    }
}

/// A parsed `sleep!("name", duration)` or `sleep_until!("name", time)`.
pub struct SleepCall {
    /// The macro's path as written (`sleep`, `resumable::sleep_until`).
    pub path: syn::Path,
    pub name: LitStr,
    /// A `Duration` (`sleep!`) or a `SystemTime` (`sleep_until!`).
    pub wake: Expr,
    /// `sleep_until!`.
    pub until: bool,
}

impl SleepCall {
    fn parse(mac: &Macro, until: bool) -> syn::Result<Self> {
        let form = match until {
            true => "write it as `sleep_until!(\"name\", <SystemTime>)`",
            false => "write it as `sleep!(\"name\", <Duration>)`",
        };
        let (name, wake) = name_and_value(mac, "a sleep's", form)?;
        Ok(SleepCall {
            path: mac.path.clone(),
            name,
            wake,
            until,
        })
    }
}

/// The string literal naming a journaled call (`what`: "a sleep's name"),
/// or an error saying it must be one; `form` shows the call's form.
fn literal(input: ParseStream, what: &str, form: &str) -> syn::Result<LitStr> {
    match input.parse::<syn::Lit>() {
        Ok(syn::Lit::Str(s)) => Ok(s),
        _ => Err(syn::Error::new(
            input.span(),
            format!("{what} must be a string literal (it is its identity in the journal); {form}"),
        )),
    }
}

/// The `("name", value)` of `sleep!`, `sleep_until!` and `set_event!`;
/// `whose` and `form` word the errors.
fn name_and_value(mac: &Macro, whose: &str, form: &str) -> syn::Result<(LitStr, Expr)> {
    mac.parse_body_with(|input: ParseStream| {
        let name = literal(input, &format!("{whose} name"), form)?;
        input.parse::<Token![,]>().map_err(|e| {
            syn::Error::new(e.span(), format!("expected `,` after the name; {form}"))
        })?;
        let value: Expr = input.parse()?;
        let _ = input.parse::<Option<Token![,]>>()?;
        if !input.is_empty() {
            return Err(input.error(format!("unexpected tokens; {form}")));
        }
        Ok((name, value))
    })
}

/// A parsed `recv!("topic")` or `recv!("topic", timeout = duration)`.
pub struct RecvCall {
    /// The macro's path as written.
    pub path: syn::Path,
    pub topic: LitStr,
    /// A `Duration`, if the receive has a time limit.
    pub timeout: Option<Expr>,
}

impl RecvCall {
    const FORM: &str = "write it as `recv!(\"topic\")` or `recv!(\"topic\", timeout = <Duration>)`";

    fn parse(mac: &Macro) -> syn::Result<Self> {
        let form = Self::FORM;
        mac.parse_body_with(|input: ParseStream| {
            let topic = literal(input, "a receive's topic", form)?;
            let mut timeout = None;
            if input.parse::<Option<Token![,]>>()?.is_some() && !input.is_empty() {
                let key: Ident = input.parse().map_err(|e| {
                    syn::Error::new(e.span(), format!("expected `timeout = ..`; {form}"))
                })?;
                if key != "timeout" {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown option `{key}`; {form}"),
                    ));
                }
                input.parse::<Token![=]>()?;
                timeout = Some(input.parse::<Expr>()?);
                let _ = input.parse::<Option<Token![,]>>()?;
            }
            if !input.is_empty() {
                return Err(input.error(format!("unexpected tokens; {form}")));
            }
            Ok(RecvCall {
                path: mac.path.clone(),
                topic,
                timeout,
            })
        })
    }
}

/// A parsed `child!("name", WORKFLOW, input)`, optionally with `key = ..`.
pub struct ChildCall {
    /// The macro's path as written.
    pub path: syn::Path,
    pub name: LitStr,
    /// The child's `WorkflowRef`.
    pub workflow: Expr,
    /// The child's input (the tuple of its journaled arguments).
    pub input: Expr,
    /// The child's run key, if given.
    pub key: Option<Expr>,
}

impl ChildCall {
    const FORM: &str = "write it as `child!(\"name\", WORKFLOW_REF, (input,))`, optionally with `, key = <run key>`";

    fn parse(mac: &Macro) -> syn::Result<Self> {
        let form = Self::FORM;
        mac.parse_body_with(|input: ParseStream| {
            let name = literal(input, "a child's name", form)?;
            let comma = |input: ParseStream, what: &str| {
                input.parse::<Token![,]>().map_err(|e| {
                    syn::Error::new(e.span(), format!("expected `,` and {what}; {form}"))
                })
            };
            comma(input, "the child's WorkflowRef")?;
            let workflow: Expr = input.parse()?;
            comma(input, "the child's input")?;
            let child_input: Expr = input.parse()?;
            let mut key = None;
            if input.parse::<Option<Token![,]>>()?.is_some() && !input.is_empty() {
                let option: Ident = input.parse()?;
                if option != "key" {
                    return Err(syn::Error::new(
                        option.span(),
                        format!("unknown option `{option}`; {form}"),
                    ));
                }
                input.parse::<Token![=]>()?;
                key = Some(input.parse::<Expr>()?);
                let _ = input.parse::<Option<Token![,]>>()?;
            }
            if !input.is_empty() {
                return Err(input.error(format!("unexpected tokens; {form}")));
            }
            Ok(ChildCall {
                path: mac.path.clone(),
                name,
                workflow,
                input: child_input,
                key,
            })
        })
    }
}

/// A parsed `race!("name", async { .. }, async { .. }, ..)`.
pub struct RaceCall {
    /// The macro's path as written.
    pub path: syn::Path,
    pub name: LitStr,
    /// The branches, `async` blocks.
    pub branches: Vec<Expr>,
}

impl RaceCall {
    const FORM: &str = "write it as `race!(\"name\", async { .. }, async { .. })`";

    fn parse(mac: &Macro) -> syn::Result<Self> {
        let form = Self::FORM;
        mac.parse_body_with(|input: ParseStream| {
            let name = literal(input, "a race's name", form)?;
            input.parse::<Token![,]>().map_err(|e| {
                syn::Error::new(e.span(), format!("expected `,` and the branches; {form}"))
            })?;
            let branches = Punctuated::<Expr, Token![,]>::parse_terminated(input)?;
            let branches: Vec<Expr> = branches.into_iter().collect();
            if branches.len() < 2 {
                return Err(syn::Error::new_spanned(
                    &name,
                    format!("a race needs at least two branches; {form}"),
                ));
            }
            if let Some(other) = branches.iter().find(|b| !matches!(b, Expr::Async(_))) {
                return Err(syn::Error::new_spanned(
                    other,
                    format!("each branch of a race is an `async` block; {form}"),
                ));
            }
            Ok(RaceCall {
                path: mac.path.clone(),
                name,
                branches,
            })
        })
    }
}

/// Calls that read the world outside a step, by the last segments of their
/// path: what the call does, and what to write instead.
const OUTSIDE_WORLD: &[(&[&str], &str, &str)] = &[
    (&["SystemTime", "now"], "reads the clock", STEP_IT),
    (&["Instant", "now"], "reads the clock", STEP_IT),
    (&["Utc", "now"], "reads the clock", STEP_IT),
    (&["Local", "now"], "reads the clock", STEP_IT),
    (&["OffsetDateTime", "now_utc"], "reads the clock", STEP_IT),
    (&["OffsetDateTime", "now_local"], "reads the clock", STEP_IT),
    (&["rand", "random"], "draws a random number", STEP_IT),
    (&["rand", "rng"], "draws random numbers", STEP_IT),
    (&["thread_rng"], "draws random numbers", STEP_IT),
    (&["Uuid", "new_v4"], "makes a random id", STEP_IT),
    (&["Uuid", "now_v7"], "makes an id from the clock", STEP_IT),
    (&["env", "var"], "reads the environment", STEP_IT),
    (&["env", "var_os"], "reads the environment", STEP_IT),
    (&["env", "vars"], "reads the environment", STEP_IT),
    (
        &["tokio", "spawn"],
        "spawns work that is not journaled",
        SPAWNED,
    ),
    (
        &["task", "spawn"],
        "spawns work that is not journaled",
        SPAWNED,
    ),
    (
        &["spawn_blocking"],
        "spawns work that is not journaled",
        SPAWNED,
    ),
    (
        &["thread", "spawn"],
        "spawns work that is not journaled",
        SPAWNED,
    ),
    (
        &["tokio", "time", "sleep"],
        "waits without journaling it",
        SLEEP,
    ),
    (&["thread", "sleep"], "waits without journaling it", SLEEP),
];

const STEP_IT: &str = "a replay gets another answer than the first execution saw, and the code then disagrees with its journal; put it in a step, whose output is journaled and replayed: `let x = step!(\"name\", { .. });`";
const SPAWNED: &str = "the work is not journaled: it may run again on replay and is lost in a crash; await it in a step, or start a child workflow with `child!`";
const SLEEP: &str = "after a crash the clock starts again, and the run holds its worker while it waits; use `sleep!(\"name\", duration)`, which is journaled and holds no worker";

/// The attribute that says a call outside a step is meant: its result never
/// decides what the workflow journals.
const UNJOURNALED: &str = "unjournaled";

/// Whether `path` ends with `tail`.
fn path_ends_with(path: &syn::Path, tail: &[&str]) -> bool {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.len() >= tail.len()
        && segments[segments.len() - tail.len()..]
            .iter()
            .zip(tail)
            .all(|(a, b)| a == b)
}

/// Removes `#[unjournaled]` (bare or `resumable::`) from `attrs`; whether
/// it was there.
fn take_unjournaled(attrs: &mut Vec<syn::Attribute>) -> bool {
    let before = attrs.len();
    attrs.retain(|a| {
        let last = a.path().segments.last().map(|s| s.ident.to_string());
        !(last.as_deref() == Some(UNJOURNALED) && matches!(a.meta, syn::Meta::Path(_)))
    });
    attrs.len() != before
}

/// The attributes of a statement's expression, for the kinds that carry them.
fn expr_attrs(expr: &mut Expr) -> Option<&mut Vec<syn::Attribute>> {
    Some(match expr {
        Expr::Assign(e) => &mut e.attrs,
        Expr::Await(e) => &mut e.attrs,
        Expr::Block(e) => &mut e.attrs,
        Expr::Call(e) => &mut e.attrs,
        Expr::ForLoop(e) => &mut e.attrs,
        Expr::If(e) => &mut e.attrs,
        Expr::Let(e) => &mut e.attrs,
        Expr::Loop(e) => &mut e.attrs,
        Expr::Match(e) => &mut e.attrs,
        Expr::MethodCall(e) => &mut e.attrs,
        Expr::Try(e) => &mut e.attrs,
        Expr::While(e) => &mut e.attrs,
        _ => return None,
    })
}

/// What a macro call in a workflow body is to `#[resumable]`.
enum Journaled {
    Step,
    /// `sleep!`, or with `true`, `sleep_until!`.
    Sleep(bool),
    SetEvent,
    Recv,
    Child,
    Race,
}

/// `step!`, `sleep!`, `sleep_until!` or `set_event!`, bare or as
/// `resumable::…!` or `<crate = path>::…!`.
fn journaled(mac: &Macro, krate: &syn::Path) -> Option<Journaled> {
    let last = mac.path.segments.last()?;
    let kind = match last.ident.to_string().as_str() {
        "step" => Journaled::Step,
        "sleep" => Journaled::Sleep(false),
        "sleep_until" => Journaled::Sleep(true),
        "set_event" => Journaled::SetEvent,
        "recv" => Journaled::Recv,
        "child" => Journaled::Child,
        "race" => Journaled::Race,
        _ => return None,
    };
    ours(mac, krate).then_some(kind)
}

/// Whether the macro's path is bare, `resumable::`, or the crate's own.
fn ours(mac: &Macro, krate: &syn::Path) -> bool {
    let segments = &mac.path.segments;
    let prefix: Vec<String> = segments
        .iter()
        .rev()
        .skip(1)
        .rev()
        .map(|s| s.ident.to_string())
        .collect();
    let krate: Vec<String> = krate.segments.iter().map(|s| s.ident.to_string()).collect();
    prefix.is_empty() || prefix == ["resumable"] || prefix == krate
}

/// The workflow's step structure: step names nested in the loops, branches and
/// concurrent blocks that contain them.
#[derive(Default)]
struct Shape {
    stack: Vec<Vec<String>>,
}

impl Shape {
    fn enter(&mut self) {
        self.stack.push(Vec::new());
    }

    fn leave(&mut self, kind: &str) {
        let inner = self.stack.pop().unwrap_or_default();
        if !inner.is_empty() {
            self.push(format!("{kind}{{{}}}", inner.join(",")));
        }
    }

    fn push(&mut self, item: String) {
        if self.stack.is_empty() {
            self.stack.push(Vec::new());
        }
        self.stack.last_mut().expect("pushed above").push(item);
    }

    fn render(&self) -> String {
        self.stack.first().map(|s| s.join(",")).unwrap_or_default()
    }
}

pub struct StepRewriter<'a> {
    pub errors: &'a mut Errors,
    expander: &'a Expander,
    names: HashMap<String, Span>,
    shape: Shape,
    closures: usize,
    in_step: bool,
    /// Fatal errors elsewhere: only strip the steps, so the body still type-checks.
    fallback: bool,
    /// Steps seen so far.
    steps: usize,
    /// Depth of `async |..|` closures around the current point.
    async_closures: usize,
    /// Depth of `#[unjournaled]` statements around the current point.
    unjournaled: usize,
}

impl<'a> StepRewriter<'a> {
    pub fn new(errors: &'a mut Errors, expander: &'a Expander, fallback: bool) -> Self {
        let mut shape = Shape::default();
        shape.enter();
        StepRewriter {
            errors,
            expander,
            names: HashMap::new(),
            shape,
            closures: 0,
            in_step: false,
            fallback,
            steps: 0,
            async_closures: 0,
            unjournaled: 0,
        }
    }

    pub fn shape(&self) -> String {
        self.shape.render()
    }

    fn grouped(&mut self, kind: &str, f: impl FnOnce(&mut Self)) {
        self.shape.enter();
        f(self);
        self.shape.leave(kind);
    }

    fn rewrite(&mut self, mac: &Macro, kind: Journaled) -> Expr {
        match kind {
            Journaled::Step => self.rewrite_step(mac),
            Journaled::Sleep(until) => self.rewrite_sleep(mac, until),
            Journaled::SetEvent => self.rewrite_set_event(mac),
            Journaled::Recv => self.rewrite_recv(mac),
            Journaled::Child => self.rewrite_child(mac),
            Journaled::Race => self.rewrite_race(mac),
        }
    }

    /// Reports a call in the workflow's own code (not a step's body, not an
    /// `#[unjournaled]` statement) that reads the world: on replay it gives
    /// another answer than the first execution saw.
    fn check_world(&mut self, func: &Expr) {
        if self.in_step || self.unjournaled > 0 {
            return;
        }
        let Expr::Path(path) = func else {
            return;
        };
        let Some((_, what, instead)) = OUTSIDE_WORLD
            .iter()
            .find(|(tail, _, _)| path_ends_with(&path.path, tail))
        else {
            return;
        };
        let shown = path.path.to_token_stream().to_string().replace(' ', "");
        self.errors.spanned(
            &path.path,
            format!(
                "`{shown}` outside a step {what}: {instead}. If its result never decides what the workflow journals, mark the statement `#[unjournaled]`"
            ),
        );
    }

    /// Reports `what` (`recv!`, `child!`, `race!`) written in a step's body
    /// or a closure, with `advice` for the first; whether it is where it
    /// can be journaled.
    fn in_workflow_code(&mut self, span: Span, what: &str, advice: &str) -> bool {
        if self.in_step {
            self.errors.at(
                span,
                format!(
                    "`{what}` cannot be used inside a step's body: a step's body does not run again once journaled; {advice}"
                ),
            );
            return false;
        }
        if self.closures > 0 || self.async_closures > 0 {
            self.errors.at(
                span,
                format!(
                    "`{what}` cannot be used inside a closure: write it in the workflow's body, a `for` loop, or an `async` block"
                ),
            );
            return false;
        }
        true
    }

    /// `race!("name", async { .. }, ..)` runs the branches concurrently, each
    /// in a scope of its own, and journals the winner (`race:name#<n>`).
    fn rewrite_race(&mut self, mac: &Macro) -> Expr {
        let path = &mac.path;
        let mut call = match RaceCall::parse(mac) {
            Ok(call) => call,
            Err(e) => {
                self.errors.push(e);
                return syn::parse_quote!({ #path!(@used); ::core::panic!() });
            }
        };
        let span = mac.path.span();
        let mut journaled = self.check_name(&call.name);
        journaled &= self.in_workflow_code(
            span,
            "race!",
            "race between steps, in the workflow's own code",
        );
        self.steps += 1;
        let name = call.name.value();
        self.grouped(&format!("race:{name}"), |v| {
            for branch in &mut call.branches {
                v.visit_expr_mut(branch);
            }
        });
        if self.fallback || !journaled {
            return Expander::plain_race(&call);
        }
        self.expander.race(&call, span)
    }

    /// `child!("name", WORKFLOW, input)` becomes the start of a child run
    /// (`child:name#<n>`) and the wait for its outcome (`child-result:name#<n>`).
    fn rewrite_child(&mut self, mac: &Macro) -> Expr {
        let path = &mac.path;
        let mut call = match ChildCall::parse(mac) {
            Ok(call) => call,
            Err(e) => {
                self.errors.push(e);
                return syn::parse_quote!({ #path!(@used); ::core::panic!() });
            }
        };
        let span = mac.path.span();
        let mut journaled = self.check_name(&call.name);
        journaled &= self.in_workflow_code(
            span,
            "child!",
            "start children between steps, in the workflow's own code",
        );
        self.steps += 1;
        self.visit_expr_mut(&mut call.workflow);
        self.visit_expr_mut(&mut call.input);
        if let Some(key) = &mut call.key {
            self.visit_expr_mut(key);
        }
        self.shape.push(format!("child:{}", call.name.value()));
        if self.fallback || !journaled {
            return self.expander.plain_child(&call);
        }
        self.expander.child(&call, span)
    }

    /// `recv!("topic")` becomes a receive journaled as `recv:topic#<n>`
    /// (with a time limit, its deadline as `recv-deadline:topic#<n>`). Many
    /// call sites may receive on one topic.
    fn rewrite_recv(&mut self, mac: &Macro) -> Expr {
        let path = &mac.path;
        let mut call = match RecvCall::parse(mac) {
            Ok(call) => call,
            Err(e) => {
                self.errors.push(e);
                return syn::parse_quote!({ #path!(@used); ::core::panic!() });
            }
        };
        let span = mac.path.span();
        let topic = call.topic.value();
        let mut journaled = true;
        if topic.is_empty() || topic.contains('#') || topic.contains('@') {
            self.errors.spanned(
                &call.topic,
                "a receive's topic must be a non-empty string literal without `#` or `@`",
            );
            journaled = false;
        }
        journaled &= self.in_workflow_code(
            span,
            "recv!",
            "receive between steps, in the workflow's own code",
        );
        self.steps += 1;
        if let Some(timeout) = &mut call.timeout {
            self.visit_expr_mut(timeout);
        }
        let kind = match call.timeout {
            Some(_) => "recv_until",
            None => "recv",
        };
        self.shape.push(format!("{kind}:{topic}"));
        if self.fallback || !journaled {
            return Expander::plain_recv(&call);
        }
        self.expander.recv(&call, span)
    }

    /// `set_event!("name", value)` becomes a step, `set_event:name#<n>`,
    /// whose body publishes the value: replayed, it publishes nothing
    /// again. Many call sites may publish one event.
    fn rewrite_set_event(&mut self, mac: &Macro) -> Expr {
        let form = "write it as `set_event!(\"name\", value)`";
        let path = &mac.path;
        let (name, mut value) = match name_and_value(mac, "an event's", form) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.errors.push(e);
                return syn::parse_quote!({ #path!(@used); });
            }
        };
        let span = mac.path.span();
        let event = name.value();
        let mut journaled = true;
        if event.is_empty() || event.contains('#') || event.contains('@') {
            self.errors.spanned(
                &name,
                "an event's name must be a non-empty string literal without `#` or `@`",
            );
            journaled = false;
        }
        if self.in_step || self.closures > 0 || self.async_closures > 0 {
            self.errors.at(
                span,
                "`set_event!` must be in the workflow's own code (not in a step's body or a closure): a step's body does not run again once journaled",
            );
            journaled = false;
        }
        self.steps += 1;
        self.visit_expr_mut(&mut value);
        let step_name = format!("set_event:{event}");
        self.shape.push(step_name.clone());
        if self.fallback || !journaled {
            return syn::parse_quote!({ #path!(@used); let _ = &#value; });
        }
        let k = self.expander.krate();
        let codec = self.expander.codec();
        let ctx = Ident::new("__resumable_ctx", Span::call_site());
        let body = syn::parse_quote_spanned! {span=>
            {
                #k::__private::publish::<#codec, _>(#ctx, #name, &(#value)).await
            }
        };
        let call = StepCall {
            path: path.clone(),
            name: LitStr::new(&step_name, name.span()),
            retry: None,
            timeout: None,
            context: None,
            body,
            span,
        };
        self.expander.step(&call)
    }

    fn rewrite_sleep(&mut self, mac: &Macro, until: bool) -> Expr {
        let mut call = match SleepCall::parse(mac, until) {
            Ok(call) => call,
            Err(e) => {
                self.errors.push(e);
                let path = &mac.path;
                return syn::parse_quote!({ #path!(@used); });
            }
        };
        let span = mac.path.span();
        let what = if until { "sleep_until!" } else { "sleep!" };
        let mut journaled = self.check_name(&call.name);
        if self.in_step {
            self.errors.at(
                span,
                format!("`{what}` cannot be used inside a step's body: a step's body does not run again once its output is journaled; sleep between steps, in the workflow's own code"),
            );
            journaled = false;
        }
        if self.closures > 0 || self.async_closures > 0 {
            self.errors.at(
                span,
                format!("`{what}` cannot be used inside a closure: write it in the workflow's body, a `for` loop, or an `async` block"),
            );
            journaled = false;
        }
        self.steps += 1;
        self.visit_expr_mut(&mut call.wake);
        self.shape
            .push(format!("{}:{}", &what[..what.len() - 1], call.name.value()));
        if self.fallback || !journaled {
            return Expander::plain_sleep(&call);
        }
        self.expander.sleep(&call, span)
    }

    /// Reports a misnamed step or sleep; `false` if it cannot be journaled.
    fn check_name(&mut self, lit: &LitStr) -> bool {
        let name = lit.value();
        if name.is_empty() {
            self.errors.spanned(lit, "a step name must not be empty");
            return false;
        }
        if name.contains('#') || name.contains('@') {
            self.errors.spanned(
                lit,
                "a step name cannot contain `#` or `@`: the runtime appends `@<scope>#<occurrence>` to tell the runs of one step apart",
            );
            return false;
        }
        if let Some(first) = self.names.get(&name) {
            let mut err = syn::Error::new_spanned(
                lit,
                format!(
                    "step name \"{name}\" is used twice in this workflow: give each `step!` (and each `sleep!`) its own name (one that runs repeatedly, in a loop, is already told apart as {name}#0, {name}#1, ...)"
                ),
            );
            err.combine(syn::Error::new(
                *first,
                format!("\"{name}\" is first used here"),
            ));
            self.errors.push(err);
            return false;
        }
        self.names.insert(name, lit.span());
        true
    }

    fn rewrite_step(&mut self, mac: &Macro) -> Expr {
        let mut call = match mac.parse_body::<StepCall>() {
            Ok(call) => call,
            Err(e) => {
                self.errors.push(e);
                let path = &mac.path;
                return syn::parse_quote!({ #path!(@used); loop {} });
            }
        };
        call.span = mac.path.span();
        call.path = mac.path.clone();
        let journaled = self.check(&call);
        self.steps += 1;
        let was_in_step = std::mem::replace(&mut self.in_step, true);
        self.visit_expr_mut(&mut call.body);
        self.in_step = was_in_step;
        self.shape.push(call.name.value());
        if self.fallback || !journaled {
            return Expander::plain_step(&call);
        }
        self.expander.step(&call)
    }

    /// Reports what is wrong with a step; `false` if it cannot be journaled where it is.
    fn check(&mut self, call: &StepCall) -> bool {
        let mut journaled = true;
        if self.in_step {
            self.errors.at(
                call.span,
                "steps cannot be nested: a step's body stops running once its output is journaled; make the inner step a separate step of the workflow",
            );
        }
        if self.closures > 0 {
            self.errors.at(
                call.span,
                "step! cannot be used inside a closure: a closure is not async and is not part of the workflow's step structure; use a `for` loop, or an `async` block",
            );
            journaled = false;
        }
        if self.async_closures > 0 && self.closures == 0 {
            self.errors.at(
                call.span,
                "step! cannot be used inside an `async` closure: its steps could not be told apart when the closure runs concurrently; write `|x| async move { ... }` (a closure returning an async block) instead",
            );
            journaled = false;
        }
        // A misnamed step is reported, and still journaled: no knock-on errors.
        self.check_name(&call.name);
        for (target, tokens) in checks::assignments_outside(&call.body) {
            self.errors.spanned(
                tokens,
                format!(
                    "this step assigns to `{target}`, which is declared outside the step; on replay the step's body does not run, so the assignment would be lost: return the value from the step instead, as in `let {target} = step!(\"{}\", {{ ... }});`",
                    call.name.value()
                ),
            );
        }
        let exits = checks::exits(&call.body);
        // Left as plain code, the body's `return`/`break` compiles: no knock-on errors.
        journaled &= exits.is_empty();
        for span in exits {
            self.errors.at(
                span,
                "`return` (or `break`/`continue` to a loop outside the step) would leave the step's body, not the workflow's code: make the step's value say what happened, or use `?` to fail the step",
            );
        }
        journaled
    }

    fn rewrite_other_macro(&mut self, mac: &mut Macro) {
        if !mentions_step(mac.tokens.clone()) {
            return;
        }
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        if matches!(name.as_str(), "select" | "select_biased") {
            self.errors.spanned(
                &mac.path,
                format!(
                    "steps raced with `{name}!` replay differently: the branch that lost may already have journaled its step, and after a crash the other branch may win; use `race!(\"name\", async {{ .. }}, async {{ .. }})`, which journals the winner, or run every branch with `join!` and decide between their results in the workflow's code"
                ),
            );
            // Reported once: the race is left out, so that its steps do not
            // report being outside a workflow too.
            mac.path = syn::parse_quote!(::core::unreachable);
            mac.tokens = TokenStream::new();
            return;
        }
        let parsed = mac.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated);
        match parsed {
            Ok(mut exprs) => {
                for expr in exprs.iter_mut() {
                    self.visit_expr_mut(expr);
                }
                mac.tokens = exprs.into_token_stream();
            }
            Err(_) => {
                self.errors.spanned(
                    &mac.path,
                    format!(
                        "#[resumable] cannot find the step! inside `{name}!`: bind the step's result to a variable before the macro, or move the step into an `async` block"
                    ),
                );
            }
        }
    }
}

fn mentions_step(tokens: TokenStream) -> bool {
    let mut previous_was_step = false;
    for tt in tokens {
        match tt {
            TokenTree::Punct(p) if p.as_char() == '!' && previous_was_step => return true,
            TokenTree::Ident(i) => {
                previous_was_step = i == "step"
                    || i == "sleep"
                    || i == "sleep_until"
                    || i == "set_event"
                    || i == "recv"
                    || i == "child"
                    || i == "race";
                continue;
            }
            TokenTree::Group(g) if mentions_step(g.stream()) => return true,
            _ => {}
        }
        previous_was_step = false;
    }
    false
}

impl VisitMut for StepRewriter<'_> {
    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        match expr {
            Expr::Macro(m) if journaled(&m.mac, self.expander.krate()).is_some() => {
                let kind = journaled(&m.mac, self.expander.krate()).expect("checked above");
                *expr = self.rewrite(&m.mac, kind)
            }
            Expr::Macro(m) => self.rewrite_other_macro(&mut m.mac),
            Expr::Call(c) => {
                self.check_world(&c.func);
                syn::visit_mut::visit_expr_call_mut(self, c);
            }
            Expr::Closure(c) if c.asyncness.is_none() => {
                self.closures += 1;
                syn::visit_mut::visit_expr_closure_mut(self, c);
                self.closures -= 1;
            }
            Expr::Closure(c) => {
                self.async_closures += 1;
                syn::visit_mut::visit_expr_closure_mut(self, c);
                self.async_closures -= 1;
            }
            Expr::Async(a) => {
                let outer = std::mem::replace(&mut self.closures, 0);
                let outer_async = std::mem::replace(&mut self.async_closures, 0);
                let before = self.steps;
                self.grouped("async", |v| syn::visit_mut::visit_expr_async_mut(v, a));
                self.closures = outer;
                self.async_closures = outer_async;
                if self.steps > before && !self.fallback {
                    *expr = self.expander.scoped(a);
                }
            }
            Expr::ForLoop(l) => {
                self.visit_expr_mut(&mut l.expr);
                self.grouped("loop", |v| v.visit_block_mut(&mut l.body));
            }
            Expr::While(l) => self.grouped("loop", |v| syn::visit_mut::visit_expr_while_mut(v, l)),
            Expr::Loop(l) => self.grouped("loop", |v| syn::visit_mut::visit_expr_loop_mut(v, l)),
            Expr::If(i) => {
                self.visit_expr_mut(&mut i.cond);
                self.grouped("if", |v| v.visit_block_mut(&mut i.then_branch));
                if let Some((_, e)) = &mut i.else_branch {
                    self.grouped("else", |v| v.visit_expr_mut(e));
                }
            }
            Expr::Match(m) => {
                self.visit_expr_mut(&mut m.expr);
                for arm in &mut m.arms {
                    self.grouped("arm", |v| v.visit_arm_mut(arm));
                }
            }
            _ => syn::visit_mut::visit_expr_mut(self, expr),
        }
    }

    fn visit_stmt_mut(&mut self, stmt: &mut Stmt) {
        match stmt {
            Stmt::Macro(m) if journaled(&m.mac, self.expander.krate()).is_some() => {
                let kind = journaled(&m.mac, self.expander.krate()).expect("checked above");
                let expr = self.rewrite(&m.mac, kind);
                *stmt = Stmt::Expr(expr, m.semi_token);
            }
            Stmt::Macro(m) => self.rewrite_other_macro(&mut m.mac),
            _ => {
                let marked = match stmt {
                    Stmt::Local(local) => take_unjournaled(&mut local.attrs),
                    Stmt::Expr(expr, _) => expr_attrs(expr).is_some_and(take_unjournaled),
                    _ => false,
                };
                self.unjournaled += usize::from(marked);
                syn::visit_mut::visit_stmt_mut(self, stmt);
                self.unjournaled -= usize::from(marked);
            }
        }
    }

    fn visit_block_mut(&mut self, block: &mut syn::Block) {
        // `step! { .. }` mid-block is a statement; once rewritten into an
        // expression it needs its semicolon.
        let last = block.stmts.len().saturating_sub(1);
        for (i, stmt) in block.stmts.iter_mut().enumerate() {
            if let Stmt::Macro(m) = stmt
                && i < last
                && m.semi_token.is_none()
            {
                m.semi_token = Some(Default::default());
            }
        }
        syn::visit_mut::visit_block_mut(self, block);
    }

    // Steps in a nested `fn` belong to no workflow; `step!` reports that itself.
    fn visit_item_mut(&mut self, _item: &mut syn::Item) {}
}
