//! Preview links: the per-sandbox preview token (derived, so nothing
//! secret per sandbox is stored), signed preview URLs (random tokens bound
//! to one sandbox and port, stored hashed, expiring, revocable), the check
//! a preview request must pass, and the two URL forms: the path form
//! `{public-url}/preview/{sandboxId}/{port}` and, with a preview domain,
//! the host form `{port}-{sandboxId}.{domain}` (a signed URL carries its
//! token in place of the sandbox id, as Daytona's do).

use crate::error::ApiError;
use crate::AppState;
use atoll_store::SandboxRecord;
use sha2::{Digest, Sha256};

/// Name of the server secret preview tokens are derived with.
pub const SECRET_NAME: &str = "preview-token-key";
/// Signed URLs live 60 s by default, at most a day (Daytona's bounds).
pub const SIGNED_DEFAULT_SECS: i64 = 60;
pub const SIGNED_MAX_SECS: i64 = 86_400;
/// Query parameter a preview token may ride in (Daytona's name).
pub const SANDBOX_AUTH_KEY_QUERY: &str = "DAYTONA_SANDBOX_AUTH_KEY";

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<u8>>());
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<u8>>());
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Equal in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The stable preview token of a sandbox: 32 lowercase hex characters.
pub fn sandbox_token(secret: &str, sandbox_id: &str) -> String {
    hex::encode(
        &hmac_sha256(
            secret.as_bytes(),
            format!("preview:{sandbox_id}").as_bytes(),
        )[..16],
    )
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn valid_port(port: &str) -> Result<u16, ApiError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ApiError::BadRequest(format!(
            "port must be an integer from 1 to 65535, got {port:?}"
        ))),
    }
}

/// A `--preview-domain` value that is not a bare lowercase DNS name.
#[derive(Debug, thiserror::Error)]
#[error("preview domain {value:?} {reason}")]
pub struct PreviewDomainError {
    value: String,
    reason: &'static str,
}

/// Checks a preview domain: a lowercase DNS name such as
/// `preview.example.com` (one label, e.g. `localhost`, is allowed), with no
/// scheme, port, path, wildcard or trailing dot.
pub fn parse_preview_domain(value: &str) -> Result<String, PreviewDomainError> {
    let bad = |reason| {
        Err(PreviewDomainError {
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("is empty");
    }
    if value.contains("://") {
        return bad("must be a bare DNS name, without a scheme (e.g. preview.example.com)");
    }
    if value.contains('/') {
        return bad("must not contain a path");
    }
    if value.contains(':') {
        return bad("must not carry a port (preview URLs take the port of --public-url)");
    }
    if value.starts_with("*.") {
        return bad("must be the domain itself, without the leading `*.`");
    }
    if value.ends_with('.') {
        return bad("must not end with a dot");
    }
    if value.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("must be lowercase");
    }
    if value.len() > 253 {
        return bad("is longer than 253 characters");
    }
    for label in value.split('.') {
        if label.is_empty() {
            return bad("has an empty label");
        }
        if label.len() > 63 {
            return bad("has a label longer than 63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad("may contain only a-z, 0-9, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with '-'");
        }
    }
    Ok(value.to_string())
}

/// The preview a Host header names, if any: `{port}-{label}.{domain}`
/// (any case; a `:port` and a trailing dot are ignored) gives the port as
/// written and the label, lowercased: a sandbox id, or a signed token in
/// its place. Every other host, the bare domain included, is `None`: an
/// API request.
pub fn preview_host(host: &str, domain: &str) -> Option<(String, String)> {
    if host.starts_with('[') {
        return None; // an IPv6 literal
    }
    let name = host.split(':').next()?.trim_end_matches('.');
    let name = name.to_ascii_lowercase();
    let first = name.strip_suffix(domain)?.strip_suffix('.')?;
    if first.contains('.') {
        return None;
    }
    let (port, label) = first.split_once('-')?;
    if port.is_empty() || label.is_empty() {
        return None;
    }
    Some((port.to_string(), label.to_string()))
}

/// `{scheme}://{label}.{domain}[:{port}]`, scheme and port taken from the
/// public URL (a port only if it names one).
fn host_origin(public_url: &str, domain: &str, label: &str) -> String {
    let public = public_url.parse::<axum::http::Uri>().ok();
    let scheme = public
        .as_ref()
        .and_then(|u| u.scheme_str())
        .unwrap_or("http");
    let port = public
        .as_ref()
        .and_then(|u| u.port_u16())
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!("{scheme}://{label}.{domain}{port}")
}

impl AppState {
    /// Where port `port` of a sandbox is previewed: the host form with a
    /// preview domain, else the path form under the public URL.
    pub fn preview_url(&self, sandbox_id: &str, port: u16) -> String {
        self.preview_origin(&format!("{port}-{sandbox_id}"))
            .unwrap_or_else(|| {
                format!(
                    "{}/preview/{sandbox_id}/{port}",
                    self.config.public_url.trim_end_matches('/')
                )
            })
    }

    /// The URL of a signed token: with a preview domain the token stands in
    /// for the sandbox id in the host (`{port}-{token}.{domain}`, Daytona's
    /// form); in the path form it rides in `?DAYTONA_SANDBOX_AUTH_KEY=`.
    pub fn signed_preview_url(&self, sandbox_id: &str, port: u16, token: &str) -> String {
        self.preview_origin(&format!("{port}-{token}"))
            .unwrap_or_else(|| {
                format!(
                    "{}/?{SANDBOX_AUTH_KEY_QUERY}={token}",
                    self.preview_url(sandbox_id, port)
                )
            })
    }

    /// The host-form origin of `label`; `None` without a preview domain.
    fn preview_origin(&self, label: &str) -> Option<String> {
        let domain = self.config.preview_domain.as_deref()?;
        Some(host_origin(&self.config.public_url, domain, label))
    }

    /// Does `token` open `port` of sandbox `r`? The sandbox's own preview
    /// token opens every port; a signed token only its own, until it
    /// expires or is revoked.
    pub async fn preview_token_ok(
        &self,
        r: &SandboxRecord,
        port: u16,
        token: &str,
    ) -> Result<bool, ApiError> {
        let own = sandbox_token(&self.preview_secret, &r.id);
        if constant_time_eq(own.as_bytes(), token.as_bytes()) {
            return Ok(true);
        }
        Ok(self
            .store
            .signed_preview_valid(
                &hash_token(token),
                &r.id,
                i64::from(port),
                atoll_types::time::now_millis(),
            )
            .await?)
    }

    /// Deletes signed preview tokens past their expiry (the scheduler
    /// calls this every pass; an expired token opens nothing either way).
    pub async fn sweep_signed_previews(&self) {
        match self
            .store
            .delete_expired_signed_previews(atoll_types::time::now_millis())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(count = n, "expired signed preview tokens deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting expired signed preview tokens failed"),
        }
    }

    /// A new signed preview token for `port` of `r`, valid `secs` seconds.
    pub async fn sign_preview(
        &self,
        r: &SandboxRecord,
        port: u16,
        secs: i64,
    ) -> Result<String, ApiError> {
        if !(1..=SIGNED_MAX_SECS).contains(&secs) {
            return Err(ApiError::BadRequest(format!(
                "expiresInSeconds must be between 1 and {SIGNED_MAX_SECS}, got {secs}"
            )));
        }
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
        let token = hex::encode(raw);
        let expires = atoll_types::time::now_millis() + secs * 1000;
        self.store
            .insert_signed_preview(&hash_token(&token), &r.id, i64::from(port), expires)
            .await?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tokens_are_stable_per_sandbox_and_differ_between_sandboxes() {
        let a = sandbox_token("k", "sb-1");
        assert_eq!(a, sandbox_token("k", "sb-1"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, sandbox_token("k", "sb-2"));
        assert_ne!(a, sandbox_token("other", "sb-1"));
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"a", b"ab")
        );
        assert!(
            valid_port("0").is_err() && valid_port("65536").is_err() && valid_port("x").is_err()
        );
        assert_eq!(valid_port("3000").unwrap(), 3000);
    }

    #[test]
    fn preview_domains_are_bare_lowercase_dns_names() {
        for ok in ["preview.test", "localhost", "a-1.b2.example.com"] {
            assert_eq!(parse_preview_domain(ok).unwrap(), ok);
        }
        for (bad, says) in [
            ("", "empty"),
            ("https://preview.test", "scheme"),
            ("preview.test/x", "path"),
            ("preview.test:8080", "port"),
            ("*.preview.test", "`*.`"),
            ("preview.test.", "dot"),
            ("Preview.test", "lowercase"),
            ("preview..test", "empty label"),
            (".preview.test", "empty label"),
            ("pre_view.test", "a-z"),
            ("-preview.test", "'-'"),
            ("preview-.test", "'-'"),
        ] {
            let e = parse_preview_domain(bad).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains(&format!("{bad:?}")),
                "{bad:?}: {e}"
            );
        }
        assert!(parse_preview_domain(&format!("{}.test", "a".repeat(64))).is_err());
        assert!(parse_preview_domain(&["abc"; 64].join(".")).is_err());
    }

    #[test]
    fn preview_hosts_name_a_port_and_a_sandbox_or_token() {
        let id = "0b9e7a3c-1f2d-4e5f-8a9b-0c1d2e3f4a5b";
        let want = Some(("8000".to_string(), id.to_string()));
        let d = "preview.test";
        assert_eq!(preview_host(&format!("8000-{id}.preview.test"), d), want);
        assert_eq!(
            preview_host(&format!("8000-{id}.preview.test:3000"), d),
            want
        );
        assert_eq!(preview_host(&format!("8000-{id}.preview.test."), d), want);
        let upper = format!("8000-{}.PREVIEW.Test:3000", id.to_uppercase());
        assert_eq!(preview_host(&upper, d), want);
        // the port is checked later (400), not here
        assert_eq!(
            preview_host("abc-x.preview.test", d),
            Some(("abc".into(), "x".into()))
        );
        for api in [
            "preview.test",
            "preview.test:3000",
            "127.0.0.1:3000",
            "localhost",
            "www.preview.test",
            "8000-x.other.test",
            "8000-x.notpreview.test",
            "a.8000-x.preview.test",
            "8000-.preview.test",
            "-x.preview.test",
            "[::1]:3000",
            "",
        ] {
            assert_eq!(preview_host(api, d), None, "{api}");
        }
    }

    #[test]
    fn host_origins_take_scheme_and_port_from_the_public_url() {
        let o = |u| host_origin(u, "preview.test", "8000-sb");
        assert_eq!(
            o("http://127.0.0.1:3000"),
            "http://8000-sb.preview.test:3000"
        );
        assert_eq!(
            o("https://atoll.example.com/"),
            "https://8000-sb.preview.test"
        );
        assert_eq!(
            o("https://atoll.example.com:8443/x"),
            "https://8000-sb.preview.test:8443"
        );
    }
}
