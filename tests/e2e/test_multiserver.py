"""Two `atoll serve` on one PostgreSQL (each with its own data dir and
embedded runner, sharing the deployment's control-plane and secrets keys)
and a remote `atoll runner`: any server serves every sandbox, wherever it
runs (toolbox traffic crosses to the other server's embedded runner through
its `/runner` API); the lifecycle scheduler runs on one server at a time
(a lease) and moves to the other when that one is SIGKILLed; the survivor
serves everything, and the dead server's sandboxes go `unknown` until it
returns."""

import json
import time

import pytest
from conftest import AtollRunner, AtollServer, e2e_database, postgres
from daytona import CreateSandboxFromSnapshotParams

pytestmark = pytest.mark.skipif(e2e_database() != "postgres", reason="several API servers share PostgreSQL")

FAST = {"ATOLL_RUNNER_HEALTH_SECS": "0.5", "ATOLL_RUNNER_UNRESPONSIVE_SECS": "3",
        "ATOLL_LIFECYCLE_TICK_SECS": "0.5", "ATOLL_LIFECYCLE_MINUTE_SECS": "2"}


def wait_for(what, check, timeout=40):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def state_of(srv, sid):
    status, _, body = srv.http("GET", f"/api/sandbox/{sid}")
    return json.loads(body) if status == 200 else None


def test_any_server_serves_every_sandbox_and_the_survivor_takes_over(atoll_bin, images_dir):
    url = postgres().new_database()
    a = AtollServer(atoll_bin, images_dir)
    b = AtollServer(atoll_bin, images_dir)
    b.api_key = a.api_key
    keys = {"ATOLL_CONTROL_KEY_FILE": str(a.data_dir / "control.key"),
            "ATOLL_SECRETS_KEY_FILE": str(a.data_dir / "secrets.key")}
    for srv in (a, b):
        srv.database_url = url
        srv.extra_env = dict(FAST, **keys)
    edge = None
    try:
        a.start()
        b.start()
        runners = json.loads(a.http("GET", "/api/runners")[2])
        assert len(runners) == 2 and all(r["local"] for r in runners), runners
        # The edge knows both servers, A first: when A dies it reports to
        # B, so it never looks dead to the survivor.
        edge = AtollRunner(b, "edge")
        edge.api_urls = [a.api_url, b.api_url]
        edge.extra_env.update(FAST)
        edge.start()

        da, db = a.client(), b.client()
        all_runners = json.loads(a.http("GET", "/api/runners")[2])
        local_a = next(r["id"] for r in all_runners if r["apiUrl"].startswith(a.url))
        local_b = next(r["id"] for r in all_runners if r["apiUrl"].startswith(b.url))

        def only(runner_id):
            for r in all_runners:
                a.http("PATCH", f"/api/runners/{r['id']}/scheduling", json={"unschedulable": r["id"] != runner_id})

        only(local_a)
        on_a = da.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
        only(local_b)
        on_other = da.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))

        # Each server drives every sandbox, wherever it runs.
        for d in (da, db):
            for sb in (on_a, on_other):
                box = d.get(sb.id)
                assert box.process.exec("echo $((40+2))").result.strip() == "42"
        db.get(on_a.id).fs.upload_file(b"written through B", "/home/daytona/via-b.txt")
        assert da.get(on_a.id).fs.download_file("/home/daytona/via-b.txt") == b"written through B"

        # Made just before the kill, so A cannot be killed in the middle of
        # its own auto-stop of it (due 2 s after its start).
        only(edge.id)
        idle = db.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
        assert (on_a.runner_id, on_other.runner_id, idle.runner_id) == (local_a, local_b, edge.id)
        # SIGKILL A: B serves what is not on A's host, and its scheduler
        # (the lease moved) auto-stops the idle sandbox.
        a.kill()
        assert db.get(on_other.id).process.exec("echo still").result.strip() == "still"
        wait_for("auto-stop by the surviving server", lambda: state_of(b, idle.id)["state"] == "stopped")
        # A's embedded runner went silent: its sandbox is unknown, not stopped.
        gone = wait_for("unknown", lambda: (s := state_of(b, on_a.id)) and s["state"] == "unknown" and s)
        assert "stopped responding" in gone["errorReason"], gone
        # The edge moved its reports to B: still ready, its sandbox stopped
        # (not unknown) by then.
        assert edge.state() == "ready", edge.log_tail()
        assert state_of(b, idle.id)["state"] == "stopped"
        assert "now reporting to this API server" in edge.log_tail(200)

        # A returns: its runner reports again and its sandbox reconciles.
        a.start()
        wait_for("reconciled", lambda: state_of(b, on_a.id)["state"] == "started")
        assert db.get(on_a.id).fs.download_file("/home/daytona/via-b.txt") == b"written through B"
    finally:
        b.delete_all_sandboxes()
        if edge:
            edge.cleanup()
        b.stop()
        a.cleanup()
        b.cleanup()
