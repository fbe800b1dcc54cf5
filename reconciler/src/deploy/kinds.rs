//! Which resource (the plural name RBAC rules and URLs use) and scope a kind has: built-in
//! kinds from `k8s-openapi`'s types (Kubernetes 1.33, the version the agent and the schema
//! tests target), custom kinds from the CustomResourceDefinitions in the same bundle.

use std::any::TypeId;
use std::collections::BTreeMap;

use k8s_openapi::api;

/// A kind's resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceName {
    /// API group (`""` for core).
    pub group: String,
    /// Plural resource name (`deployments`).
    pub resource: String,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

fn entry<T>() -> ((&'static str, &'static str), (&'static str, bool))
where
    T: k8s_openapi::Resource,
    T::Scope: 'static,
{
    let namespaced =
        TypeId::of::<T::Scope>() == TypeId::of::<k8s_openapi::NamespaceResourceScope>();
    ((T::GROUP, T::KIND), (T::URL_PATH_SEGMENT, namespaced))
}

macro_rules! builtins {
    ($($ty:ty),* $(,)?) => {
        vec![$(entry::<$ty>()),*]
    };
}

/// The served, generally available kinds of Kubernetes 1.33 that a bundle may hold.
fn builtin() -> BTreeMap<(&'static str, &'static str), (&'static str, bool)> {
    builtins![
        api::admissionregistration::v1::MutatingWebhookConfiguration,
        api::admissionregistration::v1::ValidatingAdmissionPolicy,
        api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
        api::admissionregistration::v1::ValidatingWebhookConfiguration,
        api::apps::v1::ControllerRevision,
        api::apps::v1::DaemonSet,
        api::apps::v1::Deployment,
        api::apps::v1::ReplicaSet,
        api::apps::v1::StatefulSet,
        api::autoscaling::v2::HorizontalPodAutoscaler,
        api::batch::v1::CronJob,
        api::batch::v1::Job,
        api::certificates::v1::CertificateSigningRequest,
        api::coordination::v1::Lease,
        api::core::v1::ConfigMap,
        api::core::v1::Endpoints,
        api::core::v1::Event,
        api::core::v1::LimitRange,
        api::core::v1::Namespace,
        api::core::v1::PersistentVolume,
        api::core::v1::PersistentVolumeClaim,
        api::core::v1::Pod,
        api::core::v1::PodTemplate,
        api::core::v1::ReplicationController,
        api::core::v1::ResourceQuota,
        api::core::v1::Secret,
        api::core::v1::Service,
        api::core::v1::ServiceAccount,
        api::discovery::v1::EndpointSlice,
        api::flowcontrol::v1::FlowSchema,
        api::flowcontrol::v1::PriorityLevelConfiguration,
        api::networking::v1::Ingress,
        api::networking::v1::IngressClass,
        api::networking::v1::NetworkPolicy,
        api::node::v1::RuntimeClass,
        api::policy::v1::PodDisruptionBudget,
        api::rbac::v1::ClusterRole,
        api::rbac::v1::ClusterRoleBinding,
        api::rbac::v1::Role,
        api::rbac::v1::RoleBinding,
        api::scheduling::v1::PriorityClass,
        api::storage::v1::CSIDriver,
        api::storage::v1::CSIStorageCapacity,
        api::storage::v1::StorageClass,
        api::storage::v1::VolumeAttachment,
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
    ]
    .into_iter()
    .collect()
}

/// Resolves kinds to resources: built-ins, then the kinds the given CRDs define.
#[derive(Debug)]
pub struct Kinds {
    builtin: BTreeMap<(&'static str, &'static str), (&'static str, bool)>,
    custom: BTreeMap<(String, String), (String, bool)>,
}

impl Kinds {
    /// Built-in kinds plus those defined by the `CustomResourceDefinition`s among `objects`.
    pub fn new<'a>(objects: impl IntoIterator<Item = &'a serde_json::Value>) -> Self {
        let mut custom = BTreeMap::new();
        for o in objects {
            if o["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let spec = &o["spec"];
            if let (Some(group), Some(kind), Some(plural)) = (
                spec["group"].as_str(),
                spec["names"]["kind"].as_str(),
                spec["names"]["plural"].as_str(),
            ) {
                custom.insert(
                    (group.to_owned(), kind.to_owned()),
                    (plural.to_owned(), spec["scope"] != "Cluster"),
                );
            }
        }
        Self {
            builtin: builtin(),
            custom,
        }
    }

    /// The resource of `kind` in `group`, if known.
    pub fn resolve(&self, group: &str, kind: &str) -> Option<ResourceName> {
        if let Some((resource, namespaced)) = self.builtin.get(&(group, kind)) {
            return Some(ResourceName {
                group: group.to_owned(),
                resource: (*resource).to_owned(),
                namespaced: *namespaced,
            });
        }
        self.custom
            .get(&(group.to_owned(), kind.to_owned()))
            .map(|(resource, namespaced)| ResourceName {
                group: group.to_owned(),
                resource: resource.clone(),
                namespaced: *namespaced,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_in_and_custom_kinds_resolve() {
        let crd = json!({"kind": "CustomResourceDefinition", "spec": {"group": "example.com", "scope": "Cluster",
            "names": {"kind": "Widget", "plural": "widgets"}}});
        let kinds = Kinds::new([&crd]);
        let r = |g, k| kinds.resolve(g, k).map(|r| (r.resource, r.namespaced));
        assert_eq!(r("apps", "Deployment"), Some(("deployments".into(), true)));
        assert_eq!(r("", "Namespace"), Some(("namespaces".into(), false)));
        assert_eq!(
            r("networking.k8s.io", "NetworkPolicy"),
            Some(("networkpolicies".into(), true))
        );
        assert_eq!(r("example.com", "Widget"), Some(("widgets".into(), false)));
        assert_eq!(r("example.com", "Gadget"), None);
        assert_eq!(r("", "Deployment"), None, "the group matters");
    }
}
