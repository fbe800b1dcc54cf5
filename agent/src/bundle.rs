//! A cluster's bundle as the server publishes it: canonical JSON Lines (one Kubernetes object
//! per line, in apply order) whose digest is `sha256:` + the SHA-256 of exactly those bytes.
//!
//! Guarantees: a [`Bundle`] only exists for a body whose digest was checked ([`Bundle::verify`])
//! and whose every line parsed as a Kubernetes object with `apiVersion`, `kind` and
//! `metadata.name`; otherwise nothing of it is used.

use std::fmt;

use kube::api::DynamicObject;
use sha2::{Digest as _, Sha256};

/// Errors of reading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body's SHA-256 is not the digest the server named.
    #[error("bundle digest mismatch: the server named {expected}, the body hashes to {actual}")]
    DigestMismatch {
        /// Digest from the `ETag`.
        expected: String,
        /// Digest of the received bytes.
        actual: String,
    },
    /// A line is not a Kubernetes object.
    #[error("bundle line {line}: {message}")]
    Object {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
        /// The JSON error, when the line is not JSON.
        #[source]
        source: Option<serde_json::Error>,
    },
}

/// `sha256:<hex>` of `body`.
pub fn digest_of(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// Identity of one object: what the inventory records and prune deletes.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectRef {
    /// `apiVersion` (`v1`, `apps/v1`, …).
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace (`None` for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectRef {
    /// The API group (`""` for the core group).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    /// The version part of `apiVersion`.
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or(self.api_version.as_str(), |(_, v)| v)
    }

    /// Same object regardless of the version it is served at (`group`, `kind`, namespace, name).
    pub fn same_object(&self, other: &Self) -> bool {
        self.group() == other.group()
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }

    /// The reference of a parsed object.
    pub fn of(obj: &DynamicObject) -> Option<Self> {
        let types = obj.types.as_ref()?;
        Some(Self {
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
            namespace: obj.metadata.namespace.clone(),
            name: obj.metadata.name.clone()?,
        })
    }

    /// Whether this is a Namespace or a CustomResourceDefinition (applied first).
    pub fn is_foundation(&self) -> bool {
        (self.kind == "Namespace" && self.group().is_empty()) || self.is_crd()
    }

    /// Whether this is a CustomResourceDefinition.
    pub fn is_crd(&self) -> bool {
        self.kind == "CustomResourceDefinition" && self.group() == "apiextensions.k8s.io"
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// `sha256:<hex>` of `body`.
    pub digest: String,
    /// The server's monotonic generation of this cluster's bundle.
    pub generation: i64,
    /// The canonical JSON Lines.
    pub body: Vec<u8>,
    /// The objects, in apply order.
    pub objects: Vec<DynamicObject>,
}

impl Bundle {
    /// Checks that `body` hashes to `expected` (an `ETag` value, quotes allowed) and parses it.
    pub fn verify(expected: &str, generation: i64, body: Vec<u8>) -> Result<Self, Error> {
        let expected = expected.trim().trim_start_matches("W/").trim_matches('"');
        let actual = digest_of(&body);
        if actual != expected {
            return Err(Error::DigestMismatch {
                expected: expected.to_owned(),
                actual,
            });
        }
        let objects = parse(&body)?;
        Ok(Self {
            digest: actual,
            generation,
            body,
            objects,
        })
    }

    /// Whether the bundle holds no object (never a reason to prune).
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// Parses canonical JSON Lines into objects; blank lines are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<DynamicObject>, Error> {
    let mut out = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let obj: DynamicObject = serde_json::from_slice(line).map_err(|e| Error::Object {
            line: i + 1,
            message: "not a JSON object".into(),
            source: Some(e),
        })?;
        let ok = obj
            .types
            .as_ref()
            .is_some_and(|t| !t.api_version.is_empty() && !t.kind.is_empty())
            && obj.metadata.name.as_deref().is_some_and(|n| !n.is_empty());
        if !ok {
            return Err(Error::Object {
                line: i + 1,
                message: "apiVersion, kind and metadata.name are required".into(),
                source: None,
            });
        }
        out.push(obj);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"bff\"}}\n{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"metadata\":{\"name\":\"bff\",\"namespace\":\"bff\"}}\n";

    #[test]
    fn a_matching_digest_is_accepted_with_quotes() {
        let d = digest_of(BODY.as_bytes());
        let b = Bundle::verify(&format!("\"{d}\""), 3, BODY.as_bytes().to_vec()).expect("valid");
        assert_eq!(b.objects.len(), 2);
        assert_eq!(b.generation, 3);
        let r = ObjectRef::of(&b.objects[1]).expect("ref");
        assert_eq!(r.group(), "apps");
        assert_eq!(r.version(), "v1");
        assert_eq!(r.to_string(), "Deployment bff/bff");
        assert!(ObjectRef::of(&b.objects[0]).expect("ref").is_foundation());
    }

    #[test]
    fn a_digest_mismatch_is_refused() {
        let d = digest_of(b"something else");
        let err = Bundle::verify(&d, 1, BODY.as_bytes().to_vec()).expect_err("mismatch");
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&d), "{err}");
    }

    #[test]
    fn a_line_without_a_name_is_refused_with_its_line() {
        let body = b"{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"a\"}}\n{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{}}\n";
        let err = Bundle::verify(&digest_of(body), 1, body.to_vec()).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "bundle line 2: apiVersion, kind and metadata.name are required"
        );
        let err = parse(b"{not json\n").expect_err("invalid");
        assert!(err
            .to_string()
            .starts_with("bundle line 1: not a JSON object"));
    }

    #[test]
    fn an_empty_bundle_is_valid_and_empty() {
        let b = Bundle::verify(&digest_of(b""), 1, Vec::new()).expect("valid");
        assert!(b.is_empty());
    }
}
