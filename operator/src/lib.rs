//! The Streamward operator: compiles the custom resources of every namespace into one
//! `streamward-config-<serviceaccount>` ConfigMap per workload identity, which the proxy next to
//! that workload serves, with a Role that lets only that proxy read it; keeps every resource's
//! status conditions true and records grant Events; runs under a leader-election Lease with
//! `/metrics`, `/healthz` and `/readyz`; its admission webhooks ([`webhook`]) refuse invalid
//! resources and inject the proxy into opted-in pods.
//!
//! The pure middle ([`plan`], [`status`], [`configs`], [`rbac`]) decides; [`controller`] reads
//! the caches and writes what changed; [`leader`] and [`metrics`] are the edges.

pub mod configs;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod rbac;
pub mod signing;
pub mod status;
pub mod webhook;
