//! `process/execute` and `process/code-run` over the unix socket.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::json;

#[tokio::test]
async fn execute_runs_in_cwd_with_envs() {
    let d = Daemon::start().await;
    std::fs::create_dir_all(d.path("sub")).expect("mkdir");
    let r = d
        .exec(json!({"command": "pwd; echo \"$FOO\"", "cwd": "sub", "envs": {"FOO": "bar baz"}}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    let v = r.json();
    assert_eq!(v["exitCode"], 0);
    assert_eq!(
        v["result"],
        format!("{}\nbar baz\n", d.path("sub").display())
    );

    // Default cwd is the work dir; HOME/USER are set; absolute cwd works.
    let v = d
        .exec(json!({"command": "pwd; test -n \"$HOME\" && test -n \"$USER\" && echo ok"}))
        .await
        .json();
    assert_eq!(v["result"], format!("{}\nok\n", d.work.display()));
    let v = d.exec(json!({"command": "pwd", "cwd": "/"})).await.json();
    assert_eq!(v["result"], "/\n");
}

#[tokio::test]
async fn execute_passes_sandbox_env_under_request_env() {
    let env = [("SB_A", "sandbox"), ("SB_B", "sandbox")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let d = Daemon::start_with(None, env).await;
    let v = d
        .exec(json!({"command": "echo $SB_A $SB_B", "envs": {"SB_B": "request"}}))
        .await
        .json();
    assert_eq!(v["result"], "sandbox request\n");
}

#[tokio::test]
async fn execute_reports_exit_codes_and_combines_output_in_order() {
    let d = Daemon::start().await;
    let v = d
        .exec(json!({"command": "echo out1; echo err1 >&2; echo out2; exit 3", "timeout": null}))
        .await
        .json();
    assert_eq!(v["exitCode"], 3);
    assert_eq!(v["result"], "out1\nerr1\nout2\n");

    let v = d.exec(json!({"command": "kill -9 $$"})).await.json();
    assert_eq!(v["exitCode"], 128 + 9);

    // stdin is /dev/null: a reader gets EOF at once.
    let v = d
        .exec(json!({"command": "cat; echo done", "timeout": 10}))
        .await
        .json();
    assert_eq!(v["result"], "done\n");
}

fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for its reaper is dead too.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn execute_timeout_kills_the_whole_process_group() {
    let d = Daemon::start().await;
    let pidfile = d.path("bg.pid");
    let started = Instant::now();
    let r = d
        .exec(json!({
            "command": format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display()),
            "timeout": 1
        }))
        .await;
    r.assert_error(408, "PROCESS_EXECUTION_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(20));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "background process {pid} survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn execute_truncates_huge_output_but_drains_it() {
    let d = Daemon::start().await;
    let v = d
        .exec(json!({"command": "head -c 11000000 /dev/zero | tr '\\0' a; echo; echo tail >&2; exit 4"}))
        .await
        .json();
    assert_eq!(v["exitCode"], 4);
    let result = v["result"].as_str().expect("result");
    let notice = "\n[atoll: output truncated after 10485760 bytes]\n";
    assert!(result.ends_with(notice));
    assert_eq!(result.len(), 10 * 1024 * 1024 + notice.len());
    assert!(result[..10 * 1024 * 1024].bytes().all(|b| b == b'a'));
}

#[tokio::test]
async fn execute_runs_long_commands_via_a_script_fd() {
    let d = Daemon::start().await;
    let command = format!(
        "x={}; echo ${{#x}}; ls /proc/self/fd/3 2>/dev/null || echo closed",
        "a".repeat(300_000)
    );
    let v = d.exec(json!({ "command": command })).await.json();
    assert_eq!(v["exitCode"], 0);
    assert_eq!(v["result"], "300000\nclosed\n");
}

#[tokio::test]
async fn execute_rejects_bad_requests() {
    let d = Daemon::start().await;
    d.exec(json!({"command": "pwd", "cwd": "does/not/exist"}))
        .await
        .assert_error(400, "BAD_REQUEST");
    d.exec(json!({"command": "a".repeat(1024 * 1024 + 1)}))
        .await
        .assert_error(413, "PAYLOAD_TOO_LARGE");
    d.exec(json!({"cmd": "ls"}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.exec(json!({"command": 5}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.exec(json!({"command": "ls", "envs": {"A=B": "x"}}))
        .await
        .assert_error(400, "BAD_REQUEST");
    d.exec(json!({"command": "   "}))
        .await
        .assert_error(400, "BAD_REQUEST");
    let r = d
        .send(
            http::Method::POST,
            "/process/execute",
            &[("content-type", "application/json")],
            bytes::Bytes::from_static(b"{not json"),
        )
        .await;
    let v = r.assert_error(400, "INVALID_REQUEST_BODY");
    assert_eq!(v["path"], "/process/execute");
    assert_eq!(v["method"], "POST");
}

#[tokio::test]
async fn code_run_python_with_argv_and_env() {
    let d = Daemon::start().await;
    let code = "import os, sys\nprint('hello', sys.argv[1:], os.environ['K'])\nprint('err', file=sys.stderr)\nprint(repr(sys.stdin.read()))\nsys.exit(2)\n";
    let r = d
        .post_json(
            "/process/code-run",
            json!({"code": code, "language": "python", "argv": ["a", "b"], "envs": {"K": "v"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["exitCode"], 2);
    assert_eq!(v["result"], "hello ['a', 'b'] v\nerr\n''\n");
    assert_eq!(v["artifacts"]["charts"], json!([]));

    // No language: python (the SDK's default).
    let v = d
        .post_json("/process/code-run", json!({"code": "print(6*7)"}))
        .await
        .json();
    assert_eq!(v["result"], "42\n");
}

/// Code-run's Python driver must be invisible: the same code gives the same
/// output and exit code as `python3 -u -` (what Daytona runs) would.
#[tokio::test]
async fn code_run_python_behaves_like_python_reading_stdin() {
    let d = Daemon::start().await;
    let cases = [
        "import sys, pickle, __main__\n\
         class P: pass\n\
         print(sys.argv, __name__, __file__, __main__.__dict__ is globals())\n\
         print(type(pickle.loads(pickle.dumps(P()))).__name__, sys.path[0] == '')\n",
        "def f():\n    raise ValueError('boom')\nprint('before')\nf()\n",
        "try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e\n",
        "print(\n",
        "import warnings\nwarnings.warn('careful')\nprint('after')\n",
        "print('bye')\nraise SystemExit(7)\n",
        "import os\nprint(os.system('test -e /proc/self/fd/3'))\n",
    ];
    for code in cases {
        let via_stdin = d
            .exec(json!({
                "command": format!("python3 -u - a b <<'ATOLL_EOF'\n{code}ATOLL_EOF")
            }))
            .await
            .json();
        let via_code_run = d
            .post_json(
                "/process/code-run",
                json!({"code": code, "language": "python", "argv": ["a", "b"]}),
            )
            .await
            .json();
        assert_eq!(via_code_run["result"], via_stdin["result"], "{code}");
        assert_eq!(via_code_run["exitCode"], via_stdin["exitCode"], "{code}");
        assert_eq!(via_code_run["artifacts"]["charts"], json!([]), "{code}");
    }
}

/// Charts arrive on fd 3, apart from the output; records that are not a
/// well-formed chart are dropped.
#[tokio::test]
async fn code_run_python_returns_chart_records_from_its_side_channel() {
    let d = Daemon::start().await;
    let code = r#"import os
print("drawing")
os.write(3, b'{"type":"chart","value":{"type":"line","title":"t","elements":[{"label":"s","points":[[0,1],[2,3]]}]}}\n')
os.write(3, b'{"type":"chart","value":{"type":"bar","elements":[{"value":5}]}}\n')
os.write(3, b'garbage\n')
"#;
    let v = d
        .post_json("/process/code-run", json!({"code": code}))
        .await
        .json();
    assert_eq!(v["exitCode"], 0, "{v}");
    assert_eq!(v["result"], "drawing\n");
    assert_eq!(
        v["artifacts"]["charts"],
        json!([{"type": "line", "title": "t",
                "elements": [{"label": "s", "points": [[0.0, 1.0], [2.0, 3.0]]}]}])
    );
}

#[tokio::test]
async fn code_run_javascript() {
    let has_node = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| std::path::Path::new(d).join("node").is_file());
    if !has_node {
        eprintln!("skipping: node is not installed");
        return;
    }
    let d = Daemon::start().await;
    let v = d
        .post_json(
            "/process/code-run",
            json!({"code": "console.log(process.argv.slice(2).join(','), process.env.K); console.error('e'); process.exit(5)", "language": "javascript", "argv": ["a", "b"], "envs": {"K": "v"}}),
        )
        .await
        .json();
    assert_eq!(v["exitCode"], 5);
    assert_eq!(v["result"], "a,b v\ne\n");
}

#[tokio::test]
async fn code_run_timeout_unknown_language_and_missing_interpreter() {
    let d = Daemon::start().await;
    d.post_json(
        "/process/code-run",
        json!({"code": "import time\ntime.sleep(60)", "language": "python", "timeout": 1}),
    )
    .await
    .assert_error(408, "PROCESS_EXECUTION_TIMEOUT");
    d.post_json(
        "/process/code-run",
        json!({"code": "x", "language": "cobol"}),
    )
    .await
    .assert_error(400, "BAD_REQUEST");
    // An interpreter that cannot be started is exit code -1, not an error.
    let r = d
        .post_json(
            "/process/code-run",
            json!({"code": "print(1)", "language": "python", "envs": {"PATH": "/nonexistent"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["exitCode"], -1);
    assert!(v["result"].as_str().is_some_and(|s| s.contains("python3")));
}

#[tokio::test]
async fn execute_as_configured_user_when_root() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipping: switching users needs root");
        return;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if !passwd.lines().any(|l| l.starts_with("nobody:")) {
        eprintln!("skipping: no user nobody in /etc/passwd");
        return;
    }
    let d = Daemon::start_with(Some("nobody".into()), Default::default()).await;
    let v = d
        .exec(json!({"command": "id -un; echo $USER $HOME; cat /proc/self/oom_score_adj"}))
        .await
        .json();
    assert_eq!(v["exitCode"], 0, "{v}");
    let out = v["result"].as_str().unwrap_or_default().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some("nobody"));
    assert!(lines.get(1).is_some_and(|l| l.starts_with("nobody ")));
    // User processes rank above the daemon for the OOM killer: 0 under a
    // daemon at -1000, otherwise 500 above the daemon's own score.
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let want = if own < 0 { 0 } else { (own + 500).min(1000) };
    assert_eq!(lines.get(2).copied(), Some(want.to_string().as_str()));
}

#[tokio::test]
async fn ports_lists_listening_sockets_and_answers_in_use() {
    let d = Daemon::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let r = d.get("/port").await;
    assert_eq!(r.status, 200);
    let ports: Vec<u64> = r.json()["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p.as_u64())
        .collect();
    assert!(ports.contains(&u64::from(port)), "{port} not in {ports:?}");
    let v = d.get(&format!("/port/{port}/in-use")).await.json();
    assert_eq!(v["isInUse"], true);
    drop(listener);
    let v = d.get(&format!("/port/{port}/in-use")).await.json();
    assert_eq!(v["isInUse"], false);
    for bad in ["0", "70000", "http"] {
        let r = d.get(&format!("/port/{bad}/in-use")).await;
        assert_eq!(r.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn update_env_reaches_later_commands_and_survives_a_restart() {
    let d = Daemon::start_with(
        None,
        BTreeMap::from([
            ("KEEP".to_string(), "k".to_string()),
            ("OLD".to_string(), "o".to_string()),
        ]),
    )
    .await;
    let r = d
        .post_json(
            "/env",
            json!({"set": {"NEW": "n v"}, "unset": ["OLD", "LANG"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"KEEP": "k", "NEW": "n v"}));
    let v = d
        .exec(json!({"command": "echo \"$KEEP|$NEW|${OLD-unset}|${LANG-unset}\""}))
        .await
        .json();
    assert_eq!(v["result"], "k|n v|unset|unset\n");
    for bad in [
        json!({"set": {"A=B": "1"}}),
        json!({"unset": [""]}),
        json!({"set": "x"}),
    ] {
        let r = d.post_json("/env", bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.dir.0.join("env.json")).expect("saved")).unwrap();
    assert_eq!(saved["set"], json!({"KEEP": "k", "NEW": "n v"}));
}
