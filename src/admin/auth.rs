//! The bearer token of the admin endpoint.
//!
//! A request carries `Authorization: Bearer <token>`. The comparison hashes both sides
//! (SHA-256) and compares the digests in constant time, so neither the content nor the
//! length of the token leaks through response timing. The token is never logged: a refused
//! request is logged with its peer address and why, not with what it sent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;

/// The configured token, kept as its digest.
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    /// Keeps the digest of `secret`.
    pub fn new(secret: SecretString) -> Token {
        Token {
            digest: Sha256::digest(secret.expose_secret().as_bytes()).into(),
        }
    }

    /// True when `presented` is the token; takes the same time whatever it is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// Proof that a request may use a protected endpoint: extracting it checks the token.
#[derive(Debug, Clone, Copy)]
pub struct Authorized;

impl FromRequestParts<Arc<AppState>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = &state.token else {
            // No token: the configuration only allows a loopback address.
            return Ok(Authorized);
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| bearer(v));
        let why = match presented {
            Some(p) if token.matches(p) => return Ok(Authorized),
            Some(_) => "wrong token",
            None => "no bearer token",
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        tracing::warn!(reason = why, %peer, path = %parts.uri.path(),
            "admin request refused");
        Err(unauthorized(why))
    }
}

/// The token of an `Authorization` value `Bearer <token>` (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// 401 with the challenge RFC 6750 asks for.
fn unauthorized(why: &str) -> Response {
    let body = axum::Json(serde_json::json!({
        "error": format!("{why}: send `Authorization: Bearer <token>` (see docs/operations.md)")
    }));
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"tern\"")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_headers() {
        let t = Token::new(SecretString::from("s3cret-token"));
        assert!(t.matches(b"s3cret-token"));
        assert!(!t.matches(b"s3cret-tokem"));
        assert!(!t.matches(b"s3cret"));
        assert!(!t.matches(b""));
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
