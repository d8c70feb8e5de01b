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
//! Checkpoints are chained too: each carries its number (`seq`) and the SHA-256 of the
//! checkpoint line before it (`prev`), so a checkpoint removed from the middle of the file is
//! found, and one written at a clean shutdown says so (`stopped`), so a store cut back to an
//! earlier state no longer ends in one.
//!
//! The private key (`--signing-key`) is a PKCS#8 Ed25519 document, as hex text (what the
//! collector writes) or PEM (`openssl genpkey -algorithm ed25519`); the public key is the raw
//! 32 bytes as hex (`checkpoint.pub` in the data folder, or a trusted copy passed to
//! `verify --public-key`), and its fingerprint the hex SHA-256 of those bytes.

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
    /// Whether the collector wrote it as it stopped cleanly: nothing was appended after it in
    /// that run. (In a stopped store's open segment `last_index` may be `first_index - 1`: the
    /// segment is still empty.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// Its number in the checkpoints file, from 0 (absent in checkpoints written before
    /// checkpoints were chained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The SHA-256 (hex) of the checkpoint line before it (64 zeros for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// When the checkpoint was written.
    pub time: jiff::Timestamp,
    /// The Ed25519 signature (hex) over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The bytes that are signed: every field but the signature, in a fixed text form (v1 for
    /// checkpoints from before the chain, so their signatures still verify).
    pub fn message(&self) -> Vec<u8> {
        let v1 = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.segment,
            self.first_index,
            self.last_index,
            self.first_prev,
            self.last_hash,
            self.sealed,
            self.removed,
            self.time
        );
        if self.seq.is_none() && self.prev.is_none() && !self.stopped {
            return format!("streamward-checkpoint-v1\n{v1}").into_bytes();
        }
        format!(
            "streamward-checkpoint-v2\n{v1}\n{}\n{}\n{}",
            self.stopped,
            self.seq.map(|s| s.to_string()).unwrap_or_default(),
            self.prev.as_deref().unwrap_or_default()
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
    /// Makes a new key and writes it to `path` (mode 0600), which must not exist yet.
    pub fn create(path: &Path) -> Result<SigningKey> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
        write_private(path, &hex::encode(document.as_ref()))
            .with_context(|| format!("writing the new signing key {}", path.display()))?;
        SigningKey::load(path)
    }

    /// Reads the key at `path`: hex text of a PKCS#8 document, or PEM (`PRIVATE KEY`).
    pub fn load(path: &Path) -> Result<SigningKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the signing key {}", path.display()))?;
        let der = if text.trim_start().starts_with("-----BEGIN") {
            match rustls_pemfile::private_key(&mut text.as_bytes()) {
                Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der))) => {
                    der.secret_pkcs8_der().to_vec()
                }
                _ => bail!(
                    "the signing key {} is PEM but not a PKCS#8 PRIVATE KEY (make one with \
                     `openssl genpkey -algorithm ed25519`)",
                    path.display()
                ),
            }
        } else {
            hex::decode(text.trim()).with_context(|| {
                format!(
                    "the signing key {} is neither hex text nor PEM (a PKCS#8 Ed25519 key)",
                    path.display()
                )
            })?
        };
        // v1 documents (OpenSSL's, Go's) carry no public key; ring derives it.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| {
            anyhow::anyhow!(
                "the signing key {} is not a PKCS#8 Ed25519 key: {e}",
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

    /// Its fingerprint: the hex SHA-256 of the 32 key bytes.
    pub fn fingerprint(&self) -> String {
        crate::chain::sha256_hex(&self.0)
    }
}

/// Reads a fingerprint as people copy it: 64 hex digits, any case, optionally after `sha256:`
/// and with `:` between bytes.
pub fn parse_fingerprint(text: &str) -> Result<String> {
    let text = text.trim();
    let bare = text
        .strip_prefix("sha256:")
        .or_else(|| text.strip_prefix("SHA256:"))
        .unwrap_or(text);
    let hex: String = bare
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("a key fingerprint is 64 hex digits (the SHA-256 of the public key), not {text:?}");
    }
    Ok(hex)
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
        let key = SigningKey::create(&dir.path().join("key")).unwrap();
        let again = SigningKey::load(&dir.path().join("key")).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert!(
            SigningKey::create(&dir.path().join("key")).is_err(),
            "never overwritten"
        );
        let mut checkpoint = Checkpoint {
            segment: "00000000000000000000.seg".into(),
            first_index: 0,
            last_index: 9,
            first_prev: crate::chain::GENESIS.into(),
            last_hash: "ab".repeat(32),
            sealed: true,
            removed: false,
            stopped: false,
            seq: Some(4),
            prev: Some("cd".repeat(32)),
            time: "2026-12-01T10:00:00Z".parse().unwrap(),
            signature: String::new(),
        };
        key.sign(&mut checkpoint);
        let public = PublicKey::parse(&key.public_key().to_hex()).unwrap();
        assert!(checkpoint.is_signed_by(&public));
        for change in [
            |c: &mut Checkpoint| c.last_index = 8,
            |c: &mut Checkpoint| c.seq = Some(3),
            |c: &mut Checkpoint| c.stopped = true,
            |c: &mut Checkpoint| c.prev = Some("ef".repeat(32)),
        ] {
            let mut changed = checkpoint.clone();
            change(&mut changed);
            assert!(!changed.is_signed_by(&public));
        }
    }

    #[test]
    fn a_pem_key_from_openssl_signs_and_fingerprints_parse_as_people_copy_them() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key inside).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.pem"), pem).unwrap();
        let key = SigningKey::load(&dir.path().join("key.pem")).unwrap();
        let fingerprint = key.public_key().fingerprint();
        assert_eq!(fingerprint.len(), 64);
        let spaced = format!("SHA256:{}", fingerprint.to_uppercase());
        assert_eq!(parse_fingerprint(&spaced).unwrap(), fingerprint);
        assert!(parse_fingerprint("abc").is_err());
    }
}
