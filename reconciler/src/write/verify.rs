//! Validation of API writes without re-validating the whole repository.
//!
//! [`HeadState`] is what the writer knows about one commit of the branch: the model of its
//! platform, regions and stacks (the *base*), the errors found in them, and the errors of every
//! workspace file that is broken. A change to one workspace is then checked against that state:
//! the new file is parsed, checked by [`cplane_schema::validate::workspace`] against the base,
//! and its cluster is rendered.
//!
//! **Why that is the whole check** (as in [`crate::incremental`]): a workspace's rules depend only
//! on itself and on the base; no other entity's rules depend on a workspace; ids are unique
//! because file name = id (a rule checked per workspace). So the resulting revision is valid
//! exactly when the base has no error, no *other* workspace file is broken, and the changed one
//! passes. Every one of those errors is reported, so a 422 names each file:line that makes the
//! result invalid — the same diagnostics `cplane validate` prints, with one documented gap:
//! template errors of workspaces the write does not touch are only found by the reconciler's
//! full check (rendering 10,000 clusters per write is what this module exists to avoid).
//!
//! Cost: a cold load parses every file once (timed by the `api_commits` benchmark); moving to a
//! commit that changes only workspace files re-checks just those files; a commit the writer
//! made itself costs nothing more (its file was checked before it was committed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use cplane_schema::load::{parse_workspace, Entity};
use cplane_schema::model::Workspace;
use cplane_schema::{Diagnostic, EntityRef, FileRole, Model, SourceFile};
use git2::{Oid, Repository, Tree};

use crate::render::{Cluster, ClusterKind, Renderer};

/// Ids of the trees and blobs the base model is read from; equal keys mean equal bases.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BaseKey(Vec<(String, Oid)>);

impl BaseKey {
    fn of(tree: &Tree<'_>) -> Self {
        let mut key = Vec::new();
        for entry in tree.iter() {
            let name = entry.name().unwrap_or("");
            if name != "workspaces" {
                key.push((name.to_owned(), entry.id()));
            }
        }
        Self(key)
    }
}

/// Workspace id → `spec.account`, of the commit a [`HeadState`] describes; shared with the HTTP
/// handlers, which authorize against it before a request is queued (the writer checks again
/// against the file it edits).
pub type Accounts = Arc<RwLock<HashMap<String, String>>>;

/// `spec.account` of a workspace file, when it has one.
pub fn account_in(bytes: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_yaml::from_slice(bytes).ok()?;
    doc.get("spec")?.get("account")?.as_str().map(str::to_owned)
}

/// Checks one workspace file against a base (platform, regions, stacks). Immutable and shared:
/// request handlers check their change with the head's checker in parallel, and the writer
/// reuses that result when its head still has the same base (the same `Arc`).
pub struct Checker {
    base: Option<Arc<Model>>,
    /// The base's templates, compiled once.
    compiled: Option<crate::render::Compiled>,
    base_errors: Vec<Diagnostic>,
    /// Entities whose files failed to parse (references to them are not reported twice).
    unparsed: BTreeSet<EntityRef>,
}

/// What is known about the validity of one commit; see the module docs.
#[derive(Clone)]
pub struct HeadState {
    accounts: Accounts,
    commit: Oid,
    key: BaseKey,
    checker: Arc<Checker>,
    /// Errors per file under `workspaces/`, for broken files only.
    broken: BTreeMap<String, Vec<Diagnostic>>,
}

/// Errors reading the repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libgit2.
    #[error("reading the state repo: {0}")]
    Git(#[from] git2::Error),
    /// Reading a revision.
    #[error(transparent)]
    Source(#[from] crate::source::Error),
}

/// The repo path of a workspace's file.
pub fn workspace_path(id: &str) -> String {
    format!("workspaces/{id}.yaml")
}

impl HeadState {
    /// Loads `commit` in full: every file parsed and checked (no tenant rendering).
    pub fn cold(repo: &Repository, commit: Oid, accounts: Accounts) -> Result<Self, Error> {
        let snapshot = crate::source::read(repo, &commit.to_string())?;
        let tree = repo.find_commit(commit)?.tree()?;
        let loaded = cplane_schema::load(snapshot.files);
        let mut base_errors = Vec::new();
        let mut broken: BTreeMap<String, Vec<Diagnostic>> = BTreeMap::new();
        for d in loaded.diagnostics {
            if d.file.starts_with("workspaces/") {
                broken.entry(d.file.clone()).or_default().push(d);
            } else {
                base_errors.push(d);
            }
        }
        let mut base = loaded.model;
        let mut compiled = None;
        if let Some(model) = base.as_mut() {
            let index = std::mem::take(&mut model.workspaces)
                .into_iter()
                .map(|(id, w)| (id, w.doc.spec.account))
                .collect();
            if let Ok(mut map) = accounts.write() {
                *map = index;
            }
            let (renderer, compile) = Renderer::new(model);
            compiled = Some(renderer.compiled());
            base_errors.extend(compile);
            // Platform clusters depend on the base only: render them once here.
            if base_errors.is_empty() {
                let platform: Vec<Cluster> = crate::render::clusters(model)
                    .into_iter()
                    .filter(|c| c.kind == ClusterKind::Platform)
                    .collect();
                let mut failures = Vec::new();
                for c in &platform {
                    if let Err(diags) = renderer.render(c) {
                        failures.extend(diags.into_iter().map(|d| (c.id.clone(), d)));
                    }
                }
                base_errors.extend(crate::render::group(failures));
            }
        }
        cplane_schema::diagnostic::sort_dedup(&mut base_errors);
        let base = base.map(Arc::new);
        let unparsed = loaded
            .broken
            .into_iter()
            .filter(|e| !matches!(e, EntityRef::Workspace(_)))
            .collect();
        Ok(Self {
            accounts,
            commit,
            key: BaseKey::of(&tree),
            checker: Arc::new(Checker {
                base,
                compiled,
                base_errors,
                unparsed,
            }),
            broken,
        })
    }

    /// The commit this state describes.
    pub fn commit(&self) -> Oid {
        self.commit
    }

    /// The checker of this commit's base.
    pub fn checker(&self) -> Arc<Checker> {
        self.checker.clone()
    }

    /// Moves to `commit`: incrementally when only workspace files changed, else cold.
    pub fn advance(self, repo: &Repository, commit: Oid) -> Result<Self, Error> {
        if commit == self.commit {
            return Ok(self);
        }
        let new_tree = repo.find_commit(commit)?.tree()?;
        if BaseKey::of(&new_tree) != self.key {
            return Self::cold(repo, commit, self.accounts);
        }
        let old_tree = repo.find_commit(self.commit)?.tree()?;
        let diff = repo.diff_tree_to_tree(Some(&old_tree), Some(&new_tree), None)?;
        let mut paths = BTreeSet::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(p) = file.path().and_then(Path::to_str) {
                    paths.insert(p.to_owned());
                }
            }
        }
        let mut next = self;
        for path in paths {
            let bytes = match new_tree.get_path(Path::new(&path)) {
                Ok(entry) => Some(repo.find_blob(entry.id())?.content().to_vec()),
                Err(_) => None,
            };
            let errors = next.checker.check_file(&path, bytes.as_deref(), None);
            let account = bytes.as_deref().and_then(account_in);
            next.record(&path, account, errors);
        }
        next.commit = commit;
        Ok(next)
    }

    /// Records that the writer committed `commit`, whose only change from the current state is
    /// `path` (already checked, with `errors`; `account`: its `spec.account` now, `None` when
    /// it has none or was removed — known from the document the file was written from, so the
    /// file is not parsed again).
    pub fn committed(
        &mut self,
        commit: Oid,
        path: &str,
        account: Option<String>,
        errors: Vec<Diagnostic>,
    ) {
        self.record(path, account, errors);
        self.commit = commit;
    }

    fn record(&mut self, path: &str, account: Option<String>, errors: Vec<Diagnostic>) {
        if let FileRole::Workspace(id) = FileRole::of(path) {
            if let Ok(mut map) = self.accounts.write() {
                match account {
                    Some(account) => map.insert(id, account),
                    None => map.remove(&id),
                };
            }
        }
        if errors.is_empty() {
            self.broken.remove(path);
        } else {
            self.broken.insert(path.to_owned(), errors);
        }
    }

    /// Every error of the revision in which the file at `path` has the errors `own`.
    pub fn errors_given(&self, path: &str, own: Vec<Diagnostic>) -> Vec<Diagnostic> {
        let mut all = self.checker.base_errors.clone();
        for (file, errors) in &self.broken {
            if file != path {
                all.extend(errors.iter().cloned());
            }
        }
        all.extend(own);
        cplane_schema::diagnostic::sort_dedup(&mut all);
        all
    }
}

impl Checker {
    /// The model of the platform, regions and stacks (no workspaces), when `cplane.yaml`
    /// loaded: what a [`Renderer`] for [`Checker::check_file`] is made from.
    pub fn base(&self) -> Option<&Model> {
        self.base.as_deref()
    }

    /// A renderer of the base, with its templates compiled once for all.
    pub fn renderer(&self) -> Option<Renderer<'_>> {
        Some(Renderer::with_compiled(
            self.base.as_deref()?,
            self.compiled.as_ref()?,
        ))
    }

    /// Errors of the file at `path` holding `bytes` (`None`: removed), checked against the
    /// base; with a `renderer` (of [`HeadState::base`]), the workspace's cluster is rendered too.
    pub fn check_file(
        &self,
        path: &str,
        bytes: Option<&[u8]>,
        renderer: Option<&Renderer<'_>>,
    ) -> Vec<Diagnostic> {
        let Some(bytes) = bytes else {
            return Vec::new();
        };
        match FileRole::of(path) {
            FileRole::Workspace(_) => {}
            FileRole::Misplaced(_) => {
                let loaded = cplane_schema::load(vec![SourceFile {
                    path: path.to_owned(),
                    bytes: bytes.to_vec(),
                }]);
                return loaded
                    .diagnostics
                    .into_iter()
                    .filter(|d| d.file == path)
                    .collect();
            }
            _ => return Vec::new(),
        }
        let entity = match parse_workspace(path, bytes) {
            Ok(e) => e,
            Err(d) => return d,
        };
        self.check_workspace(entity, renderer)
    }

    fn check_workspace(
        &self,
        entity: Entity<Workspace>,
        renderer: Option<&Renderer<'_>>,
    ) -> Vec<Diagnostic> {
        let clean = self.base_errors.is_empty();
        let Some(base) = self.base.as_deref() else {
            return Vec::new(); // no usable cplane.yaml: reported among the base errors
        };
        let mut errors = Vec::new();
        cplane_schema::validate::workspace(base, &self.unparsed, &entity, &mut errors);
        if let (true, true, Some(renderer)) = (errors.is_empty(), clean, renderer) {
            errors.extend(render_one(renderer, &entity));
        }
        cplane_schema::diagnostic::sort_dedup(&mut errors);
        errors
    }
}

/// Renders the tenant cluster of one workspace (template errors are validation errors too).
fn render_one(renderer: &Renderer<'_>, entity: &Entity<Workspace>) -> Vec<Diagnostic> {
    let id = &entity.doc.metadata.name;
    let cluster = Cluster {
        id: cplane_schema::domain::workspace_name(id),
        kind: ClusterKind::Tenant,
        region: entity.doc.spec.region.clone(),
        environment: entity.doc.spec.environment.clone(),
        workspace: Some(id.clone()),
    };
    renderer
        .render_with(&cluster, Some(entity))
        .err()
        .unwrap_or_default()
}
