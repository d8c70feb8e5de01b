//! What an opted-in pod may not do, pure. The proxy is the enforcement point, so the pod's
//! author (not trusted) must not be able to fake it, reach into it, or change it:
//!
//! - names starting with `streamward-` are the webhook's: a container or volume of the author
//!   with such a name is refused, unless it is exactly what the webhook itself would add (as on
//!   re-invocation, or for a pod spec copied from an injected pod);
//! - no other container mounts the proxy's volumes, and no volume of the author projects a
//!   token for an audience of Streamward's (the collector's);
//! - `shareProcessNamespace` is refused: through `/proc` the app could read the proxy's files;
//! - once injected, the proxy container cannot be changed, and an ephemeral container can
//!   neither target it nor mount its volumes.

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde_json::Value;

/// The prefix of every container and volume name the webhook adds.
pub const RESERVED_PREFIX: &str = "streamward-";

/// A refusal, said to the user.
fn reserved(what: &str) -> String {
    format!(
        "{what}: names starting with {RESERVED_PREFIX:?} are reserved for the Streamward proxy \
         the admission webhook adds; rename it, or remove it and let the webhook add the proxy"
    )
}

/// Whether `found`, as the API server holds it, is `planned` (what the webhook would add now):
/// equal, except for the fields the API server fills in with their defaults. The author may
/// not add anything else (a `command`, another mount) to a container that looks like ours.
pub fn same_as_planned(found: &Value, planned: &Value) -> bool {
    difference(found, planned, "").is_none()
}

/// Where `found` first differs from `planned` (a JSON path), if it does.
pub fn difference(found: &Value, planned: &Value, at: &str) -> Option<String> {
    match (found, planned) {
        (Value::Object(found), Value::Object(planned)) => {
            for (key, want) in planned {
                let path = format!("{at}.{key}");
                match found.get(key) {
                    Some(have) => {
                        if let Some(path) = difference(have, want, &path) {
                            return Some(path);
                        }
                    }
                    // Unset and `false` are one to the API server, which drops the latter.
                    None if want.is_null() || *want == Value::Bool(false) => {}
                    None => return Some(path),
                }
            }
            found
                .iter()
                .find(|(key, have)| !planned.contains_key(*key) && !defaulted(key, have))
                .map(|(key, _)| format!("{at}.{key}"))
        }
        (Value::Array(found), Value::Array(planned)) => {
            if found.len() != planned.len() {
                return Some(format!("{at}[]"));
            }
            found
                .iter()
                .zip(planned)
                .enumerate()
                .find_map(|(i, (have, want))| difference(have, want, &format!("{at}[{i}]")))
        }
        _ => (found != planned).then(|| at.to_owned()),
    }
}

/// The fields the API server defaults in a container or volume the webhook wrote, with their
/// default values (resources are normalised by the API server and give nothing away).
fn defaulted(key: &str, value: &Value) -> bool {
    match key {
        "terminationMessagePath" => value == "/dev/termination-log",
        "terminationMessagePolicy" => value == "File",
        "imagePullPolicy" => value.is_string(),
        "timeoutSeconds" | "successThreshold" => value == 1,
        "scheme" => value == "HTTP",
        "apiVersion" => value == "v1",
        "defaultMode" => value == 420,
        "resources" => true,
        _ => false,
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Checks a pod at CREATE: `proxy` and `volumes` are what the webhook would add to it now
/// (`None` when it holds no container named like the proxy), `audiences` the token audiences
/// only the proxy may have.
pub fn check_create(
    pod: &Pod,
    proxy: Option<&Container>,
    volumes: &[Volume],
    audiences: &[&str],
) -> Result<(), String> {
    let empty = Default::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    if spec.share_process_namespace == Some(true) {
        return Err(
            "the pod asks for the Streamward proxy but sets shareProcessNamespace: the app could \
             read the proxy's credentials through /proc; drop it"
                .to_owned(),
        );
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for container in containers {
        if !container.name.starts_with(RESERVED_PREFIX) {
            for mount in container.volume_mounts.iter().flatten() {
                if mount.name.starts_with(RESERVED_PREFIX) {
                    return Err(format!(
                        "container {:?} mounts volume {:?}, which only the Streamward proxy may mount",
                        container.name, mount.name
                    ));
                }
            }
            continue;
        }
        let mismatch = match proxy {
            Some(planned) if container.name == planned.name => {
                difference(&to_value(container), &to_value(planned), "")
            }
            _ => Some(String::new()),
        };
        if let Some(path) = mismatch {
            let differs = if path.is_empty() {
                String::new()
            } else {
                format!(" (it differs from the proxy the webhook adds at {path})")
            };
            return Err(reserved(&format!(
                "container {:?}{differs}",
                container.name
            )));
        }
    }
    for ephemeral in spec.ephemeral_containers.iter().flatten() {
        if ephemeral.name.starts_with(RESERVED_PREFIX) {
            return Err(reserved(&format!(
                "ephemeral container {:?}",
                ephemeral.name
            )));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.name.starts_with(RESERVED_PREFIX) {
            let mismatch = match volumes.iter().find(|planned| planned.name == volume.name) {
                Some(planned) => difference(&to_value(volume), &to_value(planned), ""),
                None => Some(String::new()),
            };
            if let Some(path) = mismatch {
                let differs = if path.is_empty() {
                    String::new()
                } else {
                    format!(" (it differs from the webhook's at {path})")
                };
                return Err(reserved(&format!("volume {:?}{differs}", volume.name)));
            }
            continue;
        }
        let sources = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten();
        for source in sources {
            let audience = source
                .service_account_token
                .as_ref()
                .and_then(|t| t.audience.as_deref());
            if let Some(audience) = audience.filter(|a| audiences.contains(a)) {
                return Err(format!(
                    "volume {:?} projects a token for {audience:?}, an audience only the \
                     Streamward proxy may hold",
                    volume.name
                ));
            }
        }
    }
    Ok(())
}

/// The proxy container of a pod, as its JSON.
fn proxy_of(pod: &Pod, name: &str) -> Option<Value> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .map(to_value)
}

/// Checks an UPDATE of a pod (its spec, or its `ephemeralcontainers` subresource) whose old
/// version holds the proxy container `proxy_name`.
pub fn check_update(old: &Pod, new: &Pod, proxy_name: &str) -> Result<(), String> {
    let Some(before) = proxy_of(old, proxy_name) else {
        return Ok(());
    };
    if proxy_of(new, proxy_name).as_ref() != Some(&before) {
        return Err(format!(
            "the Streamward proxy container {proxy_name:?} of an injected pod cannot be changed"
        ));
    }
    let existing: Vec<&str> = old
        .spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .collect();
    let added = new
        .spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .filter(|c| !existing.contains(&c.name.as_str()));
    for ephemeral in added {
        if ephemeral.target_container_name.as_deref() == Some(proxy_name) {
            return Err(format!(
                "ephemeral container {:?} may not target the Streamward proxy: it would see the \
                 proxy's processes and files; debug the app container instead",
                ephemeral.name
            ));
        }
        if ephemeral.name.starts_with(RESERVED_PREFIX) {
            return Err(reserved(&format!(
                "ephemeral container {:?}",
                ephemeral.name
            )));
        }
        for mount in ephemeral.volume_mounts.iter().flatten() {
            if mount.name.starts_with(RESERVED_PREFIX) {
                return Err(format!(
                    "ephemeral container {:?} mounts volume {:?}, which only the Streamward \
                     proxy may mount",
                    ephemeral.name, mount.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_the_api_server_adds_are_tolerated_and_nothing_else() {
        let planned = json!({"name": "streamward-proxy", "image": "p:1", "args": ["--a"],
            "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]});
        let mut found = planned.clone();
        found["terminationMessagePath"] = json!("/dev/termination-log");
        found["imagePullPolicy"] = json!("IfNotPresent");
        found["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] = json!("v1");
        assert!(same_as_planned(&found, &planned));
        let mut command = found.clone();
        command["command"] = json!(["/bin/sh", "-c", "cat /var/run/streamward/secrets/*"]);
        assert!(!same_as_planned(&command, &planned));
        let mut image = found.clone();
        image["image"] = json!("evil:1");
        assert!(!same_as_planned(&image, &planned));
        let mut args = found;
        args["args"] = json!(["--a", "--b"]);
        assert!(!same_as_planned(&args, &planned));
    }
}
