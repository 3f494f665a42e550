//! Signed file URLs (the SDK's `download_url`/`upload_url`): each sandbox
//! has a signing key (`GET /api/sandbox/{id}/signing-key`, replaced by
//! `…/signing-key/rotate`); the SDK signs `v1:files:{METHOD}:{path}:{expires}`
//! with HMAC-SHA256 and the toolbox proxy lets such a request through
//! without an API key, for exactly that method, operation and path, until
//! `expires` (Unix seconds; 0: never). Rotating the key invalidates every
//! URL made before.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::AppState;
use atoll_types::time::now_millis;
use base64::Engine;
use ring::hmac;

const SIGNATURE_PREFIX: &str = "v1_";

/// The toolbox operations a signed URL may name, with their method.
const SIGNED_OPERATIONS: &[(&str, &str)] =
    &[("/files/download", "GET"), ("/files/upload-v2", "POST")];

fn fresh_key() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The signature the SDK puts on a URL.
pub fn sign(key: &str, method: &str, path: &str, expires: i64) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let tag = hmac::sign(&k, format!("v1:files:{method}:{path}:{expires}").as_bytes());
    format!(
        "{SIGNATURE_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

/// Why a signed request is refused (all 403: nothing tells an outsider
/// whether the sandbox exists).
fn refused(why: &str) -> ApiError {
    ApiError::Forbidden(format!("invalid signed URL: {why}"))
}

/// A checked signed request: the query to send on, without the signature.
pub struct SignedRequest {
    pub forward_query: String,
}

impl AppState {
    pub async fn signing_key(&self, p: &Principal, id_or_name: &str) -> Result<String, ApiError> {
        let r = self.find(p, id_or_name).await?;
        Ok(self
            .store
            .signing_key(&r.id, &fresh_key()?, now_millis())
            .await?)
    }

    pub async fn rotate_signing_key(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<String, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let key = fresh_key()?;
        self.store
            .replace_signing_key(&r.id, &key, now_millis())
            .await?;
        Ok(key)
    }

    /// Checks a toolbox request that carries a signature instead of an API
    /// key: `operation` is the path after `/toolbox/{id}`, `raw_query` the
    /// query as sent.
    pub async fn check_signed(
        &self,
        sandbox_id: &str,
        method: &str,
        operation: &str,
        raw_query: &str,
    ) -> Result<SignedRequest, ApiError> {
        if !SIGNED_OPERATIONS.contains(&(operation, method)) {
            return Err(refused(
                "signed URLs allow only GET /files/download and POST /files/upload-v2",
            ));
        }
        let q = QueryPairs::parse(Some(raw_query));
        let one = |k: &str| -> Result<&str, ApiError> {
            let mut all = q.0.iter().filter(|(key, _)| key == k);
            match (all.next(), all.next()) {
                (Some((_, v)), None) => Ok(v.as_str()),
                _ => Err(refused(&format!("it needs exactly one {k}"))),
            }
        };
        let path = one("path")?;
        let expires: i64 = one("expires")?
            .parse()
            .map_err(|_| refused("expires is not a number"))?;
        let signature = one("signature")?;
        if expires < 0 || (expires != 0 && expires.saturating_mul(1000) <= now_millis()) {
            return Err(refused("it has expired"));
        }
        let tag = signature
            .strip_prefix(SIGNATURE_PREFIX)
            .and_then(|s| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .ok()
            })
            .ok_or_else(|| refused("the signature is malformed"))?;
        let key = self
            .store
            .existing_signing_key(sandbox_id)
            .await?
            .ok_or_else(|| refused("the signature does not match"))?;
        let k = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
        let message = format!("v1:files:{method}:{path}:{expires}");
        hmac::verify(&k, message.as_bytes(), &tag)
            .map_err(|_| refused("the signature does not match"))?;
        // Everything but the signature's own parameters goes on, as sent.
        let forward_query = raw_query
            .split('&')
            .filter(|pair| {
                let key = pair.split('=').next().unwrap_or_default();
                key != "expires" && key != "signature"
            })
            .collect::<Vec<_>>()
            .join("&");
        Ok(SignedRequest { forward_query })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_sdk_formula() {
        // HMAC-SHA256("k", "v1:files:GET:/a b:0"), base64url without padding.
        let s = sign("k", "GET", "/a b", 0);
        // As the Python SDK's compute_file_url_signature gives it.
        assert_eq!(s, "v1_1TF9fGHcFC8miaV8tYcDgYK32kaGMJ72Jd4w43EA0Iw");
        assert_ne!(s, sign("k", "POST", "/a b", 0));
        assert_ne!(s, sign("k", "GET", "/a b", 1));
        assert_ne!(s, sign("k2", "GET", "/a b", 0));
    }
}
