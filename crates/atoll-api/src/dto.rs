//! Wire types of the Daytona API, camelCase on the wire. Integers are
//! strict (serde rejects `1.5` for an integer field), matching the SDK's
//! pydantic models.

use atoll_store::VolumeMount;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandbox {
    pub name: Option<String>,
    pub snapshot: Option<String>,
    pub user: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub public: Option<bool>,
    pub network_block_all: Option<bool>,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
    pub target: Option<String>,
    pub cpu: Option<i64>,
    pub gpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
    pub auto_stop_interval: Option<i64>,
    pub auto_pause_interval: Option<i64>,
    pub auto_archive_interval: Option<i64>,
    pub auto_delete_interval: Option<i64>,
    #[schema(value_type = Option<Vec<SandboxVolume>>)]
    pub volumes: Option<Vec<SandboxVolume>>,
    #[schema(value_type = Option<Object>)]
    pub build_info: Option<CreateBuildInfo>,
    pub kvm: Option<bool>,
    pub outbound_proxy_url: Option<String>,
    pub otel_endpoint_override: Option<String>,
    #[schema(value_type = Option<Vec<String>>)]
    pub gpu_type: Option<serde_json::Value>,
    pub spot: Option<bool>,
    pub ttl_minutes: Option<i64>,
    pub queue_timeout: Option<i64>,
    pub linked_sandbox: Option<String>,
    pub secrets: Option<Vec<BTreeMap<String, String>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxVolume {
    pub volume_id: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// Atoll's extension: mount it read-only (writes fail with EROFS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

impl From<SandboxVolume> for VolumeMount {
    fn from(v: SandboxVolume) -> VolumeMount {
        VolumeMount {
            volume_id: v.volume_id,
            mount_path: v.mount_path,
            subpath: v.subpath,
            read_only: v.read_only.unwrap_or(false),
        }
    }
}

impl From<VolumeMount> for SandboxVolume {
    fn from(v: VolumeMount) -> SandboxVolume {
        SandboxVolume {
            volume_id: v.volume_id,
            mount_path: v.mount_path,
            subpath: v.subpath,
            read_only: v.read_only.then_some(true),
        }
    }
}

/// `Sandbox` as SDK 0.226.1 requires it (`kvm` and `toolboxProxyUrl` included).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub snapshot: String,
    pub user: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub kvm: bool,
    pub target: String,
    pub cpu: i64,
    pub gpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub state: String,
    pub desired_state: String,
    pub error_reason: Option<String>,
    pub recoverable: bool,
    pub backup_state: String,
    pub auto_stop_interval: i64,
    pub auto_pause_interval: i64,
    pub auto_archive_interval: i64,
    pub auto_delete_interval: i64,
    pub volumes: Vec<SandboxVolume>,
    pub created_at: String,
    pub updated_at: String,
    pub last_activity_at: String,
    pub sandbox_class: String,
    pub daemon_version: String,
    pub runner_id: String,
    pub toolbox_proxy_url: String,
    /// When the TTL deletes the sandbox; absent without a TTL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_destroy_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_proxy_url: Option<String>,
    /// The warm pool the sandbox waits in, while unclaimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_pool_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListSandboxesResponse {
    pub items: Vec<Sandbox>,
    pub next_cursor: Option<String>,
}

/// Daytona's `PaginatedSandboxes_deprecated`: what `GET
/// /api/sandbox/paginated` answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaginatedSandboxes {
    pub items: Vec<Sandbox>,
    pub total: i64,
    pub page: i64,
    pub total_pages: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxLabels {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolboxProxyUrl {
    pub url: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDto {
    pub id: String,
    pub organization_id: Option<String>,
    pub general: bool,
    pub name: String,
    pub image_name: Option<String>,
    /// Daytona's `SnapshotState`: pending, pulling, building, active,
    /// inactive, error, build_failed, removing.
    pub state: String,
    /// GiB on disk, once known.
    pub size: Option<f64>,
    pub entrypoint: Option<Vec<String>>,
    pub cpu: i64,
    pub gpu: i64,
    pub mem: i64,
    pub disk: i64,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
    pub source_sandbox_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_info: Option<BuildInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_ids: Option<Vec<String>>,
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Daytona's `BuildInfo`: what an image is built from.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub dockerfile_content: Option<String>,
    pub context_hashes: Option<Vec<String>>,
    pub created_at: String,
    pub updated_at: String,
    pub snapshot_ref: String,
}

/// Daytona's `CreateBuildInfo`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateBuildInfo {
    pub dockerfile_content: String,
    #[serde(default)]
    pub context_hashes: Option<Vec<String>>,
}

/// Daytona's `CreateSnapshot`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSnapshot {
    pub name: String,
    #[serde(default)]
    pub image_name: Option<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cpu: Option<i64>,
    #[serde(default)]
    pub gpu: Option<i64>,
    #[serde(default)]
    pub gpu_type: Option<serde_json::Value>,
    #[serde(default)]
    pub memory: Option<i64>,
    #[serde(default)]
    pub disk: Option<i64>,
    #[serde(default)]
    pub build_info: Option<CreateBuildInfo>,
    /// Atoll: an image archive (an OCI image layout or `docker save` tar)
    /// uploaded through the object storage endpoint as a build context,
    /// by its context hash; instead of `imageName` or `buildInfo`.
    #[serde(default)]
    pub image_archive: Option<String>,
    #[serde(default)]
    pub region_id: Option<String>,
    #[serde(default)]
    pub sandbox_class: Option<String>,
}

/// Daytona's `CreateSandboxSnapshot`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxSnapshot {
    pub name: String,
    #[serde(default)]
    pub include_memory: Option<bool>,
}

/// Daytona's `VolumeDto` (plus Atoll's `size` quota and `usedBytes`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDto {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    /// `pending_create`, `ready`, `deleting`, `error`.
    pub state: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
    pub error_reason: Option<String>,
    /// The quota, GiB.
    pub size: i64,
    /// Bytes in use, as last measured.
    pub used_bytes: Option<i64>,
}

/// Daytona's `SshAccessDto`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshAccess {
    pub id: String,
    pub sandbox_id: String,
    pub token: String,
    pub expires_at: String,
    pub created_at: String,
    pub updated_at: String,
    pub ssh_command: String,
}

/// Daytona's `SshAccessValidationDto`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshAccessValidation {
    pub valid: bool,
    pub sandbox_id: String,
}

/// Daytona's `ForkSandbox`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForkSandbox {
    pub name: Option<String>,
}

/// A file or directory of a volume (`/api/volumes/{id}/files`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeFile {
    pub name: String,
    /// Its path in the volume.
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    /// Permission bits in octal, `0644`.
    pub permissions: String,
    /// Numeric uid and gid as stored (the same inside every sandbox).
    pub owner: String,
    pub group: String,
    pub modified_at: String,
    /// Set for a symlink: its target (never followed here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// Daytona's `CreateVolume` (plus Atoll's `size`, GiB).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVolume {
    pub name: Option<String>,
    pub size: Option<i64>,
}

/// Daytona's `StorageAccessDto`: temporary credentials for the
/// S3-compatible endpoint build contexts are uploaded to.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageAccess {
    pub access_key: String,
    pub secret: String,
    pub session_token: String,
    pub storage_url: String,
    pub organization_id: String,
    pub bucket: String,
    pub region: String,
}

/// Daytona's `Url`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Url {
    pub url: String,
}

/// Daytona's `DockerRegistry` (the password is never returned).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DockerRegistry {
    pub id: String,
    pub name: String,
    pub url: String,
    pub username: String,
    pub project: String,
    pub registry_type: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Daytona's `CreateDockerRegistry`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateDockerRegistry {
    pub name: String,
    pub url: String,
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub registry_type: Option<String>,
}

/// Daytona's `UpdateDockerRegistry`: a password left out is kept.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateDockerRegistry {
    pub name: String,
    pub url: String,
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaginatedSnapshots {
    pub items: Vec<SnapshotDto>,
    pub total: i64,
    pub page: i64,
    pub total_pages: i64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateOrganization {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrganizationDto {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedOrganization {
    pub organization: OrganizationDto,
    pub api_key: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortPreviewUrl {
    pub sandbox_id: String,
    pub url: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedPortPreviewUrl {
    pub sandbox_id: String,
    pub port: i64,
    pub token: String,
    pub url: String,
}

/// Daytona's `UpdateSandboxNetworkSettings`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateNetworkSettings {
    pub network_block_all: Option<bool>,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct ResizeSandbox {
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
}

/// An organization's quota overrides, as `PUT /api/admin/organizations/{id}/quota`
/// sets them (all at once). Per field: absent or `null` follows the
/// server's default (`atoll serve --max-…-per-org`), `-1` is unlimited,
/// `n >= 0` a limit. Memory and disk in GiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOrganizationQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandboxes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cpu_quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory_quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_disk_quota: Option<i64>,
}

/// What an organization's sandboxes hold now, as its quotas count it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationUsage {
    /// Every sandbox of the organization, in any state.
    pub sandboxes: i64,
    /// Cpus of sandboxes that run (or are starting, stopping, resizing).
    pub cpu: i64,
    /// GiB of memory of those.
    pub memory: i64,
    /// GiB of disk of sandboxes whose disk is on the host (all but archived).
    pub disk: i64,
}

/// An organization's quotas in force (`null` = unlimited), the overrides
/// they come from, and its usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationQuota {
    pub organization_id: String,
    pub max_sandboxes: Option<i64>,
    pub total_cpu_quota: Option<i64>,
    /// GiB.
    pub total_memory_quota: Option<i64>,
    /// GiB.
    pub total_disk_quota: Option<i64>,
    /// The organization's own settings; fields not present follow the
    /// server's defaults.
    pub overrides: UpdateOrganizationQuota,
    pub usage: OrganizationUsage,
}

/// Daytona's `User`, for the calling API key (Atoll has keys, not user
/// accounts): the key's id, its organization and role.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub email_verified: bool,
    pub public_keys: Vec<serde_json::Value>,
    pub created_at: String,
    pub organization_id: String,
    pub role: String,
}

/// Daytona's `Region`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    pub id: String,
    pub name: String,
    pub organization_id: Option<String>,
    /// `shared`, `dedicated` or `custom`.
    pub region_type: String,
    pub created_at: String,
    pub updated_at: String,
    pub proxy_url: Option<String>,
    pub ssh_gateway_url: Option<String>,
    pub snapshot_manager_url: Option<String>,
}

/// Daytona's `CreateSecret`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateSecret {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

/// Daytona's `UpdateSecret`: each field present is changed.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct UpdateSecret {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

/// Daytona's `Secret`: never the value.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The opaque token Daytona shows sandboxes in place of the value.
    pub placeholder: String,
    pub hosts: Vec<String>,
}

/// Daytona's `ListSecretsResponse`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListSecretsResponse {
    pub items: Vec<Secret>,
    pub total: i64,
    pub next_cursor: Option<String>,
}

/// Daytona's `UpdateSandboxSecrets`: `[{ENV_VAR: secretName}, …]`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UpdateSandboxSecrets {
    pub secrets: Vec<BTreeMap<String, String>>,
}

/// Daytona's `CreateWarmPool`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateWarmPool {
    pub snapshot: String,
    pub pool: i64,
    #[serde(default)]
    pub target: Option<String>,
}

/// Daytona's `UpdateWarmPool`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWarmPool {
    pub pool: i64,
}

/// Daytona's `WarmPool`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmPool {
    pub id: String,
    pub organization_id: String,
    pub snapshot: String,
    pub target: String,
    pub pool: i64,
    /// Started, unclaimed members now.
    pub current_size: i64,
    pub cpu: i64,
    pub mem: i64,
    pub disk: i64,
    pub os_user: String,
    pub env: BTreeMap<String, String>,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The toolbox's `SystemMetrics` (`GET /toolbox/{id}/system/metrics`):
/// this sandbox's usage, from its cgroup and its disk. Bytes; cpu as a
/// percentage of the sandbox's cpu limit.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemMetrics {
    pub cpu_count: i64,
    pub cpu_used_pct: f64,
    pub disk_free: i64,
    pub disk_total: i64,
    pub disk_used: i64,
    pub mem_cache: i64,
    pub mem_total: i64,
    pub mem_used: i64,
    pub timestamp: String,
    pub timestamp_unix: i64,
}

/// Daytona's `MetricsResponse` (`GET /api/sandbox/{id}/telemetry/metrics`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MetricsResponse {
    pub series: Vec<MetricSeries>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricSeries {
    pub metric_name: String,
    pub data_points: Vec<MetricDataPoint>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MetricDataPoint {
    pub timestamp: String,
    pub value: f64,
}

/// Daytona's `OidcConfig`: required by `DaytonaConfiguration`; this server
/// has no OIDC, so every field is empty.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub audience: String,
    pub provider: String,
}

/// Daytona's `DaytonaConfiguration` (`GET /api/config`), with what the
/// SDKs read of it: no `analyticsApiUrl`, so `get_metrics` reads the
/// history from this server's telemetry route.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaytonaConfiguration {
    pub version: String,
    pub oidc: OidcConfig,
    pub linked_accounts_enabled: bool,
    #[schema(value_type = Object)]
    pub announcements: BTreeMap<String, serde_json::Value>,
    pub proxy_template_url: String,
    pub proxy_toolbox_url: String,
    pub default_snapshot: String,
    pub dashboard_url: String,
    pub max_auto_archive_interval: i64,
    pub maintanance_mode: bool,
    pub environment: String,
    pub analytics_api_url: Option<String>,
}

/// Daytona's `CreateRunner`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRunner {
    pub region_id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Only `container` (namespace sandboxes) is supported.
    #[serde(default)]
    pub sandbox_class: Option<String>,
    /// Atoll: pins the runner's address (`http(s)://host:port`); its
    /// health checks must then report exactly this one.
    #[serde(default)]
    pub api_url: Option<String>,
}

/// Daytona's `CreateRunnerResponse`: the runner's key, shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateRunnerResponse {
    pub id: String,
    pub api_key: String,
}

/// Daytona's `Runner` (and `RunnerFull`, with `apiKey`), plus Atoll's
/// `draining` and `local`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Runner {
    pub id: String,
    pub name: String,
    pub region: String,
    /// `initializing`, `ready`, `unresponsive`, `disabled`, `decommissioned`.
    pub state: String,
    pub unschedulable: bool,
    pub draining: bool,
    /// The embedded runner of an `atoll serve`.
    pub local: bool,
    pub tags: Vec<String>,
    pub runner_class: String,
    pub class: String,
    /// Capacity as last reported: cores, GiB, GiB.
    pub cpu: f64,
    pub memory: f64,
    pub disk: f64,
    pub gpu: f64,
    pub domain: Option<String>,
    pub api_url: Option<String>,
    pub proxy_url: Option<String>,
    pub current_cpu_usage_percentage: f64,
    pub current_memory_usage_percentage: f64,
    pub current_disk_usage_percentage: f64,
    pub current_allocated_cpu: f64,
    pub current_allocated_memory_gi_b: f64,
    pub current_allocated_disk_gi_b: f64,
    pub current_snapshot_count: f64,
    pub current_started_sandboxes: f64,
    /// Bytes the runner's stored images (their layers, shared between
    /// images) take on disk.
    pub current_image_disk_bytes: f64,
    /// 0-100: how much room it has left (the scheduler prefers the highest).
    pub availability_score: f64,
    pub last_checked: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub version: String,
    pub api_version: String,
    pub app_version: Option<String>,
    /// `RunnerFull` only: never the key itself (it is stored hashed), its
    /// first characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// `GET /api/runners/me` only: the public key (Ed25519, base64url) a
    /// runner checks the control plane's requests with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane_key: Option<String>,
}

/// Body of `PATCH /api/runners/{id}/scheduling`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerScheduling {
    pub unschedulable: bool,
}

/// Body of `PATCH /api/runners/{id}/draining`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerDraining {
    pub draining: bool,
}

/// Daytona's `RunnerHealthMetrics`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerHealthMetrics {
    pub current_cpu_load_average: f64,
    pub current_cpu_usage_percentage: f64,
    pub current_memory_usage_percentage: f64,
    pub current_disk_usage_percentage: f64,
    pub current_allocated_cpu: f64,
    pub current_allocated_memory_gi_b: f64,
    pub current_allocated_disk_gi_b: f64,
    pub current_snapshot_count: f64,
    pub current_started_sandboxes: f64,
    /// Bytes the runner's stored images take on disk (Atoll's own).
    #[serde(default)]
    pub current_image_disk_bytes: Option<f64>,
    pub cpu: f64,
    pub memory_gi_b: f64,
    pub disk_gi_b: f64,
    #[serde(default)]
    pub gpu: Option<f64>,
    #[serde(default)]
    pub gpu_type: Option<String>,
}

/// Daytona's `RunnerHealthcheck`, sent by a runner with its own key.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerHealthcheck {
    #[serde(default)]
    pub metrics: Option<RunnerHealthMetrics>,
    #[serde(default)]
    pub service_health: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
    pub app_version: String,
}

/// Daytona's `CreateApiKey`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    /// Daytona permission names (`write:sandboxes`, …); at most the
    /// calling key's own.
    pub permissions: Vec<String>,
    /// RFC 3339; absent or null: never.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Daytona's `ApiKeyResponse`: the new key, shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyResponse {
    pub name: String,
    pub value: String,
    pub created_at: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<String>,
}

/// Daytona's `ApiKeyList` item: the key masked.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyList {
    pub name: String,
    /// The key's first characters, the rest masked.
    pub value: String,
    pub created_at: String,
    pub permissions: Vec<String>,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    /// The key's id (Atoll has keys, not users).
    pub user_id: String,
    pub organization_id: String,
    /// Atoll: `admin`, `owner` or `member`.
    pub role: String,
}

/// Daytona's `Organization` (the fields Atoll has).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub personal: bool,
    pub created_at: String,
    pub updated_at: String,
    pub suspended: bool,
    pub default_region_id: String,
}
