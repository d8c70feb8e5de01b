//! Signed checkpoints: the collector's Ed25519 signature over the state of the chain.
//!
//! The hash chain alone shows that records were changed, removed or moved, but someone who can
//! write the files could rewrite the whole chain from the changed record on. A checkpoint — the
//! segment, its first and last index, the `prev` of its first record and the hash of its last
//! one, signed with a key the writer of the files does not have to hold — pins the chain at
//! that point. Checkpoints also anchor what retention removes: once the oldest segments are
//! deleted, the next segment's first `prev` is checked against the signed checkpoint of the
//! one before.
//!
//! Keys are files of hex text: the private key is a PKCS#8 v2 document (`--signing-key`), the
//! public key the raw 32 bytes (`checkpoint.pub` in the data folder, or a trusted copy passed
//! to `verify --public-key`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// One checkpoint line of `checkpoints.ndjson`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The segment file name.
    pub segment: String,
    /// The index of its first record.
    pub first_index: u64,
    /// The index of its last record at the time of the checkpoint.
    pub last_index: u64,
    /// The `prev` of its first record (the hash of the last record of the segment before).
    pub first_prev: String,
    /// The hash of the record at `last_index`.
    pub last_hash: String,
    /// Whether the segment was closed (no more records will be appended to it).
    pub sealed: bool,
    /// Whether retention removed the records up to `last_index` (this segment and all before
    /// it): the first record left must follow `last_hash`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// When the checkpoint was written.
    pub time: jiff::Timestamp,
    /// The Ed25519 signature (hex) over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The bytes that are signed: every field but the signature, in a fixed text form.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "streamward-checkpoint-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.segment,
            self.first_index,
            self.last_index,
            self.first_prev,
            self.last_hash,
            self.sealed,
            self.removed,
            self.time
        )
        .into_bytes()
    }

    /// Whether the signature is `key`'s over this checkpoint.
    pub fn is_signed_by(&self, key: &PublicKey) -> bool {
        let Ok(signature) = hex::decode(&self.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &key.0)
            .verify(&self.message(), &signature)
            .is_ok()
    }
}

/// The collector's signing key.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// Reads the key at `path`, or makes one there (mode 0600) if there is no file yet.
    pub fn load_or_create(path: &Path) -> Result<SigningKey> {
        if !path.exists() {
            let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
            write_private(path, &hex::encode(document.as_ref()))
                .with_context(|| format!("writing the new signing key {}", path.display()))?;
            tracing::info!(path = %path.display(), "made a new checkpoint signing key");
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the signing key {}", path.display()))?;
        let der = hex::decode(text.trim()).with_context(|| {
            format!(
                "the signing key {} is not hex text (a PKCS#8 Ed25519 key)",
                path.display()
            )
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| {
            anyhow::anyhow!(
                "the signing key {} is not a PKCS#8 v2 Ed25519 key: {e}",
                path.display()
            )
        })?;
        Ok(SigningKey(pair))
    }

    /// Its public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.public_key().as_ref().to_vec())
    }

    /// Signs `checkpoint` in place.
    pub fn sign(&self, checkpoint: &mut Checkpoint) {
        checkpoint.signature = hex::encode(self.0.sign(&checkpoint.message()).as_ref());
    }
}

/// A checkpoint verification key: 32 bytes of Ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

impl PublicKey {
    /// Reads a public key file (64 hex digits).
    pub fn read(path: &Path) -> Result<PublicKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the public key {}", path.display()))?;
        PublicKey::parse(text.trim())
            .with_context(|| format!("reading the public key {}", path.display()))
    }

    /// Parses 64 hex digits.
    pub fn parse(text: &str) -> Result<PublicKey> {
        let bytes = hex::decode(text).context("a public key is 64 hex digits")?;
        if bytes.len() != 32 {
            bail!(
                "a public key is 32 bytes (64 hex digits), not {}",
                bytes.len()
            );
        }
        Ok(PublicKey(bytes))
    }

    /// The key as hex text.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_verifies_and_a_changed_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("key")).unwrap();
        let again = SigningKey::load_or_create(&dir.path().join("key")).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let mut checkpoint = Checkpoint {
            segment: "00000000000000000000.seg".into(),
            first_index: 0,
            last_index: 9,
            first_prev: crate::chain::GENESIS.into(),
            last_hash: "ab".repeat(32),
            sealed: true,
            removed: false,
            time: "2026-12-01T10:00:00Z".parse().unwrap(),
            signature: String::new(),
        };
        key.sign(&mut checkpoint);
        let public = PublicKey::parse(&key.public_key().to_hex()).unwrap();
        assert!(checkpoint.is_signed_by(&public));
        checkpoint.last_index = 8;
        assert!(!checkpoint.is_signed_by(&public));
    }
}
