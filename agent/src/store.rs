//! The last applied bundle on disk (`--state-dir`), so the agent can re-apply it on the drift
//! interval while the server is down, and after a restart.
//!
//! Guarantees: [`Store::save`] is atomic — the file is written to a temporary name in the same
//! directory, synced, and renamed over the old one (then the directory is synced), so a crash
//! leaves either the old bundle or the new one, never a mix. [`Store::load`] re-checks the
//! digest, so a corrupted file is reported, not applied.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::bundle::{self, Bundle};

/// Errors of the on-disk store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("state dir {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The stored bundle does not verify (corrupted or edited by hand).
    #[error("stored bundle {path}: {source}")]
    Corrupt {
        /// The file.
        path: String,
        /// Why it does not verify.
        #[source]
        source: bundle::Error,
    },
}

/// The file format: a small JSON header line, then the bundle's exact bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    digest: String,
    generation: i64,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// A store in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("bundle.jsonl")
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The last saved bundle, verified; `None` when nothing was saved yet.
    pub fn load(&self) -> Result<Option<Bundle>, Error> {
        let path = self.file();
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let corrupt = |source| Error::Corrupt {
            path: path.display().to_string(),
            source,
        };
        let (head, body) = match data.iter().position(|b| *b == b'\n') {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (&data[..], &[][..]),
        };
        let header: Header = serde_json::from_slice(head).map_err(|e| {
            corrupt(bundle::Error::Object {
                line: 1,
                message: "not a bundle header".into(),
                source: Some(e),
            })
        })?;
        Bundle::verify(&header.digest, header.generation, body.to_vec())
            .map(Some)
            .map_err(corrupt)
    }

    /// Saves `bundle` atomically.
    pub fn save(&self, bundle: &Bundle) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let path = self.file();
        let tmp = self.dir.join(".bundle.jsonl.tmp");
        let header = serde_json::to_vec(&Header {
            digest: bundle.digest.clone(),
            generation: bundle.generation,
        })
        .expect("a header always serialises");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(b"\n")?;
            f.write_all(&bundle.body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(Self::io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_a_corrupted_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("state"));
        assert!(store.load().expect("empty").is_none());
        let body =
            b"{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"a\"}}\n"
                .to_vec();
        let b = Bundle::verify(&bundle::digest_of(&body), 7, body).expect("valid");
        store.save(&b).expect("save");
        let back = store.load().expect("load").expect("saved");
        assert_eq!(
            (back.digest, back.generation, back.body),
            (b.digest, 7, b.body)
        );
        let file = dir.path().join("state/bundle.jsonl");
        let text = std::fs::read_to_string(&file).expect("read");
        std::fs::write(&file, text.replace("\"a\"", "\"b\"")).expect("write");
        let err = store.load().expect_err("corrupt");
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }
}
