//! Sessions (`process/session…`) over the unix socket: lifecycle, shared
//! shell state, sync and async commands, logs (JSON, WebSocket, HTTP
//! follow), input, bounded output, process-group cleanup and bad input.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Daemon;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// What SDK 0.226.1 sends with every request.
const SDK: (&str, &str) = ("x-daytona-sdk-version", "0.226.1");

async fn create(d: &Daemon, id: &str) {
    let r = d
        .post_json("/process/session", json!({ "sessionId": id }))
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

async fn exec_with(d: &Daemon, sid: &str, body: Value, headers: &[(&str, &str)]) -> common::Reply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    d.send(
        Method::POST,
        &format!("/process/session/{sid}/exec"),
        &h,
        Bytes::from(body.to_string()),
    )
    .await
}

/// A synchronous command as SDK 0.226.1 runs it; the response JSON.
async fn run(d: &Daemon, sid: &str, command: &str) -> Value {
    let r = exec_with(d, sid, json!({ "command": command }), &[SDK]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn run_async(d: &Daemon, sid: &str, command: &str) -> String {
    let r = exec_with(
        d,
        sid,
        json!({ "command": command, "runAsync": true }),
        &[SDK],
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "only cmdId: {v}");
    v["cmdId"].as_str().expect("cmdId").to_string()
}

async fn command(d: &Daemon, sid: &str, cid: &str) -> Value {
    let r = d
        .get(&format!("/process/session/{sid}/command/{cid}"))
        .await;
    assert_eq!(r.status, 200);
    r.json()
}

async fn wait_exit(d: &Daemon, sid: &str, cid: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(code) = command(d, sid, cid).await["exitCode"].as_i64() {
            return code;
        }
        assert!(Instant::now() < deadline, "command {cid} did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn logs(d: &Daemon, sid: &str, cid: &str) -> Value {
    let r = d
        .send(
            Method::GET,
            &format!("/process/session/{sid}/command/{cid}/logs"),
            &[SDK],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn wait_for_stdout(d: &Daemon, sid: &str, cid: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs(d, sid, cid).await["stdout"]
        .as_str()
        .is_some_and(|s| s.contains(want))
    {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in the logs of {cid}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn process_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pid: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn lifecycle_and_lookup_errors() {
    let d = Daemon::start().await;
    assert_eq!(d.get("/process/session").await.json(), json!([]));
    create(&d, "s1").await;
    create(&d, "s2").await;
    d.post_json("/process/session", json!({"sessionId": "s1"}))
        .await
        .assert_error(409, "CONFLICT");
    d.post_json("/process/session", json!({"sessionId": ""}))
        .await
        .assert_error(400, "BAD_REQUEST");
    d.post_json("/process/session", json!({"nope": 1}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");

    let v = d.get("/process/session/s1").await.json();
    assert_eq!(v, json!({"sessionId": "s1", "commands": []}));
    let ids: Vec<Value> = d
        .get("/process/session")
        .await
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["sessionId"].clone())
        .collect();
    assert_eq!(ids, vec![json!("s1"), json!("s2")]);

    let out = run(&d, "s1", "echo hi").await;
    let cid = out["cmdId"].as_str().expect("cmdId");
    let v = d.get("/process/session/s1").await.json();
    assert_eq!(v["commands"][0]["id"], cid);
    assert_eq!(v["commands"][0]["command"], "echo hi");
    assert_eq!(v["commands"][0]["exitCode"], 0);

    d.get("/process/session/nope")
        .await
        .assert_error(404, "NOT_FOUND");
    d.get("/process/session/s1/command/nope")
        .await
        .assert_error(404, "NOT_FOUND");
    d.get("/process/session/s1/command/nope/logs")
        .await
        .assert_error(404, "NOT_FOUND");
    d.post_json(
        "/process/session/s1/command/nope/input",
        json!({"data": "x"}),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    exec_with(&d, "nope", json!({"command": "true"}), &[])
        .await
        .assert_error(404, "NOT_FOUND");

    let r = d.delete("/process/session/s1").await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    d.delete("/process/session/s1")
        .await
        .assert_error(404, "NOT_FOUND");
    d.get("/process/session/s1")
        .await
        .assert_error(404, "NOT_FOUND");
    // Logs of a deleted session's command are gone with it.
    d.get(&format!("/process/session/s1/command/{cid}/logs"))
        .await
        .assert_error(404, "NOT_FOUND");
    assert_eq!(
        d.get("/process/session")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // The id is free again.
    create(&d, "s1").await;
}

#[tokio::test]
async fn sync_commands_split_streams_and_share_the_shell() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    // (Pauses keep the order across the two pipes deterministic.)
    let v = run(
        &d,
        "s",
        "echo out1; sleep 0.1; echo err1 >&2; sleep 0.1; printf partial; exit_code() { return 3; }; exit_code",
    )
    .await;
    assert_eq!(v["exitCode"], 3);
    assert_eq!(v["stdout"], "out1\npartial");
    assert_eq!(v["stderr"], "err1\n");
    assert_eq!(
        v["output"],
        "\u{1}\u{1}\u{1}out1\n\u{2}\u{2}\u{2}err1\n\u{1}\u{1}\u{1}partial"
    );
    assert!(v.get("truncated").is_none());

    // cd, exported and plain variables and functions persist.
    std::fs::create_dir_all(d.path("sub dir")).expect("mkdir");
    run(&d, "s", "cd 'sub dir' && export EXPORTED=e1 && PLAIN=p1").await;
    let v = run(
        &d,
        "s",
        "pwd; echo $EXPORTED $PLAIN; sh -c 'echo child:$EXPORTED:$PLAIN'; exit_code; echo $?",
    )
    .await;
    assert_eq!(
        v["stdout"],
        format!("{}\ne1 p1\nchild:e1:\n3\n", d.path("sub dir").display())
    );
    assert_eq!(v["exitCode"], 0);

    // Commands that would break a pasted wrapper do not break the session.
    let v = run(&d, "s", "echo (").await;
    assert_eq!(v["exitCode"], 2);
    assert!(
        v["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("syntax error")),
        "{v}"
    );
    let v = run(&d, "s", "if true; then").await;
    assert_eq!(v["exitCode"], 2);
    let v = run(
        &d,
        "s",
        "exec </dev/null; exec 1>/dev/null; echo () { :; }; builtin echo gone",
    )
    .await;
    assert_eq!(v["stdout"], "");
    let v = run(&d, "s", "unset -f echo; echo still here; return 4").await;
    assert_eq!(v["stdout"], "still here\n");
    assert_eq!(v["exitCode"], 4);
    let v = run(&d, "s", "sh -c 'kill -9 $$'").await;
    assert_eq!(v["exitCode"], 137);

    // Anonymous and old clients get the markers stripped from `output`.
    let r = exec_with(
        &d,
        "s",
        json!({"command": "echo a; sleep 0.1; echo b >&2"}),
        &[],
    )
    .await;
    assert_eq!(r.json()["output"], "a\nb\n");
    let r = exec_with(
        &d,
        "s",
        json!({"command": "echo a"}),
        &[("x-daytona-sdk-version", "0.21.0")],
    )
    .await;
    assert_eq!(r.json()["output"], "a\n");
}

#[tokio::test]
async fn sync_commands_never_wait_for_stdin_or_background_jobs() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    let started = Instant::now();
    let v = run(&d, "s", "cat; read x; echo done:$?").await;
    assert_eq!(v["stdout"], "done:1\n");

    // A background job that keeps the command's stdout open does not hold
    // the response, keeps running, and is killed with the session.
    let v = run(&d, "s", "nohup sleep 1000 & echo $!").await;
    let pid: i64 = v["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .expect("pid");
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !process_gone(pid),
        "background job must survive its command"
    );
    let v = run(&d, "s", "kill -0 $! && echo alive").await;
    assert_eq!(v["stdout"], "alive\n");

    // Short-lived background jobs are reaped by the shell: no zombies.
    let v = run(&d, "s", "for i in $(seq 200); do true & done; echo $$").await;
    let shell: i64 = v["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .expect("shell pid");
    tokio::time::sleep(Duration::from_millis(500)).await;
    run(&d, "s", "true").await;
    let zombies = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit(')').next().unwrap_or_default();
            let mut f = rest.split_whitespace();
            let state = f.next();
            let ppid: Option<i64> = f.next().and_then(|p| p.parse().ok());
            state == Some("Z") && ppid == Some(shell)
        })
        .count();
    assert_eq!(zombies, 0);

    assert_eq!(d.delete("/process/session/s").await.status, 204);
    wait_gone(pid).await;
    wait_gone(shell).await;
}

#[tokio::test]
async fn async_commands_report_status_logs_and_take_input() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    let cid = run_async(
        &d,
        "s",
        "read line; echo got:$line; read other; echo also:$other >&2; (exit 5)",
    )
    .await;
    let v = command(&d, "s", &cid).await;
    assert_eq!(v["id"], cid.as_str());
    assert!(v.get("exitCode").is_none(), "running: {v}");

    let input = |data: &'static str| {
        let d = &d;
        let cid = cid.clone();
        async move {
            d.post_json(
                &format!("/process/session/s/command/{cid}/input"),
                json!({ "data": data }),
            )
            .await
        }
    };
    let r = input("hello").await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    wait_for_stdout(&d, "s", &cid, "got:hello\n").await;
    assert_eq!(input("world\n").await.status, 204);
    assert_eq!(wait_exit(&d, "s", &cid).await, 5);

    let v = logs(&d, "s", &cid).await;
    // Input is echoed to the log as stdout (Daytona's behaviour).
    assert_eq!(v["stdout"], "hello\ngot:hello\nworld\n");
    assert_eq!(v["stderr"], "also:world\n");
    assert!(v["output"]
        .as_str()
        .is_some_and(|o| o.contains("\u{2}\u{2}\u{2}also:world\n")));
    // SDKs before 0.167 (`@daytonaio/sdk` 0.143) read the logs as text, the
    // marked log itself, and split it on the markers themselves.
    let old = d
        .send(
            Method::GET,
            &format!("/process/session/s/command/{cid}/logs"),
            &[("x-daytona-sdk-version", "0.143.0")],
            Bytes::new(),
        )
        .await;
    assert_eq!(old.status, 200);
    assert_eq!(old.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(old.body, v["output"].as_str().unwrap().as_bytes());

    input("late")
        .await
        .assert_error(410, "COMMAND_ALREADY_COMPLETED");

    // Echo can be suppressed; a command waits for input while the session
    // queues later commands behind it.
    let r = exec_with(
        &d,
        "s",
        json!({"command": "head -c 5", "runAsync": true, "suppressInputEcho": true}),
        &[SDK],
    )
    .await;
    let quiet = r.json()["cmdId"].as_str().expect("cmdId").to_string();
    let next = run_async(&d, "s", "echo after").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(command(&d, "s", &next).await.get("exitCode").is_none());
    let r = d
        .post_json(
            &format!("/process/session/s/command/{quiet}/input"),
            json!({"data": "abcdefgh"}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(wait_exit(&d, "s", &quiet).await, 0);
    assert_eq!(logs(&d, "s", &quiet).await["stdout"], "abcde");
    assert_eq!(wait_exit(&d, "s", &next).await, 0);
    assert_eq!(logs(&d, "s", &next).await["stdout"], "after\n");

    // The deprecated `async` spelling works too.
    let r = exec_with(&d, "s", json!({"command": "true", "async": true}), &[SDK]).await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn input_to_a_sync_command_is_refused() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    let d = std::sync::Arc::new(d);
    let runner = {
        let d = d.clone();
        tokio::spawn(async move { run(&d, "s", "sleep 1; echo done").await })
    };
    let cid = loop {
        let v = d.get("/process/session/s").await.json();
        if let Some(id) = v["commands"][0]["id"].as_str() {
            break id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    d.post_json(
        &format!("/process/session/s/command/{cid}/input"),
        json!({"data": "x"}),
    )
    .await
    .assert_error(409, "CONFLICT");
    let v = runner.await.expect("join");
    assert_eq!(v["stdout"], "done\n");
}

#[tokio::test]
async fn output_is_bounded_keeping_the_newest() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    // About 15 MB of output.
    let v = run(&d, "s", "seq 1 2000000").await;
    assert_eq!(v["exitCode"], 0);
    assert_eq!(v["truncated"], true);
    let out = v["stdout"].as_str().expect("stdout");
    assert!(out.ends_with("1999999\n2000000\n"));
    assert!(out.len() <= 4 * 1024 * 1024, "{}", out.len());
    // Markers (3 bytes per line) count against the limit.
    assert!(out.len() > 2 * 1024 * 1024, "{}", out.len());
    assert!(!out.starts_with("1\n"));
    assert!(v["stderr"]
        .as_str()
        .is_some_and(|e| e.contains("output truncated")));
    let cid = v["cmdId"].as_str().expect("cmdId");
    assert_eq!(logs(&d, "s", cid).await["truncated"], true);

    // An endless producer stays bounded while it runs.
    let cid = run_async(&d, "s", "yes").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = logs(&d, "s", &cid).await;
    assert_eq!(v["truncated"], true);
    assert!(v["output"].as_str().map_or(0, str::len) <= 4 * 1024 * 1024 + 4096);
    assert_eq!(d.delete("/process/session/s").await.status, 204);
}

#[tokio::test]
async fn exit_ends_the_session() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    let v = run(&d, "s", "echo bye; exit 3").await;
    assert_eq!(v["exitCode"], 3);
    assert_eq!(v["stdout"], "bye\n");
    exec_with(&d, "s", json!({"command": "true"}), &[])
        .await
        .assert_error(410, "SESSION_ENDED");
    // Still listed until deleted.
    assert_eq!(d.get("/process/session/s").await.status, 200);
    assert_eq!(d.delete("/process/session/s").await.status, 204);
}

#[tokio::test]
async fn delete_kills_the_process_group_and_running_commands() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    let v = run(&d, "s", "sleep 1000 > /dev/null 2>&1 & echo $!; echo $$").await;
    let pids: Vec<i64> = v["stdout"]
        .as_str()
        .expect("stdout")
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    let cid = run_async(&d, "s", "sleep 1000").await;
    let d = std::sync::Arc::new(d);
    let blocked = {
        let d = d.clone();
        tokio::spawn(async move { run(&d, "s", "echo never").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(d.delete("/process/session/s").await.status, 204);
    for pid in pids {
        wait_gone(pid).await;
    }
    // The waiting request returns (killed) instead of hanging.
    let v = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("sync exec returns after delete")
        .expect("join");
    assert_eq!(v["exitCode"], 137);
    let _ = cid;
}

#[tokio::test]
async fn bad_commands() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    let big = "x".repeat(1024 * 1024 + 1);
    let r = exec_with(&d, "s", json!({ "command": big }), &[]).await;
    let v = r.assert_error(413, "PAYLOAD_TOO_LARGE");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("1048576")),
        "{v}"
    );
    exec_with(&d, "s", json!({"command": "  "}), &[])
        .await
        .assert_error(400, "BAD_REQUEST");
    exec_with(&d, "s", json!({"cmd": "x"}), &[])
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    // A command of exactly 1 MiB is fine.
    let mut exact = String::from("echo ok #");
    exact.push_str(&"x".repeat(1024 * 1024 - exact.len()));
    let v = run(&d, "s", &exact).await;
    assert_eq!(v["stdout"], "ok\n");
    let v = d.get("/process/session/s").await.json();
    assert_eq!(v["commands"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn without_an_entrypoint_the_entrypoint_session_is_empty() {
    let d = Daemon::start().await;
    assert_eq!(
        d.get("/process/session/entrypoint").await.json(),
        json!({"sessionId": "entrypoint_session_id", "commands": []})
    );
    assert_eq!(
        d.get("/process/session/entrypoint/logs").await.json(),
        json!({"output": "", "stdout": "", "stderr": ""})
    );
    for reserved in ["entrypoint", "entrypoint_session_id"] {
        d.post_json("/process/session", json!({ "sessionId": reserved }))
            .await
            .assert_error(400, "BAD_REQUEST");
        d.delete(&format!("/process/session/{reserved}"))
            .await
            .assert_error(400, "BAD_REQUEST");
    }
    let mut ws = WsClient::connect(&d, "/process/session/entrypoint/logs?follow=true").await;
    assert_eq!(ws.next().await, Frame::Close(1000));
}

#[tokio::test]
async fn the_entrypoint_runs_at_boot_with_the_sandbox_env_and_records_its_exit() {
    let env = [("GREETING".to_string(), "hello".to_string())].into();
    let argv = [
        "sh",
        "-c",
        "echo \"$GREETING\" from \"$PWD\"; echo oops >&2; exit 3",
    ];
    let d = Daemon::start_with_entrypoint(None, env, argv.iter().map(|a| a.to_string()).collect())
        .await;
    // Following ends once the entrypoint has exited and everything was sent.
    let r = d
        .send(
            Method::GET,
            "/process/session/entrypoint/logs?follow=true",
            &[SDK],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    let work = d.path("").display().to_string();
    let work = work.trim_end_matches('/');
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        body.contains(&format!("\x01\x01\x01hello from {work}\n")),
        "{body:?}"
    );
    assert!(body.contains("\x02\x02\x02oops\n"), "{body:?}");
    assert_eq!(
        d.get("/process/session/entrypoint").await.json(),
        json!({
            "sessionId": "entrypoint_session_id",
            "commands": [{
                "id": "entrypoint_command_id",
                "command": "sh -c 'echo \"$GREETING\" from \"$PWD\"; echo oops >&2; exit 3'",
                "exitCode": 3,
            }],
        })
    );
    let logs = d
        .send(
            Method::GET,
            "/process/session/entrypoint/logs",
            &[SDK],
            Bytes::new(),
        )
        .await
        .json();
    assert_eq!(logs["stdout"], format!("hello from {work}\n"));
    assert_eq!(logs["stderr"], "oops\n");
    // It is not one of the listed sessions, and is not restarted.
    assert_eq!(d.get("/process/session").await.json(), json!([]));
    assert_eq!(
        d.get("/process/session/entrypoint").await.json()["commands"][0]["exitCode"],
        3
    );
}

#[tokio::test]
async fn a_running_entrypoint_has_no_exit_code_and_a_missing_one_says_why() {
    let d = Daemon::start_with_entrypoint(
        None,
        Default::default(),
        vec!["sleep".into(), "infinity".into()],
    )
    .await;
    let v = d.get("/process/session/entrypoint").await.json();
    assert_eq!(
        v,
        json!({
            "sessionId": "entrypoint_session_id",
            "commands": [{"id": "entrypoint_command_id", "command": "sleep infinity"}],
        })
    );
    // Without follow the WebSocket sends what there is and closes.
    let mut ws = WsClient::connect(&d, "/process/session/entrypoint/logs").await;
    assert_eq!(ws.next().await, Frame::Close(1000));

    let d = Daemon::start_with_entrypoint(
        None,
        Default::default(),
        vec!["/no/such/entrypoint".into(), "x".into()],
    )
    .await;
    let v = d.get("/process/session/entrypoint").await.json();
    assert_eq!(v["commands"][0]["exitCode"], 127, "{v}");
    let logs = d
        .send(
            Method::GET,
            "/process/session/entrypoint/logs",
            &[SDK],
            Bytes::new(),
        )
        .await
        .json();
    let stderr = logs["stderr"].as_str().unwrap_or_default();
    assert!(stderr.contains("/no/such/entrypoint"), "{logs}");
}

#[tokio::test]
async fn http_follow_streams_until_the_command_ends() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    let cid = run_async(&d, "s", "echo one; sleep 0.3; echo two >&2").await;
    let r = d
        .send(
            Method::GET,
            &format!("/process/session/s/command/{cid}/logs?follow=true"),
            &[SDK],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"\x01\x01\x01one\n\x02\x02\x02two\n");
}

// -- WebSocket log streams -------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Binary(Vec<u8>),
    Text(String),
    Pong(Vec<u8>),
    Close(u16),
}

/// A minimal WebSocket client over the daemon's socket (the server's
/// frames are unmasked; ours are masked with a zero key).
struct WsClient {
    io: TokioIo<hyper::upgrade::Upgraded>,
}

impl WsClient {
    async fn connect(d: &Daemon, uri: &str) -> Self {
        let stream = UnixStream::connect(&d.socket).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header("host", "sandbox")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header(SDK.0, SDK.1)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let res = sender.send_request(req).await.expect("send");
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = res.status();
            let body = res.into_body().collect().await.expect("body").to_bytes();
            panic!(
                "upgrade refused: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let upgraded = hyper::upgrade::on(res).await.expect("upgrade");
        WsClient {
            io: TokioIo::new(upgraded),
        }
    }

    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(20), self.read_frame())
            .await
            .expect("a frame within 20 s")
    }

    async fn read_frame(&mut self) -> Frame {
        let mut head = [0u8; 2];
        self.io.read_exact(&mut head).await.expect("frame head");
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.io.read_exact(&mut b).await.expect("len16");
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.io.read_exact(&mut b).await.expect("len64");
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).expect("len")];
        self.io.read_exact(&mut payload).await.expect("payload");
        match head[0] & 0x0f {
            1 => Frame::Text(String::from_utf8(payload).expect("utf8")),
            2 => Frame::Binary(payload),
            8 => Frame::Close(u16::from_be_bytes([payload[0], payload[1]])),
            10 => Frame::Pong(payload),
            op => panic!("unexpected opcode {op}"),
        }
    }

    async fn ping(&mut self, payload: &[u8]) {
        let mut frame = vec![
            0x89,
            0x80 | u8::try_from(payload.len()).expect("short"),
            0,
            0,
            0,
            0,
        ];
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await.expect("ping");
    }

    /// Data frames until close; the close code.
    async fn collect(&mut self) -> (Vec<u8>, u16) {
        let mut data = Vec::new();
        loop {
            match self.next().await {
                Frame::Binary(b) => data.extend(b),
                Frame::Text(t) => data.extend(t.into_bytes()),
                Frame::Pong(_) => {}
                Frame::Close(code) => return (data, code),
            }
        }
    }
}

#[tokio::test]
async fn websocket_follow_streams_marked_lines_and_closes_1000() {
    let d = Daemon::start().await;
    create(&d, "s").await;
    let cid = run_async(
        &d,
        "s",
        "echo one; read go; echo two >&2; sleep 0.1; echo three",
    )
    .await;
    let uri = format!("/process/session/s/command/{cid}/logs?follow=true");
    let mut ws = WsClient::connect(&d, &uri).await;
    assert_eq!(
        ws.next().await,
        Frame::Binary(b"\x01\x01\x01one\n".to_vec())
    );
    // Pings are answered while the command waits.
    ws.ping(b"keepalive").await;
    assert_eq!(ws.next().await, Frame::Pong(b"keepalive".to_vec()));
    let r = d
        .post_json(
            &format!("/process/session/s/command/{cid}/input"),
            json!({"data": "go"}),
        )
        .await;
    assert_eq!(r.status, 204);
    let (rest, code) = ws.collect().await;
    assert_eq!(code, 1000);
    assert_eq!(
        rest,
        b"\x01\x01\x01go\n\x02\x02\x02two\n\x01\x01\x01three\n"
    );

    // A finished command streams its whole log, then closes.
    let mut ws = WsClient::connect(&d, &uri).await;
    let (all, code) = ws.collect().await;
    assert_eq!(code, 1000);
    assert_eq!(
        all,
        b"\x01\x01\x01one\n\x01\x01\x01go\n\x02\x02\x02two\n\x01\x01\x01three\n"
    );

    // Without follow, what is there now, then close.
    let cid = run_async(&d, "s", "echo now; sleep 1000").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = WsClient::connect(&d, &format!("/process/session/s/command/{cid}/logs")).await;
    let (data, code) = ws.collect().await;
    assert_eq!((data, code), (b"\x01\x01\x01now\n".to_vec(), 1000));

    // Deleting the session ends a follower cleanly.
    let mut ws = WsClient::connect(
        &d,
        &format!("/process/session/s/command/{cid}/logs?follow=true"),
    )
    .await;
    assert_eq!(
        ws.next().await,
        Frame::Binary(b"\x01\x01\x01now\n".to_vec())
    );
    assert_eq!(d.delete("/process/session/s").await.status, 204);
    let (_, code) = ws.collect().await;
    assert_eq!(code, 1000);
}
