//! A synthetic state repo for benchmarks and load tests: N workspaces spread over M live
//! regions, on the template's stack catalog, committed to a real git repository.
//!
//! Workspaces get a realistic mix of opt-in stacks: every one has `bff` (required); every 2nd
//! enables trino, every 3rd superset, every 5th airflow, every 7th jupyterhub. Environments
//! alternate: four in five are `prod`, the rest `dev`.

use std::fmt::Write as _;
use std::path::Path;

use crate::init::TEMPLATE;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Number of workspaces.
    pub workspaces: usize,
    /// Number of live regions (`r1-1` … or `sgp-1` first).
    pub regions: usize,
}

const CITIES: [&str; 8] = ["sgp", "fra", "iad", "syd", "nrt", "gru", "bom", "dub"];
const AWS_REGIONS: [&str; 8] = [
    "ap-southeast-1",
    "eu-central-1",
    "us-east-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "sa-east-1",
    "ap-south-1",
    "eu-west-1",
];

/// Region ids of a shape: `sgp-1`, `fra-1`, … then `sgp-2`, ….
pub fn region_ids(regions: usize) -> Vec<String> {
    (0..regions)
        .map(|i| format!("{}-{}", CITIES[i % CITIES.len()], i / CITIES.len() + 1))
        .collect()
}

/// Writes the repo into `dir` (which must not contain one) and commits it. Returns the commit.
pub fn generate(dir: &Path, shape: Shape) -> Result<String, Box<dyn std::error::Error>> {
    let w = |rel: &str, text: &str| -> std::io::Result<()> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)
    };
    let regions = region_ids(shape.regions.max(1));
    w(
        "cplane.yaml",
        &format!(
            "apiVersion: cplane/v1\nkind: Platform\nmetadata:\n  name: cogrion\nspec:\n  baseDomain: cogrion.com\n  primaryRegion: {}\n  bucketPrefix: cogrion\n  environments: [dev, prod]\n",
            regions[0]
        ),
    )?;
    for (i, id) in regions.iter().enumerate() {
        w(
            &format!("regions/{id}.yaml"),
            &format!(
                "apiVersion: cplane/v1\nkind: Region\nmetadata:\n  name: {id}\nspec:\n  displayName: Region {id}\n  awsRegion: {}\n  status: live\n  parentZone: {id}.cogrion.com\n  environments: [dev, prod]\n",
                AWS_REGIONS[i % AWS_REGIONS.len()]
            ),
        )?;
    }
    let stacks = TEMPLATE
        .get_dir("stacks")
        .ok_or("template has no stacks/")?;
    let mut dirs = vec![stacks];
    while let Some(d) = dirs.pop() {
        dirs.extend(d.dirs());
        for f in d.files() {
            let rel = f.path().to_str().ok_or("non UTF-8 template path")?;
            w(rel, f.contents_utf8().ok_or("non UTF-8 template")?)?;
        }
    }
    for n in 0..shape.workspaces {
        let id = format!("ws{n:05}");
        let region = &regions[n % regions.len()];
        let env = if n % 5 == 4 { "dev" } else { "prod" };
        let account = format!("{:012}", 100_000_000_000u64 + n as u64);
        let mut doc = format!(
            "apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: {id}\nspec:\n  region: {region}\n  environment: {env}\n  account: customer-{}\n  aws:\n    accountId: \"{account}\"\n    roleArn: arn:aws:iam::{account}:role/cogrion-provisioner\n    externalId: {id}-ext\n  deletionPolicy: Retain\n  stacks:\n    - name: bff\n      values:\n        replicas: {}\n",
            n / 3,
            2 + n % 3
        );
        if n % 2 == 0 {
            let _ = write!(
                doc,
                "    - name: trino\n      values:\n        workers: {}\n",
                1 + n % 8
            );
        }
        if n % 3 == 0 {
            doc.push_str("    - name: superset\n");
        }
        if n % 5 == 0 {
            let _ = write!(doc, "    - name: airflow\n      values:\n        dagsRepo: https://git.example.com/{id}/dags.git\n");
        }
        if n % 7 == 0 {
            doc.push_str("    - name: jupyterhub\n");
        }
        w(&format!("workspaces/{id}.yaml"), &doc)?;
    }

    let repo = git2::Repository::init(dir)?;
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("cplane synthetic", "synthetic@cplane.local")?;
    let message = format!(
        "Synthetic state repo: {} workspaces over {} regions",
        shape.workspaces,
        regions.len()
    );
    Ok(repo
        .commit(Some("HEAD"), &sig, &sig, &message, &tree, &[])?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_synthetic_repo_is_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate(
            dir.path(),
            Shape {
                workspaces: 40,
                regions: 3,
            },
        )
        .expect("generate");
        let repo = crate::source::open(dir.path()).expect("open");
        let checked = crate::check::check(crate::source::read(&repo, "HEAD").expect("read").files);
        let errors: Vec<String> = checked
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(checked.is_valid(), "{errors:#?}");
        // 3 regions × 2 environments + 40 workspaces.
        assert_eq!(checked.clusters.len(), 46);
    }
}
