//! End to end: a stack change rolled out across 50 clusters, wave by wave, behind health
//! gates. `cplane serve` (the binary) on a local state repo with 50 workspaces, and 50
//! `cplane-agent` run loops in this process, each against its own in-memory test Kubernetes
//! API server ([`cplane_e2e::rollout`]): the agents' code is the real one, only their
//! processes are shared (50 agent processes with 50 served API servers would add nothing the
//! protocol sees).
//!
//! 1. The first revision reaches every cluster at once (nothing to protect yet).
//! 2. A bad version (an invalid label value the API server refuses with `422`) fails the
//!    canary wave's gate: the rollout pauses with the failing object's message, and the other
//!    48 clusters keep their bundle. An operator aborts it (`cplane rollout abort`).
//! 3. A good version rolls through the waves; paused while baking, it stays put, survives a
//!    restart of the control plane, and completes after `cplane rollout resume`.

use std::time::Duration;

use cplane_e2e::rollout::{cluster, wait_for, Agents, Plane, StateRepo};

const CLUSTERS: usize = 50;

/// The rollout policy: the canaries, half of the rest, then everyone; a 5 s bake after each
/// gate; 30 s for a wave to be healthy.
const POLICY: &str = "    waves:\n      - name: canary\n        labels: {tier: canary}\n      - name: half\n        percent: 50\n      - name: rest\n    healthTimeout: 30s\n    bakeTime: 5s\n";

#[test]
fn a_stack_change_rolls_out_in_waves_behind_health_gates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = StateRepo::create(&tmp.path().join("state"), CLUSTERS, 2, POLICY);
    let mut server = Some(Plane::sqlite(&repo, tmp.path()).start());
    let s = server.as_ref().expect("server");
    let port = s.port;
    let ids: Vec<String> = (0..CLUSTERS).map(cluster).collect();
    wait_for("every cluster published", || {
        ids.iter().all(|c| s.current(c).is_some())
    });
    let agents = Agents::all(s, tmp.path(), CLUSTERS);
    let version_on = |i: usize| agents.version_on(i);

    // 1. The first revision: every cluster at once.
    wait_for("app 1 everywhere", || {
        (0..CLUSTERS).all(|i| version_on(i).as_deref() == Some("1"))
    });
    wait_for("every agent reported", || {
        ids.iter().all(|c| s.reported(c) == s.current(c))
    });
    let v1: Vec<Option<String>> = ids.iter().map(|c| s.current(c)).collect();
    assert!(
        s.newest_rollout().is_null(),
        "the first revision is no rollout"
    );

    // 2. A bad version: the canaries fail their gate; the rollout pauses; nobody else moves.
    repo.app("2 bad!", POLICY);
    repo.commit("app 2 (broken)");
    wait_for("the bad rollout pauses", || {
        s.newest_rollout()["state"] == "paused"
    });
    let bad = s.newest_rollout();
    let reason = bad["reason"].as_str().expect("reason");
    assert!(reason.starts_with("gate of wave canary failed"), "{bad:#}");
    assert!(reason.contains("ConfigMap/app/app"), "{bad:#}");
    let canary = &bad["waves"][0];
    // The first failure stops the gate: the other canary may not have reported yet.
    let failed = canary["failed"].as_u64().expect("count");
    assert!(failed >= 1, "{bad:#}");
    assert_eq!(
        failed + canary["published"].as_u64().expect("count"),
        2,
        "{bad:#}"
    );
    assert!(
        canary["members"]
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["state"] == "failed"
                && m["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ConfigMap/app/app"))),
        "{bad:#}"
    );
    assert_eq!(bad["waves"][1]["pending"], 25, "{bad:#}"); // 50 % of the 50 clusters
    for (i, c) in ids.iter().enumerate().skip(2) {
        assert_eq!(s.current(c), v1[i], "{c} untouched");
        assert_eq!(version_on(i).as_deref(), Some("1"), "{c} untouched");
    }
    let bad_id = bad["id"].as_str().expect("id").to_owned();
    let aborted = s.cplane(&["rollout", "abort", &bad_id, "--actor", "ops@example.com"]);
    assert!(aborted.contains("aborted"), "{aborted}");
    let bad = s.rollout(&bad_id);
    assert_eq!(bad["state"], "aborted");
    assert!(
        bad["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["action"] == "abort" && e["actor"] == "ops@example.com"),
        "{bad:#}"
    );

    // 3. A good version: canaries first, then (paused while baking) nothing, across a restart.
    repo.app("3", POLICY);
    repo.commit("app 3");
    wait_for("the canaries run app 3", || {
        version_on(0).as_deref() == Some("3") && version_on(1).as_deref() == Some("3")
    });
    let good = s.newest_rollout();
    let good_id = good["id"].as_str().expect("id").to_owned();
    assert_ne!(good_id, bad_id);
    let paused = s.cplane(&["rollout", "pause", &good_id, "--actor", "ops@example.com"]);
    assert!(paused.contains("paused"), "{paused}");
    let wave_when_paused = s.rollout(&good_id)["wave"].clone();
    std::thread::sleep(Duration::from_secs(6)); // longer than the bake time
    let during = s.rollout(&good_id);
    assert_eq!(during["state"], "paused", "{during:#}");
    assert_eq!(during["wave"], wave_when_paused, "{during:#}");
    let moved: Vec<usize> = (2..CLUSTERS)
        .filter(|i| version_on(*i).as_deref() == Some("3"))
        .collect();
    let in_canary_or_half = moved.len();
    assert!(
        in_canary_or_half <= 25,
        "a paused rollout publishes nothing more: {moved:?}"
    );

    // The control plane restarts; the rollout is where it was.
    drop(server.take());
    server = Some(Plane::sqlite(&repo, tmp.path()).port(port).start());
    let s = server.as_ref().expect("server");
    let after = s.rollout(&good_id);
    assert_eq!(after["state"], "paused", "{after:#}");
    assert_eq!(after["wave"], wave_when_paused, "{after:#}");

    let resumed = s.cplane(&["rollout", "resume", &good_id, "--actor", "ops@example.com"]);
    assert!(resumed.contains("progressing"), "{resumed}");
    wait_for("the good rollout completes", || {
        s.rollout(&good_id)["state"] == "completed"
    });
    wait_for("app 3 everywhere", || {
        (0..CLUSTERS).all(|i| version_on(i).as_deref() == Some("3"))
    });
    let done = s.rollout(&good_id);
    for w in done["waves"].as_array().expect("waves") {
        assert_eq!(w["done"], w["clusters"], "{done:#}");
    }
    let actions: Vec<&str> = done["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.starts_with(&["created"]), "{actions:?}");
    for a in ["pause", "resume"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    let metrics = s.call("GET", "/metrics", &[], b"").1;
    assert!(
        metrics.contains("cplane_rollout_wave_wake_seconds"),
        "{metrics}"
    );

    drop(agents);
    drop(server);
}
