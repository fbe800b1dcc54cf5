//! JSON Schemas of the four document kinds, generated from the types (schemars), for editors
//! (yaml-language-server modelines in every state-repo file). Shipped in the template under
//! `schemas/`; a test fails when the shipped files are stale.

use schemars::schema_for;

use crate::model::{Platform, Region, Stack, Workspace};

/// `(file name, pretty JSON)` for every kind: `platform.json`, `region.json`, `workspace.json`,
/// `stack.json`.
pub fn json_schemas() -> Vec<(&'static str, String)> {
    let pretty = |s: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&s).expect("a schema is plain JSON");
        text.push('\n');
        text
    };
    vec![
        ("platform.json", pretty(schema_for!(Platform))),
        ("region.json", pretty(schema_for!(Region))),
        ("workspace.json", pretty(schema_for!(Workspace))),
        ("stack.json", pretty(schema_for!(Stack))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The template's `schemas/` must match the types. Regenerate with
    /// `CPLANE_BLESS=1 cargo test -p cplane-schema`.
    #[test]
    fn shipped_schemas_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../state-repo-template/schemas");
        let bless = std::env::var_os("CPLANE_BLESS").is_some();
        let mut stale = Vec::new();
        for (name, text) in json_schemas() {
            let path = dir.join(name);
            if bless {
                std::fs::create_dir_all(&dir).expect("create schemas dir");
                std::fs::write(&path, &text).expect("write schema");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "state-repo-template/schemas is stale ({stale:?}); run CPLANE_BLESS=1 cargo test -p cplane-schema"
        );
    }

    #[test]
    fn schemas_forbid_unknown_fields() {
        for (name, text) in json_schemas() {
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(v["additionalProperties"], false, "{name}");
        }
    }
}
