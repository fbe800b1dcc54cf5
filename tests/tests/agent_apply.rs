//! The agent's apply pipeline against the fake Kubernetes API server (in-process, and over a
//! socket with a kubeconfig): apply order, CRD wait, results, inventory and prune rules, drift.

use std::time::Duration;

use cplane_agent::apply::{self, Action, Options, Target};
use cplane_agent::bundle::{digest_of, Bundle};
use cplane_e2e::kube_apiserver::ApiServer;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::{json, Value};

fn bundle(objects: &[Value], generation: i64) -> Bundle {
    let body: String = objects.iter().map(|o| format!("{o}\n")).collect();
    Bundle::verify(&digest_of(body.as_bytes()), generation, body.into_bytes())
        .expect("valid bundle")
}

fn target(server: &ApiServer) -> Target {
    Target {
        client: server.client(),
        cluster: "w-acme".into(),
        namespace: "cplane-system".into(),
        crd_timeout: Duration::from_secs(10),
    }
}

fn ns(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn cm(ns: &str, name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"key": value}})
}

fn deployment(ns: &str, name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": "nginx:1.27"}]}}}})
}

fn crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

fn widget(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name, "namespace": ns}, "spec": {"size": 3}})
}

fn actions(report: &apply::Report) -> Vec<(String, &'static str)> {
    report
        .objects
        .iter()
        .map(|o| (o.object.to_string(), o.action.label()))
        .collect()
}

fn confirmed() -> Options {
    Options { confirmed: true }
}

fn position(requests: &[String], needle: &str) -> usize {
    requests
        .iter()
        .position(|r| r.contains(needle))
        .unwrap_or_else(|| panic!("no request {needle} in {requests:#?}"))
}

#[tokio::test]
async fn namespaces_and_crds_go_first_and_crds_are_waited_for() {
    cplane_agent::install_crypto();
    let server = ApiServer::new().with_crd_delay(Duration::from_millis(600));
    let t = target(&server);
    // Bundle order puts the namespaced objects before their Namespace and CRD: the agent must
    // not (a real API server answers 404 for both).
    let b = bundle(
        &[
            deployment("shop", "web", 2),
            widget("shop", "w1"),
            ns("shop"),
            crd(),
            cm("shop", "cfg", "1"),
        ],
        1,
    );
    let report = apply::apply(&t, &b, confirmed()).await.expect("apply");
    assert_eq!(
        actions(&report),
        vec![
            ("Deployment shop/web".into(), "created"),
            ("Widget shop/w1".into(), "created"),
            ("Namespace shop".into(), "created"),
            (
                "CustomResourceDefinition widgets.example.com".into(),
                "created"
            ),
            ("ConfigMap shop/cfg".into(), "created"),
        ],
        "{report:#?}"
    );
    let requests = server.requests();
    let ns_patch = position(&requests, "PATCH /api/v1/namespaces/shop?");
    let crd_patch = position(
        &requests,
        "PATCH /apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
    );
    let dep_patch = position(
        &requests,
        "PATCH /apis/apps/v1/namespaces/shop/deployments/web",
    );
    let widget_patch = position(
        &requests,
        "PATCH /apis/example.com/v1/namespaces/shop/widgets/w1",
    );
    assert!(
        ns_patch < dep_patch && crd_patch < dep_patch,
        "{requests:#?}"
    );
    let crd_polls = requests
        .iter()
        .filter(|r| {
            r.starts_with(
                "GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
            )
        })
        .count();
    assert!(
        crd_polls >= 2,
        "the CRD was polled until Established: {requests:#?}"
    );
    assert!(crd_patch < widget_patch);
    let w = server
        .object("example.com/v1", "Widget", Some("shop"), "w1")
        .expect("widget stored");
    assert_eq!(w["metadata"]["labels"]["cplane.io/cluster"], "w-acme");
    assert_eq!(w["metadata"]["managedFields"][0]["manager"], "cplane");
    assert_eq!(w["metadata"]["managedFields"][0]["operation"], "Apply");
    // The inventory is recorded before any object of the bundle is created.
    let inv = position(
        &requests,
        "PATCH /api/v1/namespaces/cplane-system/configmaps/cplane-inventory",
    );
    assert!(inv < ns_patch, "{requests:#?}");

    // Health: the CRD is Established; Deployments are not available (no controllers here).
    let health: Vec<_> = report.objects.iter().map(|o| o.health.label()).collect();
    assert_eq!(
        health,
        ["Progressing", "Healthy", "Healthy", "Healthy", "Healthy"]
    );
    assert!(!report.healthy());

    // The same bundle again changes nothing.
    let again = apply::apply(&t, &b, confirmed()).await.expect("apply");
    assert!(
        again.objects.iter().all(|o| o.action == Action::Unchanged),
        "{again:#?}"
    );
}

#[tokio::test]
async fn a_crd_that_never_establishes_fails_its_custom_resources_and_blocks_prune() {
    cplane_agent::install_crypto();
    let server = ApiServer::new().with_crd_delay(Duration::from_secs(3600));
    let mut t = target(&server);
    t.crd_timeout = Duration::from_millis(500);
    let first = bundle(&[ns("shop"), cm("shop", "old", "1")], 1);
    apply::apply(&t, &first, confirmed()).await.expect("apply");
    let b = bundle(&[ns("shop"), crd(), widget("shop", "w1")], 2);
    let report = apply::apply(&t, &b, confirmed()).await.expect("apply");
    let w = &report.objects[2];
    assert_eq!(w.action, Action::Failed);
    assert!(
        w.message.contains("does not serve example.com/v1 Widget"),
        "{}",
        w.message
    );
    assert_eq!(
        report.objects[1].message,
        "not Established before the CRD timeout"
    );
    assert!(report
        .prune_skipped
        .as_deref()
        .is_some_and(|m| m.contains("1 object(s) failed")));
    assert!(
        server
            .object("v1", "ConfigMap", Some("shop"), "old")
            .is_some(),
        "not pruned"
    );
}

#[tokio::test]
async fn prune_deletes_only_our_objects_that_left_the_bundle() {
    cplane_agent::install_crypto();
    let server = ApiServer::new();
    let t = target(&server);
    let client = server.client();
    let v1 = bundle(
        &[
            ns("shop"),
            cm("shop", "a", "1"),
            cm("shop", "b", "1"),
            cm("shop", "c", "1"),
        ],
        1,
    );
    apply::apply(&t, &v1, confirmed()).await.expect("apply");

    // Someone else's object, even carrying our label, was never applied by the agent.
    let cms: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap")),
    );
    let foreign: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "foreign", "namespace": "shop", "labels": {"cplane.io/cluster": "w-acme"}}})).expect("object");
    cms.create(&PostParams::default(), &foreign)
        .await
        .expect("create");
    // And someone took `c` over: they removed our label.
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"cplane.io/cluster": null}}})),
    )
    .await
    .expect("unlabel");

    let v2 = bundle(&[ns("shop"), cm("shop", "a", "2")], 2);
    let report = apply::apply(&t, &v2, confirmed()).await.expect("apply");
    assert_eq!(
        actions(&report),
        vec![
            ("Namespace shop".into(), "unchanged"),
            ("ConfigMap shop/a".into(), "configured"),
            ("ConfigMap shop/b".into(), "pruned"),
        ]
    );
    assert!(server
        .object("v1", "ConfigMap", Some("shop"), "b")
        .is_none());
    assert!(
        server
            .object("v1", "ConfigMap", Some("shop"), "c")
            .is_some(),
        "taken over: left alone"
    );
    assert!(
        server
            .object("v1", "ConfigMap", Some("shop"), "foreign")
            .is_some(),
        "never ours"
    );
    let inv = server
        .object("v1", "ConfigMap", Some("cplane-system"), "cplane-inventory")
        .expect("inventory");
    let recorded: Value =
        serde_json::from_str(inv["data"]["inventory.json"].as_str().expect("data")).expect("json");
    assert_eq!(recorded["generation"], 2);
    assert_eq!(
        recorded["objects"].as_array().map(Vec::len),
        Some(2),
        "{recorded}"
    );

    // Removing a whole namespace: its objects go first, the Namespace last.
    let v3 = bundle(&[ns("other"), cm("other", "x", "1")], 3);
    server.clear_requests();
    let report = apply::apply(&t, &v3, confirmed()).await.expect("apply");
    assert_eq!(report.count(Action::Pruned), 2, "{report:#?}");
    let requests = server.requests();
    let del_cm = position(&requests, "DELETE /api/v1/namespaces/shop/configmaps/a");
    let del_ns = requests
        .iter()
        .position(|r| r.split('?').next() == Some("DELETE /api/v1/namespaces/shop"))
        .expect("namespace deleted");
    assert!(del_cm < del_ns, "{requests:#?}");
}

#[tokio::test]
async fn no_prune_on_an_empty_or_unconfirmed_bundle() {
    cplane_agent::install_crypto();
    let server = ApiServer::new();
    let t = target(&server);
    let v1 = bundle(&[ns("shop"), cm("shop", "a", "1"), cm("shop", "b", "1")], 1);
    apply::apply(&t, &v1, confirmed()).await.expect("apply");

    let empty = bundle(&[], 2);
    let report = apply::apply(&t, &empty, confirmed()).await.expect("apply");
    assert_eq!(
        report.prune_skipped.as_deref(),
        Some("prune skipped: the bundle is empty (3 object(s) kept)")
    );
    assert!(server
        .object("v1", "ConfigMap", Some("shop"), "a")
        .is_some());

    let smaller = bundle(&[ns("shop"), cm("shop", "a", "1")], 3);
    let report = apply::apply(&t, &smaller, Options { confirmed: false })
        .await
        .expect("apply");
    assert!(
        report
            .prune_skipped
            .as_deref()
            .is_some_and(|m| m.contains("not confirmed")),
        "{report:#?}"
    );
    assert!(server
        .object("v1", "ConfigMap", Some("shop"), "b")
        .is_some());

    // Kept objects stay in the inventory: the next confirmed run prunes them.
    let report = apply::apply(&t, &smaller, confirmed())
        .await
        .expect("apply");
    assert_eq!(
        actions(&report).last(),
        Some(&("ConfigMap shop/b".into(), "pruned"))
    );
}

#[tokio::test]
async fn failures_are_reported_per_object_and_forbid_prune() {
    cplane_agent::install_crypto();
    let server = ApiServer::new();
    let t = target(&server);
    apply::apply(
        &t,
        &bundle(&[ns("shop"), cm("shop", "a", "1"), cm("shop", "b", "1")], 1),
        confirmed(),
    )
    .await
    .expect("apply");
    let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name", "namespace": "shop"}});
    let missing_ns = cm("nowhere", "c", "1");
    let report = apply::apply(
        &t,
        &bundle(&[ns("shop"), cm("shop", "a", "1"), bad, missing_ns], 2),
        confirmed(),
    )
    .await
    .expect("apply");
    assert_eq!(report.objects[2].action, Action::Failed);
    assert!(
        report.objects[2]
            .message
            .contains("metadata.name: Invalid value"),
        "{}",
        report.objects[2].message
    );
    assert!(
        report.objects[3]
            .message
            .contains("namespaces \"nowhere\" not found"),
        "{}",
        report.objects[3].message
    );
    assert!(
        server
            .object("v1", "ConfigMap", Some("shop"), "b")
            .is_some(),
        "no prune after failures"
    );

    let status = report.to_status();
    assert_eq!(status["generation"], 2);
    assert_eq!(status["healthy"], false);
    assert!(status["digest"]
        .as_str()
        .is_some_and(|d| d.starts_with("sha256:")));
    assert_eq!(status["objects"][2]["result"], "failed");
    assert_eq!(status["objects"][2]["health"], "Unknown");
    assert_eq!(
        status["objects"][1],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "shop", "name": "a",
        "result": "unchanged", "message": "", "health": "Healthy"})
    );
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 failed") && m.contains("prune skipped")),
        "{status}"
    );
}

#[tokio::test]
async fn drift_is_corrected_and_fields_dropped_from_git_are_removed() {
    cplane_agent::install_crypto();
    let server = ApiServer::new();
    let t = target(&server);
    let client = server.client();
    let with_extra = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "shop",
        "annotations": {"team": "data"}}, "data": {"key": "1", "extra": "x"}});
    apply::apply(&t, &bundle(&[ns("shop"), with_extra], 1), confirmed())
        .await
        .expect("apply");

    // A hand edit of a field git owns, plus a field only the hand editor owns.
    let cms: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap")),
    );
    cms.patch(
        "a",
        &PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"data": {"key": "hand", "mine": "kept"}})),
    )
    .await
    .expect("edit");
    let b = bundle(&[ns("shop"), cm("shop", "a", "1")], 2);
    let report = apply::apply(&t, &b, confirmed()).await.expect("apply");
    assert_eq!(report.objects[1].action, Action::Configured);
    let live = server
        .object("v1", "ConfigMap", Some("shop"), "a")
        .expect("cm");
    assert_eq!(
        live["data"],
        json!({"key": "1", "mine": "kept"}),
        "git's value back; dropped field gone; others' field kept"
    );
    assert!(
        live["metadata"]["annotations"].get("team").is_none(),
        "{live}"
    );

    // Deleted by hand: created again.
    cms.delete("a", &Default::default()).await.expect("delete");
    let report = apply::apply(&t, &b, Options { confirmed: false })
        .await
        .expect("apply");
    assert_eq!(report.objects[1].action, Action::Created);
}

#[tokio::test]
async fn works_through_a_kubeconfig_against_the_served_fake() {
    cplane_agent::install_crypto();
    let server = ApiServer::new();
    let served = server.serve().await.expect("serve");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, served.kubeconfig()).expect("write");
    let client = cplane_agent::kube_client(Some(&path))
        .await
        .expect("client");
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.git_version, "v1.33.0-cplane-fake");
    let t = Target {
        client,
        ..target(&server)
    };
    let report = apply::apply(
        &t,
        &bundle(&[ns("shop"), deployment("shop", "web", 1)], 1),
        confirmed(),
    )
    .await
    .expect("apply");
    assert_eq!(report.count(Action::Created), 2);
    let d = server
        .object("apps/v1", "Deployment", Some("shop"), "web")
        .expect("stored");
    assert_eq!(d["metadata"]["generation"], 1);
    assert!(d["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
}

#[tokio::test]
async fn the_fake_answers_like_kubernetes() {
    cplane_agent::install_crypto();
    let server = ApiServer::new();
    let client = server.client();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap"));
    let cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let err = cms.get("nope").await.expect_err("404");
    let kube::Error::Api(s) = err else {
        panic!("not a Status: {err}")
    };
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (404, "NotFound", "configmaps \"nope\" not found")
    );
    let obj: DynamicObject = serde_json::from_value(cm("default", "a", "1")).expect("object");
    let created = cms
        .create(&PostParams::default(), &obj)
        .await
        .expect("create");
    let err = cms
        .create(&PostParams::default(), &obj)
        .await
        .expect_err("409");
    let kube::Error::Api(s) = err else {
        panic!("not a Status")
    };
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    // Apply without force over another manager's field: 409 Conflict.
    let err = cms
        .patch(
            "a",
            &PatchParams::apply("cplane"),
            &Patch::Apply(cm("default", "a", "2")),
        )
        .await
        .expect_err("conflict");
    let kube::Error::Api(s) = err else {
        panic!("not a Status")
    };
    assert_eq!(
        (s.code, s.reason.as_str()),
        (409, "Conflict"),
        "{}",
        s.message
    );
    let applied = cms
        .patch(
            "a",
            &PatchParams::apply("cplane").force(),
            &Patch::Apply(cm("default", "a", "2")),
        )
        .await
        .expect("forced");
    assert_ne!(
        applied.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(applied.metadata.uid, created.metadata.uid);
    let same = cms
        .patch(
            "a",
            &PatchParams::apply("cplane").force(),
            &Patch::Apply(cm("default", "a", "2")),
        )
        .await
        .expect("no-op");
    assert_eq!(
        same.metadata.resource_version, applied.metadata.resource_version,
        "a no-op apply writes nothing"
    );
    let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default", "labels": {"a": "-bad-"}}});
    let err = cms
        .patch(
            "x",
            &PatchParams::apply("cplane").force(),
            &Patch::Apply(bad),
        )
        .await
        .expect_err("422");
    let kube::Error::Api(s) = err else {
        panic!("not a Status")
    };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    let listed = Api::<DynamicObject>::all_with(client.clone(), &ar)
        .list(&kube::api::ListParams::default().labels("a!=b"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    assert!(
        listed.items[0].types.is_none(),
        "list items carry no apiVersion/kind"
    );
}

#[tokio::test]
async fn the_fake_api_server_dry_runs_writes_without_storing_them() {
    cplane_agent::install_crypto();
    let server = ApiServer::new();
    let client = server.client();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap"));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let obj: DynamicObject = serde_json::from_value(cm("default", "cfg", "1")).expect("object");
    let dry = PatchParams {
        dry_run: true,
        ..PatchParams::apply("cplane").force()
    };
    let before = server.len();

    // A dry-run create answers the would-be object, without a resourceVersion, and stores nothing.
    let would = api
        .patch("cfg", &dry, &Patch::Apply(&obj))
        .await
        .expect("dry-run create");
    assert_eq!(would.data["data"]["key"], "1");
    assert!(would.metadata.uid.is_some());
    assert_eq!(would.metadata.resource_version, None);
    assert!(server
        .object("v1", "ConfigMap", Some("default"), "cfg")
        .is_none());
    assert_eq!(server.len(), before);

    // A dry-run update answers the change at the live resourceVersion; the live object stays.
    let live = api
        .patch(
            "cfg",
            &PatchParams::apply("cplane").force(),
            &Patch::Apply(&obj),
        )
        .await
        .expect("apply");
    let changed: DynamicObject = serde_json::from_value(cm("default", "cfg", "2")).expect("object");
    let would = api
        .patch("cfg", &dry, &Patch::Apply(&changed))
        .await
        .expect("dry-run update");
    assert_eq!(would.data["data"]["key"], "2");
    assert_eq!(
        would.metadata.resource_version,
        live.metadata.resource_version
    );
    let stored = server
        .object("v1", "ConfigMap", Some("default"), "cfg")
        .expect("stored");
    assert_eq!(stored["data"]["key"], "1");
    assert_eq!(
        stored["metadata"]["resourceVersion"].as_str(),
        live.metadata.resource_version.as_deref()
    );

    // Admission still runs: a dry run into a missing namespace is refused like a real one.
    let elsewhere: DynamicObject =
        serde_json::from_value(cm("nowhere", "cfg", "1")).expect("object");
    let err = Api::<DynamicObject>::namespaced_with(client.clone(), "nowhere", &ar)
        .patch("cfg", &dry, &Patch::Apply(&elsewhere))
        .await
        .expect_err("no namespace");
    assert!(err.to_string().contains("not found"), "{err}");

    // A dry-run delete answers the object and deletes nothing.
    api.delete(
        "cfg",
        &kube::api::DeleteParams {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .expect("dry-run delete");
    assert!(server
        .object("v1", "ConfigMap", Some("default"), "cfg")
        .is_some());
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.contains("dryRun=All")),
        "{requests:#?}"
    );
}
