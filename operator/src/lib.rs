//! The Streamward operator: compiles the custom resources of every namespace into one
//! `streamward-config-<serviceaccount>` ConfigMap per workload identity, which the proxy next to
//! that workload serves; its admission webhooks ([`webhook`]) refuse invalid resources and inject
//! the proxy into opted-in pods.

pub mod configs;
pub mod controller;
pub mod webhook;
