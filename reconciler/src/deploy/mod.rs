//! Deploying cplane: the agent's install manifests for a cluster ([`agent`], with its RBAC
//! computed from the cluster's bundle through [`kinds`]).

pub mod agent;
pub mod kinds;
