//! The control plane in process, against the fake runtime: the REST
//! router on a fresh SQLite database per test, driven by HTTP requests as
//! a client sends them, with the runtime's behaviour scripted (failures
//! of each kind, a runner that does not answer). What is asserted is what
//! a client sees (status, error body, sandbox state) and what the runtime
//! was asked to do.

use atoll_api::{ApiConfig, AppState};
use atoll_runtime_api::fake::FakeRuntime;
use atoll_runtime_api::RuntimeError;
use atoll_store::{ApiKeyRecord, OrgRecord, Store};
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

const KEY: &str = "atoll_test_key_0123456789";

struct Api {
    state: AppState,
    router: axum::Router,
    runtime: Arc<FakeRuntime>,
    _dir: TempDir,
}

/// A directory removed when the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn api() -> Api {
    let dir = std::env::temp_dir().join(format!("atoll-fake-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.join("atoll.db").display()))
        .await
        .unwrap();
    let org = OrgRecord {
        id: "org-1".into(),
        name: "default".into(),
        created_at: 0,
    };
    store.insert_org(&org).await.unwrap();
    store
        .insert_api_key(&ApiKeyRecord {
            id: "key-1".into(),
            organization_id: org.id.clone(),
            name: "test".into(),
            key_hash: atoll_api::auth::hash_key(KEY),
            key_prefix: KEY[..8].into(),
            role: atoll_api::auth::ROLE_ADMIN.into(),
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            permissions: None,
        })
        .await
        .unwrap();
    let runtime = Arc::new(FakeRuntime::with_images(&["snap", "other"]));
    let config = ApiConfig {
        public_url: "http://127.0.0.1:1".into(),
        preview_domain: None,
        default_snapshot: "snap".into(),
        lifecycle: Default::default(),
        egress_allow_private: false,
        quota_defaults: Default::default(),
        rate_limit: None,
        metrics: Default::default(),
    };
    let state = AppState::new(store, runtime.clone(), config, "preview-key".into())
        .with_local_runner_id("runner-local".into());
    state
        .register_local_runner("host-a", "local")
        .await
        .unwrap();
    state.check_local_runner().await.unwrap();
    Api {
        state: state.clone(),
        router: atoll_api::router(state),
        runtime,
        _dir: TempDir(dir),
    }
}

impl Api {
    /// This control plane signs its requests to remote runners.
    fn with_control_key(mut self) -> Api {
        let key = atoll_remote::ControlKey::from_seed(&[9u8; 32]).unwrap();
        self.state = self.state.with_control_key(key);
        self.router = atoll_api::router(self.state.clone());
        self
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(KEY, method, path, body).await
    }

    async fn call_as(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(match body {
                Some(b) => Body::from(b.to_string()),
                None => Body::empty(),
            })
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn create(&self, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/api/sandbox", Some(body)).await
    }

    async fn state(&self, id: &str) -> String {
        let (status, sb) = self
            .call(Method::GET, &format!("/api/sandbox/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{sb}");
        sb["state"].as_str().unwrap().to_string()
    }

    async fn ids(&self) -> Vec<String> {
        let (_, list) = self.call(Method::GET, "/api/sandbox", None).await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }
}

#[tokio::test]
async fn create_stop_start_archive_restore_drive_the_runtime() {
    let api = api().await;
    let (status, sb) = api
        .create(json!({"cpu": 2, "memory": 2, "disk": 5, "labels": {"team": "a"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{sb}");
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["state"], "started");
    let held = api
        .runtime
        .sandbox(&id)
        .expect("the runtime was asked to start it");
    let spec = held.spec.unwrap();
    assert!(held.running);
    assert_eq!(spec.image, "snap");
    assert_eq!(spec.limits.cpus, 2);
    assert_eq!(spec.limits.memory_bytes, 2 << 30);
    assert_eq!(spec.disk_bytes, 5 << 30);

    let (status, _) = api
        .call(Method::POST, &format!("/api/sandbox/{id}/stop"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.state(&id).await, "stopped");
    assert!(!api.runtime.sandbox(&id).unwrap().running);

    let (status, body) = api
        .call(Method::POST, &format!("/api/sandbox/{id}/archive"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.state(&id).await, "archived");
    assert!(api.runtime.sandbox(&id).unwrap().archived);

    let (status, body) = api
        .call(Method::POST, &format!("/api/sandbox/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.state(&id).await, "started");
    assert_eq!(api.runtime.calls_of("restore"), std::slice::from_ref(&id));
    assert!(api.runtime.sandbox(&id).unwrap().running);

    let (status, _) = api
        .call(Method::DELETE, &format!("/api/sandbox/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        api.runtime.sandbox(&id).is_none(),
        "destroyed on the runtime"
    );
}

#[tokio::test]
async fn runtime_errors_become_api_errors_by_kind_and_a_failed_create_leaves_nothing() {
    let api = api().await;
    for (error, want) in [
        (
            RuntimeError::NoSpace("the runner's disk is full".into()),
            StatusCode::INSUFFICIENT_STORAGE,
        ),
        (
            RuntimeError::NetworkFull("all 13 addresses are taken".into()),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            RuntimeError::Unreachable("connection refused".into()),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        let what = error.to_string();
        api.runtime.fail_next("start", error);
        let (status, body) = api.create(json!({})).await;
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(
            body["statusCode"],
            want.as_u16(),
            "Daytona's error body: {body}"
        );
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(what.split(':').next().unwrap()),
            "{body}"
        );
        assert!(
            api.ids().await.is_empty(),
            "{what}: the failed create left a row"
        );
    }
    // A runtime that cannot be asked at all refuses the create up front.
    api.runtime.set_unreachable(true);
    let (status, body) = api.create(json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    api.runtime.set_unreachable(false);
    assert!(api.ids().await.is_empty());

    let (status, body) = api.create(json!({"snapshot": "missing"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        api.runtime.calls_of("start").len() == 3,
        "no start for a missing image"
    );
}

#[tokio::test]
async fn a_failed_start_of_a_stopped_sandbox_is_an_error_state_with_the_reason() {
    let api = api().await;
    let (_, sb) = api.create(json!({})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    api.call(Method::POST, &format!("/api/sandbox/{id}/stop"), None)
        .await;
    api.runtime.fail_next(
        "start",
        RuntimeError::Failed("init helper exited with 1".into()),
    );
    let (status, _) = api
        .call(Method::POST, &format!("/api/sandbox/{id}/start"), None)
        .await;
    assert!(status.is_success() || status.is_server_error(), "{status}");
    let (_, sb) = api
        .call(Method::GET, &format!("/api/sandbox/{id}"), None)
        .await;
    assert_eq!(sb["state"], "error", "{sb}");
    assert_eq!(sb["errorReason"], "init helper exited with 1", "{sb}");
    // Out of space on a restart: the sandbox keeps its state, nothing lost.
    let (_, sb) = api.create(json!({})).await;
    let id2 = sb["id"].as_str().unwrap().to_string();
    api.call(Method::POST, &format!("/api/sandbox/{id2}/stop"), None)
        .await;
    api.runtime.fail_next(
        "start",
        RuntimeError::NoSpace("no space left on the runner".into()),
    );
    let (status, body) = api
        .call(Method::POST, &format!("/api/sandbox/{id2}/start"), None)
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
}

#[tokio::test]
async fn the_toolbox_of_a_sandbox_the_runtime_cannot_reach_is_a_502_in_daytonas_body() {
    let api = api().await;
    let (_, sb) = api.create(json!({})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    let (status, body) = api
        .call(Method::GET, &format!("/toolbox/{id}/files?path=/"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["statusCode"], 502, "{body}");
    assert!(api.runtime.calls_of("connect_toolbox").contains(&id));
}

#[tokio::test]
async fn live_resize_and_network_changes_reach_the_runtime() {
    let api = api().await;
    let (_, sb) = api.create(json!({})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/sandbox/{id}/network-settings"),
            Some(json!({"networkAllowList": "1.1.1.0/24"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let policy = api.runtime.sandbox(&id).unwrap().network.unwrap();
    assert_eq!(
        policy
            .allow_list
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        ["1.1.1.0/24"]
    );
    // A range sandboxes never reach is refused before the runtime hears of it.
    let calls = api.runtime.calls_of("update_network").len();
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/sandbox/{id}/network-settings"),
            Some(json!({"networkAllowList": "169.254.169.254/32"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(api.runtime.calls_of("update_network").len(), calls);
}

#[tokio::test]
async fn the_embedded_runner_is_registered_reports_capacity_and_holds_what_is_created() {
    let api = api().await;
    let (status, list) = api.call(Method::GET, "/api/runners", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let local = &list[0];
    assert_eq!(local["id"], "runner-local");
    assert_eq!(local["name"], "host-a");
    assert_eq!(local["state"], "ready");
    assert_eq!(local["local"], true);
    assert_eq!(local["runnerClass"], "container");
    assert_eq!(
        local["cpu"], 8.0,
        "the runtime's reported capacity: {local}"
    );
    assert_eq!(local["memory"], 32.0);
    assert!(local["lastChecked"].is_string(), "{local}");

    let (_, sb) = api.create(json!({"cpu": 2, "memory": 3, "disk": 4})).await;
    let id = sb["id"].as_str().unwrap();
    assert_eq!(sb["runnerId"], "runner-local", "{sb}");
    let (status, r) = api
        .call(Method::GET, &format!("/api/runners/by-sandbox/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["id"], "runner-local");
    assert_eq!(r["currentAllocatedCpu"], 2.0, "{r}");
    assert_eq!(r["currentAllocatedMemoryGiB"], 3.0, "{r}");
    assert_eq!(r["currentAllocatedDiskGiB"], 4.0, "{r}");
    assert_eq!(r["currentStartedSandboxes"], 1.0, "{r}");
    assert!(
        r["apiKey"].as_str().is_some_and(|k| !k.starts_with("atl_")),
        "never the key: {r}"
    );
    // The embedded runner cannot be deleted out from under its server.
    let (status, _) = api
        .call(Method::DELETE, "/api/runners/runner-local", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_draining_or_unschedulable_runner_takes_no_new_sandbox_and_keeps_its_own() {
    let api = api().await;
    let (_, sb) = api.create(json!({})).await;
    let kept = sb["id"].as_str().unwrap().to_string();
    for (route, body) in [
        ("draining", json!({"draining": true})),
        ("scheduling", json!({"unschedulable": true})),
    ] {
        let (status, r) = api
            .call(
                Method::PATCH,
                &format!("/api/runners/runner-local/{route}"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{r}");
        // A health check racing the admin's change never undoes it.
        api.state.check_local_runner().await.unwrap();
        let (_, r) = api
            .call(Method::GET, "/api/runners/runner-local", None)
            .await;
        assert!(r["draining"] == true || r["unschedulable"] == true, "{r}");
        let (status, body) = api.create(json!({})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let msg = body["message"].as_str().unwrap();
        assert!(msg.contains("host-a is"), "{msg}");
        // What it runs keeps running and answers lifecycle calls.
        assert_eq!(api.state(&kept).await, "started");
        let (status, _) = api
            .call(Method::POST, &format!("/api/sandbox/{kept}/stop"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = api
            .call(Method::POST, &format!("/api/sandbox/{kept}/start"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let off = if route == "draining" {
            json!({"draining": false})
        } else {
            json!({"unschedulable": false})
        };
        let (status, r) = api
            .call(
                Method::PATCH,
                &format!("/api/runners/runner-local/{route}"),
                Some(off),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{r}");
    }
    let (status, body) = api.create(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.ids().await.len(), 2);
}

#[tokio::test]
async fn a_registered_runner_authenticates_with_its_own_key_and_goes_unresponsive_when_silent() {
    let api = api().await;
    let (status, created) = api
        .call(
            Method::POST,
            "/api/runners",
            Some(json!({"name": "edge-1", "regionId": "eu", "tags": ["ssd"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let key = created["apiKey"].as_str().unwrap().to_string();
    // Names are unique; bad names and unknown fields are refused.
    for body in [
        json!({"name": "edge-1", "regionId": "eu"}),
        json!({"name": "Edge 1", "regionId": "eu"}),
        json!({"name": "edge-2", "regionId": "eu", "sandboxClass": "windows"}),
        json!({"name": "edge-2", "regionId": "eu", "cpu": 4}),
    ] {
        let (status, b) = api
            .call(Method::POST, "/api/runners", Some(body.clone()))
            .await;
        assert!(
            status == StatusCode::CONFLICT || status == StatusCode::BAD_REQUEST,
            "{body} -> {status} {b}"
        );
    }
    let (status, me) = api
        .call_as(&key, Method::GET, "/api/runners/me", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], id.as_str());
    assert_eq!(me["state"], "initializing");
    // An API key is not a runner key, and a runner key is not an API key.
    let (status, _) = api.call(Method::GET, "/api/runners/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.call_as(&key, Method::GET, "/api/sandbox", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let health = json!({
        "appVersion": "0.1.0",
        "apiUrl": "https://edge-1.example:2281",
        "metrics": {
            "currentCpuLoadAverage": 0.5, "currentCpuUsagePercentage": 10.0,
            "currentMemoryUsagePercentage": 20.0, "currentDiskUsagePercentage": 30.0,
            "currentAllocatedCpu": 0, "currentAllocatedMemoryGiB": 0, "currentAllocatedDiskGiB": 0,
            "currentSnapshotCount": 1, "currentStartedSandboxes": 0,
            "cpu": 16, "memoryGiB": 64, "diskGiB": 500
        }
    });
    let (status, b) = api
        .call_as(&key, Method::POST, "/api/runners/healthcheck", Some(health))
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let (_, r) = api
        .call(Method::GET, &format!("/api/runners/{id}"), None)
        .await;
    assert_eq!(r["state"], "ready", "{r}");
    assert_eq!(r["cpu"], 16.0);
    assert_eq!(r["apiUrl"], "https://edge-1.example:2281");
    assert_eq!(r["tags"], json!(["ssd"]));
    let (status, b) = api
        .call_as(
            &key,
            Method::POST,
            "/api/runners/healthcheck",
            Some(json!({"appVersion": "1", "apiUrl": "http://169.254.169.254/latest"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{b}");

    // Filters by region; an unknown filter is refused.
    let (_, eu) = api
        .call(Method::GET, "/api/runners?regionId=eu", None)
        .await;
    assert_eq!(eu.as_array().unwrap().len(), 1);
    let (status, _) = api.call(Method::GET, "/api/runners?region=eu", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Silent past the limit: unresponsive (the embedded runner is not).
    api.state
        .store
        .mark_unresponsive_runners(i64::MAX, 0, "runner-local")
        .await
        .unwrap();
    let (_, r) = api
        .call(Method::GET, &format!("/api/runners/{id}"), None)
        .await;
    assert_eq!(r["state"], "unresponsive", "{r}");
    let (_, local) = api
        .call(Method::GET, "/api/runners/runner-local", None)
        .await;
    assert_eq!(local["state"], "ready");

    let (status, _) = api
        .call(Method::DELETE, &format!("/api/runners/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call_as(&key, Method::GET, "/api/runners/me", None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted runner's key is dead"
    );
}

/// A second runner in this process: a `FakeRuntime` served by the runner
/// API on loopback, registered with the control plane like `atoll runner`
/// does it (its key, a health check with its address).
struct RemoteRunner {
    id: String,
    key: String,
    fake: Arc<FakeRuntime>,
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

async fn serve_runner(
    fake: Arc<FakeRuntime>,
    public_key: &str,
    id: &str,
    addr: &str,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let verifier = atoll_remote::ControlVerifier::new(public_key, id).unwrap();
    let app = atoll_remote::server::router(fake, verifier);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

impl Api {
    async fn remote_runner(&self, name: &str) -> RemoteRunner {
        let (status, created) = self
            .call(
                Method::POST,
                "/api/runners",
                Some(json!({"name": name, "regionId": "local"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let key = created["apiKey"].as_str().unwrap().to_string();
        let (_, me) = self
            .call_as(&key, Method::GET, "/api/runners/me", None)
            .await;
        let public = me["controlPlaneKey"]
            .as_str()
            .expect("the control plane's key")
            .to_string();
        let fake = Arc::new(FakeRuntime::with_images(&["snap", "other"]));
        let (addr, server) = serve_runner(fake.clone(), &public, &id, "127.0.0.1:0").await;
        let r = RemoteRunner {
            id,
            key,
            fake,
            addr,
            server,
        };
        self.health(&r).await;
        r
    }

    async fn health(&self, r: &RemoteRunner) {
        let (status, b) = self
            .call_as(
                &r.key,
                Method::POST,
                "/api/runners/healthcheck",
                Some(json!({"appVersion": "test", "apiUrl": format!("http://{}", r.addr)})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{b}");
    }
}

/// A toolbox stand-in: answers every request with the path it got.
async fn echo_toolbox() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|uri: http::Uri| async move {
        axum::Json(json!({"path": uri.path().to_string()}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

async fn wait_state(api: &Api, id: &str, want: &str) {
    for _ in 0..100 {
        let (status, sb) = api
            .call(Method::GET, &format!("/api/sandbox/{id}"), None)
            .await;
        if (want == "gone" && status == StatusCode::NOT_FOUND)
            || (status == StatusCode::OK && sb["state"] == want)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("sandbox {id} never reached {want}");
}

#[tokio::test]
async fn sandboxes_on_a_remote_runner_are_driven_through_the_runner_protocol() {
    let api = api().await.with_control_key();
    let edge = api.remote_runner("edge-1").await;
    // The embedded runner takes nothing new: creates go to the edge.
    api.call(
        Method::PATCH,
        "/api/runners/runner-local/draining",
        Some(json!({"draining": true})),
    )
    .await;
    let (status, sb) = api.create(json!({"cpu": 2})).await;
    assert_eq!(status, StatusCode::OK, "{sb}");
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["runnerId"], edge.id.as_str());
    assert_eq!(sb["target"], "local", "the edge runner's region");
    assert!(edge.fake.sandbox(&id).is_some_and(|s| s.running));
    assert!(
        api.runtime.sandbox(&id).is_none(),
        "the embedded runner never saw it"
    );

    // Toolbox traffic reaches the runner that holds the sandbox.
    edge.fake.route_toolbox(&id, echo_toolbox().await);
    let (status, body) = api
        .call(
            Method::GET,
            &format!("/toolbox/{id}/files/info?path=/x"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/files/info");

    let (status, _) = api
        .call(Method::POST, &format!("/api/sandbox/{id}/stop"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!edge.fake.sandbox(&id).unwrap().running);
    let (status, _) = api
        .call(Method::POST, &format!("/api/sandbox/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(Method::DELETE, &format!("/api/sandbox/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(edge.fake.sandbox(&id).is_none());
    edge.server.abort();
}

#[tokio::test]
async fn a_silent_runner_leaves_its_sandboxes_unknown_and_everything_reconciles_when_it_returns() {
    let api = api().await.with_control_key();
    let edge = api.remote_runner("edge-2").await;
    api.call(
        Method::PATCH,
        "/api/runners/runner-local/draining",
        Some(json!({"draining": true})),
    )
    .await;
    let (_, a) = api.create(json!({})).await;
    let (_, b) = api.create(json!({})).await;
    let (a, b) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    api.call(
        Method::PATCH,
        "/api/runners/runner-local/draining",
        Some(json!({"draining": false})),
    )
    .await;
    let (_, c) = api.create(json!({})).await;
    let c = c["id"].as_str().unwrap().to_string();
    assert_eq!(
        api.state
            .store
            .sandbox(&c)
            .await
            .unwrap()
            .unwrap()
            .runner_id
            .as_deref(),
        Some("runner-local")
    );

    // The runner dies: the scheduler's pass changes nothing it cannot see.
    edge.server.abort();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    api.state.lifecycle_tick().await.unwrap();
    assert_eq!(api.state(&a).await, "started", "never taken for stopped");
    // Its health checks stop: unresponsive, its sandboxes unknown with why.
    api.state
        .sweep_runners_silent_since(i64::MAX)
        .await
        .unwrap();
    let (_, r) = api
        .call(Method::GET, &format!("/api/runners/{}", edge.id), None)
        .await;
    assert_eq!(r["state"], "unresponsive");
    let (_, sa) = api
        .call(Method::GET, &format!("/api/sandbox/{a}"), None)
        .await;
    assert_eq!(sa["state"], "unknown", "{sa}");
    assert!(
        sa["errorReason"]
            .as_str()
            .unwrap()
            .contains("edge-2 stopped responding"),
        "{sa}"
    );
    assert_eq!(
        api.state(&c).await,
        "started",
        "the embedded runner's sandbox is untouched"
    );
    // Nothing can be done to it but delete, which waits for the runner.
    let (status, body) = api
        .call(Method::POST, &format!("/api/sandbox/{a}/stop"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api
        .call(Method::DELETE, &format!("/api/sandbox/{b}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "destroying");
    // New sandboxes avoid it.
    let (status, sb) = api.create(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{sb}");
    assert_eq!(sb["runnerId"], "runner-local");

    // It comes back on the same address, having lost nothing; it reports.
    let (_, me) = api
        .call_as(&edge.key, Method::GET, "/api/runners/me", None)
        .await;
    let public = me["controlPlaneKey"].as_str().unwrap().to_string();
    let (_, server) =
        serve_runner(edge.fake.clone(), &public, &edge.id, &edge.addr.to_string()).await;
    let back = RemoteRunner { server, ..edge };
    api.health(&back).await;
    wait_state(&api, &a, "started").await;
    wait_state(&api, &b, "gone").await;
    assert!(
        back.fake.sandbox(&b).is_none(),
        "the waiting delete finished on the runner"
    );
    assert!(back.fake.sandbox(&a).is_some_and(|s| s.running));
    back.server.abort();
}

#[tokio::test]
async fn force_deleting_a_lost_runner_releases_its_sandboxes() {
    let api = api().await.with_control_key();
    let edge = api.remote_runner("edge-3").await;
    api.call(
        Method::PATCH,
        "/api/runners/runner-local/draining",
        Some(json!({"draining": true})),
    )
    .await;
    let (_, a) = api.create(json!({})).await;
    let a = a["id"].as_str().unwrap().to_string();
    edge.server.abort();
    api.state
        .sweep_runners_silent_since(i64::MAX)
        .await
        .unwrap();
    let (status, _) = api
        .call(Method::DELETE, &format!("/api/runners/{}", edge.id), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "it still holds a sandbox");
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/api/runners/{}?force=true", edge.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call(Method::GET, &format!("/api/sandbox/{a}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_pinned_runner_address_cannot_be_changed_by_the_runner() {
    let api = api().await;
    let (status, created) = api
        .call(
            Method::POST,
            "/api/runners",
            Some(json!({"name": "pinned", "regionId": "eu", "apiUrl": "https://10.0.0.7:2281"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["apiKey"].as_str().unwrap().to_string(),
    );
    let (_, r) = api
        .call(Method::GET, &format!("/api/runners/{id}"), None)
        .await;
    assert_eq!(r["apiUrl"], "https://10.0.0.7:2281");
    // A stolen key reporting another address is refused and changes nothing.
    let (status, b) = api
        .call_as(
            &key,
            Method::POST,
            "/api/runners/healthcheck",
            Some(json!({"appVersion": "x", "apiUrl": "http://10.0.0.99:80"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{b}");
    let (_, r) = api
        .call(Method::GET, &format!("/api/runners/{id}"), None)
        .await;
    assert_eq!(r["apiUrl"], "https://10.0.0.7:2281");
    assert_eq!(
        r["state"], "initializing",
        "a refused check is no health check"
    );
    // The pinned address itself is fine.
    let (status, b) = api
        .call_as(
            &key,
            Method::POST,
            "/api/runners/healthcheck",
            Some(json!({"appVersion": "x", "apiUrl": "https://10.0.0.7:2281/"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    // Registering with a metadata address is refused outright.
    let (status, _) = api
        .call(
            Method::POST,
            "/api/runners",
            Some(json!({"name": "meta", "regionId": "eu", "apiUrl": "http://169.254.169.254"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
