//! A client of the OCI distribution API (`/v2/…`): manifests and blobs,
//! with Docker's token and basic authentication, mirrors, and HTTPS for
//! every registry but loopback ones and those the operator names insecure
//! (as Docker: an insecure registry is tried over HTTPS without
//! verification first, then plain HTTP).
//!
//! Everything a registry sends is bounded and checked: manifests are at
//! most [`MAX_MANIFEST_BYTES`] and must hash to the digest asked for; a
//! blob must be exactly the descriptor's size and hash to its digest.

use super::reference::{host_of, Reference};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How this host reaches registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `registry` → `mirror` (both `host[:port]`): pulls of the first are
    /// served by the second.
    pub mirrors: HashMap<String, String>,
    /// Registries (`host[:port]` or `host`) reached without TLS
    /// verification, or over plain HTTP.
    pub insecure: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry}: {message}")]
    Http { registry: String, message: String },
    #[error("{what} not found in {registry}")]
    NotFound { registry: String, what: String },
    #[error("registry {registry} refused the credentials (or they are needed): {message}")]
    Unauthorized { registry: String, message: String },
    #[error("registry {registry} sent a bad answer: {message}")]
    Protocol { registry: String, message: String },
}

/// One manifest as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Deserialize)]
struct Challenge {
    token: Option<String>,
    access_token: Option<String>,
}

/// The registry client of one runner.
pub struct RegistryClient {
    http: reqwest::Client,
    insecure_http: reqwest::Client,
    config: RegistryConfig,
    /// `(api host, repository, credentials' fingerprint)` → the
    /// `Authorization` value that worked: a token or basic header earned
    /// with one caller's credentials is never sent for another's.
    tokens: Mutex<HashMap<(String, String, String), String>>,
    /// `api host` → base URL that answered (`https://h` or `http://h`).
    bases: Mutex<HashMap<String, String>>,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> RegistryClient {
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .danger_accept_invalid_certs(insecure)
                .user_agent(concat!("atoll/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default()
        };
        RegistryClient {
            http: build(false),
            insecure_http: build(true),
            config,
            tokens: Mutex::new(HashMap::new()),
            bases: Mutex::new(HashMap::new()),
        }
    }

    /// The host whose API serves `r` (a mirror if one is configured).
    fn api_host(&self, r: &Reference) -> String {
        self.config
            .mirrors
            .get(&r.registry)
            .cloned()
            .unwrap_or_else(|| r.api_host().to_string())
    }

    fn is_insecure(&self, host: &str) -> bool {
        let bare = host_of(host);
        if bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.config.insecure.iter().any(|i| i == host || i == bare)
    }

    /// The base URL for `host`: HTTPS, or for an insecure registry the
    /// first of HTTPS (unverified) and HTTP that answers `/v2/`.
    async fn base(&self, host: &str) -> Result<String, RegistryError> {
        if let Some(b) = self
            .bases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
        {
            return Ok(b.clone());
        }
        let base = if self.is_insecure(host) {
            let https = format!("https://{host}");
            match self
                .insecure_http
                .get(format!("{https}/v2/"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(_) => https,
                Err(_) => format!("http://{host}"),
            }
        } else {
            format!("https://{host}")
        };
        self.bases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), base.clone());
        Ok(base)
    }

    fn client(&self, host: &str) -> &reqwest::Client {
        if self.is_insecure(host) {
            &self.insecure_http
        } else {
            &self.http
        }
    }

    /// Sends a GET for `path` of `r`'s repository, authenticating on a 401
    /// challenge (bearer token or basic) and retrying once.
    async fn get(
        &self,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = self.api_host(r);
        let base = self.base(&host).await?;
        let url = format!("{base}/v2/{}/{path}", r.repository);
        let key = (host.clone(), r.repository.clone(), fingerprint(creds));
        let http_err = |e: reqwest::Error| RegistryError::Http {
            registry: host.clone(),
            message: without_url(e),
        };
        let send = |auth: Option<String>| {
            let mut req = self.client(&host).get(&url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(a) = auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            req.send()
        };
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let first = send(cached.clone()).await.map_err(http_err)?;
        if first.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let auth = self.authenticate(&host, r, &challenge, creds).await?;
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, auth.clone());
        let second = send(Some(auth)).await.map_err(http_err)?;
        if second.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Unauthorized {
                registry: host,
                message: format!("access to {} denied", r.repository),
            });
        }
        Ok(second)
    }

    /// The `Authorization` value answering `challenge`.
    async fn authenticate(
        &self,
        host: &str,
        r: &Reference,
        challenge: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        use base64::Engine as _;
        let basic = creds.map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password))
            )
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| RegistryError::Unauthorized {
                registry: host.to_string(),
                message: "the registry wants credentials; add them with /api/docker-registry"
                    .into(),
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::Unauthorized {
                registry: host.to_string(),
                message: format!("unsupported authentication scheme {scheme:?}"),
            });
        }
        let params = parse_challenge(params);
        let realm = params.get("realm").ok_or_else(|| RegistryError::Protocol {
            registry: host.to_string(),
            message: "bearer challenge without a realm".into(),
        })?;
        let realm_url = reqwest::Url::parse(realm).map_err(|_| RegistryError::Protocol {
            registry: host.to_string(),
            message: "bearer realm is not a URL".into(),
        })?;
        if realm_url.scheme() != "https" && !self.is_insecure(host) {
            return Err(RegistryError::Protocol {
                registry: host.to_string(),
                message: "bearer realm is not https".into(),
            });
        }
        let scope = format!("repository:{}:pull", r.repository);
        let mut req = self
            .client(host)
            .get(realm_url)
            .query(&[("scope", scope.as_str())]);
        if let Some(service) = params.get("service") {
            req = req.query(&[("service", service.as_str())]);
        }
        if let Some(b) = basic {
            req = req.header(reqwest::header::AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|e| RegistryError::Http {
            registry: host.to_string(),
            message: without_url(e),
        })?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED
            || resp.status() == reqwest::StatusCode::FORBIDDEN
        {
            return Err(RegistryError::Unauthorized {
                registry: host.to_string(),
                message: "the token service refused the credentials".into(),
            });
        }
        let body = read_bounded(resp, 64 << 10, host).await?;
        let c: Challenge = serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
            registry: host.to_string(),
            message: format!("token answer: {e}"),
        })?;
        let token = c
            .token
            .or(c.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Protocol {
                registry: host.to_string(),
                message: "token answer has no token".into(),
            })?;
        Ok(format!("Bearer {token}"))
    }

    /// Fetches the manifest `reference` (a tag or digest) of `r`'s
    /// repository. When `reference` is a digest the body must hash to it.
    pub async fn manifest(
        &self,
        r: &Reference,
        reference: &str,
        creds: Option<&Credentials>,
    ) -> Result<FetchedManifest, RegistryError> {
        let accept = [
            MEDIA_OCI_INDEX,
            MEDIA_OCI_MANIFEST,
            MEDIA_DOCKER_LIST,
            MEDIA_DOCKER_MANIFEST,
        ]
        .join(", ");
        let host = self.api_host(r);
        let resp = self
            .get(r, &format!("manifests/{reference}"), Some(&accept), creds)
            .await?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: host,
                what: format!("manifest {}:{reference}", r.repository),
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Http {
                registry: host,
                message: format!("manifest {}:{reference}: HTTP {status}", r.repository),
            });
        }
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let body = read_bounded(resp, MAX_MANIFEST_BYTES, &host).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(RegistryError::Protocol {
                registry: host,
                message: format!("manifest {reference} hashes to {digest}"),
            });
        }
        Ok(FetchedManifest {
            media_type,
            digest,
            body,
        })
    }

    /// Fetches a small blob (an image config) into memory, checked.
    pub async fn small_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        creds: Option<&Credentials>,
    ) -> Result<Vec<u8>, RegistryError> {
        let host = self.api_host(r);
        if size > MAX_MANIFEST_BYTES as u64 {
            return Err(RegistryError::Protocol {
                registry: host,
                message: format!("config blob {digest} claims {size} bytes"),
            });
        }
        let resp = self.blob_response(r, digest, creds).await?;
        let body = read_bounded(resp, size as usize, &host).await?;
        check_blob(
            &host,
            digest,
            size,
            body.len() as u64,
            &Sha256::digest(&body),
        )?;
        Ok(body)
    }

    async fn blob_response(
        &self,
        r: &Reference,
        digest: &str,
        creds: Option<&Credentials>,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = self.api_host(r);
        let resp = self.get(r, &format!("blobs/{digest}"), None, creds).await?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: host,
                what: format!("blob {digest}"),
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Http {
                registry: host,
                message: format!("blob {digest}: HTTP {status}"),
            });
        }
        Ok(resp)
    }

    /// Opens blob `digest` for streaming; the caller checks size and digest.
    pub async fn blob_stream(
        &self,
        r: &Reference,
        digest: &str,
        creds: Option<&Credentials>,
    ) -> Result<BlobStream, RegistryError> {
        let resp = self.blob_response(r, digest, creds).await?;
        Ok(BlobStream {
            resp,
            host: self.api_host(r),
        })
    }
}

/// A blob's body, chunk by chunk.
pub struct BlobStream {
    resp: reqwest::Response,
    host: String,
}

impl BlobStream {
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, RegistryError> {
        self.resp.chunk().await.map_err(|e| RegistryError::Http {
            registry: self.host.clone(),
            message: without_url(e),
        })
    }
}

/// Who is asking, for the token cache: a hash of the credentials, or
/// anonymous.
fn fingerprint(creds: Option<&Credentials>) -> String {
    match creds {
        None => "anonymous".into(),
        Some(c) => {
            let mut h = Sha256::new();
            h.update(c.username.as_bytes());
            h.update([0]);
            h.update(c.password.as_bytes());
            hex::encode(h.finalize())
        }
    }
}

fn check_blob(
    host: &str,
    digest: &str,
    size: u64,
    got: u64,
    hash: &[u8],
) -> Result<(), RegistryError> {
    if got != size {
        return Err(RegistryError::Protocol {
            registry: host.to_string(),
            message: format!("blob {digest} has {got} bytes, its descriptor says {size}"),
        });
    }
    let actual = format!("sha256:{}", hex::encode(hash));
    if actual != digest {
        return Err(RegistryError::Protocol {
            registry: host.to_string(),
            message: format!("blob {digest} hashes to {actual}"),
        });
    }
    Ok(())
}

/// reqwest's error text without the URL (it can carry a token query).
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
    host: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| RegistryError::Http {
        registry: host.to_string(),
        message: without_url(e),
    })? {
        if body.len() + chunk.len() > limit {
            return Err(RegistryError::Protocol {
                registry: host.to_string(),
                message: format!("answer is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `realm="…",service="…",scope="…"` → map.
fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/python:pull");
        let p = parse_challenge("realm=http://127.0.0.1:1/t, service=x");
        assert_eq!(p["realm"], "http://127.0.0.1:1/t");
        assert_eq!(p["service"], "x");
    }

    #[test]
    fn loopback_and_named_registries_are_insecure_only() {
        let c = RegistryClient::new(RegistryConfig {
            mirrors: HashMap::new(),
            insecure: vec!["reg.internal:5000".into(), "plain.lan".into()],
        });
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(c.is_insecure("localhost:5000"));
        assert!(c.is_insecure("[::1]:5000"));
        assert!(c.is_insecure("reg.internal:5000"));
        assert!(c.is_insecure("plain.lan:443"));
        assert!(!c.is_insecure("reg.internal:5001"));
        assert!(!c.is_insecure("docker.io"));
        assert!(!c.is_insecure("10.0.0.1:5000"));
    }

    #[test]
    fn tokens_are_cached_per_caller() {
        let a = Credentials {
            username: "a".into(),
            password: "pw".into(),
        };
        let b = Credentials {
            username: "a".into(),
            password: "other".into(),
        };
        assert_ne!(fingerprint(Some(&a)), fingerprint(Some(&b)));
        assert_ne!(fingerprint(Some(&a)), fingerprint(None));
        assert_eq!(fingerprint(Some(&a)), fingerprint(Some(&a.clone())));
    }

    #[test]
    fn mirrors_rewrite_the_api_host() {
        let mut mirrors = HashMap::new();
        mirrors.insert("docker.io".to_string(), "127.0.0.1:5001".to_string());
        let c = RegistryClient::new(RegistryConfig {
            mirrors,
            insecure: vec![],
        });
        let r = Reference::parse("python:3").unwrap();
        assert_eq!(c.api_host(&r), "127.0.0.1:5001");
        let r = Reference::parse("ghcr.io/a/b").unwrap();
        assert_eq!(c.api_host(&r), "ghcr.io");
    }
}
