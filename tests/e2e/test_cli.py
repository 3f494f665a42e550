"""The `atoll` CLI against a real server: login (the key checked, stored
0600), sandbox create/list/info/stop/start/delete in table and JSON,
exec with the command's exit code, volumes, and clear errors with
meaningful exit codes."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess

import pytest


@pytest.fixture
def cli(atoll_bin, server, tmp_path):
    config = tmp_path / "atoll" / "config.json"
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("DAYTONA_", "ATOLL_API_"))}
    base_env["ATOLL_CONFIG"] = str(config)

    def run(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([str(atoll_bin), *args], capture_output=True, text=True, timeout=180,
                           env={**base_env, **(env or {})})
        if check:
            assert p.returncode == 0, f"atoll {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    run.config = config
    return run


def read_pty(fd: int, timeout: float = 30) -> bytes:
    """Everything a program on the pty `fd` writes until it ends."""
    import select
    import time
    seen = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_login_create_exec_and_delete(cli, server):
    # Not logged in: a clear message and exit code 1.
    p = cli("sandbox", "list", check=False)
    assert p.returncode == 1 and "not logged in" in p.stderr
    # A wrong key is refused at login, and nothing is stored.
    p = cli("login", "--api-url", server.api_url, "--api-key", "atl_wrong", check=False)
    assert p.returncode == 1 and "401" in p.stderr and not cli.config.exists()
    cli("login", "--api-url", server.api_url, "--api-key", server.api_key)
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    assert json.loads(cli.config.read_text())["apiUrl"] == server.api_url

    name = f"cli-{secrets.token_hex(3)}"
    created = json.loads(cli("sandbox", "create", "--name", name, "--env", "GREETING=hi there",
                             "--label", "team=cli", "-o", "json").stdout)
    assert created["state"] == "started" and created["labels"]["team"] == "cli"
    try:
        table = cli("sandbox", "list").stdout
        assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"]
        assert name in table and "started" in table
        # exec: output on stdout, the command's exit code.
        p = cli("exec", name, "--", "sh", "-c", "echo $GREETING; echo err >&2; exit 3", check=False)
        assert p.returncode == 3, p
        assert "hi there" in p.stdout
        p = cli("exec", name, "--cwd", "/tmp", "--", "pwd")
        assert p.stdout.strip() == "/tmp"
        # Arguments with spaces and quotes arrive as given.
        p = cli("exec", name, "--", "printf", "%s|", "a b", "it's")
        assert p.stdout == "a b|it's|"
        assert json.loads(cli("sandbox", "pause", name, "-o", "json").stdout)["state"] == "paused"
        assert json.loads(cli("sandbox", "start", name, "-o", "json").stdout)["state"] == "started"
        assert json.loads(cli("sandbox", "stop", name, "-o", "json").stdout)["state"] == "stopped"
        archived = json.loads(cli("sandbox", "archive", name, "-o", "json").stdout)
        assert archived["state"] in ("archiving", "archived"), archived
        for _ in range(100):
            if json.loads(cli("sandbox", "info", name, "-o", "json").stdout)["state"] == "archived":
                break
            __import__("time").sleep(0.2)
        else:
            raise AssertionError("never archived")
        assert json.loads(cli("sandbox", "start", name, "-o", "json").stdout)["state"] == "started"
        info = cli("sandbox", "info", created["id"]).stdout
        assert created["id"] in info
    finally:
        cli("sandbox", "delete", name)
    p = cli("sandbox", "info", name, check=False)
    assert p.returncode == 1 and "404" in p.stderr
    # Environment variables beat the stored login.
    p = cli("sandbox", "list", env={"ATOLL_API_KEY": "atl_wrong"}, check=False)
    assert p.returncode == 1 and "401" in p.stderr
    # Bad usage: exit code 2 from the argument parser.
    assert cli("exec", name, check=False).returncode == 2
    cli("logout")
    assert not cli.config.exists()


def test_volumes_from_the_cli(cli, server, tmp_path):
    cli("login", "--api-url", server.api_url, "--api-key", server.api_key)
    name = f"clivol-{secrets.token_hex(3)}"
    vol = json.loads(cli("volume", "create", name, "--size", "1", "-o", "json").stdout)
    assert vol["state"] == "ready" and vol["size"] == 1
    assert name in cli("volume", "list").stdout
    sb = json.loads(cli("sandbox", "create", "--volume", f"{name}:/data", "-o", "json").stdout)
    ro = json.loads(cli("sandbox", "create", "--volume", f"{name}:/data:ro", "-o", "json").stdout)
    try:
        cli("exec", sb["id"], "--", "sh", "-c", "echo shared > /data/f")
        assert cli("exec", ro["id"], "--", "cat", "/data/f").stdout.strip() == "shared"
        assert cli("exec", ro["id"], "--", "touch", "/data/g", check=False).returncode != 0
        p = cli("volume", "delete", name, check=False)
        assert p.returncode == 1 and "in use" in p.stderr
    finally:
        cli("sandbox", "delete", sb["id"])
        cli("sandbox", "delete", ro["id"])
    # Files in and out of the volume with no sandbox at all.
    local = tmp_path / "in.bin"
    blob = os.urandom(2 << 20)
    local.write_bytes(blob)
    cli("volume", "cp", str(local), f"{name}:/sub/in.bin")
    cli("volume", "cp", f"{name}:/sub/in.bin", str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == blob
    assert cli("volume", "cp", f"{name}:/f", str(tmp_path / "f")) and (tmp_path / "f").read_text() == "shared\n"
    p = cli("volume", "cp", f"{name}:/missing", str(tmp_path / "x"), check=False)
    assert p.returncode == 1 and "404" in p.stderr and not (tmp_path / "x").exists()
    cli("volume", "delete", name)
    assert name not in cli("volume", "list").stdout


def test_cp_preview_url_and_snapshots(cli, server, tmp_path):
    cli("login", "--api-url", server.api_url, "--api-key", server.api_key)
    sb = json.loads(cli("sandbox", "create", "-o", "json").stdout)
    try:
        local = tmp_path / "in.bin"
        data = os.urandom(3 << 20)
        local.write_bytes(data)
        cli("cp", str(local), f"{sb['id']}:/home/daytona/in.bin")
        assert cli("exec", sb["id"], "--", "sha256sum", "/home/daytona/in.bin").stdout.split()[0] == \
            __import__("hashlib").sha256(data).hexdigest()
        back = tmp_path / "out.bin"
        cli("cp", f"{sb['id']}:/home/daytona/in.bin", str(back))
        assert back.read_bytes() == data
        p = cli("cp", f"{sb['id']}:/nope", str(tmp_path / "x"), check=False)
        assert p.returncode == 1 and not (tmp_path / "x").exists()
        assert cli("cp", "a", "b", check=False).returncode == 1
        url = json.loads(cli("preview-url", sb["id"], "8080", "-o", "json").stdout)["url"]
        assert sb["id"] in url and "8080" in url
    finally:
        cli("sandbox", "delete", sb["id"])

    from oci_images import Registry, busybox_base, push_image
    registry = Registry()
    try:
        push_image(registry, "cli/base", "1", [busybox_base().raw()])
        name = f"clisnap-{secrets.token_hex(3)}"
        snap = json.loads(cli("snapshot", "create", name, "--image", f"{registry.host}/cli/base:1",
                              "-o", "json").stdout)
        assert snap["state"] == "active"
        assert name in cli("snapshot", "list").stdout
        cli("snapshot", "delete", name)
        assert name not in cli("snapshot", "list").stdout
        p = cli("snapshot", "create", f"bad-{name}", "--image", f"{registry.host}/cli/missing:1", check=False)
        assert p.returncode == 1 and "failed" in p.stderr
    finally:
        registry.stop()


def test_yaml_output_and_shell_completions(cli, server, tmp_path):
    import yaml
    cli("login", "--api-url", server.api_url, "--api-key", server.api_key)
    sb = json.loads(cli("sandbox", "create", "--label", "a=b c", "-o", "json").stdout)
    try:
        doc = yaml.safe_load(cli("sandbox", "info", sb["id"], "-o", "yaml").stdout)
        assert doc["id"] == sb["id"] and doc["labels"] == {"a": "b c"} and doc["state"] == "started"
        listed = yaml.safe_load(cli("sandbox", "list", "-o", "yaml").stdout)
        assert any(s["id"] == sb["id"] for s in listed)
    finally:
        cli("sandbox", "delete", sb["id"])
    script = tmp_path / "atoll.bash"
    script.write_text(cli("completion", "bash").stdout)
    assert "_atoll()" in script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "#compdef atoll" in cli("completion", "zsh").stdout
    assert cli("completion", "tcsh", check=False).returncode == 2


def test_exec_streams_takes_stdin_and_runs_on_a_terminal(cli, server, atoll_bin, tmp_path):
    import fcntl
    import pty
    import struct
    import termios
    import time

    cli("login", "--api-url", server.api_url, "--api-key", server.api_key)
    sb = json.loads(cli("sandbox", "create", "-o", "json").stdout)
    try:
        # stdout and stderr apart, the exit code.
        p = cli("exec", sb["id"], "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
        assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n"), p
        # Output as it comes: the first line long before the command ends.
        env = {**os.environ, "ATOLL_CONFIG": str(cli.config)}
        proc = subprocess.Popen([str(atoll_bin), "exec", sb["id"], "--", "sh", "-c",
                                 "echo first; sleep 3; echo second"],
                                stdout=subprocess.PIPE, env=env)
        t0 = time.time()
        assert proc.stdout.readline() == b"first\n"
        first_after = time.time() - t0
        assert proc.stdout.readline() == b"second\n"
        assert proc.wait(30) == 0
        assert first_after < 2.5, first_after
        # -i: our stdin, binary-clean.
        blob = os.urandom(300_000)
        p = subprocess.run([str(atoll_bin), "exec", "-i", sb["id"], "--", "sha256sum"], input=blob,
                           capture_output=True, env=env, timeout=60)
        assert p.stdout.split()[0].decode() == __import__("hashlib").sha256(blob).hexdigest(), p
        # Without -i the command's stdin is empty.
        p = subprocess.run([str(atoll_bin), "exec", sb["id"], "--", "wc", "-c"], input=b"abc",
                           capture_output=True, env=env, timeout=60)
        assert p.stdout.strip() == b"0", p
        # --timeout kills it.
        p = cli("exec", "--timeout", "1", sb["id"], "--", "sleep", "30", check=False)
        assert p.returncode == 124 and "timeout" in p.stderr, p
        # -t: on a terminal of the local terminal's size; its exit code.
        pid, fd = pty.fork()
        if pid == 0:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 99, 0, 0))
            os.execve(str(atoll_bin), [str(atoll_bin), "exec", "-t", sb["id"], "--", "sh", "-c",
                                       "tty; stty size; exit 4"], env)
        seen = read_pty(fd)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert b"/dev/pts/" in seen and b"33 99" in seen, seen
        assert os.WEXITSTATUS(status) == 4, (status, seen)
    finally:
        cli("sandbox", "delete", sb["id"])


def test_logs_of_a_session_command(cli, server, daytona):
    """`atoll logs --session S --command C`: stdout and stderr apart, whole
    or followed until the command ends; `--build` and the entrypoint's log
    of a sandbox of the default snapshot (its entrypoint prints nothing)."""
    import time
    from daytona import SessionExecuteRequest

    cli("login", "--api-url", server.api_url, "--api-key", server.api_key)
    sb = daytona.create()
    try:
        sb.process.create_session("logs")
        cmd = sb.process.execute_session_command("logs", SessionExecuteRequest(
            command="echo one; echo bad >&2; sleep 2; echo two", run_async=True))
        t0 = time.time()
        p = cli("logs", sb.id, "--session", "logs", "--command", cmd.cmd_id, "-f")
        assert time.time() - t0 > 1.0, "follow returned before the command ended"
        assert (p.stdout, p.stderr) == ("one\ntwo\n", "bad\n"), p
        p = cli("logs", sb.id, "--session", "logs", "--command", cmd.cmd_id)
        assert (p.stdout, p.stderr) == ("one\ntwo\n", "bad\n"), p
        assert json.loads(cli("logs", sb.id, "--session", "logs", "--command", cmd.cmd_id,
                              "-o", "json").stdout)["stderr"] == "bad\n"
        p = cli("logs", sb.id, "--session", "logs", "--command", "nope", check=False)
        assert p.returncode == 1 and "404" in p.stderr, p
        p = cli("logs", sb.id, "--session", "logs", check=False)
        assert p.returncode == 2, p  # --session needs --command
        assert cli("logs", sb.id).stdout == ""
        assert cli("logs", sb.id, "--build", "-f").returncode == 0
    finally:
        daytona.delete(sb)


def test_colour_on_a_terminal_only_and_never_with_no_color(cli, server, atoll_bin):
    import pty

    cli("login", "--api-url", server.api_url, "--api-key", server.api_key)
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update({"ATOLL_CONFIG": str(cli.config), "TERM": "xterm"})

    def on_a_terminal(*args: str, extra: dict | None = None) -> bytes:
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(str(atoll_bin), [str(atoll_bin), *args], {**env, **(extra or {})})
        seen = read_pty(fd)
        os.waitpid(pid, 0)
        os.close(fd)
        return seen

    # A table on a terminal: a bold header, states in colour.
    assert b"\x1b[1mID" in on_a_terminal("snapshot", "list")
    assert b"\x1b[" not in on_a_terminal("snapshot", "list", "--no-color")
    assert b"\x1b[" not in on_a_terminal("snapshot", "list", extra={"NO_COLOR": "1"})
    # Errors: a red prefix on a terminal, plain with --no-color.
    assert b"\x1b[31matoll:" in on_a_terminal("sandbox", "info", "no-such-sandbox")
    assert b"\x1b[" not in on_a_terminal("--no-color", "sandbox", "info", "no-such-sandbox")
    # Never into a pipe.
    p = cli("snapshot", "list")
    assert "\x1b[" not in p.stdout and p.stdout.startswith("ID")
