//! End-to-end tests of the `cplane` binary on real git repositories.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn cplane(args: &[&str]) -> Output {
    Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(args)
        .env_remove("CPLANE_REPO")
        .env_remove("CPLANE_REV")
        .env_remove("CPLANE_FORMAT")
        .output()
        .expect("run cplane")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn init(dir: &Path) {
    let out = cplane(&["init", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn init_then_validate_is_valid_and_init_never_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    init(&state);
    let repo = state.to_str().expect("utf-8");
    let out = cplane(&["validate", "--repo", repo]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("valid: commit "),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("2 regions, 3 workspaces, 9 stacks, 5 clusters rendered"));
    assert!(state.join("schemas/workspace.json").exists());

    let again = cplane(&["init", repo]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("exists and is not empty"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn rev_reads_the_commit_never_the_dirty_working_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    init(&state);
    let repo = state.to_str().expect("utf-8");
    let acme = state.join("workspaces/acme.yaml");
    let broken = fs::read_to_string(&acme)
        .expect("read")
        .replace("region: sgp-1", "region: sgp-9");
    fs::write(&acme, &broken).expect("write");

    // Uncommitted: HEAD is still valid.
    let out = cplane(&["validate", "--repo", repo]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "dirty tree leaked: {}",
        stderr(&out)
    );

    // Committed: invalid, with the exact error; the previous commit is still valid.
    cplane_e2e::commit_all(&state, "break acme");
    let out = cplane(&["validate", "--repo", repo]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "workspaces/acme.yaml:9:11: spec.region: region `sgp-9` does not exist (no regions/sgp-9.yaml)\n"
    );
    assert!(
        stdout(&out).contains("invalid: commit "),
        "{}",
        stdout(&out)
    );
    let out = cplane(&["validate", "--repo", repo, "--rev", "HEAD~1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn json_output_follows_the_contract() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    init(&state);
    let acme = state.join("workspaces/acme.yaml");
    let text = fs::read_to_string(&acme)
        .expect("read")
        .replace("  region: sgp-1", "  regoin: sgp-1")
        .replace("replicas: 3", "replicas: three");
    fs::write(&acme, text).expect("write");
    let commit = cplane_e2e::commit_all(&state, "break");

    let out = cplane(&[
        "validate",
        "--repo",
        state.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        v,
        serde_json::json!({
            "valid": false,
            "commit": commit,
            "errors": [{
                "file": "workspaces/acme.yaml", "line": 9, "column": 3,
                "path": "spec",
                "message": "spec: unknown field `regoin`, expected one of `region`, `environment`, `account`, `aws`, `deletionPolicy`, `stacks`, `suspend`, `syncWindows`; did you mean `region`?",
            }]
        })
    );
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = cplane(&["validate", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cplane(&["validate", "--format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cplane(&["validate", "--repo", tmp.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a git repository"),
        "{}",
        stderr(&out)
    );

    let state = tmp.path().join("state");
    init(&state);
    let out = cplane(&[
        "validate",
        "--repo",
        state.to_str().expect("utf-8"),
        "--rev",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("revision `nope` does not name a commit"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn render_and_clusters_agree_on_digests_and_work_from_a_bare_repo() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    init(&state);
    // A bare clone, as a server would hold it: no working tree at all.
    let bare = tmp.path().join("bare.git");
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&format!("file://{}", state.display()), &bare)
        .expect("bare clone");
    let repo = bare.to_str().expect("utf-8");

    let out = cplane(&["clusters", "--repo", repo, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let clusters: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let list = clusters.as_array().expect("a list");
    assert_eq!(list.len(), 5);
    let acme = list.iter().find(|c| c["id"] == "w-acme").expect("w-acme");
    assert_eq!(acme["kind"], "tenant");
    assert_eq!(acme["region"], "sgp-1");
    assert_eq!(acme["environment"], "prod");
    let prod = list
        .iter()
        .find(|c| c["id"] == "prod-sgp-1")
        .expect("prod-sgp-1");
    assert_eq!(prod["kind"], "platform");

    // The digest is the SHA-256 of the canonical JSON Lines form.
    let out = cplane(&[
        "render",
        "--repo",
        repo,
        "--cluster",
        "w-acme",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = format!("sha256:{}", hex_sha256(&out.stdout));
    assert_eq!(acme["digest"], digest.as_str());
    let canonical = stdout(&out);
    for line in canonical.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
        assert_eq!(
            serde_json::to_string(&v).expect("json"),
            line,
            "keys sorted, compact"
        );
    }

    let out = cplane(&["render", "--repo", repo, "--cluster", "w-acme"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = stdout(&out);
    assert!(stderr(&out).contains(&digest));
    assert_eq!(yaml.matches("---\n").count(), canonical.lines().count());
    for doc in yaml.split("\n---\n") {
        let v: serde_yaml::Value =
            serde_yaml::from_str(doc.trim_start_matches("---\n")).expect("YAML");
        assert!(
            v["metadata"]["labels"]["cplane.io/cluster"] == "w-acme",
            "{doc}"
        );
    }

    let out_dir = tmp.path().join("out");
    let out = cplane(&[
        "render",
        "--repo",
        repo,
        "--cluster",
        "w-acme",
        "--out",
        out_dir.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut files: Vec<String> = fs::read_dir(&out_dir)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files.first().map(String::as_str),
        Some("001-namespace-bff.yaml")
    );
    assert_eq!(files.len(), yaml.matches("---\n").count());

    let out = cplane(&["render", "--repo", repo, "--cluster", "w-nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no cluster `w-nope`"),
        "{}",
        stderr(&out)
    );
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn validate_refuses_an_object_whose_content_is_not_what_its_id_names() {
    use std::io::Write as _;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    init(&dir);
    let repo = git2::Repository::open(&dir).expect("open");
    let id = repo
        .revparse_single("HEAD:workspaces/acme.yaml")
        .expect("acme blob")
        .id()
        .to_string();
    // Swap the loose object's content for a different, equally valid workspace: zlib's checksum
    // still holds, only hashing the content against its id can tell.
    let loose = dir.join(".git/objects").join(&id[..2]).join(&id[2..]);
    assert!(loose.is_file(), "{} is not a loose object", loose.display());
    let text = fs::read_to_string(dir.join("workspaces/acme.yaml")).expect("read acme");
    let swapped = text.replace("replicas: 3", "replicas: 5");
    assert_ne!(swapped, text);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(format!("blob {}\0{swapped}", swapped.len()).as_bytes())
        .expect("compress");
    fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    fs::write(&loose, z.finish().expect("compress")).expect("write object");

    let repo_arg = dir.to_str().expect("utf-8 path");
    for args in [
        vec!["validate", "--repo", repo_arg],
        vec!["clusters", "--repo", repo_arg],
        vec!["render", "--repo", repo_arg, "--cluster", "w-acme"],
    ] {
        let out = cplane(&args);
        assert!(!out.status.success(), "{args:?}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("hash mismatch"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}
