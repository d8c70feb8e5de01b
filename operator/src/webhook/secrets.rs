//! The TLS Secrets of the operator's namespace that hold a server's certificate: the webhook's,
//! and the audit collector's. By default the operator makes each from a CA of its own and
//! renews it (see [`super::certs`]); with `--external-certificates` someone else writes them
//! (cert-manager's `tls.crt`, `tls.key` and `ca.crt`) and the operator only reads them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use super::certs::{Renewal, TlsBundle, keys};
use crate::controller::FIELD_MANAGER;

/// What a TLS server serves, and what its clients must trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    /// The PEM certificate chain.
    pub cert: String,
    /// The PEM private key.
    pub key: String,
    /// The PEM CA certificates a client needs (the current CA and, during a rotation, the one
    /// before it).
    pub ca_bundle: String,
}

impl From<&TlsBundle> for Serving {
    fn from(bundle: &TlsBundle) -> Serving {
        Serving {
            cert: bundle.cert.clone(),
            key: bundle.key.clone(),
            ca_bundle: bundle.ca_bundle(),
        }
    }
}

/// One TLS Secret in the operator's namespace.
pub struct TlsSecret {
    api: Api<Secret>,
    name: String,
    names: Vec<String>,
    lifetime: Duration,
    external: bool,
}

impl TlsSecret {
    /// Secret `name` of `api`'s namespace, for a server known by `names` (DNS names or IP
    /// addresses), with certificates that live `lifetime`; `external` when another party
    /// writes it.
    pub fn new(
        api: Api<Secret>,
        name: &str,
        names: Vec<String>,
        lifetime: Duration,
        external: bool,
    ) -> TlsSecret {
        TlsSecret {
            api,
            name: name.to_owned(),
            names,
            lifetime,
            external,
        }
    }

    /// What to serve now: read, or made or renewed (and written back) when due.
    pub async fn current(&self) -> anyhow::Result<Serving> {
        if self.external {
            self.read_external().await
        } else {
            self.current_bundle()
                .await
                .map(|bundle| Serving::from(&bundle))
        }
    }

    async fn data(&self) -> anyhow::Result<Option<(Secret, BTreeMap<String, Vec<u8>>)>> {
        let secret = self
            .api
            .get_opt(&self.name)
            .await
            .with_context(|| format!("reading Secret {}", self.name))?;
        Ok(secret.map(|secret| {
            let data = secret
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            (secret, data)
        }))
    }

    async fn read_external(&self) -> anyhow::Result<Serving> {
        let name = &self.name;
        let Some((_, data)) = self.data().await? else {
            anyhow::bail!(
                "Secret {name} does not exist yet: with --external-certificates another party \
                 (cert-manager) must write it"
            );
        };
        let text = |key: &str| -> anyhow::Result<String> {
            let bytes = data
                .get(key)
                .filter(|bytes| !bytes.is_empty())
                .with_context(|| format!("Secret {name} has no {key}"))?;
            String::from_utf8(bytes.clone()).with_context(|| format!("Secret {name}: {key}"))
        };
        Ok(Serving {
            cert: text(keys::TLS_CERT)?,
            key: text(keys::TLS_KEY)?,
            ca_bundle: text(keys::CA_CERT)?,
        })
    }

    /// The bundle in the Secret, made or renewed (and written back) when due. Replicas race
    /// through optimistic concurrency: a write that lost is read again.
    async fn current_bundle(&self) -> anyhow::Result<TlsBundle> {
        let name = &self.name;
        for _ in 0..5 {
            let now = Timestamp::now();
            let existing = self.data().await?;
            let stored = existing
                .as_ref()
                .and_then(|(_, data)| TlsBundle::from_data(data));
            let (next, renewal) = match &stored {
                Some(bundle) => bundle.renew(&self.names, now, self.lifetime)?,
                None => (
                    TlsBundle::generate(&self.names, now, self.lifetime)?,
                    Renewal::Authority,
                ),
            };
            if stored.as_ref() == Some(&next) {
                return Ok(next);
            }
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    resource_version: existing
                        .as_ref()
                        .and_then(|(secret, _)| secret.resource_version()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_owned(),
                            FIELD_MANAGER.to_owned(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                string_data: Some(next.to_data()),
                type_: Some("Opaque".to_owned()),
                ..Default::default()
            };
            let written = match existing {
                None => self.api.create(&PostParams::default(), &secret).await,
                Some(_) => {
                    self.api
                        .replace(name, &PostParams::default(), &secret)
                        .await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(?renewal, secret = %name, "certificate written");
                    return Ok(next);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("writing Secret {name}"));
                }
            }
        }
        anyhow::bail!("Secret {name} kept changing under this replica; will retry")
    }
}
