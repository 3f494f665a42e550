"""Crash and restart: sandboxes outlive the server, a restart re-adopts them,
and nothing of a sandbox is left behind once it is deleted (SECURITY.md item 20,
ARCHITECTURE.md "the runner re-adopts running sandboxes from its state journal").

Runner bookkeeping the tests read on the host:
- ``<data_dir>/runner/instance``: the runner's instance name;
- cgroups at ``/sys/fs/cgroup/{memory,pids,cpu}/atoll/<instance>/<sandboxId>`` (v1)
  or ``/sys/fs/cgroup/atoll/<instance>/<sandboxId>`` (v2);
- ``<data_dir>/runner/journal/<sandboxId>.json`` = ``{"id", "pid", ...}`` with the
  host pid of the sandbox's PID 1;
- sandbox mounts live only in the sandbox's mount namespace, so the host's
  mount table holds nothing under the data dir.
"""

import http.client
import json
import os
import threading
import time
import urllib.parse
import uuid

import pytest

MARKER = "/home/daytona/atoll-restart-marker"
SETTLED = {"started", "error"}


# --------------------------------------------------------------------------
# host-side bookkeeping


def data_dir(server):
    return os.path.realpath(os.fspath(server.data_dir))


def runner_instance(server):
    with open(os.path.join(data_dir(server), "runner", "instance")) as f:
        return f.read().strip()


def cgroup_v2():
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def cgroup_roots(server):
    inst = runner_instance(server)
    if cgroup_v2():
        return [f"/sys/fs/cgroup/atoll/{inst}"]
    return [f"/sys/fs/cgroup/{c}/atoll/{inst}" for c in ("memory", "pids", "cpu", "cpuacct", "freezer")]


def cgroup_children(root):
    if not os.path.isdir(root):
        return set()
    return {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}


def journal_dir(server):
    return os.path.join(data_dir(server), "runner", "journal")


def journal_path(server, sid):
    return os.path.join(journal_dir(server), f"{sid}.json")


def journal_entries(server):
    d = journal_dir(server)
    return set(os.listdir(d)) if os.path.isdir(d) else set()


def journal(server, sid):
    with open(journal_path(server, sid)) as f:
        entry = json.load(f)
    assert entry["id"] == sid, entry
    assert isinstance(entry["pid"], int) and entry["pid"] > 1, entry
    return entry


def proc_stat(pid):
    """(state, starttime) of a host pid, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def alive(pid, start):
    st = proc_stat(pid)
    return st is not None and st[1] == start and st[0] not in ("Z", "X")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def sandbox_ids_in_cgroup_file(text, inst):
    """Sandbox ids named by a /proc/<pid>/cgroup text; "" = the instance cgroup itself."""
    found = set()
    needle = f"/atoll/{inst}"
    for line in text.splitlines():
        path = line.split(":", 2)[2] if line.count(":") >= 2 else ""
        i = path.find(needle)
        if i < 0:
            continue
        rest = path[i + len(needle):]
        if rest and not rest.startswith("/"):
            continue  # another instance whose name starts with ours
        found.add(rest.lstrip("/").split("/")[0])
    return found


def host_mounts_under(path):
    """Mounts below ``path`` but the sandbox disk pool (<data>/sandboxes,
    which outlives the server as its sandboxes do)."""
    out = []
    pool = path.rstrip("/") + "/sandboxes"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split(" ")[4].encode().decode("unicode_escape")
            if (mp == path or mp.startswith(path.rstrip("/") + "/")) and mp != pool:
                out.append(mp)
    return out


def assert_no_host_mounts(server):
    for p in {data_dir(server), os.fspath(server.data_dir)}:
        assert host_mounts_under(p) == [], f"host mounts under the data dir: {host_mounts_under(p)}"


def assert_no_orphans(server, started):
    """Host state matches exactly the set of started sandboxes `started`."""
    inst = runner_instance(server)
    started = set(started)
    for root in cgroup_roots(server):
        kids = cgroup_children(root)
        assert kids == started, f"{root}: orphaned {sorted(kids - started)}, missing {sorted(started - kids)}"

    strays = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                text = f.read()
        except OSError:
            continue
        sids = sandbox_ids_in_cgroup_file(text, inst)
        if sids and not sids <= started:
            strays[int(pid)] = (sorted(sids), cmdline(pid))
    assert not strays, f"processes in the instance's cgroups outside any started sandbox: {strays}"

    for sid in started:
        pid = journal(server, sid)["pid"]
        st = proc_stat(pid)
        assert st is not None and st[0] not in ("Z", "X"), f"PID 1 of {sid} (host pid {pid}) is gone"
        with open(f"/proc/{pid}/cgroup") as f:
            assert sandbox_ids_in_cgroup_file(f.read(), inst) == {sid}, f"host pid {pid} not in {sid}'s cgroup"

    assert_no_host_mounts(server)


def wait_until(pred, timeout, interval=0.5, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


# --------------------------------------------------------------------------
# API helpers


def list_sandboxes(server):
    items = []
    cursor = None
    for _ in range(100):
        path = "/api/sandbox?limit=200" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        status, _, body = server.http("GET", path)
        assert status == 200, body
        data = json.loads(body)
        items += data["items"] if isinstance(data, dict) else data
        cursor = data.get("nextCursor") if isinstance(data, dict) else None
        if not cursor:
            break
    return items


def get_sandbox(server, sid):
    status, _, body = server.http("GET", f"/api/sandbox/{sid}")
    return status, (json.loads(body) if body else None)


def assert_deleted(server, sid, pid_start):
    """The sandbox is gone from the API and leaves nothing on the host."""
    status, body = get_sandbox(server, sid)
    assert status == 404 or (status == 200 and body["state"] == "destroyed"), (status, body)

    def clean():
        return (
            all(not os.path.exists(os.path.join(root, sid)) for root in cgroup_roots(server))
            and not os.path.exists(journal_path(server, sid))
            and (pid_start is None or not alive(*pid_start))
        )

    wait_until(clean, timeout=30, what=f"cgroups, journal and PID 1 of {sid} to go")


def delete_everything(server):
    """Best-effort cleanup: sandboxes must not outlive the test's server."""
    try:
        if server.proc is None or server.proc.poll() is not None:
            server.start()
        for it in list_sandboxes(server):
            server.http("DELETE", f"/api/sandbox/{it['id']}")
        wait_until(lambda: all(not cgroup_children(r) for r in cgroup_roots(server)), timeout=60,
                   what="all sandboxes to be deleted")
    except BaseException:  # noqa: BLE001 - cleanup must not mask the test's failure
        pass


def make_marked(client):
    sb = client.create(timeout=120)
    token = uuid.uuid4().hex
    r = sb.process.exec(f"echo {token} > {MARKER}")
    assert r.exit_code == 0, r.result
    return sb, token


# --------------------------------------------------------------------------
# tests


def test_sigkill_during_create_then_restart_recovers(fresh_server):
    srv = fresh_server
    client = srv.client()
    try:
        tokens = {}
        for _ in range(5):
            sb, token = make_marked(client)
            tokens[sb.id] = token
        five = list(tokens)
        pid_start = {}
        for sid in five:
            pid = journal(srv, sid)["pid"]
            pid_start[sid] = (pid, proc_stat(pid)[1])
        assert_no_orphans(srv, five)

        # the 6th: a raw POST /api/sandbox in a background thread, then SIGKILL
        label = f"sixth-{uuid.uuid4().hex[:8]}"
        cg_before = cgroup_children(cgroup_roots(srv)[0])
        journal_before = journal_entries(srv)
        sent = threading.Event()
        outcome = {}

        def create_sixth():
            host, port = urllib.parse.urlsplit(srv.url).hostname, urllib.parse.urlsplit(srv.url).port
            conn = http.client.HTTPConnection(host, port, timeout=60)
            try:
                conn.request(
                    "POST", "/api/sandbox",
                    body=json.dumps({"labels": {"atoll-test": label, "code-toolbox-language": "python"}}),
                    headers={"Authorization": f"Bearer {srv.api_key}", "Content-Type": "application/json"},
                )
                sent.set()
                resp = conn.getresponse()
                outcome["status"] = resp.status
                outcome["body"] = resp.read()
            except Exception as e:  # noqa: BLE001 - the server dies under it
                outcome["error"] = repr(e)
            finally:
                sent.set()
                conn.close()

        t = threading.Thread(target=create_sixth, daemon=True)
        t.start()
        assert sent.wait(30), "request for the 6th sandbox was never sent"
        # SIGKILL as soon as the runner shows the 6th at work, 0.5 s after sending at the latest
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if cgroup_children(cgroup_roots(srv)[0]) - cg_before or journal_entries(srv) - journal_before:
                break
            time.sleep(0.001)
        srv.kill()
        t.join(60)

        # the sandboxes outlive the server
        for sid in five:
            assert alive(*pid_start[sid]), f"sandbox {sid} died with the server"

        srv.start()
        client = srv.client()
        for sid in five:
            sb = client.get(sid)
            assert sb.state == "started", (sid, sb.state)
            r = sb.process.exec(f"cat {MARKER}")
            assert (r.exit_code, r.result.strip()) == (0, tokens[sid])
            # adopted, not restarted: same PID 1
            assert journal(srv, sid)["pid"] == pid_start[sid][0]
            assert alive(*pid_start[sid])

        extra = [it for it in list_sandboxes(srv) if it["id"] not in tokens]
        assert len(extra) <= 1, extra
        if outcome.get("status") == 200:
            assert extra, "the server answered 200 for the 6th sandbox but lost it"
        sixth = None
        started = set(five)
        if extra:
            sixth = extra[0]["id"]
            assert extra[0]["labels"].get("atoll-test") == label, extra[0]

            def settled():
                status, body = get_sandbox(srv, sixth)
                return body if status == 200 and body["state"] in SETTLED else None

            final = wait_until(settled, timeout=180, interval=1, what="the 6th sandbox to settle in started or error")
            if final["state"] == "started":
                r = client.get(sixth).process.exec("echo alive")
                assert (r.exit_code, r.result.strip()) == (0, "alive")
                started.add(sixth)
            else:
                assert isinstance(final.get("errorReason"), str) and final["errorReason"].strip(), final

        assert_no_orphans(srv, started)

        # delete all: cgroups, journals and PID-1 processes go
        all_ids = list(tokens) + ([sixth] if sixth else [])
        for sid in started - set(five):
            pid = journal(srv, sid)["pid"]
            pid_start[sid] = (pid, proc_stat(pid)[1])
        for sid in all_ids:
            client.get(sid).delete(timeout=120, wait=True)
        for sid in all_ids:
            assert_deleted(srv, sid, pid_start.get(sid))
        for root in cgroup_roots(srv):
            assert cgroup_children(root) == set(), root
        assert journal_entries(srv) == set()
        assert_no_host_mounts(srv)
    finally:
        delete_everything(srv)


def test_sigterm_leaves_sandboxes_running_and_restart_adopts_them(fresh_server):
    srv = fresh_server
    client = srv.client()
    try:
        tokens = {}
        for _ in range(2):
            sb, token = make_marked(client)
            r = sb.process.exec("nohup sleep 4321 >/dev/null 2>&1 &")
            assert r.exit_code == 0, r.result
            tokens[sb.id] = token
        pid_start = {}
        for sid in tokens:
            pid = journal(srv, sid)["pid"]
            pid_start[sid] = (pid, proc_stat(pid)[1])

        proc = srv.proc
        srv.stop()  # SIGTERM
        assert proc.poll() is not None, "the server did not exit on SIGTERM"
        assert proc.returncode != -9, "the server had to be SIGKILLed after SIGTERM"

        # the sandboxes keep running without the server
        for sid in tokens:
            assert alive(*pid_start[sid]), f"SIGTERM of the server killed sandbox {sid}"
            assert os.path.exists(journal_path(srv, sid))
            for root in cgroup_roots(srv):
                assert os.path.isdir(os.path.join(root, sid))

        srv.start()
        client = srv.client()
        for sid, token in tokens.items():
            sb = client.get(sid)
            assert sb.state == "started", (sid, sb.state)
            r = sb.process.exec(f"cat {MARKER}")
            assert (r.exit_code, r.result.strip()) == (0, token)
            r = sb.process.exec("ps -eo args")
            assert "sleep 4321" in r.result.splitlines(), r.result
            assert journal(srv, sid)["pid"] == pid_start[sid][0]
            assert alive(*pid_start[sid])
        assert_no_orphans(srv, tokens)

        for sid in tokens:
            client.get(sid).delete(timeout=120, wait=True)
        for sid in tokens:
            assert_deleted(srv, sid, pid_start[sid])
        for root in cgroup_roots(srv):
            assert cgroup_children(root) == set(), root
        assert journal_entries(srv) == set()
        assert_no_host_mounts(srv)
    finally:
        delete_everything(srv)
