"""`sandbox.update_env` (toolbox `POST /env`) through the official SDK:
commands and sessions started afterwards see the change, running ones keep
theirs, bad names are refused, and the change survives a stop and start."""

import pytest
from daytona import CreateSandboxFromSnapshotParams, SessionExecuteRequest
from daytona.common.errors import DaytonaError


def test_update_env_reaches_new_processes_and_survives_restart(daytona, make_sandbox):
    sb = make_sandbox(CreateSandboxFromSnapshotParams(env_vars={"KEEP": "k", "OLD": "o"}))
    sb.update_env({"NEW_VAR": "hello world"}, unset=["OLD"])
    r = sb.process.exec('echo "$KEEP|$NEW_VAR|${OLD-unset}"')
    assert r.result.strip() == "k|hello world|unset"
    sb.process.create_session("s")
    out = sb.process.execute_session_command("s", SessionExecuteRequest(command='echo "$NEW_VAR"'))
    assert (out.stdout or out.output or "").strip() == "hello world"
    with pytest.raises(DaytonaError):
        sb.update_env({"BAD=NAME": "x"})
    daytona.stop(sb)
    daytona.start(sb)
    r = sb.process.exec('echo "$KEEP|$NEW_VAR|${OLD-unset}"')
    assert r.result.strip() == "k|hello world|unset"
