"""Lifecycle rules beyond start/stop, through the official SDK: auto-stop
after inactivity, activity keeping a sandbox alive, auto-delete after stop,
ephemeral sandboxes, live resize, recover, illegal transitions (409 naming
the state), and a sandbox killed from outside being reconciled to
`stopped`.

The server runs with the documented test-only timing
`ATOLL_LIFECYCLE_MINUTE_SECS` (one interval "minute" = 2 s here) and a
fast scheduler tick, so minute-scale rules play out in seconds.
"""
import json
import os
import signal
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, Resources

from conftest import running_server

MINUTE_S = 2.0
TICK_S = 0.25


@pytest.fixture
def fast_server(atoll_bin, images_dir):
    env = {"ATOLL_LIFECYCLE_MINUTE_SECS": str(MINUTE_S), "ATOLL_LIFECYCLE_TICK_SECS": str(TICK_S)}
    with running_server(atoll_bin, images_dir, env) as srv:
        yield srv


def wait_state(sb, want, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sb.refresh_data()
        if sb.state == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"sandbox {sb.id} is {sb.state}, expected {want} within {timeout}s")


def test_idle_sandbox_auto_stops_and_activity_keeps_it_running(fast_server):
    d = fast_server.client()
    idle = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    busy = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    busy.fs.upload_file(b"kept", "/home/daytona/kept.txt")
    t0 = time.monotonic()
    # busy gets a toolbox call every 0.3 s for 2.5 "minutes"; idle gets none
    while time.monotonic() - t0 < 2.5 * MINUTE_S:
        assert busy.process.exec("true").exit_code == 0
        time.sleep(0.3)
    idle.refresh_data()
    busy.refresh_data()
    assert idle.state == "stopped", idle.state
    assert busy.state == "started", busy.state
    # once idle too, busy stops; its files survive a start
    wait_state(busy, "stopped", timeout=3 * MINUTE_S)
    busy.start()
    assert busy.fs.download_file("/home/daytona/kept.txt") == b"kept"
    # the setter is stored and shown
    busy.set_autostop_interval(0)
    busy.refresh_data()
    assert busy.auto_stop_interval == 0
    time.sleep(1.5 * MINUTE_S)
    busy.refresh_data()
    assert busy.state == "started", "autoStopInterval 0 must mean never"


def test_a_start_restarts_the_idle_clock(fast_server):
    """A sandbox stopped for longer than its auto-stop interval is not
    stopped again right after it is started: the start is activity."""
    d = fast_server.client()
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    d.stop(sb)
    time.sleep(1.5 * MINUTE_S)
    d.start(sb)
    time.sleep(4 * TICK_S)  # several scheduler passes, well under a "minute"
    sb.refresh_data()
    assert sb.state == "started", sb.state
    wait_state(sb, "stopped", timeout=3 * MINUTE_S)
    sb.delete()


def test_last_activity_route_counts_as_activity(fast_server):
    d = fast_server.client()
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2 * MINUTE_S:
        sb.refresh_activity()
        time.sleep(0.3)
    sb.refresh_data()
    assert sb.state == "started"
    status, _, _ = fast_server.http("POST", f"/api/sandbox/{sb.id}/last-activity")
    assert status == 201
    status, _, _ = fast_server.http("POST", "/api/sandbox/no-such-sandbox/last-activity")
    assert status == 404


def test_auto_delete_after_stop_and_ephemeral(fast_server):
    d = fast_server.client()
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    sb.set_auto_delete_interval(1)
    sb.refresh_data()
    assert sb.auto_delete_interval == 1
    sb.stop()
    deadline = time.monotonic() + 4 * MINUTE_S
    while time.monotonic() < deadline:
        status, _, _ = fast_server.http("GET", f"/api/sandbox/{sb.id}")
        if status == 404:
            break
        time.sleep(0.2)
    assert status == 404, "a stopped sandbox with autoDeleteInterval 1 must be deleted after a minute"

    eph = d.create(CreateSandboxFromSnapshotParams(ephemeral=True, auto_stop_interval=0))
    eph.refresh_data()
    assert eph.auto_delete_interval == 0
    eph.stop()
    status, _, _ = fast_server.http("GET", f"/api/sandbox/{eph.id}")
    assert status == 404, "an ephemeral sandbox is deleted when it stops"
    assert not os.path.exists(os.path.join(fast_server.data_dir, "sandboxes", eph.id))


def cgroup_file(server, sid, controller, name):
    inst = open(os.path.join(server.data_dir, "runner", "instance")).read().strip()
    v1 = f"/sys/fs/cgroup/{controller}/atoll/{inst}/{sid}/{name}"
    return open(v1).read().strip()


def test_resize_live_and_disk_only_while_stopped(fast_server):
    d = fast_server.client()
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    assert cgroup_file(fast_server, sb.id, "memory", "memory.limit_in_bytes") == str(1 << 30)
    sb.resize(Resources(cpu=2, memory=2))
    sb.refresh_data()
    assert (sb.state, sb.cpu, sb.memory) == ("started", 2, 2)
    assert cgroup_file(fast_server, sb.id, "memory", "memory.limit_in_bytes") == str(2 << 30)
    assert cgroup_file(fast_server, sb.id, "cpu", "cpu.cfs_quota_us") == "200000"
    # visible inside: 1.5 GiB now fits under the new limit
    r = sb.process.exec('python3 -c "b=bytearray(1536*1024*1024); print(len(b))"', timeout=60)
    assert (r.exit_code, r.result.strip()) == (0, str(1536 * 1024 * 1024))

    with pytest.raises(DaytonaError, match="only be resized while the sandbox is stopped"):
        sb.resize(Resources(disk=5))
    sb.stop()
    sb.resize(Resources(disk=5))
    sb.refresh_data()
    assert (sb.state, sb.disk) == ("stopped", 5)
    with pytest.raises(DaytonaError, match="can only grow"):
        sb.resize(Resources(disk=4))
    sb.start()
    # the resized limits apply to the restarted sandbox too
    assert cgroup_file(fast_server, sb.id, "memory", "memory.limit_in_bytes") == str(2 << 30)


def test_illegal_transitions_are_409_naming_the_state(fast_server):
    d = fast_server.client()
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    sb.stop()
    status, _, body = fast_server.http("POST", f"/api/sandbox/{sb.id}/recover")
    assert status == 409
    err = json.loads(body)
    assert err["statusCode"] == 409 and "stopped" in err["message"], err
    sb.refresh_data()
    assert sb.state == "stopped", "a refused request changes nothing"


def test_killed_from_outside_is_reconciled_to_stopped_and_restarts(fast_server):
    d = fast_server.client()
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    sb.fs.upload_file(b"survives", "/home/daytona/s.txt")
    with open(os.path.join(fast_server.data_dir, "runner", "journal", f"{sb.id}.json")) as f:
        pid = json.load(f)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_state(sb, "stopped", timeout=10 * TICK_S + 5)
    inst = open(os.path.join(fast_server.data_dir, "runner", "instance")).read().strip()
    assert not os.path.exists(f"/sys/fs/cgroup/pids/atoll/{inst}/{sb.id}"), "cgroup left behind"
    sb.start()
    assert sb.fs.download_file("/home/daytona/s.txt") == b"survives"


def test_recover_brings_an_errored_sandbox_back(fast_server):
    d = fast_server.client()
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    sb.fs.upload_file(b"x", "/home/daytona/x.txt")
    # Break it: its image layer path is fine, but kill it and make the next
    # start fail by occupying the socket path (host side) with a directory.
    sb.stop()
    sock = os.path.join(fast_server.data_dir, "sandboxes", sb.id, "toolbox.sock")
    os.makedirs(sock, exist_ok=True)
    with pytest.raises(DaytonaError):
        sb.start(timeout=60)
    sb.refresh_data()
    assert sb.state == "error" and sb.error_reason, (sb.state, sb.error_reason)
    assert sb.recoverable is True
    os.rmdir(sock)
    sb.recover()
    sb.refresh_data()
    assert sb.state == "started"
    assert sb.fs.download_file("/home/daytona/x.txt") == b"x"


def test_running_session_command_or_pty_counts_as_activity(fast_server):
    from daytona import SessionExecuteRequest

    d = fast_server.client()
    sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    sb.process.create_session("long")
    sb.process.execute_session_command("long", SessionExecuteRequest(command="sleep 600", run_async=True))
    time.sleep(2.5 * MINUTE_S)
    sb.refresh_data()
    assert sb.state == "started", "a running session command keeps the sandbox alive"
    sb.process.delete_session("long")

    pty = sb.process.create_pty_session("term")
    pty.wait_for_connection()
    time.sleep(2.5 * MINUTE_S)
    sb.refresh_data()
    assert sb.state == "started", "a live PTY keeps the sandbox alive"
    pty.kill()
    # with neither left, it stops once idle
    wait_state(sb, "stopped", timeout=4 * MINUTE_S)


def test_sandboxes_created_under_a_busy_scheduler_stay_started(atoll_bin, images_dir):
    """Regression: the scheduler observed the runtime before reading the
    rows, so a sandbox whose create finished in between looked dead and was
    marked `stopped` (39 of 2,000 creates at concurrency 20). With the
    scheduler running back to back and creates finishing all the while,
    every sandbox stays started."""
    from concurrent.futures import ThreadPoolExecutor

    with running_server(atoll_bin, images_dir, {"ATOLL_LIFECYCLE_TICK_SECS": "0.01"}) as srv:
        d = srv.client()
        params = CreateSandboxFromSnapshotParams(auto_stop_interval=0)
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda _: d.create(params), range(48)))
        # Let the scheduler pass over the finished creates a while longer.
        time.sleep(1)
        status, _, data = srv.http("GET", "/api/sandbox?limit=200")
        assert status == 200, data
        states = {i["id"]: i["state"] for i in json.loads(data)["items"]}
        assert states == {sb.id: "started" for sb in made}, states
        assert "marking it stopped" not in srv.log()
