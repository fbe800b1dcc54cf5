//! Rendered text → Kubernetes objects, and objects → the canonical bundle: splitting the
//! output into documents, parsing and checking each, ordering them for applying, and the
//! canonical JSON Lines whose SHA-256 is the digest.

use super::*;

/// Where the `n`th document (0-based) of a template starts: the line after its `n`th `---`
/// separator. Exact for templates whose documents are not produced by loops; otherwise line 1.
pub(super) fn document_line(template: &str, n: usize) -> usize {
    if n == 0 {
        return 1;
    }
    template
        .lines()
        .enumerate()
        .filter(|(_, l)| is_marker(l))
        .nth(n - 1)
        .map_or(1, |(i, _)| i + 2)
}

/// A `---` document start (possibly followed by content) or a `...` document end, at column 0.
/// YAML forbids both inside scalars, so splitting on them is exact.
pub(super) fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches('\r');
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line == "..."
}

/// Splits rendered output into documents: `(first line in the output, text)`. A blank leading
/// chunk (before the first `---`) is not a document.
pub(super) fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut newlines = memchr::memchr_iter(b'\n', bytes);
    let mut offset = 0;
    let mut i = 0;
    while offset < bytes.len() {
        let end = newlines.next().map_or(bytes.len(), |nl| nl + 1);
        // Only a line starting with `-` or `.` can be a marker: the others are skipped unread.
        if matches!(bytes[offset], b'-' | b'.') {
            let line = &text[offset..end];
            if is_marker(line.trim_end_matches('\n')) && offset > start {
                docs.push((start_line, &text[start..offset]));
                start = offset;
                start_line = i + 1;
            }
            if line.trim_end() == "..." {
                // A document end marker belongs to no document.
                docs.push((start_line, &text[start..offset]));
                start = end;
                start_line = i + 2;
            }
        }
        offset = end;
        i += 1;
    }
    docs.push((start_line, &text[start..]));
    without_blank_lead(docs)
}

/// `docs` without a leading chunk that holds only blanks and comments (before the first `---`).
pub(super) fn without_blank_lead(mut docs: Vec<(usize, &str)>) -> Vec<(usize, &str)> {
    let is_blank = |d: &str| {
        d.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || is_marker(l))
    };
    if docs.len() > 1 && is_blank(docs[0].1) && !docs[0].1.trim_start().starts_with("---") {
        docs.remove(0);
    }
    docs
}

/// The field by which a rendered core/v1 `Secret` carries a value (`data` or `stringData`, not
/// empty), if it does. A Secret without one (e.g. only `type` and labels, filled in by a
/// controller) is allowed.
fn secret_payload(value: &serde_json::Value) -> Option<&'static str> {
    if value["kind"] != "Secret" || value["apiVersion"] != "v1" {
        return None;
    }
    ["data", "stringData"].into_iter().find(|field| {
        value.get(field).is_some_and(|v| match v {
            serde_json::Value::Object(m) => !m.is_empty(),
            serde_json::Value::Null => false,
            _ => true,
        })
    })
}

pub(super) fn parse_document(doc: &str) -> ParsedDoc {
    // Deeply nested flow collections would exhaust the parser's stack.
    if let Err(d) = cplane_schema::load::refuse_deep_flow_nesting("", doc) {
        return ParsedDoc::Invalid(format!("rendered output: {}", d.message), d.line);
    }
    let value = match serde_yaml::from_str::<serde_json::Value>(doc) {
        Ok(v) => v,
        Err(err) => {
            let line = err.location().map_or(0, |l| l.line());
            return ParsedDoc::Invalid(
                format!(
                    "rendered output is not valid YAML: {}",
                    strip_location(&err.to_string())
                ),
                line,
            );
        }
    };
    if value.is_null() {
        return ParsedDoc::Invalid(
            "empty document: every document must be a Kubernetes object".into(),
            0,
        );
    }
    let non_empty = |p: &str| {
        value
            .pointer(p)
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty())
    };
    let missing = [
        ("/apiVersion", "apiVersion"),
        ("/kind", "kind"),
        ("/metadata/name", "metadata.name"),
    ]
    .into_iter()
    .find(|(pointer, _)| !non_empty(pointer))
    .map(|(_, field)| field);
    if let Some(field) = missing {
        return ParsedDoc::Invalid(
            format!("rendered document is not a Kubernetes object: missing `{field}` (a non-empty string)"),
            0,
        );
    }
    for field in ["labels", "annotations"] {
        if value["metadata"].get(field).is_some_and(|v| !v.is_object()) {
            return ParsedDoc::Invalid(format!("metadata.{field} must be a map"), 0);
        }
    }
    if let Some(field) = secret_payload(&value) {
        return ParsedDoc::Invalid(
            format!(
                "a Secret with `{field}`: secrets never go into git or bundles; create the Secret out of band (or render an ExternalSecret) and reference it with `secretKeyRef` (the `secret_key_ref` filter of a `secretRef` value)"
            ),
            0,
        );
    }
    ParsedDoc::Object(value)
}

/// What one template rendered for one cluster.
pub(super) struct Output<'a> {
    /// Stack name.
    pub(super) stack: &'a str,
    /// Template path in the repo.
    pub(super) path: &'a str,
    /// The template's source.
    pub(super) source: &'a str,
    /// The rendered text.
    pub(super) text: String,
}

pub(super) fn parse_objects(
    out: &Output<'_>,
    cluster: &Cluster,
    cache: &ParseCache,
    objects: &mut Vec<Object>,
) -> Result<(), Diagnostic> {
    let Output {
        stack,
        path,
        source,
        ref text,
    } = *out;
    if text.trim().is_empty() {
        return Ok(()); // a template may render nothing (e.g. a disabled feature)
    }
    let at = |n: usize, msg: String| {
        Diagnostic::new(
            path,
            Pos {
                line: document_line(source, n),
                column: 1,
            },
            "",
            format!("{msg} (rendered document {})", n + 1),
        )
    };
    for (n, (first_line, doc)) in split_documents(text).into_iter().enumerate() {
        let value = match cache.parse(doc, cluster.workspace.as_deref()) {
            Ok(v) => v,
            Err((msg, 0)) => return Err(at(n, msg)),
            Err((msg, line)) => {
                return Err(at(
                    n,
                    format!("{msg} (rendered line {})", first_line + line - 1),
                ))
            }
        };
        let mut value = value;
        mark(&mut value, &cluster.id, stack);
        objects.push(Object {
            stack: stack.to_owned(),
            template: path.to_owned(),
            value,
        });
    }
    Ok(())
}

/// Adds cplane's labels and annotation to a parsed object (whose `metadata` is a map).
pub(super) fn mark(value: &mut serde_json::Value, cluster: &str, stack: &str) {
    let meta = value
        .get_mut("metadata")
        .and_then(|m| m.as_object_mut())
        .expect("checked by parse_document");
    if let Some(labels) = meta
        .entry("labels")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
    {
        labels
            .entry(MANAGED_BY.0)
            .or_insert_with(|| MANAGED_BY.1.into());
        labels.insert(CLUSTER_LABEL.into(), cluster.into());
    }
    if let Some(annotations) = meta
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
    {
        annotations.insert(STACK_ANNOTATION.into(), stack.into());
    }
}

pub(super) fn strip_location(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

/// Namespaces, then CRDs, then everything else.
pub(super) fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        _ => 2,
    }
}

/// Identity and apply order of an object in a cluster: rank (Namespaces, CRDs, the rest),
/// kind, namespace, name, API group.
pub type ObjectKey = (u8, String, String, String, String);

/// Identity of an object in a cluster: API group, kind, namespace, name.
pub fn object_key(v: &serde_json::Value) -> ObjectKey {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let api_version = s("/apiVersion");
    let group = api_version
        .rsplit_once('/')
        .map_or("", |(g, _)| g)
        .to_owned();
    let kind = s("/kind");
    (
        kind_rank(&kind),
        kind,
        s("/metadata/namespace"),
        s("/metadata/name"),
        group,
    )
}

pub(super) fn canonical_bundle(
    cluster: &Cluster,
    mut objects: Vec<Object>,
) -> Result<Bundle, Vec<Diagnostic>> {
    objects.sort_by_cached_key(|o| object_key(&o.value));
    let mut diags = Vec::new();
    for pair in objects.windows(2) {
        if object_key(&pair[0].value) == object_key(&pair[1].value) {
            let (_, kind, ns, name, _) = object_key(&pair[1].value);
            let ns = if ns.is_empty() {
                String::new()
            } else {
                format!("{ns}/")
            };
            diags.push(Diagnostic::file(
                &pair[1].template,
                format!("{kind} {ns}{name} is also rendered by {}; an object may be defined once per cluster", pair[0].template),
            ));
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut hasher = HashWriter(Sha256::new());
    for o in &objects {
        serde_json::to_writer(&mut hasher, &o.value).expect("hashing cannot fail");
        hasher.0.update(b"\n");
    }
    let digest = format!("sha256:{}", hex::encode(hasher.0.finalize()));
    Ok(Bundle {
        cluster: cluster.id.clone(),
        objects,
        digest,
    })
}

/// Feeds serialized bytes straight into the hash, without building the string.
pub(super) struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
