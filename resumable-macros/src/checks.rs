//! What a step body must not do: change variables declared outside it (lost
//! on replay, when the body does not run), or jump out of it.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::visit::Visit;
use syn::{BinOp, Expr, Pat};

/// Assignments in `body` to variables declared outside it: each target's
/// name and the assignment's tokens. Scope-aware: a `let` of the same name
/// later in the body does not hide an earlier assignment to the outer one.
pub fn assignments_outside(body: &Expr) -> Vec<(String, TokenStream)> {
    let mut visitor = Assignments {
        scopes: vec![HashSet::new()],
        found: Vec::new(),
    };
    visitor.visit_expr(body);
    visitor.found
}

/// `return`s, and `break`/`continue`s that leave `body` (not those of its
/// own loops, closures or async blocks).
pub fn exits(body: &Expr) -> Vec<Span> {
    let mut visitor = Exits::default();
    visitor.visit_expr(body);
    visitor.found
}

struct Assignments {
    /// Names bound inside the body, innermost scope last.
    scopes: Vec<HashSet<String>>,
    found: Vec<(String, TokenStream)>,
}

impl Assignments {
    fn bind(&mut self, pat: &Pat) {
        struct Names<'a>(&'a mut HashSet<String>);
        impl Visit<'_> for Names<'_> {
            fn visit_pat_ident(&mut self, p: &syn::PatIdent) {
                self.0.insert(p.ident.to_string());
                syn::visit::visit_pat_ident(self, p);
            }
        }
        let scope = self.scopes.last_mut().expect("a scope is always open");
        Names(scope).visit_pat(pat);
    }

    fn scoped(&mut self, f: impl FnOnce(&mut Self)) {
        self.scopes.push(HashSet::new());
        f(self);
        self.scopes.pop();
    }

    fn check(&mut self, place: &Expr, whole: TokenStream) {
        if let Some(root) = place_root(place)
            && !self.scopes.iter().any(|s| s.contains(&root))
        {
            self.found.push((root, whole));
        }
    }
}

/// The variable a place expression (`x`, `x.f`, `x[i]`, `*x`) belongs to.
fn place_root(place: &Expr) -> Option<String> {
    match place {
        Expr::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => {
            Some(p.path.segments[0].ident.to_string())
        }
        Expr::Field(f) => place_root(&f.base),
        Expr::Index(i) => place_root(&i.expr),
        Expr::Paren(p) => place_root(&p.expr),
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => place_root(&u.expr),
        _ => None,
    }
}

impl Visit<'_> for Assignments {
    fn visit_block(&mut self, block: &syn::Block) {
        self.scoped(|v| syn::visit::visit_block(v, block));
    }

    fn visit_local(&mut self, local: &syn::Local) {
        // The initializer cannot see the names the pattern binds.
        if let Some(init) = &local.init {
            self.visit_expr(&init.expr);
            if let Some((_, diverge)) = &init.diverge {
                self.visit_expr(diverge);
            }
        }
        self.bind(&local.pat);
    }

    fn visit_expr_closure(&mut self, c: &syn::ExprClosure) {
        self.scoped(|v| {
            for input in &c.inputs {
                v.bind(input);
            }
            v.visit_expr(&c.body);
        });
    }

    fn visit_expr_for_loop(&mut self, l: &syn::ExprForLoop) {
        self.visit_expr(&l.expr);
        self.scoped(|v| {
            v.bind(&l.pat);
            v.visit_block(&l.body);
        });
    }

    fn visit_arm(&mut self, arm: &syn::Arm) {
        self.scoped(|v| {
            v.bind(&arm.pat);
            if let Some((_, guard)) = &arm.guard {
                v.visit_expr(guard);
            }
            v.visit_expr(&arm.body);
        });
    }

    fn visit_expr_if(&mut self, i: &syn::ExprIf) {
        // `if let` bindings are visible in the `then` branch only.
        self.scoped(|v| {
            v.visit_expr(&i.cond);
            v.visit_block(&i.then_branch);
        });
        if let Some((_, e)) = &i.else_branch {
            self.visit_expr(e);
        }
    }

    fn visit_expr_while(&mut self, w: &syn::ExprWhile) {
        self.scoped(|v| {
            v.visit_expr(&w.cond);
            v.visit_block(&w.body);
        });
    }

    fn visit_expr_let(&mut self, l: &syn::ExprLet) {
        self.visit_expr(&l.expr);
        self.bind(&l.pat);
    }

    fn visit_expr_assign(&mut self, a: &syn::ExprAssign) {
        self.check(&a.left, a.to_token_stream());
        syn::visit::visit_expr_assign(self, a);
    }

    fn visit_expr_binary(&mut self, b: &syn::ExprBinary) {
        let compound = matches!(
            b.op,
            BinOp::AddAssign(_)
                | BinOp::SubAssign(_)
                | BinOp::MulAssign(_)
                | BinOp::DivAssign(_)
                | BinOp::RemAssign(_)
                | BinOp::BitXorAssign(_)
                | BinOp::BitAndAssign(_)
                | BinOp::BitOrAssign(_)
                | BinOp::ShlAssign(_)
                | BinOp::ShrAssign(_)
        );
        if compound {
            self.check(&b.left, b.to_token_stream());
        }
        syn::visit::visit_expr_binary(self, b);
    }
}

#[derive(Default)]
struct Exits {
    found: Vec<Span>,
    /// Labels of loops and blocks inside the body.
    labels: Vec<String>,
    /// How many of the body's own loops enclose the current point.
    loops: usize,
}

impl Exits {
    fn in_loop(&mut self, label: Option<&syn::Label>, f: impl FnOnce(&mut Self)) {
        if let Some(l) = label {
            self.labels.push(l.name.ident.to_string());
        }
        self.loops += 1;
        f(self);
        self.loops -= 1;
    }

    /// Whether `break`/`continue` with `label` jumps to a point outside the body.
    fn leaves(&self, label: Option<&syn::Lifetime>) -> bool {
        match label {
            Some(l) => !self.labels.contains(&l.ident.to_string()),
            None => self.loops == 0,
        }
    }
}

impl Visit<'_> for Exits {
    fn visit_expr_return(&mut self, r: &syn::ExprReturn) {
        self.found.push(r.return_token.span);
    }

    fn visit_expr_loop(&mut self, l: &syn::ExprLoop) {
        self.in_loop(l.label.as_ref(), |v| syn::visit::visit_expr_loop(v, l));
    }

    fn visit_expr_while(&mut self, w: &syn::ExprWhile) {
        self.in_loop(w.label.as_ref(), |v| syn::visit::visit_expr_while(v, w));
    }

    fn visit_expr_for_loop(&mut self, f: &syn::ExprForLoop) {
        self.in_loop(f.label.as_ref(), |v| syn::visit::visit_expr_for_loop(v, f));
    }

    fn visit_expr_block(&mut self, b: &syn::ExprBlock) {
        // A labelled block can be left with `break 'label`.
        if let Some(l) = &b.label {
            self.labels.push(l.name.ident.to_string());
        }
        syn::visit::visit_expr_block(self, b);
    }

    fn visit_expr_break(&mut self, b: &syn::ExprBreak) {
        if self.leaves(b.label.as_ref()) {
            self.found.push(b.break_token.span);
        }
        syn::visit::visit_expr_break(self, b);
    }

    fn visit_expr_continue(&mut self, c: &syn::ExprContinue) {
        if self.leaves(c.label.as_ref()) {
            self.found.push(c.continue_token.span);
        }
    }

    // Their own returns and jumps stay inside them.
    fn visit_expr_closure(&mut self, _: &syn::ExprClosure) {}
    fn visit_expr_async(&mut self, _: &syn::ExprAsync) {}
    fn visit_item(&mut self, _: &syn::Item) {}
}
