"""Isolation checklist of SECURITY.md, run as attacks inside a sandbox.

One test per item (1, 2, 3, 4, 5, 6, 7, 8, 11, 13). Every attack goes through
``sandbox.process.exec`` exactly as a user's code would, and each test asserts
the exact outcome: exit codes, errno values, the exact ``Cap*`` lines, error
strings. Host-side facts (cgroup files, the data dir) are read by the test
process itself, which runs on the host as root next to the server.

Agreed bounding set: Docker's default capability set minus CAP_MKNOD, i.e.
CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE
NET_RAW SYS_CHROOT AUDIT_WRITE SETFCAP = 0x00000000a00425fb.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import textwrap
import threading
import time
import uuid

import pytest

BOUNDING = "00000000a00425fb"
ZERO = "0000000000000000"

EPERM = 1
EACCES = 13
ETXTBSY = 26
ENOSYS = 38
EROFS = 30
ECONNREFUSED = 111

MASKED = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats", "/proc/timer_stats",
          "/proc/kpageflags", "/proc/kpagecount", "/proc/kpagecgroup"]
MASKED_DIRS = ["/sys/firmware", "/proc/acpi", "/proc/scsi", "/proc/asound", "/sys/block", "/sys/class/block",
               "/sys/dev/block", "/sys/devices/virtual/block", "/sys/devices/virtual/powercap"]
READ_ONLY_PROC = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"]
CHAR_DEVICES = {  # name -> (major, minor)
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
    "ptmx": (5, 2),
}
DEV_SYMLINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}

SUDO_NOISE = re.compile(r"^sudo: unable to resolve host ")


# --------------------------------------------------------------------------
# helpers


def run(sb, cmd, timeout=120):
    """Run `cmd` through the exec API; return (exit_code, output).

    Only sudo's "unable to resolve host" warning is dropped from the output:
    it is noise about /etc/hosts, not part of any attack's outcome.
    """
    r = sb.process.exec(cmd, timeout=timeout)
    out = "\n".join(l for l in (r.result or "").splitlines() if not SUDO_NOISE.match(l))
    return r.exit_code, out


def run_py(sb, code, sudo=False, timeout=120):
    """Run a Python probe inside the sandbox; it prints one `RESULT <json>` line."""
    b64 = base64.b64encode(textwrap.dedent(code).encode()).decode()
    prefix = "sudo -n " if sudo else ""
    rc, out = run(sb, f"echo {b64} | base64 -d | {prefix}python3 -", timeout)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    pytest.fail(f"probe printed no RESULT line (exit {rc}):\n{out}")


def put_file(sb, path, content):
    b64 = base64.b64encode(content.encode()).decode()
    rc, out = run(sb, f"echo {b64} | base64 -d > {path}")
    assert rc == 0, out


def cap_lines(out):
    """The `Cap*:` lines of a /proc/<pid>/status dump, in order."""
    return [l for l in out.splitlines() if re.match(r"^Cap(Inh|Prm|Eff|Bnd|Amb):\t", l)]


def cap_map(out):
    return dict(l.split(":\t", 1) for l in cap_lines(out))


def data_dir(server):
    return os.path.realpath(os.fspath(server.data_dir))


def runner_instance(server):
    with open(os.path.join(data_dir(server), "runner", "instance")) as f:
        return f.read().strip()


def cgroup_v2():
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def sandbox_cgroup(server, controller, sandbox_id):
    inst = runner_instance(server)
    if cgroup_v2():
        return f"/sys/fs/cgroup/atoll/{inst}/{sandbox_id}"
    return f"/sys/fs/cgroup/{controller}/atoll/{inst}/{sandbox_id}"


def read_host(path):
    with open(path) as f:
        return f.read().strip()


def keyed(text):
    """Parse `key value` lines (pids.events, memory.events, memory.oom_control)."""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        out[k] = int(v)
    return out


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


def delete_quietly(sb):
    try:
        sb.delete(timeout=60, wait=True)
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


# Parses /proc/self/mountinfo inside the sandbox; pasted into probes.
MOUNTINFO_PY = r'''
def unesc(s):
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")

def mounts():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            a, b = line.rstrip("\n").split(" - ", 1)
            fa, fb = a.split(" "), b.split(" ")
            out.append({
                "dev": fa[2], "root": unesc(fa[3]), "mp": unesc(fa[4]),
                "opts": fa[5].split(","), "fstype": fb[0],
                "source": unesc(fb[1]) if len(fb) > 1 else "",
            })
    return out
'''


# --------------------------------------------------------------------------
# 1. Capabilities


def test_item01_capabilities_are_the_agreed_set(sandbox):
    rc, out = run(sandbox, "id -u; grep ^Cap /proc/self/status")
    assert rc == 0, out
    assert out.splitlines()[0] == "1000"
    # Exact lines for the default user: nothing held, bounding set = agreed set.
    assert cap_lines(out) == [
        f"CapInh:\t{ZERO}",
        f"CapPrm:\t{ZERO}",
        f"CapEff:\t{ZERO}",
        f"CapBnd:\t{BOUNDING}",
        f"CapAmb:\t{ZERO}",
    ]

    # PID 1 (the daemon) sits inside the same bound.
    rc, out = run(sandbox, "grep ^Cap /proc/1/status")
    assert rc == 0, out
    caps = cap_map(out)
    assert caps["CapBnd"] == BOUNDING
    assert caps["CapInh"] == ZERO
    assert caps["CapAmb"] == ZERO
    assert int(caps["CapEff"], 16) & ~int(BOUNDING, 16) == 0, caps
    assert int(caps["CapPrm"], 16) & ~int(BOUNDING, 16) == 0, caps

    # Attacks that need a capability the default user does not hold.
    res = run_py(sandbox, """
        import os, json, socket
        r = {}
        def probe(name, fn):
            try:
                fn(); r[name] = 0
            except OSError as e:
                r[name] = e.errno
        probe("chown", lambda: os.chown("/etc/hostname", 1000, 1000))
        probe("kill_pid1", lambda: os.kill(1, 0))
        probe("sethostname", lambda: socket.sethostname("atoll-evil"))
        probe("read_shadow", lambda: open("/etc/shadow").read())
        print("RESULT " + json.dumps(r))
    """)
    assert res == {"chown": EPERM, "kill_pid1": EPERM, "sethostname": EPERM, "read_shadow": EACCES}


# --------------------------------------------------------------------------
# 2. Root inside is bounded


def test_item02_sudo_root_is_bounded(sandbox):
    rc, out = run(sandbox, "sudo -n id -u")
    assert (rc, out.strip()) == (0, "0")

    rc, out = run(sandbox, "sudo -n grep ^Cap /proc/self/status")
    assert rc == 0, out
    assert cap_lines(out) == [
        f"CapInh:\t{ZERO}",
        f"CapPrm:\t{BOUNDING}",
        f"CapEff:\t{BOUNDING}",
        f"CapBnd:\t{BOUNDING}",
        f"CapAmb:\t{ZERO}",
    ]

    # user processes must not carry no_new_privs, or sudo could not work
    rc, out = run(sandbox, "grep ^NoNewPrivs: /proc/self/status")
    assert (rc, out.strip()) == (0, "NoNewPrivs:\t0")

    res = run_py(sandbox, """
        import ctypes, json, os, socket, struct, time
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.prctl.restype = ctypes.c_int
        r = {}
        def probe(name, fn):
            try:
                fn(); r[name] = 0
            except OSError as e:
                r[name] = e.errno
        def sc(nr, *a):
            ctypes.set_errno(0)
            ret = libc.syscall(ctypes.c_long(nr), *a)
            return [ret, ctypes.get_errno()]

        # CAP_SYS_ADMIN: sethostname
        probe("sethostname", lambda: socket.sethostname("atoll-evil"))
        # CAP_SYS_TIME: set the clock (to its own value)
        probe("clock_settime", lambda: time.clock_settime(time.CLOCK_REALTIME, time.time()))
        # CAP_SYS_NICE: raise priority
        probe("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, -5))
        # CAP_SYS_RAWIO: iopl(3)
        r["iopl"] = sc(172, ctypes.c_long(3))
        # raise CAP_SYS_ADMIN (21) into the ambient set
        ctypes.set_errno(0)
        ret = libc.prctl(47, 2, 21, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE
        r["ambient_raise"] = [ret, ctypes.get_errno()]
        # capset: add CAP_SYS_ADMIN to the permitted and effective sets
        hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0))
        data = ctypes.create_string_buffer(24)
        sc(125, hdr, data)  # capget
        eff, prm, inh, eff2, prm2, inh2 = struct.unpack("<6I", data.raw)
        data2 = ctypes.create_string_buffer(struct.pack("<6I", eff | (1 << 21), prm | (1 << 21), inh, eff2, prm2, inh2))
        hdr2 = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0))
        r["capset"] = sc(126, hdr2, data2)
        # the bounding set as the kernel reports it, bit by bit
        bits = 0
        for cap in range(64):
            if libc.prctl(23, cap, 0, 0, 0) == 1:  # PR_CAPBSET_READ
                bits |= 1 << cap
        r["capbset"] = "%016x" % bits
        with open("/proc/self/uid_map") as f:
            r["uid_map"] = [list(map(int, l.split())) for l in f if l.strip()]
        print("RESULT " + json.dumps(r))
    """, sudo=True)
    assert res["sethostname"] == EPERM
    assert res["clock_settime"] == EPERM
    assert res["setpriority"] == EACCES
    # iopl needs CAP_SYS_RAWIO; kernels built without CONFIG_X86_IOPL_IOPERM answer ENOSYS
    assert res["iopl"] in ([-1, EPERM], [-1, ENOSYS])
    assert res["ambient_raise"] == [-1, EPERM]
    assert res["capset"] == [-1, EPERM]
    assert res["capbset"] == BOUNDING

    # With user namespaces enabled, uid 0 inside maps to an unprivileged host uid.
    uid_map = res["uid_map"]
    if uid_map != [[0, 0, 4294967295]]:
        host_uid = None
        for inside, outside, count in uid_map:
            if inside <= 0 < inside + count:
                host_uid = outside - inside
        assert host_uid is not None and host_uid != 0, uid_map

    # the hostname did not change
    rc, before = run(sandbox, "hostname")
    assert rc == 0 and before.strip() != "atoll-evil"


# --------------------------------------------------------------------------
# 3. Seccomp

SECCOMP_PROBE = r'''
import ctypes, json, os, signal, struct, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def arg(a):
    if a is None:
        return ctypes.c_void_p(0)
    if isinstance(a, bytes):
        return ctypes.c_char_p(a)
    if isinstance(a, int):
        return ctypes.c_long(a)
    return a

def sc(nr, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[arg(a) for a in args])
    return [ret, ctypes.get_errno()]

r = {}
os.makedirs("/tmp/atoll-mnt", exist_ok=True)
r["mount"] = sc(165, b"tmpfs", b"/tmp/atoll-mnt", b"tmpfs", 0, None)
r["umount2"] = sc(166, b"/proc/timer_list", 2)  # MNT_DETACH: try to unmask
r["unshare_newuser"] = sc(272, 0x10000000)
res = sc(56, 0x10000000 | 17, 0, None, None, 0)  # clone(CLONE_NEWUSER|SIGCHLD)
if res[0] == 0:
    os._exit(0)
if res[0] > 0:
    os.waitpid(res[0], 0)
r["clone_newuser"] = res
r["keyctl"] = sc(250, 0, -3, 1)  # KEYCTL_GET_KEYRING_ID, session keyring, create
r["add_key"] = sc(248, b"user", b"atoll-probe", b"x", 1, -2)
r["request_key"] = sc(249, b"user", b"atoll-probe", None, 0)
battr = ctypes.create_string_buffer(128)
r["bpf"] = sc(321, 0, battr, 128)  # BPF_MAP_CREATE
pattr = ctypes.create_string_buffer(128)
struct.pack_into("<IIQ", pattr, 0, 1, 128, 0)  # PERF_TYPE_SOFTWARE, size, CPU_CLOCK
struct.pack_into("<Q", pattr, 40, (1 << 0) | (1 << 5) | (1 << 6))  # disabled, exclude_kernel, exclude_hv
res = sc(298, pattr, 0, -1, -1, 0)
if res[0] >= 0:
    os.close(res[0])
r["perf_event_open"] = res
rfd, wfd = os.pipe()
child = os.fork()
if child == 0:  # PTRACE_TRACEME in a child that exits at once, so nothing can hang
    os.write(wfd, json.dumps(sc(101, 0, 0, None, None)).encode())
    os._exit(0)
os.close(wfd)
r["ptrace_traceme"] = json.loads(os.read(rfd, 100))
os.waitpid(child, 0)
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
res = sc(101, 16, child, None, None)  # PTRACE_ATTACH own child
r["ptrace_attach_child"] = res
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
res = sc(101, 16, 1, None, None)  # PTRACE_ATTACH pid 1
if res[0] == 0:
    sc(101, 17, 1, None, None)  # PTRACE_DETACH
r["ptrace_attach_pid1"] = res
r["kexec_load"] = sc(246, 0, 0, None, 0)
r["kexec_file_load"] = sc(320, -1, -1, 0, None, 0)
handle = ctypes.create_string_buffer(8 + 128)
struct.pack_into("<Ii", handle, 0, 128, 0)
mount_id = ctypes.c_int(0)
rootfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
sc(303, rootfd, b"etc", handle, ctypes.byref(mount_id), 0)  # name_to_handle_at
r["open_by_handle_at"] = sc(304, rootfd, handle, os.O_RDONLY)
r["swapon"] = sc(167, b"/tmp/atoll-noswap", 0)
r["swapoff"] = sc(168, b"/tmp/atoll-noswap")
r["reboot"] = sc(169, 0xfee1dead, 672274793, 0, None)  # LINUX_REBOOT_CMD_CAD_OFF
r["init_module"] = sc(175, None, 0, b"")
r["finit_module"] = sc(313, -1, b"", 0)
r["delete_module"] = sc(176, b"atoll_probe_nonexistent", 0)
nsfd = os.open("/proc/self/ns/uts", os.O_RDONLY)
r["setns"] = sc(308, nsfd, 0)
r["pivot_root"] = sc(155, b"/tmp", b"/tmp")
r["syslog"] = sc(103, 10, None, 0)  # SYSLOG_ACTION_SIZE_BUFFER
res = sc(323, 0)
if res[0] >= 0:
    os.close(res[0])
r["userfaultfd"] = res

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

src = ctypes.create_string_buffer(b"atoll-secret", 16)
dst = ctypes.create_string_buffer(16)
liov = iovec(ctypes.cast(dst, ctypes.c_void_p), 16)
riov = iovec(ctypes.cast(src, ctypes.c_void_p), 16)
r["process_vm_readv"] = sc(310, os.getpid(), ctypes.byref(liov), 1, ctypes.byref(riov), 1, 0)
print("RESULT " + json.dumps(r))
'''

DENIED_SYSCALLS = [
    "mount", "umount2", "unshare_newuser", "clone_newuser", "keyctl", "add_key",
    "request_key", "bpf", "perf_event_open", "ptrace_traceme", "ptrace_attach_child",
    "ptrace_attach_pid1", "kexec_load", "kexec_file_load", "open_by_handle_at",
    "swapon", "swapoff", "reboot", "init_module", "finit_module", "delete_module",
    "setns", "pivot_root", "syslog", "userfaultfd", "process_vm_readv",
]


def test_item03_seccomp_denies_dangerous_syscalls_with_eperm(sandbox):
    rc, out = run(sandbox, "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
    assert rc == 0, out
    assert out.splitlines() == ["NoNewPrivs:\t0", "Seccomp:\t2"]
    rc, out = run(sandbox, "sudo -n grep -E '^Seccomp:' /proc/self/status")
    assert (rc, out.strip()) == (0, "Seccomp:\t2")
    rc, out = run(sandbox, "grep -E '^Seccomp:' /proc/1/status")
    assert (rc, out.strip()) == (0, "Seccomp:\t2")

    for sudo in (False, True):
        res = run_py(sandbox, SECCOMP_PROBE, sudo=sudo)
        who = "root" if sudo else "daytona"
        wrong = {k: v for k, v in res.items() if v != [-1, EPERM]}
        assert sorted(res) == sorted(DENIED_SYSCALLS)
        assert wrong == {}, f"as {who}, these did not fail with EPERM: {wrong}"

    # nothing got mounted and no key was added
    rc, out = run(sandbox, "grep -c ' /tmp/atoll-mnt ' /proc/self/mountinfo; true")
    assert out.strip() == "0"


# --------------------------------------------------------------------------
# 4. Masked paths


def test_item04_masked_paths_read_empty(sandbox):
    res = run_py(sandbox, MOUNTINFO_PY + f"MASKED = {MASKED!r}\n" + r'''
import json, os, stat
r = {"paths": {}}
for p in MASKED:
    try:
        st = os.stat(p)
    except FileNotFoundError:
        r["paths"][p] = None
        continue
    with open(p, "rb") as f:
        data = f.read(4096)
    r["paths"][p] = {
        "type": "chr" if stat.S_ISCHR(st.st_mode) else oct(stat.S_IFMT(st.st_mode)),
        "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
        "len": len(data),
    }
r["firmware"] = sorted(os.listdir("/sys/firmware"))
fw = [m for m in mounts() if m["mp"] == "/sys/firmware"]
r["firmware_mounts"] = [{"fstype": m["fstype"], "ro": "ro" in m["opts"]} for m in fw]
try:
    open("/sys/firmware/atoll-probe", "w").close()
    r["firmware_write"] = 0
except OSError as e:
    r["firmware_write"] = e.errno
print("RESULT " + json.dumps(r))
''', sudo=True)

    for p in MASKED:
        got = res["paths"][p]
        if got is None:
            # absent inside only because this kernel has no such file
            assert not os.path.exists(p), f"{p} exists on the host but is absent in the sandbox"
        else:
            assert got == {"type": "chr", "rdev": [1, 3], "len": 0}, (p, got)
    assert any(res["paths"][p] is not None for p in MASKED)

    assert res["firmware"] == []
    assert res["firmware_mounts"] and res["firmware_mounts"][-1] == {"fstype": "tmpfs", "ro": True}
    assert res["firmware_write"] == EROFS

    # the user-visible outcome
    rc, out = run(sandbox, "sudo -n cat /proc/keys /proc/timer_list | wc -c")
    assert (rc, out.strip()) == (0, "0")


# --------------------------------------------------------------------------
# 5. Read-only paths


def test_item05_kernel_interfaces_are_read_only(sandbox):
    res = run_py(sandbox, MOUNTINFO_PY + r'''
import json, os
r = {"exists": {}, "ro_mount": {}, "open": {}}
ms = mounts()
for p in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/sys"]:
    r["exists"][p] = os.path.exists(p)
    over = [m for m in ms if m["mp"] == p]
    r["ro_mount"][p] = bool(over) and "ro" in over[-1]["opts"]

def first_file(root):
    for d, _, files in os.walk(root):
        for f in sorted(files):
            return os.path.join(d, f)

targets = [
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/hostname",
    "/proc/sys/vm/drop_caches",
    "/proc/sysrq-trigger",
    "/proc/irq/default_smp_affinity",
    first_file("/proc/bus"),
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/kernel/profiling",
    "/sys/power/state",
]
for t in targets:
    if t is None or not os.path.exists(t):
        continue
    try:
        fd = os.open(t, os.O_WRONLY)  # opening is enough; nothing is written
        os.close(fd)
        r["open"][t] = 0
    except OSError as e:
        r["open"][t] = e.errno
try:
    os.mkdir("/sys/atoll-probe")
    r["mkdir_sys"] = 0
except OSError as e:
    r["mkdir_sys"] = e.errno
print("RESULT " + json.dumps(r))
''', sudo=True)

    for p, exists in res["exists"].items():
        # /proc entries come from the shared kernel: present inside iff on the host
        assert exists == os.path.exists(p), p
        if exists:
            assert res["ro_mount"][p], f"{p} is not a read-only mount"
    assert res["exists"]["/proc/sys"] and res["exists"]["/sys"]
    assert res["open"], "no write target found"
    assert any(t.startswith("/proc/sys/") for t in res["open"])
    assert any(t.startswith("/sys/") for t in res["open"])
    # Read-only mounts (checked above); files owned by the host's root are
    # also unmapped in the sandbox's user namespace, which the kernel may
    # report first (EACCES).
    assert all(e in (EROFS, EACCES) for e in res["open"].values()), res["open"]
    assert res["mkdir_sys"] in (EROFS, EACCES)

    # the user-visible outcome, exact message of coreutils
    rc, out = run(sandbox, "sudo -n mkdir /sys/atoll-probe")
    assert rc == 1
    assert out.strip().replace("\u2018", "'").replace("\u2019", "'") == "mkdir: cannot create directory '/sys/atoll-probe': Read-only file system"
    rc, out = run(sandbox, "sudo -n sh -c 'cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern'")
    assert rc != 0
    assert "Read-only file system" in out


# --------------------------------------------------------------------------
# 6. Devices


def test_item06_only_minimal_devices_and_no_mknod(sandbox):
    res = run_py(sandbox, r'''
import json, os, stat
r = {"dev": {}, "pts": {}, "other": []}
for name in sorted(os.listdir("/dev")):
    p = "/dev/" + name
    st = os.lstat(p)
    if stat.S_ISCHR(st.st_mode):
        r["dev"][name] = ["chr", os.major(st.st_rdev), os.minor(st.st_rdev)]
    elif stat.S_ISBLK(st.st_mode):
        r["dev"][name] = ["blk", os.major(st.st_rdev), os.minor(st.st_rdev)]
    elif stat.S_ISLNK(st.st_mode):
        r["dev"][name] = ["lnk", os.readlink(p)]
    elif stat.S_ISDIR(st.st_mode):
        r["dev"][name] = ["dir"]
    else:
        r["dev"][name] = ["other", oct(st.st_mode)]
for name in sorted(os.listdir("/dev/pts")):
    st = os.lstat("/dev/pts/" + name)
    r["pts"][name] = [stat.S_ISCHR(st.st_mode), os.major(st.st_rdev)]
# device nodes anywhere else in the sandbox's filesystem
for d, dirs, files in os.walk("/"):
    if d == "/":
        dirs[:] = [x for x in dirs if x not in ("proc", "sys", "dev")]
    for f in files:
        p = os.path.join(d, f)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            r["other"].append(p)
r["exists"] = {p: os.path.exists(p) for p in ["/dev/kvm", "/dev/mem", "/dev/kmem", "/dev/port", "/dev/net/tun"]}
try:
    os.mknod("/tmp/atoll-null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    r["mknod_chr"] = 0
except OSError as e:
    r["mknod_chr"] = e.errno
try:
    os.mknod("/tmp/atoll-sda", 0o666 | stat.S_IFBLK, os.makedev(8, 0))
    r["mknod_blk"] = 0
except OSError as e:
    r["mknod_blk"] = e.errno
print("RESULT " + json.dumps(r))
''', sudo=True)

    dev = res["dev"]
    expected_names = set(CHAR_DEVICES) | {"pts", "shm"} | set(DEV_SYMLINKS)
    assert set(dev) == expected_names, f"unexpected /dev entries: {sorted(set(dev) ^ expected_names)}"
    for name, (major, minor) in CHAR_DEVICES.items():
        if name == "ptmx" and dev[name] == ["lnk", "pts/ptmx"]:
            continue  # the devpts-instance form of ptmx is equally fine
        assert dev[name] == ["chr", major, minor], (name, dev[name])
    for name, target in DEV_SYMLINKS.items():
        assert dev[name] == ["lnk", target], (name, dev[name])
    assert dev["pts"] == ["dir"] and dev["shm"] == ["dir"]
    for name, (is_chr, major) in res["pts"].items():
        if name == "ptmx":
            assert (is_chr, major) == (True, 5)
        else:
            assert name.isdigit() and (is_chr, major) == (True, 136), (name, is_chr, major)
    assert res["other"] == []
    assert res["exists"] == {p: False for p in res["exists"]}
    assert res["mknod_chr"] == EPERM
    assert res["mknod_blk"] == EPERM

    rc, out = run(sandbox, "sudo -n mknod /tmp/x c 1 3")
    assert rc == 1
    assert out.strip() == "mknod: /tmp/x: Operation not permitted"
    rc, out = run(sandbox, "test -e /tmp/x; echo $?")
    assert out.strip() == "1"


# --------------------------------------------------------------------------
# 7. Fork bomb

FORK_BOMB = """\
mkfifo /tmp/fb.fifo
bomb() { bomb | bomb & }
bomb
read x < /tmp/fb.fifo
"""


def test_item07_fork_bomb_is_contained(server, daytona):
    sb = daytona.create()
    try:
        pids_dir = sandbox_cgroup(server, "pids", sb.id)
        assert read_host(os.path.join(pids_dir, "pids.max")) == "512"

        put_file(sb, "/tmp/fb.sh", FORK_BOMB)
        result = {}

        def detonate():
            try:
                result["r"] = run(sb, "timeout -s KILL 10 sh /tmp/fb.sh >/dev/null 2>&1; echo rc=$?", timeout=60)
            except Exception as e:  # noqa: BLE001 - reported below
                result["e"] = e

        t = threading.Thread(target=detonate, daemon=True)
        t.start()
        # while the bomb runs: the pids cgroup is at its limit, the host and API respond
        wait_until(lambda: keyed(read_host(os.path.join(pids_dir, "pids.events"))).get("max", 0) > 0,
                   timeout=9, interval=0.2, what="pids.events max > 0")
        assert int(read_host(os.path.join(pids_dir, "pids.current"))) <= 512
        t0 = time.monotonic()
        assert subprocess.run(["true"], timeout=10).returncode == 0
        status, _, body = server.http("GET", f"/api/sandbox/{sb.id}")
        assert status == 200, body
        assert time.monotonic() - t0 < 10

        t.join(90)
        assert not t.is_alive(), "exec of the fork bomb never returned"
        assert "e" not in result, result.get("e")
        rc, out = result["r"]
        assert rc == 0
        # timeout(1) kills the bomb's process group with SIGKILL (and itself: 137)
        assert out.strip().splitlines()[-1] in ("rc=137", "rc=124"), out

        # every bomb process is gone (the daemon, as PID 1, reaped the orphans)
        wait_until(lambda: int(read_host(os.path.join(pids_dir, "pids.current"))) < 32,
                   timeout=30, what="pids.current to drop after the bomb")

        def alive():
            r = sb.process.exec("echo alive", timeout=30)
            return (r.exit_code, r.result.strip()) == (0, "alive")

        wait_until(alive, timeout=30, what="`echo alive` to work after the bomb")
        assert sb.fs.get_file_info("/tmp/fb.sh").size == len(FORK_BOMB)

        sb.stop(timeout=60)
        assert sb.state == "stopped"
        sb.delete(timeout=60, wait=True)
        status, _, body = server.http("GET", f"/api/sandbox/{sb.id}")
        assert status == 404 or (status == 200 and json.loads(body)["state"] == "destroyed"), (status, body)
    finally:
        delete_quietly(sb)


# --------------------------------------------------------------------------
# 8. Memory


def test_item08_memory_limit_oom_kills_inside(server, sandbox):
    assert sandbox.memory == 1
    limit = sandbox.memory * 1024**3
    mem_dir = sandbox_cgroup(server, "memory", sandbox.id)
    if cgroup_v2():
        assert read_host(os.path.join(mem_dir, "memory.max")) == str(limit)
        assert read_host(os.path.join(mem_dir, "memory.swap.max")) == "0"
    else:
        assert read_host(os.path.join(mem_dir, "memory.limit_in_bytes")) == str(limit)
        memsw = os.path.join(mem_dir, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            assert read_host(memsw) == str(limit)  # memory+swap == memory: swap 0

    rc, out = run(sandbox, "cut -d' ' -f22 /proc/1/stat; cat /proc/1/oom_score_adj /proc/self/oom_score_adj")
    assert rc == 0, out
    start1, adj1, adj_self = out.split()
    # The daemon must rank below every user process for the OOM killer:
    # -1000 where the host grants CAP_SYS_RESOURCE, otherwise user
    # processes are started with a higher score than the daemon's.
    assert int(adj1) < int(adj_self), "the daemon is not protected with oom_score_adj"
    assert int(adj_self) >= 0, "user processes inherited the daemon's oom protection"

    r = sandbox.process.exec('python3 -c "b=bytearray(3*1024**3)"', timeout=120)
    assert r.exit_code == 137, r.result
    assert "MemoryError" not in (r.result or "")

    if cgroup_v2():
        events = keyed(read_host(os.path.join(mem_dir, "memory.events")))
    else:
        events = keyed(read_host(os.path.join(mem_dir, "memory.oom_control")))
    assert events.get("oom_kill", 0) >= 1, events

    # the daemon survived: same PID 1, still answering
    rc, out = run(sandbox, "cut -d' ' -f22 /proc/1/stat")
    assert (rc, out.strip()) == (0, start1)
    r = sandbox.process.exec("echo alive")
    assert (r.exit_code, r.result.strip()) == (0, "alive")


# --------------------------------------------------------------------------
# 9. Disk


def test_item09_disk_quota_gives_enospc_and_spares_the_host(server, sandbox):
    """Writing past the sandbox's disk (3 GiB by default) fails with ENOSPC
    inside, as root too; the host loses at most the quota."""
    quota = sandbox.disk * 1024**3
    host_free_before = shutil.disk_usage(data_dir(server)).free
    rc, out = run(sandbox, "sudo -n dd if=/dev/zero of=/home/daytona/fill bs=4M count=2000 2>&1; echo rc=$?", timeout=300)
    assert "No space left on device" in out, out
    assert out.strip().endswith("rc=1"), out
    host_free_during = shutil.disk_usage(data_dir(server)).free
    lost = host_free_before - host_free_during
    assert lost <= quota + (64 << 20), f"the host lost {lost >> 20} MiB for a {quota >> 20} MiB quota"
    # df inside shows the sandbox's own disk, not the host's
    rc, out = run(sandbox, "df -B1 --output=size / | tail -1")
    assert rc == 0 and abs(int(out.strip()) - quota) < quota // 10, out
    # freeing space makes the sandbox usable again
    rc, out = run(sandbox, "rm -f /home/daytona/fill && echo ok > /home/daytona/after && cat /home/daytona/after")
    assert (rc, out.strip()) == (0, "ok"), out


# --------------------------------------------------------------------------
# 11. Host filesystem


def test_item11_host_filesystem_is_invisible(server, sandbox):
    ddir = data_dir(server)
    dd_st = os.stat(ddir)
    data_dev = f"{os.major(dd_st.st_dev)}:{os.minor(dd_st.st_dev)}"

    res = run_py(sandbox, MOUNTINFO_PY + r'''
import json
print("RESULT " + json.dumps(mounts()))
''')
    allowed = {
        "/": {"overlay"},
        "/proc": {"proc"},
        "/dev": {"tmpfs"},
        "/dev/pts": {"devpts"},
        "/dev/shm": {"tmpfs"},
        "/sys": {"sysfs"},
    }
    for p in MASKED_DIRS:
        allowed[p] = {"tmpfs"}
    for name in CHAR_DEVICES:
        allowed["/dev/" + name] = {"devtmpfs", "tmpfs", "devpts"}
    for p in MASKED:
        allowed[p] = {"devtmpfs", "tmpfs"}
    for p in READ_ONLY_PROC:
        allowed[p] = {"proc"}
    assert "/" in [m["mp"] for m in res]
    for m in res:
        mp = m["mp"]
        assert mp in allowed, f"unexpected mount in the sandbox: {m}"
        assert m["fstype"] in allowed[mp], f"unexpected filesystem for {mp}: {m}"
        assert m["dev"] != data_dev, f"{mp} exposes the host's data dir filesystem: {m}"
    assert [m for m in res if m["mp"] == "/"][0]["fstype"] == "overlay"
    # No daemon binary, socket or config is reachable by path inside.
    rc, out = run(sandbox, "ls -A /.atoll 2>/dev/null | wc -l")
    assert out.strip() == "0", out

    # CVE-2019-5736: the daemon binary (a sealed in-memory copy, reachable
    # only as /proc/1/exe) cannot be written
    rc, before = run(sandbox, "sudo -n sha256sum /proc/1/exe")
    assert rc == 0, before
    rc, out = run(sandbox, "sudo -n readlink /proc/1/exe")
    assert out.strip() == "/memfd:atoll-daemon (deleted)", out
    w = run_py(sandbox, r'''
import json, os
r = {}
for p in ["/proc/1/exe"]:
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.close(fd)
        r[p] = 0
    except OSError as e:
        r[p] = e.errno
print("RESULT " + json.dumps(r))
''', sudo=True)
    assert w["/proc/1/exe"] in (EROFS, ETXTBSY, EACCES, EPERM), w
    rc, after = run(sandbox, "sudo -n sha256sum /proc/1/exe")
    assert after == before

    # CVE-2024-21626: a fresh process holds only stdio (+ ls's own dirfd)
    rc, out = run(sandbox, "ls /proc/self/fd")
    assert rc == 0
    assert out.split() == ["0", "1", "2", "3"]
    fds = run_py(sandbox, r'''
import json, os
out = []
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    except OSError:
        pass
print("RESULT " + json.dumps(out))
''', sudo=True)
    leaked = [t for t in fds if t.startswith(ddir) or "/sys/fs/cgroup" in t or t.startswith("(unreachable)")]
    assert leaked == [], leaked

    # /proc/1/root is the sandbox's own root, not the host's
    marker = f"atoll-host-marker-{uuid.uuid4().hex}"
    host_marker = os.path.join("/tmp", marker)
    with open(host_marker, "w") as f:
        f.write("host")
    try:
        rc, out = run(sandbox, "hostname")
        sb_hostname = out.strip()
        rc, etc_hostname = run(sandbox, "cat /etc/hostname")
        rc, root_hostname = run(sandbox, "sudo -n cat /proc/1/root/etc/hostname")
        assert rc == 0, root_hostname
        with open("/etc/hostname") as f:
            host_hostname = f.read().strip()
        assert root_hostname.strip() == etc_hostname.strip() == sb_hostname
        assert root_hostname.strip() != host_hostname
        rc, out = run(sandbox, "sudo -n readlink /proc/1/root")
        assert (rc, out.strip()) == (0, "/")
        put_file(sandbox, "/tmp/atoll-sandbox-marker", "sandbox")
        rc, out = run(sandbox, "sudo -n cat /proc/1/root/tmp/atoll-sandbox-marker")
        assert (rc, out.strip()) == (0, "sandbox")

        # the host's files are nowhere inside
        rc, out = run(sandbox, f"test -e /tmp/{marker}; echo $?; test -e {ddir}; echo $?")
        assert out.split() == ["1", "1"]
        rc, out = run(
            sandbox,
            f"sudo -n find / \\( -path /proc -o -path /sys \\) -prune -o -name {marker} -print 2>/dev/null; echo done",
            timeout=300,
        )
        assert out.strip().splitlines() == ["done"], out
    finally:
        os.unlink(host_marker)


# --------------------------------------------------------------------------
# 13. Other sandboxes

LISTENER = """\
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\\0" + sys.argv[1])
s.listen(16)
open("/tmp/" + sys.argv[1] + ".ready", "w").close()
while True:
    c, _ = s.accept()
    c.sendall(b"A")
    c.close()
"""


def test_item13_other_sandboxes_are_invisible(daytona, sandbox):
    a = sandbox
    b = daytona.create()
    try:
        tag = uuid.uuid4().hex[:12]
        sock_name = f"atoll-sock-{tag}"
        shm_key = int(tag[:7], 16) + 1

        # A: a background process, a /dev/shm file, a SysV segment, an abstract socket, a file
        rc, out = run(a, "nohup sleep 1234 >/dev/null 2>&1 &")
        assert rc == 0, out
        rc, out = run(a, f"echo secret > /dev/shm/atoll-shm-{tag} && echo secret > /tmp/atoll-a-{tag}")
        assert rc == 0, out
        seg = run_py(a, f"""
            import ctypes, json
            libc = ctypes.CDLL(None, use_errno=True)
            shmid = libc.shmget({shm_key}, 4096, 0o1000 | 0o600)  # IPC_CREAT
            print("RESULT " + json.dumps([shmid, ctypes.get_errno()]))
        """)
        assert seg[0] >= 0, seg
        put_file(a, "/tmp/listen.py", LISTENER)
        rc, out = run(a, f"nohup python3 /tmp/listen.py {sock_name} >/dev/null 2>&1 &")
        assert rc == 0, out
        rc, out = run(a, f"for i in $(seq 100); do test -e /tmp/{sock_name}.ready && break; sleep 0.1; done; "
                         f"test -e /tmp/{sock_name}.ready && echo ready")
        assert out.strip() == "ready", out

        connect = f"""
            import json, socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect("\\0{sock_name}")
                r = {{"ok": True, "data": s.recv(1).decode()}}
            except OSError as e:
                r = {{"ok": False, "errno": e.errno}}
            print("RESULT " + json.dumps(r))
        """
        sysv = f"""
            import json
            keys = [int(l.split()[0]) for l in open("/proc/sysvipc/shm").read().splitlines()[1:]]
            print("RESULT " + json.dumps({shm_key} in keys))
        """
        procs = """
            import json, os
            cmds = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        cmds.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip())
                    except OSError:
                        pass
            print("RESULT " + json.dumps(cmds))
        """

        # positive controls in A
        rc, out = run(a, "ps -eo args")
        assert "sleep 1234" in out.splitlines(), out
        assert "sleep 1234" in run_py(a, procs)
        rc, out = run(a, "ls -A /dev/shm")
        assert f"atoll-shm-{tag}" in out.split()
        assert run_py(a, sysv) is True
        assert run_py(a, connect) == {"ok": True, "data": "A"}

        # B sees none of it
        rc, out = run(b, "ps -eo args")
        assert rc == 0, out
        assert "sleep 1234" not in out.splitlines(), out
        assert "sleep 1234" not in run_py(b, procs)
        assert not any(sock_name in c for c in run_py(b, procs))
        rc, out = run(b, "ls -A /dev/shm")
        assert f"atoll-shm-{tag}" not in out.split()
        rc, out = run(b, f"test -e /dev/shm/atoll-shm-{tag}; echo $?; test -e /tmp/atoll-a-{tag}; echo $?")
        assert out.split() == ["1", "1"]
        assert run_py(b, sysv) is False
        assert run_py(b, connect) == {"ok": False, "errno": ECONNREFUSED}
        assert run_py(b, connect, sudo=True) == {"ok": False, "errno": ECONNREFUSED}
    finally:
        delete_quietly(b)
