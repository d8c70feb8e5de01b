//! The server side of SCRAM (RFC 5802) with SHA-256 and SHA-512 (RFC 7677), as a Kafka broker
//! speaks it: no channel binding, an authorization identity only if it is the user itself,
//! extensions ignored.
//!
//! Unknown users get a server-first message with a stable fake salt and fail only at the proof,
//! with the same message as a wrong password, so the exchange does not tell which names exist.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::EagerHash;
use sha2::{Digest, Sha256, Sha512};

use super::Step;
use super::users::{ScramCredential, Users, hash_len, mechanism_name};
use crate::upstream::scram::{MIN_ITERATIONS, ScramHash, constant_time_eq, hmac};

/// One SCRAM exchange, from the server's side.
pub(super) struct ScramServer {
    hash: ScramHash,
    users: Arc<Users>,
    server_nonce: String,
    state: State,
}

enum State {
    ClientFirst,
    ClientFinal(Box<Pending>),
    Done,
}

/// What the server keeps between its first message and the client's final one.
struct Pending {
    user: String,
    /// `None` for an unknown user: the exchange goes on and fails at the proof.
    known: Option<(ScramCredential, Vec<String>)>,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// An exchange that adds `server_nonce` (printable, no `,`) to the client's nonce.
    pub(super) fn new(hash: ScramHash, users: Arc<Users>, server_nonce: String) -> ScramServer {
        ScramServer {
            hash,
            users,
            server_nonce,
            state: State::ClientFirst,
        }
    }

    pub(super) fn step(&mut self, client: &[u8]) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::ClientFirst => match self.client_first(client) {
                Ok(pending) => {
                    let server_first = pending.server_first.clone().into_bytes();
                    self.state = State::ClientFinal(Box::new(pending));
                    Step::Challenge(server_first)
                }
                Err(reason) => Step::Failed(reason),
            },
            State::ClientFinal(pending) => self.client_final(*pending, client),
            State::Done => Step::Failed("the SCRAM exchange is already over".into()),
        }
    }

    fn client_first(&self, message: &[u8]) -> Result<Pending, String> {
        let message = std::str::from_utf8(message)
            .map_err(|_| "the SCRAM client-first message is not UTF-8".to_string())?;
        // gs2-header = cbind-flag "," [authzid] ","
        let (flag, rest) = message
            .split_once(',')
            .ok_or("the SCRAM client-first message has no GS2 header")?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or("the SCRAM client-first message has no GS2 header")?;
        match flag {
            // "y": the client could bind but thinks we cannot; we do not offer -PLUS, so fine.
            "n" | "y" => {}
            _ if flag.starts_with("p=") => {
                return Err("SCRAM channel binding is not supported".into());
            }
            _ => return Err("the SCRAM GS2 header is malformed".into()),
        }
        let mut attributes = bare.split(',');
        let first = attributes.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err("SCRAM mandatory extensions are not supported".into());
        }
        let user = first
            .strip_prefix("n=")
            .ok_or_else(|| "the SCRAM client-first message has no user name (n=)".to_string())
            .and_then(decode_name)?;
        if user.is_empty() {
            return Err("the SCRAM user name is empty".into());
        }
        let client_nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .ok_or("the SCRAM client-first message has no valid nonce (r=)")?;
        if !authzid.is_empty() {
            let authzid = authzid
                .strip_prefix("a=")
                .ok_or_else(|| "the SCRAM authorization identity is malformed".to_string())
                .and_then(decode_name)?;
            // Kafka's rule: one may only act as oneself.
            if authzid != user {
                return Err("the SCRAM authorization identity differs from the user".into());
            }
        }

        let known = self.users.get(&user).and_then(|u| {
            u.scram(self.hash)
                .map(|credential| (credential.clone(), u.groups.clone()))
        });
        let (salt, iterations) = match &known {
            Some((credential, _)) => (credential.salt.clone(), credential.iterations),
            None => (self.users.fake_salt(&user), MIN_ITERATIONS),
        };
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(salt));
        Ok(Pending {
            user,
            known,
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        })
    }

    fn client_final(&self, pending: Pending, message: &[u8]) -> Step {
        let invalid = || {
            Step::Failed(format!(
                "invalid credentials with SASL mechanism {}",
                mechanism_name(self.hash)
            ))
        };
        let Ok(message) = std::str::from_utf8(message) else {
            return Step::Failed("the SCRAM client-final message is not UTF-8".into());
        };
        // client-final-message = client-final-message-without-proof "," proof
        let Some((without_proof, proof)) = message.rsplit_once(",p=") else {
            return Step::Failed("the SCRAM client-final message has no proof (p=)".into());
        };
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .and_then(|c| BASE64.decode(c).ok());
        if binding.as_deref() != Some(pending.gs2_header.as_bytes()) {
            return Step::Failed("the SCRAM channel binding (c=) does not match".into());
        }
        if attributes.next().and_then(|a| a.strip_prefix("r=")) != Some(pending.nonce.as_str()) {
            return Step::Failed("the SCRAM nonce (r=) does not match".into());
        }
        let Ok(proof) = BASE64.decode(proof) else {
            return Step::Failed("the SCRAM proof is not base64".into());
        };
        // An unknown user is checked against a credential no proof matches, so the time taken
        // does not tell either.
        let (credential, groups, known) = match pending.known {
            Some((credential, groups)) => (credential, groups, true),
            None => (self.unknown_user_credential(), Vec::new(), false),
        };
        if proof.len() != hash_len(self.hash) {
            return invalid();
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            pending.client_first_bare, pending.server_first
        );
        let check = match self.hash {
            ScramHash::Sha256 => verify::<Sha256>(&credential, &auth_message, &proof),
            ScramHash::Sha512 => verify::<Sha512>(&credential, &auth_message, &proof),
        };
        match check.filter(|_| known) {
            Some(server_signature) => Step::Authenticated {
                user: pending.user,
                groups,
                final_bytes: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
                session_lifetime_ms: 0,
            },
            None => invalid(),
        }
    }
}

impl ScramServer {
    fn unknown_user_credential(&self) -> ScramCredential {
        let size = hash_len(self.hash);
        ScramCredential {
            salt: Vec::new(),
            iterations: MIN_ITERATIONS,
            stored_key: vec![0; size],
            server_key: vec![0; size],
        }
    }
}

/// Checks the client's proof; returns the server's signature when it holds.
fn verify<D: Digest + EagerHash>(
    credential: &ScramCredential,
    auth_message: &str,
    proof: &[u8],
) -> Option<Vec<u8>> {
    // ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); it is right if H(ClientKey)
    // is the StoredKey.
    let client_signature = hmac::<D>(&credential.stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = proof
        .iter()
        .zip(&client_signature)
        .map(|(p, s)| p ^ s)
        .collect();
    let candidate = D::digest(&client_key);
    constant_time_eq(&candidate, &credential.stored_key)
        .then(|| hmac::<D>(&credential.server_key, auth_message.as_bytes()))
}

/// `saslname`: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed.
fn decode_name(name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err("the SCRAM user name has a bad escape".into()),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::scram::{ScramClient, salted_password};

    fn users(yaml: &str) -> Arc<Users> {
        Arc::new(Users::from_yaml(yaml).unwrap())
    }

    /// Runs the proxy's own SCRAM client against the server; returns the server's last step.
    fn exchange(hash: ScramHash, users: &Arc<Users>, name: &str, password: &str) -> Step {
        let client = ScramClient::new(hash, name).unwrap();
        let mut server = ScramServer::new(hash, users.clone(), "serverpart".into());
        let Step::Challenge(server_first) = server.step(client.client_first().as_bytes()) else {
            panic!("no server-first");
        };
        let server_first = String::from_utf8(server_first).unwrap();
        let parsed = client.parse_server_first(&server_first).unwrap();
        let salted = salted_password(hash, password.as_bytes(), &parsed.salt, parsed.iterations);
        let (client_final, signature) = client.client_final(&parsed, &salted);
        let step = server.step(client_final.as_bytes());
        if let Step::Authenticated { final_bytes, .. } = &step {
            signature
                .verify(std::str::from_utf8(final_bytes).unwrap())
                .expect("the client verifies the server's signature");
        }
        step
    }

    #[test]
    fn scram_sha256_and_sha512_exchanges_with_the_proxys_own_client() {
        let users = users("users:\n- {name: alice, password: wonderland, groups: [auditors]}\n");
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            match exchange(hash, &users, "alice", "wonderland") {
                Step::Authenticated {
                    user,
                    groups,
                    session_lifetime_ms,
                    ..
                } => {
                    assert_eq!(user, "alice");
                    assert_eq!(groups, ["auditors"]);
                    assert_eq!(session_lifetime_ms, 0);
                }
                other => panic!("{hash:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_fail_alike() {
        let users = users("users:\n- {name: alice, password: wonderland}\n");
        let Step::Failed(wrong) = exchange(ScramHash::Sha256, &users, "alice", "looking-glass")
        else {
            panic!("a wrong password was accepted");
        };
        let Step::Failed(unknown) = exchange(ScramHash::Sha256, &users, "mallory", "x") else {
            panic!("an unknown user was accepted");
        };
        assert_eq!(wrong, unknown);
        assert!(wrong.contains("invalid credentials"), "{wrong}");
    }

    #[test]
    fn a_user_without_the_mechanisms_credential_fails() {
        let credential = ScramCredential::derive(ScramHash::Sha256, "pw", b"salt", 4096);
        let users = users(&format!(
            "users:\n- {{name: bob, scramSha256: {}}}\n",
            credential.to_yaml_flow()
        ));
        assert!(matches!(
            exchange(ScramHash::Sha256, &users, "bob", "pw"),
            Step::Authenticated { .. }
        ));
        assert!(matches!(
            exchange(ScramHash::Sha512, &users, "bob", "pw"),
            Step::Failed(_)
        ));
    }

    /// RFC 7677 section 3: user "user", password "pencil", with the RFC's nonces and salt,
    /// from stored credentials.
    #[test]
    fn rfc7677_test_vector() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = ScramCredential::derive(ScramHash::Sha256, "pencil", &salt, 4096);
        let users = users(&format!(
            "users:\n- {{name: user, scramSha256: {}}}\n",
            credential.to_yaml_flow()
        ));
        let mut server = ScramServer::new(
            ScramHash::Sha256,
            users,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
        );
        let first = server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let Step::Challenge(server_first) = first else {
            panic!("{first:?}");
        };
        assert_eq!(
            String::from_utf8(server_first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = server.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        match last {
            Step::Authenticated {
                user, final_bytes, ..
            } => {
                assert_eq!(user, "user");
                assert_eq!(
                    String::from_utf8(final_bytes).unwrap(),
                    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
                );
            }
            other => panic!("{other:?}"),
        }
        // The exchange is over.
        assert!(matches!(server.step(b"again"), Step::Failed(_)));
    }

    #[test]
    fn a_tampered_proof_is_refused() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = ScramCredential::derive(ScramHash::Sha256, "pencil", &salt, 4096);
        let users = users(&format!(
            "users:\n- {{name: user, scramSha256: {}}}\n",
            credential.to_yaml_flow()
        ));
        let start = || {
            let mut server = ScramServer::new(
                ScramHash::Sha256,
                users.clone(),
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            );
            server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
            server
        };
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        for (what, message) in [
            (
                "a flipped proof",
                format!("c=biws,r={nonce},p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
            ),
            ("a short proof", format!("c=biws,r={nonce},p=AAAA")),
            (
                "another nonce",
                "c=biws,r=rOprNGfwEbeRWgbNEkqOother,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
                    .to_string(),
            ),
            (
                "another channel binding",
                format!("c=eSws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
            ),
            ("no proof", format!("c=biws,r={nonce}")),
        ] {
            let step = start().step(message.as_bytes());
            assert!(matches!(step, Step::Failed(_)), "{what}: {step:?}");
        }
    }

    #[test]
    fn malformed_client_first_messages_fail_without_panicking() {
        let users = users("users:\n- {name: a, password: x}\n");
        for message in [
            &b""[..],
            b"n",
            b"n,,",
            b"n,,r=abc",
            b"n,,n=a",
            b"n,,n=a,r=",
            b"p=tls-unique,,n=a,r=abc",
            b"x,,n=a,r=abc",
            b"n,,m=ext,n=a,r=abc",
            b"n,,n=a=ZZ,r=abc",
            b"n,a=b,n=a,r=abc",
            b"\xff\xfe",
        ] {
            let mut server = ScramServer::new(ScramHash::Sha256, users.clone(), "s".into());
            assert!(
                matches!(server.step(message), Step::Failed(_)),
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        // An authorization identity equal to the user is fine; names are unescaped.
        let mut server = ScramServer::new(ScramHash::Sha256, users, "s".into());
        assert!(matches!(
            server.step(b"n,a=a,n=a,r=abc"),
            Step::Challenge(_)
        ));
        assert_eq!(decode_name("a=2Cb=3Dc").unwrap(), "a,b=c");
    }
}
