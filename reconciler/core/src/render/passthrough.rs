//! Which of a tenant cluster's own inputs a stack's templates only pass through to their
//! output, found by reading the templates' syntax trees (minijinja's `unstable_machinery`).
//!
//! The inputs that differ between the tenant clusters of one region × environment are four
//! variables ([`Root`]): `workspace`, `cluster`, `domains` and `values`. A template *passes a
//! root through* when nothing it does with a value read from that root depends on the text of a
//! string in it, only on its structure: it emits the value (`{{ x }}`, `tojson`, `string`,
//! concatenation with `~`, `secret_key_ref`), tests its truth or its type (`if x`,
//! `x is defined`), takes its length, reads its attributes, or iterates over a mapping's pairs
//! (`dictsort`, `items`), whose keys it then sees as they are.
//!
//! Claim: let a context P be the real context C with some occurrences of some strings (tokens)
//! inside string values of passed-through roots replaced by placeholders of the same length
//! (map keys, numbers and booleans untouched). Then the template's output for C is its output
//! for P with the text at the placeholders' positions put back, byte for byte, and one errs iff
//! the other does. Why: every value the template computes from such a root is either
//! - a string made by concatenating, quoting and escaping its strings with text that does not
//!   come from it (no escaping touches a token's characters, letters, digits and `-`, nor a
//!   placeholder's: see `once::ALPHABET`), or
//! - a value that is the same in both contexts (a length, a truth value, a type, a mapping's
//!   keys and their order), which is all that control flow and errors follow.
//!
//! Anything else (comparisons, arithmetic, slicing, indexing by position, filters that read
//! characters such as `upper`, `replace` or `trim("x")`, iterating, joining or unpacking a
//! value that might be a string, character by character) counts as *computing* on the root,
//! and that root is then kept real: P differs from C only in roots that every template of the
//! stack passes through. Constructs whose flow this analysis does not follow (macros, blocks,
//! imports, a non-constant include, `recursive` loops, unknown functions) rule the whole stack
//! out.
//!
//! The analysis is flow-insensitive and conservative: a variable's taint is the union of all
//! that is ever assigned to it, anywhere in the template and the partials it includes, iterated
//! to a fixed point.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use minijinja::machinery::ast::{self, CallArg, Expr, Stmt};

/// One of the variables that differ between tenant clusters of one region × environment, as a
/// bit of a taint mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Root {
    Workspace = 1,
    Cluster = 2,
    Domains = 4,
    Values = 8,
}

/// Every [`Root`].
pub(super) const ALL: u8 = 15;

impl Root {
    fn of(name: &str) -> u8 {
        match name {
            "workspace" => Root::Workspace as u8,
            "cluster" => Root::Cluster as u8,
            "domains" => Root::Domains as u8,
            "values" => Root::Values as u8,
            _ => 0,
        }
    }
}

/// The [`Root`]s (a mask) that every template of a stack passes through; 0 when any template
/// uses a construct this analysis does not follow or does not parse. `templates` are the
/// stack's sources by path, `dir` the prefix an include's name is joined to.
pub(super) fn passed_through(templates: &BTreeMap<String, Arc<str>>, dir: &str) -> u8 {
    let mut computed = 0;
    for (path, source) in templates {
        if cplane_schema::validate::is_partial(path) {
            continue; // analyzed where they are included
        }
        match computed_roots(path, source, templates, dir) {
            Some(roots) => computed |= roots,
            None => return 0,
        }
    }
    ALL & !computed
}

/// The roots one template computes on, or `None` when it cannot be analyzed.
fn computed_roots(
    path: &str,
    source: &str,
    templates: &BTreeMap<String, Arc<str>>,
    dir: &str,
) -> Option<u8> {
    let tree = parse(source, path)?;
    let mut taint = Taint {
        templates,
        dir,
        locals: HashMap::new(),
        computed: 0,
        captures: Vec::new(),
        depth: 0,
        changed: false,
    };
    // Each pass can only add taint; a handful reach the fixed point in any real template.
    for _ in 0..8 {
        taint.changed = false;
        taint.stmt(&tree)?;
        if !taint.changed {
            return Some(taint.computed);
        }
    }
    None
}

fn parse<'s>(source: &'s str, path: &'s str) -> Option<Stmt<'s>> {
    minijinja::machinery::parse(source, path, Default::default(), Default::default()).ok()
}

/// The analysis of one template: what each local variable may hold (a mask of roots) and which
/// roots were computed on.
struct Taint<'t> {
    templates: &'t BTreeMap<String, Arc<str>>,
    dir: &'t str,
    locals: HashMap<String, u8>,
    computed: u8,
    /// Taint emitted inside each `{% set x %}` / `{% filter %}` block being captured.
    captures: Vec<u8>,
    /// Include depth.
    depth: usize,
    /// Whether this pass added taint to a local.
    changed: bool,
}

/// Filters that pass their input through (see the module doc). Their arguments pass through
/// too: `tojson` and `indent` take a width, which a string is refused as in both contexts, and
/// `default` only tests its second argument's truth. `trim` only without arguments:
/// `trim("a")` reads characters.
fn passes_through(filter: &str, args: &[CallArg<'_>]) -> bool {
    match filter {
        "tojson" | "string" | "safe" | "default" | "d" | "indent" | "secret_key_ref" => true,
        // Sorting by key (keys are never replaced) or keeping the mapping's order.
        "dictsort" | "items" | "trim" => args.is_empty(),
        _ => false,
    }
}

/// Tests that see only a value's type (the same in both contexts).
const TYPE_TESTS: &[&str] = &[
    "defined",
    "undefined",
    "none",
    "safe",
    "escaped",
    "boolean",
    "number",
    "integer",
    "int",
    "float",
    "string",
    "sequence",
    "iterable",
    "mapping",
];

impl Taint<'_> {
    fn compute(&mut self, mask: u8) {
        self.computed |= mask;
    }

    fn emit(&mut self, mask: u8) {
        if let Some(top) = self.captures.last_mut() {
            *top |= mask;
        }
    }

    fn var(&self, name: &str) -> u8 {
        self.locals.get(name).copied().unwrap_or(0) | Root::of(name)
    }

    fn assign_name(&mut self, name: &str, mask: u8) {
        let slot = self.locals.entry(name.to_owned()).or_insert(0);
        if *slot | mask != *slot {
            *slot |= mask;
            self.changed = true;
        }
    }

    fn assign(&mut self, target: &Expr<'_>, mask: u8) -> Option<()> {
        match target {
            Expr::Var(v) => self.assign_name(v.id, mask),
            // Unpacking (`{% set a, b = x %}`): a string would be unpacked by character, were
            // minijinja to allow it.
            Expr::List(l) => {
                self.compute(mask);
                self.unpack(l, mask)?;
            }
            // `{% set ns.attr = … %}` on a namespace.
            Expr::GetAttr(g) => match &g.expr {
                Expr::Var(v) => self.assign_name(v.id, mask),
                _ => return None,
            },
            _ => return None,
        }
        Some(())
    }

    /// Assigns each target of a list to unpack.
    fn unpack(&mut self, targets: &ast::List<'_>, mask: u8) -> Option<()> {
        targets
            .items
            .iter()
            .try_for_each(|item| self.assign(item, mask))
    }

    fn stmts(&mut self, body: &[Stmt<'_>]) -> Option<()> {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, stmt: &Stmt<'_>) -> Option<()> {
        match stmt {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitExpr(e) => {
                let mask = self.expr(&e.expr)?;
                self.emit(mask);
                Some(())
            }
            Stmt::EmitRaw(_) => Some(()),
            Stmt::ForLoop(f) => {
                if f.recursive {
                    return None;
                }
                let mask = self.expr(&f.iter)?;
                let pairs = match &f.iter {
                    Expr::Filter(filter) => {
                        matches!(filter.name, "dictsort" | "items") && filter.args.is_empty()
                    }
                    Expr::Call(call) => {
                        matches!(&call.expr, Expr::GetAttr(g) if g.name == "items")
                            && call.args.is_empty()
                    }
                    _ => false,
                };
                match (&f.target, pairs) {
                    // `for k, v in m | dictsort`: each item is a (key, value) pair.
                    (Expr::List(l), true) if l.items.len() == 2 => self.unpack(l, mask)?,
                    (target, pairs) => {
                        if !pairs {
                            self.compute(mask); // it might be a string, iterated by character
                        }
                        self.assign(target, mask)?;
                    }
                }
                self.assign_name("loop", mask);
                if let Some(condition) = &f.filter_expr {
                    self.expr(condition)?; // its truth only
                }
                self.stmts(&f.body)?;
                self.stmts(&f.else_body)
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr)?; // its truth only
                self.stmts(&i.true_body)?;
                self.stmts(&i.false_body)
            }
            Stmt::WithBlock(w) => {
                for (target, expr) in &w.assignments {
                    let mask = self.expr(expr)?;
                    self.assign(target, mask)?;
                }
                self.stmts(&w.body)
            }
            Stmt::Set(s) => {
                let mask = self.expr(&s.expr)?;
                self.assign(&s.target, mask)
            }
            Stmt::SetBlock(s) => {
                let mut mask = self.capture(&s.body)?;
                if let Some(filter) = &s.filter {
                    mask = self.block_filter(filter, mask)?;
                }
                self.assign(&s.target, mask)
            }
            Stmt::FilterBlock(f) => {
                let mask = self.capture(&f.body)?;
                let mask = self.block_filter(&f.filter, mask)?;
                self.emit(mask);
                Some(())
            }
            Stmt::AutoEscape(a) => {
                // HTML escaping changes none of a token's or placeholder's characters.
                let mask = self.expr(&a.enabled)?;
                self.compute(mask);
                self.stmts(&a.body)
            }
            Stmt::Include(i) => self.include(i),
            Stmt::Do(d) => self.call(&d.call).map(drop),
            _ => None, // macros, blocks, extends, imports
        }
    }

    /// The taint a block emits.
    fn capture(&mut self, body: &[Stmt<'_>]) -> Option<u8> {
        self.captures.push(0);
        let walked = self.stmts(body);
        let mask = self.captures.pop()?;
        walked.map(|()| mask)
    }

    /// A filter chain applied to a captured block (`{% filter a|b %}`, `{% set x | a %}`).
    fn block_filter(&mut self, filter: &Expr<'_>, input: u8) -> Option<u8> {
        let Expr::Filter(f) = filter else {
            return None;
        };
        let mask = match &f.expr {
            None => input,
            Some(inner) => self.block_filter(inner, input)?,
        };
        self.filter(f.name, mask, &f.args)
    }

    /// An include sees the including template's variables: its tree is walked in place.
    fn include(&mut self, include: &ast::Include<'_>) -> Option<()> {
        let Expr::Const(name) = &include.name else {
            return None;
        };
        let path = format!("{}{}", self.dir, name.value.as_str()?);
        let source = self.templates.get(&path)?.clone();
        if self.depth >= 8 {
            return None;
        }
        let tree = parse(&source, &path)?;
        self.depth += 1;
        let walked = self.stmt(&tree);
        self.depth -= 1;
        walked
    }

    fn args(&mut self, args: &[CallArg<'_>]) -> Option<u8> {
        let mut mask = 0;
        for arg in args {
            match arg {
                CallArg::Pos(e) | CallArg::Kwarg(_, e) => mask |= self.expr(e)?,
                CallArg::PosSplat(_) | CallArg::KwargSplat(_) => return None,
            }
        }
        Some(mask)
    }

    fn filter(&mut self, name: &str, input: u8, args: &[CallArg<'_>]) -> Option<u8> {
        let arg_mask = self.args(args)?;
        match name {
            // A string's length is its placeholder's; a collection's is the same.
            "length" | "count" if args.is_empty() => Some(0),
            _ if passes_through(name, args) => Some(input | arg_mask),
            _ => {
                self.compute(input | arg_mask);
                Some(input | arg_mask)
            }
        }
    }

    fn call(&mut self, call: &ast::Call<'_>) -> Option<u8> {
        let arg_mask = self.args(&call.args)?;
        match &call.expr {
            Expr::Var(v) if !self.locals.contains_key(v.id) => match v.id {
                // Built-ins whose result depends only on their (checked) arguments and the
                // region × environment, or, for `host`, on `domains`.
                "labels" | "selector" | "bucket" | "range" => {
                    self.compute(arg_mask);
                    Some(0)
                }
                "host" => {
                    self.compute(arg_mask);
                    Some(Root::Domains as u8)
                }
                // Keyword names are constant; the values are kept as they are.
                "dict" | "namespace" => Some(arg_mask),
                _ => None,
            },
            Expr::GetAttr(method) => {
                let object = self.expr(&method.expr)?;
                match method.name {
                    "items" | "keys" | "values" if call.args.is_empty() => Some(object),
                    _ => {
                        self.compute(object | arg_mask);
                        Some(object | arg_mask)
                    }
                }
            }
            _ => None,
        }
    }

    fn expr(&mut self, expr: &Expr<'_>) -> Option<u8> {
        Some(match expr {
            Expr::Var(v) => self.var(v.id),
            Expr::Const(_) => 0,
            Expr::Slice(s) => {
                let mut mask = self.expr(&s.expr)?;
                for bound in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    mask |= self.expr(bound)?;
                }
                self.compute(mask);
                mask
            }
            Expr::UnaryOp(u) => {
                let mask = self.expr(&u.expr)?;
                match u.op {
                    ast::UnaryOpKind::Not => 0, // its truth only
                    ast::UnaryOpKind::Neg => {
                        self.compute(mask);
                        mask
                    }
                }
            }
            Expr::BinOp(b) => {
                let mask = self.expr(&b.left)? | self.expr(&b.right)?;
                match b.op {
                    // `and`/`or` decide on truth and give one of the operands.
                    ast::BinOpKind::Concat | ast::BinOpKind::ScAnd | ast::BinOpKind::ScOr => mask,
                    // Comparisons and arithmetic (`+` would read "12" as a number).
                    _ => {
                        self.compute(mask);
                        mask
                    }
                }
            }
            Expr::Compare(c) => {
                let mut mask = self.expr(&c.expr)?;
                for op in &c.ops {
                    mask |= self.expr(&op.expr)?;
                }
                self.compute(mask);
                0
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr)?; // its truth only
                let mut mask = self.expr(&i.true_expr)?;
                if let Some(other) = &i.false_expr {
                    mask |= self.expr(other)?;
                }
                mask
            }
            Expr::Filter(f) => {
                // A filter without input belongs to a filter block, walked there.
                let input = self.expr(f.expr.as_ref()?)?;
                self.filter(f.name, input, &f.args)?
            }
            Expr::Test(t) => {
                let mask = self.expr(&t.expr)? | self.args(&t.args)?;
                if !(TYPE_TESTS.contains(&t.name) && t.args.is_empty()) {
                    self.compute(mask);
                }
                0
            }
            // Attribute names are constant; a string has no attributes in either context.
            Expr::GetAttr(g) => self.expr(&g.expr)?,
            Expr::GetItem(g) => {
                let mask = self.expr(&g.expr)? | self.expr(&g.subscript_expr)?;
                let by_name =
                    matches!(&g.subscript_expr, Expr::Const(c) if c.value.as_str().is_some());
                if !by_name {
                    self.compute(mask); // by position (a string's character) or by a token
                }
                mask
            }
            Expr::Call(c) => self.call(c)?,
            Expr::List(l) => {
                let mut mask = 0;
                for item in &l.items {
                    mask |= self.expr(item)?;
                }
                mask
            }
            Expr::Map(m) => {
                let mut mask = 0;
                for key in &m.keys {
                    let key = self.expr(key)?;
                    self.compute(key); // a token as a key would sort and look up otherwise
                }
                for value in &m.values {
                    mask |= self.expr(value)?;
                }
                mask
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u8 = Root::Workspace as u8;
    const C: u8 = Root::Cluster as u8;
    const D: u8 = Root::Domains as u8;
    const V: u8 = Root::Values as u8;

    /// The roots a stack of one template (and a partial `_p.j2`) passes through.
    fn through(template: &str, partial: &str) -> u8 {
        let templates = BTreeMap::from([
            ("s/t.yaml.j2".to_owned(), Arc::from(template)),
            ("s/_p.j2".to_owned(), Arc::from(partial)),
        ]);
        passed_through(&templates, "s/")
    }

    #[test]
    fn emitting_testing_and_iterating_pairs_pass_through() {
        let template = r#"
a: {{ workspace.name | tojson }} {{ (values.image ~ ":" ~ stack.version) | tojson }}
{% if values.ingress and workspace.id is string %}b: {{ host("x") }}{% endif %}
{% for k, v in values.m | dictsort %}{{ k }}={{ v | string }} {{ loop.index }}{% endfor %}
{% for k, v in values.m.items() %}{{ k }}{% endfor %}
{% set c %}{{ cluster.id }}{% endset %}{{ c | tojson }} {{ values.s | length }}
{% set d = domains.zone if values.x else domains.app %}{{ d }} {{ values["key"] }}
{{ values.secret | secret_key_ref }} {{ values.r | default("x") | indent(2) }}
{% include "_p.j2" %}"#;
        assert_eq!(through(template, "{{ workspace.account ~ d }}"), ALL);
    }

    #[test]
    fn computing_on_a_root_keeps_it_real() {
        let w_cases = [
            r#"{% if workspace.id == "acme" %}x{% endif %}"#,
            "{{ workspace.id | upper }}",
            "{{ workspace.id[0] }}",
            "{{ workspace.id[:2] }}",
            "{% for c in workspace.id %}{{ c }}{% endfor %}",
            r#"{{ workspace.id | join(",") }}"#,
            r#"{{ workspace.id | replace("a", "b") }}"#,
            r#"{{ workspace.id | trim("a") }}"#,
            r#"{% set x = workspace.id %}{{ x is startingwith "a" }}"#,
            r#"{{ "acme" in workspace.name }}"#,
            "{{ {workspace.id: 1} }}",
            "{{ host(workspace.id) }}",
            "{{ -workspace.id }}",
            "{{ workspace.id.upper() }}",
            "{{ values[workspace.id] }}",
            // Through a variable that is only tainted on the loop's second pass.
            "{% for i in range(2) %}{{ y | lower }}{% set y = workspace.id %}{% endfor %}",
            // Through a captured block and a filter block.
            "{% set x %}{{ workspace.id }}{% endset %}{{ x | lower }}",
            "{% filter upper %}{{ workspace.name }}{% endfilter %}",
            // Unpacking, which would split a string, were minijinja to allow it.
            "{% set a, b, c, d = workspace.id %}{{ d ~ c ~ b ~ a }}",
            "{% for k, (a, b) in workspace | dictsort %}{{ b ~ a }}{% endfor %}",
        ];
        for case in w_cases {
            let also = if case.contains("values") { V } else { 0 };
            assert_eq!(through(case, ""), ALL & !W & !also, "{case}");
        }
        assert_eq!(through("{{ values.n + 1 }}", ""), ALL & !V);
        assert_eq!(through("{{ cluster.id | lower }}", ""), ALL & !C);
        assert_eq!(through("{{ host('x') | upper }}", ""), ALL & !D);
        // In a partial, with a variable the including template set.
        let set = "{% set x = domains.zone %}{% include '_p.j2' %}";
        assert_eq!(through(set, "{{ x | replace('.', '-') }}"), ALL & !D);
    }

    #[test]
    fn constructs_not_followed_rule_the_stack_out() {
        for case in [
            "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(workspace.id) }}",
            "{% include values.partial %}",
            "{% include 'missing.j2' %}",
            "{{ debug() }}",
            "{% for x in values.l recursive %}{{ loop(x.children) }}{% endfor %}",
            "{% extends '_p.j2' %}",
            "{% import '_p.j2' as p %}",
            "{{ values.f(*values.args) }}",
            "{{ unclosed",
        ] {
            assert_eq!(through(case, ""), 0, "{case}");
        }
        // A partial including itself.
        assert_eq!(through("{% include '_p.j2' %}", "{% include '_p.j2' %}"), 0);
    }
}
