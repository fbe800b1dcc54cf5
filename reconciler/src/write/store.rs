//! Where the writer builds commits and how it moves the remote branch: always by
//! compare-and-swap, so an update is accepted only while the branch is still at the commit the
//! change was built on.
//!
//! - **Local remotes** (a path or `file://` URL). libgit2's own push to such a remote
//!   (`transports/local.c`, `local_push_update_remote_ref`) *force*-updates the ref to the new
//!   value without comparing it with the value it read when it connected, so a push racing
//!   another writer could silently drop that writer's commit. Here the objects are written
//!   straight into the remote's object database as one pack, and the branch is moved with
//!   `git_reference_create_matching` (git2's [`Repository::reference_matching`]), which compares
//!   the current value with the expected parent *while holding the ref's lock file* — the same
//!   `.lock` protocol `git receive-pack` uses, so an external `git push` and the writer exclude
//!   each other (finding the lock taken, the writer waits a moment and tries again; a lock
//!   that stays is reported, and left alone). When the remote is a working copy with the
//!   written branch checked out (`cplane up`'s state repo), the files a write changes are
//!   updated in its working tree and index too — like git's
//!   `receive.denyCurrentBranch=updateInstead`, but per file: a write is refused (`409`) when
//!   such a file has uncommitted changes (staged or not), and other files are never touched.
//! - **Other URLs** (git://, and https/ssh when git2 is built with them): commits are built in
//!   the bare mirror and pushed with libgit2. The git protocol sends the old value of the ref
//!   with each update and `receive-pack` refuses it when the ref moved; the advertised value is
//!   checked against the expected parent first, so the push is a compare-and-swap on exactly
//!   that parent.
//!
//! Objects are created in an in-memory object database (libgit2's mempack; alone for a local
//! remote, stacked on the mirror's for a network one), so a change that is refused or rebuilt
//! leaves nothing behind. They reach the
//! repository as one pack per publish, made and indexed by gix-pack, and installed only when
//! its objects are exactly the ones the commits were built with ([`pack`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use git2::{ErrorCode, ObjectType, Oid, Repository};

use super::pack;

/// An object a publish sends.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The object's id, computed from `kind` and `data`.
    pub id: Oid,
    /// Commit, tree or blob.
    pub kind: ObjectType,
    /// Its content.
    pub data: Arc<Vec<u8>>,
    /// A delta (see [`super::git::delta`]) of this base that rebuilds `data`: the object is stored
    /// so when the base is sent earlier in the same pack, else whole.
    pub delta: Option<(Oid, Arc<Vec<u8>>)>,
}

impl Outgoing {
    /// An object stored whole.
    pub fn whole(id: Oid, kind: ObjectType, data: Vec<u8>) -> Self {
        Self {
            id,
            kind,
            data: Arc::new(data),
            delta: None,
        }
    }
}

/// Outcome of publishing.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// The ref now points at the new commit.
    Done,
    /// The ref was not at the expected commit (someone else moved it): nothing changed.
    Moved,
    /// Another process (a `git push`, `git gc`) held the ref's lock file, this one, for all of
    /// [`LOCK_ATTEMPTS`]: nothing changed.
    Locked(String),
}

/// Tries at taking a lock file that another process holds; before the `n`th retry the writer
/// waits `n` times [`LOCK_WAIT`] (about 0.7 s in all: git commands hold a lock for
/// milliseconds).
pub const LOCK_ATTEMPTS: u32 = 12;
/// See [`LOCK_ATTEMPTS`].
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Calls `done` until it answers `true`, [`LOCK_ATTEMPTS`] times at most, waiting longer
/// before each retry; whether it did.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    for attempt in 0..LOCK_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(LOCK_WAIT * attempt);
        }
        if done() {
            return true;
        }
    }
    false
}

/// The remote's kind, decided once from its URL.
enum Kind {
    Local,
    Network { url: String },
}

/// The repository the writer works in and the remote it publishes to.
pub struct Store {
    kind: Kind,
    repo: Repository,
    branch: String,
    /// Network remotes: the last head fetched.
    fetched: std::cell::Cell<Option<Oid>>,
    /// A local working copy with the branch checked out: its working tree.
    worktree: Option<PathBuf>,
}

/// A file a publish changes, with its content at the new commit (`None`: removed).
pub type Change<'a> = (&'a str, Option<Oid>);

/// A path for local URLs (`/srv/state.git`, `file:///srv/state.git`), `None` for others.
pub fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    if url.contains("://") || (url.contains(':') && !url.starts_with('/')) {
        return None; // a URL or scp-like `host:path`
    }
    Some(PathBuf::from(url))
}

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// libgit2.
    #[error("opening {what}: {source}")]
    Git {
        /// What was opened.
        what: String,
        /// libgit2's reason.
        #[source]
        source: git2::Error,
    },
}

impl Store {
    /// Opens the remote (local) or the mirror (network), with `branch` as the written branch.
    pub fn open(url: &str, mirror: &Path, branch: &str) -> Result<Self, OpenError> {
        let git = |what: &str| {
            let what = what.to_owned();
            move |source| OpenError::Git { what, source }
        };
        let mut worktree = None;
        let (kind, repo) = match local_path(url) {
            Some(path) => {
                let repo = Repository::open(&path).map_err(git(&path.display().to_string()))?;
                if !repo.is_bare() {
                    let checked_out = repo
                        .head()
                        .ok()
                        .and_then(|h| h.shorthand().ok().map(str::to_owned));
                    if checked_out.as_deref() == Some(branch) {
                        worktree = repo.workdir().map(Path::to_path_buf);
                    }
                }
                (Kind::Local, repo)
            }
            None => {
                let repo = match Repository::open_bare(mirror) {
                    Ok(r) => r,
                    Err(_) => {
                        Repository::init_bare(mirror).map_err(git(&mirror.display().to_string()))?
                    }
                };
                (
                    Kind::Network {
                        url: url.to_owned(),
                    },
                    repo,
                )
            }
        };
        Ok(Self {
            kind,
            repo,
            branch: branch.to_owned(),
            fetched: std::cell::Cell::new(None),
            worktree,
        })
    }

    /// Whether the remote is a repository on this machine (written directly).
    pub fn is_local(&self) -> bool {
        matches!(self.kind, Kind::Local)
    }

    /// The repository published objects are read from, and packs are written to.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The written branch's full ref name.
    pub fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// Where a network remote's branch is kept in the mirror.
    fn tracking_ref(&self) -> String {
        format!("refs/cplane/write/{}", self.branch)
    }

    /// The branch's current commit (`None`: the branch does not exist). `refresh` fetches a
    /// network remote again; a local remote is always read afresh.
    pub fn head(&self, refresh: bool) -> Result<Option<Oid>, git2::Error> {
        match &self.kind {
            Kind::Local => ref_value(&self.repo, &self.branch_ref()),
            Kind::Network { url } => {
                if refresh || self.fetched.get().is_none() {
                    let mut remote = self.repo.remote_anonymous(url)?;
                    let mut opts = git2::FetchOptions::new();
                    opts.update_fetchhead(false);
                    opts.remote_callbacks(crate::remote::callbacks());
                    let spec = format!("+{}:{}", self.branch_ref(), self.tracking_ref());
                    remote.fetch(&[spec.as_str()], Some(&mut opts), None)?;
                    self.fetched
                        .set(ref_value(&self.repo, &self.tracking_ref())?);
                }
                Ok(self.fetched.get())
            }
        }
    }

    /// The current value of another ref of the remote (a pull-request branch).
    pub fn remote_ref(&self, name: &str) -> Result<Option<Oid>, git2::Error> {
        match &self.kind {
            Kind::Local => ref_value(&self.repo, name),
            Kind::Network { url } => advertised(&self.repo, url, name, git2::Direction::Fetch),
        }
    }

    /// Moves `name` from `expected` (`None`: absent) to `new`, sending `objects` (every object
    /// the new commits add; the rest is in the remote already); `files` are the files the new
    /// commits change, as they are at `new`.
    pub fn publish(
        &self,
        name: &str,
        expected: Option<Oid>,
        new: Oid,
        objects: &[Outgoing],
        files: &[Change<'_>],
    ) -> Result<Published, PublishError> {
        match &self.kind {
            Kind::Local => {
                // Cheap first checks spare writing a pack that could not be used.
                let lock = self.repo.path().join(format!("{name}.lock"));
                if !wait_for(|| !lock.exists()) {
                    return Ok(Published::Locked(lock.display().to_string()));
                }
                if ref_value(&self.repo, name)? != expected {
                    return Ok(Published::Moved);
                }
                let worktree = self
                    .worktree
                    .as_deref()
                    .filter(|_| name == self.branch_ref());
                if let (Some(dir), Some(old)) = (worktree, expected) {
                    self.check_clean(dir, old, files)?;
                }
                // Kept from `git gc` until the branch names its objects (or does not: then they
                // are garbage like any unreachable object).
                let _pack = write_pack(&self.repo, objects)?;
                let message = "cplane: API write";
                // Another process may take the lock meanwhile: only the update is tried again
                // (the pack is in place).
                let mut updated = Ok(());
                let unlocked = wait_for(|| {
                    updated = match expected {
                        Some(old) => self
                            .repo
                            .reference_matching(name, new, true, old, message)
                            .map(drop),
                        None => self.repo.reference(name, new, false, message).map(drop),
                    };
                    !matches!(&updated, Err(e) if e.code() == ErrorCode::Locked)
                });
                if !unlocked {
                    return Ok(Published::Locked(lock.display().to_string()));
                }
                match updated {
                    Ok(()) => {
                        // The commit has landed: a working tree that cannot follow is reported,
                        // not the write (its files then read as changed, and writes to them are
                        // refused until the user commits or discards them).
                        if let Some(dir) = worktree {
                            if let Err(e) = self.update_worktree(dir, files) {
                                tracing::error!(
                                    error = %e,
                                    dir = %dir.display(),
                                    "the branch moved; its working tree and index did not follow"
                                );
                            }
                        }
                        Ok(Published::Done)
                    }
                    Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists) => {
                        Ok(Published::Moved)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Kind::Network { url } => {
                let url = url.clone();
                self.push(&url, name, expected, new, objects)
            }
        }
    }

    /// Refuses to move the checked-out branch when a file it changes has uncommitted changes
    /// (in the index or the working tree) against `head`.
    fn check_clean(&self, dir: &Path, head: Oid, files: &[Change<'_>]) -> Result<(), PublishError> {
        let tree = self.repo.find_commit(head)?.tree()?;
        let mut index = self.repo.index()?;
        index.read(false)?; // libgit2 keeps the index it read last: what git did since counts

        for (path, _) in files {
            let committed = tree.get_path(Path::new(path)).ok().map(|e| e.id());
            let staged = index.get_path(Path::new(path), 0).map(|e| e.id);
            let file = dir.join(path);
            let on_disk = if file.exists() {
                Some(Oid::hash_file(git2::ObjectType::Blob, &file)?)
            } else {
                None
            };
            if staged != committed || on_disk != committed {
                return Err(PublishError::Dirty(format!(
                    "{path} has uncommitted changes in {}; commit or discard them, then retry",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Brings the changed files of the working tree and index to the new commit. The index is
    /// read again first, so what a git command changed in it since (a `git add`) is kept; when
    /// a git command holds its lock, the writer waits and reads it again. (libgit2 takes the
    /// lock only to write: a `git add` landing between that read and the write is still lost.)
    fn update_worktree(&self, dir: &Path, files: &[Change<'_>]) -> Result<(), git2::Error> {
        let io = |e: std::io::Error| git2::Error::from_str(&e.to_string());
        for (path, blob) in files {
            let file = dir.join(path);
            match blob {
                Some(id) => {
                    let blob = self.repo.find_blob(*id)?;
                    if let Some(parent) = file.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&file, blob.content()).map_err(io)?;
                }
                None if file.exists() => std::fs::remove_file(&file).map_err(io)?,
                None => {}
            }
        }
        let mut index = self.repo.index()?;
        let mut written = Ok(());
        wait_for(|| {
            written = (|| {
                index.read(false)?;
                for (path, blob) in files {
                    match blob {
                        Some(_) => index.add_path(Path::new(path))?,
                        None => index.remove_path(Path::new(path))?,
                    }
                }
                index.write()
            })();
            !matches!(&written, Err(e) if e.code() == ErrorCode::Locked)
        });
        written
    }

    fn push(
        &self,
        url: &str,
        name: &str,
        expected: Option<Oid>,
        new: Oid,
        objects: &[Outgoing],
    ) -> Result<Published, PublishError> {
        if advertised(&self.repo, url, name, git2::Direction::Push)? != expected {
            return Ok(Published::Moved);
        }
        let mut remote = self.repo.remote_anonymous(url)?;
        // libgit2 pushes from a ref: point a private one at the new commit.
        let local = format!("refs/cplane/push/{}", name.trim_start_matches("refs/"));
        self.repo
            .reference(&local, new, true, "cplane: API write")?;
        let rejected = std::cell::RefCell::new(None::<String>);
        let pushed = {
            let mut callbacks = crate::remote::callbacks();
            callbacks.push_update_reference(|_, status| {
                if let Some(msg) = status {
                    *rejected.borrow_mut() = Some(msg.to_owned());
                }
                Ok(())
            });
            let mut opts = git2::PushOptions::new();
            opts.remote_callbacks(callbacks);
            // The followed branch only moves forward. A pull-request branch is rebuilt on the
            // head when the same change is written again, which replaces its old commit: forced,
            // or libgit2 refuses the non-fast-forward. Either way receive-pack checks the
            // advertised old value, so this stays a compare-and-swap.
            let force = if name == self.branch_ref() { "" } else { "+" };
            remote.push(&[format!("{force}{local}:{name}")], Some(&mut opts))
        };
        let _ = self
            .repo
            .find_reference(&local)
            .and_then(|mut r| r.delete());
        // The push connects again: when the ref moved in between, libgit2 refuses the
        // non-fast-forward or receive-pack the stale old value. Either way nothing changed.
        if let Err(e) = pushed {
            return match advertised(&self.repo, url, name, git2::Direction::Push) {
                Ok(now) if now != expected => Ok(Published::Moved),
                _ => Err(e.into()),
            };
        }
        if rejected.into_inner().is_some() {
            return Ok(Published::Moved);
        }
        // Keep the objects in the mirror: the in-memory ones are dropped after each batch.
        drop(write_pack(&self.repo, objects)?);
        if name == self.branch_ref() {
            self.repo
                .reference(&self.tracking_ref(), new, true, "cplane: API write")?;
            self.fetched.set(Some(new));
        }
        Ok(Published::Done)
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// libgit2.
    #[error(transparent)]
    Git(#[from] git2::Error),
    /// The checked-out working copy has uncommitted changes to a file the publish changes.
    #[error("{0}")]
    Dirty(String),
    /// The pack made for the publish was not installed (it failed its check: nothing is
    /// published).
    #[error(transparent)]
    Pack(#[from] pack::Error),
}

/// The commit a ref points at (`None`: no such ref).
fn ref_value(repo: &Repository, name: &str) -> Result<Option<Oid>, git2::Error> {
    match repo.find_reference(name) {
        Ok(r) => Ok(Some(r.peel_to_commit()?.id())),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The value `url` advertises for the ref `name`, asking with the environment's credentials.
fn advertised(
    repo: &Repository,
    url: &str,
    name: &str,
    direction: git2::Direction,
) -> Result<Option<Oid>, git2::Error> {
    let mut remote = repo.remote_anonymous(url)?;
    let connection = remote.connect_auth(direction, Some(crate::remote::callbacks()), None)?;
    let found = connection
        .list()?
        .iter()
        .find(|h| h.name() == name)
        .map(|h| h.oid());
    Ok(found)
}

/// Writes `objects` into the repository's object database as one pack and its index, made,
/// indexed and checked by gix-pack (see [`pack`]); the pack is kept from `git gc` until the
/// returned value is dropped. On-disk packs are never thin: a delta whose base is not sent
/// before it is sent whole.
fn write_pack(
    repo: &Repository,
    objects: &[Outgoing],
) -> Result<Option<pack::Installed>, PublishError> {
    let mut sent = HashSet::with_capacity(objects.len());
    let mut items = Vec::with_capacity(objects.len());
    for o in objects {
        let delta = o
            .delta
            .as_ref()
            .filter(|(base, _)| sent.contains(base))
            .map(|(base, delta)| (*base, delta.as_slice()));
        if sent.insert(o.id) {
            items.push(pack::Object {
                id: o.id,
                kind: o.kind,
                data: &o.data,
                delta,
            });
        }
    }
    if items.is_empty() {
        return Ok(None);
    }
    Ok(Some(pack::install(
        &repo.commondir().join("objects"),
        &items,
    )?))
}
