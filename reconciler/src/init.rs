//! `cplane init DIR`: a new state repo from the built-in template, with a first commit.

use std::path::Path;

use include_dir::{include_dir, Dir};

/// The state repo template (`state-repo-template/`), embedded at build time.
pub static TEMPLATE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../state-repo-template");

/// The branch `cplane init` creates.
pub const BRANCH: &str = "main";

/// Errors of `cplane init`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target directory exists and is not empty: init never overwrites.
    #[error("{0} exists and is not empty; cplane init only writes into a new or empty directory")]
    NotEmpty(String),
    /// Writing the files failed.
    #[error("writing {path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Creating the repository or the commit failed.
    #[error("creating the git repository: {0}")]
    Git(#[from] git2::Error),
}

/// Writes the template into `dir` (created if missing, must be empty) and commits it on the
/// branch [`BRANCH`]. Returns the commit id.
pub fn init(dir: &Path) -> Result<String, Error> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(Error::NotEmpty(dir.display().to_string()));
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_dir(&TEMPLATE, dir).map_err(|(p, e)| io(&p)(e))?;

    // `main`, whatever libgit2's (or the user's `init.defaultBranch`) default is: `cplane serve`
    // follows the remote's default branch, and the README and examples say `main`.
    let repo =
        git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head(BRANCH))?;
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = repo
        .signature()
        .or_else(|_| git2::Signature::now("cplane", "cplane@localhost"))?;
    let commit = repo.commit(
        Some("HEAD"),
        &sig,
        &sig,
        "Initialize state repo from the cplane template",
        &tree,
        &[],
    )?;
    Ok(commit.to_string())
}

fn write_dir(dir: &Dir<'_>, root: &Path) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    for file in dir.files() {
        let path = root.join(file.path());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| (parent.to_owned(), e))?;
        }
        std::fs::write(&path, file.contents()).map_err(|e| (path.clone(), e))?;
    }
    for sub in dir.dirs() {
        write_dir(sub, root)?;
    }
    Ok(())
}
