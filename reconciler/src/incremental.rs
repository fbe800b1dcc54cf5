//! Incremental re-planning: keep the last valid model; for a new commit whose changes are
//! confined to `workspaces/`, re-read, re-validate, re-render, observe and plan only the
//! workspaces it touches. Anything else (platform, regions, stacks) falls back to a full load.
//!
//! Why this is complete: a workspace's rules ([`cplane_schema::validate::workspace`]) depend
//! only on the workspace itself and on the platform, regions and stacks — unchanged by such a
//! commit — and no other entity's rules depend on a workspace. Uniqueness holds because file
//! name = id. So checking the changed workspaces checks the whole revision, and a bad one is
//! still refused whole: the model is only updated when every changed workspace passes.

use std::collections::BTreeSet;

use cplane_schema::load::parse_workspace;
use cplane_schema::{Diagnostic, EntityRef, Model};
use git2::Repository;

use crate::check::check;
use crate::db::Db;
use crate::plan::{self, Options, Plan};
use crate::render::{Cluster, ClusterKind, Renderer};
use crate::source;

/// Errors of incremental planning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading git.
    #[error(transparent)]
    Source(#[from] source::Error),
    /// Reading git objects.
    #[error("reading the repository: {0}")]
    Git(#[from] git2::Error),
    /// The database.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
}

/// The last valid revision, in memory.
pub struct Incremental {
    commit: String,
    model: Model,
    scope: plan::Scope,
}

/// Outcome of [`Incremental::prepare`].
pub enum Prepared {
    /// Not confined to `workspaces/`: load this commit in full.
    NeedsFull(String),
    /// Invalid: refused whole, the model unchanged.
    Refused(Box<Replan>),
    /// Valid; the model now holds the new revision. Observe and plan with
    /// [`Incremental::finish`].
    Staged(Staged),
}

/// Changed workspaces, validated and rendered, waiting to be planned.
pub struct Staged {
    commit: String,
    ids: Vec<String>,
    bundles: Vec<crate::reconcile::Publishable>,
}

impl Staged {
    /// The commit staged.
    pub fn commit(&self) -> &str {
        &self.commit
    }
}

/// What a re-plan did.
pub struct Replan {
    /// The new commit.
    pub commit: String,
    /// `incremental` or `full`.
    pub mode: &'static str,
    /// Workspaces re-planned (all of them in full mode).
    pub workspaces: usize,
    /// The plan (empty when refused).
    pub plan: Plan,
    /// Every validation error; non-empty means the revision was refused and the previous one
    /// stays in force.
    pub diagnostics: Vec<Diagnostic>,
    /// Desired state of the re-planned workspaces (for apply).
    pub desired: std::collections::BTreeMap<String, crate::plan::DesiredWorkspace>,
    /// What was observed of them.
    pub observed: crate::plan::Observed,
    /// Their clusters' bundles, rendered: (cluster, digest, gzip canonical form).
    pub bundles: Vec<crate::reconcile::Publishable>,
}

impl Incremental {
    /// Loads and validates `rev` in full. `Err(diagnostics)` inside `Ok` when invalid.
    pub fn cold(
        repo: &Repository,
        rev: &str,
        scope: plan::Scope,
    ) -> Result<Result<Self, Vec<Diagnostic>>, Error> {
        let snap = source::read(repo, rev)?;
        let checked = check(snap.files);
        if !checked.is_valid() {
            return Ok(Err(checked.diagnostics));
        }
        let model = checked.model.expect("valid implies a model");
        Ok(Ok(Self {
            commit: snap.commit,
            model,
            scope,
        }))
    }

    /// State from an already validated model (e.g. after a full run).
    pub fn from_model(commit: String, model: Model, scope: plan::Scope) -> Self {
        Self {
            commit,
            model,
            scope,
        }
    }

    /// The workspaces `rev` changes, when its changes are confined to `workspaces/` (so an
    /// incremental re-plan applies); `None` when a full load is needed.
    pub fn incremental_ids(
        &self,
        repo: &Repository,
        rev: &str,
    ) -> Result<Option<Vec<String>>, Error> {
        let new = source::resolve(repo, rev)?.to_string();
        let changed = source::changed_entities(repo, &self.commit, &new)?;
        Ok(changed
            .into_iter()
            .map(|e| match e {
                EntityRef::Workspace(id) => Some(id),
                _ => None,
            })
            .collect())
    }

    /// The commit in force.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    /// The model in force.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Plans `rev` against the database, incrementally when possible.
    pub async fn replan(
        &mut self,
        repo: &Repository,
        rev: &str,
        db: &Db,
        options: Options,
    ) -> Result<Replan, Error> {
        match self.prepare(repo, rev)? {
            Prepared::NeedsFull(new) => self.full(repo, &new, db, options).await,
            Prepared::Refused(r) => Ok(*r),
            Prepared::Staged(staged) => {
                self.finish(staged, db, options, &crate::reconcile::Ports::default())
                    .await
            }
        }
    }

    /// The git part of [`Incremental::replan`] (synchronous, so callers need not hold a
    /// `Repository` across an await): parse, validate and render the changed workspaces and
    /// update the model — or say that a full load is needed, or refuse the revision.
    pub fn prepare(&mut self, repo: &Repository, rev: &str) -> Result<Prepared, Error> {
        let new = source::resolve(repo, rev)?.to_string();
        let changed = source::changed_entities(repo, &self.commit, &new)?;
        let mut ids = Vec::new();
        for entity in &changed {
            match entity {
                EntityRef::Workspace(id) => ids.push(id.clone()),
                _ => return Ok(Prepared::NeedsFull(new)),
            }
        }
        let tree = repo.find_commit(git2::Oid::from_str(&new)?)?.tree()?;

        // Parse and validate the changed workspaces against the unchanged rest.
        let mut diagnostics = Vec::new();
        let mut staged = Vec::new();
        for id in &ids {
            let path = format!("workspaces/{id}.yaml");
            match tree.get_path(std::path::Path::new(&path)) {
                Err(_) => staged.push((id.clone(), None)),
                Ok(entry) => {
                    let blob = repo.find_blob(entry.id())?;
                    match parse_workspace(&path, blob.content()) {
                        Ok(entity) => staged.push((id.clone(), Some(entity))),
                        Err(d) => diagnostics.extend(d),
                    }
                }
            }
        }
        let mut previous = Vec::new();
        for (id, entity) in staged {
            let old = match entity {
                Some(e) => self.model.workspaces.insert(id.clone(), e),
                None => self.model.workspaces.remove(&id),
            };
            previous.push((id, old));
        }
        let broken = BTreeSet::new();
        for id in &ids {
            if let Some(w) = self.model.workspaces.get(id) {
                cplane_schema::validate::workspace(&self.model, &broken, w, &mut diagnostics);
            }
        }
        // Render the changed workspaces' clusters: template errors are validation errors too.
        let mut bundles = Vec::new();
        if diagnostics.is_empty() {
            let (renderer, compile) = Renderer::new(&self.model);
            diagnostics.extend(compile);
            for id in &ids {
                let Some(w) = self.model.workspaces.get(id) else {
                    continue;
                };
                let cluster = Cluster {
                    id: cplane_schema::domain::workspace_name(id),
                    kind: ClusterKind::Tenant,
                    region: w.doc.spec.region.clone(),
                    environment: w.doc.spec.environment.clone(),
                    workspace: Some(id.clone()),
                };
                match renderer.render(&cluster) {
                    Ok(b) => {
                        let gz = crate::db::gzip(b.canonical().as_bytes());
                        bundles.push((cluster, b.digest.clone(), gz));
                    }
                    Err(d) => diagnostics.extend(d),
                }
            }
        }
        if !diagnostics.is_empty() {
            // Refused whole: put the previous revision's workspaces back.
            for (id, old) in previous {
                match old {
                    Some(e) => {
                        self.model.workspaces.insert(id, e);
                    }
                    None => {
                        self.model.workspaces.remove(&id);
                    }
                }
            }
            cplane_schema::diagnostic::sort_dedup(&mut diagnostics);
            return Ok(Prepared::Refused(Box::new(Replan {
                commit: new,
                mode: "incremental",
                workspaces: ids.len(),
                plan: Plan::default(),
                diagnostics,
                desired: Default::default(),
                observed: Default::default(),
                bundles: Vec::new(),
            })));
        }
        self.commit = new.clone();
        Ok(Prepared::Staged(Staged {
            commit: new,
            ids,
            bundles,
        }))
    }

    /// The database part of [`Incremental::replan`]: observe and plan the staged workspaces,
    /// with steps 8 and 9 where `ports` has them (what failed to be read is logged; the
    /// planner then goes by the journal).
    pub async fn finish(
        &mut self,
        staged: Staged,
        db: &Db,
        options: Options,
        ports: &crate::reconcile::Ports,
    ) -> Result<Replan, Error> {
        let Staged {
            commit: new,
            ids,
            bundles,
        } = staged;
        let diagnostics = Vec::new();
        let mut desired = ids
            .iter()
            .filter_map(|id| plan::desired_workspace(&self.model, id, &self.scope))
            .map(|w| (w.id.clone(), w))
            .collect();
        let mut observed = db.observe_only(&ids, &self.scope).await?;
        plan::add_moved_out(&self.model, &self.scope, &observed, &mut desired);
        cplane_core::rollout::hold_suspended(&self.model, &mut desired, &mut observed);
        let mut notes = Vec::new();
        crate::reconcile::observe_global(ports, &desired, &mut observed, &mut notes).await;
        for note in notes {
            tracing::warn!("{note}");
        }
        let plan = plan::plan_with(&desired, &observed, options, &ports.providers);
        Ok(Replan {
            commit: new,
            mode: "incremental",
            workspaces: ids.len(),
            plan,
            diagnostics,
            desired,
            observed,
            bundles,
        })
    }

    async fn full(
        &mut self,
        repo: &Repository,
        new: &str,
        db: &Db,
        options: Options,
    ) -> Result<Replan, Error> {
        match Self::cold(repo, new, self.scope.clone())? {
            Err(diagnostics) => Ok(Replan {
                commit: new.to_owned(),
                mode: "full",
                workspaces: 0,
                plan: Plan::default(),
                diagnostics,
                desired: Default::default(),
                observed: Default::default(),
                bundles: Vec::new(),
            }),
            Ok(state) => {
                *self = state;
                let mut desired = plan::desired_workspaces(&self.model, &self.scope);
                let mut observed = db.observe(&self.scope).await?;
                plan::add_moved_out(&self.model, &self.scope, &observed, &mut desired);
                cplane_core::rollout::hold_suspended(&self.model, &mut desired, &mut observed);
                let plan = plan::plan(&desired, &observed, options);
                Ok(Replan {
                    commit: new.to_owned(),
                    mode: "full",
                    workspaces: desired.len(),
                    plan,
                    diagnostics: Vec::new(),
                    desired,
                    observed,
                    bundles: Vec::new(),
                })
            }
        }
    }
}
