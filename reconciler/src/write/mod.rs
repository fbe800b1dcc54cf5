//! API writes: commit a change to the state repo on a user's behalf.
//!
//! A [`Writer`] owns one git repository on a thread of its own and takes [`Request`]s through a
//! queue. For each request it:
//! 1. reads the workspace file from the branch head (object database only, no working tree);
//! 2. applies the [`Change`] to the document and writes the YAML back keeping comments and
//!    layout ([`edit`]);
//! 3. validates the revision that would result ([`verify`]): `422` with every
//!    `file:line:column` error;
//! 4. commits in memory — author the user, committer cplane, a message naming the change;
//! 5. publishes by compare-and-swap ([`store`]).
//!
//! **Guarantees**
//! - *One commit per change, linear history, no lost update*: requests queued together are
//!   built as a chain of commits (one per change, each on the previous) and published with
//!   one compare-and-swap from the head they were built on. When the branch moved meanwhile,
//!   the writer reads the new head and rebuilds every change of the chain on it, so an update
//!   lands only on top of every update before it. No merge commit is ever made.
//! - *Conflicts are refused, not overwritten*: on a rebuild, a change that replaces or deletes
//!   a whole workspace whose file changed on the branch since the request was first built is
//!   answered `409`; a stack change (enable, disable, re-value) is applied again to the new file
//!   when it still applies (the workspace exists; the stack is enabled, for a disable), else
//!   `409`. A merge patch ([`Change::PatchWorkspace`], [`Change::PatchStack`]) is applied
//!   again to the new file too. `If-Match: <commit>` (a commit id, quoted as an entity tag or
//!   bare: the `ETag` of `GET /v1/workspaces/{id}`) answers `412` when the file differs
//!   between that commit and the head the change is built on — the file, not the head: a
//!   commit that changed other files since does not make the caller's view stale.
//! - *Nothing half-done*: an invalid or refused change creates no commit and no ref update.
//!
//! `?mode=pr` ([`Mode::PullRequest`]) publishes the commit on a branch
//! `cplane/<user>/<change>` (created or moved, again by compare-and-swap) instead.
//!
//! **Throughput** (see `benches/api_commits.rs`). Steps 1–3 are done ahead by the caller's task
//! ([`Writer::write`], on a blocking thread) against the last published head, in parallel with
//! the writer; the writer reuses that draft when the file's blob and the base's checker are
//! still the same, else it redoes them. The writer itself only builds and publishes commits:
//! `workspaces/` (10,000 entries, 400 KB) is held decoded in gix-object's tree editor between
//! commits ([`tree`]) and sent as a delta of the previous tree ([`git`]) in one pack per chain,
//! made and indexed by gix-pack ([`pack`]), which hashes every object again before anything is
//! published.

pub mod edit;
pub mod git;
pub mod pack;
pub mod store;
pub mod tree;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cplane_schema::Diagnostic;
use git2::{Oid, Repository, Signature};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use self::store::{Outgoing, Published, Store};
use self::verify::{workspace_path, Accounts, HeadState};

/// Most changes built into one chain (one compare-and-swap).
pub const MAX_BATCH: usize = 64;

/// Rebuilds on a moved head before a change is answered `409`.
pub const MAX_ATTEMPTS: usize = 12;

/// A change to the state repo.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or replace a workspace with this document (`PUT /v1/workspaces/{id}`).
    PutWorkspace {
        /// Workspace id (the file name).
        id: String,
        /// The whole `Workspace` document.
        document: Value,
    },
    /// Merge a JSON merge patch (RFC 7396) into a workspace's document (`PATCH
    /// /v1/workspaces/{id}`): `null` removes a key, objects merge recursively, arrays and
    /// scalars replace. The workspace must exist.
    PatchWorkspace {
        /// Workspace id.
        id: String,
        /// The merge patch (a JSON object).
        patch: Map<String, Value>,
    },
    /// Remove a workspace (`DELETE /v1/workspaces/{id}`).
    DeleteWorkspace {
        /// Workspace id.
        id: String,
    },
    /// Enable a stack on a workspace, or replace its values.
    PutStack {
        /// Workspace id.
        workspace: String,
        /// Stack name.
        stack: String,
        /// The stack's values on this workspace (empty: none, the stack's defaults).
        values: Map<String, Value>,
    },
    /// Merge a JSON merge patch (RFC 7396) into a stack's entry on a workspace, seen as the
    /// `{"values": {...}}` object that [`Change::PutStack`] takes: `{"values": {"a": null}}`
    /// removes one value, `{"values": null}` all of them, nested objects merge, arrays and
    /// scalars replace. A stack not enabled yet is enabled with the patched (empty) values.
    PatchStack {
        /// Workspace id.
        workspace: String,
        /// Stack name.
        stack: String,
        /// The merge patch of the stack's entry (a JSON object; its only key is `values`).
        patch: Map<String, Value>,
    },
    /// Disable a stack on a workspace.
    DeleteStack {
        /// Workspace id.
        workspace: String,
        /// Stack name.
        stack: String,
    },
}

impl Change {
    /// The workspace changed.
    pub fn workspace(&self) -> &str {
        match self {
            Change::PutWorkspace { id, .. }
            | Change::PatchWorkspace { id, .. }
            | Change::DeleteWorkspace { id } => id,
            Change::PutStack { workspace, .. }
            | Change::PatchStack { workspace, .. }
            | Change::DeleteStack { workspace, .. } => workspace,
        }
    }

    /// Whether the change replaces the whole file (so a concurrent edit of it is a conflict).
    /// A merge patch does not: like a stack change, it is applied again to the file as it is on
    /// a moved head (what the same request sent a moment later would do).
    fn replaces_file(&self) -> bool {
        matches!(
            self,
            Change::PutWorkspace { .. } | Change::DeleteWorkspace { .. }
        )
    }

    /// The verb of the commit message: `create`, `update`, `delete`, `enable stack trino`, …
    fn verb(&self, created: bool) -> String {
        match self {
            Change::PutWorkspace { .. } if created => "create".into(),
            Change::PutWorkspace { .. } => "update".into(),
            Change::PatchWorkspace { .. } => "patch".into(),
            Change::DeleteWorkspace { .. } => "delete".into(),
            Change::PutStack { stack, .. } | Change::PatchStack { stack, .. } if created => {
                format!("enable stack {stack}")
            }
            Change::PutStack { stack, .. } => format!("set values of stack {stack}"),
            Change::PatchStack { stack, .. } => format!("patch values of stack {stack}"),
            Change::DeleteStack { stack, .. } => format!("disable stack {stack}"),
        }
    }

    /// `acme-enable-trino`: the change, as a branch name component.
    fn slug(&self, created: bool) -> String {
        let text = format!("{}-{}", self.workspace(), self.verb(created));
        slug(&text)
    }

    /// The document after the change, from the one before (`None`: no file). `Ok(None)` means
    /// "remove the file"; the flag says whether something new was created.
    fn apply(&self, before: Option<&Value>) -> Result<(Option<Value>, bool), Error> {
        let id = self.workspace();
        let missing = || Error::NotFound(format!("no workspace {id}"));
        match self {
            Change::PutWorkspace { document, .. } => {
                if !document.is_object() {
                    return Err(Error::BadRequest(
                        "the body must be a Workspace document (a JSON object)".into(),
                    ));
                }
                Ok((Some(document.clone()), before.is_none()))
            }
            Change::PatchWorkspace { patch, .. } => {
                let mut doc = before.ok_or_else(missing)?.clone();
                json_patch::merge(&mut doc, &Value::Object(patch.clone()));
                Ok((Some(doc), false))
            }
            Change::DeleteWorkspace { .. } => match before {
                None => Err(missing()),
                Some(_) => Ok((None, false)),
            },
            Change::PutStack { stack, .. }
            | Change::PatchStack { stack, .. }
            | Change::DeleteStack { stack, .. }
                if check_id(stack).is_err() =>
            {
                Err(Error::NotFound(format!("no stack {stack}")))
            }
            Change::PutStack { stack, values, .. } => {
                let mut doc = before.ok_or_else(missing)?.clone();
                let stacks = stacks_of(&mut doc, id)?;
                let mut item = Map::new();
                item.insert("name".into(), Value::String(stack.clone()));
                if !values.is_empty() {
                    item.insert("values".into(), Value::Object(values.clone()));
                }
                match stacks.iter_mut().find(|s| s["name"] == stack.as_str()) {
                    Some(existing) => {
                        *existing = Value::Object(item);
                        Ok((Some(doc), false))
                    }
                    None => {
                        stacks.push(Value::Object(item));
                        Ok((Some(doc), true))
                    }
                }
            }
            Change::PatchStack { stack, patch, .. } => {
                let mut doc = before.ok_or_else(missing)?.clone();
                let stacks = stacks_of(&mut doc, id)?;
                let (index, created) = match stacks.iter().position(|s| s["name"] == stack.as_str())
                {
                    Some(i) => (i, false),
                    None => {
                        stacks.push(json!({ "name": stack }));
                        (stacks.len() - 1, true)
                    }
                };
                let Value::Object(item) = &mut stacks[index] else {
                    return Err(Error::Conflict(format!(
                        "workspaces/{id}.yaml: stack {stack} is not a map; fix the file first"
                    )));
                };
                // The resource patched is the entry without its name: `{"values": {...}}`.
                let mut resource = item.clone();
                resource.remove("name");
                let mut patched = resource.clone();
                merge(&mut patched, patch);
                patched.remove("name");
                if patched != resource {
                    // An empty `values` says nothing (the stack's defaults): left out, as PUT does.
                    if patched.get("values").is_some_and(|v| v == &json!({})) {
                        patched.remove("values");
                    }
                    let mut new = Map::new();
                    new.insert("name".into(), Value::String(stack.clone()));
                    new.extend(patched);
                    *item = new;
                }
                Ok((Some(doc), created))
            }
            Change::DeleteStack { stack, .. } => {
                let mut doc = before.ok_or_else(missing)?.clone();
                let stacks = stacks_of(&mut doc, id)?;
                let before_len = stacks.len();
                stacks.retain(|s| s["name"] != stack.as_str());
                if stacks.len() == before_len {
                    return Err(Error::NotFound(format!(
                        "stack {stack} is not enabled on workspace {id}"
                    )));
                }
                Ok((Some(doc), false))
            }
        }
    }
}

/// A change applied to one file's text: what the file becomes, before any check.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The new text (`None`: the file is removed).
    text: Option<String>,
    /// Something was created (a workspace, an enabled stack).
    created: bool,
    /// The file already says this.
    unchanged: bool,
    /// `spec.account` before and after (each must be writable by the user).
    accounts: Vec<Option<String>>,
    /// `spec.account` after (`None`: none, or the file is removed).
    account: Option<String>,
}

impl Draft {
    /// Applies `change` to the file at `path` holding `old`.
    fn of(change: &Change, path: &str, old: Option<String>) -> Result<Self, Error> {
        let before: Option<Value> = match &old {
            None => None,
            Some(t) => match serde_yaml::from_str(t) {
                Ok(v) => Some(v),
                Err(_) if change.replaces_file() => Some(Value::Null),
                Err(e) => {
                    return Err(Error::Invalid(vec![cplane_schema::load::yaml_error(
                        path, &e,
                    )]))
                }
            },
        };
        let (after, created) = change.apply(before.as_ref())?;
        let accounts = [before.as_ref(), after.as_ref()]
            .into_iter()
            .flatten()
            .map(account_of)
            .collect();
        let text = after.as_ref().map(|v| edit::edit(old.as_deref(), v).0);
        let account = after.as_ref().and_then(account_of);
        Ok(Self {
            unchanged: text == old,
            text,
            created,
            accounts,
            account,
        })
    }
}

/// `spec.account` of a workspace document.
fn account_of(doc: &Value) -> Option<String> {
    doc.get("spec")?.get("account")?.as_str().map(str::to_owned)
}

/// A change drafted and checked by the request's handler (in parallel with the writer), against
/// the head the writer last published.
pub struct Prepared {
    /// The file's blob it was drafted from.
    blob: Option<Oid>,
    /// The base it was checked against.
    checker: Arc<verify::Checker>,
    draft: Draft,
    /// The file's own errors.
    own: Vec<Diagnostic>,
}

/// What handlers prepare against: the last published head, its base's checker and its
/// `workspaces/` entries.
pub struct Snapshot {
    checker: Arc<verify::Checker>,
    folder: Option<tree::Entries>,
}

type SharedSnapshot = Arc<std::sync::RwLock<Option<Arc<Snapshot>>>>;

thread_local! {
    /// A repository handle per blocking thread (opening one costs more than a small read).
    static REPO: std::cell::RefCell<Option<(PathBuf, Repository)>> =
        const { std::cell::RefCell::new(None) };
}

/// Drafts and checks `change` against `snapshot` (see [`Prepared`]); `None` when anything is
/// off — the writer then does it itself.
fn prepare(repo_path: &std::path::Path, snapshot: &Snapshot, change: &Change) -> Option<Prepared> {
    let id = change.workspace();
    check_id(id).ok()?;
    let path = workspace_path(id);
    let file = path.split_once('/')?.1;
    let blob = snapshot.folder.as_ref()?.blob(file);
    let old = match blob {
        Some(oid) => Some(REPO.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.as_ref().map(|(p, _)| p.as_path()) != Some(repo_path) {
                *cell = Some((repo_path.to_path_buf(), Repository::open(repo_path).ok()?));
            }
            let (_, repo) = cell.as_ref()?;
            let blob = repo.find_blob(oid).ok()?;
            Some(String::from_utf8_lossy(blob.content()).into_owned())
        })?),
        None => None,
    };
    let draft = Draft::of(change, &path, old).ok()?;
    let own = if draft.unchanged {
        Vec::new()
    } else {
        let renderer = snapshot.checker.renderer();
        snapshot.checker.check_file(
            &path,
            draft.text.as_deref().map(str::as_bytes),
            renderer.as_ref(),
        )
    };
    Some(Prepared {
        blob,
        checker: snapshot.checker.clone(),
        draft,
        own,
    })
}

/// RFC 7396 JSON merge patch of one object into another (`json_patch::merge`): `null`
/// removes a key, objects merge recursively, anything else replaces.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    let mut doc = Value::Object(std::mem::take(target));
    json_patch::merge(&mut doc, &Value::Object(patch.clone()));
    if let Value::Object(map) = doc {
        *target = map;
    }
}

/// `spec.stacks` of a workspace document, created when absent.
fn stacks_of<'a>(doc: &'a mut Value, id: &str) -> Result<&'a mut Vec<Value>, Error> {
    let bad = || {
        Error::Conflict(format!(
            "workspaces/{id}.yaml has no `spec` map with a `stacks` list; fix the file first"
        ))
    };
    let spec = doc
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(bad)?;
    let stacks = spec
        .entry("stacks")
        .or_insert_with(|| Value::Array(Vec::new()));
    stacks.as_array_mut().ok_or_else(bad)
}

/// Lowercase letters, digits and `-` (`.`/`_` kept), at most 63 characters.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-');
    out.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

/// Who asks for a change: the commit's author.
#[derive(Debug, Clone)]
pub struct User {
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
}

impl User {
    /// The user's part of pull-request branch names (`alice` for `alice@example.com`).
    pub fn login(&self) -> String {
        let local = self.email.split('@').next().unwrap_or("");
        let s = slug(local);
        if s.is_empty() {
            "user".into()
        } else {
            s
        }
    }
}

/// Commit to the branch, or publish a pull-request branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Commit to the followed branch.
    Commit,
    /// Push `cplane/<user>/<change>` instead.
    PullRequest,
}

/// Which workspaces the user may write, as decided by the caller (authorization).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every workspace (admins).
    Any,
    /// Workspaces whose `spec.account` — before and after the change — is one of these.
    Accounts(std::collections::BTreeSet<String>),
}

impl Access {
    fn allows(&self, account: Option<&str>) -> bool {
        match self {
            Access::Any => true,
            Access::Accounts(set) => account.is_some_and(|a| set.contains(a)),
        }
    }
}

/// One write asked of the [`Writer`].
#[derive(Debug, Clone)]
pub struct Request {
    /// What to change.
    pub change: Change,
    /// On whose behalf.
    pub user: User,
    /// `If-Match`: the commit the caller's view of the file comes from.
    pub if_match: Option<String>,
    /// Commit or pull request.
    pub mode: Mode,
    /// What the user may write; checked against the file the change is built on.
    pub access: Access,
}

/// A write that was accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Written {
    /// The commit holding the change (the head, when nothing changed).
    pub commit: String,
    /// A workspace was created or a stack enabled (`201`), rather than changed (`200`).
    pub created: bool,
    /// False when the file already said this: no commit was made.
    pub changed: bool,
    /// Pull-request mode: the branch pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The commit's message (subject, blank line, body naming the user), when a commit was
    /// made: a pull request's title and description.
    #[serde(skip)]
    pub message: Option<String>,
}

/// Why a write was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The resulting revision would be invalid: every error (`422`).
    #[error("the change makes the state repo invalid ({} error(s))", .0.len())]
    Invalid(Vec<Diagnostic>),
    /// The user may not write this workspace (`403`).
    #[error("{0}")]
    Forbidden(String),
    /// The request itself is malformed (`400`).
    #[error("{0}")]
    BadRequest(String),
    /// No such workspace or stack (`404`).
    #[error("{0}")]
    NotFound(String),
    /// `If-Match` names a commit whose file differs from the head's (`412`).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The change no longer applies to the branch (`409`).
    #[error("{0}")]
    Conflict(String),
    /// The repository failed (`500`).
    #[error("state repo: {0}")]
    Repository(String),
    /// The writer is not running (`503`).
    #[error("the writer is not running")]
    Stopped,
}

impl Error {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 422,
            Error::Forbidden(_) => 403,
            Error::BadRequest(_) => 400,
            Error::NotFound(_) => 404,
            Error::PreconditionFailed(_) => 412,
            Error::Conflict(_) => 409,
            Error::Repository(_) => 500,
            Error::Stopped => 503,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::Forbidden(_) => "forbidden",
            Error::BadRequest(_) => "bad_request",
            Error::NotFound(_) => "not_found",
            Error::PreconditionFailed(_) => "precondition_failed",
            Error::Conflict(_) => "conflict",
            Error::Repository(_) => "error",
            Error::Stopped => "unavailable",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict(_) | Error::Stopped | Error::Repository(_)
        )
    }
}

impl From<git2::Error> for Error {
    fn from(e: git2::Error) -> Self {
        Error::Repository(e.message().to_owned())
    }
}

impl From<store::PublishError> for Error {
    fn from(e: store::PublishError) -> Self {
        match e {
            store::PublishError::Git(e) => e.into(),
            store::PublishError::Dirty(message) => Error::Conflict(message),
            e @ store::PublishError::Pack(_) => Error::Repository(e.to_string()),
        }
    }
}

impl From<tree::Error> for Error {
    fn from(e: tree::Error) -> Self {
        Error::Repository(e.to_string())
    }
}

impl From<verify::Error> for Error {
    fn from(e: verify::Error) -> Self {
        Error::Repository(e.to_string())
    }
}

/// Where the writer works.
#[derive(Clone)]
pub struct Config {
    /// The state repo's remote (a path or file:// URL is written directly; others pushed to).
    pub repo_url: String,
    /// The branch written.
    pub branch: String,
    /// The bare mirror used for remotes that are not local.
    pub mirror: PathBuf,
    /// Committer name and email.
    pub committer: (String, String),
    /// Called after every published commit (the server triggers a reconcile).
    pub on_commit: Arc<dyn Fn(&str) + Send + Sync>,
    /// Called just before each compare-and-swap of the branch (tests race it with a real
    /// external push); `None` in the server.
    pub before_publish: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("repo_url", &self.repo_url)
            .field("branch", &self.branch)
            .field("mirror", &self.mirror)
            .finish_non_exhaustive()
    }
}

type Reply = oneshot::Sender<Result<Written, Error>>;
type Queued = (Request, Option<Prepared>, Reply);

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Queued>,
    accounts: Accounts,
    snapshot: SharedSnapshot,
    /// The repository handlers read files from (the local remote, or the mirror).
    repo_path: PathBuf,
}

impl Writer {
    /// Starts the writer thread. It stops when every handle is dropped.
    pub fn start(config: Config) -> Self {
        let (queue, rx) = mpsc::channel(4096);
        let accounts = Accounts::default();
        let snapshot = SharedSnapshot::default();
        let repo_path =
            store::local_path(&config.repo_url).unwrap_or_else(|| config.mirror.clone());
        let shared = (accounts.clone(), snapshot.clone());
        let spawned = std::thread::Builder::new()
            .name("cplane-writer".into())
            .spawn(move || run(config, rx, shared.0, shared.1));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the writer thread");
        }
        Self {
            queue,
            accounts,
            snapshot,
            repo_path,
        }
    }

    /// The account of workspace `id` at the branch head as last seen by the writer (`None`:
    /// unknown or not loaded yet). For authorizing before queuing; the writer checks again.
    pub fn account_of(&self, id: &str) -> Option<String> {
        self.accounts.read().ok()?.get(id).cloned()
    }

    /// Submits one write and waits for its outcome.
    pub async fn write(&self, request: Request) -> Result<Written, Error> {
        // Draft and check the change here, on the caller's side, while the writer commits
        // others; the writer reuses the result when the file and base are still the same.
        let snapshot = self.snapshot.read().ok().and_then(|s| s.clone());
        let prepared = match snapshot {
            Some(snapshot) => {
                let (path, change) = (self.repo_path.clone(), request.change.clone());
                tokio::task::spawn_blocking(move || prepare(&path, &snapshot, &change))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((request, prepared, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

/// One queued request and what is known of it while its batch is built.
struct Job {
    request: Request,
    reply: Option<Reply>,
    /// Drafted by the handler, if it could.
    prepared: Option<Prepared>,
    /// The head it was first built on, and its file's blob there.
    pinned: Option<(Oid, Option<Oid>)>,
    /// Its file's blob at the head the chain being built starts from, looked up before the
    /// chain's first commit (while the cached `workspaces/` entries are the head's).
    at_head: Option<Option<Oid>>,
    /// Its outcome in the chain being built.
    outcome: Option<Result<Written, Error>>,
}

impl Job {
    fn answer(&mut self, outcome: Result<Written, Error>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(outcome);
        }
    }
}

fn run(
    config: Config,
    mut rx: mpsc::Receiver<Queued>,
    accounts: Accounts,
    snapshot: SharedSnapshot,
) {
    let store = match Store::open(&config.repo_url, &config.mirror, &config.branch) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the API writer cannot open the state repo");
            let message = e.to_string();
            while let Some((_, _, reply)) = rx.blocking_recv() {
                let _ = reply.send(Err(Error::Conflict(message.clone())));
            }
            return;
        }
    };
    // New objects live in memory until they are published (then packed into the remote). For
    // a local remote they are written to a database of their own, holding nothing else: libgit2
    // looks an object up before writing it, and on a miss rescans the pack folder of every
    // database stacked with it, which grows by one pack per publish. A network remote's push
    // reads them from the mirror, so there the in-memory database is stacked on the mirror's.
    let scratch = if store.is_local() {
        match git2::Odb::new().and_then(Repository::from_odb) {
            Ok(repo) => Some(repo),
            Err(e) => {
                tracing::error!(error = %e, "the API writer cannot make an in-memory repository");
                return;
            }
        }
    } else {
        None
    };
    let objects = scratch.as_ref().unwrap_or(store.repo());
    let odb = match objects.odb() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "the API writer cannot open the object database");
            return;
        }
    };
    let mempack = match odb.add_new_mempack_backend(1000) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "the API writer cannot add an in-memory object database");
            return;
        }
    };
    let mut writer = Session {
        config: &config,
        objects,
        state: None,
        accounts,
        folder: None,
        head_folder: None,
        snapshot,
        fast_trees: store.is_local(),
    };
    // Load the head up front: the first requests are authorized and prepared without waiting.
    if let Ok(Some(head)) = store.head(false) {
        if writer.advance(store.repo(), head).is_ok() {
            writer.share(store.repo());
        }
    }
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut jobs: Vec<Job> = jobs
            .into_iter()
            .map(|(request, prepared, reply)| Job {
                request,
                prepared,
                reply: Some(reply),
                pinned: None,
                at_head: None,
                outcome: None,
            })
            .collect();
        // A bug in one batch must not stop the writer: its jobs are answered, the state dropped.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer.batch(&store, &mut jobs);
        }));
        if done.is_err() {
            tracing::error!("the API writer failed on a batch; its requests were refused");
            writer.state = None;
        }
        if let Err(e) = mempack.reset() {
            tracing::warn!(error = %e, "clearing the in-memory object database");
        }
        for job in &mut jobs {
            job.answer(Err(Error::Repository("the write was not completed".into())));
        }
    }
}

/// The writer's state between batches.
struct Session<'c> {
    config: &'c Config,
    /// Where the objects of the chain being built are written and read back: an in-memory
    /// database, alone (a local remote: see [`run`]) or stacked on the store's.
    objects: &'c Repository,
    /// What is known of the head's validity.
    state: Option<HeadState>,
    /// Workspace → account of the head, shared with the handlers.
    accounts: Accounts,
    /// The last `workspaces/` tree written or read, held for editing (saves decoding 10,000
    /// entries again; its content is the base of the next tree's delta).
    folder: Option<tree::Edited>,
    /// The head's `workspaces/` entries, by tree id.
    head_folder: Option<(Oid, tree::Entries)>,
    /// Shared with handlers: the published head to prepare against.
    snapshot: SharedSnapshot,
    /// `workspaces/` trees are hashed here and only sent (a local remote): never stored in
    /// the object database, so nothing may read them back from it (the caches hold them).
    fast_trees: bool,
}

/// A commit of the chain being built.
struct Built {
    commit: Oid,
    objects: Vec<Outgoing>,
    path: String,
    /// The file's `spec.account` at this commit.
    account: Option<String>,
    /// The file's blob at this commit (`None`: removed).
    blob: Option<Oid>,
    errors: Vec<Diagnostic>,
}

impl Session<'_> {
    fn batch(&mut self, store: &Store, jobs: &mut [Job]) {
        let (prs, commits): (Vec<&mut Job>, Vec<&mut Job>) = jobs
            .iter_mut()
            .partition(|j| j.request.mode == Mode::PullRequest);
        let mut commits = commits;
        if !commits.is_empty() {
            self.commit_chain(store, &mut commits);
        }
        for job in prs {
            let outcome = self.pull_request(store, job);
            job.answer(outcome);
        }
        // Unpublished commits vanish with the in-memory objects: the state must not name one.
        let published = store.head(false).ok().flatten();
        if self.state.as_ref().map(HeadState::commit) != published {
            self.state = None;
        }
        self.share(store.repo());
    }

    /// Publishes the head's checker and `workspaces/` entries for handlers to prepare against.
    fn share(&mut self, repo: &Repository) {
        let snapshot = self.state.as_ref().and_then(|state| {
            let head = state.commit();
            let folder_id = repo
                .find_commit(head)
                .ok()?
                .tree()
                .ok()?
                .get_name("workspaces")
                .map(|e| e.id());
            let folder = match (&self.folder, folder_id) {
                (Some(edited), Some(want)) if edited.id() == want => {
                    tree::Entries::decode(&edited.content()).ok()
                }
                (_, Some(want)) => match &self.head_folder {
                    Some((id, entries)) if *id == want => Some(entries.clone()),
                    _ => tree::Entries::read(repo, want).ok(),
                },
                (_, None) => Some(tree::Entries::default()),
            };
            Some(Arc::new(Snapshot {
                checker: state.checker(),
                folder,
            }))
        });
        if let Ok(mut shared) = self.snapshot.write() {
            *shared = snapshot;
        }
    }

    /// Builds the queued commits as one chain on the head and publishes it; rebuilds on a
    /// moved head. Every job is answered.
    fn commit_chain(&mut self, store: &Store, jobs: &mut [&mut Job]) {
        let branch = store.branch_ref();
        for attempt in 0..MAX_ATTEMPTS {
            let head = match store.head(attempt > 0) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    let e = Error::Conflict(format!("branch {branch} does not exist"));
                    return fail_all_refs(jobs, e);
                }
                Err(e) => return fail_all_refs(jobs, e.into()),
            };
            if let Err(e) = self
                .advance(store.repo(), head)
                .and_then(|()| self.stage(store.repo(), head))
            {
                return fail_all_refs(jobs, e);
            }
            // One renderer (templates compiled once) for every change of the chain.
            let checker = self.state.as_ref().map(HeadState::checker);
            let renderer = checker.as_deref().and_then(verify::Checker::renderer);
            // The state of the published head, to go back to if the chain is not published.
            let at_head = self.state.clone();
            if let Err(e) = self.look_up_at_head(store.repo(), head, jobs) {
                return fail_all_refs(jobs, e);
            }
            let mut tip = head;
            let mut objects = Vec::new();
            let mut files: BTreeMap<String, Option<Oid>> = BTreeMap::new();
            for job in jobs.iter_mut().filter(|j| j.reply.is_some()) {
                match self.build(store.repo(), head, tip, job, renderer.as_ref()) {
                    Ok(Some(built)) => {
                        tip = built.commit;
                        objects.extend(built.objects.iter().cloned());
                        files.insert(built.path.clone(), built.blob);
                        if let Some(state) = self.state.as_mut() {
                            state.committed(built.commit, &built.path, built.account, built.errors);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => job.answer(Err(e)),
                }
            }
            if tip == head {
                for job in jobs.iter_mut() {
                    if let Some(outcome) = job.outcome.take() {
                        job.answer(outcome);
                    }
                }
                return;
            }
            if let Some(hook) = &self.config.before_publish {
                hook();
            }
            let files: Vec<(&str, Option<Oid>)> =
                files.iter().map(|(p, b)| (p.as_str(), *b)).collect();
            match store.publish(&branch, Some(head), tip, &objects, &files) {
                Ok(Published::Done) => {
                    for job in jobs.iter_mut() {
                        if let Some(outcome) = job.outcome.take() {
                            job.answer(outcome);
                        }
                    }
                    (self.config.on_commit)(&tip.to_string());
                    return;
                }
                Ok(Published::Locked(lock)) => return fail_all_refs(jobs, locked(&lock)),
                Ok(Published::Moved) => {
                    tracing::info!(
                        attempt,
                        "the branch moved; rebuilding the API changes on it"
                    );
                    // The state describes the unpublished tip: move the head's to the new head.
                    let fresh = store.head(true).ok().flatten();
                    self.state = at_head;
                    match (self.state.take(), fresh) {
                        (Some(state), Some(new)) => match state.advance(store.repo(), new) {
                            Ok(s) => self.state = Some(s),
                            Err(e) => tracing::warn!(error = %e, "reloading the head"),
                        },
                        _ => self.state = None,
                    }
                    for job in jobs.iter_mut() {
                        job.outcome = None;
                    }
                }
                Err(e) => return fail_all_refs(jobs, e.into()),
            }
        }
        fail_all_refs(
            jobs,
            Error::Conflict(format!(
                "{branch} kept moving ({MAX_ATTEMPTS} attempts); try again"
            )),
        );
    }

    /// Makes the published `commit` and its root tree readable from [`Session::objects`],
    /// where the chain on it is built (a no-op when that is `repo`'s own database).
    fn stage(&self, repo: &Repository, commit: Oid) -> Result<(), Error> {
        if std::ptr::eq(self.objects, repo) {
            return Ok(());
        }
        let (from, to) = (repo.odb()?, self.objects.odb()?);
        let tree = repo.find_commit(commit)?.tree_id();
        for id in [commit, tree] {
            let object = from.read(id)?;
            to.write(object.kind(), object.data())?;
        }
        Ok(())
    }

    /// The blob at the workspace file `path` in the root tree `tip` (read from
    /// [`Session::objects`]), from the cached `workspaces/` entries when they are that tree's
    /// (no 10,000-entry tree parsed per change), else from `repo`.
    fn blob_at_tip(
        &self,
        repo: &Repository,
        tip: &git2::Tree<'_>,
        path: &str,
    ) -> Result<Option<Oid>, Error> {
        let Some((dir, file)) = path.split_once('/') else {
            return Ok(blob_at(tip, path));
        };
        let Some(folder) = tip
            .get_name(dir)
            .filter(|e| e.kind() == Some(git2::ObjectType::Tree))
            .map(|e| e.id())
        else {
            return Ok(None);
        };
        match &self.folder {
            Some(edited) if edited.id() == folder => Ok(edited.blob(file)),
            _ => Ok(tree::Entries::read(repo, folder)?.blob(file)),
        }
    }

    /// Sets each job's [`Job::at_head`] for a chain starting at `head`: through the cached
    /// `workspaces/` entries of the last commit written when they are the head's (the usual
    /// case: no 400 KB tree is read back from the pack just written).
    fn look_up_at_head(
        &mut self,
        repo: &Repository,
        head: Oid,
        jobs: &mut [&mut Job],
    ) -> Result<(), Error> {
        let root = repo.find_commit(head)?.tree()?;
        for job in jobs.iter_mut() {
            let path = workspace_path(job.request.change.workspace());
            let blob = match (path.split_once('/'), &self.folder) {
                (Some((dir, file)), Some(edited))
                    if root.get_name(dir).map(|e| e.id()) == Some(edited.id()) =>
                {
                    edited.blob(file)
                }
                _ => self.blob_at_head(repo, head, &path)?,
            };
            job.at_head = Some(blob);
        }
        Ok(())
    }

    /// The blob at `path` in the commit `head`, through cached `workspaces/` entries.
    fn blob_at_head(
        &mut self,
        repo: &Repository,
        head: Oid,
        path: &str,
    ) -> Result<Option<Oid>, Error> {
        let root = repo.find_commit(head)?.tree()?;
        let Some((dir, file)) = path.split_once('/') else {
            return Ok(blob_at(&root, path));
        };
        let Some(id) = root.get_name(dir).map(|e| e.id()) else {
            return Ok(None);
        };
        if self.head_folder.as_ref().map(|(i, _)| *i) != Some(id) {
            let entries = tree::Entries::read(repo, id)?;
            self.head_folder = Some((id, entries));
        }
        Ok(self.head_folder.as_ref().and_then(|(_, f)| f.blob(file)))
    }

    /// Brings the validity state to `head`.
    fn advance(&mut self, repo: &Repository, head: Oid) -> Result<(), Error> {
        let state = match self.state.take().map(|s| s.advance(repo, head)) {
            Some(Ok(s)) => s,
            _ => HeadState::cold(repo, head, self.accounts.clone())?,
        };
        self.state = Some(state);
        Ok(())
    }

    /// Builds one job's commit on `tip` (`head` being the published head under the chain).
    /// `Ok(None)`: nothing to commit (the job's outcome is set).
    fn build(
        &mut self,
        repo: &Repository,
        head: Oid,
        tip: Oid,
        job: &mut Job,
        renderer: Option<&crate::render::Renderer<'_>>,
    ) -> Result<Option<Built>, Error> {
        let request = &job.request;
        let id = request.change.workspace();
        check_id(id)?;
        let path = workspace_path(id);
        let tip_commit = self.objects.find_commit(tip)?;
        let tip_tree = tip_commit.tree()?;
        let current = self.blob_at_tip(repo, &tip_tree, &path)?;

        if let Some(rev) = &request.if_match {
            // An entity tag is a commit id (the `ETag` of the read API, quoted or not); a
            // branch or other revision name would not pin the caller's view, so none is taken.
            let id = rev.trim().trim_matches('"');
            let hex = (4..=40).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
            let base = hex
                .then(|| {
                    repo.revparse_single(id)
                        .and_then(|o| o.peel_to_commit())
                        .ok()
                })
                .flatten()
                .ok_or_else(|| {
                    Error::PreconditionFailed(format!("If-Match: unknown commit {rev}"))
                })?;
            if blob_at(&base.tree()?, &path) != current {
                return Err(Error::PreconditionFailed(format!(
                    "{path} changed since {rev}; re-read it and retry"
                )));
            }
        }
        let head_blob = match job.at_head {
            _ if head == tip => current,
            Some(blob) => blob,
            None => self.blob_at_head(repo, head, &path)?,
        };
        match job.pinned {
            None => job.pinned = Some((head, head_blob)),
            Some((pinned, blob)) => {
                if pinned != head
                    && blob != head_blob
                    && request.change.replaces_file()
                    && request.if_match.is_none()
                {
                    return Err(Error::Conflict(format!(
                        "{path} was changed on the branch since this request was made; re-read it and retry"
                    )));
                }
            }
        }

        let state = self
            .state
            .as_ref()
            .ok_or_else(|| Error::Repository("no head state".into()))?;
        let checker = state.checker();
        // A draft prepared by the request's handler is reused when it was made from this very
        // file with this very base; otherwise the change is drafted and checked here.
        let prepared = job
            .prepared
            .take()
            .filter(|p| p.blob == current && Arc::ptr_eq(&p.checker, &checker));
        let (draft, own) = match prepared {
            Some(p) => (p.draft, p.own),
            None => {
                let old_text = match current {
                    Some(oid) => {
                        // Written earlier in this chain, or published.
                        let blob = match self.objects.find_blob(oid) {
                            Ok(blob) => blob,
                            Err(_) => repo.find_blob(oid)?,
                        };
                        Some(String::from_utf8_lossy(blob.content()).into_owned())
                    }
                    None => None,
                };
                let draft = Draft::of(&request.change, &path, old_text)?;
                let own = if draft.unchanged {
                    Vec::new()
                } else {
                    checker.check_file(&path, draft.text.as_deref().map(str::as_bytes), renderer)
                };
                (draft, own)
            }
        };
        for account in &draft.accounts {
            if !request.access.allows(account.as_deref()) {
                return Err(Error::Forbidden(format!(
                    "you may not write workspaces of account {}",
                    account.as_deref().unwrap_or("(none)")
                )));
            }
        }
        if draft.unchanged {
            job.outcome = Some(Ok(Written {
                commit: tip.to_string(),
                created: false,
                changed: false,
                branch: None,
                message: None,
            }));
            return Ok(None);
        }
        let errors = state.errors_given(&path, own.clone());
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        let Draft {
            text: new_text,
            created,
            account,
            ..
        } = draft;

        let message = format!(
            "workspaces/{id}: {}\n\nRequested through the cplane API by {} <{}>.\n",
            request.change.verb(created),
            request.user.name,
            request.user.email
        );
        let (commit, objects) = self.commit(
            repo,
            &tip_commit,
            &path,
            new_text.as_deref(),
            &request.user,
            &message,
        )?;
        job.outcome = Some(Ok(Written {
            commit: commit.to_string(),
            created,
            changed: true,
            branch: None,
            message: Some(message),
        }));
        let blob = new_text
            .as_ref()
            .and_then(|_| objects.first())
            .map(|o| o.id);
        Ok(Some(Built {
            commit,
            objects,
            path,
            account,
            blob,
            errors: own,
        }))
    }

    /// Writes the blob, trees and commit into [`Session::objects`], on `parent` (read from
    /// there); `repo` is the store's, for a `workspaces/` tree not cached.
    fn commit(
        &mut self,
        repo: &Repository,
        parent: &git2::Commit<'_>,
        path: &str,
        text: Option<&str>,
        user: &User,
        message: &str,
    ) -> Result<(Oid, Vec<Outgoing>), Error> {
        let mut objects = Vec::new();
        let root = parent.tree()?;
        let (dir, file) = path.split_once('/').expect("workspace paths have a folder");
        let current = root
            .get_name(dir)
            .filter(|e| e.kind() == Some(git2::ObjectType::Tree))
            .map(|e| e.id());
        let mut folder = match (self.folder.take(), current) {
            (Some(edited), Some(cur)) if edited.id() == cur => edited,
            (_, Some(cur)) => tree::Edited::read(repo, cur)?,
            (_, None) => tree::Edited::empty(),
        };
        let base = current.map(|id| (id, folder.content()));
        let blob = match text {
            Some(text) => {
                let blob = self.objects.blob(text.as_bytes())?;
                objects.push(Outgoing::whole(
                    blob,
                    git2::ObjectType::Blob,
                    text.as_bytes().to_vec(),
                ));
                Some(blob)
            }
            None => None,
        };
        folder.set_blob(file, blob)?;
        let (dir_tree, bytes) = folder.write()?;
        // The root is small: edited here too, so the new `workspaces/` tree need not be in the
        // object database (on a local remote it is only ever sent, as a delta).
        let mut root_tree = tree::Edited::read(self.objects, root.id())?;
        if bytes.is_empty() {
            root_tree.set_tree(dir, None)?;
        } else {
            // The new content is the old one with one entry set or removed: its delta is a
            // few dozen bytes (checked when the pack is indexed, before anything is published).
            let delta = base.map(|(id, old)| (id, Arc::new(git::delta(&old, &bytes))));
            if !self.fast_trees {
                self.objects.odb()?.write(git2::ObjectType::Tree, &bytes)?;
            }
            objects.push(Outgoing {
                id: dir_tree,
                kind: git2::ObjectType::Tree,
                data: bytes,
                delta,
            });
            root_tree.set_tree(dir, Some(dir_tree))?;
            self.folder = Some(folder);
        }
        let (_, root_bytes) = root_tree.write()?;
        let root_tree = self
            .objects
            .odb()?
            .write(git2::ObjectType::Tree, &root_bytes)?;
        objects.push(Outgoing {
            id: root_tree,
            kind: git2::ObjectType::Tree,
            data: root_bytes,
            delta: None,
        });
        let tree = self.objects.find_tree(root_tree)?;
        let clean = |s: &str| -> String {
            let s: String = s
                .chars()
                .filter(|c| !matches!(c, '<' | '>' | '\n' | '\r'))
                .collect();
            if s.trim().is_empty() {
                "unknown".into()
            } else {
                s.trim().to_owned()
            }
        };
        let author = Signature::now(&clean(&user.name), &clean(&user.email))?;
        let committer = Signature::now(&self.config.committer.0, &self.config.committer.1)?;
        let content =
            self.objects
                .commit_create_buffer(&author, &committer, message, &tree, &[parent])?;
        let commit = self
            .objects
            .odb()?
            .write(git2::ObjectType::Commit, &content)?;
        objects.push(Outgoing::whole(
            commit,
            git2::ObjectType::Commit,
            content.to_vec(),
        ));
        Ok((commit, objects))
    }

    /// `?mode=pr`: one commit on the head, published as `cplane/<user>/<change>`.
    fn pull_request(&mut self, store: &Store, job: &mut Job) -> Result<Written, Error> {
        let head = store
            .head(true)?
            .ok_or_else(|| Error::Conflict("the branch does not exist".into()))?;
        self.advance(store.repo(), head)?;
        self.stage(store.repo(), head)?;
        let checker = self.state.as_ref().map(HeadState::checker);
        let renderer = checker.as_deref().and_then(verify::Checker::renderer);
        let Some(built) = self.build(store.repo(), head, head, job, renderer.as_ref())? else {
            return job
                .outcome
                .take()
                .unwrap_or_else(|| Err(Error::Repository("no outcome".into())));
        };
        let created = matches!(job.outcome, Some(Ok(Written { created: true, .. })));
        let message = match &job.outcome {
            Some(Ok(w)) => w.message.clone(),
            _ => None,
        };
        let name = format!(
            "cplane/{}/{}",
            job.request.user.login(),
            job.request.change.slug(created)
        );
        let full = format!("refs/heads/{name}");
        for _ in 0..MAX_ATTEMPTS {
            let current = store.remote_ref(&full)?;
            let published = store.publish(&full, current, built.commit, &built.objects, &[])?;
            if let Published::Locked(lock) = published {
                return Err(locked(&lock));
            }
            if published == Published::Done {
                return Ok(Written {
                    commit: built.commit.to_string(),
                    created: true,
                    changed: true,
                    branch: Some(name),
                    message,
                });
            }
        }
        Err(Error::Conflict(format!(
            "branch {name} kept moving; try again"
        )))
    }
}

/// The blob at `path` in `tree`.
fn blob_at(tree: &git2::Tree<'_>, path: &str) -> Option<Oid> {
    tree.get_path(std::path::Path::new(path))
        .ok()
        .filter(|e| e.kind() == Some(git2::ObjectType::Blob))
        .map(|e| e.id())
}

/// Workspace ids become file names: only a DNS label may reach the tree.
fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(vec![Diagnostic::file(
            &workspace_path(id),
            format!("workspace id `{id}` is not a DNS label (lowercase letters, digits, `-`)"),
        )]))
    }
}

/// The answer when another process kept `lock` (a ref's lock file) through every try.
fn locked(lock: &str) -> Error {
    Error::Conflict(format!(
        "{lock} is held by another process; try again (if no git command is running there, it \
         was left behind and must be removed)"
    ))
}

fn fail_all_refs(jobs: &mut [&mut Job], e: Error) {
    for job in jobs.iter_mut() {
        job.answer(Err(e.clone()));
    }
}
