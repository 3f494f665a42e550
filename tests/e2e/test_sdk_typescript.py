"""End-to-end through the official Daytona TypeScript SDK (`@daytona/sdk`).

The tests themselves live in tests/e2e-ts (plain JavaScript, `node:test`); each
`*.test.mjs` file there becomes one pytest test here, run with `node --test`
against this session's `atoll serve` (DAYTONA_API_URL / DAYTONA_API_KEY).
scripts/setup.sh installs the SDK there with `npm ci`.

Skipped only when `node` is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

TS_DIR = Path(__file__).resolve().parents[1] / "e2e-ts"
TEST_FILES = sorted(p.name for p in TS_DIR.glob("*.test.mjs"))
# Generous: the machine is shared and each file creates its own sandboxes.
FILE_TIMEOUT_S = 900
MIN_NODE = (20, 14)  # --test-concurrency and --test-force-exit

NODE = shutil.which("node")


def _node_version() -> tuple[int, int]:
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.match(r"v(\d+)\.(\d+)", out.strip())
    assert m, f"cannot parse `node --version`: {out!r}"
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def node(request) -> str:
    if NODE is None:
        # Past pytest's output capture, so the reason shows even without `-rs`.
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print("\n[atoll e2e] skipping the TypeScript SDK tests: `node` is not installed", flush=True)
        pytest.skip("node is not installed: the TypeScript SDK tests need Node.js >= 20.14")
    version = _node_version()
    assert version >= MIN_NODE, (
        f"node {version[0]}.{version[1]} is too old for tests/e2e-ts: need >= {MIN_NODE[0]}.{MIN_NODE[1]}"
    )
    sdk = TS_DIR / "node_modules" / "@daytona" / "sdk" / "package.json"
    assert sdk.is_file(), (
        f"{sdk} is missing: run scripts/setup.sh (it runs `npm ci` in {TS_DIR})"
    )
    return NODE


def test_typescript_files_exist():
    assert TEST_FILES, f"no *.test.mjs files in {TS_DIR}"


@pytest.fixture(scope="module")
def test_image():
    """A registry on loopback with one image for images.test.mjs (busybox
    plus /marker), named in ATOLL_TEST_IMAGE."""
    from oci_images import Layer, Registry, busybox_base, push_image

    registry = Registry()
    try:
        push_image(registry, "ts/busybox", "1",
                   [busybox_base().raw(), Layer().file("marker", "pushed-by-the-harness\n").raw()])
        yield f"{registry.host}/ts/busybox:1"
    finally:
        registry.stop()


@pytest.mark.parametrize("test_file", TEST_FILES)
def test_sdk_typescript(node, server, test_image, test_file):
    env = dict(os.environ)
    env["ATOLL_TEST_IMAGE"] = test_image
    # Build-context uploads go over HTTPS with the server's local CA; Node
    # reads this bundle (on top of its own) at start.
    env["NODE_EXTRA_CA_CERTS"] = str(Path(server.data_dir) / "tls" / "ca.pem")
    env["DAYTONA_API_URL"] = server.api_url
    env["DAYTONA_API_KEY"] = server.api_key
    env.pop("DAYTONA_TARGET", None)
    env.pop("DAYTONA_ORGANIZATION_ID", None)
    cmd = [
        node,
        "--test",
        "--test-concurrency=1",
        "--test-force-exit",
        "--test-reporter=spec",
        test_file,
    ]
    # Own process group: on a timeout, node's per-file test processes die with it.
    proc = subprocess.Popen(
        cmd,
        cwd=TS_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=FILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(
            f"`{' '.join(cmd)}` in {TS_DIR} did not finish within {FILE_TIMEOUT_S}s\n"
            f"--- node output ---\n{out.decode(errors='replace')}\n"
            f"--- server log (tail) ---\n{server.log_tail(80)}"
        )
    output = out.decode(errors="replace")
    assert proc.returncode == 0, (
        f"`{' '.join(cmd)}` in {TS_DIR} exited with {proc.returncode}\n"
        f"--- node output ---\n{output}\n--- server log (tail) ---\n{server.log_tail(80)}"
    )
