//! State repos for the unit tests, made from files (this crate reads no git repository).

use std::path::Path;

use cplane_schema::{FileRole, SourceFile};

/// The files of `state-repo-template/` that cplane reads, as `cplane init` commits them.
pub fn template_files() -> Vec<SourceFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../state-repo-template");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("template directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .expect("under the root")
                .to_str()
                .expect("utf-8 path")
                .to_owned();
            if FileRole::of(&rel) != FileRole::Ignored {
                files.push(SourceFile {
                    path: rel,
                    bytes: std::fs::read(&path).expect("read"),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The template's platform, region `sgp-1` and stacks, with `workspaces` tenant workspaces
/// `ws00000`, `ws00001`, … that differ only in their names and accounts: the same stacks with
/// the same values, in region `sgp-1`, environment `prod`.
pub fn synthetic_files(workspaces: usize) -> Vec<SourceFile> {
    let mut files: Vec<SourceFile> = template_files()
        .into_iter()
        .filter(|f| !f.path.starts_with("workspaces/"))
        .collect();
    for n in 0..workspaces {
        let id = format!("ws{n:05}");
        let account = format!("{:012}", 100_000_000_000u64 + n as u64);
        let doc = format!(
            "apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: {id}\nspec:\n  region: sgp-1\n  environment: prod\n  account: customer-{n}\n  aws:\n    accountId: \"{account}\"\n    roleArn: arn:aws:iam::{account}:role/cogrion-provisioner\n    externalId: {id}-ext\n  deletionPolicy: Retain\n  stacks:\n    - name: bff\n      values:\n        replicas: 2\n    - name: trino\n      values:\n        workers: 3\n    - name: superset\n"
        );
        files.push(SourceFile {
            path: format!("workspaces/{id}.yaml"),
            bytes: doc.into_bytes(),
        });
    }
    files
}
