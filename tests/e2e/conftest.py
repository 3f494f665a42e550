"""End-to-end harness: starts a real `atoll serve` and drives it with the
official Daytona Python SDK, exactly as a user would.

Fixtures (tests are written against these names):

- ``atoll_bin``      path of the atoll binary (env ATOLL_BIN overrides the debug build)
- ``images_dir``     shared image store (env ATOLL_IMAGES_DIR, default /var/lib/atoll/images),
                     so the debootstrapped default image is built once per machine
- ``server``         one AtollServer for the whole session
- ``fresh_server``   an AtollServer of the test's own, stopped at the end
- ``daytona``        a ``daytona.Daytona`` pointed at ``server``
- ``sandbox``        a sandbox created with ``daytona.create()``, deleted at teardown
- ``make_sandbox``   factory: ``make_sandbox(params=None)`` creates a sandbox that is
                     deleted at teardown

Each server gets a fresh temp data dir and a random API key; its output goes
to ``<data dir>/atoll.log`` (``server.log()``).
"""

from __future__ import annotations

import contextlib
import http.client
import json as jsonlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "x86_64-unknown-linux-gnu" / "debug" / "atoll"
DEFAULT_IMAGES_DIR = "/var/lib/atoll/images"
# The first start on a machine builds the default image with debootstrap (about three minutes).
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0

# The SDK must talk to the local server directly, never through a proxy.
for _var in ("no_proxy", "NO_PROXY"):
    _have = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join(dict.fromkeys(_have + ["127.0.0.1", "localhost"]))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mounts_below(path: Path) -> list[str]:
    """Mount points under ``path`` visible to us (never rmtree through one)."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                point = line.split(" ")[4].encode().decode("unicode_escape")
                if point.startswith(prefix):
                    found.append(point)
    except OSError:
        pass
    return found


def unmount_sandbox_pool(data_dir: Path) -> None:
    """Unmounts a stopped server's sandbox disk pool (the loop-backed XFS
    at <data>/sandboxes; it outlives the server, as its sandboxes do). Not
    lazily: a pool still in use stays, and its data dir is kept."""
    point = str(Path(data_dir) / "sandboxes")
    if point in _mounts_below(Path(data_dir)):
        subprocess.run(["umount", point], capture_output=True, check=False)


def sandbox_loop_devices(data_dir) -> list[str]:
    """`losetup -a` lines of loop devices backed by sandbox disks of the
    server with this data dir: files below it, or files on its sandbox
    disk pool (whose path a sandbox's mount namespace names from the
    pool's root). The pool's own loop device is not one."""
    data = os.path.realpath(str(data_dir))
    pool_dev = None
    point = os.path.join(data, "sandboxes")
    if point in _mounts_below(Path(data)):
        pool_dev = os.stat(point).st_dev
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        if f"{data}/sandboxes.xfs" in line:
            continue
        on_pool = pool_dev is not None and f"[{pool_dev:04d}]:" in line
        if data in line or on_pool:
            found.append(line)
    return found


class Postgres:
    """A throw-away PostgreSQL cluster on loopback (Debian's `postgresql`,
    installed by scripts/setup.sh), run as the `postgres` user from a temp
    dir; one database per AtollServer."""

    def __init__(self) -> None:
        import glob
        import pwd

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed: run scripts/setup.sh")
        self.bin = Path(bins[-1]).parent
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="atoll-pg-"))
        pw = pwd.getpwnam("postgres")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
                           "-U", "postgres", "--no-sync", "-E", "UTF8"])
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-o", opts,
                           "-l", str(self.dir / "log"), "-w", "start"])
        self.count = 0

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def new_database(self) -> str:
        self.count += 1
        name = f"atoll_{os.getpid()}_{self.count}"
        subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "-q", "-c", f"CREATE DATABASE {name}"], check=True)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D",
                        str(self.dir / "data"), "-m", "immediate", "stop"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


_POSTGRES: Postgres | None = None


def postgres() -> Postgres:
    """The session's PostgreSQL cluster, started on first use."""
    global _POSTGRES
    if _POSTGRES is None:
        import atexit

        _POSTGRES = Postgres()
        atexit.register(_POSTGRES.stop)
    return _POSTGRES


def e2e_database() -> str:
    """`sqlite` (default) or `postgres`: the backend every AtollServer of
    this run uses (`make test` runs the suite once with each)."""
    return os.environ.get("ATOLL_E2E_DATABASE", "sqlite")


class AtollServer:
    """One ``atoll serve`` process on a free loopback port with its own data dir."""

    def __init__(self, bin_path: Path, images_dir: str, port: int | None = None):
        self.bin_path = Path(bin_path)
        self.images_dir = images_dir
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = self.url + "/api"
        self.api_key = "atl_" + secrets.token_hex(20)
        self.data_dir = Path(tempfile.mkdtemp(prefix="atoll-e2e-"))
        self.log_path = self.data_dir / "atoll.log"
        self.proc: subprocess.Popen | None = None
        # Extra environment for `atoll serve` (e.g. test-only lifecycle timing).
        self.extra_env: dict[str, str] = {}
        # PostgreSQL URL when the run uses that backend (kept across restarts).
        self.database_url: str | None = postgres().new_database() if e2e_database() == "postgres" else None

    # -- process control -------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> "AtollServer":
        """Starts the server and waits until ``GET /api/health`` answers 200."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        env = dict(os.environ)
        env["ATOLL_API_KEY"] = self.api_key
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.extra_env)
        cmd = [
            str(self.bin_path),
            "serve",
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--public-url", self.url,
            "--images-dir", self.images_dir,
        ]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        started = time.monotonic()
        noted = False
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"atoll serve exited with {code} before becoming healthy; log:\n{self.log_tail()}"
                )
            try:
                status, _, _ = self.http("GET", "/api/health", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            waited = time.monotonic() - started
            if waited > timeout:
                self.kill()
                raise RuntimeError(
                    f"atoll serve was not healthy after {timeout:.0f}s; log:\n{self.log_tail()}"
                )
            if not noted and waited > 3:
                noted = True
                print(
                    f"\n[atoll e2e] waiting for {self.url}/api/health (the first start on a machine "
                    f"builds the default image into {self.images_dir}, about three minutes; "
                    f"log: {self.log_path})",
                    file=sys.__stderr__,
                    flush=True,
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, then wait for exit (SIGKILL if it does not come)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait()

    def restart(self, timeout: float = START_TIMEOUT_S) -> "AtollServer":
        """Stops and starts again with the same port, data dir and API key."""
        self.stop()
        return self.start(timeout)

    def delete_all_sandboxes(self) -> None:
        """Best effort: deletes every sandbox of this server's default org."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            # Warm pools first, or their filler starts new members.
            status, _, body = self.http("GET", "/api/warm-pools", timeout=30)
            if status == 200:
                for pool in jsonlib.loads(body):
                    self.http("DELETE", f"/api/warm-pools/{pool['id']}", timeout=60)
            status, _, body = self.http("GET", "/api/sandbox?limit=200&includeWarm=true", timeout=30)
            if status != 200:
                return
            for item in jsonlib.loads(body).get("items", []):
                self.http("DELETE", f"/api/sandbox/{item['id']}", timeout=60)
            # The organization's snapshots: their images live in the image
            # store the test servers share.
            status, _, body = self.http("GET", "/api/snapshots?limit=200", timeout=30)
            if status == 200:
                for snap in jsonlib.loads(body).get("items", []):
                    if not snap.get("general"):
                        self.http("DELETE", f"/api/snapshots/{snap['id']}", timeout=60)
            # Volumes: each is a filesystem mounted on this host.
            status, _, body = self.http("GET", "/api/volumes", timeout=30)
            if status == 200:
                for vol in jsonlib.loads(body):
                    self.http("DELETE", f"/api/volumes/{vol['id']}", timeout=60)
        except (OSError, ValueError) as e:
            print(f"[atoll e2e] cleanup of {self.url} failed: {e}", file=sys.__stderr__)

    def cleanup(self) -> None:
        """Stops the server and removes its data dir, unless something is still
        mounted below it or ATOLL_E2E_KEEP is set. Sandboxes the test left
        behind are deleted first: they would outlive the server."""
        self.delete_all_sandboxes()
        self.stop()
        if os.environ.get("ATOLL_E2E_KEEP"):
            return
        self.drop_firewall_table()
        unmount_sandbox_pool(self.data_dir)
        mounts = _mounts_below(self.data_dir)
        if mounts:
            print(
                f"[atoll e2e] keeping {self.data_dir}: still mounted below it: {mounts}",
                file=sys.__stderr__,
            )
            return
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def drop_firewall_table(self) -> None:
        """Removes the server's nftables table (one per runner instance)."""
        try:
            instance = (self.data_dir / "runner" / "instance").read_text().strip()
        except OSError:
            return
        subprocess.run(["nft", "delete", "table", "inet", f"atoll_{instance}"],
                       capture_output=True, check=False)

    # -- inspection ------------------------------------------------------------

    def log(self) -> str:
        """The server's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def http(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        json: object | None = None,
        auth: bool = True,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """A raw request to ``url + path`` with ``Authorization: Bearer <api key>``
        (unless ``auth=False``). Returns (status, headers with lowercase names, body)."""
        hdrs = {} if headers is None else dict(headers)
        if auth:
            hdrs.setdefault("Authorization", f"Bearer {self.api_key}")
        if json is not None:
            body = jsonlib.dumps(json).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        target = urlsplit(self.url)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def client(self):
        """A ``daytona.Daytona`` for this server."""
        from daytona import Daytona, DaytonaConfig

        return Daytona(DaytonaConfig(api_key=self.api_key, api_url=self.api_url))

    def __repr__(self) -> str:
        return f"AtollServer({self.url}, data_dir={self.data_dir})"


class AtollRunner:
    """One ``atoll runner`` process (a compute host of ``server``'s
    deployment) on a free loopback port with its own data dir, registered
    through ``POST /api/runners``."""

    def __init__(self, server: AtollServer, name: str, region: str = "local"):
        self.server = server
        self.name = name
        status, _, body = server.http("POST", "/api/runners", json={"name": name, "regionId": region})
        assert status == 201, body
        created = jsonlib.loads(body)
        self.id = created["id"]
        self.token = created["apiKey"]
        self.port = _free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="atoll-e2e-runner-"))
        self.log_path = self.data_dir / "runner.log"
        self.proc: subprocess.Popen | None = None
        self.extra_env: dict[str, str] = {"ATOLL_RUNNER_HEALTH_SECS": "0.5"}
        self.extra_args: list[str] = []
        # Every API server of the deployment (default: the one it was
        # registered with).
        self.api_urls: list[str] = [server.api_url]
        # The server's image store unless a test gives the runner its own.
        self.images_dir = server.images_dir

    def start(self, timeout: float = START_TIMEOUT_S) -> "AtollRunner":
        """Starts the runner and waits until the control plane lists it ready."""
        env = dict(os.environ)
        env["ATOLL_RUNNER_TOKEN"] = self.token
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.extra_env)
        cmd = [
            str(self.server.bin_path), "runner",
            "--api-url", ",".join(self.api_urls),
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--images-dir", self.images_dir,
        ] + self.extra_args
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"atoll runner exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if self.state() == "ready":
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"atoll runner was not ready after {timeout:.0f}s; log:\n{self.log_tail()}")

    def state(self) -> str:
        status, _, body = self.server.http("GET", f"/api/runners/{self.id}")
        return jsonlib.loads(body)["state"] if status == 200 else f"http {status}"

    def kill(self) -> None:
        """SIGKILL, as a crash would (its sandboxes keep running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        """Stops the runner (the server's cleanup deletes sandboxes first)
        and removes its data dir and firewall table."""
        self.stop()
        if os.environ.get("ATOLL_E2E_KEEP"):
            return
        try:
            instance = (self.data_dir / "runner" / "instance").read_text().strip()
            subprocess.run(["nft", "delete", "table", "inet", f"atoll_{instance}"], capture_output=True, check=False)
        except OSError:
            pass
        unmount_sandbox_pool(self.data_dir)
        if not _mounts_below(self.data_dir):
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="session")
def atoll_bin() -> Path:
    path = Path(os.environ.get("ATOLL_BIN") or DEFAULT_BIN)
    if not path.is_file():
        pytest.fail(f"atoll binary not found at {path}: run `cargo build -p atoll` (or set ATOLL_BIN)")
    return path


@pytest.fixture(scope="session")
def images_dir() -> str:
    return os.environ.get("ATOLL_IMAGES_DIR") or DEFAULT_IMAGES_DIR


@contextlib.contextmanager
def running_server(atoll_bin, images_dir, env: dict[str, str] | None = None):
    """An ``atoll serve`` with extra environment ``env``, started for the
    ``with`` block and cleaned up (sandboxes, data dir, firewall) after it."""
    srv = AtollServer(atoll_bin, images_dir)
    srv.extra_env = dict(env or {})
    try:
        srv.start()
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture(scope="session")
def server(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir) as srv:
        yield srv


@pytest.fixture
def fresh_server(atoll_bin, images_dir):
    with running_server(atoll_bin, images_dir) as srv:
        yield srv


@pytest.fixture(scope="session")
def daytona(server):
    return server.client()


@pytest.fixture
def make_sandbox(daytona):
    created = []

    def make(params=None, **kwargs):
        sb = daytona.create(params, **kwargs)
        created.append(sb)
        return sb

    yield make
    for sb in created:
        try:
            sb.delete()
        except Exception:  # already deleted by the test, or the server is gone
            pass


@pytest.fixture
def sandbox(make_sandbox):
    return make_sandbox()


def failpoint_binary() -> str:
    """The failpoints build of atoll (`make build-failpoints`)."""
    path = os.environ.get("ATOLL_FAILPOINT_BIN") or os.path.join(
        os.path.dirname(__file__), "..", "..", "target/x86_64-unknown-linux-gnu/failpoints/atoll")
    assert os.path.exists(path), "run `make build-failpoints`"
    return os.path.realpath(path)


def restart_with(srv: "AtollServer", binary, env: dict) -> None:
    """Restarts `srv` with another build of atoll and environment."""
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop()
    srv.proc = None
    srv.bin_path = Path(os.path.realpath(binary))
    srv.extra_env = env
    srv.start()


def die_on(srv: "AtollServer", method: str, path: str, body=None) -> None:
    """Sends a request a failpoint kills the server in; waits for the death."""
    try:
        srv.http(method, path, json=body, timeout=30)
    except OSError:
        pass
    deadline = time.time() + 15
    while srv.proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert srv.proc.poll() is not None, "the failpoint was not hit"
