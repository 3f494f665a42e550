"""SECURITY.md item 20: 200 create/exec/delete cycles leave nothing behind:
no mount, cgroup, loop device, process, journal entry or file of a deleted
sandbox remains (networking adds netns/veth/nftables checks when it lands)."""
import glob
import json
import os
import subprocess


def host_mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [l for l in f if f" {path}" in l]


def loop_devices_backed_by(path):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if path in l]


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
    assert os.listdir(os.path.join(data, "sandboxes")) == []
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
