"""PTY sessions through the official SDK: create (the create-connect
WebSocket), terminal I/O, resize seen by the program, disconnect and
re-attach, kill, exit codes, and a flood that must not grow the daemon."""

import base64
import json
import threading
import time

import httpx
import httpx_ws
import pytest
import wsproto.events
from daytona import (
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    PtySize,
)


def read_until(handle, needle: str, timeout: float = 30.0) -> str:
    """Collects the handle's output until it contains ``needle``."""
    seen = bytearray()
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in the output: {bytes(seen)!r}"
        handle.wait(on_data=seen.extend, timeout=min(left, 0.5))
        assert handle.exit_code is None or needle.encode() in seen, (
            f"PTY exited ({handle.exit_code}) before {needle!r}: {bytes(seen)!r}"
        )
    return seen.decode(errors="replace")


def test_pty_terminal_io_env_resize_and_exit_code(sandbox):
    handle = sandbox.process.create_pty_session(
        id="main", envs={"ATOLL_FOO": "bar baz"}, pty_size=PtySize(rows=24, cols=80)
    )
    try:
        handle.send_input('echo "FOO=$ATOLL_FOO TERM=$TERM"; stty size; id -un; pwd; echo MARK_$((6*7))\n')
        out = read_until(handle, "MARK_42")
        assert "FOO=bar baz TERM=xterm-256color" in out
        assert "24 80" in out
        assert "daytona" in out
        assert "/home/daytona" in out

        info = handle.resize(PtySize(rows=30, cols=100))
        assert (info.cols, info.rows) == (100, 30)
        handle.send_input("stty size; echo AFTER_$((3+4))\n")
        assert "30 100" in read_until(handle, "AFTER_7")

        info = sandbox.process.get_pty_session_info("main")
        assert info.id == "main" and info.active and not info.lazy_start
        assert (info.cols, info.rows) == (100, 30)
        assert info.envs["ATOLL_FOO"] == "bar baz"
        assert "main" in [s.id for s in sandbox.process.list_pty_sessions()]

        handle.send_input("exit 3\n")
        result = handle.wait(timeout=30)
        assert result.exit_code == 3
        assert result.error == "non-zero exit"
    finally:
        handle.disconnect()
    # An exited session is gone.
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_pty_session_info("main")


def test_pty_clean_exit_in_requested_cwd(sandbox):
    handle = sandbox.process.create_pty_session(id="cwd", cwd="/tmp")
    try:
        handle.send_input("pwd; echo WHERE_$((2+2))\n")
        assert "/tmp" in read_until(handle, "WHERE_4")
        handle.send_input("exit\n")
        result = handle.wait(timeout=30)
        assert result.exit_code == 0
        assert result.error is None
    finally:
        handle.disconnect()


def test_pty_survives_disconnect_and_reattaches_with_missed_output(sandbox):
    handle = sandbox.process.create_pty_session(id="keep")
    handle.send_input("X=kept; sleep 1; echo LATE_$((10+1))\n")
    time.sleep(0.3)
    handle.disconnect()
    time.sleep(2)

    sessions = {s.id: s for s in sandbox.process.list_pty_sessions()}
    assert sessions["keep"].active

    again = sandbox.process.connect_pty_session("keep")
    try:
        read_until(again, "LATE_11")
        again.send_input('echo "X=$X"; echo AGAIN_$((2*2))\n')
        assert "X=kept" in read_until(again, "AGAIN_4")
        again.send_input("exit 0\n")
        assert again.wait(timeout=30).exit_code == 0
    finally:
        again.disconnect()


def test_pty_kill_ends_a_waiting_handle_with_sigkill(sandbox):
    handle = sandbox.process.create_pty_session(id="victim")
    handle.send_input("sleep 1000 & sleep 1000\n")
    results = []
    waiter = threading.Thread(target=lambda: results.append(handle.wait(timeout=60)))
    waiter.start()
    time.sleep(1)
    handle.kill()
    waiter.join(30)
    assert not waiter.is_alive()
    assert results[0].exit_code == 137
    assert results[0].error == "SIGKILL"
    handle.disconnect()
    # Both sleeps (the background job too) are gone ('[s]leep' matches
    # "sleep 1000" but not this command line; the image's entrypoint is
    # "sleep infinity").
    left = sandbox.process.exec("ps -eo args | grep -c '^[s]leep 1000$'").result.strip()
    assert left == "0"
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.kill_pty_session("victim")


def test_pty_bad_requests(server, sandbox):
    handle = sandbox.process.create_pty_session(id="dup")
    try:
        with pytest.raises(DaytonaConflictError):
            sandbox.process.create_pty_session(id="dup")
        # The SDK refuses such sizes itself; the server does too.
        for size in ({"cols": 0, "rows": 0}, {"cols": 5000, "rows": 24}):
            status, _, body = server.http(
                "POST", f"/toolbox/{sandbox.id}/process/pty/dup/resize", json=size
            )
            assert status == 400, body
            assert json.loads(body)["code"] == "BAD_REQUEST"
        with pytest.raises(DaytonaBadRequestError):
            sandbox.process.create_pty_session(id="big", pty_size=PtySize(rows=0, cols=0))
        with pytest.raises(DaytonaBadRequestError):
            sandbox.process.create_pty_session(id="nowhere", cwd="/no/such/dir")
        with pytest.raises(DaytonaNotFoundError):
            sandbox.process.get_pty_session_info("missing")
        with pytest.raises(DaytonaNotFoundError):
            sandbox.process.resize_pty_session("missing", PtySize(rows=24, cols=80))
        with pytest.raises(DaytonaError):
            sandbox.process.connect_pty_session("missing")
        assert [s.id for s in sandbox.process.list_pty_sessions()] == ["dup"]
    finally:
        handle.kill()
        handle.disconnect()


def test_pty_websocket_handshake_through_the_proxy(server, sandbox):
    """What the TypeScript SDK relies on: the exit-control subprotocol is echoed
    through the toolbox proxy; then the connected frame, output, exit frame and
    close reason."""
    url = f"{server.url}/toolbox/{sandbox.id}/process/pty/create-connect?id=raw&cols=80&rows=24"
    envs = base64.urlsafe_b64encode(json.dumps({"RAW": "yes"}).encode()).rstrip(b"=").decode()
    with httpx.Client(headers={"Authorization": f"Bearer {server.api_key}"}, timeout=30) as client:
        with httpx_ws.connect_ws(
            url, client, subprotocols=["X-Daytona-Pty-Exit-Control", f"X-Daytona-Pty-Envs~{envs}"]
        ) as ws:
            assert ws.subprotocol == "X-Daytona-Pty-Exit-Control"
            assert json.loads(ws.receive_text(timeout=10)) == {"type": "control", "status": "connected"}
            ws.send_bytes(b"echo RAW=$RAW; exit 5\n")
            output, control = b"", []
            with pytest.raises(httpx_ws.WebSocketDisconnect) as closed:
                while True:
                    event = ws.receive(timeout=30)
                    if isinstance(event, wsproto.events.BytesMessage):
                        output += bytes(event.data)
                    elif isinstance(event, wsproto.events.TextMessage):
                        control.append(json.loads(event.data))
                    elif isinstance(event, wsproto.events.CloseConnection):
                        raise httpx_ws.WebSocketDisconnect(event.code, event.reason)
    assert b"RAW=yes" in output
    assert control == [
        {"type": "control", "status": "exited", "exitCode": 5, "exitReason": "non-zero exit"}
    ]
    assert closed.value.code == 1011
    assert json.loads(closed.value.reason) == {"exitCode": 5, "exitReason": "non-zero exit"}


def _daemon_rss_kib(sandbox) -> int:
    out = sandbox.process.exec(
        "for s in /proc/[0-9]*/status; do awk '/^Name:/{n=$2} /^VmRSS:/{print n, $2}' $s; done 2>/dev/null"
    ).result
    sizes = [int(line.split()[1]) for line in out.splitlines() if line.startswith("atoll-daemon ")]
    assert sizes, out
    return max(sizes)


def test_pty_flood_keeps_the_daemon_bounded_and_ctrl_c_works(sandbox):
    handle = sandbox.process.create_pty_session(id="flood")
    try:
        handle.send_input("echo START_$((1+2))\n")
        read_until(handle, "START_3")
        handle.send_input("yes\n")
        # Nobody reads for a while: output only fills the bounded scrollback.
        time.sleep(4)
        assert _daemon_rss_kib(sandbox) < 100 * 1024
        handle.send_input("\x03")
        handle.send_input("echo DONE_$((5*5))\n")
        read_until(handle, "DONE_25", timeout=60)
        assert sandbox.process.exec("echo still-fine").result.strip() == "still-fine"
    finally:
        handle.kill()
        handle.disconnect()
