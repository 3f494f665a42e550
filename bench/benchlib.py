"""Shared pieces of the benchmarks: percentiles, a real `atoll serve` on a
free port with a throw-away data dir, and a baseline spawn timer."""
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/atoll")


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt_ms(xs):
    return f"p50 {pct(xs, 50) * 1000:8.2f} ms   p95 {pct(xs, 95) * 1000:8.2f} ms   (n={len(xs)})"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`atoll serve` for the duration of a `with` block."""

    def __init__(self, binary, images_dir, env=None):
        self.binary, self.images_dir = binary, images_dir
        self.extra_env = env or {}
        self.data_dir = tempfile.mkdtemp(prefix="atoll-bench-")
        self.port = free_port()
        self.key = "atl_bench_" + secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.log = open(os.path.join(self.data_dir, "server.log"), "w")
        env = dict(os.environ, ATOLL_API_KEY=self.key, **{"ATOLL_LOG": "warn", **self.extra_env})
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--data-dir", self.data_dir, "--listen", f"127.0.0.1:{self.port}",
             "--images-dir", self.images_dir], stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 900
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/api/health")
                if c.getresponse().status == 200:
                    return self
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                sys.exit("server did not start; see " + self.log.name)
            time.sleep(0.1)

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        # The sandbox disk pool (loop-backed XFS at <data>/sandboxes)
        # outlives the server; never rmtree through it.
        pool = os.path.join(self.data_dir, "sandboxes")
        if os.path.ismount(pool) and subprocess.run(["umount", pool]).returncode != 0:
            print(f"keeping {self.data_dir}: its sandbox pool is still in use", file=sys.stderr)
            return
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Api:
    """A keep-alive JSON client for one server's API and toolbox."""

    def __init__(self, port, key, timeout=600):
        self.key = key
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def call(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        raw = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path} -> {r.status} {raw[:300]!r}")
        return json.loads(raw) if raw else None


def time_spawns(argv, n):
    """Wall time of `n` runs of `argv` (the raw process spawn baseline)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - t)
    return times
