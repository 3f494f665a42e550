#!/usr/bin/env python3
"""SSH benchmark: Atoll's gateway (`atoll serve --ssh-listen`, a token
login into a sandbox) against Debian's OpenSSH server on loopback (a key
login into the host), interleaved in one run, both driven by the OpenSSH
client:

1. `ssh host true`: connect, authenticate, run a command, exit.
2. Connect to first prompt: `ssh -tt host` on a pty until the shell's
   prompt shows.
3. 16 MiB through `ssh host cat > /dev/null` (stdin throughput).

Prints medians, p95 and ratios; asserts nothing.
Usage: bench/ssh_bench.py [--atoll BIN] [--images-dir DIR] [-n 20]
"""
import argparse
import fcntl
import struct
import termios
import os
import pty
import select
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, free_port, pct  # noqa: E402

COMMON = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
          "-o", "LogLevel=ERROR", "-o", "ControlMaster=no", "-o", "ControlPath=none"]


def start_sshd(tmp: str) -> tuple[subprocess.Popen, int, str]:
    """OpenSSH's sshd on 127.0.0.1, root by key only, its own host key."""
    port = free_port()
    host_key = os.path.join(tmp, "host_ed25519")
    client_key = os.path.join(tmp, "client_ed25519")
    for k in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
    auth = os.path.join(tmp, "authorized_keys")
    with open(auth, "w") as f:
        f.write(open(client_key + ".pub").read())
    os.chmod(auth, 0o600)
    cfg = os.path.join(tmp, "sshd_config")
    with open(cfg, "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                f"AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                "StrictModes no\nPidFile none\nPrintMotd no\nPrintLastLog no\n"
                "Subsystem sftp /usr/lib/openssh/sftp-server\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        r = subprocess.run(["ssh", "-p", str(port), "-i", client_key, *COMMON, "root@127.0.0.1", "true"],
                           capture_output=True)
        if r.returncode == 0:
            return proc, port, client_key
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("sshd did not come up")


def timed(argv, stdin=None) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError(f"{argv}: {r.stderr.decode(errors='replace')}")
    return time.perf_counter() - t


def to_prompt(argv, marker: bytes) -> float:
    """Time from spawning `ssh -tt` to the prompt `marker` on its pty."""
    t = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        os.execvp(argv[0], argv)
    seen = b""
    try:
        while time.perf_counter() - t < 30:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
                if marker in seen:
                    return time.perf_counter() - t
        raise RuntimeError(f"no prompt: {seen[-300:]!r}")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=20)
    args = ap.parse_args()
    gw_port = free_port()
    with tempfile.TemporaryDirectory() as tmp, \
            Server(args.atoll, args.images_dir, env={"ATOLL_SSH_LISTEN": f"127.0.0.1:{gw_port}"}) as srv:
        api = Api(srv.port, srv.key)
        sb = api.call("POST", "/api/sandbox", {"autoStopInterval": 0})
        token = api.call("POST", f"/api/sandbox/{sb['id']}/ssh-access?expiresInMinutes=60")["token"]
        sshd, sshd_port, key = start_sshd(tmp)
        try:
            gw = ["ssh", "-p", str(gw_port), *COMMON, "-o", "PubkeyAuthentication=no", f"{token}@127.0.0.1"]
            base = ["ssh", "-p", str(sshd_port), "-i", key, *COMMON, "root@127.0.0.1"]
            # warm both
            timed(gw + ["true"])
            timed(base + ["true"])
            t_gw, t_base, p_gw, p_base = [], [], [], []
            for _ in range(args.n):
                t_gw.append(timed(gw + ["true"]))
                t_base.append(timed(base + ["true"]))
            for _ in range(max(5, args.n // 2)):
                p_gw.append(to_prompt(["ssh", "-tt", *gw[1:]], b"$ "))
                p_base.append(to_prompt(["ssh", "-tt", *base[1:]], b"# "))
            blob = os.urandom(16 << 20)
            c_gw, c_base = [], []
            for _ in range(3):
                c_gw.append(timed(gw + ["cat > /dev/null"], stdin=blob))
                c_base.append(timed(base + ["cat > /dev/null"], stdin=blob))
        finally:
            sshd.kill()
            sshd.wait()
        api.call("DELETE", f"/api/sandbox/{sb['id']}")
    print("ssh host true (connect, auth, run, exit):")
    print(f"  atoll gateway  {fmt_ms(t_gw)}")
    print(f"  OpenSSH sshd   {fmt_ms(t_base)}")
    print(f"  ratio p50 {pct(t_gw, 50) / pct(t_base, 50):.2f}")
    print("connect to first prompt (ssh -tt, login shell):")
    print(f"  atoll gateway  {fmt_ms(p_gw)}")
    print(f"  OpenSSH sshd   {fmt_ms(p_base)}")
    print(f"  ratio p50 {pct(p_gw, 50) / pct(p_base, 50):.2f}")
    mb = 16
    print("16 MiB through ssh host 'cat > /dev/null':")
    print(f"  atoll gateway  {mb / pct(c_gw, 50):8.1f} MB/s")
    print(f"  OpenSSH sshd   {mb / pct(c_base, 50):8.1f} MB/s   ratio {pct(c_base, 50) / pct(c_gw, 50):.2f}")


if __name__ == "__main__":
    main()
