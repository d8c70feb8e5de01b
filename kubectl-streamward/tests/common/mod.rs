//! What the plugin's tests against a real kube-apiserver share: the plugin installed where
//! kubectl finds it, and run as a person.

use std::path::{Path, PathBuf};
use std::process::Command;

use streamward_e2e::kube::KubeApiServer;

/// A folder holding only the plugin, as `kubectl-streamward` (how krew or a user installs it).
pub fn plugin_dir(server: &KubeApiServer) -> PathBuf {
    let dir = server.dir().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_kubectl-streamward"),
        dir.join("kubectl-streamward"),
    )
    .unwrap();
    dir
}

/// `kubectl streamward ARGS` as the person of `kubeconfig`: (exit code, stdout, stderr).
pub fn plugin_as(
    server: &KubeApiServer,
    plugins: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let kubectl = server.binary("kubectl");
    let kubectl_dir = kubectl.parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        plugins.display(),
        kubectl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new(&kubectl)
        .arg("streamward")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
