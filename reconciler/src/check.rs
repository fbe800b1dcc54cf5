//! The validation pipeline shared by `cplane validate`, `render`, `clusters` (and, later, the
//! reconciler): parse and cross-check every document, compile every template, and — when the
//! model itself is sound — render every cluster, so template errors are validation errors too.

use cplane_schema::diagnostic::sort_dedup;
use cplane_schema::{Diagnostic, Model, SourceFile};

use rayon::prelude::*;

use crate::render::{self, Bundle, Cluster, Renderer};

/// What one revision amounts to.
pub struct Checked {
    /// The model, when `cplane.yaml` could be read (possibly with errors elsewhere).
    pub model: Option<Model>,
    /// Every problem, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// Every cluster with its digest, in [`render::clusters`] order; empty unless the whole
    /// revision is free of errors.
    pub clusters: Vec<Rendered>,
}

/// One cluster's render result.
pub struct Rendered {
    /// The cluster.
    pub cluster: Cluster,
    /// `sha256:` digest of its canonical bundle.
    pub digest: String,
    /// Number of objects in the bundle.
    pub objects: usize,
    /// The bundle itself, when asked for (see [`check_keeping`]); dropped otherwise to keep
    /// memory flat on large repos.
    pub bundle: Option<Bundle>,
}

impl Checked {
    /// Whether the revision is valid (no problem at all).
    pub fn is_valid(&self) -> bool {
        self.model.is_some() && self.diagnostics.is_empty()
    }
}

/// Loads, validates and renders the files of one revision, keeping only digests.
pub fn check(files: Vec<SourceFile>) -> Checked {
    check_keeping(files, |_, _| false)
}

/// Like [`check`], keeping the bundles that `keep` selects, given the cluster and the digest
/// of its new bundle (the reconciler keeps only bundles that differ from the published ones).
pub fn check_keeping(
    files: Vec<SourceFile>,
    keep: impl Fn(&Cluster, &str) -> bool + Sync,
) -> Checked {
    let loaded = cplane_schema::load(files);
    let mut diagnostics = loaded.diagnostics;
    let Some(model) = loaded.model else {
        return Checked {
            model: None,
            diagnostics,
            clusters: Vec::new(),
        };
    };
    let mut rendered = Vec::new();
    let (renderer, compile_errors) = Renderer::new(&model);
    // Rendering a model with errors would mostly repeat them; render once it is sound.
    if diagnostics.is_empty() && compile_errors.is_empty() {
        let clusters = render::clusters(&model);
        let results: Vec<_> = clusters
            .par_iter()
            .map(|c| {
                renderer.render(c).map(|b| {
                    let digest = b.digest.clone();
                    let objects = b.objects.len();
                    let kept = keep(c, &digest).then_some(b);
                    (digest, objects, kept)
                })
            })
            .collect();
        let mut failures = Vec::new();
        for (cluster, result) in clusters.into_iter().zip(results) {
            match result {
                Ok((digest, objects, bundle)) => rendered.push(Rendered {
                    cluster,
                    digest,
                    objects,
                    bundle,
                }),
                Err(diags) => {
                    failures.extend(diags.into_iter().map(|d| (cluster.id.clone(), d)));
                }
            }
        }
        diagnostics.extend(render::group(failures));
        if !diagnostics.is_empty() {
            rendered.clear();
        }
    }
    drop(renderer);
    diagnostics.extend(compile_errors);
    sort_dedup(&mut diagnostics);
    Checked {
        model: Some(model),
        diagnostics,
        clusters: rendered,
    }
}
