//! The users file: who may authenticate to the proxy with SASL PLAIN or SCRAM, and their groups.
//!
//! ```yaml
//! users:
//! - name: alice
//!   password: s3cret            # local mode: PLAIN works, SCRAM credentials are derived
//!   groups: [team-a]
//! - name: bob                   # stored SCRAM credentials only (RFC 5802): no PLAIN
//!   scramSha256: {salt: …, iterations: 4096, storedKey: …, serverKey: …}   # base64
//!   scramSha512: {salt: …, iterations: 4096, storedKey: …, serverKey: …}
//! ```
//!
//! Parsed into [`Users`], which holds no plaintext password: PLAIN is checked against a keyed
//! digest made at load.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::EagerHash;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};

use crate::upstream::scram::{
    MAX_ITERATIONS, MIN_ITERATIONS, ScramHash, constant_time_eq, hmac, salted_password,
};

/// Iterations used for the SCRAM credentials derived from a plaintext password: Kafka's minimum,
/// which is also what `kafka-configs --add-config SCRAM-SHA-256=[password=…]` uses by default.
const DERIVED_ITERATIONS: u32 = 4096;

/// Why a users file was refused. Never contains a password or a key.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Not YAML of the expected shape.
    #[error("the users file is not valid: {0}")]
    Syntax(String),
    /// A user without a name, or a name used twice.
    #[error("user #{index}: {reason}")]
    Name {
        /// The position of the user in the list (from 1).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A user with no way to authenticate, or a malformed stored credential.
    #[error("user {user:?}: {reason}")]
    Credential {
        /// The user.
        user: String,
        /// What is wrong.
        reason: String,
    },
    /// No randomness for salts.
    #[error("no random bytes for SCRAM salts: {0}")]
    Random(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UserEntry {
    name: String,
    password: Option<String>,
    scram_sha256: Option<StoredCredentialEntry>,
    scram_sha512: Option<StoredCredentialEntry>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StoredCredentialEntry {
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

/// A user's SCRAM credential as the server keeps it (RFC 5802 section 3): the salt and
/// iteration count the client needs, `StoredKey = H(ClientKey)` to check the client's proof and
/// `ServerKey` to sign the answer. The password cannot be recovered from it.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub(super) salt: Vec<u8>,
    pub(super) iterations: u32,
    pub(super) stored_key: Vec<u8>,
    pub(super) server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// The credential for `password` with `salt` and `iterations`, the way Kafka's
    /// `kafka-configs --add-config SCRAM-SHA-…=[password=…]` makes it.
    pub fn derive(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(hash, password.as_bytes(), salt, iterations);
        let (stored_key, server_key) = match hash {
            ScramHash::Sha256 => keys::<Sha256>(&salted),
            ScramHash::Sha512 => keys::<Sha512>(&salted),
        };
        ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        }
    }

    /// The credential as it is written in the users file (`salt`, `iterations`, `storedKey`,
    /// `serverKey`, base64), for tools and tests that make users files.
    pub fn to_yaml_flow(&self) -> String {
        format!(
            "{{salt: '{}', iterations: {}, storedKey: '{}', serverKey: '{}'}}",
            BASE64.encode(&self.salt),
            self.iterations,
            BASE64.encode(&self.stored_key),
            BASE64.encode(&self.server_key)
        )
    }

    fn parse(hash: ScramHash, entry: &StoredCredentialEntry) -> Result<Self, String> {
        let decode = |field: &str, value: &str| {
            BASE64
                .decode(value.trim())
                .map_err(|_| format!("{field} is not base64"))
        };
        let salt = decode("salt", &entry.salt)?;
        let stored_key = decode("storedKey", &entry.stored_key)?;
        let server_key = decode("serverKey", &entry.server_key)?;
        let size = hash_len(hash);
        if stored_key.len() != size || server_key.len() != size {
            return Err(format!(
                "storedKey and serverKey must be {size} bytes for {}",
                mechanism_name(hash)
            ));
        }
        if salt.is_empty() {
            return Err("the salt is empty".into());
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&entry.iterations) {
            // Kafka's clients refuse fewer than 4096 iterations, so such a credential could
            // never be used.
            return Err(format!(
                "iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}, not {}",
                entry.iterations
            ));
        }
        Ok(ScramCredential {
            salt,
            iterations: entry.iterations,
            stored_key,
            server_key,
        })
    }
}

/// `StoredKey := H(HMAC(SaltedPassword, "Client Key"))`, `ServerKey := HMAC(SaltedPassword,
/// "Server Key")`.
fn keys<D: Digest + EagerHash>(salted: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let client_key = hmac::<D>(salted, b"Client Key");
    (
        D::digest(&client_key).to_vec(),
        hmac::<D>(salted, b"Server Key"),
    )
}

pub(super) fn hash_len(hash: ScramHash) -> usize {
    match hash {
        ScramHash::Sha256 => 32,
        ScramHash::Sha512 => 64,
    }
}

pub(super) fn mechanism_name(hash: ScramHash) -> &'static str {
    match hash {
        ScramHash::Sha256 => "SCRAM-SHA-256",
        ScramHash::Sha512 => "SCRAM-SHA-512",
    }
}

/// One user the proxy knows.
#[derive(Clone)]
pub(super) struct User {
    /// `HMAC-SHA-256(digest_key, password)` when the file has the plaintext password.
    plain: Option<Vec<u8>>,
    scram_sha256: Option<ScramCredential>,
    scram_sha512: Option<ScramCredential>,
    pub(super) groups: Vec<String>,
}

impl User {
    pub(super) fn scram(&self, hash: ScramHash) -> Option<&ScramCredential> {
        match hash {
            ScramHash::Sha256 => self.scram_sha256.as_ref(),
            ScramHash::Sha512 => self.scram_sha512.as_ref(),
        }
    }
}

/// The users of a users file, by name.
pub struct Users {
    by_name: HashMap<String, User>,
    /// Random per process: keys the PLAIN digests, and the fake salts of unknown SCRAM users.
    secret: [u8; 32],
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Users")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

impl Users {
    /// Parses a users file (YAML). Plaintext passwords are turned into SCRAM credentials with
    /// a fresh random salt and dropped.
    pub fn from_yaml(text: &str) -> Result<Users, UsersError> {
        let file: UsersFile =
            serde_yaml::from_str(text).map_err(|e| UsersError::Syntax(scrub_yaml_error(&e)))?;
        let secret = random::<32>()?;
        let mut by_name = HashMap::with_capacity(file.users.len());
        for (i, entry) in file.users.into_iter().enumerate() {
            let name = entry.name.trim().to_string();
            if name.is_empty() {
                return Err(UsersError::Name {
                    index: i + 1,
                    reason: "the name is empty".into(),
                });
            }
            if by_name.contains_key(&name) {
                return Err(UsersError::Name {
                    index: i + 1,
                    reason: format!("{name:?} is listed twice"),
                });
            }
            let credential = |reason: String| UsersError::Credential {
                user: name.clone(),
                reason,
            };
            let stored = |hash, entry: &Option<StoredCredentialEntry>| {
                entry
                    .as_ref()
                    .map(|e| ScramCredential::parse(hash, e).map_err(&credential))
                    .transpose()
            };
            let mut scram_sha256 = stored(ScramHash::Sha256, &entry.scram_sha256)?;
            let mut scram_sha512 = stored(ScramHash::Sha512, &entry.scram_sha512)?;
            let mut plain = None;
            if let Some(password) = &entry.password {
                if password.is_empty() {
                    return Err(credential("the password is empty".into()));
                }
                plain = Some(hmac::<Sha256>(&secret, password.as_bytes()));
                // Stored credentials, when also given, win: they are what the operator chose.
                if scram_sha256.is_none() {
                    let salt = random::<16>()?;
                    scram_sha256 = Some(ScramCredential::derive(
                        ScramHash::Sha256,
                        password,
                        &salt,
                        DERIVED_ITERATIONS,
                    ));
                }
                if scram_sha512.is_none() {
                    let salt = random::<16>()?;
                    scram_sha512 = Some(ScramCredential::derive(
                        ScramHash::Sha512,
                        password,
                        &salt,
                        DERIVED_ITERATIONS,
                    ));
                }
            }
            if plain.is_none() && scram_sha256.is_none() && scram_sha512.is_none() {
                return Err(credential(
                    "give a password, or scramSha256/scramSha512 stored credentials".into(),
                ));
            }
            let mut groups: Vec<String> = entry
                .groups
                .into_iter()
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect();
            groups.sort();
            groups.dedup();
            by_name.insert(
                name,
                User {
                    plain,
                    scram_sha256,
                    scram_sha512,
                    groups,
                },
            );
        }
        Ok(Users { by_name, secret })
    }

    /// Whether anyone can use PLAIN (a user with a plaintext password).
    pub(super) fn any_plain(&self) -> bool {
        self.by_name.values().any(|u| u.plain.is_some())
    }

    /// Whether anyone has a credential for this SCRAM hash.
    pub(super) fn any_scram(&self, hash: ScramHash) -> bool {
        self.by_name.values().any(|u| u.scram(hash).is_some())
    }

    pub(super) fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// Checks a PLAIN password in constant time (over equal-length digests). A user without a
    /// plaintext password in the file cannot use PLAIN.
    pub(super) fn check_plain(&self, name: &str, password: &[u8]) -> Option<&User> {
        let digest = hmac::<Sha256>(&self.secret, password);
        let user = self.by_name.get(name);
        let expected = user.and_then(|u| u.plain.as_deref());
        // Compare against something even for unknown users, so the time does not say which
        // names exist.
        let equal = constant_time_eq(&digest, expected.unwrap_or(&[0u8; 32]));
        if equal && expected.is_some() {
            user
        } else {
            None
        }
    }

    /// A salt for a user that does not exist, stable per name within this process, so a client
    /// cannot tell unknown users from known ones by the server-first message (RFC 5802 section
    /// 9's advice).
    pub(super) fn fake_salt(&self, name: &str) -> Vec<u8> {
        hmac::<Sha256>(&self.secret, name.as_bytes())[..16].to_vec()
    }
}

fn random<const N: usize>() -> Result<[u8; N], UsersError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| UsersError::Random(e.to_string()))?;
    Ok(bytes)
}

/// serde_yaml errors quote the offending value, which could be a password: keep only where
/// the error is and what kind it is.
fn scrub_yaml_error(error: &serde_yaml::Error) -> String {
    let location = error
        .location()
        .map(|l| format!(" at line {} column {}", l.line(), l.column()))
        .unwrap_or_default();
    let text = error.to_string();
    let head = text.split(" at line ").next().unwrap_or_default();
    // "users[0].password: invalid type: integer `7`, expected a string": the value follows
    // "invalid type:" or "invalid value:" and is cut there.
    let cut = ["invalid type", "invalid value"]
        .iter()
        .filter_map(|marker| head.find(marker).map(|i| i + marker.len()))
        .min();
    let kind = match cut {
        Some(end) => format!("{} (value not shown)", &head[..end]),
        None => head.to_string(),
    };
    format!("{kind}{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_user_gets_plain_and_both_scram_credentials() {
        let users = Users::from_yaml(
            "users:\n- {name: alice, password: pw, groups: [team-a, auditors, team-a]}\n",
        )
        .unwrap();
        let alice = users.get("alice").unwrap();
        assert!(alice.scram(ScramHash::Sha256).is_some());
        assert_eq!(alice.scram(ScramHash::Sha512).unwrap().stored_key.len(), 64);
        assert_eq!(alice.groups, ["auditors", "team-a"]);
        assert!(users.check_plain("alice", b"pw").is_some());
        assert!(users.check_plain("alice", b"pW").is_none());
        assert!(users.check_plain("nobody", b"pw").is_none());
        assert!(users.any_plain());
    }

    #[test]
    fn stored_credentials_only_mean_no_plain() {
        let credential = ScramCredential::derive(ScramHash::Sha256, "pw", b"salty", 4096);
        let yaml = format!(
            "users:\n- name: bob\n  scramSha256: {}\n",
            credential.to_yaml_flow()
        );
        let users = Users::from_yaml(&yaml).unwrap();
        let bob = users.get("bob").unwrap();
        assert_eq!(bob.scram(ScramHash::Sha256), Some(&credential));
        assert!(bob.scram(ScramHash::Sha512).is_none());
        assert!(users.check_plain("bob", b"pw").is_none());
        assert!(!users.any_plain());
        assert!(!users.any_scram(ScramHash::Sha512));
    }

    #[test]
    fn bad_files_are_refused_with_a_reason_and_without_the_password() {
        for (yaml, expect) in [
            ("users:\n- {name: ''}\n", "the name is empty"),
            (
                "users:\n- {name: a, password: x}\n- {name: a, password: y}\n",
                "listed twice",
            ),
            ("users:\n- {name: a}\n", "give a password"),
            ("users:\n- {name: a, password: ''}\n", "password is empty"),
            (
                "users:\n- {name: a, scramSha256: {salt: 'c2FsdA==', iterations: 4096, storedKey: 'AA==', serverKey: 'AA=='}}\n",
                "must be 32 bytes",
            ),
            (
                "users:\n- {name: a, scramSha256: {salt: '!!', iterations: 4096, storedKey: 'AA==', serverKey: 'AA=='}}\n",
                "salt is not base64",
            ),
            ("users:\n- {name: a, pasword: hunter2}\n", "unknown field"),
        ] {
            let error = Users::from_yaml(yaml).unwrap_err().to_string();
            assert!(error.contains(expect), "{yaml:?}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        let few = ScramCredential::derive(ScramHash::Sha256, "pw", b"salt", 1000);
        let error = Users::from_yaml(&format!(
            "users:\n- {{name: a, scramSha256: {}}}\n",
            few.to_yaml_flow()
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("iterations must be"), "{error}");
    }

    #[test]
    fn a_password_of_the_wrong_type_is_not_echoed() {
        let error = Users::from_yaml("users:\n- {name: a, password: [hunter2]}\n")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn fake_salts_are_stable_per_name() {
        let users = Users::from_yaml("users:\n- {name: a, password: x}\n").unwrap();
        assert_eq!(users.fake_salt("ghost"), users.fake_salt("ghost"));
        assert_ne!(users.fake_salt("ghost"), users.fake_salt("other"));
    }
}
