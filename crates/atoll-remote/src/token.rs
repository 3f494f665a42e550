//! Control-plane tokens: how a runner knows a request comes from the
//! control plane it belongs to. The control plane holds an Ed25519 key
//! (`ControlKey`, shared by every API server of a deployment, like the
//! secrets key); a runner learns its public half from `GET
//! /api/runners/me`, which it calls with its own key. Each request to a
//! runner carries `Authorization: Atoll-Control <token>`, a signature over
//! the runner's id and an expiry, so nothing secret about runners is kept
//! in the database (the runner's key is stored hashed) and a token for one
//! runner is worthless to another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use thiserror::Error;

/// The `Authorization` scheme of control-plane requests.
pub const SCHEME: &str = "Atoll-Control";
/// How long a token is good for (each request gets its own).
pub const TOKEN_TTL_MS: i64 = 60 * 1000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed control-plane token")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token's expiry is too far ahead")]
    TooLong,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("invalid control-plane key: {0}")]
    BadKey(&'static str),
}

/// What a token signs: the runner, the expiry and the request (method,
/// path and query), so a token seen on the wire opens nothing but that
/// request on that runner, for a minute.
fn message(runner_id: &str, expires_ms: i64, method: &str, path: &str) -> String {
    format!("atoll-control:v2:{runner_id}:{expires_ms}:{method} {path}")
}

/// The control plane's signing key.
pub struct ControlKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl ControlKey {
    /// From its 32-byte seed.
    pub fn from_seed(seed: &[u8]) -> Result<ControlKey, TokenError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| TokenError::BadKey("an Ed25519 seed is 32 bytes"))?;
        Ok(ControlKey { pair })
    }

    /// The public half, base64url (what runners verify with).
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref())
    }

    /// A token for `method path` on `runner_id`, good until `now_ms +
    /// TOKEN_TTL_MS`.
    pub fn token(&self, runner_id: &str, method: &str, path: &str, now_ms: i64) -> String {
        let expires = now_ms + TOKEN_TTL_MS;
        let sig = self
            .pair
            .sign(message(runner_id, expires, method, path).as_bytes());
        format!("v2.{expires}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// What a runner verifies tokens with.
#[derive(Debug, Clone)]
pub struct ControlVerifier {
    public: Vec<u8>,
    runner_id: String,
}

impl ControlVerifier {
    /// For runner `runner_id`, with the control plane's public key as
    /// [`ControlKey::public_key`] gives it.
    pub fn new(public_key: &str, runner_id: &str) -> Result<ControlVerifier, TokenError> {
        let public = URL_SAFE_NO_PAD
            .decode(public_key.trim())
            .map_err(|_| TokenError::BadKey("not base64url"))?;
        if public.len() != 32 {
            return Err(TokenError::BadKey("an Ed25519 public key is 32 bytes"));
        }
        Ok(ControlVerifier {
            public,
            runner_id: runner_id.to_string(),
        })
    }

    /// Checks a token for the request `method path` at `now_ms`.
    pub fn verify(
        &self,
        token: &str,
        method: &str,
        path: &str,
        now_ms: i64,
    ) -> Result<(), TokenError> {
        let mut parts = token.split('.');
        let (Some("v2"), Some(exp), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let expires: i64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(
                message(&self.runner_id, expires, method, path).as_bytes(),
                &sig,
            )
            .map_err(|_| TokenError::BadSignature)?;
        if expires <= now_ms {
            return Err(TokenError::Expired);
        }
        if expires > now_ms + 2 * TOKEN_TTL_MS {
            return Err(TokenError::TooLong);
        }
        Ok(())
    }

    /// The runner this verifier is for.
    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_runner_request_key_and_time() {
        let key = ControlKey::from_seed(&[7u8; 32]).unwrap();
        let other = ControlKey::from_seed(&[8u8; 32]).unwrap();
        let v = ControlVerifier::new(&key.public_key(), "r1").unwrap();
        let now = 1_000_000;
        let (m, p) = ("POST", "/v1/sandboxes/a/stop");
        let t = key.token("r1", m, p, now);
        assert_eq!(v.verify(&t, m, p, now), Ok(()));
        assert_eq!(
            v.verify(&t, m, p, now + TOKEN_TTL_MS),
            Err(TokenError::Expired)
        );
        // Another request, runner or key: refused.
        assert_eq!(
            v.verify(&t, "POST", "/v1/sandboxes/a/destroy", now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(v.verify(&t, "GET", p, now), Err(TokenError::BadSignature));
        assert_eq!(
            v.verify(&key.token("r2", m, p, now), m, p, now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            v.verify(&other.token("r1", m, p, now), m, p, now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            v.verify(&key.token("r1", m, p, now + 3 * TOKEN_TTL_MS), m, p, now),
            Err(TokenError::TooLong)
        );
        // A tampered expiry breaks the signature.
        let forged = t.replacen(
            &format!("{}", now + TOKEN_TTL_MS),
            &format!("{}", now + 2 * TOKEN_TTL_MS),
            1,
        );
        assert_eq!(v.verify(&forged, m, p, now), Err(TokenError::BadSignature));
        for junk in ["", "v2", "v2.x.y", "v1.1.AA", "v2.1.%%", "v2.1.AA.extra"] {
            assert!(v.verify(junk, m, p, now).is_err(), "{junk}");
        }
        assert!(ControlVerifier::new("short", "r1").is_err());
    }
}
