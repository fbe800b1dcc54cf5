//! The trees a write changes, decoded, edited and encoded by gix-object.
//!
//! `workspaces/` of a 10,000-workspace repo is one tree of 10,000 entries (400 KB). It is held
//! decoded in a gix-object tree editor between commits ([`Edited`]): a change is a binary
//! search and one entry set or removed, then the tree is encoded and hashed again (the cost of
//! a commit's tree, figures in the `api_commits` benchmark's docs). The previous content is
//! kept too, as the base of the next tree's delta. Handlers look files up in a decoded copy
//! ([`Entries`]).

use std::sync::Arc;

use git2::Oid;
use gix_object::tree::{Editor, EntryKind};
use gix_object::WriteTo as _;

/// The object database of trees edited here: none. Every tree the editor holds is given to
/// it whole, and it never looks one up.
static NO_ODB: gix_object::find::Never = gix_object::find::Never;

/// A libgit2 id as a gix one.
pub fn to_gix(id: Oid) -> gix_hash::ObjectId {
    gix_hash::ObjectId::from_bytes_or_panic(id.as_bytes())
}

/// A gix id as a libgit2 one.
pub fn from_gix(id: &gix_hash::oid) -> Oid {
    Oid::from_bytes(id.as_bytes()).expect("a SHA-1 is 20 bytes")
}

/// Why a tree could not be read or edited.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the tree object.
    #[error("reading tree {id}: {source}")]
    Read {
        /// The tree.
        id: Oid,
        /// libgit2's reason.
        #[source]
        source: git2::Error,
    },
    /// gix-object refused the tree or the edit.
    #[error("tree: {0}")]
    Gix(#[from] gix_error::Error),
    /// Encoding the tree.
    #[error("encoding a tree: {0}")]
    Encode(#[from] std::io::Error),
}

/// A tree's entries, for lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries(gix_object::Tree);

impl Entries {
    /// Decodes a tree object's content.
    pub fn decode(content: &[u8]) -> Result<Self, Error> {
        let tree = gix_object::TreeRef::from_bytes(content, gix_hash::Kind::Sha1)?;
        Ok(Self(tree.into_owned()))
    }

    /// The tree `id` of `repo`.
    pub fn read(repo: &git2::Repository, id: Oid) -> Result<Self, Error> {
        let read = |source| Error::Read { id, source };
        let odb = repo.odb().map_err(read)?;
        let object = odb.read(id).map_err(read)?;
        Self::decode(object.data())
    }

    /// The blob of the file `name`, if there is one.
    pub fn blob(&self, name: &str) -> Option<Oid> {
        let name = name.as_bytes();
        let at = self
            .0
            .entries
            .binary_search_by(|e| {
                gix_object::tree::name_order(&e.filename, e.mode.is_tree(), name, false)
            })
            .ok()?;
        Some(from_gix(&self.0.entries[at].oid))
    }
}

/// A tree edited in memory, with the id and content of its last version.
pub struct Edited {
    editor: Editor<'static>,
    id: Oid,
    content: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Edited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edited")
            .field("id", &self.id)
            .field("len", &self.content.len())
            .finish_non_exhaustive()
    }
}

impl Edited {
    /// The tree `id` with this content.
    pub fn new(id: Oid, content: Arc<Vec<u8>>) -> Result<Self, Error> {
        let Entries(tree) = Entries::decode(&content)?;
        Ok(Self {
            editor: Editor::new(tree, &NO_ODB, gix_hash::Kind::Sha1),
            id,
            content,
        })
    }

    /// An empty tree.
    pub fn empty() -> Self {
        let empty = gix_object::Tree::empty();
        let content = Vec::new();
        Self {
            id: id_of(&content),
            editor: Editor::new(empty, &NO_ODB, gix_hash::Kind::Sha1),
            content: Arc::new(content),
        }
    }

    /// The tree `id` of `repo`.
    pub fn read(repo: &git2::Repository, id: Oid) -> Result<Self, Error> {
        let read = |source| Error::Read { id, source };
        let odb = repo.odb().map_err(read)?;
        let object = odb.read(id).map_err(read)?;
        Self::new(id, Arc::new(object.data().to_vec()))
    }

    /// The id of the last version written (or given).
    pub fn id(&self) -> Oid {
        self.id
    }

    /// The content of the last version written (or given).
    pub fn content(&self) -> Arc<Vec<u8>> {
        self.content.clone()
    }

    /// The blob of the file `name` as edited, if there is one.
    pub fn blob(&self, name: &str) -> Option<Oid> {
        self.editor
            .get([name])
            .filter(|e| !e.mode.is_tree())
            .map(|e| from_gix(&e.oid))
    }

    /// Sets (`Some`: a regular file) or removes (`None`) the file `name`. A subtree of that
    /// name is replaced.
    pub fn set_blob(&mut self, name: &str, id: Option<Oid>) -> Result<(), Error> {
        match id {
            Some(id) => self.editor.upsert([name], EntryKind::Blob, to_gix(id))?,
            None => self.editor.remove_if_leaf([name])?,
        };
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) the subtree `name`.
    pub fn set_tree(&mut self, name: &str, id: Option<Oid>) -> Result<(), Error> {
        match id {
            Some(id) => self.editor.upsert([name], EntryKind::Tree, to_gix(id))?,
            None => self.editor.remove([name])?,
        };
        Ok(())
    }

    /// Encodes the tree as edited and hashes it: the new version's id and content (empty: no
    /// entries). It is not stored anywhere.
    pub fn write(&mut self) -> Result<(Oid, Arc<Vec<u8>>), Error> {
        let mut content = Vec::with_capacity(self.content.len() + 64);
        // Called for each changed tree, the root last: here the root is the only one.
        let id = self.editor.write(|tree| -> Result<_, Error> {
            content.clear();
            tree.write_to(&mut content)?;
            Ok(gix_object::compute_hash(
                gix_hash::Kind::Sha1,
                gix_object::Kind::Tree,
                &content,
            )?)
        })?;
        self.id = from_gix(&id);
        self.content = Arc::new(content);
        Ok((self.id, self.content.clone()))
    }
}

/// The id of a tree with this content.
fn id_of(content: &[u8]) -> Oid {
    let id = gix_object::compute_hash(gix_hash::Kind::Sha1, gix_object::Kind::Tree, content)
        .expect("no SHA-1 collision in a tree made here");
    from_gix(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOB: i32 = 0o100644;
    const TREE: i32 = 0o040000;

    #[test]
    fn edits_give_the_trees_libgit2_gives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init_bare(dir.path()).expect("repo");
        let blob = |s: &str| repo.blob(s.as_bytes()).expect("blob");
        let sub = {
            let mut b = repo.treebuilder(None).expect("builder");
            b.insert("x.yaml", blob("x"), BLOB).expect("insert");
            b.write().expect("write")
        };
        // Names that sort differently as blobs and trees: `foo` (tree) after `foo.bar`.
        let mut builder = repo.treebuilder(None).expect("builder");
        for name in ["foo.bar", "foo-bar", "acme.yaml", "README.md", "a", "ab"] {
            builder.insert(name, blob(name), BLOB).expect("insert");
        }
        builder.insert("foo", sub, TREE).expect("insert");
        builder.insert("b", sub, TREE).expect("insert");
        builder
            .insert("run.sh", blob("#!"), 0o100755)
            .expect("insert");
        let base = builder.write().expect("write");

        // Unedited, a tree encodes to what it was.
        let mut edited = Edited::read(&repo, base).expect("read");
        let odb = repo.odb().expect("odb");
        let stored = odb.read(base).expect("read");
        assert_eq!(edited.write().expect("write").1.as_slice(), stored.data());
        assert_eq!(edited.id(), base);

        // The same edits through libgit2's builder and through the editor give the same tree.
        let mut builder = repo
            .treebuilder(Some(&repo.find_tree(base).expect("tree")))
            .expect("builder");
        for (name, text) in [
            ("globex.yaml", "g"),
            ("foo.baq", "q"),
            ("acme.yaml", "a2"),
            ("c", "c"),
        ] {
            let id = blob(text);
            builder.insert(name, id, BLOB).expect("insert");
            edited.set_blob(name, Some(id)).expect("edit");
        }
        builder.remove("ab").expect("remove");
        edited.set_blob("ab", None).expect("edit");
        edited
            .set_blob("nope.yaml", None)
            .expect("nothing to remove");
        edited
            .set_blob("foo", None)
            .expect("a tree is not a blob: kept");
        assert_eq!(edited.blob("ab"), None);
        assert_eq!(edited.blob("foo"), None, "a tree is not a blob");
        assert_eq!(edited.blob("globex.yaml"), Some(blob("g")));
        let (id, content) = edited.write().expect("write");
        assert_eq!(id, builder.write().expect("write"));
        assert_eq!(
            id,
            Oid::hash_object(git2::ObjectType::Tree, &content).expect("hash")
        );
        // Lookups in a decoded copy see the same.
        let entries = Entries::decode(&content).expect("decode");
        for name in [
            "globex.yaml",
            "acme.yaml",
            "run.sh",
            "ab",
            "foo",
            "b",
            "nope",
        ] {
            assert_eq!(entries.blob(name), edited.blob(name), "{name}");
        }

        // Subtrees: replaced, removed, added; a blob over a subtree.
        edited.set_tree("b", Some(base)).expect("edit");
        builder.insert("b", base, TREE).expect("insert");
        edited.set_tree("foo", None).expect("edit");
        builder.remove("foo").expect("remove");
        edited.set_tree("new", Some(sub)).expect("edit");
        builder.insert("new", sub, TREE).expect("insert");
        assert_eq!(
            edited.write().expect("write").0,
            builder.write().expect("write")
        );
        edited.set_blob("new", Some(blob("n"))).expect("edit");
        builder.insert("new", blob("n"), BLOB).expect("insert");
        assert_eq!(
            edited.write().expect("write").0,
            builder.write().expect("write")
        );

        // From nothing, and back to nothing.
        let mut new = Edited::empty();
        assert_eq!(
            new.id(),
            Oid::hash_object(git2::ObjectType::Tree, b"").expect("hash")
        );
        new.set_blob("acme.yaml", Some(blob("a"))).expect("edit");
        let mut builder = repo.treebuilder(None).expect("builder");
        builder
            .insert("acme.yaml", blob("a"), BLOB)
            .expect("insert");
        assert_eq!(
            new.write().expect("write").0,
            builder.write().expect("write")
        );
        new.set_blob("acme.yaml", None).expect("edit");
        assert!(new.write().expect("write").1.is_empty());
    }
}
