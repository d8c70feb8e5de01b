//! The webhook's own TLS: a CA and a serving certificate the operator makes, keeps in a
//! Secret (so every replica serves the same certificate and a restart keeps it), and rotates
//! before they expire.
//!
//! With a serving certificate lifetime `L`: the certificate is renewed once less than `L/3` of
//! it is left; the CA lives `3L` and is renewed once less than `1.5L` is left, so it always
//! outlives the certificates it signs. After a CA rotation the previous CA stays in the
//! caBundle until it expires, and the bundle is applied to the webhook configurations before
//! a certificate of the new CA is served, so the API server trusts both sides of every switch.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// The Secret keys of a [`TlsBundle`].
pub mod keys {
    /// The current CA certificate, PEM.
    pub const CA_CERT: &str = "ca.crt";
    /// The current CA's private key, PEM.
    pub const CA_KEY: &str = "ca.key";
    /// The CA certificate before the last CA rotation, PEM (empty when none).
    pub const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
    /// The serving certificate, PEM.
    pub const TLS_CERT: &str = "tls.crt";
    /// The serving key, PEM.
    pub const TLS_KEY: &str = "tls.key";
    /// Metadata: validity times and names, JSON.
    pub const META: &str = "meta.json";
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused.
    #[error("making the webhook {what} certificate: {source}")]
    Generate {
        /// CA or serving.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A time outside what certificates can carry.
    #[error("the certificate lifetime {0:?} is out of range")]
    Lifetime(Duration),
}

/// Validity and names of the certificates in a bundle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleMeta {
    /// The CA's common name (unique per CA, so a new CA is never confused with the old one).
    pub ca_name: String,
    /// When the CA expires.
    pub ca_not_after: Timestamp,
    /// When the previous CA expires (it leaves the caBundle then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_ca_not_after: Option<Timestamp>,
    /// When the serving certificate was issued.
    pub cert_not_before: Timestamp,
    /// When the serving certificate expires.
    pub cert_not_after: Timestamp,
    /// The names (DNS or IP) the serving certificate is for.
    pub names: Vec<String>,
}

/// The CA, the serving certificate and their keys, as stored in the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsBundle {
    /// The current CA, PEM.
    pub ca_cert: String,
    /// Its key, PEM.
    pub ca_key: String,
    /// The previous CA, PEM, while it has not expired.
    pub previous_ca_cert: Option<String>,
    /// The serving certificate, PEM.
    pub cert: String,
    /// Its key, PEM.
    pub key: String,
    /// Validity and names.
    pub meta: BundleMeta,
}

/// What [`TlsBundle::renew`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing was due.
    None,
    /// A new serving certificate.
    Certificate,
    /// A new CA and a new serving certificate.
    Authority,
}

fn time_of(at: Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(at.as_second())
        .map_err(|_| CertError::Lifetime(Duration::ZERO))
}

fn plus(at: Timestamp, by: Duration) -> Result<Timestamp, CertError> {
    let signed = SignedDuration::try_from(by).map_err(|_| CertError::Lifetime(by))?;
    at.checked_add(signed).map_err(|_| CertError::Lifetime(by))
}

fn serial() -> SerialNumber {
    // Unique enough for certificates nobody but this operator issues: the time in nanoseconds,
    // with the top bit clear so the DER integer stays positive.
    let nanos = Timestamp::now().as_nanosecond().unsigned_abs();
    let mut bytes = nanos.to_be_bytes().to_vec();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn ca_params(name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn new_ca(
    now: Timestamp,
    lifetime: Duration,
) -> Result<(String, String, String, Timestamp), CertError> {
    let generate = |source| CertError::Generate { what: "CA", source };
    let name = format!("streamward-webhook-ca-{}", now.as_millisecond());
    let not_after = plus(now, lifetime * 3)?;
    let mut params = ca_params(&name).map_err(generate)?;
    params.not_before = time_of(now - SignedDuration::from_secs(60))?;
    params.not_after = time_of(not_after)?;
    params.serial_number = Some(serial());
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok((name, cert.pem(), key.serialize_pem(), not_after))
}

fn issue(
    ca_name: &str,
    ca_key: &str,
    ca_not_after: Timestamp,
    names: &[String],
    now: Timestamp,
    lifetime: Duration,
) -> Result<(String, String, Timestamp), CertError> {
    let generate = |source| CertError::Generate {
        what: "serving",
        source,
    };
    let ca_key = KeyPair::from_pem(ca_key).map_err(generate)?;
    let issuer = Issuer::new(ca_params(ca_name).map_err(generate)?, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("streamward-webhook", String::as_str),
    );
    for name in names {
        params.subject_alt_names.push(match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into().map_err(generate)?),
        });
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let not_after = plus(now, lifetime)?.min(ca_not_after);
    params.not_before = time_of(now - SignedDuration::from_secs(60))?;
    params.not_after = time_of(not_after)?;
    params.serial_number = Some(serial());
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

impl TlsBundle {
    /// A new CA and a serving certificate for `names` (DNS names or IP addresses), valid for
    /// `lifetime`.
    pub fn generate(
        names: &[String],
        now: Timestamp,
        lifetime: Duration,
    ) -> Result<TlsBundle, CertError> {
        let (ca_name, ca_cert, ca_key, ca_not_after) = new_ca(now, lifetime)?;
        let (cert, key, cert_not_after) =
            issue(&ca_name, &ca_key, ca_not_after, names, now, lifetime)?;
        Ok(TlsBundle {
            ca_cert,
            ca_key,
            previous_ca_cert: None,
            cert,
            key,
            meta: BundleMeta {
                ca_name,
                ca_not_after,
                previous_ca_not_after: None,
                cert_not_before: now,
                cert_not_after,
                names: names.to_vec(),
            },
        })
    }

    /// What is due at `now`: a new CA when less than `1.5 × lifetime` of it is left, a new
    /// serving certificate when less than a third of `lifetime` is left or the names changed.
    pub fn due(&self, names: &[String], now: Timestamp, lifetime: Duration) -> Renewal {
        let left = |until: Timestamp| until.duration_since(now);
        let lifetime = SignedDuration::try_from(lifetime).unwrap_or(SignedDuration::MAX);
        if left(self.meta.ca_not_after) < lifetime * 3 / 2 {
            Renewal::Authority
        } else if left(self.meta.cert_not_after) < lifetime / 3 || self.meta.names != names {
            Renewal::Certificate
        } else {
            Renewal::None
        }
    }

    /// This bundle renewed as [`TlsBundle::due`] says (unchanged when nothing is due). A
    /// renewed CA keeps the old one in the caBundle until it expires.
    pub fn renew(
        &self,
        names: &[String],
        now: Timestamp,
        lifetime: Duration,
    ) -> Result<(TlsBundle, Renewal), CertError> {
        let renewal = self.due(names, now, lifetime);
        let mut next = self.clone();
        match renewal {
            Renewal::None => {}
            Renewal::Authority => {
                let (ca_name, ca_cert, ca_key, ca_not_after) = new_ca(now, lifetime)?;
                next.previous_ca_cert = Some(self.ca_cert.clone());
                next.meta.previous_ca_not_after = Some(self.meta.ca_not_after);
                next.ca_cert = ca_cert;
                next.ca_key = ca_key;
                next.meta.ca_name = ca_name;
                next.meta.ca_not_after = ca_not_after;
            }
            Renewal::Certificate => {}
        }
        if renewal != Renewal::None {
            let (cert, key, not_after) = issue(
                &next.meta.ca_name,
                &next.ca_key,
                next.meta.ca_not_after,
                names,
                now,
                lifetime,
            )?;
            next.cert = cert;
            next.key = key;
            next.meta.cert_not_before = now;
            next.meta.cert_not_after = not_after;
            next.meta.names = names.to_vec();
        }
        if next.meta.previous_ca_not_after.is_some_and(|t| t <= now) {
            next.previous_ca_cert = None;
            next.meta.previous_ca_not_after = None;
        }
        Ok((next, renewal))
    }

    /// The caBundle of the webhook configurations: the current CA, then the previous one while
    /// it is valid.
    pub fn ca_bundle(&self) -> String {
        let mut bundle = self.ca_cert.clone();
        if let Some(previous) = &self.previous_ca_cert {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(previous);
        }
        bundle
    }

    /// The Secret data of this bundle.
    pub fn to_data(&self) -> std::collections::BTreeMap<String, String> {
        let mut data = std::collections::BTreeMap::new();
        data.insert(keys::CA_CERT.to_owned(), self.ca_cert.clone());
        data.insert(keys::CA_KEY.to_owned(), self.ca_key.clone());
        data.insert(
            keys::PREVIOUS_CA_CERT.to_owned(),
            self.previous_ca_cert.clone().unwrap_or_default(),
        );
        data.insert(keys::TLS_CERT.to_owned(), self.cert.clone());
        data.insert(keys::TLS_KEY.to_owned(), self.key.clone());
        data.insert(
            keys::META.to_owned(),
            serde_json::to_string(&self.meta).unwrap_or_default(),
        );
        data
    }

    /// A bundle read back from Secret data, or `None` when anything is missing or unreadable
    /// (the caller then makes a new one).
    pub fn from_data(data: &std::collections::BTreeMap<String, Vec<u8>>) -> Option<TlsBundle> {
        let text = |key: &str| -> Option<String> {
            data.get(key)
                .and_then(|bytes| String::from_utf8(bytes.clone()).ok())
        };
        let meta: BundleMeta = serde_json::from_str(&text(keys::META)?).ok()?;
        let bundle = TlsBundle {
            ca_cert: text(keys::CA_CERT)?,
            ca_key: text(keys::CA_KEY)?,
            previous_ca_cert: text(keys::PREVIOUS_CA_CERT).filter(|pem| !pem.is_empty()),
            cert: text(keys::TLS_CERT)?,
            key: text(keys::TLS_KEY)?,
            meta,
        };
        // The keys must at least parse; a broken Secret is replaced, not served.
        KeyPair::from_pem(&bundle.ca_key).ok()?;
        KeyPair::from_pem(&bundle.key).ok()?;
        Some(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    fn names() -> Vec<String> {
        vec![
            "127.0.0.1".into(),
            "streamward-webhook.streamward-system.svc".into(),
        ]
    }

    /// Whether `bundle`'s serving certificate verifies for `name` at `at` against `roots`
    /// (PEM), with rustls's own verifier.
    fn verifies(roots: &str, cert: &str, name: &str, at: Timestamp) -> Result<(), String> {
        let mut store = rustls::RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(roots.as_bytes()) {
            store.add(root.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(store),
            provider,
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(at.as_second() as u64));
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                now,
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_new_bundle_serves_its_names_under_its_ca() {
        let now = Timestamp::now();
        let lifetime = Duration::from_secs(3600);
        let bundle = TlsBundle::generate(&names(), now, lifetime).unwrap();
        verifies(&bundle.ca_bundle(), &bundle.cert, "127.0.0.1", now).unwrap();
        verifies(
            &bundle.ca_bundle(),
            &bundle.cert,
            "streamward-webhook.streamward-system.svc",
            now,
        )
        .unwrap();
        assert!(verifies(&bundle.ca_bundle(), &bundle.cert, "example.com", now).is_err());
        let later = plus(now, Duration::from_secs(3700)).unwrap();
        assert!(verifies(&bundle.ca_bundle(), &bundle.cert, "127.0.0.1", later).is_err());
        assert_eq!(bundle.due(&names(), now, lifetime), Renewal::None);
        let other = TlsBundle::generate(&names(), now, lifetime).unwrap();
        assert!(verifies(&other.ca_bundle(), &bundle.cert, "127.0.0.1", now).is_err());
    }

    #[test]
    fn the_certificate_renews_after_two_thirds_and_the_ca_after_half() {
        let start = Timestamp::now();
        let lifetime = Duration::from_secs(3000);
        let at = |secs: u64| plus(start, Duration::from_secs(secs)).unwrap();
        let bundle = TlsBundle::generate(&names(), start, lifetime).unwrap();
        assert_eq!(bundle.due(&names(), at(1900), lifetime), Renewal::None);
        let (renewed, what) = bundle.renew(&names(), at(2100), lifetime).unwrap();
        assert_eq!(what, Renewal::Certificate);
        assert_eq!(renewed.ca_cert, bundle.ca_cert);
        assert_ne!(renewed.cert, bundle.cert);
        verifies(&bundle.ca_bundle(), &renewed.cert, "127.0.0.1", at(2100)).unwrap();
        assert_eq!(renewed.due(&names(), at(2200), lifetime), Renewal::None);

        // The CA (3 × 3000 s) is renewed once less than 4500 s of it are left.
        let (rotated, what) = renewed.renew(&names(), at(4600), lifetime).unwrap();
        assert_eq!(what, Renewal::Authority);
        assert_ne!(rotated.ca_cert, renewed.ca_cert);
        assert_eq!(
            rotated.previous_ca_cert.as_deref(),
            Some(renewed.ca_cert.as_str())
        );
        // Both the old certificate and the new one verify against the new bundle.
        verifies(&rotated.ca_bundle(), &renewed.cert, "127.0.0.1", at(4600)).unwrap();
        verifies(&rotated.ca_bundle(), &rotated.cert, "127.0.0.1", at(4600)).unwrap();
        assert!(verifies(&rotated.ca_cert, &renewed.cert, "127.0.0.1", at(4600)).is_err());

        // Once the old CA has expired it leaves the bundle.
        let (later, _) = rotated.renew(&names(), at(9100), lifetime).unwrap();
        assert_eq!(later.previous_ca_cert, None);
        assert_eq!(later.ca_bundle(), later.ca_cert);
    }

    #[test]
    fn new_names_get_a_new_certificate() {
        let now = Timestamp::now();
        let lifetime = Duration::from_secs(3600);
        let bundle = TlsBundle::generate(&names(), now, lifetime).unwrap();
        let moved = vec!["127.0.0.2".to_owned()];
        let (renewed, what) = bundle.renew(&moved, now, lifetime).unwrap();
        assert_eq!(what, Renewal::Certificate);
        verifies(&renewed.ca_bundle(), &renewed.cert, "127.0.0.2", now).unwrap();
    }

    #[test]
    fn a_bundle_round_trips_through_secret_data_and_broken_data_is_refused() {
        let bundle =
            TlsBundle::generate(&names(), Timestamp::now(), Duration::from_secs(60)).unwrap();
        let data: std::collections::BTreeMap<String, Vec<u8>> = bundle
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        assert_eq!(TlsBundle::from_data(&data), Some(bundle));
        for key in [keys::CA_KEY, keys::TLS_KEY, keys::META, keys::TLS_CERT] {
            let mut broken = data.clone();
            broken.insert(key.to_owned(), b"garbage".to_vec());
            if key == keys::TLS_CERT {
                // A certificate is only checked by whoever connects; the keys are checked here.
                continue;
            }
            assert_eq!(TlsBundle::from_data(&broken), None, "{key}");
            broken.remove(key);
            assert_eq!(TlsBundle::from_data(&broken), None, "{key}");
        }
    }
}
