//! The API write core against real bare remotes: commits on a user's behalf, lossless edits,
//! 422/404/409/412, pull-request branches, compare-and-swap under concurrent API writers and
//! external `git push`es.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cplane_reconciler::write::{
    Access, Change, Config, Error, Mode, Request, User, Writer, Written,
};
use serde_json::json;

/// The branch checked out in the working copy `work`.
fn checked_out(work: &Path) -> String {
    git2::Repository::open(work)
        .expect("work")
        .head()
        .expect("head")
        .shorthand()
        .expect("branch")
        .to_owned()
}

/// Asserts that git finds every object of `repo` sound and reachable.
fn assert_fsck_clean(repo: &Path) {
    let fsck = git(repo, &["fsck", "--strict", "--no-dangling"]);
    assert!(fsck.status.success(), "git fsck: {fsck:?}");
}

/// A bare remote holding `work`'s history; returns (bare dir, branch).
fn bare_of(work: &Path) -> (tempfile::TempDir, String) {
    let branch = checked_out(work);
    let bare = tempfile::tempdir().expect("tempdir");
    let status = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(work)
        .arg(bare.path().join("state.git"))
        .status()
        .expect("git clone");
    assert!(status.success());
    (bare, branch)
}

fn remote(bare: &tempfile::TempDir) -> PathBuf {
    bare.path().join("state.git")
}

fn start(remote: &Path, branch: &str, hook: Option<Arc<dyn Fn() + Send + Sync>>) -> Writer {
    Writer::start(Config {
        repo_url: remote.display().to_string(),
        branch: branch.to_owned(),
        mirror: remote.with_extension("mirror"),
        committer: ("cplane".into(), "cplane@cplane.local".into()),
        on_commit: Arc::new(|_| {}),
        before_publish: hook,
    })
}

fn alice() -> User {
    User {
        name: "Alice Example".into(),
        email: "alice@example.com".into(),
    }
}

fn request(change: Change) -> Request {
    Request {
        change,
        user: alice(),
        if_match: None,
        mode: Mode::Commit,
        access: Access::Any,
    }
}

fn put_stack(ws: &str, stack: &str, values: serde_json::Value) -> Change {
    Change::PutStack {
        workspace: ws.into(),
        stack: stack.into(),
        values: values.as_object().expect("object").clone(),
    }
}

fn patch_stack(ws: &str, stack: &str, patch: serde_json::Value) -> Change {
    Change::PatchStack {
        workspace: ws.into(),
        stack: stack.into(),
        patch: patch.as_object().expect("object").clone(),
    }
}

fn head(remote: &Path, branch: &str) -> String {
    let repo = git2::Repository::open_bare(remote).expect("bare");
    let r = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .expect("branch");
    let id = r.peel_to_commit().expect("commit").id();
    id.to_string()
}

fn file_at(remote: &Path, rev: &str, path: &str) -> Option<String> {
    let repo = git2::Repository::open_bare(remote).expect("bare");
    let tree = repo
        .revparse_single(rev)
        .expect("rev")
        .peel_to_tree()
        .expect("tree");
    let entry = tree.get_path(Path::new(path)).ok()?;
    let blob = repo.find_blob(entry.id()).expect("blob");
    Some(String::from_utf8(blob.content().to_vec()).expect("utf-8"))
}

fn valid_at(remote: &Path, rev: &str) -> Vec<String> {
    let repo = git2::Repository::open_bare(remote).expect("bare");
    let snapshot = cplane_reconciler::source::read(&repo, rev).expect("read");
    cplane_reconciler::check::check(snapshot.files)
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Eve External",
            "-c",
            "user.email=eve@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    out
}

/// An engineer's clone of the remote that pushes `edit`ed files with the git CLI.
struct Engineer {
    dir: tempfile::TempDir,
    branch: String,
}

impl Engineer {
    fn clone(remote: &Path, branch: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = git(
            dir.path(),
            &["clone", "-q", &remote.display().to_string(), "work"],
        );
        assert!(out.status.success(), "{out:?}");
        Self {
            dir,
            branch: branch.to_owned(),
        }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Edits a file, commits, and pushes — pulling with rebase and retrying when the remote
    /// moved (as people do). Returns the number of rejected pushes.
    fn push_edit(&self, path: &str, edit: impl Fn(&str) -> String, message: &str) -> usize {
        let file = self.work().join(path);
        let text = std::fs::read_to_string(&file).expect("read");
        std::fs::write(&file, edit(&text)).expect("write");
        let out = git(&self.work(), &["commit", "-qam", message]);
        assert!(out.status.success(), "{out:?}");
        let mut rejected = 0;
        loop {
            let out = git(&self.work(), &["push", "-q", "origin", &self.branch]);
            if out.status.success() {
                return rejected;
            }
            rejected += 1;
            assert!(rejected < 50, "push keeps failing: {out:?}");
            let out = git(
                &self.work(),
                &["pull", "-q", "--rebase", "origin", &self.branch],
            );
            assert!(out.status.success(), "{out:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_changes_commit_as_the_user_and_keep_the_file_layout() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let writer = start(&remote, &branch, None);
    let before = head(&remote, &branch);
    let acme_before = file_at(&remote, &before, "workspaces/acme.yaml").expect("acme");

    let values = json!({"dagsRepo": "https://git.example.com/acme/dags.git"});
    let w = writer
        .write(request(put_stack("acme", "airflow", values)))
        .await
        .expect("enable");
    assert!(w.created && w.changed && w.branch.is_none(), "{w:?}");
    assert_eq!(head(&remote, &branch), w.commit);

    let repo = git2::Repository::open_bare(&remote).expect("bare");
    let commit = repo
        .find_commit(git2::Oid::from_str(&w.commit).expect("oid"))
        .expect("commit");
    assert_eq!(commit.author().name().ok(), Some("Alice Example"));
    assert_eq!(commit.author().email().ok(), Some("alice@example.com"));
    assert_eq!(commit.committer().name().ok(), Some("cplane"));
    assert_eq!(
        commit.summary().ok().flatten(),
        Some("workspaces/acme: enable stack airflow")
    );
    assert_eq!(commit.parent_ids().collect::<Vec<_>>().len(), 1);
    assert_eq!(commit.parent_id(0).expect("parent").to_string(), before);
    // Only acme.yaml changed, and only by the new item: every comment and line kept.
    let acme = file_at(&remote, &w.commit, "workspaces/acme.yaml").expect("acme");
    assert_eq!(
        acme,
        format!(
            "{}    - name: airflow\n      values:\n        dagsRepo: https://git.example.com/acme/dags.git\n",
            acme_before
        )
    );
    let diff = repo
        .diff_tree_to_tree(
            Some(&commit.parent(0).expect("parent").tree().expect("tree")),
            Some(&commit.tree().expect("tree")),
            None,
        )
        .expect("diff");
    assert_eq!(diff.deltas().len(), 1);
    assert_eq!(valid_at(&remote, &w.commit), Vec::<String>::new());

    // Re-value, no-op, disable, disable again.
    let w2 = writer
        .write(request(put_stack(
            "acme",
            "airflow",
            json!({"dagsRepo": "https://git.example.com/acme/other.git", "dagsBranch": "prod"}),
        )))
        .await
        .expect("re-value");
    assert!(!w2.created && w2.changed);
    let summary = |id: &str| {
        let repo = git2::Repository::open_bare(&remote).expect("bare");
        let c = repo
            .find_commit(git2::Oid::from_str(id).expect("oid"))
            .expect("commit");
        c.summary().ok().flatten().map(str::to_owned)
    };
    assert_eq!(
        summary(&w2.commit).as_deref(),
        Some("workspaces/acme: set values of stack airflow")
    );
    let same = writer
        .write(request(put_stack(
            "acme",
            "airflow",
            json!({"dagsRepo": "https://git.example.com/acme/other.git", "dagsBranch": "prod"}),
        )))
        .await
        .expect("no-op");
    assert_eq!(
        same,
        Written {
            commit: w2.commit.clone(),
            created: false,
            changed: false,
            branch: None,
            message: None,
        }
    );
    let w3 = writer
        .write(request(Change::DeleteStack {
            workspace: "acme".into(),
            stack: "airflow".into(),
        }))
        .await
        .expect("disable");
    assert_eq!(
        summary(&w3.commit).as_deref(),
        Some("workspaces/acme: disable stack airflow")
    );
    assert_eq!(
        file_at(&remote, &w3.commit, "workspaces/acme.yaml").as_deref(),
        Some(acme_before.as_str())
    );
    let gone = writer
        .write(request(Change::DeleteStack {
            workspace: "acme".into(),
            stack: "airflow".into(),
        }))
        .await
        .expect_err("not enabled");
    assert_eq!(gone.status(), 404, "{gone}");
    assert_eq!(head(&remote, &branch), w3.commit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_replaces_a_stacks_values_and_patch_merges_into_them() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let writer = start(&remote, &branch, None);
    let acme = |rev: &str| file_at(&remote, rev, "workspaces/acme.yaml").expect("acme");
    let original = acme(&head(&remote, &branch));

    // PUT is a replacement: the keys it leaves out (bff's resources) are gone.
    let put = writer
        .write(request(put_stack("acme", "bff", json!({"replicas": 4}))))
        .await
        .expect("put");
    let after_put = original.replace(
        "        replicas: 3\n        resources:\n          limits:\n            memory: 1Gi\n",
        "        replicas: 4\n",
    );
    assert_eq!(acme(&put.commit), after_put);

    // PATCH merges (RFC 7396): scalars replace, `null` removes, objects merge recursively;
    // every other value, stack and comment of the file stays as it was.
    let patched = writer
        .write(request(patch_stack(
            "acme",
            "trino",
            json!({"values": {
                "workers": 6,
                "serviceAccountRole": null,
                "workerResources": {"limits": {"memory": "32Gi"}},
                "catalogs": {"lake": {"iceberg.catalog.type": null}},
            }}),
        )))
        .await
        .expect("patch");
    assert!(patched.changed && !patched.created, "{patched:?}");
    let after_patch = after_put
        .replace("        workers: 4\n", "        workers: 6\n")
        .replace("        serviceAccountRole: acme-trino-glue\n", "")
        .replace(
            "          limits:\n            memory: 16Gi\n",
            "          limits:\n            memory: 32Gi\n",
        )
        .replace("            iceberg.catalog.type: glue\n", "");
    assert_eq!(acme(&patched.commit), after_patch);
    assert_eq!(valid_at(&remote, &patched.commit), Vec::<String>::new());
    let repo = git2::Repository::open_bare(&remote).expect("bare");
    let commit = repo
        .find_commit(git2::Oid::from_str(&patched.commit).expect("oid"))
        .expect("commit");
    assert_eq!(
        commit.summary().ok().flatten(),
        Some("workspaces/acme: patch values of stack trino")
    );
    assert_eq!(commit.author().email().ok(), Some("alice@example.com"));

    // The same patch again changes nothing; `{"values": null}` removes every value.
    let again = writer
        .write(request(patch_stack(
            "acme",
            "trino",
            json!({"values": {"workers": 6, "serviceAccountRole": null}}),
        )))
        .await
        .expect("no-op");
    assert!(
        !again.changed && again.commit == patched.commit,
        "{again:?}"
    );
    let cleared = writer
        .write(request(patch_stack(
            "acme",
            "superset",
            json!({"values": null}),
        )))
        .await
        .expect("clear");
    assert_eq!(
        acme(&cleared.commit),
        after_patch.replace(
            "    - name: superset\n      values:\n        replicas: 2\n        featureFlags:\n          ALERT_REPORTS: true\n",
            "    - name: superset\n",
        )
    );

    // A stack not enabled yet is enabled by a patch (201), a `null` for an absent key is nothing.
    let enabled = writer
        .write(request(patch_stack(
            "acme",
            "airflow",
            json!({"values": {"dagsRepo": "https://git.example.com/acme/dags.git", "dagsBranch": null}}),
        )))
        .await
        .expect("enable");
    assert!(enabled.created && enabled.changed, "{enabled:?}");
    assert!(acme(&enabled.commit).ends_with(
        "    - name: airflow\n      values:\n        dagsRepo: https://git.example.com/acme/dags.git\n"
    ));

    // A patch that makes the file invalid: 422 at the value's line, nothing committed.
    let err = writer
        .write(request(patch_stack(
            "acme",
            "bff",
            json!({"values": {"replicas": "many"}}),
        )))
        .await
        .expect_err("wrong type");
    let Error::Invalid(diags) = &err else {
        panic!("{err:?}")
    };
    let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["workspaces/acme.yaml:20:19: spec.stacks[0].values.replicas: expected integer, found string"],
        "{shown:#?}"
    );
    assert_eq!(
        head(&remote, &branch),
        enabled.commit,
        "nothing was committed"
    );
    let err = writer
        .write(request(patch_stack("nobody", "bff", json!({"values": {}}))))
        .await
        .expect_err("no workspace");
    assert_eq!(err.status(), 404, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_patch_merges_into_the_document_keeping_the_rest() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let writer = start(&remote, &branch, None);
    let before = head(&remote, &branch);
    let original = file_at(&remote, &before, "workspaces/acme.yaml").expect("acme");
    let patch = |patch: serde_json::Value| {
        request(Change::PatchWorkspace {
            id: "acme".into(),
            patch: patch.as_object().expect("object").clone(),
        })
    };
    let w = writer
        .write(patch(json!({"spec": {
            "deletionPolicy": null,
            "aws": {"externalId": "acme-0000"},
        }})))
        .await
        .expect("patch");
    assert!(w.changed && !w.created, "{w:?}");
    assert_eq!(
        file_at(&remote, &w.commit, "workspaces/acme.yaml").expect("acme"),
        original
            .replace("  deletionPolicy: Retain\n", "")
            .replace("externalId: acme-7f3c2a9e", "externalId: acme-0000")
    );
    let repo = git2::Repository::open_bare(&remote).expect("bare");
    let commit = repo
        .find_commit(git2::Oid::from_str(&w.commit).expect("oid"))
        .expect("commit");
    assert_eq!(
        commit.summary().ok().flatten(),
        Some("workspaces/acme: patch")
    );

    // Removing a required key: 422 naming the file, nothing committed. No such workspace: 404.
    let err = writer
        .write(patch(json!({"spec": {"aws": {"roleArn": null}}})))
        .await
        .expect_err("invalid");
    let Error::Invalid(diags) = &err else {
        panic!("{err:?}")
    };
    assert!(
        diags[0].to_string().starts_with("workspaces/acme.yaml:")
            && diags[0].message.contains("roleArn"),
        "{diags:?}"
    );
    let err = writer
        .write(request(Change::PatchWorkspace {
            id: "nobody".into(),
            patch: serde_json::Map::new(),
        }))
        .await
        .expect_err("missing");
    assert_eq!(err.status(), 404, "{err}");
    assert_eq!(head(&remote, &branch), w.commit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_are_created_replaced_and_deleted() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let writer = start(&remote, &branch, None);
    let acme: serde_json::Value =
        serde_yaml::from_str(&file_at(&remote, &branch, "workspaces/acme.yaml").expect("acme"))
            .expect("yaml");
    let mut umbrella = acme.clone();
    umbrella["metadata"]["name"] = json!("umbrella");
    umbrella["spec"]["account"] = json!("umbrella");
    let created = writer
        .write(request(Change::PutWorkspace {
            id: "umbrella".into(),
            document: umbrella.clone(),
        }))
        .await
        .expect("create");
    assert!(created.created && created.changed);
    let text = file_at(&remote, &created.commit, "workspaces/umbrella.yaml").expect("file");
    assert!(
        text.starts_with("# yaml-language-server: $schema=../schemas/workspace.json\napiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: umbrella\nspec:\n  region: sgp-1\n"),
        "{text}"
    );
    assert_eq!(valid_at(&remote, &created.commit), Vec::<String>::new());

    // Replacing acme with a changed document rewrites only what changed.
    let mut changed = acme.clone();
    changed["spec"]["deletionPolicy"] = json!("Delete");
    let updated = writer
        .write(request(Change::PutWorkspace {
            id: "acme".into(),
            document: changed,
        }))
        .await
        .expect("update");
    assert!(!updated.created && updated.changed);
    let before = file_at(&remote, &created.commit, "workspaces/acme.yaml").expect("acme");
    let after = file_at(&remote, &updated.commit, "workspaces/acme.yaml").expect("acme");
    assert_eq!(
        after,
        before.replace("deletionPolicy: Retain", "deletionPolicy: Delete")
    );

    let deleted = writer
        .write(request(Change::DeleteWorkspace {
            id: "umbrella".into(),
        }))
        .await
        .expect("delete");
    assert_eq!(
        file_at(&remote, &deleted.commit, "workspaces/umbrella.yaml"),
        None
    );
    let again = writer
        .write(request(Change::DeleteWorkspace {
            id: "umbrella".into(),
        }))
        .await
        .expect_err("gone");
    assert_eq!(again.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_changes_are_refused_with_file_line_and_change_nothing() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let writer = start(&remote, &branch, None);
    let before = head(&remote, &branch);

    let err = writer
        .write(request(put_stack(
            "acme",
            "superset",
            json!({"replicas": "many"}),
        )))
        .await
        .expect_err("wrong type");
    let Error::Invalid(diags) = &err else {
        panic!("{err:?}")
    };
    let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["workspaces/acme.yaml:40:19: spec.stacks[2].values.replicas: expected integer, found string"],
        "{shown:#?}"
    );
    assert_eq!(err.status(), 422);

    let mut doc: serde_json::Value =
        serde_yaml::from_str(&file_at(&remote, &branch, "workspaces/globex.yaml").expect("globex"))
            .expect("yaml");
    doc["spec"]["regoin"] = json!("sgp-1");
    let err = writer
        .write(request(Change::PutWorkspace {
            id: "globex".into(),
            document: doc,
        }))
        .await
        .expect_err("unknown field");
    let Error::Invalid(diags) = &err else {
        panic!("{err:?}")
    };
    assert!(
        diags[0].to_string().starts_with("workspaces/globex.yaml:")
            && diags[0].message.contains("unknown field `regoin`"),
        "{diags:?}"
    );

    // A document whose name is not its file name, a stack that does not exist, a bad id.
    let err = writer
        .write(request(put_stack("acme", "spark", json!({}))))
        .await
        .expect_err("no such stack");
    let Error::Invalid(diags) = &err else {
        panic!("{err:?}")
    };
    assert!(
        diags[0]
            .message
            .contains("stack `spark` does not exist (no stacks/spark/stack.yaml)"),
        "{diags:?}"
    );
    let err = writer
        .write(request(Change::DeleteWorkspace {
            id: "../cplane".into(),
        }))
        .await
        .expect_err("bad id");
    assert_eq!(err.status(), 422, "{err}");
    assert_eq!(head(&remote, &branch), before, "nothing was committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_answers_412_when_the_file_changed_since() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let writer = start(&remote, &branch, None);
    let seen = head(&remote, &branch);
    writer
        .write(request(put_stack(
            "acme",
            "superset",
            json!({"replicas": 3}),
        )))
        .await
        .expect("first");
    let stale = Request {
        if_match: Some(seen.clone()),
        ..request(put_stack("acme", "superset", json!({"replicas": 4})))
    };
    let err = writer.write(stale).await.expect_err("stale");
    assert_eq!(err.status(), 412, "{err}");
    // Another file did not change since `seen`: accepted.
    let fresh = Request {
        if_match: Some(format!("\"{seen}\"")),
        ..request(put_stack("globex", "superset", json!({})))
    };
    writer.write(fresh).await.expect("globex unchanged since");
    let unknown = Request {
        if_match: Some("0123456789012345678901234567890123456789".into()),
        ..request(put_stack("globex", "trino", json!({})))
    };
    assert_eq!(
        writer.write(unknown).await.expect_err("unknown").status(),
        412
    );
    // An entity tag is a commit id: a branch name (which always "matches") is not taken.
    let named = Request {
        if_match: Some(format!("\"{branch}\"")),
        ..request(put_stack("globex", "trino", json!({})))
    };
    assert_eq!(writer.write(named).await.expect_err("name").status(), 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_mode_pushes_a_branch_and_leaves_the_branch_alone() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let writer = start(&remote, &branch, None);
    let before = head(&remote, &branch);
    let pr = Request {
        mode: Mode::PullRequest,
        ..request(put_stack("globex", "superset", json!({"replicas": 2})))
    };
    let w = writer.write(pr.clone()).await.expect("pr");
    assert_eq!(
        w.branch.as_deref(),
        Some("cplane/alice/globex-enable-stack-superset")
    );
    assert_eq!(head(&remote, &branch), before);
    assert_eq!(
        head(&remote, "cplane/alice/globex-enable-stack-superset"),
        w.commit
    );
    let text = file_at(&remote, &w.commit, "workspaces/globex.yaml").expect("globex");
    assert!(
        text.contains("- name: superset\n      values:\n        replicas: 2\n"),
        "{text}"
    );
    // Asking again moves the same branch to a new commit on the current head.
    let again = writer.write(pr).await.expect("pr again");
    assert_eq!(again.branch, w.branch);
    assert_eq!(
        head(&remote, "cplane/alice/globex-enable-stack-superset"),
        again.commit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_head_rebuilds_stack_changes_and_refuses_stale_replacements() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let engineer = Arc::new(Engineer::clone(&remote, &branch));
    // Right before the writer's next compare-and-swap (once armed), an engineer pushes a
    // change to acme.
    let fired = Arc::new(AtomicUsize::new(0));
    let hook: Arc<dyn Fn() + Send + Sync> = {
        let (engineer, fired) = (engineer.clone(), fired.clone());
        Arc::new(move || {
            let n = fired.fetch_add(1, Ordering::SeqCst);
            if n == 0 || n == 50 || n == 100 {
                engineer.push_edit(
                    "workspaces/acme.yaml",
                    |t| format!("{t}# external edit {n}\n"),
                    "acme: external edit",
                );
            }
        })
    };
    let writer = start(&remote, &branch, Some(hook));
    let w = writer
        .write(request(put_stack(
            "acme",
            "airflow",
            json!({"dagsRepo": "https://x.example.com/d.git"}),
        )))
        .await
        .expect("rebuilt on the new head");
    let repo = git2::Repository::open_bare(&remote).expect("bare");
    let commit = repo
        .find_commit(git2::Oid::from_str(&w.commit).expect("oid"))
        .expect("commit");
    let parent = commit.parent(0).expect("parent");
    assert_eq!(parent.summary().ok().flatten(), Some("acme: external edit"));
    let text = file_at(&remote, &w.commit, "workspaces/acme.yaml").expect("acme");
    assert!(
        text.contains("# external edit 0") && text.contains("name: airflow"),
        "both changes are in: {text}"
    );

    // A merge patch is applied again to the file as the moved head has it, like a stack change.
    fired.store(50, Ordering::SeqCst);
    let p = writer
        .write(request(patch_stack(
            "acme",
            "trino",
            json!({"values": {"workers": 9}}),
        )))
        .await
        .expect("patch rebuilt on the new head");
    let commit = repo
        .find_commit(git2::Oid::from_str(&p.commit).expect("oid"))
        .expect("commit");
    let parent = commit.parent(0).expect("parent");
    assert_eq!(parent.summary().ok().flatten(), Some("acme: external edit"));
    let text = file_at(&remote, &p.commit, "workspaces/acme.yaml").expect("acme");
    assert!(
        text.contains("# external edit 50") && text.contains("        workers: 9\n"),
        "both changes are in: {text}"
    );

    // A whole-document replacement built before an external change to the same file: 409.
    fired.store(100, Ordering::SeqCst);
    let mut doc: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
    doc["spec"]["deletionPolicy"] = json!("Delete");
    let err = writer
        .write(request(Change::PutWorkspace {
            id: "acme".into(),
            document: doc,
        }))
        .await
        .expect_err("stale replacement");
    assert_eq!(err.status(), 409, "{err}");
    let now = head(&remote, &branch);
    let repo = git2::Repository::open_bare(&remote).expect("bare");
    let top = repo
        .find_commit(git2::Oid::from_str(&now).expect("oid"))
        .expect("head");
    assert_eq!(top.summary().ok().flatten(), Some("acme: external edit"));
    let text = file_at(&remote, &now, "workspaces/acme.yaml").expect("acme");
    assert!(text.contains("# external edit 100") && text.contains("deletionPolicy: Retain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_writers_all_land_in_a_linear_history_despite_external_pushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    cplane_reconciler::synthetic::generate(
        &work,
        cplane_reconciler::synthetic::Shape {
            workspaces: 80,
            regions: 2,
        },
    )
    .expect("generate");
    let (bare, branch) = bare_of(&work);
    let remote = remote(&bare);
    let start_head = head(&remote, &branch);
    let writer = start(&remote, &branch, None);

    // An engineer pushes 6 commits with the git CLI while the API writes.
    let engineer = Engineer::clone(&remote, &branch);
    let rejected = Arc::new(Mutex::new(0));
    let pusher = {
        let rejected = rejected.clone();
        std::thread::spawn(move || {
            for i in 0..6 {
                let path = format!("workspaces/ws{:05}.yaml", 70 + i);
                let n = engineer.push_edit(
                    &path,
                    |t| t.replace("deletionPolicy: Retain", "deletionPolicy: Delete"),
                    &format!("external change {i}"),
                );
                *rejected.lock().expect("lock") += n;
            }
        })
    };
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let r = Request {
                    user: User {
                        name: format!("Writer {i}"),
                        email: format!("writer{i}@example.com"),
                    },
                    ..request(put_stack(
                        &format!("ws{i:05}"),
                        "superset",
                        json!({"replicas": i + 1}),
                    ))
                };
                writer.write(r).await
            })
        })
        .collect();
    let mut commits = Vec::new();
    for t in tasks {
        let w = t.await.expect("task").expect("every write lands");
        assert!(w.changed);
        commits.push(w.commit);
    }
    pusher.join().expect("pusher");

    let end = head(&remote, &branch);
    let count = |args: &[&str]| -> Vec<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&remote)
            .output()
            .expect("git");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let range = format!("{start_head}..{end}");
    let history = count(&["rev-list", &range]);
    assert_eq!(history.len(), 64 + 6, "one commit per change");
    assert!(
        count(&["rev-list", "--merges", &range]).is_empty(),
        "no merges"
    );
    for c in &commits {
        assert!(history.contains(c), "API commit {c} is on the branch");
    }
    for i in 0..64 {
        let text = file_at(&remote, &end, &format!("workspaces/ws{i:05}.yaml")).expect("workspace");
        assert!(
            text.contains(&format!(
                "    - name: superset\n      values:\n        replicas: {}\n",
                i + 1
            )),
            "ws{i:05}: {text}"
        );
    }
    for i in 0..6 {
        let text =
            file_at(&remote, &end, &format!("workspaces/ws{:05}.yaml", 70 + i)).expect("workspace");
        assert!(text.contains("deletionPolicy: Delete"), "{text}");
    }
    assert_eq!(valid_at(&remote, &end), Vec::<String>::new());
    // The packs the writer sent are sound (every object reachable, every id checked).
    assert_fsck_clean(&remote);
    let authors = count(&["log", "--format=%an|%cn", &range]);
    assert_eq!(
        authors.iter().filter(|a| a.ends_with("|cplane")).count(),
        64,
        "{authors:?}"
    );
}

/// Changes queued together are built as one chain, each commit on the previous one: a change to
/// a file that an earlier commit of the chain changed starts from that commit's version (read
/// back from the in-memory object database the chain is built in), so no change is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_one_file_queued_together_build_on_each_other() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let start_head = head(&remote, &branch);
    let original = file_at(&remote, &start_head, "workspaces/acme.yaml").expect("acme");
    // The first publish waits until the test lets it go: the other changes queue up behind it
    // and are built together.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let publishes = Arc::new(AtomicUsize::new(0));
    let hook: Arc<dyn Fn() + Send + Sync> = {
        let publishes = publishes.clone();
        Arc::new(move || {
            if publishes.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = gate.lock().expect("gate").recv();
            }
        })
    };
    let writer = start(&remote, &branch, Some(hook));
    let patch = |stack: &str, values: serde_json::Value| {
        let (writer, stack) = (writer.clone(), stack.to_owned());
        tokio::spawn(async move {
            writer
                .write(request(patch_stack(
                    "acme",
                    &stack,
                    json!({ "values": values }),
                )))
                .await
        })
    };
    let first = patch("bff", json!({"replicas": 5}));
    for _ in 0..200 {
        if publishes.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        publishes.load(Ordering::SeqCst),
        1,
        "the first publish is held"
    );
    let queued = vec![
        patch("trino", json!({"workers": 7})),
        patch("superset", json!({"replicas": 4})),
        patch(
            "superset",
            json!({"featureFlags": {"ALERT_REPORTS": false}}),
        ),
        patch("trino", json!({"serviceAccountRole": "acme-trino-glue-2"})),
    ];
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    release.send(()).expect("release");
    let mut commits = vec![first.await.expect("task").expect("lands").commit];
    for task in queued {
        commits.push(task.await.expect("task").expect("lands").commit);
    }
    // Four changes queued behind the held publish: at most three more publishes means at
    // least two of them were built into one chain (2 when all four made it in time).
    let publishes = publishes.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&publishes),
        "queued changes were built as one chain: {publishes} publishes"
    );

    let end = head(&remote, &branch);
    let expected = original
        .replace(
            "        replicas: 3\n        resources:",
            "        replicas: 5\n        resources:",
        )
        .replace("        workers: 4\n", "        workers: 7\n")
        .replace(
            "serviceAccountRole: acme-trino-glue\n",
            "serviceAccountRole: acme-trino-glue-2\n",
        )
        .replace(
            "        replicas: 2\n        featureFlags:\n          ALERT_REPORTS: true",
            "        replicas: 4\n        featureFlags:\n          ALERT_REPORTS: false",
        );
    assert_ne!(expected, original);
    assert_eq!(
        file_at(&remote, &end, "workspaces/acme.yaml").expect("acme"),
        expected,
        "every change of the chain is in the file"
    );
    let history = git(&remote, &["rev-list", &format!("{start_head}..{end}")]);
    let history = String::from_utf8_lossy(&history.stdout);
    assert_eq!(
        history.lines().count(),
        5,
        "one commit per change: {history}"
    );
    for c in &commits {
        assert!(history.contains(c.as_str()), "{c} is on the branch");
    }
    assert_fsck_clean(&remote);
}

/// A publish hook that, once armed (set to 1), takes the lock file `lock` as another git process
/// would, releases it 150 ms later, and disarms itself.
fn lock_on_publish(lock: PathBuf) -> (Arc<AtomicUsize>, Arc<dyn Fn() + Send + Sync>) {
    let armed = Arc::new(AtomicUsize::new(0));
    let hook: Arc<dyn Fn() + Send + Sync> = {
        let armed = armed.clone();
        Arc::new(move || {
            if armed.swap(0, Ordering::SeqCst) == 1 {
                std::fs::write(&lock, b"").expect("lock");
                let lock = lock.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(150));
                    std::fs::remove_file(&lock).expect("unlock");
                });
            }
        })
    };
    (armed, hook)
}

/// Another process holding the branch's lock file (a `git push` under way) is waited for, not
/// answered with an error; a lock that is never released is reported by name after the
/// retries, and left alone, and no pack is written for the refused change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_locked_by_another_process_is_waited_for() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let lock = remote.join(format!("refs/heads/{branch}.lock"));
    // Once armed, right before the writer publishes, a "push" takes the lock for 150 ms.
    let (armed, hook) = lock_on_publish(lock.clone());
    let writer = start(&remote, &branch, Some(hook));
    armed.store(1, Ordering::SeqCst);
    let written = writer
        .write(request(put_stack("acme", "bff", json!({"replicas": 5}))))
        .await
        .expect("lands once the lock is released");
    assert_eq!(armed.load(Ordering::SeqCst), 0, "the lock was taken");
    assert_eq!(head(&remote, &branch), written.commit);

    // Left behind by a process that died: refused by name, nothing changed, the file kept.
    let now = head(&remote, &branch);
    let packs = || {
        std::fs::read_dir(remote.join("objects/pack"))
            .expect("packs")
            .count()
    };
    let before = packs();
    std::fs::write(&lock, format!("{now}\n")).expect("lock");
    let e = writer
        .write(request(put_stack("acme", "bff", json!({"replicas": 6}))))
        .await
        .expect_err("refused while locked");
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert!(
        e.to_string().contains(&format!("refs/heads/{branch}.lock")),
        "{e}"
    );
    assert_eq!(head(&remote, &branch), now);
    assert_eq!(packs(), before, "no pack written for a refused change");
    assert!(lock.exists(), "another process's lock is not removed");
    std::fs::remove_file(&lock).expect("unlock");
    writer
        .write(request(put_stack("acme", "bff", json!({"replicas": 6}))))
        .await
        .expect("lands");
    assert_ne!(head(&remote, &branch), now);
}

/// `git daemon` serving `base` on a free port (fetch and push), stopped on drop.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git_daemon(base: &Path) -> (Daemon, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
        ])
        .arg(format!("--base-path={}", base.display()))
        .args(["--listen=127.0.0.1", &format!("--port={port}")])
        .arg(base)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git daemon");
    let daemon = Daemon(child);
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed().as_secs() < 10, "git daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (daemon, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_protocol_remote_is_pushed_to_with_compare_and_swap() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let (_daemon, port) = git_daemon(bare.path());
    let url = format!("git://127.0.0.1:{port}/state.git");
    let engineer = Arc::new(Engineer::clone(&remote, &branch));
    let fired = Arc::new(AtomicUsize::new(1));
    let hook: Arc<dyn Fn() + Send + Sync> = {
        let (engineer, fired) = (engineer.clone(), fired.clone());
        Arc::new(move || {
            if fired.fetch_add(1, Ordering::SeqCst) == 0 {
                engineer.push_edit(
                    "workspaces/globex.yaml",
                    |t| format!("{t}# external edit\n"),
                    "globex: external edit",
                );
            }
        })
    };
    let mirror = bare.path().join("mirror.git");
    let writer = Writer::start(Config {
        repo_url: url,
        branch: branch.clone(),
        mirror: mirror.clone(),
        committer: ("cplane".into(), "cplane@cplane.local".into()),
        on_commit: Arc::new(|_| {}),
        before_publish: Some(hook),
    });
    let first = writer
        .write(request(put_stack(
            "acme",
            "airflow",
            json!({"dagsRepo": "https://x.example.com/d.git"}),
        )))
        .await
        .expect("pushed over git://");
    assert_eq!(head(&remote, &branch), first.commit);

    // An external push right before the next push: the writer fetches, rebuilds, pushes.
    fired.store(0, Ordering::SeqCst);
    let second = writer
        .write(request(put_stack(
            "acme",
            "superset",
            json!({"replicas": 2}),
        )))
        .await
        .expect("rebuilt and pushed");
    assert_eq!(head(&remote, &branch), second.commit);
    let repo = git2::Repository::open_bare(&remote).expect("bare");
    let commit = repo
        .find_commit(git2::Oid::from_str(&second.commit).expect("oid"))
        .expect("commit");
    assert_eq!(
        commit.parent(0).expect("parent").summary().ok().flatten(),
        Some("globex: external edit")
    );
    let pr = writer
        .write(Request {
            mode: Mode::PullRequest,
            ..request(put_stack("globex", "trino", json!({})))
        })
        .await
        .expect("pr branch over git://");
    assert_eq!(
        head(&remote, pr.branch.as_deref().expect("branch")),
        pr.commit
    );
    assert_fsck_clean(&remote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_out_working_copy_gets_the_changed_files_and_keeps_local_edits() {
    // `cplane up`'s state repo: a working copy whose checked-out branch is the one written.
    let work = support::template_repo();
    let branch = checked_out(work.path());
    let writer = start(work.path(), &branch, None);
    let w = writer
        .write(request(put_stack(
            "acme",
            "airflow",
            json!({"dagsRepo": "https://x.example.com/d.git"}),
        )))
        .await
        .expect("written");
    let status =
        |dir: &Path| String::from_utf8(git(dir, &["status", "--porcelain"]).stdout).expect("utf-8");
    assert_eq!(
        status(work.path()),
        "",
        "working tree and index follow the commit"
    );
    let head_out = git(work.path(), &["rev-parse", "HEAD"]);
    assert_eq!(String::from_utf8_lossy(&head_out.stdout).trim(), w.commit);
    let text = std::fs::read_to_string(work.path().join("workspaces/acme.yaml")).expect("read");
    assert!(text.contains("name: airflow"), "{text}");

    // An uncommitted edit of globex: writes to globex are refused (409), others go through and
    // leave the edit alone.
    let globex = work.path().join("workspaces/globex.yaml");
    let edited = format!(
        "{}# local edit\n",
        std::fs::read_to_string(&globex).expect("read")
    );
    std::fs::write(&globex, &edited).expect("write");
    let err = writer
        .write(request(put_stack("globex", "superset", json!({}))))
        .await
        .expect_err("dirty file");
    assert_eq!(err.status(), 409, "{err}");
    assert!(err.to_string().contains("uncommitted changes"), "{err}");
    writer
        .write(request(Change::DeleteStack {
            workspace: "acme".into(),
            stack: "airflow".into(),
        }))
        .await
        .expect("another file");
    assert_eq!(std::fs::read_to_string(&globex).expect("read"), edited);
    assert_eq!(status(work.path()), " M workspaces/globex.yaml\n");
}

/// In a checked-out working copy, the writer updates the index as git does: what the user
/// staged meanwhile stays staged, and an index locked by a git command is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_copy_keeps_what_its_user_staged_and_waits_for_its_index_lock() {
    let work = support::template_repo();
    let branch = checked_out(work.path());
    // Once armed, right before the writer publishes, a git command takes the index for 150 ms.
    let lock = work.path().join(".git/index.lock");
    let (armed, hook) = lock_on_publish(lock.clone());
    let writer = start(work.path(), &branch, Some(hook));
    let status =
        |dir: &Path| String::from_utf8(git(dir, &["status", "--porcelain"]).stdout).expect("utf-8");
    // A first write, so that the writer has read the index before the user stages anything.
    writer
        .write(request(put_stack("acme", "bff", json!({"replicas": 5}))))
        .await
        .expect("written");
    assert_eq!(status(work.path()), "");
    let globex = work.path().join("workspaces/globex.yaml");
    let edited = format!(
        "{}# staged edit\n",
        std::fs::read_to_string(&globex).expect("read")
    );
    std::fs::write(&globex, &edited).expect("write");
    assert!(git(work.path(), &["add", "workspaces/globex.yaml"])
        .status
        .success());
    writer
        .write(request(put_stack("acme", "bff", json!({"replicas": 6}))))
        .await
        .expect("written");
    assert_eq!(
        status(work.path()),
        "M  workspaces/globex.yaml\n",
        "the user's staged edit is still staged"
    );

    armed.store(1, Ordering::SeqCst);
    let w = writer
        .write(request(put_stack("acme", "bff", json!({"replicas": 7}))))
        .await
        .expect("lands once the index is released");
    assert_eq!(armed.load(Ordering::SeqCst), 0, "the index was locked");
    let head_out = git(work.path(), &["rev-parse", "HEAD"]);
    assert_eq!(String::from_utf8_lossy(&head_out.stdout).trim(), w.commit);
    assert_eq!(
        status(work.path()),
        "M  workspaces/globex.yaml\n",
        "the index followed the commit once released"
    );

    // A removal staged with `git rm --cached`: the file on disk is the committed one, the
    // index is not. A write to it is refused (409), and the staging is kept.
    assert!(git(
        work.path(),
        &["rm", "-q", "--cached", "workspaces/acme.yaml"]
    )
    .status
    .success());
    let e = writer
        .write(request(put_stack("acme", "bff", json!({"replicas": 8}))))
        .await
        .expect_err("a staged change to the file");
    assert_eq!(e.status(), 409, "{e}");
    assert!(
        status(work.path()).starts_with("D  workspaces/acme.yaml\n"),
        "{}",
        status(work.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_enforces_account_access_on_the_file_it_edits() {
    let work = support::template_repo();
    let (bare, branch) = bare_of(work.path());
    let remote = remote(&bare);
    let writer = start(&remote, &branch, None);
    let before = head(&remote, &branch);
    let member_of =
        |account: &str| Access::Accounts(std::collections::BTreeSet::from([account.to_owned()]));
    // globex belongs to account globex: a member of acme-corp may not touch it.
    let err = writer
        .write(Request {
            access: member_of("acme-corp"),
            ..request(put_stack("globex", "superset", json!({})))
        })
        .await
        .expect_err("other account");
    assert_eq!(err.status(), 403, "{err}");
    // Nor move acme to globex's account, though acme is theirs.
    let mut acme: serde_json::Value =
        serde_yaml::from_str(&file_at(&remote, &branch, "workspaces/acme.yaml").expect("acme"))
            .expect("yaml");
    acme["spec"]["account"] = json!("globex");
    let err = writer
        .write(Request {
            access: member_of("acme-corp"),
            ..request(Change::PutWorkspace {
                id: "acme".into(),
                document: acme,
            })
        })
        .await
        .expect_err("moving to another account");
    assert_eq!(err.status(), 403, "{err}");
    assert_eq!(head(&remote, &branch), before);
    assert_eq!(writer.account_of("acme").as_deref(), Some("acme-corp"));
    let ok = writer
        .write(Request {
            access: member_of("acme-corp"),
            ..request(put_stack("acme", "superset", json!({"replicas": 2})))
        })
        .await
        .expect("own account");
    assert!(ok.changed);
}
