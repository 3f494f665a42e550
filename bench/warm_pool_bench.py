#!/usr/bin/env python3
"""Warm-pool benchmark through the API of a real `atoll serve`: create of a
started sandbox (POST /api/sandbox until it answers, the sandbox running)
cold, and from a warm pool of the same snapshot and size, in the same run.
The pool is refilled (and the refill waited for) between warm samples, so
each warm create finds a member ready; deletes are not timed.

Prints p50/p95 and the ratio of medians, asserts nothing.
Usage: bench/warm_pool_bench.py [--atoll BIN] [--images-dir DIR] [-n 20]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, pct  # noqa: E402


def timed_create(api, body):
    t = time.perf_counter()
    sb = api.call("POST", "/api/sandbox", body)
    elapsed = time.perf_counter() - t
    assert sb["state"] == "started", sb
    return elapsed, sb["id"]


def wait_pool(api, pool_id, size, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pool = next(p for p in api.call("GET", "/api/warm-pools") if p["id"] == pool_id)
        if pool["currentSize"] >= size:
            return
        time.sleep(0.02)
    raise SystemExit(f"warm pool {pool_id} did not reach {size}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=20, help="creates of each kind")
    args = ap.parse_args()
    with Server(args.atoll, args.images_dir) as srv:
        api = Api(srv.port, srv.key)
        body = {"labels": {"bench": "warm-pool"}, "env": {"A": "1"}}
        cold = []
        for _ in range(args.n):
            s, sid = timed_create(api, body)
            cold.append(s)
            api.call("DELETE", f"/api/sandbox/{sid}")
        snapshot = next(s["name"] for s in api.call("GET", "/api/snapshots")["items"] if s["general"])
        pool = api.call("POST", "/api/warm-pools", {"snapshot": snapshot, "pool": 2})
        warm = []
        for _ in range(args.n):
            wait_pool(api, pool["id"], 2)
            s, sid = timed_create(api, body)
            warm.append(s)
            api.call("DELETE", f"/api/sandbox/{sid}")
        api.call("DELETE", f"/api/warm-pools/{pool['id']}")
    print("warm pool (create of a started sandbox, POST /api/sandbox):")
    print(f"  cold create          {fmt_ms(cold)}")
    print(f"  from a warm pool     {fmt_ms(warm)}")
    print(f"  warm / cold (p50)    {pct(warm, 50) / pct(cold, 50):.2f}x")


if __name__ == "__main__":
    main()
