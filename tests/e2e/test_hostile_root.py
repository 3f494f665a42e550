"""SECURITY.md items 22-26: the host never trusts what a sandbox can change.

Each test is an attack run as root inside a sandbox (``sudo`` through the
exec API, as a user's code would), or a swap made on the host to prove a
second layer holds; each asserts the attack's exact failure and that the
host, the daemon and other sandboxes carry on. The test process runs on the
host as root next to the server, so it can look at host files directly.
"""

import json
import os
import subprocess
import socket
import threading
import uuid

import pytest

from test_isolation import EACCES, EPERM, run, run_py


def uid_map(sb):
    rc, out = run(sb, "cat /proc/self/uid_map /proc/self/gid_map")
    assert rc == 0, out
    lines = [l.split() for l in out.strip().splitlines()]
    assert len(lines) == 2, out
    return [tuple(int(x) for x in l) for l in lines]


# --------------------------------------------------------------------------
# 22 + 23: no host-backed writable path; planted links never followed


def test_item22_no_host_path_is_writable_and_planted_links_are_not_followed(server, daytona, sandbox):
    """The reported exploit and its variants: plant symlinks, a FIFO and hard
    links where the runner used to write, then stop and start the sandbox
    through the API. Nothing appears on the host, the sandbox starts, and
    its generated files land on its own disk."""
    target = f"/tmp/atoll-pwned-{uuid.uuid4().hex}"
    data = str(server.data_dir)
    attack = f"""
        set -x
        mkdir -p /.atoll/run
        ln -sf {target} /.atoll/run/daemon.json
        ln -sf {target}-sock /.atoll/run/toolbox.sock
        rm -f /etc/hosts /etc/hostname
        ln -s {target}-hosts /etc/hosts
        mkfifo /etc/hostname
        ln -sf {target}-resolv /etc/resolv.conf
        ln /etc/passwd /.atoll/run/hardlink || true
        mkdir -p {data}/sandboxes && ln -sf {target}-data {data}/sandboxes/x || true
        echo planted
    """
    rc, out = run(sandbox, f"sudo -n sh -c '{attack}'")
    assert rc == 0 and "planted" in out, out
    daytona.stop(sandbox)
    daytona.start(sandbox)
    for suffix in ["", "-sock", "-hosts", "-resolv", "-data"]:
        assert not os.path.lexists(target + suffix), f"host file {target + suffix} was created"
    # The sandbox answers, its planted files are as it left them (the
    # runner followed nothing), and hostname resolution still works.
    rc, out = run(sandbox, "readlink /etc/hosts; test -p /etc/hostname && echo fifo; hostname")
    assert rc == 0, out
    lines = out.strip().splitlines()
    assert lines[0] == f"{target}-hosts" and lines[1] == "fifo", out

    # The only writable mounts are the sandbox's own disk (the overlay root)
    # and memory-backed tmpfs/devpts; nothing from the host's filesystems.
    res = run_py(sandbox, r'''
import json
out = []
for line in open("/proc/self/mountinfo"):
    a, b = line.rstrip("\n").split(" - ", 1)
    fa, fb = a.split(" "), b.split(" ")
    if "rw" in fa[5].split(","):
        out.append([fa[4], fb[0]])
print("RESULT " + json.dumps(out))
''')
    for mp, fstype in res:
        if fstype in ("devtmpfs",):
            assert mp in {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}, (mp, fstype)
        else:
            assert fstype in {"overlay", "tmpfs", "devpts", "proc"}, (mp, fstype)


def test_item22_etc_files_live_on_the_sandbox_disk(sandbox):
    """Writes to /etc/hosts count against the sandbox's disk quota."""
    rc, before = run(sandbox, "df --output=used -B1 / | tail -1")
    assert rc == 0, before
    rc, out = run(sandbox, "sudo -n sh -c 'head -c 64M /dev/zero >> /etc/hosts' && sync && df --output=used -B1 / | tail -1")
    assert rc == 0, out
    grown = int(out.strip().splitlines()[-1]) - int(before.strip())
    assert grown >= 60 << 20, f"disk use grew by {grown} bytes"
    rc, out = run(sandbox, "sudo -n truncate -s 0 /etc/hosts")
    assert rc == 0, out


# --------------------------------------------------------------------------
# 24: the toolbox socket cannot be swapped


def _socket_path(server, sb):
    return os.path.join(str(server.data_dir), "sandboxes", sb.id, "toolbox.sock")


def test_item24_a_swapped_socket_never_reaches_another_tenant(fresh_server):
    """Even if a sandbox's socket path were pointed at another sandbox's
    daemon (here done on the host, the one place it still could be), the
    proxy checks the peer and refuses: org A's key never runs in B."""
    srv = fresh_server
    if True:
        d = srv.client()
        b = d.create()
        run(b, "echo tenant-b-secret > /tmp/secret")
        a = d.create()
        sock_a = _socket_path(srv, a)
        os.unlink(sock_a)
        os.symlink(_socket_path(srv, b), sock_a)
        # a fresh server-side connection (A had none yet through the API)
        status, _, body = srv.http(
            "POST", f"/toolbox/{a.id}/process/execute", json={"command": "cat /tmp/secret"}
        )
        assert status == 502, (status, body)
        assert b"tenant-b-secret" not in body
        err = json.loads(body)
        assert err["statusCode"] == 502 and "path" in err

        # Any host socket: the peer is refused before a byte is sent.
        host_sock = os.path.join(str(srv.data_dir), "host.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(host_sock)
        listener.listen(4)
        got = []

        def serve():
            listener.settimeout(10)
            try:
                c, _ = listener.accept()
                c.settimeout(2)
                try:
                    got.append(c.recv(4096))
                except OSError:
                    got.append(b"")
                c.close()
            except OSError:
                pass

        t = threading.Thread(target=serve)
        t.start()
        os.unlink(sock_a)
        os.symlink(host_sock, sock_a)
        status, _, body = srv.http("GET", f"/toolbox/{a.id}/files?path=/")
        t.join()
        listener.close()
        assert status == 502, (status, body)
        assert got in ([], [b""]), f"the host socket received {got!r}"
        # B was never touched and still answers
        rc, out = run(b, "cat /tmp/secret")
        assert (rc, out.strip()) == (0, "tenant-b-secret")


# --------------------------------------------------------------------------
# 25: nothing of the host or other tenants is readable


def test_item25_no_host_path_or_other_sandbox_id_is_readable(server, make_sandbox, sandbox):
    other = make_sandbox()
    data = str(server.data_dir)
    probe = (
        "cat /proc/self/mountinfo /proc/mounts /proc/self/cgroup /proc/1/cgroup 2>&1; "
        "sudo -n cat /proc/1/mountinfo 2>&1; "
        "sudo -n find /sys -name backing_file 2>/dev/null; "
        "ls /sys/block /sys/class/block /sys/devices/virtual/block /proc/asound 2>&1; "
        "sudo -n ls -l /proc/1/fd /proc/1/exe 2>&1; "
        "cat /proc/kpageflags /proc/kpagecount | wc -c"
    )
    rc, out = run(sandbox, probe)
    assert other.id not in out
    assert data not in out and "/var/lib/atoll" not in out, out
    assert "sandboxes/" not in out, out
    assert out.strip().splitlines()[-1] == "0", out


def test_item25_error_reasons_carry_no_host_path(server, daytona, sandbox):
    """A sandbox whose start fails (its disk image corrupted on the host)
    reports why in errorReason and the API error, without host paths or
    the daemon's log."""
    daytona.stop(sandbox)
    disk = os.path.join(str(server.data_dir), "sandboxes", sandbox.id, "disk.img")
    with open(disk, "r+b") as f:
        f.write(b"\0" * (4 << 20))  # superblock and group descriptors gone
    status, _, body = server.http("POST", f"/api/sandbox/{sandbox.id}/start")
    texts = [body.decode()]
    status, _, body = server.http("GET", f"/api/sandbox/{sandbox.id}")
    texts.append(body.decode())
    row = json.loads(body)
    assert row["state"] == "error" and row["errorReason"], row
    for text in texts:
        assert str(server.data_dir) not in text, text
        assert "/var/lib/atoll" not in text and "sandboxes/" not in text, text
        assert "/sys/fs/cgroup" not in text and "/dev/loop" not in text, text


# --------------------------------------------------------------------------
# 2 (uid slice), 3 (x32, io_uring), 26 (OOM shield)


def test_item02_root_inside_is_an_unprivileged_slice_of_its_own(make_sandbox, sandbox):
    other = make_sandbox()
    mine = uid_map(sandbox)
    theirs = uid_map(other)
    for m in (mine, theirs):
        for inside, outside, count in m:
            assert inside == 0 and count == 65536, m
            assert outside >= 1 << 16, f"root inside maps to a low host uid: {m}"
    (_, a, n), (_, b, _) = mine[0], theirs[0]
    assert a + n <= b or b + n <= a, f"sandboxes share host uids: {mine} {theirs}"
    # sudo still works and is root of the slice only
    rc, out = run(sandbox, "sudo -n id -u")
    assert (rc, out.strip()) == (0, "0")


def test_item03_x32_and_io_uring_are_denied(sandbox):
    res = run_py(sandbox, """
        import ctypes, json
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        def sc(nr, *a):
            ctypes.set_errno(0)
            ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
            return [ret, ctypes.get_errno()]
        X32 = 0x40000000
        r = {
            "x32_getpid": sc(X32 | 39),
            "x32_write": sc(X32 | 1, 1, 0, 0),
            "io_uring_setup": sc(425, 1, 0),
            "io_uring_enter": sc(426, 0, 0, 0, 0, 0, 0),
            "io_uring_register": sc(427, 0, 0, 0, 0),
        }
        print("RESULT " + json.dumps(r))
    """, sudo=True)
    for name, (ret, err) in res.items():
        assert (ret, err) == (-1, EPERM), (name, ret, err)


def test_item26_user_processes_cannot_claim_the_oom_shield(sandbox):
    for prefix in ["", "sudo -n "]:
        rc, out = run(sandbox, f"{prefix}sh -c 'echo -1 > /proc/self/oom_score_adj' 2>&1; echo rc=$?")
        assert "rc=0" not in out, (prefix, out)
        rc, out = run(sandbox, f"{prefix}sh -c 'echo -17 > /proc/self/oom_adj' 2>&1; echo rc=$?")
        assert "rc=0" not in out, (prefix, out)
    rc, out = run(sandbox, "cat /proc/self/oom_score_adj")
    assert int(out.strip()) >= 0, out


def test_inotify_exhaustion_in_one_sandbox_spares_the_others(make_sandbox, sandbox):
    """Per-user kernel counters are per sandbox: using up inotify instances
    in one leaves another sandbox (and the host's root) unaffected."""
    other = make_sandbox()
    hog = """
        import ctypes, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        fds = []
        err = 0
        for _ in range(100000):
            fd = libc.inotify_init()
            if fd < 0:
                err = ctypes.get_errno()
                break
            fds.append(fd)
        print("RESULT " + json.dumps({"made": len(fds), "err": err}), flush=True)
        import time
        time.sleep(120)
    """
    # The hog keeps its instances (a background process) while we look.
    import base64, textwrap, time
    b64 = base64.b64encode(textwrap.dedent(hog).encode()).decode()
    rc, out = run(sandbox, f"echo {b64} | base64 -d > /tmp/hog.py && (setsid nohup python3 /tmp/hog.py > /tmp/hog.out 2>&1 &) ; echo started")
    assert rc == 0, out
    res = None
    for _ in range(100):
        rc, out = run(sandbox, "cat /tmp/hog.out")
        if out.startswith("RESULT "):
            res = json.loads(out[len("RESULT "):].splitlines()[0])
            break
        time.sleep(0.2)
    assert res is not None, out
    assert res["err"] == 24 and res["made"] > 0, res  # EMFILE: the per-user limit
    ok = run_py(other, """
        import ctypes, json
        libc = ctypes.CDLL(None, use_errno=True)
        print("RESULT " + json.dumps(libc.inotify_init()))
    """)
    assert ok >= 0, "the other sandbox could not create an inotify instance"
    libc = __import__("ctypes").CDLL(None, use_errno=True)
    fd = libc.inotify_init()
    assert fd >= 0, "the host's root could not create an inotify instance"
    os.close(fd)


# --------------------------------------------------------------------------
# 27: per-sandbox I/O limits


def test_item27_disk_io_is_throttled_per_sandbox(server, sandbox):
    """The sandbox's disk device carries the server's I/O limits (256 MiB/s,
    10,000 IOPS by default) in its own blkio/io cgroup."""
    from test_isolation import cgroup_v2, read_host, sandbox_cgroup

    # The device backing the sandbox's root filesystem, as the sandbox sees it.
    rc, out = run(sandbox, "stat -c %d /")
    assert rc == 0, out
    dev = int(out.strip())
    # overlay reports its own anonymous device; find the disk via the host:
    # the loop device the sandbox's cgroup throttles must back its disk.img.
    if cgroup_v2():
        import time
        io_max = os.path.join(sandbox_cgroup(server, "io", sandbox.id), "io.max")
        deadline = time.time() + 10
        while time.time() < deadline and "rbps" not in read_host(io_max):
            time.sleep(0.05)
        text = read_host(io_max)
        lines = [l for l in text.splitlines() if "rbps=268435456" in l]
        assert lines and "riops=10000" in lines[0], text
        major_minor = lines[0].split()[0]
    else:
        cg = sandbox_cgroup(server, "blkio", sandbox.id)
        # Applied right after the create returns (off the create path).
        import time
        deadline = time.time() + 10
        while time.time() < deadline and not read_host(os.path.join(cg, "blkio.throttle.read_iops_device")):
            time.sleep(0.05)
        bps = read_host(os.path.join(cg, "blkio.throttle.write_bps_device")).split()
        iops = read_host(os.path.join(cg, "blkio.throttle.read_iops_device")).split()
        assert len(bps) == 2 and bps[1] == str(256 << 20), bps
        assert iops[1] == "10000" and iops[0] == bps[0], iops
        major_minor = bps[0]
    major, minor = (int(x) for x in major_minor.split(":"))
    assert major == 7, major_minor  # a loop device
    # The loop device is backed by this sandbox's disk image (its path as
    # the sandbox's mount namespace opened it, so compared by inode).
    backing = read_host(f"/sys/dev/block/{major}:{minor}/loop/backing_file")
    assert backing.endswith(f"/{sandbox.id}/disk.img"), backing
    image = os.stat(os.path.join(str(server.data_dir), "sandboxes", sandbox.id, "disk.img"))
    back = subprocess.run(["losetup", "-n", "-O", "BACK-INO,BACK-MAJ:MIN", f"/dev/loop{minor}"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert int(back[0]) == image.st_ino, (back, image)
    assert back[1] == f"{os.major(image.st_dev)}:{os.minor(image.st_dev)}", (back, image)
    assert dev != 0
