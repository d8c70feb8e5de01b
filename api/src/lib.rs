//! Streamward's contract: the custom resources teams write, the config the operator compiles
//! for each proxy, and the audit event every request produces.
//!
//! Everything here is pure data and pure functions, shared by the operator, the proxy and the
//! collector.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The API group of every Streamward custom resource.
pub const GROUP: &str = "streamward.io";

/// The CustomResourceDefinitions of every Streamward kind, in the order they are documented.
/// `just crds` writes each to `crds/<plural>.<group>.yaml`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    Vec::new()
}
