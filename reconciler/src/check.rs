//! The validation pipeline shared by `cplane validate`, `render`, `clusters` (and, later, the
//! reconciler): parse and cross-check every document, compile every template, and — when the
//! model itself is sound — render every cluster, so template errors are validation errors too.

use cplane_schema::diagnostic::sort_dedup;
use cplane_schema::{Diagnostic, Model, SourceFile};

use crate::render::{self, Bundle, Cluster, Renderer};

/// What one revision amounts to.
pub struct Checked {
    /// The model, when `cplane.yaml` could be read (possibly with errors elsewhere).
    pub model: Option<Model>,
    /// Every problem, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// Every cluster with its bundle; empty unless the model is free of errors.
    pub bundles: Vec<(Cluster, Bundle)>,
}

impl Checked {
    /// Whether the revision is valid (no problem at all).
    pub fn is_valid(&self) -> bool {
        self.model.is_some() && self.diagnostics.is_empty()
    }
}

/// Loads, validates and renders the files of one revision.
pub fn check(files: Vec<SourceFile>) -> Checked {
    let loaded = cplane_schema::load(files);
    let mut diagnostics = loaded.diagnostics;
    let Some(model) = loaded.model else {
        return Checked {
            model: None,
            diagnostics,
            bundles: Vec::new(),
        };
    };
    let renderer_diags;
    let mut bundles = Vec::new();
    {
        let (renderer, compile) = Renderer::new(&model);
        renderer_diags = compile;
        // Rendering a model with errors would mostly repeat them; render once it is sound.
        if diagnostics.is_empty() && renderer_diags.is_empty() {
            let clusters = render::clusters(&model);
            let results = renderer.render_all(&clusters);
            let mut failures = Vec::new();
            for (cluster, result) in clusters.into_iter().zip(results) {
                match result {
                    Ok(bundle) => bundles.push((cluster, bundle)),
                    Err(diags) => {
                        failures.extend(diags.into_iter().map(|d| (cluster.id.clone(), d)))
                    }
                }
            }
            diagnostics.extend(render::group(failures));
            if !diagnostics.is_empty() {
                bundles.clear();
            }
        }
    }
    diagnostics.extend(renderer_diags);
    sort_dedup(&mut diagnostics);
    Checked {
        model: Some(model),
        diagnostics,
        bundles,
    }
}
