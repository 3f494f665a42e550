"""End-to-end through older published SDKs, the ones LangChain, Mastra and
other integrations still pin, against this session's `atoll serve`:

- Python `daytona==0.203.0`, in its own venv `.venv-legacy` (it cannot share
  `.venv` with the current SDK), runs tests/e2e/legacy_sdk_scenarios.py, one
  scenario per test;
- TypeScript `@daytonaio/sdk` 0.143.0 (lists through `GET /api/sandbox/paginated`)
  and 0.192.0, installed side by side under npm aliases in tests/e2e-ts-legacy,
  run tests/e2e-ts-legacy/legacy.test.mjs with `node --test`, once per release.

scripts/setup.sh installs both. A missing install fails the test under CI
(CI=true) and is skipped with the reason elsewhere; a missing `node` skips
the TypeScript half, as in test_sdk_typescript.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LEGACY_PYTHON = REPO_ROOT / ".venv-legacy" / "bin" / "python"
SCENARIOS = Path(__file__).resolve().parent / "legacy_sdk_scenarios.py"
TS_DIR = REPO_ROOT / "tests" / "e2e-ts-legacy"
# package.json's aliases (`sdk-0.143` -> npm:@daytonaio/sdk@0.143.0, ...).
TS_SDKS = sorted(
    name for name in json.loads((TS_DIR / "package.json").read_text())["dependencies"] if name.startswith("sdk-")
)
PY_SCENARIOS = ["lifecycle", "process", "files", "async"]
TIMEOUT_S = 600


def _missing(request, what: str) -> None:
    """Fails under CI (setup must have installed it), skips elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}: scripts/setup.sh should have installed it")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[atoll e2e] skipping the legacy SDK tests: {what} (run scripts/setup.sh)", flush=True)
    pytest.skip(f"{what}: run scripts/setup.sh")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], server) -> str:
    """Runs ``cmd`` in its own process group; fails with its output and the
    server log's tail unless it exits 0."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"`{' '.join(cmd)}` did not finish within {TIMEOUT_S}s\n{out.decode(errors='replace')}\n"
                    f"--- server log (tail) ---\n{server.log_tail(80)}")
    output = out.decode(errors="replace")
    assert proc.returncode == 0, (
        f"`{' '.join(cmd)}` exited with {proc.returncode}\n--- output ---\n{output}\n"
        f"--- server log (tail) ---\n{server.log_tail(80)}"
    )
    return output


def _env(server) -> dict[str, str]:
    env = dict(os.environ)
    env["DAYTONA_API_URL"] = server.api_url
    env["DAYTONA_API_KEY"] = server.api_key
    for var in ("DAYTONA_TARGET", "DAYTONA_ORGANIZATION_ID", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def legacy_python(request) -> Path:
    if not LEGACY_PYTHON.exists():
        _missing(request, f"{LEGACY_PYTHON} is missing")
    return LEGACY_PYTHON


@pytest.fixture(scope="module")
def node(request) -> str:
    node = shutil.which("node")
    if node is None:
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print("\n[atoll e2e] skipping the legacy TypeScript SDK tests: `node` is not installed", flush=True)
        pytest.skip("node is not installed: the TypeScript SDK tests need Node.js >= 20.14")
    return node


@pytest.mark.parametrize("scenario", PY_SCENARIOS)
def test_legacy_python_sdk(legacy_python, server, scenario):
    out = _run([str(legacy_python), str(SCENARIOS), scenario], REPO_ROOT, _env(server), server)
    lines = out.splitlines()
    assert f"daytona 0.203.0: scenario {scenario}" in lines and lines[-1] == "ok", out


@pytest.mark.parametrize("alias", TS_SDKS)
def test_legacy_typescript_sdk(request, node, server, alias):
    manifest = TS_DIR / "node_modules" / alias / "package.json"
    if not manifest.is_file():
        _missing(request, f"{manifest} is missing")
    want = json.loads((TS_DIR / "package.json").read_text())["dependencies"][alias].rsplit("@", 1)[1]
    assert json.loads(manifest.read_text())["version"] == want, f"{manifest}: run scripts/setup.sh"
    env = _env(server)
    env["ATOLL_LEGACY_SDK"] = alias
    cmd = [node, "--test", "--test-concurrency=1", "--test-force-exit", "--test-reporter=spec", "legacy.test.mjs"]
    _run(cmd, TS_DIR, env, server)
