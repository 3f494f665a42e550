#!/usr/bin/env python3
"""Isolation benchmark: API create latency (and create + first exec) of the
current build, where every sandbox gets its own user namespace, uid slice
and idmapped image and disk, beside a baseline binary given with
`--baseline` (a build from before user namespaces, e.g. of commit 52b00ca),
two servers in the same run with creates interleaved so both see the same
machine noise. Prints p50/p95 and the ratio of medians; asserts nothing.

Without `--baseline` it prints the current build's figures only.

Usage: bench/isolation_bench.py [--atoll BIN] [--baseline OLD_BIN] [-n 80]
"""
import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, pct  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--baseline", default=os.environ.get("ATOLL_BASELINE_BIN"))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=80, help="creates per server")
    args = ap.parse_args()

    bins = {"userns": args.atoll}
    if args.baseline:
        bins["baseline"] = args.baseline
    with contextlib.ExitStack() as stack:
        apis = {}
        for name, b in bins.items():
            srv = stack.enter_context(Server(b, args.images_dir))
            apis[name] = Api(srv.port, srv.key)
        create = {n: [] for n in bins}
        first_exec = {n: [] for n in bins}
        ids = {n: [] for n in bins}
        for api in apis.values():  # warm-up
            for _ in range(3):
                sb = api.call("POST", "/api/sandbox", {})
                api.call("DELETE", f"/api/sandbox/{sb['id']}")
        order = list(bins)
        for i in range(args.n):
            for name in order if i % 2 == 0 else list(reversed(order)):
                api = apis[name]
                t = time.perf_counter()
                sb = api.call("POST", "/api/sandbox", {})
                t1 = time.perf_counter()
                api.call("POST", f"/toolbox/{sb['id']}/process/execute", {"command": "true"})
                t2 = time.perf_counter()
                create[name].append(t1 - t)
                first_exec[name].append(t2 - t)
                ids[name].append(sb["id"])
                while len(ids[name]) > 20:
                    api.call("DELETE", f"/api/sandbox/{ids[name].pop(0)}")
            if i % 5 == 4:
                time.sleep(0.3)  # let the disk and network pools refill
        for name, api in apis.items():
            for sid in ids[name]:
                api.call("DELETE", f"/api/sandbox/{sid}")

    print(f"isolation benchmark: {args.n} creates per server, interleaved, {os.cpu_count()} cpus")
    for name in bins:
        print(f"  {name:9} create          {fmt_ms(create[name])}")
        print(f"  {name:9} create + exec   {fmt_ms(first_exec[name])}")
    if args.baseline:
        r = pct(create["userns"], 50) / pct(create["baseline"], 50)
        r2 = pct(first_exec["userns"], 50) / pct(first_exec["baseline"], 50)
        print(f"ratio of medians (user namespaces / baseline): create {r:.2f}x, create + exec {r2:.2f}x   (target: <= 1.2x)")


if __name__ == "__main__":
    main()
