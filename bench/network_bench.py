#!/usr/bin/env python3
"""Network benchmark: API create latency of a sandbox with networking (a
routed veth from the slot pool, firewall policy) beside one without
(`--network off`: loopback only), two servers in the same run with creates
interleaved so both see the same machine noise; then network slot
allocation itself (`cargo bench -p atoll-runner --bench network_slots`,
netlink beside the same work done with `ip`). Prints p50/p95 and the
difference; asserts nothing.

Usage: bench/network_bench.py [--atoll BIN] [-n 80] [--no-slots]
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, pct  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=80, help="creates per server")
    ap.add_argument("--no-slots", action="store_true", help="skip the slot allocation bench")
    args = ap.parse_args()

    with Server(args.atoll, args.images_dir, {"ATOLL_NETWORK": "off"}) as off, \
            Server(args.atoll, args.images_dir, {"ATOLL_NETWORK": "auto"}) as on:
        apis = {"off": Api(off.port, off.key), "on": Api(on.port, on.key)}
        times = {"off": [], "on": [], "on_blocked": []}
        ids = {"off": [], "on": []}
        for name, api in apis.items():  # warm-up
            for _ in range(3):
                sb = api.call("POST", "/api/sandbox", {})
                api.call("DELETE", f"/api/sandbox/{sb['id']}")
        for i in range(args.n):
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                t = time.perf_counter()
                sb = apis[name].call("POST", "/api/sandbox", {})
                times[name].append(time.perf_counter() - t)
                ids[name].append(sb["id"])
            # one with a policy (set elements over netlink on the create path)
            t = time.perf_counter()
            sb = apis["on"].call("POST", "/api/sandbox", {"networkAllowList": "198.51.100.0/24,203.0.113.0/24"})
            times["on_blocked"].append(time.perf_counter() - t)
            ids["on"].append(sb["id"])
            # keep the number of live sandboxes bounded
            for name in ("off", "on"):
                while len(ids[name]) > 20:
                    apis[name].call("DELETE", f"/api/sandbox/{ids[name].pop(0)}")
            if i % 5 == 4:
                time.sleep(0.3)  # let the pools refill, as between real creates
        for name in ("off", "on"):
            for sid in ids[name]:
                apis[name].call("DELETE", f"/api/sandbox/{sid}")

    print(f"network benchmark: {args.n} creates per server, interleaved, {os.cpu_count()} cpus")
    print(f"  create, networking on            {fmt_ms(times['on'])}")
    print(f"  create, networking on + allowlist {fmt_ms(times['on_blocked'])}")
    print("baseline, same run:")
    print(f"  create, --network off (lo only)  {fmt_ms(times['off'])}")
    d = (pct(times["on"], 50) - pct(times["off"], 50)) * 1e3
    d2 = (pct(times["on_blocked"], 50) - pct(times["off"], 50)) * 1e3
    print(f"difference (p50): networking {d:+.2f} ms, with an allow list {d2:+.2f} ms   (target: within 2 ms)")
    if not args.no_slots:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        subprocess.run(["cargo", "bench", "-q", "-p", "atoll-runner", "--bench", "network_slots"], cwd=here, check=False)


if __name__ == "__main__":
    main()
