"""Sessions through the official SDK: long-lived shells whose commands share
state, sync and async commands, logs (JSON and the followed WebSocket with
stdout/stderr markers), input, bounded output, background processes,
zombies and cleanup (issue 3, "Sessions")."""

import asyncio
import json
import os
import time
import uuid

import pytest
from daytona import (
    DaytonaCommandAlreadyCompletedError,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    DaytonaSessionEndedError,
    SessionExecuteRequest,
)


def daemon_server_pid(server, sandbox_id):
    """The pid (on the host) of the sandbox daemon's server process."""
    with open(os.path.join(server.data_dir, "runner", "journal", f"{sandbox_id}.json")) as f:
        pid1 = json.load(f)["pid"]
    with open(f"/proc/{pid1}/task/{pid1}/children") as f:
        kids = [int(x) for x in f.read().split()]
    assert len(kids) == 1, f"PID 1 of {sandbox_id} should have exactly the server child, has {kids}"
    return kids[0]


def vm_hwm_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


# Generous: the daemon itself plus a few copies of one 4 MiB log while a
# response is built; unbounded capture of `yes` would pass it in seconds.
PEAK_LIMIT_MIB = 96


def sid():
    return f"s-{uuid.uuid4().hex[:8]}"


def wait_exit(sandbox, session_id, cmd_id, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        cmd = sandbox.process.get_session_command(session_id, cmd_id)
        if cmd.exit_code is not None:
            return cmd.exit_code
        assert time.monotonic() < deadline, f"command {cmd_id} did not finish"
        time.sleep(0.1)


def run(sandbox, session_id, command):
    return sandbox.process.execute_session_command(
        session_id, SessionExecuteRequest(command=command), timeout=60
    )


def test_session_lifecycle_and_shared_shell(sandbox):
    s = sid()
    sandbox.process.create_session(s)
    with pytest.raises(DaytonaConflictError):
        sandbox.process.create_session(s)

    r = run(sandbox, s, "pwd; echo to-out; sleep 0.1; echo to-err >&2; (exit 3)")
    assert r.exit_code == 3
    assert r.stdout == "/home/daytona\nto-out\n"
    assert r.stderr == "to-err\n"
    assert r.cmd_id

    # One shell: cd, exported and plain variables persist across commands.
    run(sandbox, s, "mkdir -p /tmp/sess-dir && cd /tmp/sess-dir && export GREETING=hello && PLAIN=p")
    r = run(sandbox, s, 'pwd; echo "$GREETING $PLAIN"; id -un')
    assert r.stdout == "/tmp/sess-dir\nhello p\ndaytona\n"

    session = sandbox.process.get_session(s)
    assert session.session_id == s
    assert [c.command for c in session.commands][0].startswith("pwd; echo to-out")
    assert session.commands[0].exit_code == 3
    assert s in [x.session_id for x in sandbox.process.list_sessions()]

    cmd = sandbox.process.get_session_command(s, r.cmd_id)
    assert cmd.exit_code == 0
    logs = sandbox.process.get_session_command_logs(s, r.cmd_id)
    assert logs.stdout == "/tmp/sess-dir\nhello p\ndaytona\n"
    assert logs.stderr == ""

    sandbox.process.delete_session(s)
    assert s not in [x.session_id for x in sandbox.process.list_sessions()]
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session(s)
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.delete_session(s)


def test_unknown_ids_are_not_found(sandbox):
    s = sid()
    with pytest.raises(DaytonaNotFoundError):
        run(sandbox, s, "true")
    sandbox.process.create_session(s)
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session_command(s, "no-such-command")
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session_command_logs(s, "no-such-command")
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.send_session_command_input(s, "no-such-command", "x")


def test_async_command_input_and_followed_logs(sandbox):
    s = sid()
    sandbox.process.create_session(s)
    r = sandbox.process.execute_session_command(
        s,
        SessionExecuteRequest(
            command='echo ready; read name; echo "hello $name"; sleep 0.2; echo oops >&2; echo done',
            run_async=True,
        ),
    )
    assert r.exit_code is None
    cmd_id = r.cmd_id
    assert sandbox.process.get_session_command(s, cmd_id).exit_code is None

    out, err = [], []

    async def follow():
        await sandbox.process.get_session_command_logs_async(s, cmd_id, out.append, err.append)

    async def main():
        task = asyncio.create_task(follow())
        deadline = time.monotonic() + 30
        while "ready" not in "".join(out):
            assert time.monotonic() < deadline, "no output from the running command"
            await asyncio.sleep(0.1)
        await asyncio.to_thread(sandbox.process.send_session_command_input, s, cmd_id, "atoll")
        await asyncio.wait_for(task, 30)

    asyncio.run(main())
    # Input is echoed to the log as stdout, as Daytona does.
    assert "".join(out) == "ready\natoll\nhello atoll\ndone\n"
    assert "".join(err) == "oops\n"
    assert wait_exit(sandbox, s, cmd_id) == 0

    logs = sandbox.process.get_session_command_logs(s, cmd_id)
    assert logs.stdout == "ready\natoll\nhello atoll\ndone\n"
    assert logs.stderr == "oops\n"
    assert "\x02\x02\x02oops\n" in logs.output

    with pytest.raises(DaytonaCommandAlreadyCompletedError):
        sandbox.process.send_session_command_input(s, cmd_id, "late")
    sandbox.process.delete_session(s)


def test_commands_reading_stdin_do_not_hang(sandbox):
    s = sid()
    sandbox.process.create_session(s)
    started = time.monotonic()
    r = run(sandbox, s, "cat; read x; echo after:$?")
    assert r.stdout == "after:1\n"
    assert sandbox.process.exec("cat; echo done", timeout=30).result == "done\n"
    assert time.monotonic() - started < 30
    sandbox.process.delete_session(s)


def test_output_is_bounded_newest_kept(server, sandbox):
    s = sid()
    sandbox.process.create_session(s)
    r = run(sandbox, s, "seq 1 3000000")
    assert r.exit_code == 0
    assert r.stdout.endswith("2999999\n3000000\n")
    assert not r.stdout.startswith("1\n")
    assert len(r.stdout) <= 4 * 1024 * 1024
    assert "output truncated" in r.stderr
    assert r.additional_properties.get("truncated") is True

    # An endless producer does not exhaust memory; deleting stops it.
    r = sandbox.process.execute_session_command(
        s, SessionExecuteRequest(command="yes", run_async=True)
    )
    time.sleep(3)
    logs = sandbox.process.get_session_command_logs(s, r.cmd_id)
    assert len(logs.output) <= 4 * 1024 * 1024 + 4096
    sandbox.process.delete_session(s)
    assert sandbox.process.exec("pgrep -x yes || echo none").result.strip() == "none"
    peak = vm_hwm_mib(daemon_server_pid(server, sandbox.id))
    print(f"daemon peak RSS {peak:.1f} MiB")
    assert peak < PEAK_LIMIT_MIB, f"daemon peak RSS {peak:.1f} MiB"


def test_background_processes_survive_and_die_with_the_session(sandbox):
    s = sid()
    sandbox.process.create_session(s)
    started = time.monotonic()
    r = run(
        sandbox,
        s,
        "nohup python3 -m http.server 8765 --bind 127.0.0.1 > /tmp/http.log 2>&1 & "
        "nohup sleep 1000 & echo $!",
    )
    # The second job keeps the command's stdout open: the call still returns.
    assert time.monotonic() - started < 20
    sleeper = int(r.stdout.strip())
    deadline = time.monotonic() + 20
    while True:
        got = sandbox.process.exec("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8765/")
        if got.result.strip() == "200":
            break
        assert time.monotonic() < deadline, f"server not up: {got.result}"
        time.sleep(0.2)
    assert sandbox.process.exec(f"kill -0 {sleeper} && echo alive").result == "alive\n"

    sandbox.process.delete_session(s)
    deadline = time.monotonic() + 20
    while sandbox.process.exec(f"kill -0 {sleeper} 2>/dev/null && echo alive").result:
        assert time.monotonic() < deadline, "session delete left its processes running"
        time.sleep(0.2)
    got = sandbox.process.exec("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8765/")
    assert got.result.strip() != "200"


def test_no_zombies_from_short_lived_orphans(sandbox):
    s = sid()
    sandbox.process.create_session(s)
    # Orphans (their parent subshell exits at once) and direct background jobs.
    run(sandbox, s, "for i in $(seq 200); do (sleep 0.2 &) ; done; for i in $(seq 200); do true & done")
    time.sleep(2)
    count = "grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"
    deadline = time.monotonic() + 20
    while True:
        zombies = int(run(sandbox, s, count).stdout.strip())
        if zombies == 0:
            break
        assert time.monotonic() < deadline, f"{zombies} zombies"
        time.sleep(0.5)
    sandbox.process.delete_session(s)


def test_exit_ends_the_session(sandbox):
    s = sid()
    sandbox.process.create_session(s)
    r = run(sandbox, s, "echo bye; exit 4")
    assert r.exit_code == 4
    assert r.stdout == "bye\n"
    with pytest.raises(DaytonaSessionEndedError):
        run(sandbox, s, "true")
    sandbox.process.delete_session(s)


def test_too_large_command_is_rejected(sandbox):
    s = sid()
    sandbox.process.create_session(s)
    with pytest.raises(DaytonaError) as e:
        run(sandbox, s, "x" * (1024 * 1024 + 1))
    assert e.value.status_code == 413
    assert "limit is 1048576 bytes" in str(e.value)
    assert sandbox.process.get_session(s).commands == []
    sandbox.process.delete_session(s)


