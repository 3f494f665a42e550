"""SECURITY.md item 20: 200 create/exec/delete cycles leave nothing behind:
no mount, cgroup, loop device, process, journal entry or file of a deleted
sandbox remains (networking adds netns/veth/nftables checks when it lands)."""
import glob
import json
import os
import subprocess

from conftest import sandbox_loop_devices


def host_mounts_under(path):
    """Mounts below ``path`` but the server's own sandbox disk pool."""
    pool = f" {path}/sandboxes "
    with open("/proc/self/mountinfo") as f:
        return [l for l in f if f" {path}" in l and pool not in l]


def loop_devices_backed_by(path):
    """Loop devices of sandbox disks of the server at ``path``."""
    return sandbox_loop_devices(path)


def sandbox_dirs(data):
    """Sandbox directories left (not the pool's templates and ready disks)."""
    return [e for e in os.listdir(os.path.join(data, "sandboxes")) if not e.startswith(".")]


def test_two_hundred_cycles_leave_nothing_behind(fresh_server):
    srv = fresh_server
    data = os.path.realpath(srv.data_dir)
    inst = open(os.path.join(data, "runner", "instance")).read().strip()
    pids_before = set(os.listdir("/proc"))
    for i in range(200):
        status, _, body = srv.http("POST", "/api/sandbox", json={"labels": {"cycle": str(i)}})
        assert status == 200, body
        sb = json.loads(body)
        assert sb["state"] == "started", sb
        status, _, body = srv.http("POST", f"/toolbox/{sb['id']}/process/execute", json={"command": f"echo {i} > /tmp/x && cat /tmp/x"})
        assert status == 200 and json.loads(body) == {"exitCode": 0, "result": f"{i}\n"}, body
        status, _, body = srv.http("DELETE", f"/api/sandbox/{sb['id']}")
        assert status == 200, body
    status, _, body = srv.http("GET", "/api/sandbox")
    assert json.loads(body)["items"] == []
    assert sandbox_dirs(data) == []
    assert [p for p in os.listdir(os.path.join(data, "runner", "journal"))] == []
    assert os.listdir(os.path.join(data, "archives")) == []
    for ctrl in ("memory", "pids", "cpu", "devices", "blkio"):
        d = f"/sys/fs/cgroup/{ctrl}/atoll/{inst}"
        if os.path.isdir(d):
            assert [e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e))] == [], ctrl
    assert host_mounts_under(data) == []
    assert loop_devices_backed_by(data) == []
    # no process of a sandbox survived
    leftovers = []
    for pid in set(os.listdir("/proc")) - pids_before:
        try:
            cg = open(f"/proc/{pid}/cgroup").read()
        except OSError:
            continue
        if f"/atoll/{inst}/" in cg:
            leftovers.append(pid)
    assert leftovers == []
