//! Health of an applied object, read from its live `status` (like kstatus, reduced to the kinds
//! cplane's stacks render). Pure: takes the object the API server returned.

use kube::api::DynamicObject;
use serde_json::Value;

/// An object's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Health {
    /// Ready (or a kind without a readiness notion that exists).
    Healthy,
    /// Rolling out or waiting for replicas.
    Progressing,
    /// Reported failed by its controller.
    Degraded,
    /// Not known (the object could not be applied or read).
    Unknown,
}

impl Health {
    /// The label used in status reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Healthy => "Healthy",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::Unknown => "Unknown",
        }
    }
}

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_i64()
}

fn condition(status: &Value, kind: &str) -> Option<bool> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .map(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

/// The health of `obj` of `kind`, with a short reason when not healthy.
pub fn of(kind: &str, obj: &DynamicObject) -> (Health, String) {
    let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    let generation = obj.metadata.generation.unwrap_or(0);
    let observed = int(&status, &["observedGeneration"]).unwrap_or(0);
    match kind {
        "Deployment" | "StatefulSet" | "ReplicaSet" => {
            let want = int(&spec, &["replicas"]).unwrap_or(1);
            let ready = if kind == "Deployment" {
                int(&status, &["availableReplicas"]).unwrap_or(0)
            } else {
                int(&status, &["readyReplicas"]).unwrap_or(0)
            };
            if kind == "Deployment" && condition(&status, "Progressing") == Some(false) {
                return (Health::Degraded, "rollout stalled".into());
            }
            if observed >= generation && ready >= want {
                (Health::Healthy, String::new())
            } else {
                (
                    Health::Progressing,
                    format!("{ready}/{want} replicas ready"),
                )
            }
        }
        "DaemonSet" => {
            let want = int(&status, &["desiredNumberScheduled"]).unwrap_or(0);
            let ready = int(&status, &["numberAvailable"]).unwrap_or(0);
            if observed >= generation && ready >= want && observed > 0 {
                (Health::Healthy, String::new())
            } else {
                (
                    Health::Progressing,
                    format!("{ready}/{want} pods available"),
                )
            }
        }
        "Job" => match (condition(&status, "Complete"), condition(&status, "Failed")) {
            (_, Some(true)) => (Health::Degraded, "job failed".into()),
            (Some(true), _) => (Health::Healthy, String::new()),
            _ => (Health::Progressing, "job running".into()),
        },
        "CustomResourceDefinition" => match condition(&status, "Established") {
            Some(true) => (Health::Healthy, String::new()),
            _ => (Health::Progressing, "not Established yet".into()),
        },
        "PersistentVolumeClaim" => match status.get("phase").and_then(Value::as_str) {
            Some("Bound") => (Health::Healthy, String::new()),
            Some("Lost") => (Health::Degraded, "claim lost".into()),
            _ => (Health::Progressing, "not bound yet".into()),
        },
        _ => (Health::Healthy, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn deployments_are_healthy_when_every_replica_is_available() {
        let d = obj(
            serde_json::json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a","generation":2},
            "spec":{"replicas":3},"status":{"observedGeneration":2,"availableReplicas":3}}),
        );
        assert_eq!(of("Deployment", &d).0, Health::Healthy);
        let d = obj(
            serde_json::json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a","generation":2},
            "spec":{"replicas":3},"status":{"observedGeneration":1,"availableReplicas":3}}),
        );
        assert_eq!(of("Deployment", &d).0, Health::Progressing);
        let d = obj(
            serde_json::json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a","generation":1},"spec":{"replicas":2}}),
        );
        assert_eq!(
            of("Deployment", &d),
            (Health::Progressing, "0/2 replicas ready".into())
        );
    }

    #[test]
    fn crds_need_established_and_plain_objects_are_healthy() {
        let c = obj(
            serde_json::json!({"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"a"},
            "status":{"conditions":[{"type":"Established","status":"True"}]}}),
        );
        assert_eq!(of("CustomResourceDefinition", &c).0, Health::Healthy);
        let m =
            obj(serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}));
        assert_eq!(of("ConfigMap", &m).0, Health::Healthy);
    }
}
