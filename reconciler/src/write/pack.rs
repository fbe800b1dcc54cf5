//! The pack that carries a chain of API commits into a repository, made and indexed by
//! gix-pack.
//!
//! The objects are framed into a pack by gix-pack's writer (whole, or as an offset delta of a
//! base earlier in the pack, [`super::git::delta`]); large whole objects are stored without
//! compression (zlib level 0: the one whole `workspaces/` tree of a pack is mostly SHA-1 ids,
//! which level 1 shrinks by a third at ten times the cost; figures in the `api_commits`
//! benchmark's docs). gix-pack then indexes the pack as `git index-pack` does and installs both
//! files under `objects/pack/`.
//!
//! **Guarantees**
//! - *Every object is what its id says*: the indexer inflates every object, applies every delta
//!   and hashes the result (collision-detecting SHA-1); the pack is kept only when the ids it
//!   found are exactly the ids the commits were built with, else its files are removed and the
//!   publish fails. A defect in the writer (or in memory) is refused, not published.
//! - *Readers never see half a pack*: the pack and index are written to temporary files and
//!   renamed into place, the index last (readers find packs through their index).
//! - *A concurrent `git gc` does not drop the objects before a ref names them*: the pack is
//!   installed with a `.keep` file, removed when the returned [`Installed`] is dropped (after
//!   the compare-and-swap of the branch).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use git2::{ObjectType, Oid};
use gix_pack::data::output;

/// One object of a pack.
pub struct Object<'a> {
    /// Its id: the hash of `kind` and `data`, computed by whoever made the object.
    pub id: Oid,
    /// Commit, tree or blob.
    pub kind: ObjectType,
    /// Its content (what `id` was computed from).
    pub data: &'a [u8],
    /// Stored as this delta ([`super::git::delta`]) of this base, which must come earlier in
    /// the pack; `None`: stored whole.
    pub delta: Option<(Oid, &'a [u8])>,
}

/// Whole objects at least this large are stored without compression (see the module docs).
const STORE_FROM: usize = 64 * 1024;

/// Why a pack was not installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// gix-pack could not make the pack.
    #[error("making a pack: {0}")]
    Build(#[source] gix_error::Error),
    /// gix-pack could not read back, index or install the pack (a corrupt pack lands here).
    #[error("indexing a pack: {0}")]
    Index(#[source] gix_error::Error),
    /// The pack does not hold exactly the objects it was made from.
    #[error("the pack to publish is corrupt: {0}")]
    Corrupt(String),
    /// A delta names a base that is not earlier in the pack.
    #[error("delta base {0} is not earlier in the pack")]
    MissingBase(Oid),
    /// Cleaning up after a refused pack.
    #[error("removing a refused pack: {0}")]
    Io(#[from] std::io::Error),
}

/// A pack installed by [`install`]; dropping it removes its `.keep` file (see the module docs).
#[derive(Debug)]
#[must_use = "the pack stays kept from `git gc` until this is dropped"]
pub struct Installed {
    keep: Option<PathBuf>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(keep) = self.keep.take() {
            if let Err(e) = std::fs::remove_file(&keep) {
                tracing::warn!(error = %e, path = %keep.display(), "removing a pack's .keep");
            }
        }
    }
}

fn gix_id(id: Oid) -> gix_hash::ObjectId {
    gix_hash::ObjectId::from_bytes_or_panic(id.as_bytes())
}

fn gix_kind(kind: ObjectType) -> gix_object::Kind {
    match kind {
        ObjectType::Commit => gix_object::Kind::Commit,
        ObjectType::Tree => gix_object::Kind::Tree,
        ObjectType::Tag => gix_object::Kind::Tag,
        ObjectType::Blob | ObjectType::Any => gix_object::Kind::Blob,
    }
}

fn deflate(data: &[u8], level: gix_zlib::Compression) -> Vec<u8> {
    use std::io::Write as _;
    let mut z = gix_zlib::stream::deflate::Write::new(Vec::with_capacity(data.len() / 2), level);
    z.write_all(data)
        .expect("compressing into memory cannot fail");
    z.flush().expect("compressing into memory cannot fail");
    z.into_inner()
}

/// The pack holding `objects`, in order (gix-pack's writer).
pub fn build(objects: &[Object<'_>]) -> Result<Vec<u8>, Error> {
    let mut index = std::collections::HashMap::with_capacity(objects.len());
    let mut entries = Vec::with_capacity(objects.len());
    for (i, object) in objects.iter().enumerate() {
        let entry = match object.delta {
            None => output::Entry {
                id: gix_id(object.id),
                kind: output::entry::Kind::Base(gix_kind(object.kind)),
                decompressed_size: object.data.len(),
                compressed_data: if object.data.len() >= STORE_FROM {
                    deflate(object.data, gix_zlib::Compression::NONE)
                } else {
                    deflate(object.data, gix_zlib::Compression::BEST_SPEED)
                },
            },
            Some((base, delta)) => output::Entry {
                id: gix_id(object.id),
                kind: output::entry::Kind::DeltaRef {
                    object_index: *index.get(&base).ok_or(Error::MissingBase(base))?,
                },
                decompressed_size: delta.len(),
                compressed_data: deflate(delta, gix_zlib::Compression::BEST_SPEED),
            },
        };
        index.insert(object.id, i);
        entries.push(entry);
    }
    let count = u32::try_from(entries.len())
        .map_err(|_| Error::Corrupt(format!("{} objects do not fit in one pack", entries.len())))?;
    let room = entries
        .iter()
        .map(|e| e.compressed_data.len() + 24)
        .sum::<usize>()
        + 32;
    let mut writer = output::bytes::FromEntriesIter::new(
        std::iter::once(Ok(entries)),
        Vec::with_capacity(room),
        count,
        gix_pack::data::Version::V2,
        gix_hash::Kind::Sha1,
    );
    for written in &mut writer {
        written.map_err(Error::Build)?;
    }
    Ok(writer.into_write())
}

/// Installs the pack of `objects` (see [`build`]) in the object directory `objects_dir`, indexed
/// and checked by gix-pack (see the module docs). Installing a pack that is there already
/// changes nothing.
pub fn install(objects_dir: &Path, objects: &[Object<'_>]) -> Result<Installed, Error> {
    install_pack(objects_dir, &build(objects)?, objects)
}

/// Installs `pack`, which must hold exactly `objects` (see [`install`]).
fn install_pack(
    objects_dir: &Path,
    pack: &[u8],
    objects: &[Object<'_>],
) -> Result<Installed, Error> {
    let dir = objects_dir.join("pack");
    let outcome = gix_pack::Bundle::write_to_directory(
        &mut &pack[..],
        Some(&dir),
        &mut gix_utils::progress::Discard,
        &AtomicBool::new(false),
        None::<gix_object::find::Never>,
        gix_hash::Kind::Sha1,
        gix_pack::bundle::write::Options {
            thread_limit: Some(1),
            ..Default::default()
        },
    )
    .map_err(Error::Index)?;
    let installed = Installed {
        keep: outcome.keep_path.clone(),
    };
    let check = || -> Result<(), String> {
        let path = outcome.index_path.as_ref().ok_or("no index was written")?;
        let index = gix_pack::index::File::at(path, gix_hash::Kind::Sha1)
            .map_err(|e| format!("reading its index: {e}"))?;
        if usize::try_from(index.num_objects()).ok() != Some(objects.len()) {
            return Err(format!(
                "it holds {} objects, {} expected",
                index.num_objects(),
                objects.len()
            ));
        }
        match objects
            .iter()
            .find(|o| index.lookup(gix_id(o.id)).is_none())
        {
            Some(missing) => Err(format!("{} is not what the pack holds", missing.id)),
            None => Ok(()),
        }
    };
    if let Err(reason) = check() {
        // Only a pack written just now is removed (one named so already was there before).
        if installed.keep.is_some() {
            for path in [&outcome.index_path, &outcome.data_path]
                .into_iter()
                .flatten()
            {
                std::fs::remove_file(path)?;
            }
        }
        return Err(Error::Corrupt(reason));
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::git::{delta, splice_delta};

    /// A pack like the writer's: a whole `workspaces/`-sized object, deltas of it, small
    /// objects; with the contents its ids were computed from.
    struct Sample {
        trees: Vec<Vec<u8>>,
        deltas: Vec<Vec<u8>>,
        ids: Vec<Oid>,
    }

    impl Sample {
        fn new() -> Self {
            // Over STORE_FROM: stored whole without compression.
            let v0: Vec<u8> = (0..17_500u32).flat_map(|i| i.to_le_bytes()).collect();
            let mut v1 = v0.clone();
            v1[1000] = 9;
            let mut v2 = v1.clone();
            v2.extend_from_slice(b"tail");
            let deltas = vec![
                delta(&v0, &v1),
                splice_delta(v1.len(), v1.len(), 0, b"tail"),
            ];
            let trees = vec![v0, v1, v2];
            let mut ids: Vec<Oid> = trees
                .iter()
                .map(|t| Oid::hash_object(ObjectType::Blob, t).expect("hash"))
                .collect();
            ids.push(Oid::hash_object(ObjectType::Blob, b"small").expect("hash"));
            ids.push(Oid::hash_object(ObjectType::Blob, b"").expect("hash"));
            Self { trees, deltas, ids }
        }

        fn objects(&self) -> Vec<Object<'_>> {
            let blob = |id, data| Object {
                id,
                kind: ObjectType::Blob,
                data,
                delta: None,
            };
            vec![
                blob(self.ids[0], &self.trees[0]),
                Object {
                    delta: Some((self.ids[0], &self.deltas[0])),
                    ..blob(self.ids[1], &self.trees[1])
                },
                Object {
                    delta: Some((self.ids[1], &self.deltas[1])),
                    ..blob(self.ids[2], &self.trees[2])
                },
                blob(self.ids[3], b"small"),
                blob(self.ids[4], b""),
            ]
        }
    }

    fn git(dir: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs")
    }

    fn packs(repo: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(repo.join("objects/pack"))
            .expect("pack dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn git_and_libgit2_read_an_installed_pack() {
        let sample = Sample::new();
        let objects = sample.objects();
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(git(dir.path(), &["init", "-q", "--bare", "repo"])
            .status
            .success());
        let repo_dir = dir.path().join("repo");
        let installed = install(&repo_dir.join("objects"), &objects).expect("installed");
        let names = packs(&repo_dir);
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[1].ends_with(".keep"), "kept until dropped: {names:?}");
        drop(installed);
        assert_eq!(packs(&repo_dir).len(), 2);
        // git checks it whole (hashing every object again), and the deltas are deltas.
        let pack = packs(&repo_dir)[0].clone();
        let verify = git(
            &repo_dir,
            &["verify-pack", "-v", &format!("objects/pack/{pack}")],
        );
        assert!(verify.status.success(), "{verify:?}");
        let listing = String::from_utf8_lossy(&verify.stdout);
        assert!(listing.contains("chain length = 2: 1 object"), "{listing}");
        let fsck = git(&repo_dir, &["fsck", "--strict", "--no-dangling"]);
        assert!(fsck.status.success(), "{fsck:?}");
        // libgit2 reads every object back.
        let repo = git2::Repository::open_bare(&repo_dir).expect("repo");
        let odb = repo.odb().expect("odb");
        for o in &objects {
            assert_eq!(odb.read(o.id).expect("object in the pack").data(), o.data);
        }
        // The same pack again changes nothing.
        drop(install(&repo_dir.join("objects"), &objects).expect("again"));
        assert_eq!(packs(&repo_dir).len(), 2);
    }

    #[test]
    fn a_pack_that_is_not_what_its_ids_say_is_refused_and_removed() {
        let sample = Sample::new();
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(git(dir.path(), &["init", "-q", "--bare", "repo"])
            .status
            .success());
        let objects_dir = dir.path().join("repo/objects");
        // A content other than the one its id was computed from (a whole object, a delta).
        let mut other = sample.trees[0].clone();
        other[5] ^= 1;
        let mut lying = sample.objects();
        lying[0].data = &other;
        let e = install(&objects_dir, &lying).expect_err("refused");
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
        let bad_delta = delta(&sample.trees[0], &other);
        let mut lying = sample.objects();
        lying[1].delta = Some((sample.ids[0], &bad_delta));
        assert!(matches!(
            install(&objects_dir, &lying),
            Err(Error::Corrupt(_))
        ));
        // A delta that does not fit its base is refused by the indexer.
        let mut short = sample.deltas[0].clone();
        short.truncate(short.len() - 3);
        let mut lying = sample.objects();
        lying[1].delta = Some((sample.ids[0], &short));
        assert!(install(&objects_dir, &lying).is_err());
        // A delta whose base is not earlier in the pack is never made.
        let thin = &sample.objects()[1..];
        assert!(matches!(
            install(&objects_dir, thin),
            Err(Error::MissingBase(_))
        ));
        assert!(
            packs(&dir.path().join("repo")).is_empty(),
            "nothing left behind"
        );
    }

    #[test]
    fn every_corrupted_byte_is_refused_or_harmless() {
        // A defect in the pack writer (simulated: a byte flipped, the trailer made to match
        // again) is refused, unless the pack still holds exactly the same objects (a flip in
        // the padding bits of a deflate stream) — which libgit2 then reads back.
        let sample = Sample::new();
        let objects = sample.objects();
        let pack = build(&objects).expect("pack");
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(git(dir.path(), &["init", "-q", "--bare", "repo"])
            .status
            .success());
        let repo_dir = dir.path().join("repo");
        let body = pack.len() - 20;
        // Every byte outside the large whole object's stored data, every 251st inside it (the
        // data starts after the pack header, 3 bytes of object header, 2 of zlib header and 5
        // of stored-block header).
        let stored = 22..22 + sample.trees[0].len();
        let flips: Vec<usize> = (0..body)
            .filter(|at| !stored.contains(at) || at % 251 == 0)
            .collect();
        assert!(flips.len() > 300, "{}", flips.len());
        let mut harmless = 0;
        for &at in &flips {
            let mut bad = pack[..body].to_vec();
            bad[at] ^= 0x10;
            let mut hasher = gix_hash::hasher(gix_hash::Kind::Sha1);
            hasher.update(&bad);
            let sum = hasher.try_finalize().expect("no collision");
            bad.extend_from_slice(sum.as_slice());
            if let Ok(installed) = install_pack(&repo_dir.join("objects"), &bad, &objects) {
                harmless += 1;
                drop(installed);
                let repo = git2::Repository::open_bare(&repo_dir).expect("repo");
                let odb = repo.odb().expect("odb");
                for o in &objects {
                    assert_eq!(odb.read(o.id).expect("object").data(), o.data, "byte {at}");
                }
            }
        }
        assert!(
            harmless * 20 < flips.len(),
            "{harmless} of {} flips were let through",
            flips.len()
        );
        let fsck = git(&repo_dir, &["fsck", "--strict", "--no-dangling"]);
        assert!(fsck.status.success(), "{fsck:?}");
    }
}
