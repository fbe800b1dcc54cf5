//! The git adapter (libgit2): reading a revision from the object database ([`source`]) and the
//! credentials for fetching and pushing remotes ([`remote`]). Commits on a user's behalf live in
//! `crate::write`.

pub mod remote;
pub mod source;
