//! Helm, built from its Go module like [`crate::kube`] builds kube-apiserver, and a small
//! wrapper that runs it against one kubeconfig and the chart in `charts/streamward`.
//!
//! The tests use it to lint, render, install, upgrade and uninstall the chart against the
//! harness's real kube-apiserver; `operator/tests` uses [`Helm::template`] to apply the chart's
//! exact RBAC, and [`operator_args`] reads the operator's command line from a rendering.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize as _;

use crate::cache;
use crate::process::run;

/// The pinned Helm release.
pub const HELM_VERSION: &str = "v4.3.2";
/// The release name the rendering helpers use unless told otherwise.
pub const RELEASE: &str = "streamward";
/// The namespace the rendering helpers use unless told otherwise (the chart's documented one).
pub const NAMESPACE: &str = "streamward-system";

/// Builds (once) `helm` with the machine's Go toolchain and returns its path.
pub fn helm_binary() -> Result<PathBuf> {
    let dir = cache::ensure(&format!("helm-{HELM_VERSION}"), |dir| {
        let bin = dir.join("bin");
        run(
            &format!("go install helm.sh/helm/v4/cmd/helm@{HELM_VERSION}"),
            Command::new("go")
                // Outside any module: `go install pkg@version` builds it from its own go.mod.
                .current_dir(dir)
                .env("GOBIN", &bin)
                // Never fetch another toolchain: the machine's Go must do.
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0")
                .args(["install", "-trimpath"])
                // What Helm's own Makefile stamps; `helm version` says "v4.3" otherwise.
                .arg(format!(
                    "-ldflags=-s -w -X helm.sh/helm/v4/internal/version.version={HELM_VERSION}"
                ))
                .arg(format!("helm.sh/helm/v4/cmd/helm@{HELM_VERSION}")),
        )?;
        Ok(())
    })?;
    Ok(dir.join("bin").join("helm"))
}

/// The chart's folder, `charts/streamward` of this source tree.
pub fn chart_dir() -> PathBuf {
    cache::source_root().join("charts").join("streamward")
}

/// `helm` with one kubeconfig (or none, for `lint` and `template`), and its own config, cache
/// and data folders so runs never read or write the user's `~/.config/helm`.
pub struct Helm {
    binary: PathBuf,
    kubeconfig: Option<PathBuf>,
    home: tempfile::TempDir,
}

impl Helm {
    /// Helm against the cluster of `kubeconfig`.
    pub fn new(kubeconfig: &Path) -> Result<Helm> {
        Helm::build(Some(kubeconfig.to_path_buf()))
    }

    /// Helm without a cluster: enough for `lint` and `template`.
    pub fn offline() -> Result<Helm> {
        Helm::build(None)
    }

    fn build(kubeconfig: Option<PathBuf>) -> Result<Helm> {
        let binary = helm_binary()?;
        let home = tempfile::Builder::new()
            .prefix("streamward-helm-")
            .tempdir()
            .context("creating Helm's config/cache/data folder")?;
        Ok(Helm {
            binary,
            kubeconfig,
            home,
        })
    }

    /// A `helm` command with this kubeconfig and the private Helm folders; add the arguments.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        let home = self.home.path();
        command
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"));
        if let Some(kubeconfig) = &self.kubeconfig {
            command.arg("--kubeconfig").arg(kubeconfig);
        }
        command
    }

    /// Runs `helm <args>` and returns its stdout; fails with stdout and stderr otherwise.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let output = run(
            &format!("helm {}", args.join(" ")),
            self.command().args(args),
        )?;
        String::from_utf8(output.stdout).context("helm printed something that is not UTF-8")
    }

    /// `helm lint --strict` of the chart (warnings fail too).
    pub fn lint(&self) -> Result<String> {
        let chart = chart_str()?;
        self.run(&["lint", "--strict", &chart])
    }

    /// The chart rendered as release [`RELEASE`] in [`NAMESPACE`] with `values` (`--set`).
    pub fn template(&self, values: &[(&str, &str)]) -> Result<String> {
        self.template_with(values, &[])
    }

    /// Like [`Helm::template`], with more `helm template` flags (`--include-crds`,
    /// `--show-only templates/x.yaml`, `--namespace other` overrides the default).
    pub fn template_with(&self, values: &[(&str, &str)], flags: &[&str]) -> Result<String> {
        let chart = chart_str()?;
        let mut args = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
        args.extend_from_slice(flags);
        let sets = set_args(values);
        args.extend(sets.iter().map(String::as_str));
        self.run(&args)
            .with_context(|| format!("rendering the chart with {values:?}"))
    }

    /// `helm install release chart -n namespace --create-namespace --set …`, without waiting
    /// (there may be no kubelet to make anything ready).
    pub fn install(&self, release: &str, namespace: &str, set: &[(&str, &str)]) -> Result<String> {
        self.release_command("install", release, namespace, set, &["--create-namespace"])
    }

    /// `helm upgrade release chart -n namespace --set …` (values not given return to the
    /// chart's defaults, as with plain `helm upgrade`).
    pub fn upgrade(&self, release: &str, namespace: &str, set: &[(&str, &str)]) -> Result<String> {
        self.release_command("upgrade", release, namespace, set, &[])
    }

    /// `helm uninstall release -n namespace`.
    pub fn uninstall(&self, release: &str, namespace: &str) -> Result<String> {
        self.run(&["uninstall", release, "--namespace", namespace])
            .with_context(|| format!("uninstalling release {namespace}/{release}"))
    }

    fn release_command(
        &self,
        verb: &str,
        release: &str,
        namespace: &str,
        set: &[(&str, &str)],
        flags: &[&str],
    ) -> Result<String> {
        if self.kubeconfig.is_none() {
            bail!("helm {verb} needs a cluster: make the Helm with Helm::new(kubeconfig)");
        }
        let chart = chart_str()?;
        let mut args = vec![verb, release, &chart, "--namespace", namespace];
        args.extend_from_slice(flags);
        let sets = set_args(set);
        args.extend(sets.iter().map(String::as_str));
        self.run(&args)
            .with_context(|| format!("helm {verb} of release {namespace}/{release} with {set:?}"))
    }
}

fn chart_str() -> Result<String> {
    let chart = chart_dir();
    if !chart.join("Chart.yaml").is_file() {
        bail!("no chart at {} (Chart.yaml is missing)", chart.display());
    }
    chart
        .to_str()
        .map(str::to_owned)
        .with_context(|| format!("the chart path {} is not UTF-8", chart.display()))
}

fn set_args(values: &[(&str, &str)]) -> Vec<String> {
    values
        .iter()
        .flat_map(|(key, value)| ["--set".to_owned(), format!("{key}={value}")])
        .collect()
}

/// The objects of a multi-document YAML rendering (empty documents skipped).
pub fn objects(rendered: &str) -> Result<Vec<serde_yaml::Value>> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(rendered) {
        let value = serde_yaml::Value::deserialize(document)
            .context("reading a document of the rendered chart")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// The object of `kind` named `name` in a rendering.
pub fn find_object(rendered: &str, kind: &str, name: &str) -> Result<serde_yaml::Value> {
    objects(rendered)?
        .into_iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .with_context(|| format!("the rendering has no {kind} named {name}"))
}

/// The command-line arguments of the `operator` container of the operator Deployment
/// (`<release>-operator` for the default release name) in a rendering of the chart: what a
/// test passes to `streamward-operator` to run it exactly as the chart does.
pub fn operator_args(rendered: &str) -> Result<Vec<String>> {
    container_args(
        rendered,
        "Deployment",
        &format!("{RELEASE}-operator"),
        "operator",
    )
}

/// The `args` of container `container` of the workload `kind`/`name` in a rendering.
pub fn container_args(
    rendered: &str,
    kind: &str,
    name: &str,
    container: &str,
) -> Result<Vec<String>> {
    let workload = find_object(rendered, kind, name)?;
    let containers = workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .with_context(|| format!("{kind} {name} has no containers"))?;
    let found = containers
        .iter()
        .find(|c| c["name"].as_str() == Some(container))
        .with_context(|| format!("{kind} {name} has no container {container}"))?;
    found["args"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|arg| {
            arg.as_str()
                .map(str::to_owned)
                .with_context(|| format!("{kind} {name}: an argument is not a string: {arg:?}"))
        })
        .collect()
}
