//! The git adapter: read one revision of the state repo straight from the object database.
//!
//! The working tree is never read, so a dirty checkout cannot leak into what is validated,
//! rendered or applied: what you name with `--rev` is exactly what you get, and the commit id is
//! reported with it.

use std::collections::BTreeSet;
use std::path::Path;

use cplane_schema::{EntityRef, FileRole, SourceFile};
use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

/// Errors reading the state repo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory is not a git repository.
    #[error("{path} is not a git repository: {}", source.message())]
    Open {
        /// The directory given.
        path: String,
        /// libgit2's reason.
        #[source]
        source: git2::Error,
    },
    /// The revision does not name a commit.
    #[error("revision `{rev}` does not name a commit ({})", rev_reason(source))]
    Rev {
        /// The revision given.
        rev: String,
        /// libgit2's reason.
        #[source]
        source: git2::Error,
    },
    /// Reading objects failed (a corrupt or incomplete repository).
    #[error("reading the repository: {0}")]
    Read(#[from] git2::Error),
}

/// Why a revision names no commit, in words (libgit2's message without its class and code).
fn rev_reason(e: &git2::Error) -> String {
    match e.code() {
        git2::ErrorCode::NotFound => "no branch, tag or commit of that name".into(),
        git2::ErrorCode::Ambiguous => "it is ambiguous: give more of the commit id".into(),
        git2::ErrorCode::InvalidSpec => "it is not a valid revision expression".into(),
        _ => e.message().to_owned(),
    }
}

/// The relevant files of one commit.
#[derive(Debug)]
pub struct Snapshot {
    /// Full commit id (hex).
    pub commit: String,
    /// Files cplane reads (see [`FileRole`]), in tree order.
    pub files: Vec<SourceFile>,
    /// The commit message (trailers such as `Cplane-Confirm-Deletions: N` are read from it).
    pub message: String,
}

/// Opens the repository at (or above) `path`.
pub fn open(path: &Path) -> Result<Repository, Error> {
    Repository::discover(path).map_err(|source| Error::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Resolves `rev` (`HEAD`, a branch, a tag, a commit id, `HEAD~2`, …) to a commit id.
pub fn resolve(repo: &Repository, rev: &str) -> Result<Oid, Error> {
    repo.revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|source| Error::Rev {
            rev: rev.to_owned(),
            source,
        })
}

/// Reads the files cplane cares about at `rev`, from the object database only.
pub fn read(repo: &Repository, rev: &str) -> Result<Snapshot, Error> {
    let commit = resolve(repo, rev)?;
    let commit_obj = repo.find_commit(commit)?;
    let message = commit_obj.message().unwrap_or("").to_owned();
    let tree = commit_obj.tree()?;
    let mut entries: Vec<(String, Oid)> = Vec::new();
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or("");
        match entry.kind() {
            Some(ObjectType::Tree) => {
                // Only descend into the folders cplane owns.
                if dir.is_empty() && !matches!(name, "regions" | "workspaces" | "stacks") {
                    TreeWalkResult::Skip
                } else {
                    TreeWalkResult::Ok
                }
            }
            Some(ObjectType::Blob) if entry.filemode() != 0o120000 => {
                let path = format!("{dir}{name}");
                if FileRole::of(&path) != FileRole::Ignored {
                    entries.push((path, entry.id()));
                }
                TreeWalkResult::Ok
            }
            _ => TreeWalkResult::Ok,
        }
    })?;
    let entries_len = entries.len();
    Ok(Snapshot {
        commit: commit.to_string(),
        files: read_blobs(repo, entries, blob_readers(entries_len))?,
        message,
    })
}

/// How many threads read `blobs` blobs: inflating ten thousand of them takes tens of
/// milliseconds, so a large repo is read on every core; a small one is not worth a thread.
fn blob_readers(blobs: usize) -> usize {
    const PER_THREAD: usize = 1_000;
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(blobs / PER_THREAD)
        .max(1)
}

/// Reads the blobs of `entries`, in order, on `threads` threads: the calling thread reads the
/// first part through `repo`, and each other part is read by a thread of its own through the
/// same repository opened again (a libgit2 repository is not to be shared between threads).
/// A part the reopened repository cannot read (objects only in an in-memory store added to
/// `repo`, say) is read again through `repo`.
fn read_blobs(
    repo: &Repository,
    entries: Vec<(String, Oid)>,
    threads: usize,
) -> Result<Vec<SourceFile>, Error> {
    let read = |odb: &git2::Odb<'_>, part: &[(String, Oid)]| {
        part.iter()
            .map(|(path, oid)| {
                let bytes = odb.read(*oid)?.data().to_vec();
                Ok(SourceFile {
                    path: path.clone(),
                    bytes,
                })
            })
            .collect::<Result<Vec<_>, git2::Error>>()
    };
    let size = entries.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<&[(String, Oid)]> = entries.chunks(size).collect();
    let odb = repo.odb()?;
    let dir = repo.path();
    let mut files = Vec::with_capacity(entries.len());
    std::thread::scope(|scope| -> Result<(), Error> {
        let others: Vec<_> = parts
            .iter()
            .skip(1)
            .map(|&part| {
                scope.spawn(move || {
                    let reopened = Repository::open(dir)?;
                    let odb = reopened.odb()?;
                    read(&odb, part)
                })
            })
            .collect();
        files.extend(read(&odb, parts.first().copied().unwrap_or_default())?);
        for (&part, reader) in parts.iter().skip(1).zip(others) {
            files.extend(match reader.join().expect("a blob reader panicked") {
                Ok(read_there) => read_there,
                Err(_) => read(&odb, part)?,
            });
        }
        Ok(())
    })?;
    Ok(files)
}

/// The entities whose files differ between two revisions (added, removed, modified or
/// renamed: both sides of a rename count). The incremental reconciler re-plans only these and
/// their dependents.
pub fn changed_entities(
    repo: &Repository,
    from: &str,
    to: &str,
) -> Result<BTreeSet<EntityRef>, Error> {
    let old = repo.find_commit(resolve(repo, from)?)?.tree()?;
    let new = repo.find_commit(resolve(repo, to)?)?.tree()?;
    let diff = repo.diff_tree_to_tree(Some(&old), Some(&new), None)?;
    let mut changed = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path().and_then(Path::to_str) {
                if let Some(entity) = FileRole::of(path).entity() {
                    changed.insert(entity);
                }
            }
        }
    }
    Ok(changed)
}

/// One commit that changed a file ([`file_history`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileChange {
    /// The commit id.
    pub commit: String,
    /// Its author's name.
    pub author: String,
    /// Its author's email.
    pub email: String,
    /// When it was authored (unix seconds).
    pub time: i64,
    /// The first line of its message.
    pub summary: String,
}

/// The newest `limit` commits reachable from `rev` that changed `path` (added, modified or
/// removed it), newest first by commit time, as `git log -- path` shows them: a commit whose
/// file equals its version in one of the parents is left out, so a merge that only brings in
/// a branch's change shows the branch's commit (and its author), not the merge. At most
/// `max_walk` commits are visited; the flag returned says whether the walk stopped there
/// before finding `limit` changes (the history shown may then be incomplete).
pub fn file_history(
    repo: &Repository,
    rev: &str,
    path: &str,
    limit: usize,
    max_walk: usize,
) -> Result<(Vec<FileChange>, bool), Error> {
    let start = resolve(repo, rev)?;
    let mut walk = repo.revwalk()?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)?;
    walk.push(start)?;
    let blob_at = |c: &git2::Commit| -> Result<Option<Oid>, Error> {
        match c.tree()?.get_path(Path::new(path)) {
            Ok(entry) => Ok(Some(entry.id())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for (visited, oid) in walk.enumerate() {
        if out.len() == limit {
            return Ok((out, false));
        }
        if visited == max_walk {
            return Ok((out, true));
        }
        let commit = repo.find_commit(oid?)?;
        let mine = blob_at(&commit)?;
        let mut same_as_a_parent = false;
        for parent in commit.parents() {
            if blob_at(&parent)? == mine {
                same_as_a_parent = true;
                break;
            }
        }
        if same_as_a_parent || (commit.parent_count() == 0 && mine.is_none()) {
            continue;
        }
        let author = commit.author();
        out.push(FileChange {
            commit: commit.id().to_string(),
            author: String::from_utf8_lossy(author.name_bytes()).into_owned(),
            email: String::from_utf8_lossy(author.email_bytes()).into_owned(),
            time: author.when().seconds(),
            summary: String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default())
                .into_owned(),
        });
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    pub(crate) fn commit_all(repo: &Repository, message: &str) -> Oid {
        let mut index = repo.index().expect("index");
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.update_all(["*"], None).expect("update removed files");
        index.write().expect("write index");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("tree");
        let sig = git2::Signature::now("Test", "test@example.com").expect("sig");
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .expect("commit")
    }

    #[test]
    fn reads_commit_not_working_tree_and_diffs_entities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        fs::create_dir_all(dir.path().join("workspaces")).expect("mkdir");
        fs::create_dir_all(dir.path().join("stacks/bff/templates")).expect("mkdir");
        fs::write(dir.path().join("cplane.yaml"), "a: 1\n").expect("write");
        fs::write(dir.path().join("README.md"), "hi\n").expect("write");
        fs::write(dir.path().join("workspaces/acme.yaml"), "v: 1\n").expect("write");
        fs::write(dir.path().join("stacks/bff/templates/x.yaml.j2"), "t\n").expect("write");
        let first = commit_all(&repo, "first");

        fs::write(dir.path().join("workspaces/acme.yaml"), "v: 2\n").expect("write");
        fs::write(dir.path().join("workspaces/globex.yaml"), "v: 1\n").expect("write");
        fs::write(dir.path().join("stacks/bff/templates/x.yaml.j2"), "t2\n").expect("write");
        fs::write(dir.path().join("README.md"), "changed\n").expect("write");
        let second = commit_all(&repo, "second");

        // Dirty the working tree: read() must not see it.
        fs::write(dir.path().join("workspaces/acme.yaml"), "v: dirty\n").expect("write");

        let snap = read(&repo, "HEAD").expect("read");
        assert_eq!(snap.commit, second.to_string());
        let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "cplane.yaml",
                "stacks/bff/templates/x.yaml.j2",
                "workspaces/acme.yaml",
                "workspaces/globex.yaml"
            ]
        );
        let acme = snap
            .files
            .iter()
            .find(|f| f.path == "workspaces/acme.yaml")
            .expect("acme");
        assert_eq!(acme.bytes, b"v: 2\n");

        let old = read(&repo, &first.to_string()).expect("read first");
        assert_eq!(old.files.len(), 3);

        let changed = changed_entities(&repo, &first.to_string(), "HEAD").expect("diff");
        assert_eq!(
            changed.into_iter().collect::<Vec<_>>(),
            [
                EntityRef::Workspace("acme".into()),
                EntityRef::Workspace("globex".into()),
                EntityRef::Stack("bff".into()),
            ]
        );
        assert!(changed_entities(&repo, "HEAD", "HEAD")
            .expect("diff")
            .is_empty());
    }

    #[test]
    fn blobs_read_on_several_threads_come_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        fs::create_dir_all(dir.path().join("workspaces")).expect("mkdir");
        for i in 0..25 {
            let text = format!("v: {i}\n").repeat(i + 1);
            fs::write(dir.path().join(format!("workspaces/w{i:02}.yaml")), text).expect("write");
        }
        let commit = commit_all(&repo, "many");
        let tree = repo
            .find_commit(commit)
            .expect("commit")
            .tree()
            .expect("tree");
        let folder = tree
            .get_name("workspaces")
            .expect("workspaces")
            .to_object(&repo)
            .expect("object")
            .peel_to_tree()
            .expect("tree");
        let entries: Vec<(String, Oid)> = folder
            .iter()
            .map(|e| (format!("workspaces/{}", e.name().expect("utf-8")), e.id()))
            .collect();
        let one = read_blobs(&repo, entries.clone(), 1).expect("one thread");
        assert_eq!(one.len(), 25);
        for threads in [2, 3, 4, 25] {
            let many = read_blobs(&repo, entries.clone(), threads).expect("threads");
            let pairs = |files: &[SourceFile]| -> Vec<(String, Vec<u8>)> {
                files
                    .iter()
                    .map(|f| (f.path.clone(), f.bytes.clone()))
                    .collect()
            };
            assert_eq!(pairs(&many), pairs(&one), "{threads} threads");
        }
        assert_eq!(one[3].bytes, b"v: 3\n".repeat(4));
        // A missing object is an error whichever thread meets it.
        let mut broken = entries;
        broken[20].1 = Oid::from_bytes(&[7; 20]).expect("oid");
        assert!(read_blobs(&repo, broken, 3).is_err());
    }

    #[test]
    fn blobs_only_in_memory_are_read_through_the_given_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let odb = repo.odb().expect("odb");
        let _mempack = odb.add_new_mempack_backend(1000).expect("mempack");
        let texts: Vec<Vec<u8>> = (0..10).map(|i| format!("v: {i}\n").into_bytes()).collect();
        let entries: Vec<(String, Oid)> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let oid = odb.write(ObjectType::Blob, text).expect("write");
                (format!("workspaces/w{i}.yaml"), oid)
            })
            .collect();
        // The objects are in memory only: the repository opened again does not have them.
        let reopened = Repository::open(repo.path()).expect("reopen");
        assert!(reopened.odb().expect("odb").read(entries[9].1).is_err());
        let files = read_blobs(&repo, entries, 4).expect("read");
        let bytes: Vec<Vec<u8>> = files.into_iter().map(|f| f.bytes).collect();
        assert_eq!(bytes, texts);
    }

    #[test]
    fn unknown_revision_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let err = read(&repo, "nope").expect_err("no such rev");
        assert!(
            err.to_string()
                .starts_with("revision `nope` does not name a commit"),
            "{err}"
        );
    }

    #[test]
    fn file_history_shows_the_commits_that_changed_the_file_with_their_authors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        fs::create_dir_all(dir.path().join("workspaces")).expect("mkdir");
        let path = "workspaces/acme.yaml";
        fs::write(dir.path().join(path), "v: 1\n").expect("write");
        let first = commit_all(&repo, "add acme");
        fs::write(dir.path().join("README.md"), "unrelated\n").expect("write");
        commit_all(&repo, "readme");
        // A branch changes acme, main changes something else, then they merge.
        let base = repo.head().expect("head").peel_to_commit().expect("commit");
        fs::write(dir.path().join(path), "v: 2\n").expect("write");
        let mut index = repo.index().expect("index");
        index.add_path(Path::new(path)).expect("add");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("tree");
        let ann = git2::Signature::now("Ann", "ann@example.com").expect("sig");
        let branch = repo
            .commit(None, &ann, &ann, "acme v2\n\nwhy", &tree, &[&base])
            .expect("branch commit");
        let merged = repo
            .find_commit(branch)
            .expect("branch")
            .tree()
            .expect("tree");
        let sig = git2::Signature::now("Merger", "m@example.com").expect("sig");
        let branch_commit = repo.find_commit(branch).expect("branch");
        let merge = repo
            .commit(
                Some("HEAD"),
                &sig,
                &sig,
                "merge",
                &merged,
                &[&base, &branch_commit],
            )
            .expect("merge");
        repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
            .expect("checkout");

        let (h, truncated) = file_history(&repo, "HEAD", path, 10, 100).expect("history");
        assert!(!truncated);
        let seen: Vec<(&str, &str, &str)> = h
            .iter()
            .map(|c| (c.commit.as_str(), c.email.as_str(), c.summary.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (branch.to_string().as_str(), "ann@example.com", "acme v2"),
                (first.to_string().as_str(), "test@example.com", "add acme"),
            ],
            "the merge {merge} and the readme commit are left out"
        );
        let (one, _) = file_history(&repo, "HEAD", path, 1, 100).expect("history");
        assert_eq!(one.len(), 1);
        let (none, truncated) = file_history(&repo, "HEAD", path, 10, 1).expect("history");
        assert!(none.is_empty() && truncated, "{none:?}");
        let (gone, _) = file_history(&repo, "HEAD", "workspaces/none.yaml", 10, 100).expect("h");
        assert!(gone.is_empty());
    }
}
