//! Streamward's contract: the custom resources teams write, the config the operator compiles
//! for each proxy, and the audit event every request produces.
//!
//! Everything here is pure data and pure functions, shared by the operator, the proxy and the
//! collector:
//!
//! - [`acl`]: the Kafka ACL vocabulary (resource types, patterns, operations);
//! - [`approval`]: who approves what in a namespace, and which grants need approval;
//! - [`crd`]: the custom resources (`StreamTarget`, `StreamPolicy`, `AccessGrant`,
//!   `MaskingRule`, `ApprovalRequest`, `Approval`);
//! - [`config`]: the compiled config of one workload identity;
//! - [`compile`]: custom resources → config, and parsing of YAML manifests for local mode;
//! - [`decide`]: the request-time decision the proxy makes on every request;
//! - [`masking`]: field paths and detector regexes, parsed the same way by compiler and proxy;
//! - [`audit`]: the audit event (CloudEvents 1.0) the proxy sends the collector for every request;
//! - [`secrets`]: how a proxy gets its Secrets from the operator;
//! - [`validate`]: one resource checked alone, as compile would, for admission.

#![warn(missing_docs)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub mod acl;
pub mod approval;
pub mod audit;
pub mod compile;
pub mod config;
pub mod crd;
pub mod decide;
pub mod masking;
pub mod secrets;
pub mod validate;

/// The API group of every Streamward custom resource.
pub const GROUP: &str = "streamward.io";

/// The CustomResourceDefinitions of every Streamward kind, in the order they are documented.
/// `just crds` writes each to `crds/<plural>.<group>.yaml`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        crd::StreamTarget::crd(),
        crd::StreamPolicy::crd(),
        crd::AccessGrant::crd(),
        crd::MaskingRule::crd(),
        crd::ApprovalRequest::crd(),
        crd::Approval::crd(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn crd(plural: &str) -> Value {
        let crd = crds()
            .into_iter()
            .find(|c| c.spec.names.plural == plural)
            .unwrap();
        serde_json::to_value(crd).unwrap()
    }

    fn schema<'v>(crd: &'v Value, path: &str) -> &'v Value {
        crd.pointer(&format!(
            "/spec/versions/0/schema/openAPIV3Schema/properties{path}"
        ))
        .unwrap_or_else(|| panic!("no {path}"))
    }

    #[test]
    fn every_kind_is_namespaced_in_the_streamward_category_with_a_short_name() {
        let names: Vec<_> = crds()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "streamtargets.streamward.io",
                "streampolicies.streamward.io",
                "accessgrants.streamward.io",
                "maskingrules.streamward.io",
                "approvalrequests.streamward.io",
                "approvals.streamward.io"
            ]
        );
        for (plural, short) in [
            ("streamtargets", "st"),
            ("streampolicies", "sp"),
            ("accessgrants", "ag"),
            ("maskingrules", "mr"),
            ("approvalrequests", "areq"),
            ("approvals", "apv"),
        ] {
            let crd = crd(plural);
            assert_eq!(crd["spec"]["group"], GROUP);
            assert_eq!(crd["spec"]["scope"], "Namespaced");
            assert_eq!(
                crd["spec"]["names"]["categories"],
                serde_json::json!(["streamward"])
            );
            assert_eq!(
                crd["spec"]["names"]["shortNames"],
                serde_json::json!([short])
            );
            let version = &crd["spec"]["versions"][0];
            assert_eq!(version["name"], crd::VERSION);
            assert_eq!(version["storage"], true);
            // An Approval is a decision and nothing more: it has no status to report.
            if plural != "approvals" {
                assert_eq!(version["subresources"]["status"], serde_json::json!({}));
            }
            let columns: Vec<_> = version["additionalPrinterColumns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(columns.last(), Some(&"Age"), "{plural}");
            let ready = match plural {
                "accessgrants" => "Active",
                "approvalrequests" => "Approved",
                "approvals" => "Decision",
                _ => "Ready",
            };
            assert!(columns.contains(&ready), "{plural}: {columns:?}");
        }
    }

    #[test]
    fn conditions_are_a_list_map_keyed_by_type() {
        for plural in [
            "streamtargets",
            "streampolicies",
            "accessgrants",
            "maskingrules",
            "approvalrequests",
        ] {
            let crd = crd(plural);
            let conditions = schema(&crd, "/status/properties/conditions");
            assert_eq!(conditions["x-kubernetes-list-type"], "map", "{plural}");
            assert_eq!(
                conditions["x-kubernetes-list-map-keys"],
                serde_json::json!(["type"])
            );
            let required = conditions["items"]["required"].as_array().unwrap();
            assert!(required.contains(&Value::from("type")));
            assert!(
                conditions["items"]["properties"]
                    .get("observedGeneration")
                    .is_some()
            );
        }
    }

    #[test]
    fn schemas_refuse_what_they_can() {
        let target = crd("streamtargets");
        let servers = schema(&target, "/spec/properties/bootstrapServers");
        assert_eq!(servers["minItems"], 1);
        assert!(servers["items"]["pattern"].is_string());

        let policy = crd("streampolicies");
        let rules = schema(&policy, "/spec/properties/rules/items/properties");
        assert_eq!(rules["resources"]["minItems"], 1);
        assert_eq!(rules["operations"]["minItems"], 1);
        assert_eq!(
            rules["effect"]["enum"],
            serde_json::json!(["Allow", "RequireApproval", "Deny"])
        );
        assert_eq!(
            rules["resources"]["items"]["properties"]["patternType"]["enum"],
            serde_json::json!(["Literal", "Prefixed", "Glob"])
        );
        assert_eq!(
            schema(&policy, "/spec/properties/mode")["default"],
            "Enforce"
        );
        assert_eq!(
            schema(&policy, "/spec/properties/auditLevel")["default"],
            "Metadata"
        );
        assert!(
            schema(&policy, "/spec/properties/subjects")["x-kubernetes-validations"].is_array()
        );

        let grant = crd("accessgrants");
        let spec = schema(&grant, "/spec");
        let rules: Vec<_> = spec["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap())
            .collect();
        assert!(rules.contains(&"has(self.expiryTime) != has(self.durationSeconds)"));
        assert_eq!(spec["properties"]["durationSeconds"]["minimum"], 1.0);
        assert_eq!(spec["properties"]["expiryTime"]["format"], "date-time");
        assert_eq!(spec["properties"]["reason"]["minLength"], 1);
        // On the spec, not the field: a field's rule is skipped when an update removes it.
        assert!(rules.contains(
            &"!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)"
        ));

        for plural in ["approvalrequests", "approvals"] {
            let crd = crd(plural);
            assert_eq!(
                schema(&crd, "/spec")["x-kubernetes-validations"][0]["rule"],
                "self == oldSelf",
                "{plural}"
            );
        }
        let approval = crd("approvals");
        assert_eq!(
            schema(&approval, "/spec/properties/decision")["enum"],
            serde_json::json!(["Approve", "Deny"])
        );
        assert_eq!(
            schema(&approval, "/spec/properties/requestRef/properties/kind")["enum"],
            serde_json::json!(["ApprovalRequest", "AccessGrant"])
        );

        let masking = crd("maskingrules");
        let spec = schema(&masking, "/spec");
        assert_eq!(spec["properties"]["topics"]["minItems"], 1);
        assert_eq!(spec["properties"]["direction"]["default"], "Consume");
        assert_eq!(spec["properties"]["format"]["default"], "Json");
        assert_eq!(spec["properties"]["onParseError"]["default"], "Redact");
        assert_eq!(spec["properties"]["binary"]["default"], "Pass");
        assert_eq!(
            spec["properties"]["format"]["enum"],
            serde_json::json!(["Json", "Text", "Binary"])
        );
        assert_eq!(
            spec["properties"]["topics"]["items"]["properties"]["patternType"]["enum"],
            serde_json::json!(["Literal", "Prefixed", "Glob"])
        );
        assert_eq!(
            spec["x-kubernetes-validations"].as_array().unwrap().len(),
            3
        );
        let detectors = &spec["properties"]["detectors"]["items"];
        assert!(
            detectors["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .unwrap()
                .contains("Regex")
        );
        let strategy = &detectors["properties"]["strategy"];
        assert_eq!(strategy["properties"]["count"]["minimum"], 0.0);
        assert_eq!(
            strategy["x-kubernetes-validations"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            strategy["properties"]["type"]["enum"],
            serde_json::json!([
                "Redact",
                "Nullify",
                "KeepFirst",
                "KeepLast",
                "Hmac",
                "FormatPreserving",
                "Placeholder"
            ])
        );
        assert!(spec["properties"]["exemptSubjects"]["x-kubernetes-validations"].is_array());
    }
}
