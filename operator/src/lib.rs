//! The Streamward operator: compiles the custom resources of every namespace into one
//! `streamward-config-<serviceaccount>` ConfigMap per workload identity, which the proxy next to
//! that workload serves.

pub mod configs;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod rbac;
pub mod status;
