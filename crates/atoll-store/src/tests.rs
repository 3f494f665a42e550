use super::*;
use atoll_types::SandboxState;
use std::collections::BTreeMap;

async fn fresh() -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("atoll-store-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("atoll.db").display());
    (Store::open(&url).await.unwrap(), dir)
}

fn uuid_like() -> String {
    format!("{}-{:?}", std::process::id(), std::time::Instant::now())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
}

fn sandbox(id: &str, org: &str, name: &str) -> SandboxRecord {
    SandboxRecord {
        id: id.into(),
        organization_id: org.into(),
        name: name.into(),
        snapshot: "snap".into(),
        os_user: "daytona".into(),
        env: BTreeMap::from([("A".into(), "1".into())]),
        labels: BTreeMap::from([("k".into(), "v".into())]),
        public: false,
        network_block_all: true,
        network_allow_list: None,
        cpu: 1,
        gpu: 0,
        memory: 1,
        disk: 3,
        state: SandboxState::Started,
        desired_state: SandboxState::Started,
        error_reason: None,
        recoverable: false,
        auto_stop_interval: 15,
        auto_archive_interval: 10080,
        auto_delete_interval: -1,
        volumes: vec![],
        created_at: 1,
        updated_at: 1,
        last_activity_at: 1,
        state_changed_at: 1,
        ttl_minutes: 60,
        auto_destroy_at: Some(3_600_001),
        secrets: [("TOKEN".to_string(), "api-token".to_string())].into(),
        outbound_proxy_url: Some("http://proxy.example:3128".into()),
        queue_timeout: Some(5),
        warm_pool_id: None,
        auto_pause_interval: 7,
        runner_id: Some("runner-1".into()),
        image_ref: None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sandboxes_round_trip_and_are_scoped_to_their_org() {
    let (store, dir) = fresh().await;
    for (id, name) in [("o1", "one"), ("o2", "two")] {
        store
            .insert_org(&OrgRecord {
                id: id.into(),
                name: name.into(),
                created_at: 0,
            })
            .await
            .unwrap();
    }
    let s = sandbox("s1", "o1", "box");
    store.insert_sandbox(&s).await.unwrap();
    assert_eq!(
        store.sandbox_in_org("o1", "s1").await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        store.sandbox_in_org("o1", "box").await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(store.sandbox_in_org("o2", "s1").await.unwrap(), None);
    // same name in the same org conflicts; in another org it does not
    let dup = sandbox("s2", "o1", "box");
    assert!(matches!(
        store.insert_sandbox(&dup).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .insert_sandbox(&sandbox("s3", "o2", "box"))
        .await
        .unwrap();

    let mut changed = s.clone();
    changed.state = SandboxState::Stopped;
    changed.labels.insert("x".into(), "y".into());
    store
        .update_sandbox(&changed, SandboxState::Started)
        .await
        .unwrap();
    assert_eq!(store.sandbox("s1").await.unwrap(), Some(changed.clone()));
    // a second writer that read the row as `started` loses the race
    let mut stale = s.clone();
    stale.state = SandboxState::Stopping;
    assert!(matches!(
        store.update_sandbox(&stale, SandboxState::Started).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.sandbox("s1").await.unwrap(), Some(changed));
    store.delete_sandbox("s1").await.unwrap();
    assert_eq!(store.sandbox("s1").await.unwrap(), None);
    assert_eq!(store.all_sandboxes().await.unwrap().len(), 1);
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn reopening_keeps_data_and_migrations_are_idempotent() {
    let (store, dir) = fresh().await;
    store
        .insert_org(&OrgRecord {
            id: "o".into(),
            name: "n".into(),
            created_at: 5,
        })
        .await
        .unwrap();
    store.close().await;
    let url = format!("sqlite://{}", dir.join("atoll.db").display());
    let again = Store::open(&url).await.unwrap();
    assert_eq!(again.org_by_name("n").await.unwrap().unwrap().created_at, 5);
    again.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn signed_preview_tokens_resolve_to_their_sandbox_even_when_dead() {
    let (store, dir) = fresh().await;
    store
        .insert_signed_preview("h-live", "s1", 3000, 2_000)
        .await
        .unwrap();
    store
        .insert_signed_preview("h-old", "s2", 3000, 10)
        .await
        .unwrap();
    assert!(store
        .signed_preview_valid("h-live", "s1", 3000, 1_000)
        .await
        .unwrap());
    assert!(!store
        .signed_preview_valid("h-old", "s2", 3000, 1_000)
        .await
        .unwrap());
    assert_eq!(
        store
            .signed_preview_sandbox("h-live")
            .await
            .unwrap()
            .as_deref(),
        Some("s1")
    );
    assert_eq!(
        store
            .signed_preview_sandbox("h-old")
            .await
            .unwrap()
            .as_deref(),
        Some("s2")
    );
    assert_eq!(store.signed_preview_sandbox("h-none").await.unwrap(), None);
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn recent_sandbox_rows_show_own_writes_at_once_and_others_after_max_age() {
    let (store, dir) = fresh().await;
    store
        .insert_org(&OrgRecord {
            id: "o1".into(),
            name: "one".into(),
            created_at: 0,
        })
        .await
        .unwrap();
    let long = Duration::from_secs(3600);
    assert_eq!(store.sandbox_recent("s1", long).await.unwrap(), None);
    let s = sandbox("s1", "o1", "box");
    store.insert_sandbox(&s).await.unwrap();
    assert_eq!(
        store.sandbox_recent("s1", long).await.unwrap(),
        Some(s.clone())
    );

    // Our own writes, of any kind, show on the next read.
    let mut public = s.clone();
    public.public = true;
    store
        .update_sandbox(&public, SandboxState::Started)
        .await
        .unwrap();
    assert!(
        store
            .sandbox_recent("s1", long)
            .await
            .unwrap()
            .unwrap()
            .public
    );
    store.touch_activity("s1", 99).await.unwrap();
    let touched = store.sandbox_recent("s1", long).await.unwrap().unwrap();
    assert_eq!(touched.last_activity_at, 99);

    // Another process's write: the remembered row until it is max_age old.
    let url = format!("sqlite://{}", dir.join("atoll.db").display());
    let other = Store::open(&url).await.unwrap();
    let mut stopped = touched.clone();
    stopped.state = SandboxState::Stopped;
    other
        .update_sandbox(&stopped, SandboxState::Started)
        .await
        .unwrap();
    assert_eq!(
        store
            .sandbox_recent("s1", long)
            .await
            .unwrap()
            .unwrap()
            .state,
        "started"
    );
    let short = Duration::from_millis(20);
    tokio::time::sleep(short).await;
    assert_eq!(
        store
            .sandbox_recent("s1", short)
            .await
            .unwrap()
            .unwrap()
            .state,
        "stopped"
    );

    store.delete_sandbox("s1").await.unwrap();
    assert_eq!(store.sandbox_recent("s1", long).await.unwrap(), None);
    other.close().await;
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn expired_signed_preview_tokens_are_swept() {
    let (store, dir) = fresh().await;
    store
        .insert_signed_preview("a", "s1", 3000, 10)
        .await
        .unwrap();
    store
        .insert_signed_preview("b", "s1", 3000, 20)
        .await
        .unwrap();
    store
        .insert_signed_preview("c", "s1", 3000, 30)
        .await
        .unwrap();
    assert_eq!(store.delete_expired_signed_previews(20).await.unwrap(), 2);
    assert_eq!(store.signed_preview_sandbox("a").await.unwrap(), None);
    assert_eq!(store.signed_preview_sandbox("b").await.unwrap(), None);
    assert!(store
        .signed_preview_valid("c", "s1", 3000, 20)
        .await
        .unwrap());
    assert_eq!(store.delete_expired_signed_previews(20).await.unwrap(), 0);
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn org_quota_overrides_round_trip_and_orgs_resolve_by_id_or_name() {
    let (store, dir) = fresh().await;
    let org = OrgRecord {
        id: "o1".into(),
        name: "team".into(),
        created_at: 0,
    };
    store.insert_org(&org).await.unwrap();
    assert_eq!(
        store.org_by_id_or_name("o1").await.unwrap(),
        Some(org.clone())
    );
    assert_eq!(
        store.org_by_id_or_name("team").await.unwrap(),
        Some(org.clone())
    );
    assert_eq!(store.org_by_id_or_name("nope").await.unwrap(), None);
    assert_eq!(store.org_quota("o1").await.unwrap(), None);
    let mut q = OrgQuotaRecord {
        organization_id: "o1".into(),
        max_sandboxes: Some(3),
        total_cpu: None,
        total_memory: Some(-1),
        total_disk: Some(0),
        updated_at: 7,
    };
    store.put_org_quota(&q).await.unwrap();
    assert_eq!(store.org_quota("o1").await.unwrap(), Some(q.clone()));
    q.max_sandboxes = None;
    q.total_cpu = Some(8);
    store.put_org_quota(&q).await.unwrap();
    assert_eq!(store.org_quota("o1").await.unwrap(), Some(q));
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// Many writers racing for the last slot of an organization: the check and
/// the write are one step, so exactly as many win as fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checked_writes_never_overrun_a_limit_under_concurrency() {
    let (store, dir) = fresh().await;
    store
        .insert_org(&OrgRecord {
            id: "o1".into(),
            name: "one".into(),
            created_at: 0,
        })
        .await
        .unwrap();
    const LIMIT: usize = 3;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = sandbox(&format!("s{i}"), "o1", &format!("box{i}"));
                store
                    .write_sandbox_checked(SandboxWrite::Insert(&s), |quota, others| {
                        assert_eq!(quota, None);
                        if others.len() >= LIMIT {
                            Err(others.len())
                        } else {
                            Ok(())
                        }
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            won += 1;
        }
    }
    assert_eq!(won, LIMIT);
    assert_eq!(store.holdings_in_org("o1").await.unwrap().len(), LIMIT);

    // An update sees every row but its own, and keeps the compare-and-set.
    let first = store.holdings_in_org("o1").await.unwrap()[0].id.clone();
    let mut s = store.sandbox(&first).await.unwrap().unwrap();
    s.state = SandboxState::Stopped;
    let seen = store
        .write_sandbox_checked(
            SandboxWrite::Update {
                record: &s,
                expected_state: SandboxState::Started,
            },
            |_, others| {
                assert!(others.iter().all(|o| o.id != s.id));
                Ok::<_, ()>(())
            },
        )
        .await
        .unwrap();
    assert_eq!(seen, Ok(()));
    let stale = store
        .write_sandbox_checked(
            SandboxWrite::Update {
                record: &s,
                expected_state: SandboxState::Started,
            },
            |_, _| Ok::<_, ()>(()),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    // A refusal writes nothing.
    let mut t = s.clone();
    t.state = SandboxState::Starting;
    let refused = store
        .write_sandbox_checked(
            SandboxWrite::Update {
                record: &t,
                expected_state: SandboxState::Stopped,
            },
            |_, _| Err("no"),
        )
        .await
        .unwrap();
    assert_eq!(refused, Err("no"));
    assert_eq!(
        store.sandbox(&s.id).await.unwrap().unwrap().state,
        "stopped"
    );
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn metric_samples_are_stored_in_batches_queried_by_range_and_pruned() {
    let (store, dir) = fresh().await;
    store
        .insert_org(&OrgRecord {
            id: "o".into(),
            name: "n".into(),
            created_at: 0,
        })
        .await
        .unwrap();
    store
        .insert_sandbox(&sandbox("s1", "o", "a"))
        .await
        .unwrap();
    assert_eq!(
        store
            .sandbox("s1")
            .await
            .unwrap()
            .unwrap()
            .auto_pause_interval,
        7
    );
    let sample = |id: &str, at: i64| MetricSample {
        sandbox_id: id.into(),
        sampled_at: at,
        cpu_count: 2,
        cpu_used_pct: 12.34,
        mem_used: 100 + at,
        mem_cache: 5,
        mem_total: 1 << 30,
        disk_used: 1 << 20,
        disk_total: 3 << 30,
    };
    // more rows than one statement takes
    let batch: Vec<MetricSample> = (0..2500)
        .map(|i| sample(if i % 2 == 0 { "s1" } else { "s2" }, 1000 + i / 2))
        .collect();
    store.insert_metric_samples(&batch).await.unwrap();
    // the same tick again changes nothing
    store.insert_metric_samples(&batch[..10]).await.unwrap();
    let got = store.metric_samples("s1", 1000, 1004, 100).await.unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], sample("s1", 1000));
    assert!(got.windows(2).all(|w| w[0].sampled_at < w[1].sampled_at));
    assert_eq!(
        store
            .metric_samples("s1", 0, i64::MAX, 10)
            .await
            .unwrap()
            .len(),
        10
    );
    assert_eq!(
        store
            .metric_samples("s1", 0, i64::MAX, 5000)
            .await
            .unwrap()
            .len(),
        1250
    );
    assert_eq!(store.prune_metric_samples(1100).await.unwrap(), 200);
    assert_eq!(
        store
            .metric_samples("s2", 0, i64::MAX, 5000)
            .await
            .unwrap()
            .len(),
        1150
    );
    // a deleted sandbox takes its samples along
    store.delete_sandbox("s1").await.unwrap();
    assert!(store
        .metric_samples("s1", 0, i64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

fn runner(id: &str, name: &str, local: bool) -> RunnerRecord {
    RunnerRecord {
        id: id.into(),
        name: name.into(),
        region: "us".into(),
        runner_class: "linux".into(),
        tags: vec!["gpu-less".into()],
        api_key_hash: format!("hash-{id}"),
        state: "initializing".into(),
        unschedulable: false,
        draining: false,
        local,
        api_url: Some("https://r1.example:2281".into()),
        proxy_url: None,
        domain: None,
        app_version: None,
        cpu: 8,
        memory_gib: 16,
        disk_gib: 100,
        metrics: None,
        last_checked: None,
        pinned_api_url: None,
        created_at: 1000,
        updated_at: 1000,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn runners_round_trip_go_unresponsive_and_count_what_they_hold() {
    let (store, dir) = fresh().await;
    store
        .insert_org(&OrgRecord {
            id: "o1".into(),
            name: "one".into(),
            created_at: 0,
        })
        .await
        .unwrap();
    let mut r1 = runner("r1", "one", false);
    store.insert_runner(&r1).await.unwrap();
    store
        .insert_runner(&runner("local", "here", true))
        .await
        .unwrap();
    assert!(matches!(
        store.insert_runner(&runner("r2", "one", false)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.runner("r1").await.unwrap(), Some(r1.clone()));
    assert_eq!(
        store.runner_by_key_hash("hash-r1").await.unwrap(),
        Some(r1.clone())
    );
    assert_eq!(
        store.runner_by_name("here").await.unwrap().unwrap().id,
        "local"
    );

    r1.state = "ready".into();
    r1.last_checked = Some(5000);
    r1.draining = true;
    store.update_runner(&r1).await.unwrap();
    assert_eq!(store.runner("r1").await.unwrap(), Some(r1.clone()));
    // silent since 5000: unresponsive at 20000 with a 10 s limit; the
    // embedded runner is never marked (it is the server itself)
    assert_eq!(
        store
            .mark_unresponsive_runners(10_000, 20_000, "local")
            .await
            .unwrap(),
        ["r1"]
    );
    assert_eq!(
        store.runner("r1").await.unwrap().unwrap().state,
        "unresponsive"
    );
    assert!(store
        .mark_unresponsive_runners(10_000, 20_000, "local")
        .await
        .unwrap()
        .is_empty());

    let mut a = sandbox("s1", "o1", "a");
    a.runner_id = Some("r1".into());
    a.cpu = 2;
    a.memory = 4;
    a.disk = 10;
    store.insert_sandbox(&a).await.unwrap();
    let mut b = sandbox("s2", "o1", "b");
    b.runner_id = None;
    b.state = SandboxState::Stopped;
    store.insert_sandbox(&b).await.unwrap();
    let held = store.runner_allocations("local").await.unwrap();
    assert_eq!(
        held["r1"],
        RunnerAllocation {
            cpu: 2,
            memory_gib: 4,
            disk_gib: 10,
            started: 1,
            sandboxes: 1
        }
    );
    assert_eq!(
        held["local"],
        RunnerAllocation {
            cpu: 0,
            memory_gib: 0,
            disk_gib: 3,
            started: 0,
            sandboxes: 1
        }
    );
    assert!(matches!(
        store.delete_runner("r1", false).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.delete_runner("r1", true).await.unwrap());
    assert!(store.runner("r1").await.unwrap().is_none());
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_lease_has_one_holder_until_it_expires_or_is_released() {
    let (store, dir) = fresh().await;
    assert!(store
        .acquire_lease("scheduler", "a", 1000, 500)
        .await
        .unwrap());
    assert!(!store
        .acquire_lease("scheduler", "b", 1200, 500)
        .await
        .unwrap());
    // the holder renews
    assert!(store
        .acquire_lease("scheduler", "a", 1400, 500)
        .await
        .unwrap());
    assert!(!store
        .acquire_lease("scheduler", "b", 1800, 500)
        .await
        .unwrap());
    // past its expiry (1900) it goes to the next asker
    assert!(store
        .acquire_lease("scheduler", "b", 1901, 500)
        .await
        .unwrap());
    assert!(!store
        .acquire_lease("scheduler", "a", 1950, 500)
        .await
        .unwrap());
    // other names are other leases
    assert!(store
        .acquire_lease("metrics", "a", 1950, 500)
        .await
        .unwrap());
    store.release_lease("scheduler", "a").await.unwrap(); // not a's: no effect
    assert!(!store
        .acquire_lease("scheduler", "a", 2000, 500)
        .await
        .unwrap());
    store.release_lease("scheduler", "b").await.unwrap();
    assert!(store
        .acquire_lease("scheduler", "a", 2000, 500)
        .await
        .unwrap());
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn objects_are_assembled_from_listed_parts_replaced_and_collected() {
    let (store, dir) = fresh().await;
    let upload = |id: &str, key: &str, at: i64| UploadRecord {
        id: id.into(),
        organization_id: "org-a".into(),
        object_key: key.into(),
        created_at: at,
    };
    store
        .create_upload(&upload("u1", "org-a/h/context.tar", 10))
        .await
        .unwrap();
    store.put_part("u1", 2, "\"e2\"", b"world").await.unwrap();
    store.put_part("u1", 1, "\"old\"", b"stale").await.unwrap();
    store.put_part("u1", 1, "\"e1\"", b"hello ").await.unwrap();
    store
        .put_part("u1", 3, "\"e3\"", b"not listed")
        .await
        .unwrap();
    let parts = store.parts("u1").await.unwrap();
    assert_eq!(
        parts.iter().map(|p| p.part_number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        parts[0].etag, "\"e1\"",
        "a part uploaded again replaces the first"
    );
    let object = ObjectRecord {
        organization_id: "org-a".into(),
        object_key: "org-a/h/context.tar".into(),
        upload_id: "u1".into(),
        parts: vec![1, 2],
        size_bytes: 11,
        etag: "\"x-2\"".into(),
        sha256: "00".repeat(32),
        created_at: 10,
        last_used_at: 10,
    };
    // Completing against a part that changed since it was hashed fails,
    // and changes nothing.
    let listed = [(1, "\"e1\"".to_string()), (2, "\"e2\"".to_string())];
    assert!(matches!(
        store
            .complete_upload(&object, &[(1, "\"old\"".to_string())])
            .await,
        Err(StoreError::Conflict(_))
    ));
    store.complete_upload(&object, &listed).await.unwrap();
    // A completed upload takes no more parts, and completes no more.
    assert!(matches!(
        store.put_part("u1", 2, "\"late\"", b"late").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.complete_upload(&object, &listed).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.part_data("u1", 2).await.unwrap().as_deref(),
        Some(&b"world"[..])
    );
    assert_eq!(
        store.object("org-a", "org-a/h/context.tar").await.unwrap(),
        Some(object.clone())
    );
    assert!(
        store.upload("u1").await.unwrap().is_none(),
        "a completed upload is no longer open"
    );
    assert_eq!(
        store.part_data("u1", 3).await.unwrap(),
        None,
        "unlisted parts are dropped"
    );
    assert_eq!(
        store.part_data("u1", 2).await.unwrap().as_deref(),
        Some(&b"world"[..])
    );
    assert_eq!(store.object_bytes("org-a").await.unwrap(), 11);
    assert_eq!(store.object_bytes("org-b").await.unwrap(), 0);
    assert!(store
        .object("org-b", "org-a/h/context.tar")
        .await
        .unwrap()
        .is_none());
    let listed = store
        .list_objects("org-a", "org-a/h/", "", 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    // Listing after the last key pages on: nothing more.
    assert!(store
        .list_objects("org-a", "org-a/h/", "org-a/h/context.tar", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_objects("org-a", "org-a/x", "", 10)
        .await
        .unwrap()
        .is_empty());

    // The same key again: the old bytes go.
    store
        .create_upload(&upload("u2", "org-a/h/context.tar", 20))
        .await
        .unwrap();
    store.put_part("u2", 1, "\"n\"", b"new").await.unwrap();
    store
        .complete_upload(
            &ObjectRecord {
                upload_id: "u2".into(),
                parts: vec![1],
                size_bytes: 3,
                ..object.clone()
            },
            &[(1, "\"n\"".to_string())],
        )
        .await
        .unwrap();
    assert_eq!(store.part_data("u1", 1).await.unwrap(), None);
    assert_eq!(store.object_bytes("org-a").await.unwrap(), 3);

    // Collection: unused objects, and uploads never completed.
    store
        .create_upload(&upload("u3", "org-a/k/context.tar", 5))
        .await
        .unwrap();
    store
        .put_part("u3", 1, "\"p\"", b"abandoned")
        .await
        .unwrap();
    store
        .touch_object("org-a", "org-a/h/context.tar", 100)
        .await
        .unwrap();
    assert_eq!(store.collect_objects(50, 6).await.unwrap(), (0, 1));
    assert!(store.upload("u3").await.unwrap().is_none());
    assert_eq!(store.collect_objects(101, 6).await.unwrap(), (1, 0));
    assert_eq!(store.object_bytes("org-a").await.unwrap(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}
