//! A synthetic state repo for benchmarks and load tests: N workspaces spread over M live
//! regions, on the template's stack catalog, committed to a real git repository.
//!
//! [`generate`] gives workspaces a mix of opt-in stacks with small values ([`Tenants::Mixed`]);
//! [`generate_with`] can instead give them the shapes of the template's own workspaces (every
//! workspace a copy of `acme`, every tenant stack enabled, values distinct per workspace), which
//! exercise the renderer differently: see [`Tenants`].

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

/// The workspaces of a synthetic repo. Every shape spreads the workspaces over the regions in
/// turn and gives each a distinct id (`ws00000` …), AWS account id and external id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tenants {
    /// A mix of opt-in stacks with few values: every workspace has `bff` (required); every 2nd
    /// enables trino, every 3rd superset, every 5th airflow, every 7th jupyterhub. Four in five
    /// are `prod`, the rest `dev`. What [`generate`] writes.
    #[default]
    Mixed,
    /// Every workspace a copy of the template's `acme` workspace (`prod`; bff, trino and
    /// superset with acme's values), only its ids, region and AWS account changed.
    AcmeCopies,
    /// Every workspace enables every tenant stack of the template, each with the values the
    /// first of the template's workspaces that enables it gives (acme, then globex, initech).
    EveryStack,
    /// Like [`Tenants::AcmeCopies`], with values that differ from one workspace to the next
    /// (replicas, workers, memory, role, row limit, feature flag), so no two render the same objects.
    DistinctValues,
}

impl Tenants {
    /// Every shape, in the order benchmarks report them.
    pub const ALL: [Tenants; 4] = [
        Tenants::Mixed,
        Tenants::AcmeCopies,
        Tenants::EveryStack,
        Tenants::DistinctValues,
    ];

    /// Short name, as benchmarks print it.
    pub fn name(self) -> &'static str {
        match self {
            Tenants::Mixed => "mixed",
            Tenants::AcmeCopies => "acme-copies",
            Tenants::EveryStack => "every-stack",
            Tenants::DistinctValues => "distinct-values",
        }
    }
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
/// The workspaces are [`Tenants::Mixed`].
pub fn generate(dir: &Path, shape: Shape) -> Result<String, Box<dyn std::error::Error>> {
    generate_with(dir, shape, Tenants::Mixed)
}

/// [`generate`], with workspaces of the given shape.
pub fn generate_with(
    dir: &Path,
    shape: Shape,
    tenants: Tenants,
) -> Result<String, Box<dyn std::error::Error>> {
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
    let copies = match tenants {
        Tenants::Mixed => None,
        _ => Some(Copies::of_template(tenants)?),
    };
    for n in 0..shape.workspaces {
        let id = format!("ws{n:05}");
        let region = &regions[n % regions.len()];
        if let Some(copies) = &copies {
            let aws_region = AWS_REGIONS[(n % regions.len()) % AWS_REGIONS.len()];
            w(
                &format!("workspaces/{id}.yaml"),
                &copies.workspace(n, &id, region, aws_region),
            )?;
            continue;
        }
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
    let message = match tenants {
        Tenants::Mixed => format!(
            "Synthetic state repo: {} workspaces over {} regions",
            shape.workspaces,
            regions.len()
        ),
        _ => format!(
            "Synthetic state repo: {} {} workspaces over {} regions",
            shape.workspaces,
            tenants.name(),
            regions.len()
        ),
    };
    Ok(repo
        .commit(Some("HEAD"), &sig, &sig, &message, &tree, &[])?
        .to_string())
}

/// Workspace documents modelled on the template's `acme` workspace: its text up to its stacks,
/// with the ids swapped per workspace, then the stacks of the shape.
struct Copies {
    tenants: Tenants,
    /// `workspaces/acme.yaml` up to and including `  stacks:`.
    head: String,
    /// The stack entries every copy lists ([`Tenants::AcmeCopies`], [`Tenants::EveryStack`]).
    stacks: String,
}

/// What [`Copies`] replaces in acme's document, each of which must be there.
const ACME_NAME: &str = "\n  name: acme\n";
const ACME_REGION: &str = "\n  region: sgp-1\n";
const ACME_ACCOUNT_ID: &str = "111111111111";
const ACME_EXTERNAL_ID: &str = "acme-7f3c2a9e";

impl Copies {
    fn of_template(tenants: Tenants) -> Result<Copies, Box<dyn std::error::Error>> {
        let text = |rel: &str| -> Result<&'static str, String> {
            TEMPLATE
                .get_file(rel)
                .and_then(|f| f.contents_utf8())
                .ok_or_else(|| format!("template has no UTF-8 {rel}"))
        };
        let acme = text("workspaces/acme.yaml")?;
        let (head, _) = acme
            .split_once("\n  stacks:\n")
            .ok_or("template workspaces/acme.yaml lists no stacks")?;
        for needle in [ACME_NAME, ACME_REGION, ACME_ACCOUNT_ID, ACME_EXTERNAL_ID] {
            if !head.contains(needle) {
                return Err(format!(
                    "template workspaces/acme.yaml no longer has `{}`",
                    needle.trim()
                )
                .into());
            }
        }
        let stacks = match tenants {
            Tenants::AcmeCopies => stack_entries(acme)
                .into_iter()
                .map(|(_, entry)| entry)
                .collect(),
            Tenants::EveryStack => {
                let examples: Vec<(String, String)> = ["acme", "globex", "initech"]
                    .into_iter()
                    .map(|ws| text(&format!("workspaces/{ws}.yaml")))
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .flat_map(stack_entries)
                    .collect();
                let mut tenant_stacks: Vec<&str> = TEMPLATE
                    .get_dir("stacks")
                    .ok_or("template has no stacks/")?
                    .dirs()
                    .filter_map(|d| {
                        let name = d.path().file_name()?.to_str()?;
                        let spec = TEMPLATE.get_file(d.path().join("stack.yaml"))?;
                        spec.contents_utf8()?
                            .contains("\n  target: tenant\n")
                            .then_some(name)
                    })
                    .collect();
                tenant_stacks.sort_unstable();
                tenant_stacks
                    .into_iter()
                    .map(|stack| {
                        examples
                            .iter()
                            .find(|(name, _)| name == stack)
                            .map_or_else(|| format!("    - name: {stack}\n"), |(_, e)| e.clone())
                    })
                    .collect()
            }
            Tenants::Mixed | Tenants::DistinctValues => String::new(),
        };
        Ok(Copies {
            tenants,
            head: format!("{head}\n  stacks:\n"),
            stacks,
        })
    }

    /// The document of workspace `n`.
    fn workspace(&self, n: usize, id: &str, region: &str, aws_region: &str) -> String {
        let account = format!("{:012}", 100_000_000_000u64 + n as u64);
        let mut doc = self
            .head
            .replace(ACME_NAME, &format!("\n  name: {id}\n"))
            .replace(ACME_REGION, &format!("\n  region: {region}\n"))
            .replace(ACME_ACCOUNT_ID, &account)
            .replace(ACME_EXTERNAL_ID, &format!("{id}-7f3c2a9e"));
        if self.tenants != Tenants::DistinctValues {
            doc.push_str(&self.stacks);
            return doc;
        }
        let memory = 8 + n % 24;
        let _ = write!(
            doc,
            "    - name: bff
      values:
        replicas: {}
        resources:
          limits:
            memory: {}Mi
    - name: trino
      values:
        workers: {}
        serviceAccountRole: {id}-trino-glue
        workerResources:
          requests:
            memory: {memory}Gi
          limits:
            memory: {memory}Gi
        catalogs:
          lake:
            connector.name: iceberg
            iceberg.catalog.type: glue
            hive.metastore.glue.region: {aws_region}
    - name: superset
      values:
        replicas: {}
        rowLimit: {}
        featureFlags:
          ALERT_REPORTS: {}
",
            2 + n % 4,
            512 + n,
            1 + n % 16,
            1 + n % 3,
            10_000 + n,
            n.is_multiple_of(2)
        );
        doc
    }
}

/// The entries of a workspace document's `stacks:` list, by stack name, each with its lines.
fn stack_entries(doc: &str) -> Vec<(String, String)> {
    let Some((_, list)) = doc.split_once("\n  stacks:\n") else {
        return Vec::new();
    };
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in list.lines() {
        if let Some(name) = line.strip_prefix("    - name: ") {
            entries.push((name.trim().to_owned(), format!("{line}\n")));
        } else if let (true, Some((_, entry))) = (line.starts_with("      "), entries.last_mut()) {
            entry.push_str(line);
            entry.push('\n');
        } else if !line.trim().is_empty() {
            break;
        }
    }
    entries
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

    /// The checked model of a small repo of the given shape, which must be valid.
    fn checked(tenants: Tenants) -> crate::check::Checked {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_with(
            dir.path(),
            Shape {
                workspaces: 12,
                regions: 3,
            },
            tenants,
        )
        .expect("generate");
        let repo = crate::source::open(dir.path()).expect("open");
        let checked = crate::check::check(crate::source::read(&repo, "HEAD").expect("read").files);
        let errors: Vec<String> = checked
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(checked.is_valid(), "{}: {errors:#?}", tenants.name());
        assert_eq!(checked.clusters.len(), 3 * 2 + 12, "{}", tenants.name());
        checked
    }

    /// `(stack, values)` of each workspace, by workspace id.
    fn stacks(checked: &crate::check::Checked) -> Vec<(String, Vec<String>)> {
        let model = checked.model.as_ref().expect("model");
        model
            .workspaces
            .iter()
            .map(|(id, ws)| {
                let stacks = ws
                    .doc
                    .spec
                    .stacks
                    .iter()
                    .map(|s| format!("{} {:?}", s.name, s.values))
                    .collect();
                (id.clone(), stacks)
            })
            .collect()
    }

    #[test]
    fn acme_copies_list_acmes_stacks_and_values_with_their_own_ids() {
        let checked = checked(Tenants::AcmeCopies);
        let model = checked.model.as_ref().expect("model");
        let all = stacks(&checked);
        let names: Vec<&str> = model.workspaces["ws00001"]
            .doc
            .spec
            .stacks
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["bff", "trino", "superset"]);
        let trino = &model.workspaces["ws00001"].doc.spec.stacks[1];
        assert_eq!(trino.values["workers"], 4);
        assert!(all.iter().all(|(_, s)| *s == all[0].1), "{all:#?}");
        let mut accounts: Vec<&str> = model
            .workspaces
            .values()
            .map(|ws| ws.doc.spec.aws.account_id.as_str())
            .collect();
        accounts.dedup();
        assert_eq!(accounts.len(), 12);
    }

    #[test]
    fn every_stack_workspaces_enable_every_tenant_stack_with_values() {
        let checked = checked(Tenants::EveryStack);
        let model = checked.model.as_ref().expect("model");
        let tenant: Vec<&str> = model
            .stacks
            .iter()
            .filter(|(_, s)| s.entity.doc.spec.target == cplane_schema::model::StackTarget::Tenant)
            .map(|(name, _)| name.as_str())
            .collect();
        assert!(tenant.len() >= 5, "{tenant:?}");
        for ws in model.workspaces.values() {
            let names: Vec<&str> = ws.doc.spec.stacks.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, tenant);
            assert!(ws.doc.spec.stacks.iter().all(|s| !s.values.is_empty()));
        }
    }

    #[test]
    fn distinct_values_differ_in_every_stack_between_workspaces() {
        let checked = checked(Tenants::DistinctValues);
        let all = stacks(&checked);
        for (i, (a, ours)) in all.iter().enumerate() {
            assert_eq!(ours.len(), 3);
            for (b, theirs) in &all[i + 1..] {
                for (x, y) in ours.iter().zip(theirs) {
                    assert_ne!(x, y, "{a} and {b}");
                }
            }
        }
    }
}
