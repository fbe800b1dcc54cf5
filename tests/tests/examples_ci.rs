//! The pull-request examples under `examples/`: the GitHub Actions workflow and the GitLab CI
//! file parse as YAML and run only `cplane` commands and flags that exist, and the "add a
//! region" walkthrough's commit validates, plans (a new platform cluster and tenant) and, once
//! applied ("merged"), leaves nothing to change.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    cplane_e2e::root().join("examples")
}

fn cplane(dir: &Path, args: &[&str]) -> Output {
    Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(args)
        .current_dir(dir)
        .env_remove("PRIMARY_CPLANE_API_URL")
        .env_remove("INTER_REGION_SERVICE_TOKEN")
        .output()
        .expect("run cplane")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every `cplane SUBCOMMAND --flag …` in a shell script: (subcommand, flags).
fn cplane_commands(script: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for command in script.split(['\n', ';']).flat_map(|l| l.split("||")) {
        let words: Vec<&str> = command.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| *w == "cplane") {
            let Some(sub) = words.get(at + 1) else {
                continue;
            };
            let flags = words[at + 2..]
                .iter()
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().expect("a word").to_owned())
                .collect();
            out.push(((*sub).to_owned(), flags));
        }
    }
    out
}

/// Checks that `cplane SUB --help` exists and lists every flag.
fn assert_exists(sub: &str, flags: &[String]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = cplane(tmp.path(), &[sub, "--help"]);
    assert!(out.status.success(), "cplane {sub}: {}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for flag in flags {
        assert!(
            help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
                .any(|w| w == flag),
            "cplane {sub} has no {flag}:\n{help}"
        );
    }
}

#[test]
fn the_github_workflow_runs_validate_and_plan_on_the_server_on_pull_requests() {
    let doc: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(examples().join("github-actions.yml")).expect("read"),
    )
    .expect("the workflow is YAML");
    assert!(doc["on"]["pull_request"].is_mapping(), "{doc:?}");
    let steps = doc["jobs"]["plan"]["steps"].as_sequence().expect("steps");
    let script: String = steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let commands = cplane_commands(&script);
    let subs: Vec<&str> = commands.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(subs, ["validate", "plan"], "{script}");
    assert!(commands[1].1.contains(&"--server".to_owned()));
    for (sub, flags) in &commands {
        assert_exists(sub, flags);
    }
    // The token is a secret given by reference, never a literal.
    let plan_step = steps
        .iter()
        .find(|s| s["run"].as_str().is_some_and(|r| r.contains("--server")))
        .expect("the plan step");
    assert_eq!(
        plan_step["env"]["CPLANE_TOKEN"].as_str(),
        Some("${{ secrets.CPLANE_TOKEN }}")
    );
}

#[test]
fn the_gitlab_job_runs_validate_and_plan_on_the_server_on_merge_requests() {
    let doc: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(examples().join("gitlab-ci.yml")).expect("read"),
    )
    .expect("the CI file is YAML");
    let job = &doc["cplane"];
    assert_eq!(
        job["rules"][0]["if"].as_str(),
        Some("$CI_PIPELINE_SOURCE == \"merge_request_event\"")
    );
    let script: String = job["script"]
        .as_sequence()
        .expect("script")
        .iter()
        .filter_map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let commands = cplane_commands(&script);
    let subs: Vec<&str> = commands.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(subs, ["validate", "plan"], "{script}");
    for (sub, flags) in &commands {
        assert_exists(sub, flags);
    }
}

#[test]
fn adding_a_region_is_one_pull_request_that_validates_plans_and_reconciles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = cplane(tmp.path(), &["init", "state"]);
    assert!(out.status.success(), "{}", text(&out));
    let state = tmp.path().join("state");
    let out = cplane(&state, &["apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let bin = cplane_e2e::cargo_bin("cplane");
    let path = format!(
        "{}:{}",
        bin.parent().expect("the binary's directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(examples().join("add-a-region.sh"))
        .arg(&state)
        .env("PATH", path)
        .env_remove("PRIMARY_CPLANE_API_URL")
        .env_remove("INTER_REGION_SERVICE_TOKEN")
        .output()
        .expect("run the walkthrough");
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(plan.starts_with("valid: commit "), "{plan}");
    for line in [
        "  workspace hooli (new workspace)",
        "  cluster w-hooli (tenant, fra-1/prod): 15 to add, 0 to change, 0 to remove",
        "    + apps/v1 Deployment trino/trino-worker",
    ] {
        assert!(plan.lines().any(|l| l == line), "{line:?} not in\n{plan}");
    }
    assert!(
        plan.lines()
            .any(|l| l.starts_with("  cluster prod-fra-1 (platform, fra-1/prod): ")),
        "{plan}"
    );

    // Merged: the branch is applied, and nothing is left to change.
    let out = cplane(&state, &["apply", "--rev", "add-fra-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = cplane(
        &state,
        &["plan", "--rev", "add-fra-1", "--detailed-exitcode"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
