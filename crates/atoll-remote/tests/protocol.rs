//! The runner protocol end to end in one process: a `FakeRuntime` served by
//! the runner API on loopback, driven through `RemoteRuntime` as the
//! control plane drives a runner. What one side's runtime does (state,
//! errors by kind, streams) is what the other side sees; requests without
//! this runner's control-plane token are refused; a runner that is gone is
//! `Unreachable`.

use atoll_remote::{ControlKey, ControlVerifier, RemoteRuntime};
use atoll_runtime_api::fake::FakeRuntime;
use atoll_runtime_api::{Limits, NetworkPolicy, Observed, Runtime, RuntimeError, SandboxSpec};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUNNER: &str = "runner-7";

async fn serve(fake: Arc<FakeRuntime>, key: &ControlKey) -> (String, tokio::task::JoinHandle<()>) {
    let verifier = ControlVerifier::new(&key.public_key(), RUNNER).unwrap();
    let app = atoll_remote::server::router(fake, verifier);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

fn spec(id: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        hostname: "sb".into(),
        image: "base".into(),
        user: Some("daytona".into()),
        env: Default::default(),
        limits: Limits {
            cpus: 2,
            memory_bytes: 1 << 30,
            pids: 512,
        },
        disk_bytes: 3 << 30,
        network: NetworkPolicy::default(),
        volumes: vec![atoll_runtime_api::VolumeAttachment {
            volume_id: "vol-1".into(),
            mount_path: "/data".into(),
            subpath: Some("a/b".into()),
            read_only: true,
        }],
    }
}

#[tokio::test]
async fn lifecycle_errors_and_streams_cross_the_protocol() {
    let key = Arc::new(ControlKey::from_seed(&[1u8; 32]).unwrap());
    let fake = Arc::new(FakeRuntime::with_images(&["base"]));
    let (url, _server) = serve(fake.clone(), &key).await;
    let remote = RemoteRuntime::new(RUNNER, &url, key.clone()).unwrap();

    remote.start(&spec("sb-1")).await.unwrap();
    assert_eq!(fake.sandbox("sb-1").unwrap().spec.unwrap(), spec("sb-1"));
    assert_eq!(
        remote.observe_one("sb-1").await.unwrap(),
        Some(Observed::Running {
            id: "sb-1".into(),
            pid: 1,
            paused: false
        })
    );
    assert_eq!(remote.observe_one("nope").await.unwrap(), None);
    remote.pause("sb-1").await.unwrap();
    assert!(fake.sandbox("sb-1").unwrap().paused);
    remote.resume("sb-1").await.unwrap();
    let limits = Limits {
        cpus: 4,
        memory_bytes: 2 << 30,
        pids: 100,
    };
    remote.update_limits("sb-1", &limits).await.unwrap();
    assert_eq!(fake.sandbox("sb-1").unwrap().limits, Some(limits));
    assert!(remote.usage("sb-1").await.unwrap().is_some());
    assert_eq!(remote.capacity().await.unwrap().running, 1);
    assert_eq!(remote.images().await.unwrap()[0].name, "base");
    remote.stop("sb-1").await.unwrap();
    remote.archive("sb-1").await.unwrap();
    let disk = remote.disk_state("sb-1").await.unwrap();
    assert!(disk.archived && !disk.present);
    remote.restore("sb-1").await.unwrap();
    assert_eq!(
        remote.observe().await.unwrap(),
        vec![Observed::Stopped { id: "sb-1".into() }]
    );

    // Errors keep their kind.
    fake.fail_next(
        "start",
        RuntimeError::NoSpace("disk full on the runner".into()),
    );
    assert!(
        matches!(remote.start(&spec("sb-2")).await, Err(RuntimeError::NoSpace(m)) if m == "disk full on the runner")
    );
    fake.fail_next("start", RuntimeError::NetworkFull("no address".into()));
    assert!(matches!(
        remote.start(&spec("sb-2")).await,
        Err(RuntimeError::NetworkFull(_))
    ));
    assert!(matches!(
        remote.pause("sb-1").await,
        Err(RuntimeError::NotRunning { .. })
    ));
    assert!(matches!(
        remote.start(&SandboxSpec { image: "missing".into(), ..spec("sb-3") }).await,
        Err(RuntimeError::ImageNotFound(n)) if n == "missing"
    ));
    // An id that would change the path is sent escaped and refused there.
    assert!(matches!(
        remote.stop("../../v1/recover").await,
        Err(RuntimeError::InvalidId(_))
    ));

    // Streams: the toolbox and a port are byte pipes to what the runtime
    // connected; a refused connect is an error answer, not a broken pipe.
    remote.start(&spec("sb-1")).await.unwrap();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    fake.route_toolbox("sb-1", echo_addr);
    fake.route_port("sb-1", 8080, echo_addr);
    for mut stream in [
        remote.connect_toolbox("sb-1").await.unwrap(),
        remote.connect_port("sb-1", 8080).await.unwrap(),
    ] {
        let payload = vec![42u8; 256 * 1024];
        let (mut r, mut w) = tokio::io::split(&mut stream);
        let writer = async {
            w.write_all(&payload).await.unwrap();
            w.flush().await.unwrap();
        };
        let mut got = vec![0u8; payload.len()];
        let reader = r.read_exact(&mut got);
        let (_, read) = tokio::join!(writer, reader);
        read.unwrap();
        assert!(got == payload, "the pipe carries bytes unchanged both ways");
    }
    assert!(matches!(
        remote.connect_port("sb-1", 9999).await,
        Err(RuntimeError::Connect(_))
    ));
    remote.stop("sb-1").await.unwrap();
    assert!(matches!(
        remote.connect_toolbox("sb-1").await,
        Err(RuntimeError::NotRunning { .. })
    ));
}

#[tokio::test]
async fn only_this_runners_control_plane_is_obeyed() {
    let key = ControlKey::from_seed(&[1u8; 32]).unwrap();
    let fake = Arc::new(FakeRuntime::with_images(&["base"]));
    let (url, _server) = serve(fake.clone(), &key).await;
    // Another deployment's key, and a token this key made for another runner.
    let stranger = RemoteRuntime::new(
        RUNNER,
        &url,
        Arc::new(ControlKey::from_seed(&[2u8; 32]).unwrap()),
    )
    .unwrap();
    let other_runner = RemoteRuntime::new("runner-8", &url, Arc::new(key)).unwrap();
    for rt in [&stranger, &other_runner] {
        match rt.start(&spec("sb-1")).await {
            Err(RuntimeError::Unreachable(m)) => assert!(m.contains("refused"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(rt.connect_toolbox("sb-1").await.is_err());
    }
    assert!(
        fake.calls().is_empty(),
        "the runtime was never asked: {:?}",
        fake.calls()
    );
    // No token at all.
    let resp = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut r, mut w) = resp.into_split();
    w.write_all(b"POST /v1/recover HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 12];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 401");
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn a_runner_that_is_gone_is_unreachable_never_a_state() {
    let key = Arc::new(ControlKey::from_seed(&[1u8; 32]).unwrap());
    let fake = Arc::new(FakeRuntime::with_images(&["base"]));
    let (url, server) = serve(fake, &key).await;
    let remote = RemoteRuntime::new(RUNNER, &url, key).unwrap();
    remote.observe().await.unwrap();
    server.abort();
    let _ = server.await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(matches!(
        remote.observe().await,
        Err(RuntimeError::Unreachable(_))
    ));
    assert!(matches!(
        remote.observe_one("sb-1").await,
        Err(RuntimeError::Unreachable(_))
    ));
    assert!(matches!(
        remote.connect_toolbox("sb-1").await,
        Err(RuntimeError::Unreachable(_))
    ));
    assert!(RemoteRuntime::new(
        RUNNER,
        "ftp://x:1",
        Arc::new(ControlKey::from_seed(&[1u8; 32]).unwrap())
    )
    .is_err());
}

#[tokio::test]
async fn the_runner_api_works_mounted_under_a_path() {
    // As `atoll serve` mounts its embedded runner's API at `/runner`.
    let key = Arc::new(ControlKey::from_seed(&[1u8; 32]).unwrap());
    let fake = Arc::new(FakeRuntime::with_images(&["base"]));
    let verifier = ControlVerifier::new(&key.public_key(), RUNNER).unwrap();
    let app = axum::Router::new().nest(
        "/runner",
        atoll_remote::server::router(fake.clone(), verifier),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let remote =
        RemoteRuntime::new(RUNNER, &format!("http://{addr}/runner/"), key.clone()).unwrap();
    remote.start(&spec("sb-1")).await.unwrap();
    assert_eq!(remote.observe().await.unwrap().len(), 1);
    assert!(fake.sandbox("sb-1").unwrap().running);
    // Without the prefix nothing answers as a runner.
    let bare = RemoteRuntime::new(RUNNER, &format!("http://{addr}"), key.clone()).unwrap();
    assert!(bare.observe().await.is_err());
    for bad in [
        "http://h:1/../x",
        "http://user@h:1",
        "http://h:1/a b",
        "http://",
    ] {
        assert!(
            RemoteRuntime::new(RUNNER, bad, key.clone()).is_err(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn https_runner_urls_speak_tls_and_check_the_certificate() {
    // A throw-away self-signed certificate for 127.0.0.1 (tests/fixtures),
    // trusted through ATOLL_TLS_CA_FILE as an operator's private CA is.
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let key = Arc::new(ControlKey::from_seed(&[1u8; 32]).unwrap());
    let fake = Arc::new(FakeRuntime::with_images(&["base"]));
    let verifier = ControlVerifier::new(&key.public_key(), RUNNER).unwrap();
    let config = atoll_remote::tls::server_config(
        &fixtures.join("test-runner.crt"),
        &fixtures.join("test-runner.key"),
    )
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = atoll_remote::server::router(fake.clone(), verifier);
    tokio::spawn(async move {
        axum::serve(atoll_remote::tls::TlsListener::new(tcp, config), app)
            .await
            .unwrap()
    });

    // Before the CA is trusted, the handshake fails: nothing reaches the runner.
    let untrusted = RemoteRuntime::new(RUNNER, &format!("https://{addr}"), key.clone()).unwrap();
    assert!(matches!(
        untrusted.observe().await,
        Err(RuntimeError::Unreachable(_))
    ));
    assert!(fake.calls().is_empty());
    std::env::set_var(
        atoll_remote::tls::CA_FILE_ENV,
        fixtures.join("test-runner.crt"),
    );
    let remote = RemoteRuntime::new(RUNNER, &format!("https://{addr}"), key.clone()).unwrap();
    remote.start(&spec("sb-1")).await.unwrap();
    assert!(fake.sandbox("sb-1").unwrap().running);
    // Streams go through TLS too.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    fake.route_port("sb-1", 3000, echo_addr);
    let mut pipe = remote.connect_port("sb-1", 3000).await.unwrap();
    pipe.write_all(b"over tls").await.unwrap();
    let mut got = [0u8; 8];
    pipe.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"over tls");
    // Plain HTTP to the TLS port is no runner.
    let plain = RemoteRuntime::new(RUNNER, &format!("http://{addr}"), key).unwrap();
    assert!(plain.observe().await.is_err());
}

#[tokio::test]
async fn pulls_and_captures_stream_their_logs_and_outcome() {
    use atoll_runtime_api::ImagePull;
    let key = Arc::new(ControlKey::from_seed(&[5u8; 32]).unwrap());
    let fake = Arc::new(FakeRuntime::with_images(&["base"]));
    fake.publish("registry.test/app:1");
    let (url, _server) = serve(fake.clone(), &key).await;
    let remote = RemoteRuntime::new(RUNNER, &url, key.clone()).unwrap();

    let lines = std::sync::Mutex::new(Vec::<String>::new());
    let log = |l: &str| lines.lock().unwrap().push(l.to_string());
    let pull = ImagePull {
        name: "atoll/snapshots/s1".into(),
        reference: "registry.test/app:1".into(),
        username: Some("u".into()),
        password: Some("p".into()),
        scope: "org-1".into(),
    };
    let info = remote.pull_image(&pull, &log).await.unwrap();
    assert_eq!(info.name, "atoll/snapshots/s1");
    assert_eq!(info.source.as_deref(), Some("registry.test/app:1"));
    assert_eq!(
        lines.lock().unwrap().as_slice(),
        ["Pulling registry.test/app:1"]
    );
    assert!(remote
        .images()
        .await
        .unwrap()
        .iter()
        .any(|i| i.name == "atoll/snapshots/s1"));
    // The password never shows in a Debug print of the request.
    assert!(!format!("{pull:?}").contains("\"p\""));

    // Errors keep their kind across the stream.
    let missing = ImagePull {
        reference: "registry.test/none:1".into(),
        ..pull.clone()
    };
    assert!(matches!(
        remote.pull_image(&missing, &log).await,
        Err(RuntimeError::ImageNotFound(r)) if r == "registry.test/none:1"
    ));
    fake.fail_next("pull_image", RuntimeError::NoSpace("disk full".into()));
    assert!(matches!(
        remote.pull_image(&pull, &log).await,
        Err(RuntimeError::NoSpace(_))
    ));

    // A capture of a running sandbox; of a stopped one: NotRunning.
    remote.start(&spec("sb-c")).await.unwrap();
    let captured = remote
        .commit("sb-c", "atoll/snapshots/c1", &log)
        .await
        .unwrap();
    assert_eq!(captured.name, "atoll/snapshots/c1");
    // A fork of it: the child's image comes back, with how it was copied.
    let forked = remote
        .fork("sb-c", "sb-child", "atoll/forks/sb-child")
        .await
        .unwrap();
    assert_eq!(forked.image.name, "atoll/forks/sb-child");
    assert!(forked.copy_on_write);
    remote.stop("sb-c").await.unwrap();
    assert!(matches!(
        remote
            .fork("sb-c", "sb-child2", "atoll/forks/sb-child2")
            .await,
        Err(RuntimeError::NotRunning { .. })
    ));
    assert!(matches!(
        remote.commit("sb-c", "atoll/snapshots/c2", &log).await,
        Err(RuntimeError::NotRunning { .. })
    ));

    assert!(remote.remove_image("atoll/snapshots/s1").await.unwrap());
    assert!(!remote.remove_image("atoll/snapshots/s1").await.unwrap());
}

#[tokio::test]
async fn build_contexts_stream_to_the_runner_before_a_build() {
    use atoll_runtime_api::{ImageBuild, Limits};
    let key = Arc::new(ControlKey::from_seed(&[6u8; 32]).unwrap());
    let fake = Arc::new(FakeRuntime::with_images(&["base"]));
    let (url, _server) = serve(fake.clone(), &key).await;
    let remote = RemoteRuntime::new(RUNNER, &url, key.clone()).unwrap();
    let sha = "ab".repeat(32);
    assert!(!remote.has_build_context(&sha).await.unwrap());
    // Several MiB, streamed (more than one frame, more than a JSON body).
    let body: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    remote
        .put_build_context(&sha, Box::new(std::io::Cursor::new(body.clone())))
        .await
        .unwrap();
    assert!(remote.has_build_context(&sha).await.unwrap());
    assert_eq!(fake.build_context(&sha).as_deref(), Some(&body[..]));
    // A name that is no sha256 never reaches the runner.
    assert!(matches!(
        remote.has_build_context("../../etc").await,
        Err(RuntimeError::InvalidId(_))
    ));
    let build = |contexts: Vec<String>| ImageBuild {
        name: "atoll/snapshots/b1".into(),
        dockerfile: "FROM base\nCOPY a /a\n".into(),
        build_args: Default::default(),
        base_image: None,
        registries: vec![],
        limits: Limits {
            cpus: 1,
            memory_bytes: 1 << 30,
            pids: 100,
        },
        disk_bytes: 1 << 30,
        timeout_secs: 60,
        cache_scope: "org".into(),
        contexts,
    };
    let log = |_: &str| {};
    remote
        .build_image(&build(vec![sha.clone()]), &log)
        .await
        .unwrap();
    assert!(matches!(
        remote.build_image(&build(vec!["cd".repeat(32)]), &log).await,
        Err(RuntimeError::Failed(m)) if m.contains("not stored")
    ));
    // An image archive stored the same way is imported by name, its log
    // streamed back; one never stored fails with the runner's reason.
    let lines = std::sync::Mutex::new(Vec::new());
    let log = |l: &str| lines.lock().unwrap().push(l.to_string());
    let import = |archive: &str| atoll_runtime_api::ImageImport {
        name: "atoll/snapshots/i1".into(),
        archive: archive.into(),
    };
    let info = remote.import_image(&import(&sha), &log).await.unwrap();
    assert_eq!(info.name, "atoll/snapshots/i1");
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("Importing")));
    assert!(remote.image("atoll/snapshots/i1").await.unwrap().is_some());
    assert!(matches!(
        remote.import_image(&import(&"ef".repeat(32)), &log).await,
        Err(RuntimeError::Failed(m)) if m.contains("not stored")
    ));
}

#[tokio::test]
async fn volumes_are_made_measured_and_deleted_over_the_protocol() {
    let key = Arc::new(ControlKey::from_seed(&[7u8; 32]).unwrap());
    let fake = Arc::new(FakeRuntime::with_images(&["base"]));
    let (url, _server) = serve(fake.clone(), &key).await;
    let remote = RemoteRuntime::new(RUNNER, &url, key.clone()).unwrap();
    remote.create_volume("vol-1", 5 << 30).await.unwrap();
    let usage = remote.volume_usage("vol-1").await.unwrap();
    assert_eq!(usage.size_bytes, 5 << 30);
    // The mounts of a start reach the runner as given.
    remote.start(&spec("sb-v")).await.unwrap();
    let started = fake.sandbox("sb-v").unwrap().spec.unwrap();
    assert_eq!(started.volumes, spec("sb-v").volumes);
    // Files of the volume, streamed both ways; errors keep their kind.
    let data: Vec<u8> = (0..(2 << 20)).map(|i| (i % 253) as u8).collect();
    let n = remote
        .volume_write(
            "vol-1",
            "dir/a b.bin",
            Box::new(std::io::Cursor::new(data.clone())),
        )
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let listed = remote.volume_list("vol-1", "/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].is_dir && listed[0].name == "dir");
    let (size, mut reader) = remote.volume_read("vol-1", "dir/a b.bin").await.unwrap();
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut back)
        .await
        .unwrap();
    assert_eq!((size, back), (data.len() as u64, data));
    assert!(matches!(
        remote.volume_read("vol-1", "nope").await,
        Err(RuntimeError::PathNotFound(_))
    ));
    assert!(matches!(
        remote.volume_remove("vol-1", "dir", false).await,
        Err(RuntimeError::BadPath(_))
    ));
    remote.volume_remove("vol-1", "dir", true).await.unwrap();
    assert!(remote.volume_list("vol-1", "").await.unwrap().is_empty());
    remote.delete_volume("vol-1").await.unwrap();
    assert!(matches!(
        remote.volume_usage("vol-1").await,
        Err(RuntimeError::Failed(_))
    ));
    // An id that would change the path is escaped, never a route of its own.
    assert!(remote.delete_volume("../v1/capacity").await.is_ok());
}
