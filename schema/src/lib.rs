//! `cplane-schema`: the typed model of the cplane state repo.
//!
//! - [`model`]: the four document kinds (Platform, Region, Workspace, Stack), strict serde types.
//! - [`load()`]: from the bytes of one revision's files to a [`Model`] and every [`Diagnostic`].
//! - [`shape`]: every shape error of a document serde rejected (the slow path).
//! - [`validate`]: ids, naming and cross-reference rules.
//! - [`suggest`]: "did you mean" for mistyped names.
//! - [`domain`]: the naming rules of reference doc 001.
//! - [`rollout`]: rollout policies and sync windows.
//! - [`jsonschema`]: JSON Schema per kind, for editors.
//!
//! Pure: no async, no I/O beyond the bytes it is given.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod diagnostic;
pub mod domain;
pub mod jsonschema;
pub mod load;
pub mod model;
pub mod notifications;
pub mod position;
pub mod rollout;
pub mod shape;
pub mod suggest;
pub mod validate;

pub use diagnostic::{Diagnostic, Pos};
pub use load::{load, EntityRef, FileRole, Loaded, Model, SourceFile};
