#!/usr/bin/env python3
"""Remote-runner benchmark on one machine, same run: toolbox exec
(`POST /toolbox/{id}/process/execute`) and create (a started sandbox) on the
embedded runner of `atoll serve` and through an `atoll runner` on loopback;
then creates/s with three remote runners against one (creates from several
client threads at once, deletes not timed).

Prints p50/p95, ratios of medians and throughput; asserts nothing.
Usage: bench/multinode_bench.py [--atoll BIN] [--images-dir DIR] [-n 40]
"""
import argparse
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, free_port, pct  # noqa: E402


class Runner:
    """`atoll runner` registered with `srv`, for the duration of a `with`."""

    def __init__(self, srv, api, name):
        self.srv, self.api, self.name = srv, api, name
        created = api.call("POST", "/api/runners", {"name": name, "regionId": "local"})
        self.id, self.token = created["id"], created["apiKey"]
        self.data_dir = tempfile.mkdtemp(prefix="atoll-bench-runner-")

    def __enter__(self):
        self.log = open(os.path.join(self.data_dir, "runner.log"), "w")
        env = dict(os.environ, ATOLL_RUNNER_TOKEN=self.token, ATOLL_LOG="warn",
                   ATOLL_RUNNER_HEALTH_SECS="0.5")
        self.proc = subprocess.Popen(
            [self.srv.binary, "runner", "--api-url", f"{self.srv.url}/api", "--data-dir", self.data_dir,
             "--listen", f"127.0.0.1:{free_port()}", "--images-dir", self.srv.images_dir],
            stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 600
        while self.api.call("GET", f"/api/runners/{self.id}")["state"] != "ready":
            if time.time() > deadline or self.proc.poll() is not None:
                sys.exit("runner did not become ready; see " + self.log.name)
            time.sleep(0.1)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def schedulable(api, runner_ids, want):
    """Marks exactly `want` of the runners schedulable."""
    for rid in runner_ids:
        api.call("PATCH", f"/api/runners/{rid}/scheduling", {"unschedulable": rid not in want})


def creates_and_execs(api, n):
    creates, execs = [], []
    for _ in range(n):
        t = time.perf_counter()
        sb = api.call("POST", "/api/sandbox", {"autoStopInterval": 0})
        creates.append(time.perf_counter() - t)
        for _ in range(5):
            t = time.perf_counter()
            out = api.call("POST", f"/toolbox/{sb['id']}/process/execute", {"command": "echo hi"})
            execs.append(time.perf_counter() - t)
            assert out["result"] == "hi\n", out
        api.call("DELETE", f"/api/sandbox/{sb['id']}")
    return creates, execs


def throughput(srv, n, threads):
    def one(_):
        api = Api(srv.port, srv.key)
        sb = api.call("POST", "/api/sandbox", {"autoStopInterval": 0})
        return sb["id"]
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - t
    api = Api(srv.port, srv.key)
    for sid in ids:
        api.call("DELETE", f"/api/sandbox/{sid}")
    return n / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=40, help="sandboxes per latency series")
    args = ap.parse_args()
    with Server(args.atoll, args.images_dir) as srv:
        api = Api(srv.port, srv.key)
        local = api.call("GET", "/api/runners")[0]["id"]
        with Runner(srv, api, "bench-1") as r1, Runner(srv, api, "bench-2") as r2, \
                Runner(srv, api, "bench-3") as r3:
            everyone = [local, r1.id, r2.id, r3.id]
            schedulable(api, everyone, {local})
            emb_c, emb_x = creates_and_execs(api, args.n)
            schedulable(api, everyone, {r1.id})
            rem_c, rem_x = creates_and_execs(api, args.n)
            print("multinode: create and toolbox exec, embedded runner vs an `atoll runner` on loopback")
            print(f"  create, embedded          {fmt_ms(emb_c)}")
            print(f"  create, remote runner     {fmt_ms(rem_c)}   ratio {pct(rem_c, 50) / pct(emb_c, 50):.2f}x")
            print(f"  exec, embedded            {fmt_ms(emb_x)}")
            print(f"  exec, remote runner       {fmt_ms(rem_x)}   ratio {pct(rem_x, 50) / pct(emb_x, 50):.2f}x")
            one = throughput(srv, args.n, 6)
            schedulable(api, everyone, {r1.id, r2.id, r3.id})
            three = throughput(srv, args.n, 6)
            print(f"  creates/s, 6 clients: one remote runner {one:.1f}/s, three {three:.1f}/s"
                  f"   ratio {three / one:.2f}x (one machine: the runners share its two cores)")


if __name__ == "__main__":
    main()
