//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, sent as `webhook-signature: v1,<base64>`.
//!
//! Several secrets make rotation possible: the sender signs with every configured secret
//! (space-separated signatures), and a receiver accepts a request when any signature matches
//! any of its secrets. So a new secret is added on the receiver, then on the sender, and the
//! old one is removed from the sender, then from the receiver, without a rejected request.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

/// The header carrying the message id (tern's alert id, the same on every retry).
pub const HEADER_ID: &str = "webhook-id";
/// The header carrying the send time in seconds since the Unix epoch.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The header carrying the signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The prefix of a secret written in the Standard Webhooks form.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a timestamp may be from the receiver's clock, by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const VERSION: &str = "v1";

/// Secrets are written with or without padding; both decode.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// One signing key. Its bytes never appear in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret {
    key: SecretSlice<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl Secret {
    /// Reads one secret: `whsec_<base64>` is the Standard Webhooks form (the key is the
    /// decoded bytes); anything else is used as raw bytes. The error never quotes the secret.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let text = text.trim();
        let key = match text.strip_prefix(SECRET_PREFIX) {
            Some(b64) => LENIENT_BASE64.decode(b64).map_err(|_| {
                format!("a `{SECRET_PREFIX}` secret must be base64 after the prefix")
            })?,
            None => text.as_bytes().to_vec(),
        };
        Secret::from_bytes(key)
    }

    /// A secret from its key bytes.
    pub fn from_bytes(key: Vec<u8>) -> Result<Secret, String> {
        if key.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Secret {
            key: SecretSlice::from(key),
        })
    }

    /// The `whsec_` form of a key (to hand a generated key to a receiver, as `tern demo` does).
    pub fn encode(key: &[u8]) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// The HMAC state after absorbing the signed content.
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Option<HmacSha256> {
        // HMAC takes keys of any length; the error branch cannot happen but costs nothing.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.key.expose_secret()).ok()?;
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        Some(mac)
    }

    /// `v1,<base64>` for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        match self.mac(id, &ts, body) {
            Some(mac) => format!("{VERSION},{}", STANDARD.encode(mac.finalize().into_bytes())),
            None => String::new(),
        }
    }
}

/// Reads the secrets a source holds (an environment variable, a file, a `--secret` value):
/// one or more, separated by whitespace or newlines, each as [`Secret::parse`] reads it.
pub fn parse_secrets(text: &str) -> Result<Vec<Secret>, String> {
    let mut secrets = Vec::new();
    for (i, word) in text.split_whitespace().enumerate() {
        let s = Secret::parse(word).map_err(|e| format!("secret {}: {e}", i + 1))?;
        secrets.push(s);
    }
    if secrets.is_empty() {
        return Err("no secret given".into());
    }
    Ok(secrets)
}

/// The `webhook-signature` value: one `v1,<base64>` per secret, space-separated.
pub fn sign(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The wall clock in whole seconds since the Unix epoch (0 for a clock before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Why a request was not accepted as signed by one of the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A required header is absent or not text.
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    BadTimestamp,
    /// The timestamp is further from now than the tolerance (replay protection, or a clock
    /// that is off).
    OutsideTolerance {
        /// Signed time minus now, in seconds.
        skew: i64,
    },
    /// No `v1,` signature in the header.
    NoSignature,
    /// No signature matches any secret.
    Mismatch,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::MissingHeader(h) => write!(f, "missing or unreadable `{h}` header"),
            Rejection::BadTimestamp => write!(f, "`{HEADER_TIMESTAMP}` is not an integer"),
            Rejection::OutsideTolerance { skew } => write!(
                f,
                "`{HEADER_TIMESTAMP}` is {}s in the {} (check both clocks)",
                skew.unsigned_abs(),
                if *skew < 0 { "past" } else { "future" }
            ),
            Rejection::NoSignature => {
                write!(f, "no `{VERSION},` signature in `{HEADER_SIGNATURE}`")
            }
            Rejection::Mismatch => write!(f, "no signature matches a configured secret"),
        }
    }
}

impl std::error::Error for Rejection {}

/// Checks signatures against a set of secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier accepting any of `secrets`, with the default tolerance of 5 minutes.
    pub fn new(secrets: Vec<Secret>) -> Verifier {
        Verifier {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// The same verifier with another timestamp tolerance.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Verifier {
        self.tolerance = tolerance;
        self
    }

    /// True when there is no secret (so nothing can be verified).
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Verifies one request from its three headers (`None` when absent) and its raw body,
    /// at `now` (seconds since the epoch). Accepts when any `v1` signature matches any
    /// secret; the comparison takes the same time wherever the bytes differ.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), Rejection> {
        let id = id.ok_or(Rejection::MissingHeader(HEADER_ID))?;
        let ts_text = timestamp.ok_or(Rejection::MissingHeader(HEADER_TIMESTAMP))?;
        let signature = signature.ok_or(Rejection::MissingHeader(HEADER_SIGNATURE))?;
        let ts_text = ts_text.trim();
        let ts: i64 = ts_text.parse().map_err(|_| Rejection::BadTimestamp)?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        let skew = ts.saturating_sub(now);
        if skew.saturating_abs() > tolerance {
            return Err(Rejection::OutsideTolerance { skew });
        }
        let candidates: Vec<Vec<u8>> = signature
            .split_whitespace()
            .filter_map(|s| s.split_once(','))
            .filter(|(version, _)| *version == VERSION)
            .filter_map(|(_, b64)| STANDARD.decode(b64).ok())
            .collect();
        if candidates.is_empty() {
            return Err(Rejection::NoSignature);
        }
        // The timestamp is signed as the sender wrote it: re-rendering the parsed number would
        // reject a sender that wrote leading zeros, so the header's own text is hashed.
        let mut matched = false;
        for secret in &self.secrets {
            let Some(mac) = secret.mac(id, ts_text, body) else {
                continue;
            };
            for c in &candidates {
                // verify_slice compares in constant time and rejects a wrong length.
                matched |= mac.clone().verify_slice(c).is_ok();
            }
        }
        if matched {
            Ok(())
        } else {
            Err(Rejection::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use standardwebhooks::Webhook;

    const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const BODY: &[u8] = br#"{"id":"a1","rule":"congestion","severity":"warning"}"#;

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, HeaderValue::from_str(id).unwrap());
        h.insert(
            HEADER_TIMESTAMP,
            HeaderValue::from_str(&ts.to_string()).unwrap(),
        );
        h.insert(HEADER_SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn matches_the_published_test_vector() {
        // The vector from the Standard Webhooks reference libraries.
        let s = Secret::parse(WHSEC).unwrap();
        assert_eq!(
            s.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn ours_verified_by_standardwebhooks() {
        let now = unix_now();
        let secrets = parse_secrets(WHSEC).unwrap();
        let sig = sign(&secrets, "a1", now, BODY);
        let theirs = Webhook::new(WHSEC).unwrap();
        theirs.verify(BODY, &headers("a1", now, &sig)).unwrap();
        // A changed body or id fails with theirs too.
        assert!(theirs.verify(b"{}", &headers("a1", now, &sig)).is_err());
        assert!(theirs.verify(BODY, &headers("a2", now, &sig)).is_err());
    }

    #[test]
    fn raw_secret_uses_its_bytes() {
        let now = unix_now();
        let ours = parse_secrets("not-base64 secret!").unwrap();
        assert_eq!(ours.len(), 2);
        let theirs = Webhook::from_bytes(b"not-base64".to_vec()).unwrap();
        let sig = ours[0].sign("a1", now, BODY);
        theirs.verify(BODY, &headers("a1", now, &sig)).unwrap();
    }

    #[test]
    fn standardwebhooks_verified_by_ours() {
        let now = unix_now();
        let theirs = Webhook::new(WHSEC).unwrap();
        let sig = theirs.sign("a1", now, BODY).unwrap();
        let v = Verifier::new(parse_secrets(WHSEC).unwrap());
        let ts = now.to_string();
        v.verify(Some("a1"), Some(&ts), Some(&sig), BODY, now)
            .unwrap();
        assert_eq!(
            v.verify(Some("a1"), Some(&ts), Some(&sig), b"{}", now),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn rotation_signs_with_every_secret_and_accepts_any() {
        let now = unix_now();
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = Secret::encode(b"a brand new key for rotation");
        let both = parse_secrets(&format!("{old}\n{new}\n")).unwrap();
        let sig = sign(&both, "a1", now, BODY);
        assert_eq!(sig.split(' ').count(), 2);
        // A receiver that knows only one of them still accepts (standardwebhooks and ours).
        for one in [old, new.as_str()] {
            Webhook::new(one)
                .unwrap()
                .verify(BODY, &headers("a1", now, &sig))
                .unwrap();
            let v = Verifier::new(parse_secrets(one).unwrap());
            v.verify(Some("a1"), Some(&now.to_string()), Some(&sig), BODY, now)
                .unwrap();
        }
        // A receiver holding both accepts a sender that signs with only the new one.
        let only_new = sign(&parse_secrets(&new).unwrap(), "a1", now, BODY);
        Verifier::new(both)
            .verify(
                Some("a1"),
                Some(&now.to_string()),
                Some(&only_new),
                BODY,
                now,
            )
            .unwrap();
        // A third key matches none.
        let other = parse_secrets("whsec_dGhpcmQ=").unwrap();
        assert_eq!(
            Verifier::new(other).verify(Some("a1"), Some(&now.to_string()), Some(&sig), BODY, now),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_rejected() {
        let secrets = parse_secrets(WHSEC).unwrap();
        let v = Verifier::new(secrets.clone());
        let now = 1_700_000_000;
        for (ts, ok) in [
            (now, true),
            (now - 300, true),
            (now + 300, true),
            (now - 301, false),
            (now + 301, false),
            (i64::MIN, false),
            (i64::MAX, false),
        ] {
            let sig = sign(&secrets, "a1", ts, BODY);
            let r = v.verify(Some("a1"), Some(&ts.to_string()), Some(&sig), BODY, now);
            assert_eq!(r.is_ok(), ok, "ts {ts}: {r:?}");
        }
        let tight = Verifier::new(secrets.clone()).with_tolerance(Duration::from_secs(10));
        let sig = sign(&secrets, "a1", now - 11, BODY);
        assert!(matches!(
            tight.verify(
                Some("a1"),
                Some(&(now - 11).to_string()),
                Some(&sig),
                BODY,
                now
            ),
            Err(Rejection::OutsideTolerance { skew: -11 })
        ));
    }

    #[test]
    fn malformed_headers_are_rejections_not_panics() {
        let v = Verifier::new(parse_secrets(WHSEC).unwrap());
        let now = 1_700_000_000;
        let ts = now.to_string();
        let good = sign(&v.secrets, "a1", now, BODY);
        assert_eq!(
            v.verify(None, Some(&ts), Some(&good), BODY, now),
            Err(Rejection::MissingHeader(HEADER_ID))
        );
        assert_eq!(
            v.verify(Some("a1"), None, Some(&good), BODY, now),
            Err(Rejection::MissingHeader(HEADER_TIMESTAMP))
        );
        assert_eq!(
            v.verify(Some("a1"), Some(&ts), None, BODY, now),
            Err(Rejection::MissingHeader(HEADER_SIGNATURE))
        );
        assert_eq!(
            v.verify(Some("a1"), Some("soon"), Some(&good), BODY, now),
            Err(Rejection::BadTimestamp)
        );
        for bad in ["", "v1", "v1,", "v2,abcd", "v1,!!!", "garbage", ",,,,"] {
            let r = v.verify(Some("a1"), Some(&ts), Some(bad), BODY, now);
            assert!(
                matches!(r, Err(Rejection::NoSignature | Rejection::Mismatch)),
                "{bad:?}: {r:?}"
            );
        }
        // A truncated signature is a mismatch, not a prefix match.
        let truncated = &good[..good.len() - 8];
        assert!(
            v.verify(Some("a1"), Some(&ts), Some(truncated), BODY, now)
                .is_err()
        );
        // The good one next to junk still passes.
        let mixed = format!("v1,AAAA v2,zz {good}");
        v.verify(Some("a1"), Some(&ts), Some(&mixed), BODY, now)
            .unwrap();
    }

    #[test]
    fn secret_sources_are_parsed_and_never_quoted_in_errors() {
        assert_eq!(parse_secrets("  \n ").unwrap_err(), "no secret given");
        let e = parse_secrets("whsec_abc whsec_%%%hunter2").unwrap_err();
        assert!(e.starts_with("secret 2:"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(Secret::parse("whsec_").is_err());
        // Padding is optional.
        let padded = Secret::parse("whsec_dGhpcmQ=").unwrap();
        let bare = Secret::parse("whsec_dGhpcmQ").unwrap();
        assert_eq!(padded.sign("i", 1, b"x"), bare.sign("i", 1, b"x"));
        assert_eq!(format!("{padded:?}"), "Secret([REDACTED])");
    }
}
