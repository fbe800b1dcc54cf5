//! Hostile input: alias bombs, deep nesting, huge files, runaway templates. Each must end in a
//! clear diagnostic on the right file — never a hang, a stack overflow or unbounded memory.

mod support;

use cplane_reconciler::check::check;
use cplane_schema::SourceFile;

/// The template's files with `path` replaced (or added) by `bytes`.
fn template_with(path: &str, bytes: Vec<u8>) -> Vec<SourceFile> {
    let repo = support::template_repo();
    let git = cplane_reconciler::source::open(repo.path()).expect("open");
    let mut files = cplane_reconciler::source::read(&git, "HEAD")
        .expect("read")
        .files;
    files.retain(|f| f.path != path);
    files.push(SourceFile {
        path: path.to_owned(),
        bytes,
    });
    files
}

/// A valid workspace whose bff value `extra` is `value` (flow YAML), on line 14.
fn workspace(id: &str, value: &str) -> String {
    format!(
        "apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: {id}\nspec:\n  region: sgp-1\n  environment: prod\n  account: acme\n  aws:\n    accountId: \"111111111111\"\n    roleArn: arn:aws:iam::111111111111:role/p\n    externalId: ext-123\n  stacks:\n    - {{name: bff, values: {{extra: {value}}}}}\n"
    )
}

fn errors(files: Vec<SourceFile>) -> Vec<String> {
    let checked = check(files);
    assert!(!checked.is_valid());
    checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn alias_bomb_is_refused() {
    // "Billion laughs": 9 levels of 9 aliases would expand to 9^9 strings.
    // It sits in stack values, which are free-form, so the parser really has to expand it.
    let mut bomb = String::from("a0: &a0 [\"lol\"]");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        bomb.push_str(&format!(", a{i}: &a{i} [{refs}]"));
    }
    let doc = workspace("bomb", &format!("{{{bomb}}}"));
    let errs = errors(template_with("workspaces/bomb.yaml", doc.into_bytes()));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("workspaces/bomb.yaml:"), "{errs:?}");
    assert!(errs[0].contains("repetition limit exceeded"), "{errs:?}");
}

#[test]
fn deep_nesting_is_refused() {
    let doc = workspace(
        "deep",
        &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    );
    let errs = errors(template_with("workspaces/deep.yaml", doc.into_bytes()));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("workspaces/deep.yaml:14:"), "{errs:?}");
    assert!(errs[0].contains("recursion limit exceeded"), "{errs:?}");
}

#[test]
fn huge_file_is_refused_before_parsing() {
    let doc = format!("# {}\n", "x".repeat(2 << 20));
    let errs = errors(template_with("workspaces/huge.yaml", doc.into_bytes()));
    assert_eq!(
        errs,
        ["workspaces/huge.yaml: file is 2097155 bytes; the limit is 1048576 bytes (1 MiB)"]
    );
}

#[test]
fn runaway_template_loop_runs_out_of_fuel() {
    let tmpl = "{% for i in range(10000) %}{% for j in range(10000) %}{{ j }}{% endfor %}{% endfor %}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";
    let errs = errors(template_with(
        "stacks/bff/templates/loop.yaml.j2",
        tmpl.into(),
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("stacks/bff/templates/loop.yaml.j2:1:"),
        "{errs:?}"
    );
    assert!(errs[0].contains("out of fuel"), "{errs:?}");
}

#[test]
fn recursive_template_include_hits_the_recursion_limit() {
    let tmpl = "{% include \"self.yaml.j2\" %}\n";
    let errs = errors(template_with(
        "stacks/bff/templates/self.yaml.j2",
        tmpl.into(),
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("stacks/bff/templates/self.yaml.j2:1:"),
        "{errs:?}"
    );
    assert!(errs[0].contains("recursion limit exceeded"), "{errs:?}");
}

#[test]
fn secrets_cannot_be_read_from_outside_the_repo() {
    // Templates see only their own stack: no filesystem, no environment.
    let tmpl = "{% include \"/etc/passwd\" %}\n";
    let errs = errors(template_with(
        "stacks/bff/templates/leak.yaml.j2",
        tmpl.into(),
    ));
    assert!(errs[0].contains("template not found"), "{errs:?}");
}

#[test]
fn deeply_nested_template_output_is_refused() {
    let tmpl = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata: {}{}\n",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let errs = errors(template_with(
        "stacks/bff/templates/deep.yaml.j2",
        tmpl.into(),
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "stacks/bff/templates/deep.yaml.j2:1:1: rendered output: recursion limit exceeded"
        ),
        "{errs:?}"
    );
}
