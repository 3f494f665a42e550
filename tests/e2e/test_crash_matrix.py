"""The failpoint crash matrix (issue 4): `atoll serve` is killed at each
step of create, start, stop, archive, restore, delete, pause and resume (a failpoints
build, `make build-failpoints`, aborts where `ATOLL_FAILPOINT` says). After
a restart with no failpoint: no sandbox is stuck in a transitional state,
no mount, cgroup, loop device or process is orphaned, and no data is lost:
every surviving sandbox comes back (start, or recover from `error`) with
the file written before the crash."""
import json
import os
import subprocess
import time
import uuid

import pytest

from conftest import AtollServer, sandbox_loop_devices
from test_restart import assert_no_orphans, wait_until

MARKER = "/home/daytona/crash-marker"
SETTLED = {"started", "stopped", "archived", "error", "paused"}
# States whose sandbox runs (frozen or not).
RUNNING = {"started", "paused"}

# (failpoint, state to prepare, operation that hits it)
MATRIX = [
    ("create.after_insert", None, "create"),
    ("runtime.start.after_journal", None, "create"),
    ("runtime.start.after_cgroup", None, "create"),
    ("runtime.start.after_spawn", None, "create"),
    ("runtime.start.before_ready", None, "create"),
    ("start.after_transition", "stopped", "start"),
    ("runtime.start.after_spawn", "stopped", "start"),
    ("runtime.start.before_ready", "stopped", "start"),
    ("stop.after_transition", "started", "stop"),
    ("runtime.stop.after_kill", "started", "stop"),
    ("stop.after_runtime", "started", "stop"),
    ("archive.after_transition", "stopped", "archive"),
    ("runtime.archive.before_disk_removal", "stopped", "archive"),
    ("archive.after_runtime", "stopped", "archive"),
    ("restore.after_transition", "archived", "start"),
    ("runtime.restore.before_archive_removal", "archived", "start"),
    ("restore.after_runtime", "archived", "start"),
    ("delete.after_transition", "started", "delete"),
    ("delete.after_runtime", "started", "delete"),
    ("pause.after_transition", "started", "pause"),
    ("runtime.pause.after_journal", "started", "pause"),
    ("pause.after_runtime", "started", "pause"),
    ("resume.after_transition", "paused", "start"),
    ("runtime.resume.after_thaw", "paused", "start"),
    ("resume.after_runtime", "paused", "start"),
]


@pytest.fixture(scope="module")
def failpoint_bin():
    path = os.environ.get("ATOLL_FAILPOINT_BIN") or os.path.join(
        os.path.dirname(__file__), "..", "..", "target/x86_64-unknown-linux-gnu/failpoints/atoll"
    )
    assert os.path.exists(path), f"{path} missing: run `make build-failpoints` (make test does)"
    return os.path.realpath(path)


def call(srv, method, path, body=None, timeout=60):
    try:
        return srv.http(method, path, json=body, timeout=timeout)
    except OSError:
        return None  # the server died under the request: that is the point


def loop_devices_backed_by(path):
    return sandbox_loop_devices(path)


@pytest.mark.parametrize("failpoint,prepare,op", MATRIX, ids=[f"{op}:{fp}" for fp, _, op in MATRIX])
def test_killed_at_each_step_recovers_without_loss(atoll_bin, images_dir, failpoint_bin, failpoint, prepare, op):
    srv = AtollServer(atoll_bin, images_dir)
    try:
        srv.start()
        token = uuid.uuid4().hex
        sid = None
        if prepare:
            status, _, body = srv.http("POST", "/api/sandbox", json={"autoStopInterval": 0})
            assert status == 200, body
            sid = json.loads(body)["id"]
            status, _, body = srv.http("POST", f"/toolbox/{sid}/process/execute",
                                       json={"command": f"echo {token} > {MARKER}"})
            assert status == 200 and json.loads(body)["exitCode"] == 0, body
            if prepare in ("stopped", "archived"):
                assert srv.http("POST", f"/api/sandbox/{sid}/stop")[0] == 200
            if prepare == "paused":
                assert srv.http("POST", f"/api/sandbox/{sid}/pause")[0] == 200
            if prepare == "archived":
                assert srv.http("POST", f"/api/sandbox/{sid}/archive")[0] == 200

        # the operation, on a failpoints build armed at `failpoint`
        srv.stop()
        srv.bin_path = type(srv.bin_path)(failpoint_bin)
        srv.extra_env = {"ATOLL_FAILPOINT": failpoint}
        srv.start()
        if op == "create":
            r = call(srv, "POST", "/api/sandbox", {"autoStopInterval": 0, "labels": {"crash": "1"}})
        else:
            method = "DELETE" if op == "delete" else "POST"
            path = f"/api/sandbox/{sid}" if op == "delete" else f"/api/sandbox/{sid}/{op}"
            r = call(srv, method, path)
        assert r is None, f"failpoint {failpoint} was not hit: {r}"
        wait_until(lambda: srv.proc.poll() is not None, timeout=10, interval=0.05, what="the server to die")

        # restart, normal build, no failpoint
        srv.bin_path = type(srv.bin_path)(atoll_bin)
        srv.extra_env = {}
        srv.proc = None
        srv.start()
        status, _, body = srv.http("GET", "/api/sandbox")
        items = json.loads(body)["items"]
        for it in items:
            assert it["state"] in SETTLED, f"{it['id']} stuck in {it['state']} after restart"
            if it["state"] == "error":
                assert it.get("errorReason"), it
        assert_no_orphans(srv, {it["id"] for it in items if it["state"] in RUNNING})
        running = {it["id"] for it in items if it["state"] in RUNNING}
        data = os.path.realpath(srv.data_dir)
        for line in loop_devices_backed_by(data):
            assert any(s in line for s in running), f"loop device of a stopped sandbox: {line}"

        if op == "create":
            assert len(items) <= 1, items
        elif op == "delete":
            assert all(it["id"] != sid for it in items) or items[0]["state"] in SETTLED
        else:
            assert [it["id"] for it in items] == [sid], items

        # nothing lost: every sandbox that had data comes back with it
        for it in items:
            if it["state"] == "error":
                s, _, b = srv.http("POST", f"/api/sandbox/{it['id']}/recover")
                assert s == 200 and json.loads(b)["state"] == "started", b
            elif it["state"] != "started":
                s, _, b = srv.http("POST", f"/api/sandbox/{it['id']}/start")
                assert s == 200 and json.loads(b)["state"] == "started", b
            if it["id"] == sid:
                s, _, b = srv.http("POST", f"/toolbox/{sid}/process/execute", json={"command": f"cat {MARKER}"})
                assert s == 200 and json.loads(b)["result"].strip() == token, b
        # and everything can still be deleted cleanly
        for it in items:
            assert srv.http("DELETE", f"/api/sandbox/{it['id']}")[0] == 200
        assert_no_orphans(srv, set())
        assert [e for e in os.listdir(os.path.join(data, "sandboxes")) if not e.startswith(".")] == []
        assert os.listdir(os.path.join(data, "archives")) == []
    finally:
        srv.bin_path = type(srv.bin_path)(atoll_bin)
        srv.extra_env = {}
        if srv.proc is not None and srv.proc.poll() is not None:
            srv.proc = None
            try:
                srv.start()
            except Exception:  # noqa: BLE001 - cleanup only
                pass
        srv.cleanup()
