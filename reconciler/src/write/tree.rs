//! One git tree held as a sorted list of entries, edited in place and serialized straight to
//! the tree object format.
//!
//! Why not libgit2's tree builder: `workspaces/` of a 10,000-workspace repo is one tree of
//! 10,000 entries (400 KB). The builder parses it into a hash map and sorts it again for every
//! commit; here a change is a binary search, and the new content is the old one with one entry
//! spliced in, out or over ([`FlatTree::set_blob`]) — the SHA-1 of the 400 KB is the only cost
//! that remains (figures in the `api_commits` benchmark's docs). The format — `<octal mode> <name>\0<20-byte id>` per entry, entries
//! ordered by name with trees compared as if their name ended in `/` — is checked against the
//! builder's output by the tests below.

use std::cmp::Ordering;

use git2::{Oid, Tree};

/// Mode of a regular file.
pub const BLOB: i32 = 0o100644;

/// Mode of a subtree.
const TREE: i32 = 0o040000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: Vec<u8>,
    mode: i32,
    id: Oid,
}

impl Entry {
    /// The mode as a tree entry spells it (octal, no leading zero).
    fn mode_text(&self) -> std::borrow::Cow<'static, [u8]> {
        match self.mode {
            BLOB => b"100644".as_slice().into(),
            TREE => b"40000".as_slice().into(),
            mode => format!("{mode:o}").into_bytes().into(),
        }
    }

    /// `<mode> <name>\0<20-byte id>`.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.mode_text());
        out.push(b' ');
        out.extend_from_slice(&self.name);
        out.push(0);
        out.extend_from_slice(self.id.as_bytes());
    }

    /// How many bytes [`Entry::write`] writes.
    fn len(&self) -> usize {
        self.mode_text().len() + 1 + self.name.len() + 1 + 20
    }
}

/// Where an edit changed a tree's content: `removed` bytes at `offset` replaced by `inserted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    /// Where the change starts.
    pub offset: usize,
    /// How many bytes of the old content it replaces.
    pub removed: usize,
    /// What it puts there.
    pub inserted: Vec<u8>,
}

impl Splice {
    /// The new content, from the old one.
    pub fn apply(&self, old: &[u8]) -> Vec<u8> {
        let tail = &old[self.offset + self.removed..];
        let mut out = Vec::with_capacity(self.offset + self.inserted.len() + tail.len());
        out.extend_from_slice(&old[..self.offset]);
        out.extend_from_slice(&self.inserted);
        out.extend_from_slice(tail);
        out
    }
}

/// git's order of tree entries.
fn order(a_name: &[u8], a_mode: i32, b_name: &[u8], b_mode: i32) -> Ordering {
    let len = a_name.len().min(b_name.len());
    match a_name[..len].cmp(&b_name[..len]) {
        Ordering::Equal => {}
        other => return other,
    }
    let next = |name: &[u8], mode: i32| -> u8 {
        match name.get(len) {
            Some(b) => *b,
            None if mode == TREE => b'/',
            None => 0,
        }
    };
    next(a_name, a_mode).cmp(&next(b_name, b_mode))
}

/// A tree's entries in git order; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatTree {
    entries: Vec<Entry>,
}

impl FlatTree {
    /// The entries of `tree`.
    pub fn read(tree: &Tree<'_>) -> Self {
        let entries = tree
            .iter()
            .map(|e| Entry {
                name: e.name_bytes().to_vec(),
                mode: e.filemode(),
                id: e.id(),
            })
            .collect();
        Self { entries }
    }

    fn find(&self, name: &[u8], mode: i32) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|e| order(&e.name, e.mode, name, mode))
    }

    /// Adds or replaces the file `name` (a blob entry, mode `100644`).
    pub fn upsert_blob(&mut self, name: &str, id: Oid) {
        let name = name.as_bytes();
        // A subtree of the same name is replaced (names are unique in a tree).
        if let Ok(i) = self.find(name, TREE) {
            self.entries.remove(i);
        }
        match self.find(name, BLOB) {
            Ok(i) => {
                self.entries[i].id = id;
                self.entries[i].mode = BLOB;
            }
            Err(i) => self.entries.insert(
                i,
                Entry {
                    name: name.to_vec(),
                    mode: BLOB,
                    id,
                },
            ),
        }
    }

    /// The blob of the file `name`, if there is one.
    pub fn blob(&self, name: &str) -> Option<Oid> {
        self.find(name.as_bytes(), BLOB)
            .ok()
            .map(|i| self.entries[i].id)
    }

    /// Removes the file `name`; false when there was none.
    pub fn remove_blob(&mut self, name: &str) -> bool {
        match self.find(name.as_bytes(), BLOB) {
            Ok(i) => {
                self.entries.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Adds or replaces the subtree `name`.
    pub fn upsert_tree(&mut self, name: &str, id: Oid) {
        let name = name.as_bytes();
        if let Ok(i) = self.find(name, BLOB) {
            self.entries.remove(i);
        }
        match self.find(name, TREE) {
            Ok(i) => self.entries[i].id = id,
            Err(i) => self.entries.insert(
                i,
                Entry {
                    name: name.to_vec(),
                    mode: TREE,
                    id,
                },
            ),
        }
    }

    /// Removes the subtree `name`.
    pub fn remove_tree(&mut self, name: &str) {
        if let Ok(i) = self.find(name.as_bytes(), TREE) {
            self.entries.remove(i);
        }
    }

    /// Sets (`Some`) or removes (`None`) the file `name`, like [`FlatTree::upsert_blob`] and
    /// [`FlatTree::remove_blob`], and says where that changed the content [`FlatTree::to_bytes`]
    /// gives: one entry's bytes replaced, added or removed — so the new content is the old one
    /// spliced ([`Splice::apply`]) rather than 10,000 entries serialized again. `None` when the
    /// change is not one splice (a subtree of that name is replaced): serialize again.
    pub fn set_blob(&mut self, name: &str, id: Option<Oid>) -> Option<Splice> {
        let key = name.as_bytes();
        if let Some(id) = id.filter(|_| self.find(key, TREE).is_ok()) {
            self.upsert_blob(name, id);
            return None;
        }
        let (at, found) = match self.find(key, BLOB) {
            Ok(i) => (i, true),
            Err(i) => (i, false),
        };
        let offset = self.entries[..at].iter().map(Entry::len).sum();
        let removed = if found { self.entries[at].len() } else { 0 };
        let mut inserted = Vec::new();
        match id {
            Some(id) => {
                let entry = Entry {
                    name: key.to_vec(),
                    mode: BLOB,
                    id,
                };
                entry.write(&mut inserted);
                if found {
                    self.entries[at] = entry;
                } else {
                    self.entries.insert(at, entry);
                }
            }
            None if found => {
                self.entries.remove(at);
            }
            None => {}
        }
        Some(Splice {
            offset,
            removed,
            inserted,
        })
    }

    /// Whether the tree has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tree object's content.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 40);
        for e in &self.entries {
            e.write(&mut out);
        }
        out
    }

    /// The id of a tree object with this content, computed here (SHA-1 with the CPU's SHA
    /// instructions where there are some) rather than by libgit2's collision-detecting SHA-1,
    /// which is several times slower.
    pub fn id_of(content: &[u8]) -> Oid {
        use sha1::{Digest, Sha1};
        let mut hasher = Sha1::new();
        hasher.update(format!("tree {}\0", content.len()).as_bytes());
        hasher.update(content);
        Oid::from_bytes(&hasher.finalize()).expect("a SHA-1 is 20 bytes")
    }

    /// Stores the tree in `repo`'s object database; returns its id.
    pub fn write(&self, repo: &git2::Repository) -> Result<Oid, git2::Error> {
        repo.odb()?.write(git2::ObjectType::Tree, &self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_what_libgit2_writes() {
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
        let base = repo
            .find_tree(builder.write().expect("write"))
            .expect("tree");

        let mut flat = FlatTree::read(&base);
        assert_eq!(flat.write(&repo).expect("write"), base.id());

        // The same edits through libgit2's builder and through FlatTree give the same tree.
        let mut builder = repo.treebuilder(Some(&base)).expect("builder");
        for (name, text) in [
            ("globex.yaml", "g"),
            ("foo.baq", "q"),
            ("acme.yaml", "a2"),
            ("c", "c"),
        ] {
            let id = blob(text);
            builder.insert(name, id, BLOB).expect("insert");
            flat.upsert_blob(name, id);
        }
        builder.remove("ab").expect("remove");
        assert!(flat.remove_blob("ab"));
        assert!(!flat.remove_blob("nope.yaml"));
        assert_eq!(flat.blob("ab"), None);
        assert_eq!(flat.blob("foo"), None, "a tree is not a blob");
        assert!(flat.blob("globex.yaml").is_some());
        assert!(!flat.remove_blob("foo"), "a tree is not a blob");
        assert_eq!(
            flat.write(&repo).expect("write"),
            builder.write().expect("write")
        );
        assert!(!flat.is_empty());
        let bytes = flat.to_bytes();
        assert_eq!(
            FlatTree::id_of(&bytes),
            git2::Oid::hash_object(git2::ObjectType::Tree, &bytes).expect("hash")
        );
        // Splices give what serializing again gives.
        let mut spliced = flat.clone();
        let mut content = spliced.to_bytes();
        let edits: [(&str, Option<Oid>); 7] = [
            ("acme.yaml", Some(blob("a3"))),   // replaced
            ("aaa.yaml", Some(blob("first"))), // added first
            ("zzz.yaml", Some(blob("last"))),  // added last
            ("foo.baq", None),                 // removed
            ("nope.yaml", None),               // absent: nothing changes
            ("zzz.yaml", None),                // the last removed
            ("foo", Some(blob("f"))),          // a subtree replaced: no splice
        ];
        for (name, id) in edits {
            match spliced.set_blob(name, id) {
                Some(splice) => content = splice.apply(&content),
                None => {
                    assert_eq!(name, "foo");
                    content = spliced.to_bytes();
                }
            }
            assert_eq!(content, spliced.to_bytes(), "after {name}");
        }
        assert_eq!(spliced.blob("foo"), Some(blob("f")));
        assert_eq!(spliced.blob("acme.yaml"), Some(blob("a3")));
        assert_eq!(spliced.blob("foo.baq"), None);
        // Subtrees: replacing and removing one gives what the builder gives.
        let mut root = FlatTree::read(&base);
        let mut builder = repo.treebuilder(Some(&base)).expect("builder");
        root.upsert_tree("b", base.id());
        builder.insert("b", base.id(), TREE).expect("insert");
        root.remove_tree("foo");
        builder.remove("foo").expect("remove");
        root.upsert_tree("new", sub);
        builder.insert("new", sub, TREE).expect("insert");
        assert_eq!(
            root.write(&repo).expect("write"),
            builder.write().expect("write")
        );
    }
}
