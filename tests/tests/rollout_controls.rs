//! End to end, on a few clusters each ([`cplane_e2e::rollout`]: `cplane serve`, agents, test
//! Kubernetes API servers): what holds a rollout back and what moves it on.
//!
//! - a deny sync window holds publishing until it closes (a window computed from the clock:
//!   it opened this minute and closes 20 s after the commit); one committed mid-rollout holds
//!   the rollout's clusters until a commit lifts it;
//! - `spec.suspend: true` holds a workspace's cloud steps and bundle, unsuspending publishes;
//! - `promote` passes a gate that cannot pass and skips a bake;
//! - `maxUnavailable` caps the clusters published and not yet healthy, as the server records
//!   them (agents start only for clusters the server has published, so a cluster published
//!   beyond the cap would stay visible until the test looks);
//! - `onFailure: abort` stops a rollout for good, and a later revision still rolls out;
//! - the HTTP controls: admins act (recorded with their email), others get 403;
//! - cluster status tells in-sync, behind, failed, offline, never-reported and suspended.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cplane_e2e::rollout::{cluster, wait_for, Agents, Plane, Server, StateRepo};
use serde_json::Value;

/// A state repo of `n` workspaces (the first `canaries` labelled canaries) and `cplane serve`
/// on it (`plane` adds to how it starts), once every cluster has its first bundle.
fn start(
    n: usize,
    canaries: usize,
    policy: &str,
    plane: impl FnOnce(Plane) -> Plane,
) -> (tempfile::TempDir, StateRepo, Server) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = StateRepo::create(&tmp.path().join("state"), n, canaries, policy);
    let server = plane(Plane::sqlite(&repo, tmp.path())).start();
    (tmp, repo, server)
}

fn published(s: &Server, n: usize) -> Vec<String> {
    wait_for("every cluster published", || {
        (0..n).all(|i| s.current(&cluster(i)).is_some())
    });
    (0..n)
        .map(|i| s.current(&cluster(i)).expect("published"))
        .collect()
}

/// Waits until clusters `which` run app `version` and their agents reported it.
fn wait_version(s: &Server, agents: &Agents, which: &[usize], version: &str) {
    wait_for(&format!("app {version} on {which:?}, reported"), || {
        which.iter().all(|i| {
            agents.version_on(*i).as_deref() == Some(version)
                && s.reported(&cluster(*i)).is_some()
                && s.reported(&cluster(*i)) == s.current(&cluster(*i))
        })
    });
}

fn member<'a>(rollout: &'a Value, wave: usize, c: &str) -> &'a Value {
    rollout["waves"][wave]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["cluster"] == c))
        .unwrap_or(&Value::Null)
}

fn events(rollout: &Value) -> Vec<(String, String)> {
    rollout["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["actor"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The value of `cplane_clusters{state="…"}` on the server's `/metrics`.
fn clusters_in(s: &Server, state: &str) -> i64 {
    let prefix = format!("cplane_clusters{{state=\"{state}\"}} ");
    s.call("GET", "/metrics", &[], b"")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

const CANARY_THEN_REST: &str =
    "{waves: [{name: canary, labels: {tier: canary}}, {name: rest}], healthTimeout: 1h}";

#[test]
fn a_deny_window_holds_publishing_until_it_closes() {
    let (tmp, mut repo, s) = start(5, 1, CANARY_THEN_REST, |p| p);
    let v1 = published(&s, 5);
    let agents = Agents::all(&s, tmp.path(), 5);
    wait_version(&s, &agents, &[0, 1, 2, 3, 4], "1");

    // A deny window for every cluster that opened at the start of this minute and closes 20 s
    // from now; workspace t04 has its own deny window, open for an hour.
    let now = unix_now();
    let (minute, hour) = ((now / 60) % 60, (now / 3600) % 24);
    let closes = now + 20;
    let length = closes - (now - now % 60);
    repo.platform_spec(&format!(
        "  syncWindows:\n    - {{kind: deny, schedule: \"{minute} {hour} * * *\", duration: {length}s}}\n"
    ));
    repo.workspace_spec(
        4,
        &format!(
            "  syncWindows:\n    - {{kind: deny, schedule: \"{minute} {hour} * * *\", duration: 1h}}\n"
        ),
    );
    repo.app("2", CANARY_THEN_REST);
    repo.commit("app 2 during a deny window");
    wait_for("the canary held by the window", || {
        member(&s.newest_rollout(), 0, "w-t00")["state"] == "held"
    });
    assert!(
        unix_now() + 2 < closes,
        "the server took too long to see the commit: the window is about to close"
    );
    let held = s.newest_rollout();
    assert_eq!(
        member(&held, 0, "w-t00")["message"],
        "sync window closed",
        "{held:#}"
    );
    assert_eq!(held["state"], "progressing", "{held:#}");
    for (i, v) in v1.iter().enumerate() {
        assert_eq!(s.current(&cluster(i)).as_ref(), Some(v), "{i} untouched");
        assert_eq!(agents.version_on(i).as_deref(), Some("1"));
    }
    let t00 = s.cluster_status("w-t00");
    assert_eq!(t00["state"], "behind", "{t00:#}");
    assert_eq!(t00["behind_by"], 1, "{t00:#}");
    assert_eq!(t00["rollout"]["cluster_state"], "held", "{t00:#}");

    // The window closes: the canary, then the rest go, except t04 inside its own window.
    wait_version(&s, &agents, &[0, 1, 2, 3], "2");
    assert!(unix_now() >= closes, "published before the window closed");
    let r = s.newest_rollout();
    assert_eq!(r["state"], "progressing", "{r:#}");
    assert_eq!(r["wave_name"], "rest", "{r:#}");
    assert_eq!(member(&r, 1, "w-t04")["state"], "held", "{r:#}");
    assert_eq!(
        member(&r, 1, "w-t04")["message"],
        "sync window closed",
        "{r:#}"
    );
    assert_eq!(s.current("w-t04").as_ref(), Some(&v1[4]));
    assert_eq!(agents.version_on(4).as_deref(), Some("1"));
}

#[test]
fn a_suspended_workspace_gets_no_cloud_steps_nor_bundle_until_unsuspended() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut repo = StateRepo::create(&tmp.path().join("state"), 5, 1, CANARY_THEN_REST);
    // t04 is suspended before the control plane ever sees it.
    repo.workspace_spec(4, "  suspend: true\n");
    repo.commit("t04 suspended");
    let s = Plane::sqlite(&repo, tmp.path()).start();
    let v1 = published(&s, 4);
    let mut agents = Agents::new(&s, tmp.path(), 5);
    for i in 0..4 {
        agents.start(i);
    }
    wait_version(&s, &agents, &[0, 1, 2, 3], "1");
    // No cloud step (its lookup entry is written by the provisioning steps), no bundle.
    assert_eq!(s.call("GET", "/lookup/w-t00", &[], b"").0, 200);
    assert_eq!(s.call("GET", "/lookup/w-t04", &[], b"").0, 404);
    let t04 = s.cluster_status("w-t04");
    assert_eq!(t04["state"], "suspended", "{t04:#}");
    assert!(t04["current"].is_null(), "{t04:#}");
    let ws = s.get_json("/v1/workspaces/t04");
    assert!(
        ws["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "Suspended" && c["status"] == "True"),
        "{ws:#}"
    );
    assert_eq!(clusters_in(&s, "suspended"), 1);

    // A stack change while t03 is suspended too: the rollout goes around it.
    repo.workspace_spec(3, "  suspend: true\n");
    repo.app("2", CANARY_THEN_REST);
    repo.commit("app 2, t03 suspended");
    wait_for("the rollout completes", || {
        s.newest_rollout()["state"] == "completed"
    });
    wait_version(&s, &agents, &[0, 1, 2], "2");
    let r = s.newest_rollout();
    assert_eq!(member(&r, 1, "w-t03")["state"], "held", "{r:#}");
    assert_eq!(
        member(&r, 1, "w-t03")["message"],
        "workspace suspended",
        "{r:#}"
    );
    assert!(member(&r, 1, "w-t04").is_null(), "never published: {r:#}");
    assert_eq!(s.current("w-t03").as_ref(), Some(&v1[3]));
    assert_eq!(agents.version_on(3).as_deref(), Some("1"));
    assert_eq!(s.cluster_status("w-t03")["state"], "suspended");
    assert_eq!(clusters_in(&s, "suspended"), 2);

    // Unsuspended: t04 is provisioned and both get app 2.
    repo.workspace_spec(3, "");
    repo.workspace_spec(4, "");
    repo.commit("t03 and t04 unsuspended");
    wait_for("t04 provisioned and published", || {
        s.call("GET", "/lookup/w-t04", &[], b"").0 == 200 && s.current("w-t04").is_some()
    });
    agents.start(4);
    wait_version(&s, &agents, &[3, 4], "2");
    for i in 0..5 {
        let st = s.cluster_status(&cluster(i));
        assert_eq!(st["state"], "in-sync", "{st:#}");
        assert_eq!(st["behind_by"], 0, "{st:#}");
    }
    assert_eq!(clusters_in(&s, "suspended"), 0);
    assert_eq!(clusters_in(&s, "in-sync"), 5);
}

#[test]
fn promote_passes_a_stuck_gate_and_skips_the_bake() {
    let policy = "    waves:\n      - name: canary\n        labels: {tier: canary}\n      - name: early\n        count: 1\n      - name: rest\n    healthTimeout: 1h\n    bakeTime: 1h\n";
    let (tmp, repo, s) = start(4, 1, policy, |p| p);
    let v1 = published(&s, 4);
    // The canary's agent never runs: its gate cannot pass.
    let mut agents = Agents::new(&s, tmp.path(), 4);
    for i in 1..4 {
        agents.start(i);
    }
    wait_version(&s, &agents, &[1, 2, 3], "1");
    repo.app("2", policy);
    repo.commit("app 2");
    wait_for("the canary published", || {
        member(&s.newest_rollout(), 0, "w-t00")["state"] == "published"
    });
    let id = s.newest_rollout()["id"].as_str().expect("id").to_owned();
    assert_eq!(s.cluster_status("w-t00")["state"], "never-reported");

    s.cplane(&["rollout", "promote", &id, "--actor", "ops@example.com"]);
    wait_version(&s, &agents, &[1], "2");
    wait_for("the early wave's gate passed: baking", || {
        s.rollout(&id)["state"] == "baking"
    });
    let baking = s.rollout(&id);
    assert_eq!(baking["wave_name"], "early", "{baking:#}");
    let metrics = s.call("GET", "/metrics", &[], b"").1;
    assert!(
        metrics.contains(&format!(
            "cplane_rollout_wave_seconds{{rollout=\"{id}\",state=\"baking\",wave=\"early\"}} "
        )),
        "{metrics}"
    );
    for i in [2, 3] {
        assert_eq!(
            s.current(&cluster(i)).as_ref(),
            Some(&v1[i]),
            "held by the bake"
        );
    }
    s.cplane(&["rollout", "promote", &id, "--actor", "ops@example.com"]);
    wait_version(&s, &agents, &[2, 3], "2");
    wait_for("completed", || s.rollout(&id)["state"] == "completed");
    assert!(
        !s.call("GET", "/metrics", &[], b"")
            .1
            .contains("cplane_rollout_wave_seconds{"),
        "no active rollout, no series"
    );
    let done = s.rollout(&id);
    assert_eq!(
        member(&done, 0, "w-t00")["state"],
        "published",
        "its gate was passed by hand: {done:#}"
    );
    let promotes: Vec<_> = events(&done)
        .into_iter()
        .filter(|(a, _)| a == "promote")
        .collect();
    assert_eq!(
        promotes,
        vec![
            ("promote".to_owned(), "ops@example.com".to_owned()),
            ("promote".to_owned(), "ops@example.com".to_owned())
        ],
        "{done:#}"
    );
}

#[test]
fn max_unavailable_caps_the_clusters_not_yet_healthy() {
    const N: usize = 7;
    let policy = "{waves: [{name: all}], maxUnavailable: 2, healthTimeout: 1h}";
    let (tmp, repo, s) = start(N, 0, policy, |p| p);
    let v1 = published(&s, N);
    let mut agents = Agents::new(&s, tmp.path(), N);
    repo.app("2", policy);
    repo.commit("app 2");
    let mut most = 0;
    let mut looked = 0;
    wait_for("the rollout completes", || {
        let r = s.newest_rollout();
        if r.is_null() {
            return false;
        }
        looked += 1;
        let in_flight: Vec<usize> = (0..N)
            .filter(|i| member(&r, 0, &cluster(*i))["state"] == "published")
            .collect();
        assert!(in_flight.len() <= 2, "{in_flight:?} at once: {r:#}");
        // The server's view of each cluster agrees: pointed at app 2, not yet reported it.
        let unhealthy: Vec<usize> = (0..N)
            .filter(|i| {
                let c = cluster(*i);
                let current = s.current(&c);
                current.as_ref() != Some(&v1[*i]) && s.reported(&c) != current
            })
            .collect();
        assert!(unhealthy.len() <= 2, "{unhealthy:?} not yet healthy");
        most = most.max(in_flight.len());
        // Only now does a published cluster's agent start (and make it healthy).
        for i in in_flight {
            agents.start(i);
        }
        r["state"] == "completed"
    });
    assert_eq!(most, 2, "the cap was reached ({looked} looks)");
    wait_version(&s, &agents, &(0..N).collect::<Vec<_>>(), "2");
    let r = s.newest_rollout();
    assert_eq!(r["waves"][0]["done"], N, "{r:#}");
}

#[test]
fn on_failure_abort_stops_the_rollout_for_good() {
    let policy = "{waves: [{name: canary, labels: {tier: canary}}, {name: rest}], healthTimeout: 30s, onFailure: abort}";
    let (tmp, repo, s) = start(5, 2, policy, |p| p);
    let v1 = published(&s, 5);
    let agents = Agents::all(&s, tmp.path(), 5);
    wait_version(&s, &agents, &[0, 1, 2, 3, 4], "1");

    repo.app("2 bad!", policy);
    repo.commit("app 2 (broken)");
    wait_for("the rollout aborts", || {
        s.newest_rollout()["state"] == "aborted"
    });
    let bad = s.newest_rollout();
    let reason = bad["reason"].as_str().expect("reason");
    assert!(reason.starts_with("gate of wave canary failed"), "{bad:#}");
    assert!(
        events(&bad).contains(&("gate-failed".to_owned(), "cplane".to_owned())),
        "{bad:#}"
    );
    for (i, v) in v1.iter().enumerate().skip(2) {
        let m = member(&bad, 1, &cluster(i));
        assert_eq!(m["state"], "skipped", "{bad:#}");
        assert_eq!(m["message"], "aborted: the gate failed", "{bad:#}");
        assert_eq!(s.current(&cluster(i)).as_ref(), Some(v), "untouched");
        assert_eq!(agents.version_on(i).as_deref(), Some("1"), "untouched");
        assert_eq!(s.cluster_status(&cluster(i))["state"], "in-sync");
    }
    wait_for("a canary's agent reports the failure", || {
        (0..2).any(|i| s.cluster_status(&cluster(i))["state"] == "failed")
    });
    let failed = (0..2)
        .map(|i| s.cluster_status(&cluster(i)))
        .find(|st| st["state"] == "failed")
        .expect("failed");
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("ConfigMap/app/app")),
        "{failed:#}"
    );
    // Aborted for good: a later revision rolls out to everyone.
    std::thread::sleep(Duration::from_millis(600)); // two driver ticks: nothing moves
    assert_eq!(s.newest_rollout()["state"], "aborted");
    repo.app("3", policy);
    repo.commit("app 3");
    wait_version(&s, &agents, &[0, 1, 2, 3, 4], "3");
    wait_for("the new rollout completes", || {
        s.newest_rollout()["state"] == "completed"
    });
}

/// A development issuer serving its JWKS on 127.0.0.1, on `rt` (see
/// [`cplane_e2e::oidc::dev_issuer`]).
fn issuer(rt: &tokio::runtime::Runtime) -> cplane_reconciler::auth::dev::DevIssuer {
    rt.block_on(cplane_e2e::oidc::dev_issuer())
}

#[test]
fn admins_control_rollouts_over_http_and_others_get_403() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dev = issuer(&rt);
    let bearer = |email: &str| {
        let token = dev
            .token("cplane", email, email, email, Duration::from_secs(600))
            .expect("token");
        format!("Bearer {token}")
    };
    let (root, eve) = (bearer("root@example.com"), bearer("eve@example.com"));
    let policy = "    waves:\n      - name: canary\n        labels: {tier: canary}\n      - name: early\n        count: 1\n      - name: rest\n    healthTimeout: 1h\n    bakeTime: 1h\n";
    let (tmp, repo, s) = start(3, 1, policy, |p| p.oidc(dev.issuer(), &root));
    s.cplane(&["principal", "grant-admin", "root@example.com"]);
    let v1 = published(&s, 3);
    let agents = Agents::all(&s, tmp.path(), 3);
    wait_version(&s, &agents, &[0, 1, 2], "1");
    repo.app("2", policy);
    repo.commit("app 2");
    wait_for("the canary's gate passed: baking", || {
        s.newest_rollout()["state"] == "baking"
    });
    let id = s.newest_rollout()["id"].as_str().expect("id").to_owned();
    let post = |action: &str, who: Option<&str>| -> (u16, Value) {
        let headers: Vec<(&str, String)> = match who {
            Some(b) => vec![("Authorization", b.to_owned())],
            None => vec![("Authorization", "Bearer not-a-jwt".to_owned())],
        };
        let (status, body) = s.call(
            "POST",
            &format!("/v1/rollouts/{id}/{action}"),
            &headers,
            b"",
        );
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    };

    // Signed in but not an admin: 403 for every control, and for reads (operators only).
    assert_eq!(
        s.call("GET", "/v1/me", &[("Authorization", eve.clone())], b"")
            .0,
        200
    );
    for action in ["pause", "resume", "promote", "abort"] {
        let (status, body) = post(action, Some(&eve));
        assert_eq!(status, 403, "{action}: {body}");
    }
    assert_eq!(
        s.call(
            "GET",
            "/v1/rollouts",
            &[("Authorization", eve.clone())],
            b""
        )
        .0,
        403
    );
    assert_eq!(post("pause", None).0, 401, "no valid token");
    assert_eq!(s.rollout(&id)["state"], "baking", "nothing changed");

    // An admin: pause (twice: 409), resume, promote, abort.
    let (status, body) = post("pause", Some(&root));
    assert_eq!(
        (status, &body["state"]),
        (200, &Value::from("paused")),
        "{body}"
    );
    assert_eq!(post("pause", Some(&root)).0, 409);
    assert_eq!(post("explode", Some(&root)).0, 404);
    let (status, body) = post("resume", Some(&root));
    assert_eq!(status, 200, "{body}");
    wait_for("baking again", || s.rollout(&id)["state"] == "baking");
    let (status, body) = post("promote", Some(&root));
    assert_eq!((status, &body["wave"]), (200, &Value::from(1)), "{body}");
    wait_version(&s, &agents, &[1], "2");
    wait_for("the early wave baking", || {
        s.rollout(&id)["state"] == "baking"
    });
    let (status, body) = post("abort", Some(&root));
    assert_eq!(
        (status, &body["state"]),
        (200, &Value::from("aborted")),
        "{body}"
    );

    let r = s.rollout(&id);
    assert_eq!(member(&r, 2, "w-t02")["state"], "skipped", "{r:#}");
    assert_eq!(
        member(&r, 2, "w-t02")["message"],
        "aborted by root@example.com",
        "{r:#}"
    );
    assert_eq!(s.current("w-t02").as_ref(), Some(&v1[2]));
    assert_eq!(agents.version_on(2).as_deref(), Some("1"));
    let by_people: Vec<(String, String)> = events(&r)
        .into_iter()
        .filter(|(_, actor)| actor != "cplane")
        .collect();
    let expected: Vec<(String, String)> = ["pause", "resume", "promote", "abort"]
        .iter()
        .map(|a| ((*a).to_owned(), "root@example.com".to_owned()))
        .collect();
    assert_eq!(by_people, expected, "{r:#}");
}

#[test]
fn a_silent_agent_counts_as_offline() {
    let (tmp, _repo, s) = start(2, 0, "", |p| p.args(&["--agent-offline-after", "2s"]));
    published(&s, 2);
    let mut agents = Agents::all(&s, tmp.path(), 2);
    wait_version(&s, &agents, &[0, 1], "1");
    agents.stop(0);
    wait_for("w-t00 offline", || {
        s.cluster_status("w-t00")["state"] == "offline"
    });
    let st = s.cluster_status("w-t00");
    assert!(st["last_seen"].is_i64(), "{st:#}");
    assert!(
        st["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no report for")),
        "{st:#}"
    );
    wait_for("both counted offline", || clusters_in(&s, "offline") == 2);
}

#[test]
fn a_deny_window_committed_mid_rollout_holds_it_and_removing_it_lets_it_go() {
    let policy = "{waves: [{name: canary, labels: {tier: canary}}, {name: rest}], healthTimeout: 1h, bakeTime: 1h}";
    let (tmp, mut repo, s) = start(3, 1, policy, |p| p);
    let v1 = published(&s, 3);
    let agents = Agents::all(&s, tmp.path(), 3);
    wait_version(&s, &agents, &[0, 1, 2], "1");
    repo.app("2", policy);
    repo.commit("app 2");
    wait_for("the canary's gate passed: baking", || {
        s.newest_rollout()["state"] == "baking"
    });
    let id = s.newest_rollout()["id"].as_str().expect("id").to_owned();

    // A freeze, committed while the rollout bakes: a deny window open all day, every day.
    repo.platform_spec(
        "  syncWindows:\n    - {kind: deny, schedule: \"0 0 * * *\", duration: 24h}\n",
    );
    let freeze = repo.commit("freeze");
    wait_for("the freeze applied", || {
        s.get_json("/v1/status")["last_run"]["commit"] == freeze.as_str()
    });
    s.cplane(&["rollout", "promote", &id, "--actor", "ops@example.com"]);
    wait_for("the rest held by the freeze", || {
        let r = s.rollout(&id);
        (1..3).all(|i| member(&r, 1, &cluster(i))["state"] == "held")
    });
    let r = s.rollout(&id);
    assert_eq!(
        member(&r, 1, "w-t01")["message"],
        "sync window closed",
        "{r:#}"
    );
    for (i, v) in v1.iter().enumerate().skip(1) {
        assert_eq!(s.current(&cluster(i)).as_ref(), Some(v), "held");
    }

    // The freeze lifted: the held clusters go.
    repo.platform_spec("");
    repo.commit("thaw");
    wait_version(&s, &agents, &[1, 2], "2");
    wait_for("completed", || s.rollout(&id)["state"] == "completed");
}
