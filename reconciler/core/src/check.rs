//! The validation pipeline shared by `cplane validate`, `render`, `clusters` (and, later, the
//! reconciler): parse and cross-check every document, compile every template, and — when the
//! model itself is sound — render every cluster, so template errors are validation errors too.

use cplane_schema::diagnostic::sort_dedup;
use cplane_schema::{Diagnostic, Model, SourceFile};

use std::collections::HashMap;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

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
    /// How many clusters were actually rendered (the others came from a [`RenderMemo`]).
    pub rendered: usize,
}

/// One cluster's render result.
pub struct Rendered {
    /// The cluster.
    pub cluster: Cluster,
    /// `sha256:` digest of its canonical bundle.
    pub digest: String,
    /// Number of objects in the bundle.
    pub objects: usize,
    /// The bundle itself, when asked for ([`Keep::Bundle`]); dropped otherwise to keep memory
    /// flat on large repos.
    pub bundle: Option<Bundle>,
    /// The gzip-compressed canonical bundle, when asked for ([`Keep::Gzip`]): what is published,
    /// at a tenth of the memory of the parsed objects.
    pub gz: Option<Vec<u8>>,
}

/// What to keep of a rendered bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Only its digest and size.
    Nothing,
    /// The parsed objects ([`Rendered::bundle`]).
    Bundle,
    /// The compressed canonical form ([`Rendered::gz`]).
    Gzip,
}

impl Checked {
    /// Whether the revision is valid (no problem at all).
    pub fn is_valid(&self) -> bool {
        self.model.is_some() && self.diagnostics.is_empty()
    }
}

/// Loads, validates and renders the files of one revision, keeping only digests.
pub fn check(files: Vec<SourceFile>) -> Checked {
    check_memo(files, |_, _| Keep::Nothing, None)
}

/// Like [`check`], for a verdict only (`cplane validate`): every cluster is rendered and
/// checked as [`check`] does, but no digest is computed, so [`Checked::clusters`] stays empty
/// and [`Checked::rendered`] counts the clusters rendered.
pub fn validate(files: Vec<SourceFile>) -> Checked {
    check_inner(files, |_, _| Keep::Nothing, None, false)
}

/// Like [`check`], keeping the bundles that `keep` selects, given the cluster and the digest
/// of its new bundle (the reconciler keeps only bundles that differ from the published ones).
pub fn check_keeping(
    files: Vec<SourceFile>,
    keep: impl Fn(&Cluster, &str) -> bool + Sync,
) -> Checked {
    check_memo(
        files,
        |c, d| {
            if keep(c, d) {
                Keep::Bundle
            } else {
                Keep::Nothing
            }
        },
        None,
    )
}

/// Digests of bundles rendered before, each with the fingerprint of everything its rendering
/// read: the renderer's version, the cluster, the platform, region and workspace documents and
/// every stack (documents and templates). Rendering is a pure function of those, so a cluster
/// whose fingerprint is unchanged has the same bundle and need not be rendered again.
#[derive(Debug, Default)]
pub struct RenderMemo {
    entries: HashMap<String, ([u8; 32], String, usize)>,
}

impl RenderMemo {
    /// Clusters remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Like [`check_keeping`], skipping the rendering of clusters whose inputs are unchanged since
/// `memo` saw them (their digest is taken from the memo; a cluster is still rendered when `keep`
/// wants its bundle). The memo is updated with this revision's clusters.
pub fn check_memo(
    files: Vec<SourceFile>,
    keep: impl Fn(&Cluster, &str) -> Keep + Sync,
    memo: Option<&mut RenderMemo>,
) -> Checked {
    check_inner(files, keep, memo, true)
}

/// [`check_memo`], with digests or (`digests` false, [`validate`]) without: each cluster is then
/// only verified ([`Renderer::verify`]) and none is kept in [`Checked::clusters`].
fn check_inner(
    files: Vec<SourceFile>,
    keep: impl Fn(&Cluster, &str) -> Keep + Sync,
    mut memo: Option<&mut RenderMemo>,
    digests: bool,
) -> Checked {
    debug_assert!(digests || memo.is_none(), "a memo remembers digests");
    let started = std::time::Instant::now();
    let loaded = cplane_schema::load(files);
    tracing::debug!(elapsed = ?started.elapsed(), "loaded and cross-checked");
    let mut diagnostics = loaded.diagnostics;
    let Some(model) = loaded.model else {
        return Checked {
            model: None,
            diagnostics,
            clusters: Vec::new(),
            rendered: 0,
        };
    };
    let mut rendered = Vec::new();
    let mut renders = 0;
    let (renderer, compile_errors) = Renderer::new(&model);
    // Rendering a model with errors would mostly repeat them; render once it is sound.
    if diagnostics.is_empty() && compile_errors.is_empty() {
        let clusters = render::clusters(&model);
        let known = memo.as_deref();
        let stacks = known.map(|_| stacks_fingerprint(&model));
        tracing::debug!(elapsed = ?started.elapsed(), clusters = clusters.len(), "rendering");
        // Small pieces: rayon otherwise hands each thread a few long runs of clusters, and
        // one thread can be left rendering its last run alone while the other waits.
        let results: Vec<_> = clusters
            .par_iter()
            .with_max_len(32)
            .map(|c| {
                let print = stacks.as_ref().map(|stacks| fingerprint(&model, stacks, c));
                if let (Some(m), Some(print)) = (known, print) {
                    if let Some((p, digest, objects)) = m.entries.get(&c.id) {
                        if *p == print && keep(c, digest) == Keep::Nothing {
                            return (print, false, Ok((digest.clone(), *objects, None, None)));
                        }
                    }
                }
                if !digests {
                    let result = renderer
                        .verify(c)
                        .map(|objects| (String::new(), objects, None, None));
                    return (print.unwrap_or_default(), true, result);
                }
                // The digest first (the fast route); the bundle only when it is to be kept.
                let result = renderer.digest(c).and_then(|(digest, objects)| {
                    Ok(match keep(c, &digest) {
                        Keep::Nothing => (digest, objects, None, None),
                        Keep::Bundle => (digest, objects, Some(renderer.render(c)?), None),
                        Keep::Gzip => {
                            let canonical = renderer.render(c)?.canonical();
                            (digest, objects, None, Some(gzip(canonical.as_bytes())))
                        }
                    })
                });
                (print.unwrap_or_default(), true, result)
            })
            .collect();
        let mut failures = Vec::new();
        if digests {
            rendered.reserve_exact(clusters.len());
        }
        for (cluster, (print, fresh, result)) in clusters.into_iter().zip(results) {
            renders += usize::from(fresh);
            match result {
                // Verified only ([`validate`]): nothing to keep.
                Ok(_) if !digests => {}
                Ok((digest, objects, bundle, gz)) => {
                    if let Some(m) = memo.as_deref_mut() {
                        m.entries
                            .insert(cluster.id.clone(), (print, digest.clone(), objects));
                    }
                    rendered.push(Rendered {
                        cluster,
                        digest,
                        objects,
                        bundle,
                        gz,
                    });
                }
                Err(diags) => {
                    failures.extend(diags.into_iter().map(|d| (cluster.id.clone(), d)));
                }
            }
        }
        tracing::debug!(elapsed = ?started.elapsed(), rendered = renders, "rendered");
        diagnostics.extend(render::group(failures));
        if !diagnostics.is_empty() {
            rendered.clear();
        }
        if let Some(m) = memo {
            let current: std::collections::HashSet<&str> =
                rendered.iter().map(|r| r.cluster.id.as_str()).collect();
            m.entries.retain(|id, _| current.contains(id.as_str()));
        }
    }
    drop(renderer);
    diagnostics.extend(compile_errors);
    sort_dedup(&mut diagnostics);
    Checked {
        model: Some(model),
        diagnostics,
        clusters: rendered,
        rendered: renders,
    }
}

/// SHA-256 over every stack's document and templates (any stack may reach any cluster).
fn stacks_fingerprint(model: &Model) -> [u8; 32] {
    let mut h = Sha256::new();
    for (name, stack) in &model.stacks {
        for part in [name.as_str(), stack.entity.source()] {
            h.update(part.len().to_le_bytes());
            h.update(part.as_bytes());
        }
        for (path, text) in &stack.templates {
            for part in [path.as_str(), &**text] {
                h.update(part.len().to_le_bytes());
                h.update(part.as_bytes());
            }
        }
    }
    h.finalize().into()
}

/// SHA-256 over everything rendering `cluster` reads (see [`RenderMemo`]).
fn fingerprint(model: &Model, stacks: &[u8; 32], cluster: &Cluster) -> [u8; 32] {
    let mut h = Sha256::new();
    let region = model.regions.get(&cluster.region).map(|r| r.source());
    let workspace = cluster
        .workspace
        .as_ref()
        .and_then(|id| model.workspaces.get(id))
        .map(|w| w.source());
    let kind = format!("{:?}", cluster.kind);
    for part in [
        env!("CARGO_PKG_VERSION"),
        cluster.id.as_str(),
        kind.as_str(),
        cluster.region.as_str(),
        cluster.environment.as_str(),
        model.platform.source(),
        region.unwrap_or_default(),
        workspace.unwrap_or_default(),
    ] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(stacks);
    h.finalize().into()
}

/// gzip of `bytes` (default level: bundles are written once and served many times). The
/// database stores bundles so, and agents accept them so.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template_files() -> Vec<SourceFile> {
        crate::testdata::template_files()
    }

    #[test]
    fn validate_gives_checks_verdict_without_digests() {
        let checked = check(template_files());
        let validated = validate(template_files());
        assert!(validated.is_valid(), "{:?}", validated.diagnostics);
        assert!(validated.clusters.is_empty(), "no digest is kept");
        assert_eq!(validated.rendered, checked.clusters.len());
        // A template that renders something other than an object: the same errors.
        let mut files = template_files();
        let service = files
            .iter_mut()
            .find(|f| f.path == "stacks/bff/templates/service.yaml.j2")
            .expect("bff's service template");
        service.bytes.extend_from_slice(b"---\nkind: Service\n");
        let (checked, validated) = (check(files.clone()), validate(files));
        assert!(!validated.is_valid());
        assert!(!checked.diagnostics.is_empty());
        assert_eq!(validated.diagnostics, checked.diagnostics);
    }

    #[test]
    fn memo_skips_rendering_unchanged_clusters_only() {
        let mut memo = RenderMemo::default();
        let first = check_memo(template_files(), |_, _| Keep::Nothing, Some(&mut memo));
        assert!(first.is_valid(), "{:?}", first.diagnostics);
        assert_eq!(
            first.rendered,
            first.clusters.len(),
            "a cold memo renders all"
        );
        assert_eq!(memo.len(), first.clusters.len());

        let again = check_memo(template_files(), |_, _| Keep::Nothing, Some(&mut memo));
        assert_eq!(again.rendered, 0, "nothing changed, nothing rendered");
        let digests = |c: &Checked| {
            c.clusters
                .iter()
                .map(|r| (r.cluster.id.clone(), r.digest.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(digests(&again), digests(&first));

        // One workspace changes: only its cluster is rendered, and its digest moves.
        let mut files = template_files();
        let acme = files
            .iter_mut()
            .find(|f| f.path == "workspaces/acme.yaml")
            .expect("acme");
        let text = String::from_utf8(acme.bytes.clone()).expect("utf-8");
        acme.bytes = text.replace("replicas: 3", "replicas: 4").into_bytes();
        let changed = check_memo(files, |_, _| Keep::Nothing, Some(&mut memo));
        assert_eq!(changed.rendered, 1);
        let acme_digest = |c: &Checked| {
            c.clusters
                .iter()
                .find(|r| r.cluster.id == "w-acme")
                .map(|r| r.digest.clone())
        };
        assert_ne!(acme_digest(&changed), acme_digest(&first));

        // A bundle that must be kept is rendered even when its inputs are unchanged.
        let keep_globex = |c: &Cluster, _: &str| {
            if c.id == "w-globex" {
                Keep::Gzip
            } else {
                Keep::Nothing
            }
        };
        let kept = check_memo(template_files(), keep_globex, Some(&mut memo));
        assert_eq!(kept.rendered, 2, "acme changed back, globex kept");
        let globex = kept
            .clusters
            .iter()
            .find(|r| r.cluster.id == "w-globex")
            .expect("globex");
        let mut canonical = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&globex.gz.as_ref().expect("gzip kept")[..]),
            &mut canonical,
        )
        .expect("gzip");
        assert_eq!(
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(canonical.as_bytes()))
            ),
            globex.digest,
            "the kept bytes are the canonical bundle"
        );
    }
}
