//! The commands that read a revision and touch nothing else: `validate`, `render`,
//! `clusters`.

use super::*;

/// The files of `--rev` in `--repo`, read from git's object database.
fn snapshot(args: &RepoArgs) -> anyhow::Result<source::Snapshot> {
    let repo = source::open(&args.repo)?;
    Ok(source::read(&repo, &args.rev)?)
}

pub(super) fn load(args: &RepoArgs, keep: Option<&str>) -> anyhow::Result<(String, Checked)> {
    let snapshot = snapshot(args)?;
    let checked = match keep {
        None => check(snapshot.files),
        Some(id) => check_keeping(snapshot.files, |c, _| c.id == id),
    };
    Ok((snapshot.commit, checked))
}

pub(super) fn print_errors(diags: &[Diagnostic]) {
    let mut err = std::io::stderr().lock();
    for d in diags {
        let _ = writeln!(err, "{d}");
    }
}

pub(super) fn validate(args: &RepoArgs, format: Format) -> anyhow::Result<ExitCode> {
    let snapshot = snapshot(args)?;
    let (commit, checked) = (snapshot.commit, validate_files(snapshot.files));
    let valid = checked.is_valid();
    match format {
        Format::Json => {
            let errors: Vec<_> = checked
                .diagnostics
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "file": d.file, "line": d.line, "column": d.column,
                        "message": d.message, "path": d.path,
                    })
                })
                .collect();
            let out = serde_json::json!({ "valid": valid, "commit": commit, "errors": errors });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            print_errors(&checked.diagnostics);
            let short = &commit[..12.min(commit.len())];
            if valid {
                let model = checked.model.as_ref().expect("valid implies a model");
                println!(
                    "valid: commit {short}: {} regions, {} workspaces, {} stacks, {} clusters rendered",
                    model.regions.len(),
                    model.workspaces.len(),
                    model.stacks.len(),
                    checked.rendered
                );
            } else {
                let n = checked.diagnostics.len();
                println!(
                    "invalid: commit {short}: {n} error{}",
                    if n == 1 { "" } else { "s" }
                );
            }
        }
    }
    // The process ends here: freeing a 10,000-workspace model object by object would only add
    // to the command's time.
    std::mem::forget(checked);
    Ok(ExitCode::from(if valid { 0 } else { EXIT_INVALID }))
}

pub(super) fn render(
    args: &RepoArgs,
    cluster: &str,
    out: Option<&Path>,
    format: RenderFormat,
) -> anyhow::Result<ExitCode> {
    let (_, checked) = load(args, Some(cluster))?;
    if !checked.is_valid() {
        print_errors(&checked.diagnostics);
        eprintln!("error: the revision is invalid; nothing rendered");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let Some(bundle) = checked.clusters.iter().find_map(|r| r.bundle.as_ref()) else {
        let known: Vec<&str> = checked
            .clusters
            .iter()
            .map(|r| r.cluster.id.as_str())
            .collect();
        return Err(InvalidInput(format!(
            "no cluster `{cluster}`; clusters are: {}",
            known.join(", ")
        ))
        .into());
    };
    match out {
        None => match format {
            RenderFormat::Yaml => print!("{}", bundle.to_yaml()),
            RenderFormat::Json => print!("{}", bundle.canonical()),
        },
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (i, object) in bundle.objects.iter().enumerate() {
                let (_, kind, ns, name, _) = object_key(&object.value);
                let stem = [kind.to_lowercase(), ns, name]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("-");
                let path = dir.join(format!("{:03}-{stem}.yaml", i + 1));
                let text = serde_yaml::to_string(&object.value)?;
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!(
                "{} objects written to {}",
                bundle.objects.len(),
                dir.display()
            );
        }
    }
    eprintln!("cluster {cluster}: {}", bundle.digest);
    Ok(ExitCode::SUCCESS)
}

/// `cplane agent install`: the agent's manifests for one cluster, RBAC from its bundle.
pub(super) fn agent_install(
    args: &RepoArgs,
    cluster: String,
    server: String,
    image: Option<String>,
    namespace: String,
) -> anyhow::Result<ExitCode> {
    use cplane_reconciler::deploy::agent;
    let (_, checked) = load(args, Some(&cluster))?;
    if !checked.is_valid() {
        print_errors(&checked.diagnostics);
        eprintln!("error: the revision is invalid; nothing printed");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let Some(bundle) = checked.clusters.iter().find_map(|r| r.bundle.as_ref()) else {
        return Err(InvalidInput(format!("no cluster `{cluster}` (see `cplane clusters`)")).into());
    };
    let install = agent::Install {
        cluster,
        server,
        image: image.unwrap_or_else(|| format!("cplane-agent:{}", env!("CARGO_PKG_VERSION"))),
        namespace,
    };
    let objects = agent::manifests(bundle, &install).map_err(|e| InvalidInput(e.to_string()))?;
    print!("{}", agent::to_yaml(&install, &objects));
    Ok(ExitCode::SUCCESS)
}

/// `cplane deploy render`: the control plane's manifests for one values file.
pub(super) fn deploy_render(values: &Path) -> anyhow::Result<ExitCode> {
    use cplane_reconciler::deploy::control_plane;
    let name = values.display().to_string();
    let text = std::fs::read_to_string(values).with_context(|| format!("reading {name}"))?;
    match control_plane::parse(&name, &text) {
        Ok(v) => {
            let out = control_plane::render(&v).map_err(anyhow::Error::msg)?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            print_errors(&diags);
            eprintln!("error: {name} is invalid; nothing rendered");
            Ok(ExitCode::from(EXIT_INVALID))
        }
    }
}

pub(super) fn clusters(args: &RepoArgs, format: Format) -> anyhow::Result<ExitCode> {
    let (_, checked) = load(args, None)?;
    if !checked.is_valid() {
        print_errors(&checked.diagnostics);
        eprintln!("error: the revision is invalid");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    match format {
        Format::Json => {
            let list: Vec<_> = checked
                .clusters
                .iter()
                .map(|r| {
                    let c = &r.cluster;
                    serde_json::json!({
                        "id": c.id, "kind": c.kind, "region": c.region,
                        "environment": c.environment, "digest": r.digest,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Format::Text => {
            println!(
                "{:<24} {:<9} {:<8} {:<12} DIGEST",
                "ID", "KIND", "REGION", "ENVIRONMENT"
            );
            for r in &checked.clusters {
                let c = &r.cluster;
                let kind = match c.kind {
                    cplane_reconciler::render::ClusterKind::Platform => "platform",
                    cplane_reconciler::render::ClusterKind::Tenant => "tenant",
                };
                println!(
                    "{:<24} {:<9} {:<8} {:<12} {}",
                    c.id, kind, c.region, c.environment, r.digest
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
