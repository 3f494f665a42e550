"""The SSH gateway (`atoll serve --ssh-listen`) driven by the real OpenSSH
client: `ssh <token>@host` lands in a login shell as the sandbox user with
a real PTY (window size, exit code), `ssh host cmd` runs one command with
stdin, stdout and stderr apart and binary-clean, `scp` and `sftp` move
files, `-L` reaches a port inside the sandbox, and a bad, revoked or other
sandbox's token gets nowhere."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import socket
import struct
import subprocess
import tempfile
import termios
import time
import urllib.request

import pytest

from conftest import running_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ssh_server(atoll_bin, images_dir):
    port = free_port()
    with running_server(atoll_bin, images_dir, env={"ATOLL_SSH_LISTEN": f"127.0.0.1:{port}"}) as srv:
        srv.ssh_port = port
        yield srv


@pytest.fixture(scope="module")
def box(ssh_server):
    client = ssh_server.client()
    sb = client.create()
    access = sb.create_ssh_access(expires_in_minutes=30)
    yield sb, access.token
    sb.delete()


def ssh_argv(srv, token: str, *extra: str) -> list[str]:
    return [
        "ssh", "-p", str(srv.ssh_port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "PubkeyAuthentication=no",
        "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
        "-o", "ConnectTimeout=10", *extra, f"{token}@127.0.0.1",
    ]


def ssh(srv, token, command, stdin: bytes | None = None, extra=()):
    return subprocess.run(ssh_argv(srv, token, *extra) + [command], input=stdin,
                          capture_output=True, timeout=60)


def test_the_ssh_command_the_api_hands_out_names_the_gateway(ssh_server, box):
    sb, _ = box
    access = sb.create_ssh_access(expires_in_minutes=5)
    assert f"-p {ssh_server.ssh_port} " in access.ssh_command
    assert access.ssh_command.endswith(f"{access.token}@127.0.0.1")


def test_a_command_runs_with_stdin_stdout_stderr_apart_and_its_exit_code(ssh_server, box):
    _, token = box
    r = ssh(ssh_server, token, "echo out; echo err >&2; id -un; pwd; exit 7")
    assert r.returncode == 7, r
    assert r.stdout == b"out\ndaytona\n/home/daytona\n", r
    assert r.stderr == b"err\n", r
    # Binary-clean both ways: 1 MiB of random bytes through cat.
    blob = os.urandom(1 << 20)
    r = ssh(ssh_server, token, "cat", stdin=blob)
    assert r.returncode == 0 and r.stdout == blob, (r.returncode, len(r.stdout), r.stderr)
    # stdin ends (EOF) where the client's does.
    r = ssh(ssh_server, token, "wc -c", stdin=b"12345")
    assert r.stdout.strip() == b"5", r
    # No PTY for a plain command.
    r = ssh(ssh_server, token, "test -t 0 && echo tty || echo notty")
    assert r.stdout == b"notty\n", r


def read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if needle in seen:
                return seen
    raise AssertionError(f"{needle!r} not seen in {seen[-800:]!r}")


def test_an_interactive_login_shell_has_a_real_terminal(ssh_server, box):
    _, token = box
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.execvp("ssh", ssh_argv(ssh_server, token, "-tt"))
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.write(fd, b"echo $((6*7))-$(id -un)-$(tty | cut -c1-9)\n")
        read_until(fd, b"42-daytona-/dev/pts/")
        os.write(fd, b"stty size\n")
        read_until(fd, b"30 100")
        # A window change reaches the terminal.
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        os.kill(pid, 28)  # SIGWINCH
        time.sleep(0.5)
        os.write(fd, b"stty size\n")
        read_until(fd, b"50 132")
        # Ctrl-C interrupts the foreground command, not the shell.
        os.write(fd, b"sleep 100\n")
        time.sleep(0.5)
        os.write(fd, b"\x03")
        os.write(fd, b"echo after-$((1+1))\n")
        read_until(fd, b"after-2")
        os.write(fd, b"exit 3\n")
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 3
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.close(fd)


def test_ssh_t_runs_a_command_on_a_terminal(ssh_server, box):
    _, token = box
    r = ssh(ssh_server, token, "tty; exit 4", extra=("-tt",))
    assert r.returncode == 4, r
    assert b"/dev/pts/" in r.stdout, r


def test_scp_and_sftp_move_files_both_ways(ssh_server, box):
    sb, token = box
    opts = ["-P", str(ssh_server.ssh_port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "PubkeyAuthentication=no"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "up.bin")
        data = os.urandom(3 << 20)
        with open(src, "wb") as f:
            f.write(data)
        r = subprocess.run(["scp", *opts, src, f"{token}@127.0.0.1:/home/daytona/up.bin"],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r
        got = sb.process.exec("sha256sum /home/daytona/up.bin; stat -c %U /home/daytona/up.bin").result.split()
        assert got[0] == hashlib.sha256(data).hexdigest() and got[-1] == "daytona", got
        back = os.path.join(tmp, "back.bin")
        r = subprocess.run(["scp", *opts, f"{token}@127.0.0.1:/home/daytona/up.bin", back],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r
        assert open(back, "rb").read() == data
        batch = os.path.join(tmp, "batch")
        with open(batch, "w") as f:
            f.write("mkdir /home/daytona/from-sftp\nput %s /home/daytona/from-sftp/x\nls /home/daytona/from-sftp\n" % src)
        r = subprocess.run(["sftp", *opts, "-b", batch, f"{token}@127.0.0.1"], capture_output=True, timeout=60)
        assert r.returncode == 0, r
        assert b"from-sftp/x" in r.stdout, r
        assert sb.process.exec("stat -c %s /home/daytona/from-sftp/x").result.strip() == str(len(data))


def test_local_forwarding_reaches_a_port_inside_the_sandbox(ssh_server, box):
    sb, token = box
    sb.process.exec("mkdir -p /tmp/www && echo forwarded-ok > /tmp/www/index.html")
    sb.process.exec("cd /tmp/www && nohup python3 -m http.server 8123 >/dev/null 2>&1 &")
    local = free_port()
    fwd = subprocess.Popen(ssh_argv(ssh_server, token, "-N", "-L", f"{local}:localhost:8123"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = b""
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=5).read()
                break
            except OSError:
                time.sleep(0.3)
        assert body == b"forwarded-ok\n", body
    finally:
        fwd.kill()
        fwd.wait()
    # Only the sandbox's own loopback: not other hosts through it.
    other = free_port()
    fwd = subprocess.Popen(ssh_argv(ssh_server, token, "-N", "-L", f"{other}:169.254.169.254:80"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{other}/", timeout=5).read()
    finally:
        fwd.kill()
        fwd.wait()


def test_bad_revoked_and_foreign_tokens_get_nowhere(ssh_server, box):
    sb, token = box
    r = ssh(ssh_server, "0" * 48, "true")
    assert r.returncode == 255 and b"Permission denied" in r.stderr, r
    # A token leads to its own sandbox only.
    client = ssh_server.client()
    other = client.create()
    try:
        other_token = other.create_ssh_access(expires_in_minutes=5).token
        mine = ssh(ssh_server, token, "hostname").stdout
        theirs = ssh(ssh_server, other_token, "hostname").stdout
        assert mine.strip() == sb.process.exec("hostname").result.strip().encode()
        assert theirs.strip() == other.process.exec("hostname").result.strip().encode()
        assert mine != theirs
        # Revoked: refused at once. Stopped sandbox: refused.
        other.revoke_ssh_access(other_token)
        r = ssh(ssh_server, other_token, "true")
        assert r.returncode == 255, r
        fresh = other.create_ssh_access(expires_in_minutes=5).token
        other.stop()
        r = ssh(ssh_server, fresh, "true")
        assert r.returncode == 255, r
    finally:
        other.delete()


def test_exec_stream_refuses_a_bad_start_frame(ssh_server, box):
    """The daemon's `/process/exec-stream` (behind the gateway and the CLI)
    answers a malformed or unknown start frame with an error frame and runs
    nothing."""
    import json
    import websocket  # websocket-client, installed by scripts/setup.sh
    sb, _ = box
    url = ssh_server.url.replace("http", "ws", 1) + f"/toolbox/{sb.id}/process/exec-stream"
    headers = [f"Authorization: Bearer {ssh_server.api_key}"]
    for first in ("not json", json.dumps({"command": "touch /tmp/ran", "rm": "-rf"}),
                  json.dumps({"cmd": "touch /tmp/ran"}), json.dumps({"builtin": "sh"}),
                  json.dumps({"command": "touch /tmp/ran", "builtin": "sftp"}), json.dumps({})):
        ws = websocket.create_connection(url, header=headers, timeout=10)
        try:
            ws.send(first)
            reply = json.loads(ws.recv())
            assert reply["type"] == "error" and reply["message"], reply
        finally:
            ws.close()
    assert sb.process.exec("test -e /tmp/ran && echo ran || echo no").result.strip() == "no"
    # A good one runs, and its exit code comes back.
    ws = websocket.create_connection(url, header=headers, timeout=10)
    try:
        ws.send(json.dumps({"command": "echo hi; exit 6"}))
        frames = []
        while True:
            m = ws.recv()
            frames.append(m)
            if isinstance(m, str):
                break
        assert frames[0] == b"\x01hi\n" and json.loads(frames[-1]) == {"type": "exit", "exitCode": 6}, frames
    finally:
        ws.close()


def test_sftp_and_scp_work_in_an_image_without_openssh(ssh_server, atoll_bin, tmp_path):
    """A busybox image has no `sftp-server`: the daemon's built-in SFTP
    server answers instead, as the sandbox user."""
    import json
    import secrets
    from pathlib import Path

    from daytona import CreateSandboxFromSnapshotParams
    from oci_images import busybox_base, oci_archive

    archive = tmp_path / "busybox.tar"
    archive.write_bytes(oci_archive([busybox_base().raw()]))
    name = f"nossh-{secrets.token_hex(3)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYTONA_", "ATOLL_API_"))}
    env.update({"ATOLL_API_URL": ssh_server.api_url, "ATOLL_API_KEY": ssh_server.api_key,
                "ATOLL_CONFIG": str(tmp_path / "none.json"),
                "ATOLL_TLS_CA_FILE": str(Path(ssh_server.data_dir) / "tls" / "ca.pem")})
    p = subprocess.run([str(atoll_bin), "snapshot", "push", str(archive), "--name", name, "-o", "json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and json.loads(p.stdout)["state"] == "active", p
    client = ssh_server.client()
    sb = client.create(CreateSandboxFromSnapshotParams(snapshot=name))
    try:
        assert sb.process.exec("test -e /usr/lib/openssh/sftp-server || echo none").result.strip() == "none"
        token = sb.create_ssh_access(expires_in_minutes=10).token
        opts = ["-P", str(ssh_server.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "PubkeyAuthentication=no"]
        data = os.urandom(3 << 20)
        src = tmp_path / "up.bin"
        src.write_bytes(data)
        r = subprocess.run(["scp", *opts, str(src), f"{token}@127.0.0.1:up.bin"],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r
        got = sb.process.exec("sha256sum /home/daytona/up.bin; stat -c %U /home/daytona/up.bin").result.split()
        assert got[0] == hashlib.sha256(data).hexdigest() and got[-1] == "daytona", got
        back = tmp_path / "back.bin"
        r = subprocess.run(["scp", *opts, f"{token}@127.0.0.1:/home/daytona/up.bin", str(back)],
                           capture_output=True, timeout=60)
        assert r.returncode == 0 and back.read_bytes() == data, r
        batch = tmp_path / "batch"
        batch.write_text(f"mkdir d\nput {src} d/x\nrename d/x d/y\nchmod 600 d/y\nls -l d\n"
                         f"get d/y {tmp_path / 'y'}\nsymlink y d/link\nrm d/y\nrm d/link\nrmdir d\n"
                         "-ls /etc/shadow-missing\n")
        r = subprocess.run(["sftp", *opts, "-b", str(batch), f"{token}@127.0.0.1"],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r
        assert b"-rw-------" in r.stdout and b" d/y" in r.stdout, r.stdout
        assert (tmp_path / "y").read_bytes() == data
        assert sb.process.exec("test -e /home/daytona/d || echo gone").result.strip() == "gone"
        # Only the user's rights: root's files stay out of reach.
        batch.write_text("put /etc/hostname /etc/atoll-sftp-test\n")
        r = subprocess.run(["sftp", *opts, "-b", str(batch), f"{token}@127.0.0.1"],
                           capture_output=True, timeout=60)
        assert r.returncode != 0 and b"ermission denied" in r.stderr + r.stdout, r
    finally:
        client.delete(sb)
