#!/usr/bin/env python3
"""Lifecycle benchmark through the API of a real `atoll serve`:

  * archive and restore throughput (MiB/s of the sandbox's data) for a
    tree of 10,000 small files plus one 200 MiB file, beside
    `tar | zstd -3` of the same tree (read from the stopped sandbox's disk,
    mounted read-only on the host) measured in the same run;
  * stop -> start round trip p50/p95, and stop and start each;
  * pause -> start (resume) round trip p50/p95, and pause and resume
    each, in the same run: pause freezes every process (memory kept),
    start of a paused sandbox thaws them.

Prints figures, asserts nothing.
Usage: bench/lifecycle_bench.py [--atoll BIN] [--images-dir DIR] [-n 20]
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, pct  # noqa: E402

MAKE_TREE = r'''
import os, hashlib
root = "/home/daytona/tree"
for i in range(10000):
    d = os.path.join(root, f"d{i % 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(hashlib.sha256(str(i).encode()).digest() * (1 + i % 64))
with open(os.path.join(root, "big.bin"), "wb") as f:
    for i in range(200):
        f.write(os.urandom(1 << 20))
'''


def du_bytes(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=20, help="stop/start and pause/start round trips")
    args = ap.parse_args()
    with Server(args.atoll, args.images_dir) as srv:
        api = Api(srv.port, srv.key)
        sb = api.call("POST", "/api/sandbox", {"autoStopInterval": 0})
        sid = sb["id"]
        cmd = f"echo {base64.b64encode(MAKE_TREE.encode()).decode()} | base64 -d | python3 -"
        r = api.call("POST", f"/toolbox/{sid}/process/execute", {"command": cmd, "timeout": 600})
        assert r["exitCode"] == 0, r
        api.call("POST", f"/api/sandbox/{sid}/stop")

        image = os.path.join(srv.data_dir, "sandboxes", sid, "disk.img")
        mnt = tempfile.mkdtemp(prefix="atoll-bench-mnt-")
        subprocess.run(["mount", "-o", "loop,ro,noload", image, mnt], check=True)
        try:
            tree = os.path.join(mnt, "upper", "home", "daytona", "tree")
            tree_bytes = du_bytes(tree)
            subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
            t = time.perf_counter()
            subprocess.run(f"tar -C {tree} -cf - . | zstd -q -3 -T0 > /dev/null", shell=True, check=True)
            baseline = time.perf_counter() - t
        finally:
            subprocess.run(["umount", mnt], check=True)
            os.rmdir(mnt)

        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
        t = time.perf_counter()
        api.call("POST", f"/api/sandbox/{sid}/archive")
        archive_s = time.perf_counter() - t
        archive_bytes = os.path.getsize(os.path.join(srv.data_dir, "archives", f"{sid}.tar.zst"))
        t = time.perf_counter()
        started = api.call("POST", f"/api/sandbox/{sid}/start")
        restore_s = time.perf_counter() - t
        assert started["state"] == "started", started

        rounds, stops, starts = [], [], []
        for _ in range(args.n):
            t = time.perf_counter()
            api.call("POST", f"/api/sandbox/{sid}/stop")
            t1 = time.perf_counter()
            api.call("POST", f"/api/sandbox/{sid}/start")
            t2 = time.perf_counter()
            stops.append(t1 - t)
            starts.append(t2 - t1)
            rounds.append(t2 - t)
        # Pause/resume with something in memory to keep: a process holding
        # 100 MiB, beside the daemon.
        hold = "import os, time; b = bytearray(os.urandom(1 << 20) * 100); time.sleep(3600)"
        r = api.call("POST", f"/toolbox/{sid}/process/execute",
                     {"command": f"sh -c '(setsid nohup python3 -c \"{hold}\" >/dev/null 2>&1 &)'"})
        assert r["exitCode"] == 0, r
        time.sleep(1)
        pause_rounds, pauses, resumes = [], [], []
        for _ in range(args.n):
            t = time.perf_counter()
            paused = api.call("POST", f"/api/sandbox/{sid}/pause")
            t1 = time.perf_counter()
            resumed = api.call("POST", f"/api/sandbox/{sid}/start")
            t2 = time.perf_counter()
            assert (paused["state"], resumed["state"]) == ("paused", "started"), (paused, resumed)
            pauses.append(t1 - t)
            resumes.append(t2 - t1)
            pause_rounds.append(t2 - t)
        api.call("DELETE", f"/api/sandbox/{sid}")

    mib = tree_bytes / (1 << 20)
    print(f"atoll lifecycle benchmark: tree of 10,000 files + 200 MiB ({mib:.0f} MiB), {os.cpu_count()} cpus")
    print(f"  archive (API, to archived)          {archive_s * 1000:8.0f} ms   {mib / archive_s:7.1f} MiB/s   archive {archive_bytes >> 20} MiB")
    print(f"  restore + start (API, to started)   {restore_s * 1000:8.0f} ms   {mib / restore_s:7.1f} MiB/s")
    print(f"  stop (API, to stopped)              {fmt_ms(stops)}")
    print(f"  start (API, to started)             {fmt_ms(starts)}")
    print(f"  stop -> start round trip            {fmt_ms(rounds)}")
    print(f"  pause (API, to paused)              {fmt_ms(pauses)}")
    print(f"  resume (API start of paused)        {fmt_ms(resumes)}")
    print(f"  pause -> start round trip           {fmt_ms(pause_rounds)}")
    print("baseline, same run:")
    print(f"  tar | zstd -3 of the same tree      {baseline * 1000:8.0f} ms   {mib / baseline:7.1f} MiB/s")
    print("ratios:")
    print(f"  archive / baseline time             {archive_s / baseline:6.2f}x")
    print(f"  stop->start / pause->start (p50)    {pct(rounds, 50) / pct(pause_rounds, 50):6.1f}x")


if __name__ == "__main__":
    main()
