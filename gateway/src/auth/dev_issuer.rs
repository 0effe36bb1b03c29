//! The local dev issuer (`[auth] mode = "dev"`): an RSA-2048 key pair made at
//! start (aws-lc-rs, the backend jsonwebtoken verifies with), whose
//! discovery document and JWKS the gateway serves itself under `/dev-issuer/`
//! and then fetches over HTTP like any issuer's — the same path as
//! production, no bypass. It mints one token at start for the demo. Refused
//! when `server.environment = "production"`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The path prefix the dev issuer is served under.
pub const PATH: &str = "/dev-issuer";

/// What the dev token says (from `[auth.dev]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSettings {
    /// `sub` of the dev token.
    pub subject: String,
    /// `groups` of the dev token.
    pub groups: Vec<String>,
    /// `scope` of the dev token (space-separated when minted).
    pub scopes: Vec<String>,
    /// Lifetime of the dev token.
    pub token_ttl: Duration,
}

/// Why the dev issuer cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevIssuerError {
    /// Key generation or encoding failed.
    #[error("dev issuer: cannot make a key: {0}")]
    Key(String),
    /// Signing failed.
    #[error("dev issuer: cannot sign the dev token: {0}")]
    Sign(String),
}

/// A minted token.
#[derive(Debug, Clone)]
pub struct DevToken {
    /// The JWT.
    pub token: String,
    /// Its `exp`, Unix seconds.
    pub expires_unix: u64,
    /// Its subject.
    pub subject: String,
}

/// The ephemeral issuer.
pub struct DevIssuer {
    kid: String,
    encoding: EncodingKey,
    jwks: String,
    settings: DevSettings,
}

impl DevIssuer {
    /// Makes a fresh RSA-2048 key pair (CPU work: call on a blocking thread).
    ///
    /// # Errors
    /// [`DevIssuerError::Key`].
    pub fn generate(settings: DevSettings) -> Result<Self, DevIssuerError> {
        let key = RsaKey::generate()?;
        let kid = format!("dev-{}", key.n.chars().rev().take(12).collect::<String>());
        let jwks = json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": key.n, "e": key.e,
        }]})
        .to_string();
        Ok(DevIssuer {
            kid,
            encoding: key.encoding,
            jwks,
            settings,
        })
    }

    /// The discovery document for `issuer` (this gateway's `/dev-issuer` URL).
    pub fn discovery(issuer: &str) -> String {
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
        .to_string()
    }

    /// The public JWKS.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Mints the dev token for `issuer` and `audience`.
    ///
    /// # Errors
    /// [`DevIssuerError::Sign`].
    pub fn mint(&self, issuer: &str, audience: &str) -> Result<DevToken, DevIssuerError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.mint_at(issuer, audience, now)
    }

    /// [`Self::mint`] as if issued at `now` (Unix seconds).
    pub(crate) fn mint_at(
        &self,
        issuer: &str,
        audience: &str,
        now: u64,
    ) -> Result<DevToken, DevIssuerError> {
        let exp = now + self.settings.token_ttl.as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let claims = json!({
            "iss": issuer, "aud": audience, "sub": self.settings.subject,
            "iat": now, "exp": exp,
            "groups": self.settings.groups, "scope": self.settings.scopes.join(" "),
        });
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| DevIssuerError::Sign(e.to_string()))?;
        Ok(DevToken {
            token,
            expires_unix: exp,
            subject: self.settings.subject.clone(),
        })
    }
}

/// A fresh RSA-2048 key pair to sign tokens with, and its public parts.
pub struct RsaKey {
    /// The private key, as jsonwebtoken signs with it.
    pub encoding: EncodingKey,
    /// The modulus, base64url (the JWK's `n`).
    pub n: String,
    /// The public exponent, base64url (the JWK's `e`).
    pub e: String,
    /// The public key as X.509 SubjectPublicKeyInfo DER.
    pub public_der: Vec<u8>,
}

impl RsaKey {
    /// Generates the pair with aws-lc-rs (CPU work: tens of milliseconds).
    ///
    /// # Errors
    /// [`DevIssuerError::Key`].
    pub fn generate() -> Result<Self, DevIssuerError> {
        let key_err = |what: &str| DevIssuerError::Key(what.to_owned());
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| key_err("RSA-2048 generation failed"))?;
        let pkcs8 = pair
            .as_der()
            .map_err(|_| key_err("cannot encode the private key"))?;
        // jsonwebtoken signs RSA with PKCS#1 DER; its PEM reader takes the
        // PKCS#8 that aws-lc-rs exports and unwraps it.
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| DevIssuerError::Key(format!("cannot load the private key: {e}")))?;
        let public = pair.public_key();
        let public_der = public
            .as_der()
            .map_err(|_| key_err("cannot encode the public key"))?
            .as_ref()
            .to_vec();
        Ok(RsaKey {
            encoding,
            n: URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            e: URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            public_der,
        })
    }
}

/// `2026-11-25T15:04:05Z` for Unix seconds (UTC), for the start-up line.
pub fn utc_timestamp(unix: u64) -> String {
    feature_store::clock::utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_764_083_045), "2025-11-25T15:04:05Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
    }
}
