//! The git formats the writer still writes by hand, and why: only what gix (gitoxide) does not
//! do. Everything else that `write/` writes goes through a library: gix-object edits and
//! encodes trees, gix-pack frames, compresses (zlib-rs) and indexes packs, libgit2 writes blobs
//! and commits and moves refs.
//!
//! **Deltas** ([`delta`], [`splice_delta`]). gix-pack reads and applies deltas but makes none:
//! its pack writer copies the deltas of existing packs or stores objects whole. Each API commit
//! has a new `workspaces/` tree (10,000 entries, 400 KB) that differs from the previous one by
//! one entry. Stored whole, each commit would add 400 KB to the remote (zlib level 1: 270 KB and
//! 2.1 ms per commit); as a delta of the previous tree it adds a few dozen bytes. The delta here
//! is the simplest exact one: copy the common prefix, insert what differs, copy the common
//! suffix (`Documentation/gitformat-pack.txt`: base size, result size, copy and insert
//! instructions).
//!
//! Nothing is trusted from this code: gix-pack's indexer applies every delta and hashes the
//! result before anything is published, and a pack whose objects are not exactly the ones the
//! commits name is refused (see [`super::pack`]).

mod delta;

pub use delta::{delta, splice_delta};
