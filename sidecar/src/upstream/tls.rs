//! The rustls client configuration for a target's brokers, built once per target.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::{UpstreamError, UpstreamTls};

/// A client configuration that trusts `tls.ca_pem`, or the system's roots when it is `None`.
pub(super) fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, UpstreamError> {
    let roots = match &tls.ca_pem {
        Some(pem) => roots_from_pem(pem)?,
        None => system_roots()?,
    };
    // The provider is named rather than taken from the process default, so the proxy does not
    // depend on which other crate installed one first.
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(UpstreamError::TlsSetup)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, UpstreamError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| UpstreamError::CaCertificates {
            reason: format!("PEM block {}: {e}", index + 1),
        })?;
        roots.add(cert).map_err(|e| UpstreamError::CaCertificates {
            reason: format!("certificate {}: {e}", index + 1),
        })?;
    }
    if roots.is_empty() {
        return Err(UpstreamError::CaCertificates {
            reason: "no CERTIFICATE block found".to_string(),
        });
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, UpstreamError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(UpstreamError::NoTrustRoots {
            reason: found
                .errors
                .first()
                .map_or_else(|| "none installed".to_string(), ToString::to_string),
        });
    }
    Ok(roots)
}

/// The name the broker's certificate must carry: the configured override, else the host part
/// of `addr` (a DNS name or an IP address).
pub(super) fn server_name(
    tls: &UpstreamTls,
    addr: &str,
    host: &str,
) -> Result<ServerName<'static>, UpstreamError> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_string()).map_err(|_| UpstreamError::ServerName {
        addr: addr.to_string(),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca_pem: &[u8]) -> UpstreamTls {
        UpstreamTls {
            ca_pem: Some(ca_pem.to_vec()),
            server_name: None,
        }
    }

    #[test]
    fn a_ca_without_certificates_is_refused_with_what_to_fix() {
        let error = client_config(&tls(b"not a certificate")).unwrap_err();
        assert!(
            matches!(error, UpstreamError::CaCertificates { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("CA Secret"), "{error}");
    }

    #[test]
    fn a_corrupt_certificate_is_refused() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = client_config(&tls(pem)).unwrap_err();
        assert!(
            matches!(error, UpstreamError::CaCertificates { .. }),
            "{error}"
        );
    }

    #[test]
    fn the_server_name_comes_from_the_override_or_the_host() {
        let mut settings = tls(b"");
        assert_eq!(
            server_name(&settings, "10.0.0.1:9093", "10.0.0.1").unwrap(),
            ServerName::try_from("10.0.0.1").unwrap()
        );
        settings.server_name = Some("kafka.example.com".into());
        assert_eq!(
            server_name(&settings, "10.0.0.1:9093", "10.0.0.1").unwrap(),
            ServerName::try_from("kafka.example.com").unwrap()
        );
        settings.server_name = Some("not a name!".into());
        assert!(matches!(
            server_name(&settings, "10.0.0.1:9093", "10.0.0.1"),
            Err(UpstreamError::ServerName { .. })
        ));
    }
}
