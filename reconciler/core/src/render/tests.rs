//! Tests of the renderer: routes compared, caches, built-ins, the template context.
use super::*;

/// `doc` generalized for `id` (see [`Generalizer::of`]).
fn generalized(doc: &str, id: &str) -> Option<String> {
    Generalizer::new(id)?
        .of(doc)
        .map(std::borrow::Cow::into_owned)
}

/// The value parsed from generalized text, with `id` put back.
fn specialized(value: &serde_json::Value, id: &str) -> Option<serde_json::Value> {
    Generalizer::new(id).expect("an id").specialize(value)
}

/// Parses `doc` both ways and asserts the generalized route gives the exact result.
fn assert_generalizes(doc: &str, id: &str) {
    let general = generalized(doc, id).expect("generalizable");
    assert_ne!(general, doc, "the id was abstracted");
    assert!(!general.contains(id), "{general}");
    let (ParsedDoc::Object(exact), ParsedDoc::Object(abstracted)) =
        (parse_document(doc), parse_document(&general))
    else {
        panic!("both parse:\n{doc}");
    };
    assert_eq!(specialized(&abstracted, id), Some(exact), "{doc}");
}

/// Asserts the generalized route gives up on `doc` (at `of`, the parse or `specialize`).
fn assert_not_generalized(doc: &str, id: &str) {
    let Some(general) = generalized(doc, id) else {
        return;
    };
    if let ParsedDoc::Object(abstracted) = parse_document(&general) {
        assert_eq!(specialized(&abstracted, id), None, "{doc}");
    }
}

const TRICKY: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: w-acme-config
  namespace: acme
  labels: {"w-acme": "w-acme", team: acme, acme2: x}
data:
  host: bff.w-acme.sgp-1.cogrion.com
  quoted: "https://acme.example/x\n\"acme\"\u0027s\\acme"
  single: 'it''s acme'
  anchored: &acme acme.dev
  alias: *acme
  folded: >
    line one w-acme
    line two
  literal: |
    acme
      indented acme
  list: [acme, "w-acme", 'acme']
  acme: key
  ? acme-complex
  : value
  multi: plain acme
    continued acme
  number: 12
  other: acmex-acme
  repo: https://git.example.com/acme/dags.git
"#;

#[test]
fn generalized_documents_parse_to_the_exact_value() {
    assert_generalizes(TRICKY, "acme");
    // Ids that are numbers or booleans on their own, inside longer strings.
    for id in ["1e5", "123", "true", "no", "0x1f", "a-1", "inf"] {
        assert_generalizes(
                &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: w-{id}\n  labels: {{id: w-{id}, repo: \"git/{id}\"}}\n"),
                id,
            );
    }
}

#[test]
fn documents_that_cannot_be_generalized_safely_are_not() {
    let doc = |extra: &str| {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: w-acme\n  annotations:\n    {extra}\n")
    };
    assert!(generalized(&doc("a: b"), "acme").is_some());
    // Escapes that could spell the placeholder; a placeholder already there.
    for extra in [
        r#"a: "\x5a""#,
        r#"a: "\u005A""#,
        r#"a: "\U0000005a""#,
        "a: Zulu",
    ] {
        assert!(generalized(&doc(extra), "acme").is_none(), "{extra}");
    }
    // The id in a tag or a directive.
    assert!(generalized(&doc("a: !!int 5"), "int").is_none());
    assert!(generalized("%TAG !e! tag:acme.com,2000:\n---\na: !e!x acme\n", "acme").is_none());
    // Not mentioned: the document is its own generalization. Not an id: no guarantee.
    let own = doc("a: b");
    assert_eq!(generalized(&own, "globex").expect("as it is"), own);
    assert!(generalized("a: ACME\n", "ACME").is_none());
    // With the id back, a scalar YAML reads as a number, boolean or null: not a string.
    for (id, extra) in [
        ("1234", "a: 1234"),
        ("dead", "a: 0xdead"),
        ("true", "a: true"),
        ("inf", "a: .inf"),
        ("30", "a: 1:30"),
        ("123", "a: !!int 123"),
        ("str", "a: !!str 5"),
        ("int", "a: !!int 5"),
        ("int", "a: [x, !!int 5]"),
        ("in", "a: !<tag:yaml.org,2002:int> 5"),
        ("2", "a: |2\n      text"),
        ("1", "a: \"\\x31\""),
    ] {
        assert_not_generalized(&doc(extra), id);
    }
}

/// Differential test: random documents built from fragments that put an id where YAML
/// reads it as a value, a key, a tag, an anchor, a number, an escape or a header. Whenever
/// the generalized route answers, it must be the exact parse.
#[test]
fn generalization_never_changes_a_parse() {
    const FRAGMENTS: &[&str] = &[
        "k{n}: {id}",
        "k{n}: w-{id}.sgp-1.cogrion.com",
        "k{n}: \"{id}\"",
        "k{n}: '{id}'",
        "k{n}: {id}{id}",
        "k{n}: !!int {id}",
        "k{n}: !!str {id}",
        "k{n}: !{id} x",
        "k{n}: 0x{id}",
        "k{n}: 1{id}",
        "k{n}: .{id}",
        "k{n}: -{id}",
        "{id}{n}: v",
        "k{n}: [{id}, 1, \"{id}\"]",
        "k{n}: {{a: {id}, {id}: b}}",
        "k{n}: &{id}{n} {id}",
        "k{n}: |\n    {id}\n    x {id}",
        "k{n}: |{id}\n    text",
        "k{n}: \"a\\n{id}\\\"\"",
        "k{n}: \"\\x{id}\"",
        "k{n}: \"\\u00{id}\"",
        "k{n}: {id} # {id}",
        "k{n}: plain {id}\n    folded {id}",
        "k{n}: 1:{id}",
        "k{n}: {id}e3",
        "k{n}:\n    - {id}\n    - w-{id}",
    ];
    const IDS: &[&str] = &[
        "acme", "123", "dead", "int", "str", "a-1", "e5", "true", "no", "ws00001", "1", "5a",
        "inf", "nan", "null", "x", "0",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let (mut answered, mut fell_back) = (0, 0);
    for _ in 0..6000 {
        let id = IDS[next(IDS.len())];
        let mut doc =
            String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n");
        for n in 0..1 + next(3) {
            let fragment = FRAGMENTS[next(FRAGMENTS.len())]
                .replace("{n}", &n.to_string())
                .replace("{id}", id);
            doc.push_str("  ");
            doc.push_str(&fragment);
            doc.push('\n');
        }
        let exact = match parse_document(&doc) {
            ParsedDoc::Object(v) => Some(v),
            ParsedDoc::Invalid(..) => None,
        };
        let general = generalized(&doc, id).and_then(|g| match parse_document(&g) {
            ParsedDoc::Object(v) => specialized(&v, id),
            ParsedDoc::Invalid(..) => None,
        });
        match general {
            Some(v) => {
                assert_eq!(
                    Some(v),
                    exact,
                    "generalized parse differs for id {id}:\n{doc}"
                );
                answered += 1;
            }
            None => fell_back += 1,
        }
    }
    // Both routes are exercised.
    assert!(
        answered > 500 && fell_back > 500,
        "{answered} / {fell_back}"
    );
}

/// Differential test of the canonical-line route over several tokens ([`Tokens`]): random
/// documents built from fragments that put the id and other values where YAML reads them as
/// values, keys, tags, anchors, numbers, escapes, headers and escaped line breaks. Whenever a
/// line is made and holds for the tokens, the bytes with the tokens put back must be the exact
/// document's canonical line, and its key the exact key.
#[test]
fn lines_over_several_tokens_are_the_exact_lines() {
    const FRAGMENTS: &[&str] = &[
        "k{n}: {id}",
        "k{n}: {v}",
        "k{n}: \"{v}\"",
        "k{n}: '{w}'",
        "k{n}: {v}{v}",
        "k{n}: {v}{w}",
        "k{n}: {id}{v}",
        "k{n}: \"{v}\\\n  {w}\"",
        "k{n}: \"a\\\n  {v}\"",
        "k{n}: !!int {v}",
        "k{n}: !!str {w}",
        "k{n}: !{v} x",
        "k{n}: 0x{v}",
        "k{n}: 1{v}",
        "k{n}: .{w}",
        "k{n}: -{v}",
        "{v}{n}: v",
        "k{n}: [{v}, 1, \"{w}\"]",
        "k{n}: {{a: {v}, {w}: b}}",
        "k{n}: &{v}{n} {w}",
        "k{n}: &a{n} {v}\n  j{n}: *a{n}",
        "k{n}: |\n    {v}\n    x {w}",
        "k{n}: |{v}\n    text",
        "k{n}: \"\\x{v}\"",
        "k{n}: \"\\u00{w}\"",
        "k{n}: \"\\{v}\"",
        "k{n}: {v} # {w}",
        "k{n}: plain {v}\n    folded {w}",
        "k{n}: 1:{v}",
        "k{n}: {v}e3",
        "k{n}: JQ {v}",
        "k{n}: \"\\x4a{v}\"",
        "k{n}:\n    - {v}\n    - w-{w}-{id}",
    ];
    const IDS: &[&str] = &["acme", "ws00012", "a-1", "e5"];
    const VALUES: &[&str] = &[
        "10123",
        "1035Mi",
        "100000000123",
        "20Gi",
        "glue-role",
        "1e10",
        "0x1f",
        "12e3",
        "true",
        "null",
        "9999",
        "acme-x",
        "x-acme",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let (mut answered, mut fell_back) = (0, 0);
    for _ in 0..6000 {
        let id = IDS[next(IDS.len())];
        let v = VALUES[next(VALUES.len())];
        let w = VALUES[next(VALUES.len())];
        let Some(tokens) = Tokens::new(id, [v, w]) else {
            panic!("{id} is an id");
        };
        let mut doc =
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x-{id}\ndata:\n");
        for n in 0..1 + next(3) {
            let fragment = FRAGMENTS[next(FRAGMENTS.len())]
                .replace("{n}", &n.to_string())
                .replace("{id}", id)
                .replace("{v}", v)
                .replace("{w}", w);
            doc.push_str("  ");
            doc.push_str(&fragment);
            doc.push('\n');
        }
        let cluster = format!("w-{id}");
        let exact = match parse_document(&doc) {
            ParsedDoc::Object(mut value) => {
                mark(&mut value, &cluster, "s");
                Some((
                    serde_json::to_string(&value).expect("JSON"),
                    object_key(&value),
                ))
            }
            ParsedDoc::Invalid(..) => None,
        };
        let general_cluster = cluster.replace(id, generalize::placeholder(0, id.len()));
        let cache = ParseCache::default();
        let line = tokens.generalize(&doc).and_then(|g| {
            let mut text = String::new();
            let mut copied = 0;
            for o in &g.occurrences {
                text.push_str(&doc[copied..o.at]);
                text.push_str(generalize::placeholder(o.slot, o.len));
                copied = o.at + o.len;
            }
            text.push_str(&doc[copied..]);
            let line = canonical_line(&cache, &text, "s", &general_cluster, &g.slots)?;
            line.holds_for(&tokens).then_some((line, g))
        });
        let Some((line, g)) = line else {
            fell_back += 1;
            continue;
        };
        let mut json = String::new();
        let mut copied = 0;
        for &(mark, run, token) in &line.marks {
            json.push_str(&line.json[copied..mark]);
            json.push_str(&tokens.texts[token].repeat(run / tokens.texts[token].len()));
            copied = mark + run;
        }
        json.push_str(&line.json[copied..]);
        let (rank, kind, namespace, name, group) = &line.key;
        let back = |s: &str| tokens.put_back(s, &g).expect("whole runs");
        let key = (*rank, back(kind), back(namespace), back(name), back(group));
        assert_eq!(
            Some((json, key)),
            exact,
            "tokens {:?}, slots {:?}:\n{doc}",
            tokens.texts,
            g.slots
        );
        answered += 1;
    }
    // Both routes are exercised.
    assert!(
        answered > 500 && fell_back > 500,
        "{answered} / {fell_back}"
    );
}

/// The straightforward line-by-line splitter [`split_documents`] must agree with.
fn split_documents_by_lines(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_marker(line.trim_end_matches('\n')) && offset > start {
            docs.push((start_line, &text[start..offset]));
            start = offset;
            start_line = i + 1;
        }
        if line.trim_end() == "..." {
            // A document end marker belongs to no document.
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    without_blank_lead(docs)
}

#[test]
fn documents_split_as_line_by_line() {
    let mut cases: Vec<String> = [
        "",
        "\n",
        "---",
        "---\n",
        "a: 1",
        "a: 1\n---\nb: 2\n",
        "---\na: 1\n---\nb: 2",
        "# c\n---\na: 1\n...\n---\nb: 2\n",
        "a: 1\n...\n",
        "...\n",
        "--- a\n--- b\n",
        "---\t\n-x\n.y\n- z\n...  \n",
        "a: |\n  ---\n---\r\nb: 1\r\n",
        "\n\n---\n\n",
        "- a\n- b\n---\n- c",
        "....\n---x\n",
        "a\n.\n-\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let pieces = [
        "---", "...", "--- x", "a: 1", "- b", ".c", "# d", "", " ---", "\r",
    ];
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..(state % 7) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push_str(pieces[(state % pieces.len() as u64) as usize]);
            if !state.is_multiple_of(5) {
                text.push('\n');
            }
        }
        state = state.wrapping_add(0x9e37_79b9);
        cases.push(text);
    }
    for text in &cases {
        assert_eq!(
            split_documents(text),
            split_documents_by_lines(text),
            "{text:?}"
        );
    }
}

#[test]
fn yaml_non_strings_are_recognized() {
    for s in [
        "12", "-1.5e3", "0x1F", "0o17", ".inf", "-.Inf", "NaN", "true", "False", "null", "~",
        "yes", "off", "1_000", "1:30", "infinity",
    ] {
        assert!(could_be_non_string(s), "{s}");
    }
    // What the guard is for: these would not come back as strings.
    for s in ["12", "-1.5e3", "0x1F", ".inf", "true", "null", "~"] {
        let v: serde_json::Value = serde_yaml::from_str(s).expect("scalar");
        assert!(!v.is_string(), "{s}: {v}");
    }
    for s in [
        "acme",
        "w-1234",
        "git/123",
        "1 2",
        "sgp-1.cogrion.com",
        "ZZZZ",
    ] {
        assert!(!could_be_non_string(s), "{s}");
        assert!(serde_yaml::from_str::<serde_json::Value>(s).is_ok_and(|v| v.is_string()));
    }
}

fn template_model() -> Model {
    cplane_schema::load(crate::testdata::template_files())
        .into_valid()
        .expect("the template is valid")
}

#[test]
fn templates_compiled_for_another_platform_name_are_compiled_again() {
    let model = template_model();
    let (renderer, _) = Renderer::new(&model);
    let compiled = renderer.compiled();
    let mut renamed = template_model();
    renamed.platform.doc.metadata.name = "acmecorp".into();
    let part_of = |model: &Model, renderer: &Renderer<'_>| {
        let cluster = clusters(model)
            .into_iter()
            .find(|c| c.id == "w-acme")
            .expect("acme");
        let bundle = renderer.render(&cluster).expect("renders");
        bundle
            .objects
            .iter()
            .find_map(|o| {
                o.value["metadata"]["labels"]["app.kubernetes.io/part-of"]
                    .as_str()
                    .map(str::to_owned)
            })
            .expect("a part-of label")
    };
    let same = Renderer::with_compiled(&model, &compiled);
    assert_eq!(part_of(&model, &same), "cogrion");
    let other = Renderer::with_compiled(&renamed, &compiled);
    assert_eq!(part_of(&renamed, &other), "acmecorp");
}

#[test]
fn template_context_is_the_documented_one() {
    let mut model = template_model();
    // A probe template in a platform stack and in a tenant stack.
    let probe = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  \
                     workspace: \"{{ workspace is defined }}\"\n  region: {{ region.id }}\n  \
                     production: \"{{ environment.production }}\"\n  \
                     replicas: \"{{ values.replicas | default('none') }}\"\n";
    for stack in ["control-plane", "bff"] {
        model
            .stacks
            .get_mut(stack)
            .expect("stack")
            .templates
            .insert(
                format!("stacks/{stack}/templates/probe.yaml.j2"),
                probe.into(),
            );
    }
    let data = |model: &Model, cluster: &str| {
        let (renderer, errors) = Renderer::new(model);
        assert!(errors.is_empty(), "{errors:?}");
        let cluster = clusters(model)
            .into_iter()
            .find(|c| c.id == cluster)
            .expect("cluster");
        let bundle = renderer.render(&cluster).expect("renders");
        let digest = renderer.digest(&cluster).expect("digest").0;
        assert_eq!(digest, bundle.digest);
        let probe = bundle
            .objects
            .iter()
            .find(|o| o.value["metadata"]["name"] == "probe")
            .expect("probe")
            .value["data"]
            .clone();
        (probe, digest)
    };
    let (platform, _) = data(&model, "prod-sgp-1");
    assert_eq!(
        platform["workspace"], "False",
        "no workspace on a platform cluster"
    );
    assert_eq!(platform["region"], "sgp-1");
    assert_eq!(platform["production"], "True");
    let (tenant, listed) = data(&model, "w-acme");
    assert_eq!(tenant["workspace"], "True");
    assert_eq!(
        tenant["replicas"], "3",
        "the workspace's value over the default"
    );
    // A stack listed with no values renders with the defaults, as one not listed at all
    // (bff is required).
    model
        .workspaces
        .get_mut("acme")
        .expect("acme")
        .doc
        .spec
        .stacks
        .iter_mut()
        .find(|s| s.name == "bff")
        .expect("bff listed")
        .values
        .clear();
    let (empty, with_empty_values) = data(&model, "w-acme");
    assert_ne!(empty["replicas"], "3");
    assert_ne!(with_empty_values, listed);
    model
        .workspaces
        .get_mut("acme")
        .expect("acme")
        .doc
        .spec
        .stacks
        .retain(|s| s.name != "bff");
    let (unlisted, not_listed) = data(&model, "w-acme");
    assert_eq!(unlisted, empty);
    assert_eq!(not_listed, with_empty_values);
}

#[test]
fn every_template_document_generalizes_exactly() {
    let model = template_model();
    let (renderer, diags) = Renderer::new(&model);
    assert!(diags.is_empty(), "{diags:?}");
    let mut checked = 0;
    for cluster in clusters(&model) {
        if cluster.kind != ClusterKind::Tenant {
            continue;
        }
        let bundle = renderer.render(&cluster).expect("renders");
        let id = cluster.workspace.as_deref().expect("tenant");
        for doc in bundle.to_yaml().split("---\n").filter(|d| !d.is_empty()) {
            if generalized(doc, id).is_some() {
                assert_generalizes(doc, id);
                checked += 1;
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} documents mention their cluster"
    );
}

/// Synthetic workspaces' files (`workspaces` in one region), plus workspaces whose ids are
/// numbers, hex or YAML words, or appear in a map key, to drive both digest routes.
fn odd_files(workspaces: usize) -> Vec<cplane_schema::SourceFile> {
    let mut files = crate::testdata::synthetic_files(workspaces);
    for (n, id) in ["1234", "dead", "e5", "true", "keyed", "zz-top", "9"]
        .into_iter()
        .enumerate()
    {
        let extra = if id == "keyed" {
            format!("        extraEnv: {{\"{id}\": \"x-{id}\"}}\n")
        } else {
            String::new()
        };
        let doc = format!(
                "apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: \"{id}\"\nspec:\n  region: sgp-1\n  environment: prod\n  account: odd-{n}\n  aws:\n    accountId: \"90000000000{n}\"\n    roleArn: arn:aws:iam::90000000000{n}:role/p\n    externalId: odd-{n}\n  deletionPolicy: Retain\n  stacks:\n    - name: bff\n      values:\n        replicas: 2\n{extra}    - name: airflow\n      values:\n        dagsRepo: https://git.example.com/{id}/dags.git\n"
            );
        files.push(cplane_schema::SourceFile {
            path: format!("workspaces/{id}.yaml"),
            bytes: doc.into_bytes(),
        });
    }
    files
}

#[test]
fn the_fast_digest_is_the_bundles_digest() {
    let model = cplane_schema::load(odd_files(40))
        .into_valid()
        .expect("valid");
    let all = clusters(&model);
    let (renderer, diags) = Renderer::new(&model);
    assert!(diags.is_empty(), "{diags:?}");
    // Three passes: first and second sightings fill the caches, the third hits them.
    for pass in 0..3 {
        for cluster in &all {
            if cluster.id.starts_with("w-ws") {
                assert!(renderer.fast_digest(cluster).is_some(), "{}", cluster.id);
            }
            let bundle = renderer.render(cluster).expect("renders");
            let digest = renderer.digest(cluster).expect("digests");
            assert_eq!(
                digest,
                (bundle.digest.clone(), bundle.objects.len()),
                "pass {pass}, cluster {}",
                cluster.id
            );
            assert_eq!(renderer.verify(cluster), Ok(bundle.objects.len()));
        }
    }
    // The third pass took the templates' outputs from their generalized contexts.
    assert!(
        renderer
            .once
            .saved
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // A fresh renderer agrees with one whose caches are warm.
    let (fresh, _) = Renderer::new(&model);
    for cluster in &all {
        assert_eq!(fresh.digest(cluster), renderer.digest(cluster));
    }
    // Where the fast route cannot vouch, it says so: platform clusters. A document with the
    // id in a key has no generalized line: it is parsed as it is, and the digest still holds.
    let platform = all.iter().find(|c| c.id == "prod-sgp-1").expect("platform");
    assert_eq!(renderer.fast_digest(platform), None);
    let keyed = all.iter().find(|c| c.id == "w-keyed").expect("keyed");
    let bundle = renderer.render(keyed).expect("renders");
    assert_eq!(
        renderer.fast_digest(keyed),
        Some((bundle.digest, bundle.objects.len()))
    );
    // The odd ids really are there, with their ids back in place.
    let keyed = all.iter().find(|c| c.id == "w-keyed").expect("keyed");
    let yaml = renderer.render(keyed).expect("renders").to_yaml();
    assert!(yaml.contains("keyed: x-keyed"), "{yaml}");
}

#[test]
fn the_fast_digest_reports_errors_like_render() {
    let mut files = odd_files(4);
    let bad = files
        .iter_mut()
        .find(|f| f.path == "stacks/bff/templates/service.yaml.j2")
        .expect("service template");
    bad.bytes
        .extend_from_slice(b"---\nkind: Service\nmetadata: {name: {{ workspace.name }}}\n");
    let model = cplane_schema::load(files).into_valid().expect("valid");
    let (renderer, _) = Renderer::new(&model);
    for cluster in clusters(&model).iter().filter(|c| c.workspace.is_some()) {
        let errors = renderer.digest(cluster).expect_err("not an object");
        assert_eq!(renderer.verify(cluster), Err(errors.clone()));
        assert_eq!(Err(errors), renderer.render(cluster).map(|b| b.digest));
    }
}

#[test]
fn tojson_is_the_builtins() {
    let ours = {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        env
    };
    let builtin = Environment::new();
    // Strings of every kind of character JSON or HTML escapes, and random mixes of them.
    let alphabet: Vec<char> = "aZ9-. <>&'\"\\/\u{0}\u{1f}\t\n\r\u{7f}é中😀\u{2028}\u{2029}"
        .chars()
        .collect();
    let mut strings: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    strings.extend(["", "sgp-1.cogrion.com", "</script>", "a<b>&'c\"d\\e"].map(String::from));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..2_000 {
        let len = (seed % 12) as usize;
        strings.push(
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect(),
        );
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    }
    let mut values: Vec<Value> = strings.iter().map(|s| Value::from(s.as_str())).collect();
    values.extend(strings.iter().map(|s| Value::from_safe_string(s.clone())));
    values.extend([
        Value::from(1),
        Value::from(true),
        Value::from(()),
        Value::from(vec!["<a>", "b"]),
        Value::from_serialize(serde_json::json!({"cpu": "500m", "x": {"y": ["&", 1.5]}})),
    ]);
    for template in [
        "{{ v | tojson }}",
        "{{ v | tojson(2) }}",
        "{{ v | tojson(indent=2) }}",
        "{{ v | tojson(true) }}",
        "{{ v | tojson(false) }}",
        "{{ v | tojson(bogus=1) }}",
    ] {
        for v in &values {
            let render = |env: &Environment| {
                env.render_str(template, context! { v => v })
                    .map_err(|e| e.to_string())
            };
            assert_eq!(render(&ours), render(&builtin), "{template} of {v:?}");
        }
    }
}

#[test]
fn standard_labels_are_built_in() {
    let mut files = crate::testdata::template_files();
    let service = files
        .iter_mut()
        .find(|f| f.path == "stacks/bff/templates/service.yaml.j2")
        .expect("service template");
    service.bytes = b"apiVersion: v1\nkind: Service\nmetadata:\n  name: bff\n  labels: {{ labels(\"api\") }}\n  annotations: {s: {{ selector(\"api\") | tojson }}}\n".to_vec();
    let model = cplane_schema::load(files.clone())
        .into_valid()
        .expect("valid");
    let (renderer, _) = Renderer::new(&model);
    let acme = clusters(&model)
        .into_iter()
        .find(|c| c.id == "w-acme")
        .expect("acme");
    let bundle = renderer.render(&acme).expect("renders");
    let service = bundle
        .objects
        .iter()
        .find(|o| o.value["kind"] == "Service")
        .expect("service");
    let labels = &service.value["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "bff");
    assert_eq!(labels["app.kubernetes.io/component"], "api");
    assert_eq!(labels["app.kubernetes.io/part-of"], "cogrion");
    assert_eq!(
        service.value["metadata"]["annotations"]["s"],
        r#"{"app.kubernetes.io/component":"api","app.kubernetes.io/name":"bff"}"#
    );
    // A component must be a DNS label.
    let bad = files
        .iter_mut()
        .find(|f| f.path == "stacks/bff/templates/service.yaml.j2")
        .expect("service template");
    bad.bytes = b"apiVersion: v1\nkind: Service\nmetadata:\n  name: bff\n  labels: {{ labels(\"Not A Label\") }}\n".to_vec();
    let model = cplane_schema::load(files).into_valid().expect("valid");
    let (renderer, _) = Renderer::new(&model);
    let errors = renderer.render(&acme).expect_err("refused");
    assert!(
        errors[0]
            .message
            .contains("labels(): `Not A Label` is not a DNS label"),
        "{errors:?}"
    );
}

#[test]
fn tenant_documents_are_parsed_once_per_shape() {
    // Synthetic workspaces 1, 13 and 31 have the same stacks, values, region and
    // environment: only their names (of the same length) differ.
    let model = cplane_schema::load(crate::testdata::synthetic_files(32))
        .into_valid()
        .expect("valid");
    let (renderer, _) = Renderer::new(&model);
    let all = clusters(&model);
    let cluster = |id: &str| all.iter().find(|c| c.id == id).expect("cluster").clone();
    let (a, b, c) = (
        cluster("w-ws00001"),
        cluster("w-ws00013"),
        cluster("w-ws00031"),
    );
    let count = || {
        renderer
            .cache
            .parses
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    let first = renderer.render(&a).expect("renders");
    renderer.render(&b).expect("renders"); // the second sighting keeps them
    let before = count();
    let third = renderer.render(&c).expect("renders");
    assert_eq!(
        count(),
        before,
        "the third cluster's documents all come from the cache"
    );
    assert_ne!(first.digest, third.digest);
    assert_eq!(
        first.to_yaml().replace("ws00001", "ws00031"),
        third.to_yaml(),
        "the same bundle, with the other name"
    );
}

#[test]
fn generalizing_off_gives_the_same_bundles_by_parsing_every_document() {
    let model = cplane_schema::load(odd_files(12))
        .into_valid()
        .expect("valid");
    let all = clusters(&model);
    let (fast, _) = Renderer::new(&model);
    let (plain, _) = Renderer::new(&model);
    let plain = plain.generalizing(false);
    for cluster in &all {
        let a = fast.render(cluster).expect("renders");
        let b = plain.render(cluster).expect("renders");
        assert_eq!(a.canonical(), b.canonical(), "{}", cluster.id);
        assert_eq!(
            fast.digest(cluster),
            plain.digest(cluster),
            "{}",
            cluster.id
        );
        assert_eq!(plain.fast_digest(cluster), None, "off means off");
    }
    let parses = |r: &Renderer| r.cache.parses.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        parses(&plain) > parses(&fast),
        "generalized parsing saves parses ({} vs {})",
        parses(&plain),
        parses(&fast)
    );
}

#[test]
fn secret_refs_render_as_secret_key_refs_and_never_a_value() {
    // acme's superset takes its Flask key from a Secret of acme's own.
    let mut files = crate::testdata::template_files();
    let acme = files
        .iter_mut()
        .find(|f| f.path == "workspaces/acme.yaml")
        .expect("acme");
    let text = String::from_utf8(acme.bytes.clone()).expect("utf-8");
    let text = text.replace(
        "    - name: superset\n      values:\n",
        "    - name: superset\n      values:\n        secretKey: {secretRef: {name: acme-flask, key: k1}}\n",
    );
    acme.bytes = text.into_bytes();
    let model = cplane_schema::load(files).into_valid().expect("valid");
    let (renderer, diags) = Renderer::new(&model);
    assert!(diags.is_empty(), "{diags:?}");
    let acme = clusters(&model)
        .into_iter()
        .find(|c| c.id == "w-acme")
        .expect("acme");
    let bundle = renderer.render(&acme).expect("renders");
    let superset = bundle
        .objects
        .iter()
        .find(|o| o.value["kind"] == "Deployment" && o.stack == "superset")
        .expect("superset's Deployment");
    let env = &superset.value["spec"]["template"]["spec"]["containers"][0]["env"];
    let key = env
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "SUPERSET_SECRET_KEY")
        .expect("SUPERSET_SECRET_KEY");
    assert_eq!(
        key["valueFrom"],
        serde_json::json!({"secretKeyRef": {"name": "acme-flask", "key": "k1"}})
    );
    // The defaults name the stack's own Secret.
    let uri = env
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "SUPERSET_DATABASE_URI")
        .expect("SUPERSET_DATABASE_URI");
    assert_eq!(
        uri["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "superset", "key": "database-uri"})
    );
}

#[test]
fn a_secret_with_data_is_refused_whatever_the_route() {
    for doc in [
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: aHVudGVyMg==}\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: aHVudGVyMg==\n",
    ] {
        let ParsedDoc::Invalid(message, _) = parse_document(doc) else {
            panic!("accepted:\n{doc}");
        };
        assert!(message.contains("a Secret with"), "{message}");
        assert!(
            !message.contains("hunter2") && !message.contains("aHVu"),
            "{message}"
        );
    }
    for doc in [
        // No payload: a Secret a controller fills in, or a namesake of another group.
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: Opaque\ndata: {}\n",
        "apiVersion: example.com/v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: b}\n",
        "apiVersion: external-secrets.io/v1beta1\nkind: ExternalSecret\nmetadata: {name: s}\nspec: {data: [{secretKey: k}]}\n",
    ] {
        assert!(matches!(parse_document(doc), ParsedDoc::Object(_)), "{doc}");
    }
}

#[test]
fn secret_key_ref_needs_a_name_and_a_key() {
    let mut env = Environment::new();
    env.add_filter("secret_key_ref", secret_key_ref);
    let render = |v: serde_json::Value| {
        env.render_str("{{ v | secret_key_ref }}", context! { v => v })
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        render(serde_json::json!({"secretRef": {"name": "a", "key": "b"}})).as_deref(),
        Ok(r#"{"secretKeyRef":{"key":"b","name":"a"}}"#)
    );
    assert_eq!(
        render(serde_json::json!({"name": "a", "key": "b"})).as_deref(),
        Ok(r#"{"secretKeyRef":{"key":"b","name":"a"}}"#)
    );
    let err = render(serde_json::json!({"secretRef": {"name": "a"}})).expect_err("no key");
    assert!(err.contains("no string `key`"), "{err}");
    let err = render(serde_json::json!("hunter2")).expect_err("a string");
    assert!(err.contains("no string `name`"), "{err}");
}

#[test]
fn the_templates_tenant_stacks_pass_their_tenant_roots_through() {
    let model = template_model();
    let (renderer, _) = Renderer::new(&model);
    for (name, stack) in &model.stacks {
        if stack.entity.doc.spec.target == StackTarget::Tenant {
            let through = renderer.through[name].roots;
            assert_eq!(through, passthrough::ALL, "stack {name}");
        }
    }
}

/// A tenant stack `probe` whose one template is made of `fragments` (indexes into
/// [`PROBE_FRAGMENTS`], any other index the partial `_part.j2`), then a second document
/// when `second` says so, and workspaces `(id, s, t, key, n)` that enable it with those values.
fn probe_files(
    fragments: &[usize],
    second: bool,
    workspaces: &[(String, [&str; 3], u8)],
) -> Vec<cplane_schema::SourceFile> {
    let mut files: Vec<_> = crate::testdata::template_files()
        .into_iter()
        .filter(|f| !f.path.starts_with("workspaces/") && !f.path.starts_with("stacks/"))
        .collect();
    let file = |path: &str, text: String| cplane_schema::SourceFile {
        path: path.to_owned(),
        bytes: text.into_bytes(),
    };
    files.push(file(
        "stacks/probe/stack.yaml",
        "apiVersion: cplane/v1\nkind: Stack\nmetadata:\n  name: probe\nspec:\n  version: \"1.0.0\"\n  target: tenant\n  required: false\n  description: Probe.\n  values:\n    s: {type: string, default: plain}\n    t: {type: string, default: other}\n    n: {type: integer, default: 1}\n    m: {type: object, default: {}}\n".to_owned(),
    ));
    let mut template =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n  namespace: probe\ndata:\n"
            .to_owned();
    for (i, &f) in fragments.iter().enumerate() {
        match PROBE_FRAGMENTS.get(f) {
            Some(fragment) => template.push_str(&fragment.replace("KEY", &format!("k{i}"))),
            None => template.push_str("{% include '_part.j2' %}"),
        }
        template.push('\n');
    }
    if second {
        template.push_str("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ workspace.name }}-{{ values.t | lower }}\n  namespace: probe\ndata: {{ values.m | tojson }}\n");
    }
    files.push(file("stacks/probe/templates/probe.yaml.j2", template));
    files.push(file(
        "stacks/probe/templates/_part.j2",
        "  part: \"{{ workspace.name ~ '.' ~ values.s }}\"".to_owned(),
    ));
    for (n, (id, [s, t, key], number)) in workspaces.iter().enumerate() {
        let aws = format!("10000000000{}", n % 3);
        files.push(file(
            &format!("workspaces/{id}.yaml"),
            format!("apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: \"{id}\"\nspec:\n  region: sgp-1\n  environment: prod\n  account: org-{}\n  aws:\n    accountId: \"{aws}\"\n    roleArn: arn:aws:iam::{aws}:role/p\n    externalId: x-{n}\n  deletionPolicy: Retain\n  stacks:\n    - name: probe\n      values:\n        s: \"{s}\"\n        t: \"{t}\"\n        n: {number}\n        m: {{\"{key}\": \"{s}{t}\", \"b\": \"{t}\"}}\n", n),
        ));
    }
    files
}

/// Lines of the probe template (`KEY` is replaced by a distinct key): ones that pass the tenant
/// roots through, ones that compute on them, and ones that write the placeholders' letters.
const PROBE_FRAGMENTS: &[&str] = &[
    "  KEY: {{ workspace.name | tojson }}",
    "  KEY: {{ ('x-' ~ workspace.id ~ '-' ~ values.s) | tojson }}",
    "  KEY: \"{{ cluster.id }}/{{ domains.zone }}/{{ host('svc') }}/{{ workspace.awsAccountId }}\"",
    "  KEY: {{ values.m | tojson }}",
    "{% for k, v in values.m | dictsort %}  KEY-{{ k }}: {{ v | tojson }}\n{% endfor %}",
    "  KEY: \"ZZ{{ workspace.id }}JJ{{ values.t }}Q{{ workspace.account }}\"",
    "  KEY: {{ workspace.account }}-{{ workspace.awsAccountId }}",
    "  KEY: {{ values.s }}",
    "  KEY: {{ workspace.id | upper }}",
    "{% if values.s == 'acme' %}  KEY: hit\n{% endif %}",
    "  KEY: {{ values.s | length }}",
    "{% if workspace.id is string and values.t %}  KEY: \"{{ values.t ~ workspace.id }}\"\n{% endif %}",
    "  KEY: \"{{ values.s[:2] }}\"",
    "{% set c %}{{ workspace.id }}-{{ values.t }}{% endset %}  KEY: {{ c | tojson }}",
    "  KEY: {{ values.n + 1 }}",
    "  KEY: \"{{ workspace.id | replace('a', 'J') }}\"",
    "  KEY: {{ values.t }}{{ values.t }}",
    "  KEY: \"{{ workspace.id }}{{ workspace.id }}{{ values.n }}\"",
    "  KEY: \"{{ 'z' | upper }}{{ workspace.id }}\"",
    "{% if workspace.id == 'acme' %}  KEY: first\n{% endif %}",
    "  KEY: {{ values.t is startingwith 'a' }}",
    "  KEY: {{ workspace.id < 'b' }}",
    "{% autoescape true %}  KEY: \"{{ workspace.name }}/{{ values.m }}\"\n{% endautoescape %}",
    "{% set ns = namespace(v=workspace.id) %}{% set ns.v = ns.v ~ values.t %}  KEY: {{ ns.v | tojson }}",
    "  KEY: {{ dict(z=workspace.id, m=values.m) | tojson }}",
    "  KEY: {{ (workspace | string) | tojson }}",
    "  KEY: {{ ((vars | tojson) ~ region.displayName ~ workspace.id) | tojson }}",
    "{% set a, b = [workspace.id, values.s] %}  KEY: {{ (b ~ a) | tojson }}",
];

/// Ids and values drawn so that they collide with each other, with the template's text and
/// with the placeholders' letters. Most are four characters long and the pools are small, so
/// that workspaces often share a generalized context while their tokens differ.
const PROBE_IDS: &[&str] = &[
    "acme", "test", "beta", "1234", "e5e5", "zz-1", "prob", "gamm", "zz", "9", "probe",
];
const PROBE_VALUES: &[&str] = &[
    "acme",
    "prob",
    "1234",
    "gamm",
    "test",
    "ZZZZ",
    "JJJJ",
    "true",
    "plain",
    "J",
    "w-acme",
    "100000000001",
    "org-1",
    "x acme-acme y",
    "a~!b",
];
const PROBE_KEYS: &[&str] = &["k", "acme", "zz-1"];

proptest::proptest! {
    // 64 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
    ))]

    /// Whatever the template does with its inputs and whatever the workspaces hold, the fast
    /// route (generalized contexts, generalized lines) gives `render`'s digest, on the first
    /// sighting of each context, the second (where it is verified) and after (where it is
    /// reused).
    #[test]
    fn rendering_once_per_generalized_context_is_exact(
        fragments in proptest::collection::vec(0..PROBE_FRAGMENTS.len(), 1..9),
        include in proptest::bool::ANY,
        second in proptest::bool::ANY,
        workspaces in proptest::collection::vec(
            (
                proptest::prop_oneof![
                    3 => proptest::sample::select(&PROBE_IDS[..8]),
                    1 => proptest::sample::select(PROBE_IDS),
                ],
                proptest::sample::select(&PROBE_VALUES[..4]),
                proptest::prop_oneof![
                    3 => proptest::sample::select(&PROBE_VALUES[..2]),
                    1 => proptest::sample::select(PROBE_VALUES),
                ],
                proptest::sample::select(PROBE_KEYS),
                0u8..2,
            ),
            2..16,
        ),
    ) {
        let mut fragments = fragments;
        if include {
            fragments.push(usize::MAX);
        }
        let mut seen = std::collections::BTreeSet::new();
        let workspaces: Vec<_> = workspaces
            .into_iter()
            .filter(|w| seen.insert(w.0))
            .map(|(id, s, t, key, n)| (id.to_owned(), [s, t, key], n))
            .collect();
        let files = probe_files(&fragments, second, &workspaces);
        let model = cplane_schema::load(files).into_valid().expect("valid");
        let (renderer, diags) = Renderer::new(&model);
        proptest::prop_assert!(diags.is_empty(), "{diags:?}");
        let tenants: Vec<_> = clusters(&model).into_iter().filter(|c| c.workspace.is_some()).collect();
        for pass in 0..3 {
            for cluster in &tenants {
                let exact = renderer.render(cluster).map(|b| (b.digest, b.objects.len()));
                proptest::prop_assert_eq!(renderer.digest(cluster), exact.clone(), "pass {}, {}", pass, cluster.id);
                proptest::prop_assert_eq!(renderer.verify(cluster), exact.map(|(_, n)| n));
            }
        }
    }
}

#[test]
fn a_template_that_writes_a_placeholder_letter_is_never_reused() {
    let same_length = [("acme", "plain"), ("beta", "plain"), ("gamm", "plain")]
        .map(|(id, s)| (id.to_owned(), [s, "other", "k"], 1));
    let count = |fragments: &[usize]| {
        let model = cplane_schema::load(probe_files(fragments, true, &same_length))
            .into_valid()
            .expect("valid");
        let (renderer, _) = Renderer::new(&model);
        for cluster in clusters(&model).iter().filter(|c| c.workspace.is_some()) {
            let exact = renderer
                .render(cluster)
                .map(|b| (b.digest, b.objects.len()));
            assert_eq!(renderer.digest(cluster), exact, "{}", cluster.id);
        }
        renderer
            .once
            .saved
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Three workspaces, one generalized context: the third reuses the template's output.
    assert_eq!(count(&[0, 1, 2, 3, 4]), 1);
    // Capitals the template writes are not given out as placeholders.
    assert_eq!(count(&[0, 5]), 1);
    // A capital it makes, next to the id's placeholder, fails the check at the second
    // sighting: that context is never reused.
    assert_eq!(count(&[0, 18]), 0);
    // Computing on the workspace keeps it real: no two contexts are the same.
    assert_eq!(count(&[0, 8]), 0);
}

#[test]
fn a_template_that_compares_a_value_renders_each_workspace_as_its_own() {
    // The second and third workspaces would share a generalized context if `values.s` were
    // replaced: only the third's is `acme`, which the template compares with.
    let workspaces = [("acme", "prob"), ("beta", "prob"), ("gamm", "acme")]
        .map(|(id, s)| (id.to_owned(), [s, "plain", "k"], 1));
    let model = cplane_schema::load(probe_files(&[0, 9], false, &workspaces))
        .into_valid()
        .expect("valid");
    let (renderer, _) = Renderer::new(&model);
    for pass in 0..2 {
        for cluster in clusters(&model).iter().filter(|c| c.workspace.is_some()) {
            let exact = renderer
                .render(cluster)
                .map(|b| (b.digest, b.objects.len()));
            assert_eq!(
                renderer.digest(cluster),
                exact,
                "pass {pass}, {}",
                cluster.id
            );
        }
    }
}
