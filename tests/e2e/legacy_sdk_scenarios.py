"""What users of an older Python SDK (`daytona==0.203.0`, pinned by LangChain
and other integrations) do, run by the legacy venv's interpreter
(`.venv-legacy/bin/python legacy_sdk_scenarios.py SCENARIO`), never imported
by pytest: tests/e2e/test_sdk_legacy.py runs one scenario per test with
DAYTONA_API_URL / DAYTONA_API_KEY set for its server.

Each scenario creates its own sandboxes (labelled with a tag of this run) and
deletes them at the end; any failed assertion exits non-zero with a traceback.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from importlib.metadata import version

from daytona import (
    AsyncDaytona,
    CreateSandboxFromSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    DaytonaNotFoundError,
    FileUpload,
    ListSandboxesQuery,
    SessionExecuteRequest,
)

TAG = f"legacy-py-{os.getpid()}-{int(time.time() * 1000)}"
CONFIG = DaytonaConfig(api_key=os.environ["DAYTONA_API_KEY"], api_url=os.environ["DAYTONA_API_URL"])
daytona = Daytona(CONFIG)
created = []


def create(**params):
    labels = {"suite": TAG, **params.pop("labels", {})}
    sb = daytona.create(CreateSandboxFromSnapshotParams(labels=labels, **params))
    created.append(sb)
    return sb


def listed(labels: dict[str, str], limit: int | None = None) -> list:
    return list(daytona.list(ListSandboxesQuery(labels=labels, limit=limit)))


def sh(sb, command: str) -> str:
    r = sb.process.exec(command)
    assert r.exit_code == 0, (command, r.exit_code, r.result)
    return r.result


def scenario_lifecycle() -> None:
    """create with name, labels and env; get by id and name; list (cursor
    pages); set_labels; delete; stop/start keep files and env."""
    name = f"{TAG}-a"
    sb = create(name=name, labels={"role": "a"}, env_vars={"GREETING": "hello legacy", "EMPTY": ""})
    assert sb.state == "started", sb.state
    assert sb.name == name and sb.labels["suite"] == TAG and sb.labels["role"] == "a", (sb.name, sb.labels)
    assert sb.env["GREETING"] == "hello legacy", sb.env
    assert sh(sb, 'echo "$GREETING|${EMPTY-unset}"').strip() == "hello legacy|"

    other = create(labels={"role": "b"})
    for key in (sb.id, name):
        got = daytona.get(key)
        assert (got.id, got.name, got.state) == (sb.id, name, "started"), (key, got.id, got.state)
        assert got.labels == sb.labels
    # limit=1: the SDK follows nextCursor through two pages.
    assert sorted(s.id for s in listed({"suite": TAG}, limit=1)) == sorted([sb.id, other.id])
    only_b = listed({"suite": TAG, "role": "b"})
    assert [s.id for s in only_b] == [other.id]
    assert sh(only_b[0], "echo listed").strip() == "listed"
    assert listed({"suite": f"{TAG}-none"}) == []

    assert sb.set_labels({"suite": TAG, "role": "c"})["role"] == "c"
    assert [s.id for s in listed({"suite": TAG, "role": "c"})] == [sb.id]

    daytona.delete(other)
    try:
        daytona.get(other.id)
        raise AssertionError("get after delete succeeded")
    except DaytonaNotFoundError:
        pass
    assert [s.id for s in listed({"suite": TAG})] == [sb.id]

    sb.fs.upload_file(b"survives\n", "/home/daytona/keep.txt")
    daytona.stop(sb)
    assert sb.state == "stopped" and daytona.get(sb.id).state == "stopped"
    daytona.start(sb)
    assert sb.state == "started"
    assert sb.fs.download_file("/home/daytona/keep.txt") == b"survives\n"
    assert sh(sb, "echo $GREETING").strip() == "hello legacy"
    sb.delete()
    try:
        daytona.get(sb.id)
        raise AssertionError("get after delete succeeded")
    except DaytonaNotFoundError:
        pass


def scenario_process() -> None:
    """exec (cwd, env, exit codes), code_run, sessions (sync, async, logs)."""
    sb = create()
    r = sb.process.exec("echo hi")
    assert (r.exit_code, r.result.strip()) == (0, "hi"), r
    r = sb.process.exec('pwd; echo "$X"', cwd="/tmp", env={"X": "from env"})
    assert (r.exit_code, r.result.strip().split("\n")) == (0, ["/tmp", "from env"]), r
    r = sb.process.exec("echo out; exit 7")
    assert (r.exit_code, r.result.strip()) == (7, "out"), r
    r = sb.process.code_run("import sys\nprint(6*7, sys.version_info[0])")
    assert (r.exit_code, r.result.strip()) == (0, "42 3"), r
    r = sb.process.code_run('raise ValueError("nope")')
    assert r.exit_code != 0 and "ValueError: nope" in r.result, r
    assert sb.get_user_home_dir() == "/home/daytona"

    sid = f"s-{os.getpid()}"
    sb.process.create_session(sid)
    r = sb.process.execute_session_command(sid, SessionExecuteRequest(command="cd /tmp && export SESSION_VAR=kept"))
    assert r.exit_code == 0, r
    r = sb.process.execute_session_command(sid, SessionExecuteRequest(command='echo "$(pwd) $SESSION_VAR"; echo err >&2'))
    assert (r.exit_code, r.stdout.strip(), r.stderr.strip()) == (0, "/tmp kept", "err"), r
    assert sb.process.execute_session_command(sid, SessionExecuteRequest(command="sh -c 'exit 3'")).exit_code == 3
    started = sb.process.execute_session_command(
        sid, SessionExecuteRequest(command="sleep 0.3; echo done-async", run_async=True)
    )
    assert started.cmd_id, started
    deadline = time.time() + 20
    while True:
        cmd = sb.process.get_session_command(sid, started.cmd_id)
        if cmd.exit_code is not None or time.time() > deadline:
            break
        time.sleep(0.1)
    assert cmd.exit_code == 0, cmd
    logs = sb.process.get_session_command_logs(sid, started.cmd_id)
    assert logs.stdout.strip() == "done-async", logs
    session = sb.process.get_session(sid)
    assert session.session_id == sid and len(session.commands) >= 4, session
    assert any(s.session_id == sid for s in sb.process.list_sessions())
    sb.process.delete_session(sid)
    assert not any(s.session_id == sid for s in sb.process.list_sessions())


def scenario_files() -> None:
    """upload/download, bulk upload, list, details, delete, and an upload right
    after a download or a command, many times over."""
    sb = create()
    d = "/home/daytona/legacy"
    sb.fs.create_folder(d, "755")
    sb.fs.upload_file(b"hello from the legacy SDK\n", f"{d}/one.txt")
    assert sb.fs.download_file(f"{d}/one.txt") == b"hello from the legacy SDK\n"
    binary = bytes((i * 31 + 7) & 0xFF for i in range(300_000))
    sb.fs.upload_files(
        [FileUpload(source=b"two\n", destination=f"{d}/two.txt"), FileUpload(source=binary, destination=f"{d}/sub/bin.dat")]
    )
    assert sb.fs.download_file(f"{d}/sub/bin.dat") == binary
    assert sh(sb, f"cat {d}/two.txt") == "two\n"
    files = sb.fs.list_files(d)
    assert sorted(f.name for f in files) == ["one.txt", "sub", "two.txt"], files
    assert next(f for f in files if f.name == "sub").is_dir
    info = sb.fs.get_file_info(f"{d}/sub/bin.dat")
    assert (info.size, info.is_dir) == (len(binary), False), info
    sb.fs.delete_file(f"{d}/one.txt")
    try:
        sb.fs.download_file(f"{d}/one.txt")
        raise AssertionError("download of a deleted file succeeded")
    except DaytonaError:
        pass
    for i in range(30):
        payload = f"round {i}\n".encode() * (i + 1)
        if i % 2:
            sb.fs.download_file(f"{d}/two.txt")
        else:
            sb.process.exec("true")
        sb.fs.upload_file(payload, f"{d}/round.txt")
        assert sb.fs.download_file(f"{d}/round.txt") == payload, i


def scenario_async() -> None:
    """AsyncDaytona, as async agent frameworks use it: create, exec, files,
    list, delete."""

    async def run() -> None:
        async with AsyncDaytona(CONFIG) as client:
            sb = await client.create(CreateSandboxFromSnapshotParams(labels={"suite": TAG, "mode": "async"}))
            try:
                r = await sb.process.exec("echo async")
                assert (r.exit_code, r.result.strip()) == (0, "async"), r
                await sb.fs.upload_file(b"async bytes", "/home/daytona/a.txt")
                assert await sb.fs.download_file("/home/daytona/a.txt") == b"async bytes"
                ids = [s.id async for s in client.list(ListSandboxesQuery(labels={"suite": TAG, "mode": "async"}))]
                assert ids == [sb.id], ids
            finally:
                await sb.delete()

    asyncio.run(run())


def main() -> None:
    scenario = sys.argv[1]
    print(f"daytona {version('daytona')}: scenario {scenario}", flush=True)
    try:
        globals()[f"scenario_{scenario}"]()
    finally:
        for sb in created:
            try:
                sb.delete()
            except Exception:  # deleted by the scenario already
                pass
    print("ok", flush=True)


if __name__ == "__main__":
    main()
