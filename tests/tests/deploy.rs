//! Deploying cplane (issue 17): `--version` names the commit, and the server records which
//! version each cluster's agent is and warns about old ones.

use std::process::Command;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_names_the_commit() {
    let head = git2::Repository::discover(cplane_e2e::root())
        .expect("the checkout")
        .head()
        .expect("HEAD")
        .peel_to_commit()
        .expect("commit")
        .id()
        .to_string();
    for bin in ["cplane", "cplane-agent"] {
        let out = Command::new(cplane_e2e::cargo_bin(bin))
            .arg("--version")
            .output()
            .expect("run");
        let line = text(&out.stdout);
        let commit = line
            .split("(commit ")
            .nth(1)
            .and_then(|r| r.split([')', '-']).next())
            .unwrap_or_else(|| panic!("{bin}: {line}"));
        assert!(
            commit.len() >= 7 && head.starts_with(commit),
            "{bin} --version says {line:?}; HEAD is {head}"
        );
        assert!(
            line.starts_with(&format!("{bin} {}", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
    }
}

#[test]
fn the_server_records_agents_versions_and_warns_about_old_ones() {
    use cplane_e2e::serve::{http, wait_for, Serve};
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let server = Serve::new(dir.path())
        .args(["--insecure-open-read"])
        .stderr_to(&log)
        .start();
    let token = server.cplane(&["cluster", "token", "create", "w-acme"]);
    let auth = format!("Bearer {}", token.trim());
    let report =
        serde_json::json!({"digest": format!("sha256:{}", "0".repeat(64)), "generation": 1,
        "healthy": true, "message": "", "objects": []})
        .to_string();
    let current = format!("cplane-agent/{} (commit abc)", env!("CARGO_PKG_VERSION"));
    for (agent, warned) in [
        (current.as_str(), false),
        ("cplane-agent/0.0.1 (commit old)", true),
    ] {
        let (code, body) = http(
            server.port,
            "POST",
            "/v1/clusters/w-acme/status",
            &[
                ("authorization", auth.clone()),
                ("user-agent", agent.to_owned()),
                ("content-type", "application/json".to_owned()),
            ],
            report.as_bytes(),
        );
        assert_eq!(code, 204, "{body}");
        let status = cplane_e2e::serve::get_json(server.port, "/v1/clusters/w-acme/status");
        assert_eq!(
            status["reported"]["report"]["agent_version"],
            agent.trim_start_matches("cplane-agent/"),
            "{status}"
        );
        if warned {
            wait_for("the warning about the old agent", || {
                std::fs::read_to_string(&log).is_ok_and(|l| {
                    l.contains("older than the control plane") && l.contains("0.0.1 (commit old)")
                })
            });
        } else {
            assert!(!std::fs::read_to_string(&log)
                .expect("log")
                .contains("older than the control plane"));
        }
    }
}
