"""Archive and restore through the official SDK: a stopped sandbox's disk
is packed into the archive store (freeing the runner's disk) and restored
byte for byte on start: content, modes, owners, symlinks, hardlinks, empty
dirs and xattrs of a 10,000-file tree plus a 200 MiB file. A failed archive
leaves the sandbox stopped with its data intact; auto-archive follows
`autoArchiveInterval` (test-only short minutes)."""
import json
import os
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError

from conftest import running_server

MAKE_TREE = r'''
import os, hashlib
root = "/home/daytona/tree"
os.makedirs(root, exist_ok=True)
for i in range(10000):
    d = os.path.join(root, f"d{i % 100:03d}")
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, f"f{i:05d}")
    with open(p, "wb") as f:
        f.write(hashlib.sha256(str(i).encode()).digest() * (i % 7))
    os.chmod(p, [0o644, 0o600, 0o755, 0o640][i % 4])
    if i % 97 == 0:
        os.chown(p, 0, 0)
    if i % 101 == 0:
        os.setxattr(p, "user.atoll", str(i).encode())
os.makedirs(os.path.join(root, "empty/deeper"), exist_ok=True)
os.symlink("d000/f00000", os.path.join(root, "link"))
os.symlink("/nonexistent/dangling", os.path.join(root, "dangling"))
os.link(os.path.join(root, "d001/f00001"), os.path.join(root, "hard"))
with open(os.path.join(root, "big.bin"), "wb") as f:
    block = os.urandom(1 << 20)
    for i in range(200):
        f.write(i.to_bytes(8, "little") + block[8:])
os.chown(os.path.join(root, "empty"), 1000, 0)
print("RESULT ok")
'''

MANIFEST = r'''
import os, hashlib, json, stat
root = "/home/daytona/tree"
h = hashlib.sha256()
inodes = {}
for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(dirnames + filenames):
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        rel = os.path.relpath(p, root)
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            body = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                body = hashlib.sha256(f.read()).hexdigest()
        else:
            body = ""
        try:
            xattrs = sorted((k, os.getxattr(p, k, follow_symlinks=False).hex()) for k in os.listxattr(p, follow_symlinks=False))
        except OSError:
            xattrs = []
        group = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) else ""
        h.update(json.dumps([rel, kind, oct(st.st_mode), st.st_uid, st.st_gid, body, xattrs, group]).encode())
print("RESULT " + json.dumps({"digest": h.hexdigest(), "count": sum(len(f) + len(d) for _, d, f in os.walk(root))}))
'''


def run_py(sb, code, timeout=600):
    import base64
    b64 = base64.b64encode(code.encode()).decode()
    r = sb.process.exec(f"echo {b64} | base64 -d | sudo -n python3 -", timeout=timeout)
    lines = [l for l in (r.result or "").splitlines() if l.startswith("RESULT ")]
    assert r.exit_code == 0 and lines, r.result
    body = lines[-1][len("RESULT "):]
    return body if body == "ok" else json.loads(body)


def test_archive_and_restore_byte_for_byte(server, daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    try:
        assert run_py(sb, MAKE_TREE) == "ok"
        before = run_py(sb, MANIFEST)
        assert before["count"] > 10000
        sb.stop()
        sb.archive()
        sb.refresh_data()
        assert sb.state == "archived"
        sdir = os.path.join(server.data_dir, "sandboxes", sb.id)
        assert not os.path.exists(os.path.join(sdir, "disk.img")), "archive must free the runner's disk"
        assert os.path.exists(os.path.join(server.data_dir, "archives", f"{sb.id}.tar.zst"))
        # archived sandboxes refuse toolbox calls and illegal transitions
        status, _, body = server.http("POST", f"/api/sandbox/{sb.id}/resize", json={"cpu": 2})
        assert status == 409 and "archived" in json.loads(body)["message"]
        sb.start()
        assert sb.state == "started"
        after = run_py(sb, MANIFEST)
        assert after == before
        assert not os.path.exists(os.path.join(server.data_dir, "archives", f"{sb.id}.tar.zst"))
    finally:
        daytona.delete(sb)


def test_archive_of_a_started_sandbox_is_409(server, sandbox):
    status, _, body = server.http("POST", f"/api/sandbox/{sandbox.id}/archive")
    assert status == 409
    assert "started" in json.loads(body)["message"]
    sandbox.refresh_data()
    assert sandbox.state == "started"


def test_failed_archive_leaves_the_sandbox_stopped_and_intact(server, daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
    try:
        sb.fs.upload_file(b"precious", "/home/daytona/p.txt")
        sb.stop()
        # make the archive's temp file impossible to create
        blocker = os.path.join(server.data_dir, "archives", f"{sb.id}.tar.zst.tmp")
        os.makedirs(blocker)
        with pytest.raises(DaytonaError):
            sb.archive()
        os.rmdir(blocker)
        sb.refresh_data()
        assert sb.state == "stopped"
        sb.start()
        assert sb.fs.download_file("/home/daytona/p.txt") == b"precious"
    finally:
        daytona.delete(sb)


def test_auto_archive_after_stop(atoll_bin, images_dir):
    env = {"ATOLL_LIFECYCLE_MINUTE_SECS": "1", "ATOLL_LIFECYCLE_TICK_SECS": "0.25"}
    with running_server(atoll_bin, images_dir, env) as srv:
        d = srv.client()
        sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
        sb.fs.upload_file(b"kept", "/home/daytona/k.txt")
        sb.set_auto_archive_interval(1)
        sb.stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            sb.refresh_data()
            if sb.state == "archived":
                break
            time.sleep(0.2)
        assert sb.state == "archived"
        sb.start()
        assert sb.fs.download_file("/home/daytona/k.txt") == b"kept"
