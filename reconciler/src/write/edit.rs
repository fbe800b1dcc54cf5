//! Editing one workspace file so that it says what the API was asked for, keeping the file's
//! comments and layout where it can.
//!
//! **Guarantee**: the text [`edit`] returns always parses (serde_yaml) to exactly the requested
//! document. The lossless editor (`yaml-edit`) changes only the fields that differ — comments,
//! key order, quoting and blank lines elsewhere stay as they were — and its output is checked
//! by parsing it back. Should that check ever fail (an edge of the editor), the document is
//! written afresh instead, keeping only the file's leading comment block: correctness over
//! layout.

use std::str::FromStr;

use serde_json::{Map, Value};
use yaml_edit::{Document, Mapping, Sequence};

/// Modeline that new workspace files start with (editors validate against the JSON Schema).
pub const MODELINE: &str = "# yaml-language-server: $schema=../schemas/workspace.json\n";

/// How the new text was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only the changed fields were rewritten; everything else is as it was.
    Preserved,
    /// A new file.
    Created,
    /// The old file could not be edited in place; written afresh (leading comments kept).
    Rewritten,
}

/// The text of a workspace file holding `new`, edited from `old` when there is one.
pub fn edit(old: Option<&str>, new: &Value) -> (String, Layout) {
    let Some(old) = old else {
        return (format!("{MODELINE}{}", fresh(new)), Layout::Created);
    };
    if let Some(text) = edit_in_place(old, new) {
        if parses_to(&text, new) {
            return (text, Layout::Preserved);
        }
        tracing::warn!("lossless edit did not round-trip; rewriting the workspace file");
    }
    let header: String = old
        .lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    (format!("{header}{}", fresh(new)), Layout::Rewritten)
}

/// Whether `text` parses to exactly `value`.
fn parses_to(text: &str, value: &Value) -> bool {
    serde_yaml::from_str::<Value>(text).is_ok_and(|v| v == *value)
}

fn edit_in_place(old: &str, new: &Value) -> Option<String> {
    let before: Value = serde_yaml::from_str(old).ok()?;
    let (Value::Object(before), Value::Object(after)) = (&before, new) else {
        return None;
    };
    let doc = Document::from_str(old).ok()?;
    let root = doc.as_mapping()?;
    apply_map(&root, before, after);
    Some(doc.to_string())
}

/// Rewrites the entries of `node` (holding `old`) that differ from `new`.
fn apply_map(node: &Mapping, old: &Map<String, Value>, new: &Map<String, Value>) {
    for key in old.keys() {
        if !new.contains_key(key) {
            node.remove(key.as_str());
        }
    }
    for (key, value) in ordered(new) {
        match (old.get(key), value) {
            (Some(before), _) if before == value => {}
            (Some(Value::Object(before)), Value::Object(after)) => {
                match node.get_mapping(key.as_str()) {
                    Some(child) if !child.is_flow_style() => apply_map(&child, before, after),
                    _ => set(node, key, value),
                }
            }
            (Some(Value::Array(before)), Value::Array(after)) => {
                let done = node
                    .get_sequence(key.as_str())
                    .is_some_and(|seq| !seq.is_flow_style() && apply_seq(&seq, before, after));
                if !done {
                    set(node, key, value);
                }
            }
            _ => set(node, key, value),
        }
    }
}

/// The `name` of a list item, when it is a map with a string `name`.
fn item_name(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

/// Edits a block sequence in place; `false` when it is better replaced whole.
///
/// Lists of named maps (`stacks`) are matched by name, so enabling, disabling or re-valuing one
/// stack leaves the other items — and the comments around them — untouched.
fn apply_seq(seq: &Sequence, old: &[Value], new: &[Value]) -> bool {
    let names = |items: &[Value]| -> Option<Vec<String>> {
        let names: Option<Vec<String>> = items
            .iter()
            .map(|v| item_name(v).map(str::to_owned))
            .collect();
        let names = names?;
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        (unique.len() == names.len()).then_some(names)
    };
    if let (Some(old_names), Some(new_names)) = (names(old), names(new)) {
        if seq.len() != old.len() {
            return false;
        }
        // Drop the items that go away (from the back, so indices stay valid).
        for (i, name) in old_names.iter().enumerate().rev() {
            if !new_names.contains(name) {
                seq.remove(i);
            }
        }
        // The survivors must already be in the new order; otherwise replace the list.
        let kept: Vec<&String> = old_names.iter().filter(|n| new_names.contains(n)).collect();
        let wanted: Vec<&String> = new_names.iter().filter(|n| old_names.contains(n)).collect();
        if kept != wanted {
            return false;
        }
        for (i, item) in new.iter().enumerate() {
            let name = &new_names[i];
            match old_names.iter().position(|n| n == name) {
                Some(j) => {
                    if old[j] == *item {
                        continue;
                    }
                    let target = seq.get(i).and_then(|n| n.as_mapping().cloned());
                    match (target, &old[j], item) {
                        (Some(m), Value::Object(before), Value::Object(after))
                            if !m.is_flow_style() =>
                        {
                            apply_map(&m, before, after)
                        }
                        _ => {
                            seq_set(seq, i, item);
                        }
                    }
                }
                None if i >= seq.len() => push(seq, item),
                None => insert(seq, i, item),
            }
        }
        return true;
    }
    if old.len() != new.len() {
        return false;
    }
    for (i, (before, after)) in old.iter().zip(new).enumerate() {
        if before == after {
            continue;
        }
        let target = seq.get(i).and_then(|n| n.as_mapping().cloned());
        match (target, before, after) {
            (Some(m), Value::Object(b), Value::Object(a)) if !m.is_flow_style() => {
                apply_map(&m, b, a)
            }
            _ => seq_set(seq, i, after),
        }
    }
    true
}

/// Keys in the order people write workspace documents (`apiVersion`, `kind`, `metadata`,
/// `spec`; `region` … `stacks`; `name` before `values`), then the rest in their given order.
fn ordered(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    const ORDER: [&str; 15] = [
        "apiVersion",
        "kind",
        "metadata",
        "spec",
        "name",
        "region",
        "environment",
        "account",
        "aws",
        "accountId",
        "roleArn",
        "externalId",
        "deletionPolicy",
        "stacks",
        "values",
    ];
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by_key(|(k, _)| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    entries
}

/// A fresh block-style rendering of `value` (serde_yaml quotes what needs quoting).
fn fresh(value: &Value) -> String {
    fn to_yaml(v: &Value) -> serde_yaml::Value {
        match v {
            Value::Object(map) => serde_yaml::Value::Mapping(
                ordered(map)
                    .into_iter()
                    .map(|(k, v)| (serde_yaml::Value::String(k.clone()), to_yaml(v)))
                    .collect(),
            ),
            Value::Array(items) => serde_yaml::Value::Sequence(items.iter().map(to_yaml).collect()),
            other => serde_yaml::to_value(other).unwrap_or(serde_yaml::Value::Null),
        }
    }
    serde_yaml::to_string(&to_yaml(value)).unwrap_or_default()
}

/// Builds a block mapping of `map` for the lossless editor.
fn mapping(map: &Map<String, Value>) -> Mapping {
    let m = Mapping::new();
    for (k, v) in ordered(map) {
        set(&m, k, v);
    }
    m
}

fn sequence(items: &[Value]) -> Sequence {
    let s = Sequence::new();
    for v in items {
        push(&s, v);
    }
    s
}

macro_rules! dispatch {
    ($value:expr, |$x:ident| $call:expr) => {
        match $value {
            Value::Null => {
                let $x: Option<i64> = None;
                $call
            }
            Value::Bool(b) => {
                let $x = *b;
                $call
            }
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    let $x = i;
                    $call
                } else if let Some(u) = n.as_u64() {
                    let $x = u;
                    $call
                } else {
                    let $x = n.as_f64().unwrap_or(0.0);
                    $call
                }
            }
            Value::String(s) => {
                let $x = s.as_str();
                $call
            }
            Value::Object(map) => {
                let $x = mapping(map);
                $call
            }
            Value::Array(items) => {
                let $x = sequence(items);
                $call
            }
        }
    };
}

fn set(node: &Mapping, key: &str, value: &Value) {
    dispatch!(value, |x| node.set(key, x))
}

fn push(seq: &Sequence, value: &Value) {
    dispatch!(value, |x| seq.push(x))
}

fn insert(seq: &Sequence, index: usize, value: &Value) {
    dispatch!(value, |x| seq.insert(index, x))
}

fn seq_set(seq: &Sequence, index: usize, value: &Value) {
    dispatch!(value, |x| {
        seq.set(index, x);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ACME: &str = include_str!("../../../state-repo-template/workspaces/acme.yaml");

    fn doc(text: &str) -> Value {
        serde_yaml::from_str(text).expect("yaml")
    }

    #[test]
    fn enabling_a_stack_keeps_comments_and_layout() {
        let mut v = doc(ACME);
        v["spec"]["stacks"]
            .as_array_mut()
            .expect("stacks")
            .push(json!({"name": "airflow", "values": {"dagsRepo": "https://x/d.git"}}));
        let (text, layout) = edit(Some(ACME), &v);
        assert_eq!(layout, Layout::Preserved);
        assert!(text.starts_with(ACME.trim_end()), "{text}");
        assert!(text
            .ends_with("    - name: airflow\n      values:\n        dagsRepo: https://x/d.git\n"));
        assert_eq!(doc(&text), v);
    }

    #[test]
    fn disabling_and_revaluing_touch_only_their_items() {
        let mut v = doc(ACME);
        let stacks = v["spec"]["stacks"].as_array_mut().expect("stacks");
        stacks.retain(|s| s["name"] != "trino");
        stacks[1]["values"] = json!({"replicas": 5});
        let (text, layout) = edit(Some(ACME), &v);
        assert_eq!(layout, Layout::Preserved);
        assert_eq!(doc(&text), v);
        assert!(!text.contains("trino:") && !text.contains("name: trino"));
        assert!(text.contains("# Acme Corp, production workspace in Singapore."));
        assert!(text.contains("    - name: superset\n      values:\n        replicas: 5\n"));
        assert!(text.contains("        resources:\n          limits:\n            memory: 1Gi\n"));
    }

    #[test]
    fn scalars_that_look_like_other_types_stay_strings() {
        let mut v = doc(ACME);
        v["spec"]["aws"]["accountId"] = json!("012345678901");
        v["spec"]["stacks"][0]["values"] = json!({"a": "yes", "b": "1.5", "c": "null", "d": "", "e": "x: y", "f": "#x", "g": null, "h": 2.5, "i": [1, "2"]});
        let (text, _) = edit(Some(ACME), &v);
        assert_eq!(doc(&text), v, "{text}");
    }

    #[test]
    fn new_files_are_fresh_and_ordered() {
        let v = json!({"spec": {"stacks": [], "region": "sgp-1", "aws": {"roleArn": "r", "accountId": "111111111111"}}, "metadata": {"name": "x"}, "kind": "Workspace", "apiVersion": "cplane/v1"});
        let (text, layout) = edit(None, &v);
        assert_eq!(layout, Layout::Created);
        assert_eq!(
            text,
            format!("{MODELINE}apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: x\nspec:\n  region: sgp-1\n  aws:\n    accountId: '111111111111'\n    roleArn: r\n  stacks: []\n")
        );
        assert_eq!(doc(&text), v);
    }

    #[test]
    fn unparseable_old_files_are_rewritten_keeping_the_header() {
        let old = "# header\n# two\nspec: [unclosed\n";
        let v = json!({"spec": {"region": "sgp-1"}});
        let (text, layout) = edit(Some(old), &v);
        assert_eq!(layout, Layout::Rewritten);
        assert_eq!(text, "# header\n# two\nspec:\n  region: sgp-1\n");
    }

    #[test]
    fn removing_every_stack_and_adding_the_first_one() {
        let old = "spec:\n  region: a # keep me\n  stacks:\n    - name: x\n";
        let v = json!({"spec": {"region": "a", "stacks": []}});
        let (text, _) = edit(Some(old), &v);
        assert_eq!(doc(&text), v);
        assert!(text.contains("# keep me"));
        let old = "spec:\n  region: a # keep me\n";
        let v = json!({"spec": {"region": "a", "stacks": [{"name": "trino", "values": {"workers": 2}}]}});
        let (text, layout) = edit(Some(old), &v);
        assert_eq!(layout, Layout::Preserved);
        assert_eq!(doc(&text), v);
        assert!(text.contains("# keep me"));
    }
}
