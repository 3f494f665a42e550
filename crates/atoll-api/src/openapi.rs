//! The OpenAPI document, generated from the handlers' annotations and
//! served at `/api/openapi.json`; a snapshot test keeps it reviewed.

use crate::dto;
use crate::routes::{sandbox, snapshots, system, volumes};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Atoll API", description = "Daytona-compatible sandbox API served by Atoll"),
    paths(
        sandbox::create, sandbox::list, sandbox::get, sandbox::delete, sandbox::start, sandbox::stop,
        sandbox::labels, sandbox::autostop, sandbox::autoarchive, sandbox::autodelete,
        sandbox::toolbox_proxy_url, sandbox::resize, sandbox::network_settings, sandbox::recover, sandbox::archive, crate::routes::preview::preview_url,
        crate::routes::preview::signed_preview_url, crate::routes::preview::expire_signed_preview_url,
        crate::routes::preview::set_public, sandbox::last_activity,
        snapshots::list, snapshots::get, system::health,
        system::create_organization, system::get_quota, system::put_quota,
        crate::routes::account::users_me, crate::routes::account::regions,
        crate::routes::account::shared_regions, sandbox::paginated,
        sandbox::signing_key, sandbox::rotate_signing_key, sandbox::ttl, sandbox::secrets,
        crate::routes::secrets::create, crate::routes::secrets::list, crate::routes::secrets::paginated,
        crate::routes::secrets::get, crate::routes::secrets::update, crate::routes::secrets::delete,
        crate::routes::warm_pools::list, crate::routes::warm_pools::create,
        crate::routes::warm_pools::update, crate::routes::warm_pools::delete,
        sandbox::pause, sandbox::autopause, sandbox::telemetry_metrics, system::config,
        crate::routes::runners::create, crate::routes::runners::list, crate::routes::runners::get,
        crate::routes::runners::get_full, crate::routes::runners::by_sandbox,
        crate::routes::runners::scheduling, crate::routes::runners::draining,
        crate::routes::runners::delete, crate::routes::runners::me, crate::routes::runners::healthcheck,
        snapshots::create, snapshots::delete, snapshots::activate, snapshots::deactivate,
        snapshots::build_logs, snapshots::build_logs_url, snapshots::push_access, volumes::list, volumes::create, volumes::get, volumes::by_name, volumes::delete, volumes::list_files, volumes::download, volumes::upload, volumes::delete_file, snapshots::create_registry,
        snapshots::list_registries, snapshots::get_registry, snapshots::update_registry,
        snapshots::delete_registry, sandbox::snapshot, sandbox::fork, sandbox::create_ssh_access, sandbox::revoke_ssh_access, sandbox::validate_ssh_access, sandbox::forks, sandbox::parent, sandbox::ancestors, sandbox::build_logs, sandbox::build_logs_url,
        crate::routes::api_keys::list, crate::routes::api_keys::current, crate::routes::api_keys::get,
        crate::routes::api_keys::create, crate::routes::api_keys::delete,
        crate::routes::api_keys::organizations, crate::routes::api_keys::organization_get,
    ),
    components(schemas(
        dto::CreateSandbox, dto::Sandbox, dto::SandboxVolume, dto::ListSandboxesResponse,
        dto::SandboxLabels, dto::ToolboxProxyUrl, dto::SnapshotDto, dto::PaginatedSnapshots, dto::StorageAccess, dto::VolumeDto, dto::CreateVolume, dto::VolumeFile, dto::ForkSandbox, dto::SshAccess, dto::SshAccessValidation,
        dto::ResizeSandbox, dto::UpdateNetworkSettings, dto::PortPreviewUrl, dto::SignedPortPreviewUrl, dto::CreateOrganization, dto::CreatedOrganization, dto::OrganizationDto, dto::Health,
        dto::UpdateOrganizationQuota, dto::OrganizationUsage, dto::OrganizationQuota,
        dto::User, dto::Region, dto::PaginatedSandboxes,
        dto::CreateSecret, dto::UpdateSecret, dto::Secret, dto::ListSecretsResponse,
        dto::UpdateSandboxSecrets, dto::CreateWarmPool, dto::UpdateWarmPool, dto::WarmPool,
        dto::SystemMetrics, dto::MetricsResponse, dto::MetricSeries, dto::MetricDataPoint,
        dto::DaytonaConfiguration, dto::OidcConfig,
        dto::CreateRunner, dto::CreateRunnerResponse, dto::Runner, dto::RunnerScheduling,
        dto::RunnerDraining, dto::RunnerHealthMetrics, dto::RunnerHealthcheck,
        dto::CreateSnapshot, dto::CreateBuildInfo, dto::BuildInfo, dto::CreateSandboxSnapshot,
        dto::Url, dto::DockerRegistry, dto::CreateDockerRegistry, dto::UpdateDockerRegistry,
        dto::CreateApiKey, dto::ApiKeyResponse, dto::ApiKeyList, dto::Organization,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}
