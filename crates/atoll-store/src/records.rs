//! Row types: plain data as stored, with JSON columns decoded.

use crate::{get_bool, StoreError};
use atoll_types::SandboxState;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// An organization's quota overrides. `None` follows the server's
/// default; `Some(-1)` is unlimited; `Some(n)`, `n >= 0`, a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgQuotaRecord {
    pub organization_id: String,
    pub max_sandboxes: Option<i64>,
    /// Cpus.
    pub total_cpu: Option<i64>,
    /// GiB.
    pub total_memory: Option<i64>,
    /// GiB.
    pub total_disk: Option<i64>,
    pub updated_at: i64,
}

/// What one sandbox row holds, as quota accounting sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxHolding {
    pub id: String,
    pub state: SandboxState,
    pub cpu: i64,
    /// GiB.
    pub memory: i64,
    /// GiB.
    pub disk: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// SHA-256 of the key, hex. The key itself is never stored.
    pub key_hash: String,
    /// First characters of the key, to recognise it in listings.
    pub key_prefix: String,
    /// `admin` or `member`.
    pub role: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Daytona permission names the key is limited to; `None`: all.
    pub permissions: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub volume_id: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub snapshot: String,
    pub os_user: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub cpu: i64,
    pub gpu: i64,
    /// GiB.
    pub memory: i64,
    /// GiB.
    pub disk: i64,
    pub state: SandboxState,
    pub desired_state: SandboxState,
    pub error_reason: Option<String>,
    pub recoverable: bool,
    pub auto_stop_interval: i64,
    pub auto_archive_interval: i64,
    pub auto_delete_interval: i64,
    pub volumes: Vec<VolumeMount>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_activity_at: i64,
    /// When `state` last changed (ms).
    pub state_changed_at: i64,
    /// Minutes of life given by the last TTL set (0: none).
    pub ttl_minutes: i64,
    /// When the TTL runs out (ms); `None`: no TTL.
    pub auto_destroy_at: Option<i64>,
    /// Organization secrets mounted as environment variables: env var
    /// name -> secret name.
    pub secrets: BTreeMap<String, String>,
    /// `HTTP(S)_PROXY` of the sandbox, as given at create.
    pub outbound_proxy_url: Option<String>,
    /// Minutes a create may wait for room, as given (Atoll never queues).
    pub queue_timeout: Option<i64>,
    /// The warm pool this sandbox waits in, while unclaimed.
    pub warm_pool_id: Option<String>,
    /// Minutes of inactivity before a started sandbox is paused (0: never).
    pub auto_pause_interval: i64,
    /// The runner it lives on (`None`: placed before runners existed, on
    /// the embedded runner).
    pub runner_id: Option<String>,
    /// Its image's name in the runner's image store (`None`: `snapshot`
    /// is one, the built-in image).
    pub image_ref: Option<String>,
}

/// One resource usage sample of a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub sandbox_id: String,
    /// When it was taken (ms).
    pub sampled_at: i64,
    /// The sandbox's cpu limit.
    pub cpu_count: i64,
    /// Cpu use as a percentage of that limit.
    pub cpu_used_pct: f64,
    pub mem_used: i64,
    pub mem_cache: i64,
    pub mem_total: i64,
    pub disk_used: i64,
    pub disk_total: i64,
}

/// A stored state, parsed (a name no state has is a decode error).
pub(crate) fn state_of(r: &AnyRow, i: usize) -> Result<SandboxState, StoreError> {
    let s: String = r.try_get(i)?;
    s.parse().map_err(|e: atoll_types::state::UnknownState| {
        StoreError::Db(sqlx::Error::Decode(Box::new(e)))
    })
}

fn json<T: serde::de::DeserializeOwned>(s: String) -> Result<T, StoreError> {
    serde_json::from_str(&s).map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))
}

impl SandboxRecord {
    pub(crate) fn from_row(r: &AnyRow) -> Result<SandboxRecord, StoreError> {
        Ok(SandboxRecord {
            id: r.try_get(0)?,
            organization_id: r.try_get(1)?,
            name: r.try_get(2)?,
            snapshot: r.try_get(3)?,
            os_user: r.try_get(4)?,
            env: json(r.try_get(5)?)?,
            labels: json(r.try_get(6)?)?,
            public: get_bool(r, 7)?,
            network_block_all: get_bool(r, 8)?,
            network_allow_list: r.try_get(9)?,
            cpu: r.try_get(10)?,
            gpu: r.try_get(11)?,
            memory: r.try_get(12)?,
            disk: r.try_get(13)?,
            state: state_of(r, 14)?,
            desired_state: state_of(r, 15)?,
            error_reason: r.try_get(16)?,
            recoverable: get_bool(r, 17)?,
            auto_stop_interval: r.try_get(18)?,
            auto_archive_interval: r.try_get(19)?,
            auto_delete_interval: r.try_get(20)?,
            volumes: json(r.try_get(21)?)?,
            created_at: r.try_get(22)?,
            updated_at: r.try_get(23)?,
            last_activity_at: r.try_get(24)?,
            state_changed_at: r.try_get(25)?,
            ttl_minutes: r.try_get(26)?,
            auto_destroy_at: r.try_get(27)?,
            secrets: json(r.try_get(28)?)?,
            outbound_proxy_url: r.try_get(29)?,
            queue_timeout: r.try_get(30)?,
            warm_pool_id: r.try_get(31)?,
            auto_pause_interval: r.try_get(32)?,
            runner_id: r.try_get(33)?,
            image_ref: r.try_get(34)?,
        })
    }

    /// Binds all 35 columns in `SANDBOX_COLUMNS` order as $1..$35.
    pub(crate) fn bind_all<'q>(
        &'q self,
        q: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        let to_json = |v: &dyn erased::Json| v.to_json();
        q.bind(&self.id)
            .bind(&self.organization_id)
            .bind(&self.name)
            .bind(&self.snapshot)
            .bind(&self.os_user)
            .bind(to_json(&self.env))
            .bind(to_json(&self.labels))
            .bind(i64::from(self.public))
            .bind(i64::from(self.network_block_all))
            .bind(&self.network_allow_list)
            .bind(self.cpu)
            .bind(self.gpu)
            .bind(self.memory)
            .bind(self.disk)
            .bind(self.state.as_str())
            .bind(self.desired_state.as_str())
            .bind(&self.error_reason)
            .bind(i64::from(self.recoverable))
            .bind(self.auto_stop_interval)
            .bind(self.auto_archive_interval)
            .bind(self.auto_delete_interval)
            .bind(to_json(&self.volumes))
            .bind(self.created_at)
            .bind(self.updated_at)
            .bind(self.last_activity_at)
            .bind(self.state_changed_at)
            .bind(self.ttl_minutes)
            .bind(self.auto_destroy_at)
            .bind(to_json(&self.secrets))
            .bind(&self.outbound_proxy_url)
            .bind(self.queue_timeout)
            .bind(&self.warm_pool_id)
            .bind(self.auto_pause_interval)
            .bind(&self.runner_id)
            .bind(&self.image_ref)
    }
}

mod erased {
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "null".into())
        }
    }
}
