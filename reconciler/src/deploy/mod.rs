//! Deploying cplane: the agent's install manifests for a cluster ([`agent`], with its RBAC
//! computed from the cluster's bundle through [`kinds`]), and the control plane's own manifests
//! per region × environment ([`control_plane`]).

pub mod agent;
pub mod control_plane;
pub mod kinds;
