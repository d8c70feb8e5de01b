//! jsonwebtoken's cryptography on ring.
//!
//! jsonwebtoken (≥ 10) leaves signatures to a process-wide `CryptoProvider`; its own backends are
//! aws-lc-rs and RustCrypto. The proxy already carries ring for rustls, so this provider plugs
//! ring in and no second crypto stack is built. JWT parsing and claim validation stay
//! jsonwebtoken's; only the signature primitives are here.
//!
//! HMAC algorithms are not provided: an OIDC issuer's keys are public keys, and a shared secret
//! would let anyone who has it mint tokens.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature as ring_sig;

/// The ring-backed provider.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: rsa_components_from_public_key,
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_component_from_private_key,
        compute_digest,
    },
};

/// Makes jsonwebtoken use ring. Idempotent; must run before the first token is signed or checked
/// (jsonwebtoken fixes its provider on first use), which [`super::OidcVerifier::new`] does.
pub fn install() {
    // Err means a provider is installed already: this one, as nothing else in the proxy
    // installs one.
    let _ = PROVIDER.install_default();
}

/// What ring verifies an algorithm with.
fn verification(algorithm: Algorithm) -> Option<&'static dyn ring_sig::VerificationAlgorithm> {
    Some(match algorithm {
        Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &ring_sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &ring_sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &ring_sig::ED25519,
        _ => return None,
    })
}

struct RingVerifier {
    algorithm: Algorithm,
    ring: &'static dyn ring_sig::VerificationAlgorithm,
    key: PublicKey,
}

enum PublicKey {
    /// RSA modulus and exponent, big-endian without leading zeros.
    RsaComponents { n: Vec<u8>, e: Vec<u8> },
    /// What ring takes as is: a PKCS#1 RSAPublicKey, an uncompressed EC point, an Ed25519 key.
    Bytes(Vec<u8>),
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let ring = verification(*algorithm).ok_or(ErrorKind::UnsupportedAlgorithm)?;
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => PublicKey::RsaComponents {
            n: without_leading_zeros(n).to_vec(),
            e: without_leading_zeros(e).to_vec(),
        },
        DecodingKeyKind::SecretOrDer(bytes) => PublicKey::Bytes(bytes.clone()),
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        ring,
        key,
    }))
}

/// JWKs should carry minimal big-endian integers (RFC 7518 section 2), but some issuers pad the
/// modulus with a zero byte, which ring refuses.
fn without_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let verified = match &self.key {
            PublicKey::RsaComponents { n, e } => {
                let Some(params) = rsa_parameters(self.algorithm) else {
                    return Err(signature::Error::new());
                };
                ring_sig::RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            PublicKey::Bytes(bytes) => {
                ring_sig::UnparsedPublicKey::new(self.ring, bytes).verify(message, signature)
            }
        };
        verified.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn rsa_parameters(algorithm: Algorithm) -> Option<&'static ring_sig::RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// Signing is not on the proxy's path (it only checks tokens); it is here so that
/// `jsonwebtoken::encode` works in the proxy's tests and tools with the same provider.
enum RingSigner {
    Rsa(
        Algorithm,
        &'static dyn ring_sig::RsaEncoding,
        ring_sig::RsaKeyPair,
    ),
    Ecdsa(Algorithm, ring_sig::EcdsaKeyPair),
    Ed25519(ring_sig::Ed25519KeyPair),
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let der = key.as_bytes();
    let rng = SystemRandom::new();
    let signer = match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let padding: &'static dyn ring_sig::RsaEncoding = match algorithm {
                Algorithm::RS256 => &ring_sig::RSA_PKCS1_SHA256,
                Algorithm::RS384 => &ring_sig::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &ring_sig::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &ring_sig::RSA_PSS_SHA256,
                Algorithm::PS384 => &ring_sig::RSA_PSS_SHA384,
                _ => &ring_sig::RSA_PSS_SHA512,
            };
            RingSigner::Rsa(*algorithm, padding, rsa_key_pair(der)?)
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let curve = if *algorithm == Algorithm::ES256 {
                &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &ring_sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = ring_sig::EcdsaKeyPair::from_pkcs8(curve, der, &rng)
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
            RingSigner::Ecdsa(*algorithm, pair)
        }
        Algorithm::EdDSA => RingSigner::Ed25519(
            ring_sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| ErrorKind::InvalidEddsaKey)?,
        ),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(signer))
}

/// An RSA private key as PKCS#1 (what jsonwebtoken's PEM reader yields) or PKCS#8.
fn rsa_key_pair(der: &[u8]) -> Result<ring_sig::RsaKeyPair, Error> {
    ring_sig::RsaKeyPair::from_der(der)
        .or_else(|_| ring_sig::RsaKeyPair::from_pkcs8(der))
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()).into())
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        match self {
            RingSigner::Rsa(_, padding, pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*padding, &rng, message, &mut out)
                    .map_err(|_| signature::Error::new())?;
                Ok(out)
            }
            RingSigner::Ecdsa(_, pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            RingSigner::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        match self {
            RingSigner::Rsa(algorithm, ..) | RingSigner::Ecdsa(algorithm, _) => *algorithm,
            RingSigner::Ed25519(_) => Algorithm::EdDSA,
        }
    }
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let pair = rsa_key_pair(der)?;
    let components: ring_sig::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
    Ok((components.n, components.e))
}

fn rsa_components_from_public_key(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    // ring has no PKCS#1 public-key parser; the proxy reads keys from JWKs, which carry n and e.
    Err(
        ErrorKind::Provider("RSA public keys in DER form are not supported; use a JWK".into())
            .into(),
    )
}

fn ec_components_from_private_key(
    der: &[u8],
    algorithm: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    let (curve, signing, size) = match algorithm {
        Algorithm::ES256 => (
            EllipticCurve::P256,
            &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            32,
        ),
        Algorithm::ES384 => (
            EllipticCurve::P384,
            &ring_sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let pair = ring_sig::EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
        .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    // An uncompressed point: 0x04, x, y.
    let point = ring_sig::KeyPair::public_key(&pair).as_ref();
    match point.split_first() {
        Some((4, xy)) if xy.len() == 2 * size => {
            let (x, y) = xy.split_at(size);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn ed_component_from_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>, Error> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let pair = ring_sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(ring_sig::KeyPair::public_key(&pair).as_ref().to_vec())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

/// Whether an algorithm's family is one an OIDC issuer signs with (public keys only).
pub(super) fn is_asymmetric(algorithm: Algorithm) -> bool {
    !matches!(algorithm.family(), AlgorithmFamily::Hmac) && verification(algorithm).is_some()
}
