"""Pause/resume and sandbox metrics through the official SDK.

Pause freezes every process of the sandbox (freezer cgroup), memory kept;
`start` resumes the same processes. Auto-pause pauses an idle sandbox by the
auto-stop clock. `get_metrics_latest()` reports this sandbox's own cpu,
memory and disk (its cgroup and its disk, not the host's), `get_metrics()`
the samples the server takes every `--metrics-interval`.

The server runs with the test-only lifecycle timing (one interval "minute"
= 2 s, see test_lifecycle_auto.py) and a half-second metrics interval.
"""
import base64
import json
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError

from conftest import running_server

MINUTE_S = 2.0
TICK_S = 0.25
METRICS_S = 0.5
GIB = 1 << 30
MIB = 1 << 20

# Appends "pid token n wallclock" every 50 ms. The token and the counter
# live only in the process's memory.
TICKER = r"""
import os, time, uuid
token = uuid.uuid4().hex
n = 0
while True:
    n += 1
    with open("/tmp/ticks", "a") as f:
        f.write(f"{os.getpid()} {token} {n} {time.time()}\n")
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def fast_server(atoll_bin, images_dir):
    env = {
        "ATOLL_LIFECYCLE_MINUTE_SECS": str(MINUTE_S),
        "ATOLL_LIFECYCLE_TICK_SECS": str(TICK_S),
        "ATOLL_METRICS_INTERVAL": str(METRICS_S),
    }
    with running_server(atoll_bin, images_dir, env) as srv:
        yield srv


@pytest.fixture
def client(fast_server):
    d = fast_server.client()
    made = []
    yield d, made
    for sb in made:
        try:
            sb.delete()
        except Exception:
            pass


def create(client, **params):
    d, made = client
    sb = d.create(CreateSandboxFromSnapshotParams(**params))
    made.append(sb)
    return sb


def wait_state(sb, want, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sb.refresh_data()
        if sb.state == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"sandbox {sb.id} is {sb.state}, expected {want} within {timeout}s")


def start_ticker(sb):
    b64 = base64.b64encode(TICKER.encode()).decode()
    r = sb.process.exec(
        f"echo {b64} | base64 -d > /tmp/ticker.py && (setsid nohup python3 /tmp/ticker.py >/dev/null 2>&1 &)"
    )
    assert r.exit_code == 0, r.result
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(ticks(sb)) >= 3:
            return
        time.sleep(0.1)
    raise AssertionError("the ticker did not start")


def ticks(sb):
    r = sb.process.exec("cat /tmp/ticks 2>/dev/null || true")
    out = []
    for line in r.result.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.append((int(parts[0]), parts[1], int(parts[2]), float(parts[3])))
    return out


def assert_frozen_then_resumed(before, after, paused_s):
    """The same process (pid, in-memory token) kept counting from where it
    was, with no tick for about as long as the sandbox was paused."""
    pid, token, n, _ = before[-1]
    assert {(p, t) for p, t, _, _ in after} == {(pid, token)}, "the ticker was restarted, not resumed"
    counts = [c for _, _, c, _ in after]
    assert counts == list(range(1, len(counts) + 1)), "the ticker's counter jumped or restarted"
    later = [tick for tick in after if tick[2] > n]
    assert later, "the ticker did not run after the resume"
    gaps = [b[3] - a[3] for a, b in zip(after, after[1:])]
    assert max(gaps) >= paused_s * 0.8, f"no pause in the ticks (largest gap {max(gaps):.2f}s)"


def test_pause_freezes_every_process_and_start_resumes_them(fast_server, client):
    sb = create(client, auto_stop_interval=0)
    start_ticker(sb)
    before = ticks(sb)
    sb.pause()
    assert sb.state == "paused"
    sb.refresh_data()
    assert (sb.state, sb.desired_state) == ("paused", "paused")
    # the toolbox refuses while paused (the processes cannot answer), 409
    status, _, body = fast_server.http("POST", f"/toolbox/{sb.id}/process/execute", json={"command": "true"})
    assert status == 409, body
    assert "paused" in json.loads(body)["message"]
    # pausing again changes nothing
    sb.pause()
    assert sb.state == "paused"
    time.sleep(3)
    sb.start()
    assert sb.state == "started"
    time.sleep(0.5)
    assert_frozen_then_resumed(before, ticks(sb), 3)


def test_a_paused_sandbox_can_be_stopped_started_and_deleted(fast_server, client):
    sb = create(client, auto_stop_interval=0)
    sb.fs.upload_file(b"kept", "/home/daytona/kept.txt")
    start_ticker(sb)
    sb.pause()
    sb.stop()
    assert sb.state == "stopped"
    sb.start()
    assert sb.fs.download_file("/home/daytona/kept.txt") == b"kept"
    # a stop kills: the ticker is gone after the start
    r = sb.process.exec("ps -eo args")
    assert "python3 /tmp/ticker.py" not in r.result.splitlines(), r.result
    sb.pause()
    sb.delete()
    status, _, _ = fast_server.http("GET", f"/api/sandbox/{sb.id}")
    assert status == 404
    inst = open(os.path.join(fast_server.data_dir, "runner", "instance")).read().strip()
    for controller in ("pids", "freezer", "memory"):
        assert not os.path.exists(f"/sys/fs/cgroup/{controller}/atoll/{inst}/{sb.id}"), controller


def test_illegal_pauses_are_409_and_bad_input_400(fast_server, client):
    sb = create(client, auto_stop_interval=0)
    sb.stop()
    status, _, body = fast_server.http("POST", f"/api/sandbox/{sb.id}/pause")
    assert status == 409, body
    err = json.loads(body)
    assert err["statusCode"] == 409 and "stopped" in err["message"], err
    sb.refresh_data()
    assert sb.state == "stopped", "a refused pause changes nothing"
    status, _, _ = fast_server.http("POST", "/api/sandbox/no-such-sandbox/pause")
    assert status == 404
    for bad in ("abc", "-1", "1.5"):
        status, _, body = fast_server.http("POST", f"/api/sandbox/{sb.id}/autopause/{bad}")
        assert status == 400, (bad, body)
        assert json.loads(body)["statusCode"] == 400
    sb.refresh_data()
    assert sb.auto_pause_interval == 0


def test_auto_pause_pauses_an_idle_sandbox(fast_server, client):
    sb = create(client, auto_pause_interval=1)
    # auto-pause turns the default auto-stop off (they exclude each other)
    assert (sb.auto_pause_interval, sb.auto_stop_interval) == (1, 0)
    start_ticker(sb)
    wait_state(sb, "paused", timeout=6 * MINUTE_S)
    before_resume = time.time()
    sb.start()
    # resuming is activity: it is not paused again at once
    time.sleep(0.5)
    sb.refresh_data()
    assert sb.state == "started"
    after = ticks(sb)
    assert any(t[3] >= before_resume for t in after)
    # setters and Daytona's exclusivity rule
    sb.set_auto_pause_interval(0)
    sb.refresh_data()
    assert sb.auto_pause_interval == 0
    sb.set_autostop_interval(30)
    with pytest.raises(DaytonaError, match="mutually exclusive"):
        sb.set_auto_pause_interval(5)
    sb.refresh_data()
    assert (sb.auto_pause_interval, sb.auto_stop_interval) == (0, 30)
    # the server refuses both at create too (the SDK checks it first)
    for body in ({"autoPauseInterval": 5, "autoStopInterval": 5}, {"autoPauseInterval": 5, "autoDeleteInterval": 0}):
        status, _, resp = fast_server.http("POST", "/api/sandbox", json=body)
        assert status == 400, resp
        assert json.loads(resp)["statusCode"] == 400
    time.sleep(1.5 * MINUTE_S)
    sb.refresh_data()
    assert sb.state == "started", "autoPauseInterval 0 must mean never"


def host_mem_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


def test_latest_metrics_are_the_sandboxs_own(fast_server, client):
    sb = create(client, auto_stop_interval=0)  # 1 cpu, 1 GiB, 3 GiB disk
    m = sb.get_metrics_latest()
    assert m.cpu_count == 1
    assert m.mem_total == GIB and host_mem_total() != GIB
    assert 0 < m.mem_used < GIB
    host = os.statvfs("/")
    assert 2.7 * GIB < m.disk_total <= 3 * GIB, m.disk_total
    assert m.disk_total != host.f_blocks * host.f_frsize
    assert 0 < m.disk_used < m.disk_total
    assert 0.0 <= m.cpu_used_pct <= 100.0
    assert abs(m.timestamp - datetime.now(timezone.utc)) < timedelta(minutes=5)

    # 200 MiB held by a process inside shows in memory used
    hog = "import os, time\nb = bytearray(os.urandom(1 << 20) * 200)\nopen('/tmp/hog.ready', 'w').close()\ntime.sleep(600)\n"
    b64 = base64.b64encode(hog.encode()).decode()
    r = sb.process.exec(
        f"echo {b64} | base64 -d > /tmp/hog.py && (setsid nohup python3 /tmp/hog.py >/dev/null 2>&1 &)"
    )
    assert r.exit_code == 0
    deadline = time.monotonic() + 30
    while sb.process.exec("test -e /tmp/hog.ready").exit_code != 0:
        assert time.monotonic() < deadline, "the allocation did not finish"
        time.sleep(0.2)
    m2 = sb.get_metrics_latest()
    assert m2.mem_used - m.mem_used >= 180 * MIB, (m.mem_used, m2.mem_used)

    # 300 MiB written to its disk shows in disk used
    r = sb.process.exec("dd if=/dev/urandom of=/home/daytona/blob bs=1M count=300 status=none && sync")
    assert r.exit_code == 0, r.result
    m3 = sb.get_metrics_latest()
    assert m3.disk_used - m.disk_used >= 280 * MIB, (m.disk_used, m3.disk_used)

    # a busy process shows as cpu use
    sb.process.exec("(setsid nohup python3 -c 'while True: pass' >/dev/null 2>&1 &)")
    time.sleep(0.5)
    assert sb.get_metrics_latest().cpu_used_pct > 0

    # while paused: still answered, memory kept
    sb.pause()
    paused = sb.get_metrics_latest()
    assert paused.mem_total == GIB
    assert paused.mem_used >= 180 * MIB


def test_metrics_history_has_samples_of_this_sandbox(fast_server, client):
    sb = create(client, auto_stop_interval=0)
    deadline = time.monotonic() + 30
    samples = []
    while time.monotonic() < deadline:
        samples = sb.get_metrics()
        if len(samples) >= 3:
            break
        time.sleep(METRICS_S)
    assert len(samples) >= 3, samples
    created = datetime.fromisoformat(sb.created_at.replace("Z", "+00:00"))
    stamps = [s.timestamp for s in samples]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(t >= created - timedelta(seconds=1) for t in stamps)
    for s in samples:
        assert (s.cpu_count, s.mem_total) == (1, GIB)
        assert 2.7 * GIB < s.disk_total <= 3 * GIB
        assert 0 < s.mem_used < GIB
    # a range in the future has nothing; the past range only what it covers
    now = datetime.now(timezone.utc)
    assert sb.get_metrics(start=now + timedelta(hours=1), end=now + timedelta(hours=2)) == []
    middle = stamps[len(stamps) // 2]
    assert all(s.timestamp <= middle for s in sb.get_metrics(end=middle))
    # the wire form: one series per metric asked for
    status, _, body = fast_server.http(
        "GET",
        f"/api/sandbox/{sb.id}/telemetry/metrics?metricNames=daytona.sandbox.memory.limit"
        "&metricNames=daytona.sandbox.cpu.limit",
    )
    assert status == 200, body
    series = json.loads(body)["series"]
    assert sorted(s["metricName"] for s in series) == ["daytona.sandbox.cpu.limit", "daytona.sandbox.memory.limit"]
    assert all(p["value"] in (1, GIB) for s in series for p in s["dataPoints"])
    for bad in ("from=yesterday", "from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z"):
        status, _, body = fast_server.http("GET", f"/api/sandbox/{sb.id}/telemetry/metrics?{bad}")
        assert status == 400, (bad, body)
        assert json.loads(body)["statusCode"] == 400
    status, _, _ = fast_server.http("GET", "/api/sandbox/no-such-sandbox/telemetry/metrics")
    assert status == 404


def test_a_paused_sandbox_stays_paused_across_a_server_restart(fast_server, client):
    sb = create(client, auto_stop_interval=0)
    start_ticker(sb)
    before = ticks(sb)
    sb.pause()
    t0 = time.monotonic()
    fast_server.restart()
    d = fast_server.client()
    sb = d.get(sb.id)
    assert sb.state == "paused"
    time.sleep(max(0.0, 2 - (time.monotonic() - t0)))
    sb.start()
    assert sb.state == "started"
    time.sleep(0.5)
    assert_frozen_then_resumed(before, ticks(sb), 2)
