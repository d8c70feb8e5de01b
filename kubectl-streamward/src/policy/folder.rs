//! A folder of custom resources as `kubectl apply -f DIR` would read it, compiled per identity
//! with the operator's own function.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use streamward_api::compile::{Inputs, compile, parse_manifests};
use streamward_api::config::{ProxyConfig, WorkloadIdentity};

use super::BadInput;

/// The custom resources of a folder, with every object that has no creation time counted as
/// created at one instant (the API server stamps it in a cluster).
pub struct Folder {
    /// Where they came from, for messages.
    pub dir: PathBuf,
    /// What was parsed.
    pub inputs: Inputs,
    /// Compiled configs by identity, compiled on first use.
    configs: BTreeMap<WorkloadIdentity, ProxyConfig>,
}

impl Folder {
    /// Reads every `*.yaml`/`*.yml` file of `dir` (not its subfolders), in name order, as local
    /// mode does. Objects without `metadata.creationTimestamp` count as created at `created`.
    pub fn read(dir: &Path, created: Timestamp) -> Result<Folder, BadInput> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| BadInput(format!("reading folder {}: {e}", dir.display())))?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(BadInput(format!(
                "{} has no .yaml or .yml files to test",
                dir.display()
            )));
        }
        let mut inputs = Inputs::default();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| BadInput(format!("reading {}: {e}", file.display())))?;
            let parsed =
                parse_manifests(&text).map_err(|e| BadInput(format!("{}: {e}", file.display())))?;
            inputs.extend(parsed);
        }
        inputs.default_creation_timestamps(created);
        Ok(Folder {
            dir: dir.to_path_buf(),
            inputs,
            configs: BTreeMap::new(),
        })
    }

    /// The namespaces the objects name (objects without one are left out).
    pub fn namespaces(&self) -> BTreeSet<String> {
        let i = &self.inputs;
        i.targets
            .iter()
            .map(|o| &o.metadata)
            .chain(i.policies.iter().map(|o| &o.metadata))
            .chain(i.grants.iter().map(|o| &o.metadata))
            .chain(i.masking_rules.iter().map(|o| &o.metadata))
            .filter_map(|m| m.namespace.clone())
            .collect()
    }

    /// The compiled config of `identity`, as the operator would write it into
    /// `streamward-config-<serviceAccount>`.
    pub fn config(&mut self, identity: &WorkloadIdentity) -> Result<&ProxyConfig, BadInput> {
        if !self.configs.contains_key(identity) {
            let config = compile(&self.inputs, identity).map_err(|e| {
                BadInput(format!(
                    "{}: the resources do not compile for {}/{}: {e}",
                    self.dir.display(),
                    identity.namespace,
                    identity.service_account
                ))
            })?;
            self.configs.insert(identity.clone(), config);
        }
        Ok(&self.configs[identity])
    }
}
