//! Outgoing HTTPS (the issuer's discovery document and keys, the admin CLI):
//! one rustls client configuration on aws-lc-rs, the crypto the gateway also
//! verifies tokens with, so the binary carries one crypto stack, and the
//! Mozilla root certificates (webpki-roots).

use std::sync::Arc;

/// The client TLS configuration for every outgoing HTTPS call.
///
/// # Errors
/// When the provider offers no safe protocol version (not with aws-lc-rs).
pub fn client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_configuration_trusts_the_public_roots() {
        let config = super::client_config().expect("aws-lc-rs offers TLS 1.2 and 1.3");
        assert!(config.crypto_provider().cipher_suites.len() > 3);
    }
}
