//! The operator's config-signing key: every compiled config it writes is signed, and the
//! injected proxy, given the public key, refuses a config someone else wrote (a namespace
//! editor can edit the ConfigMap in their namespace, but cannot sign).
//!
//! The key is an Ed25519 key pair kept as PKCS#8 in a Secret of the operator's namespace,
//! made by the first replica that finds none; replicas race through the API server (a create
//! that lost is read again).

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::controller::FIELD_MANAGER;

/// The key in the Secret's data.
const PKCS8_KEY: &str = "signing.pkcs8";

/// A key pair that signs configs.
pub struct ConfigSigner {
    pair: Ed25519KeyPair,
    public_hex: String,
}

impl std::fmt::Debug for ConfigSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSigner")
            .field("public_key", &self.public_hex)
            .finish_non_exhaustive()
    }
}

impl ConfigSigner {
    /// The signer of a PKCS#8 (v2) Ed25519 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> anyhow::Result<ConfigSigner> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        let public_hex = hex::encode(pair.public_key().as_ref());
        Ok(ConfigSigner { pair, public_hex })
    }

    /// A new key, and its PKCS#8 to keep.
    pub fn generate() -> anyhow::Result<(ConfigSigner, Vec<u8>)> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| anyhow::anyhow!("generating an Ed25519 key: {e}"))?;
        let signer = ConfigSigner::from_pkcs8(pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    /// The signature (hex) of `data`.
    pub fn sign(&self, data: &[u8]) -> String {
        hex::encode(self.pair.sign(data).as_ref())
    }

    /// The public key (hex), which the injected proxies get.
    pub fn public_key_hex(&self) -> &str {
        &self.public_hex
    }
}

/// Whether `signature` (hex) is the signature of `data` by `public_key` (hex).
pub fn verifies(public_key: &str, data: &[u8], signature: &str) -> bool {
    let (Ok(key), Ok(signature)) = (hex::decode(public_key), hex::decode(signature)) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, key)
        .verify(data, &signature)
        .is_ok()
}

/// The signer kept in Secret `name` of `secrets`' namespace, made there if there is none.
pub async fn load_or_create(secrets: &Api<Secret>, name: &str) -> anyhow::Result<ConfigSigner> {
    for _ in 0..5 {
        if let Some(secret) = secrets
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {name}"))?
        {
            let pkcs8 = secret
                .data
                .as_ref()
                .and_then(|d| d.get(PKCS8_KEY))
                .with_context(|| format!("Secret {name} has no {PKCS8_KEY}"))?;
            return ConfigSigner::from_pkcs8(&pkcs8.0)
                .with_context(|| format!("Secret {name}: {PKCS8_KEY}"));
        }
        let (signer, pkcs8) = ConfigSigner::generate()?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([(PKCS8_KEY.to_owned(), ByteString(pkcs8))].into()),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %name, public_key = %signer.public_key_hex(), "made the config-signing key");
                return Ok(signer);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => return Err(error).with_context(|| format!("creating Secret {name}")),
        }
    }
    anyhow::bail!("Secret {name} kept changing under this replica; will retry")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_for_its_data_and_key_only() {
        let (signer, pkcs8) = ConfigSigner::generate().unwrap();
        let again = ConfigSigner::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(signer.public_key_hex(), again.public_key_hex());
        let signature = signer.sign(b"{\"rules\":[]}");
        assert!(verifies(
            signer.public_key_hex(),
            b"{\"rules\":[]}",
            &signature
        ));
        assert!(!verifies(
            signer.public_key_hex(),
            b"{\"rules\":[\"allow-all\"]}",
            &signature
        ));
        let (other, _) = ConfigSigner::generate().unwrap();
        assert!(!verifies(
            other.public_key_hex(),
            b"{\"rules\":[]}",
            &signature
        ));
        assert!(!verifies(signer.public_key_hex(), b"{\"rules\":[]}", "zz"));
    }
}
