//! The README's quick start, run as written: every ```sh block of its "Quick start" section,
//! in order, in one bash session (`set -euo pipefail`) in a fresh temporary directory. A README
//! that drifts from the product fails CI.
//!
//! Two things differ from a reader's machine, and only these: the freshly built `cplane` is put
//! first on `PATH` (in place of `cargo install`), and the port 3000 becomes a free one so that
//! parallel test runs do not collide. Anything the blocks leave running is killed at the end.

use std::process::Command;

/// The ```sh blocks of the section headed `## Quick start`, in order.
fn quick_start_blocks(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Quick start"))
        .expect("README has a `## Quick start` section");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "an unclosed code block in the quick start"
    );
    blocks
}

#[test]
fn the_quick_start_blocks_are_found_in_order() {
    let readme = "intro\n## Quick start\ntext\n```sh\necho a\n```\n```text\nno\n```\n```sh\necho b\n```\n## Next\n```sh\necho c\n```\n";
    assert_eq!(quick_start_blocks(readme), ["echo a\n", "echo b\n"]);
}

#[test]
fn every_quick_start_block_runs_as_written() {
    let readme = std::fs::read_to_string(cplane_e2e::root().join("README.md")).expect("README.md");
    let blocks = quick_start_blocks(&readme);
    assert!(blocks.len() >= 4, "the quick start lost its blocks");
    let port = cplane_e2e::moto::free_port().to_string();
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '>>> quick start block {}'\n", i + 1));
        script.push_str(&block.replace("3000", &port));
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = cplane_e2e::cargo_bin("cplane")
        .parent()
        .expect("binary directory")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(tmp.path())
        .env("PATH", path)
        .env("HOME", tmp.path())
        .env_remove("CPLANE_DATABASE_URL")
        .env_remove("CPLANE_LOG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let up_log = std::fs::read_to_string(tmp.path().join("up.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the quick start failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n--- up.log\n{up_log}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // What the reader is told to expect.
    assert!(stdout.contains("valid: commit "), "{stdout}");
    assert!(stdout.contains(r#""changed":true"#), "{stdout}");
    assert!(
        stdout.contains("cplane up admin: workspaces/acme:"),
        "{stdout}"
    );
    assert!(stdout.contains("w-hooli.sgp-1."), "{stdout}");
    let token = std::fs::read_to_string(tmp.path().join(".cplane/w-hooli.token")).expect("token");
    assert!(token.starts_with("cpt_"), "{token}");
}
