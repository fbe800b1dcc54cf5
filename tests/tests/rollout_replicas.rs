//! A rollout on PostgreSQL with two `cplane serve` replicas sharing it: the lease holder is
//! killed (SIGKILL) mid-rollout, the standby takes the lease and finishes the rollout from the
//! database; no cluster goes backwards and no wave moves (is published) twice. The agents talk
//! to the standby throughout, as they would to any replica behind a load balancer.

use std::collections::BTreeMap;

use cplane_e2e::pg::PgDatabase;
use cplane_e2e::rollout::{cluster, wait_for, Agents, Plane, Server, StateRepo};

const N: usize = 6;

/// Canary (t00), two clusters, the rest; a 3 s bake after each gate.
const POLICY: &str = "    waves:\n      - name: canary\n        labels: {tier: canary}\n      - name: early\n        count: 2\n      - name: rest\n    healthTimeout: 1m\n    bakeTime: 3s\n";

/// Every cluster's generation and the app version its agent applied, checked against what was
/// seen before: neither ever goes back.
struct Watch {
    generations: Vec<i64>,
    versions: Vec<String>,
}

impl Watch {
    fn look(&mut self, s: &Server, agents: &Agents) {
        for i in 0..N {
            let g = s.generation(&cluster(i));
            assert!(
                g >= self.generations[i],
                "{} went back from generation {} to {g}",
                cluster(i),
                self.generations[i]
            );
            self.generations[i] = g;
            let v = agents.version_on(i).unwrap_or_default();
            assert!(
                v >= self.versions[i],
                "{} went back from app {} to {v}",
                cluster(i),
                self.versions[i]
            );
            self.versions[i] = v;
        }
    }
}

#[test]
fn a_standby_resumes_a_rollout_when_the_lease_holder_dies() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(PgDatabase::create());
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = StateRepo::create(&tmp.path().join("state"), N, 1, POLICY);
    let a = Plane::on(&repo, tmp.path(), "a", &pg.url).start();
    wait_for("a holds the lease", || a.leader());
    let b = Plane::on(&repo, tmp.path(), "b", &pg.url).start();
    assert!(!b.leader(), "b stands by");
    wait_for("every cluster published, as b serves it", || {
        (0..N).all(|i| b.current(&cluster(i)).is_some())
    });
    let agents = Agents::all(&b, tmp.path(), N);
    wait_for("app 1 everywhere, reported", || {
        (0..N).all(|i| {
            agents.version_on(i).as_deref() == Some("1")
                && b.reported(&cluster(i)) == b.current(&cluster(i))
        })
    });
    let before: Vec<i64> = (0..N).map(|i| b.generation(&cluster(i))).collect();
    let mut watch = Watch {
        generations: before.clone(),
        versions: vec!["1".into(); N],
    };

    repo.app("2", POLICY);
    repo.commit("app 2");
    wait_for("the rollout in its second wave", || {
        watch.look(&b, &agents);
        b.newest_rollout()["wave"] == 1
    });
    let id = b.newest_rollout()["id"].as_str().expect("id").to_owned();
    a.kill();
    wait_for("b takes the lease", || {
        watch.look(&b, &agents);
        b.leader()
    });
    wait_for("b completes the rollout", || {
        watch.look(&b, &agents);
        b.rollout(&id)["state"] == "completed"
    });
    wait_for("app 2 everywhere, reported", || {
        watch.look(&b, &agents);
        (0..N).all(|i| {
            agents.version_on(i).as_deref() == Some("2")
                && b.reported(&cluster(i)) == b.current(&cluster(i))
        })
    });

    let done = b.rollout(&id);
    for (i, generation) in before.iter().enumerate() {
        assert_eq!(
            b.generation(&cluster(i)),
            generation + 1,
            "{} published once: {done:#}",
            cluster(i)
        );
    }
    for w in done["waves"].as_array().expect("waves") {
        assert_eq!(w["done"], w["clusters"], "{done:#}");
    }
    // Each wave moved on once: one `wave N → …` event per wave, whoever moved it.
    let mut moves: BTreeMap<String, usize> = BTreeMap::new();
    for e in done["events"].as_array().expect("events") {
        if let Some(d) = e["detail"].as_str().filter(|d| d.contains(" → ")) {
            *moves
                .entry(d.split(" → ").next().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(
        moves,
        BTreeMap::from([
            ("wave 0".to_owned(), 1),
            ("wave 1".to_owned(), 1),
            ("wave 2".to_owned(), 1)
        ]),
        "{done:#}"
    );
    drop(agents);
    drop(b);
}
