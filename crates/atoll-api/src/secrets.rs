//! Organization secrets: values sealed at rest (AES-256-GCM under the
//! server's secrets key, never returned after creation), and their mounts
//! into sandboxes as environment variables.
//!
//! Daytona shows a sandbox only an opaque placeholder and swaps in the
//! value at its egress proxy for the secret's allowed hosts. Atoll has no
//! such proxy yet, so a secret without `hosts` is given to the sandbox as
//! its value, and mounting a secret restricted to hosts is refused (its
//! value would otherwise reach hosts it must not): never silently weaker.

use crate::auth::Principal;
use crate::dto::{self, CreateSecret, UpdateSecret};
use crate::error::ApiError;
use crate::AppState;
use atoll_store::{SandboxRecord, SecretRecord};
use atoll_types::time::{now_millis, rfc3339_millis};
use base64::Engine;
use ring::aead;
use std::collections::BTreeMap;

/// Largest secret value accepted.
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// Secrets one sandbox may mount.
pub const MAX_MOUNTS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the secrets key must be 32 bytes (64 hex characters)")]
    BadKey,
    #[error("no randomness for a nonce")]
    Random,
    #[error("a stored secret could not be opened (was the secrets key changed?)")]
    Open,
}

/// The server's key for secret values. Kept out of `Debug` output.
pub struct SecretsKey(aead::LessSafeKey);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

const NONCE_LEN: usize = aead::NONCE_LEN;

impl SecretsKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<SecretsKey, SealError> {
        let key =
            aead::UnboundKey::new(&aead::AES_256_GCM, bytes).map_err(|_| SealError::BadKey)?;
        Ok(SecretsKey(aead::LessSafeKey::new(key)))
    }

    /// A key from 64 hex characters.
    pub fn from_hex(hex_key: &str) -> Result<SecretsKey, SealError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| SealError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    /// A fresh random key (tests; a server loads its own).
    pub fn random() -> Result<SecretsKey, SealError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| SealError::Random)?;
        Self::from_bytes(&bytes)
    }

    /// `base64(nonce || ciphertext || tag)`; `aad` binds the sealed value
    /// to its secret (a value copied onto another row does not open).
    pub fn seal(&self, plain: &str, aad: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buf = plain.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str, aad: &str) -> Result<String, SealError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, aead::Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

impl From<SealError> for ApiError {
    fn from(e: SealError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An environment variable name a shell can use: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 255
}

/// A host a secret may be sent to: a DNS name, optionally `*.` first.
fn valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn checked_hosts(hosts: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let hosts = hosts.unwrap_or_default();
    if let Some(bad) = hosts.iter().find(|h| !valid_host(h)) {
        return Err(ApiError::BadRequest(format!(
            "invalid host {bad:?}: use a DNS name such as api.example.com or *.example.com"
        )));
    }
    Ok(hosts)
}

fn checked_value(value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES || value.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "a secret value must be at most {MAX_VALUE_BYTES} bytes and contain no NUL"
        )));
    }
    Ok(())
}

fn placeholder() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(format!("dtn_secret_{}", hex::encode(bytes)))
}

/// Secret mounts as the SDK sends them (`[{ENV_VAR: secretName}, …]`) as
/// one map, checked for shape and names.
pub fn mounts_from_wire(
    list: Vec<BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for entry in list {
        for (env, secret) in entry {
            if !valid_env_var_name(&env) {
                return Err(ApiError::BadRequest(format!(
                    "invalid environment variable name {env:?} for secret {secret:?}"
                )));
            }
            if out.insert(env.clone(), secret).is_some() {
                return Err(ApiError::BadRequest(format!(
                    "environment variable {env} is given more than one secret"
                )));
            }
        }
    }
    if out.len() > MAX_MOUNTS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_MOUNTS} secrets can be mounted in a sandbox"
        )));
    }
    Ok(out)
}

impl AppState {
    fn secret_dto(&self, s: &SecretRecord) -> dto::Secret {
        dto::Secret {
            id: s.id.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            created_at: rfc3339_millis(s.created_at),
            updated_at: rfc3339_millis(s.updated_at),
            placeholder: s.placeholder.clone(),
            hosts: s.hosts.clone(),
        }
    }

    async fn find_secret(&self, p: &Principal, id_or_name: &str) -> Result<SecretRecord, ApiError> {
        self.store
            .secret_in_org(&p.organization_id, id_or_name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Secret {id_or_name} not found")))
    }

    pub async fn create_secret(
        &self,
        p: &Principal,
        req: CreateSecret,
    ) -> Result<dto::Secret, ApiError> {
        if !valid_secret_name(&req.name) {
            return Err(ApiError::BadRequest(format!(
                "invalid secret name {:?}: use 1-255 letters, digits, '-' or '_'",
                req.name
            )));
        }
        checked_value(&req.value)?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_millis();
        let record = SecretRecord {
            sealed_value: self.secrets_key.seal(&req.value, &id)?,
            id,
            organization_id: p.organization_id.clone(),
            name: req.name,
            description: req.description,
            hosts: checked_hosts(req.hosts)?,
            placeholder: placeholder()?,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_secret(&record).await?;
        Ok(self.secret_dto(&record))
    }

    pub async fn list_secrets(&self, p: &Principal) -> Result<Vec<dto::Secret>, ApiError> {
        Ok(self
            .store
            .secrets_in_org(&p.organization_id)
            .await?
            .iter()
            .map(|s| self.secret_dto(s))
            .collect())
    }

    pub async fn get_secret(&self, p: &Principal, id: &str) -> Result<dto::Secret, ApiError> {
        Ok(self.secret_dto(&self.find_secret(p, id).await?))
    }

    /// Changes a secret's value, description or hosts. Running sandboxes
    /// that mount it see a new value in processes started afterwards.
    pub async fn update_secret(
        &self,
        p: &Principal,
        id: &str,
        req: UpdateSecret,
    ) -> Result<dto::Secret, ApiError> {
        let mut s = self.find_secret(p, id).await?;
        if let Some(v) = &req.value {
            checked_value(v)?;
        }
        let hosts = match req.hosts {
            Some(h) => Some(checked_hosts(Some(h))?),
            None => None,
        };
        let mounted_by = self.sandboxes_mounting(&p.organization_id, &s.name).await?;
        if hosts.as_ref().is_some_and(|h| !h.is_empty()) && !mounted_by.is_empty() {
            return Err(ApiError::Conflict(format!(
                "secret {} is mounted by {} sandbox(es); restricting it to hosts needs egress substitution, which this server does not do",
                s.name,
                mounted_by.len()
            )));
        }
        if let Some(v) = &req.value {
            s.sealed_value = self.secrets_key.seal(v, &s.id)?;
        }
        if let Some(h) = hosts {
            s.hosts = h;
        }
        if req.description.is_some() {
            s.description = req.description;
        }
        s.updated_at = now_millis();
        self.store.update_secret(&s).await?;
        if let Some(v) = &req.value {
            for r in mounted_by
                .iter()
                .filter(|r| r.state == crate::service::state::STARTED)
            {
                let set: BTreeMap<String, String> = r
                    .secrets
                    .iter()
                    .filter(|(_, name)| **name == s.name)
                    .map(|(env, _)| (env.clone(), v.clone()))
                    .collect();
                self.push_env(&r.id, set, vec![]).await;
            }
        }
        Ok(self.secret_dto(&s))
    }

    /// Deletes a secret no sandbox mounts (409 names one that does).
    pub async fn delete_secret(&self, p: &Principal, id: &str) -> Result<(), ApiError> {
        let s = self.find_secret(p, id).await?;
        if let Some(r) = self
            .sandboxes_mounting(&p.organization_id, &s.name)
            .await?
            .first()
        {
            return Err(ApiError::Conflict(format!(
                "secret {} is mounted by sandbox {}; detach it first (update_secrets)",
                s.name, r.id
            )));
        }
        self.store.delete_secret(&p.organization_id, &s.id).await?;
        Ok(())
    }

    async fn sandboxes_mounting(
        &self,
        organization_id: &str,
        secret_name: &str,
    ) -> Result<Vec<SandboxRecord>, ApiError> {
        let mut rows = self.store.sandboxes_in_org(organization_id).await?;
        rows.retain(|r| r.secrets.values().any(|n| n == secret_name));
        Ok(rows)
    }

    /// Checks that every mounted secret exists in the organization and
    /// may be given to a sandbox.
    pub(crate) async fn check_mounts(
        &self,
        organization_id: &str,
        mounts: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        for name in mounts.values() {
            let s = self
                .store
                .secret_in_org(organization_id, name)
                .await?
                .filter(|s| s.name == *name)
                .ok_or_else(|| ApiError::NotFound(format!("Secret {name} not found")))?;
            if !s.hosts.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "secret {name} is restricted to hosts ({}); this server cannot substitute secrets at egress, so it mounts only secrets without hosts",
                    s.hosts.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The environment a sandbox's mounted secrets give it (values opened).
    pub(crate) async fn secret_env(
        &self,
        r: &SandboxRecord,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let mut env = BTreeMap::new();
        for (var, name) in &r.secrets {
            let s = self
                .store
                .secret_in_org(&r.organization_id, name)
                .await?
                .filter(|s| s.name == *name)
                .ok_or_else(|| {
                    ApiError::Conflict(format!("secret {name} mounted as {var} no longer exists"))
                })?;
            env.insert(var.clone(), self.secrets_key.open(&s.sealed_value, &s.id)?);
        }
        Ok(env)
    }

    /// Replaces the sandbox's mounted secrets. A running sandbox's
    /// processes started afterwards see the change.
    pub async fn update_sandbox_secrets(
        &self,
        p: &Principal,
        id_or_name: &str,
        list: Vec<BTreeMap<String, String>>,
    ) -> Result<dto::Sandbox, ApiError> {
        let mounts = mounts_from_wire(list)?;
        self.check_mounts(&p.organization_id, &mounts).await?;
        let found = self.find(p, id_or_name).await?;
        let lock = self.locks.get(&found.id);
        let _guard = lock.lock().await;
        let mut r = self.find(p, &found.id).await?;
        let removed: Vec<String> = r
            .secrets
            .keys()
            .filter(|k| !mounts.contains_key(*k))
            .cloned()
            .collect();
        r.secrets = mounts;
        r.updated_at = now_millis();
        let current = r.state;
        self.store.update_sandbox(&r, current).await?;
        if r.state == crate::service::state::STARTED {
            let set = self.secret_env(&r).await?;
            self.push_env(&r.id, set, removed).await;
        }
        Ok(self.to_dto(&r))
    }

    /// Sets and unsets environment variables of a running sandbox's daemon
    /// (what processes it starts from now on inherit). Best effort: the
    /// stored row is what the next start uses either way.
    pub(crate) async fn push_env(
        &self,
        id: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) {
        if let Err(e) = self.push_env_checked(id, set, unset).await {
            tracing::warn!(sandbox = %id, error = %e, "updating the sandbox environment failed");
        }
    }

    /// [`AppState::push_env`], failing if the daemon did not take it.
    pub(crate) async fn push_env_checked(
        &self,
        id: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({ "set": set, "unset": unset });
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri("/env")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .map_err(|e| ApiError::Internal(format!("building the env request: {e}")))?;
        let resp = self
            .forward_to_toolbox(id, req, "/env")
            .await
            .map_err(|e| ApiError::BadGateway(format!("updating the sandbox environment: {e}")))?;
        if !resp.status().is_success() {
            return Err(ApiError::BadGateway(format!(
                "updating the sandbox environment: the daemon answered {}",
                resp.status()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_row() {
        let key = SecretsKey::random().unwrap();
        let sealed = key.seal("hunter2", "row-1").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open(&sealed, "row-1").unwrap(), "hunter2");
        assert!(key.open(&sealed, "row-2").is_err());
        assert!(SecretsKey::random()
            .unwrap()
            .open(&sealed, "row-1")
            .is_err());
        assert!(key.open("bm90IHNlYWxlZA==", "row-1").is_err());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, key.seal("hunter2", "row-1").unwrap());
    }

    #[test]
    fn mounts_names_and_hosts_are_checked() {
        let ok = mounts_from_wire(vec![
            [("API_KEY".to_string(), "prod".to_string())].into(),
            [("_X1".to_string(), "other".to_string())].into(),
        ])
        .unwrap();
        assert_eq!(ok.len(), 2);
        for bad in ["1X", "A-B", "", "A B", "A=B"] {
            assert!(mounts_from_wire(vec![[(bad.to_string(), "s".to_string())].into()]).is_err());
        }
        assert!(mounts_from_wire(vec![
            [("A".to_string(), "s".to_string())].into(),
            [("A".to_string(), "t".to_string())].into()
        ])
        .is_err());
        assert!(valid_host("api.anthropic.com") && valid_host("*.anthropic.com"));
        assert!(!valid_host("http://x") && !valid_host("a..b") && !valid_host("*."));
    }
}
