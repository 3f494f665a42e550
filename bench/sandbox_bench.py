#!/usr/bin/env python3
"""Sandbox lifecycle benchmark: creates and deletes N sandboxes through the
API of a real `atoll serve` and prints p50/p95 of

  * API create (request until the `started` response),
  * create + first exec,
  * exec round trip of `true`,
  * idle memory per sandbox (daemon RSS, and kernel-charged cgroup memory),

beside a baseline measured in the same run: `unshare --pid --fork --mount
--net chroot <image rootfs> /bin/true`, printing the ratios. Figures are
medians over many runs because this machine is noisy; nothing here asserts.

Usage: bench/sandbox_bench.py [--atoll BIN] [--images-dir DIR] [-n 100]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, pct, time_spawns  # noqa: E402


def status_kib(pid, field, path="status"):
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cgroup_memory(data_dir, sandbox_id):
    inst = open(os.path.join(data_dir, "runner", "instance")).read().strip()
    for p in (f"/sys/fs/cgroup/memory/atoll/{inst}/{sandbox_id}/memory.usage_in_bytes",
              f"/sys/fs/cgroup/atoll/{inst}/{sandbox_id}/memory.current"):
        if os.path.exists(p):
            return int(open(p).read())
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=100, help="sandboxes to create and delete")
    ap.add_argument("--execs", type=int, default=300, help="exec round trips on one sandbox")
    args = ap.parse_args()

    with Server(args.atoll, args.images_dir) as srv:
        data_dir = srv.data_dir
        api = Api(srv.port, srv.key)
        snap = next(s for s in api.call("GET", "/api/snapshots")["items"] if s["general"])
        rootfs = os.path.join(args.images_dir, "layers", snap["id"].replace(":", "-"))

        # warm-up
        for _ in range(3):
            sb = api.call("POST", "/api/sandbox", {})
            api.call("DELETE", f"/api/sandbox/{sb['id']}")

        create, create_exec, ids = [], [], []
        for i in range(args.n):
            t = time.perf_counter()
            sb = api.call("POST", "/api/sandbox", {"labels": {"bench": "1"}})
            t1 = time.perf_counter()
            assert sb["state"] == "started", sb
            api.call("POST", f"/toolbox/{sb['id']}/process/execute", {"command": "true"})
            t2 = time.perf_counter()
            create.append(t1 - t)
            create_exec.append(t2 - t)
            ids.append(sb["id"])

        # exec round trips on one sandbox
        execs = []
        for _ in range(args.execs):
            t = time.perf_counter()
            r = api.call("POST", f"/toolbox/{ids[0]}/process/execute", {"command": "true"})
            execs.append(time.perf_counter() - t)
            assert r["exitCode"] == 0

        # idle memory: let everything settle, then read daemon RSS and cgroup charge
        time.sleep(2)
        rss, pss, anon, charged = [], [], [], []
        for sid in ids:
            j = json.load(open(os.path.join(data_dir, "runner", "journal", f"{sid}.json")))
            pid = j["pid"]
            procs = [pid] + children(pid)
            rss.append(sum(status_kib(p, "VmRSS") for p in procs) / 1024)
            anon.append(sum(status_kib(p, "RssAnon") for p in procs) / 1024)
            pss.append(sum(status_kib(p, "Pss", "smaps_rollup") for p in procs) / 1024)
            m = cgroup_memory(data_dir, sid)
            if m is not None:
                charged.append(m / (1 << 20))

        deletes = []
        for sid in ids:
            t = time.perf_counter()
            api.call("DELETE", f"/api/sandbox/{sid}")
            deletes.append(time.perf_counter() - t)

        base = time_spawns(["unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc",
                            "chroot", rootfs, "/bin/true"], args.n)
        base_exec = time_spawns(["chroot", rootfs, "/bin/sh", "-c", "true"], args.execs)

        print(f"atoll sandbox benchmark: {args.n} sandboxes, {args.execs} execs, {os.cpu_count()} cpus")
        print(f"  API create (to started)      {fmt_ms(create)}")
        print(f"  create + first exec          {fmt_ms(create_exec)}")
        print(f"  exec round trip (true)       {fmt_ms(execs)}")
        print(f"  delete                       {fmt_ms(deletes)}")
        print(f"  idle daemon RSS / sandbox    p50 {pct(rss, 50):6.2f} MiB   p95 {pct(rss, 95):6.2f} MiB   (includes binary pages shared by all sandboxes)")
        print(f"  idle daemon PSS / sandbox    p50 {pct(pss, 50):6.2f} MiB   p95 {pct(pss, 95):6.2f} MiB")
        print(f"  idle daemon anon / sandbox   p50 {pct(anon, 50):6.2f} MiB   p95 {pct(anon, 95):6.2f} MiB")
        if charged:
            print(f"  cgroup charge / sandbox      p50 {pct(charged, 50):6.2f} MiB   p95 {pct(charged, 95):6.2f} MiB")
        print("baseline, same run:")
        print(f"  unshare pid+mnt+net+uts+ipc chroot /bin/true   {fmt_ms(base)}")
        print(f"  chroot sh -c true (spawn in image)             {fmt_ms(base_exec)}")
        print("ratios (p50):")
        print(f"  API create / baseline         {pct(create, 50) / pct(base, 50):6.2f}x")
        print(f"  create + exec / baseline      {pct(create_exec, 50) / pct(base, 50):6.2f}x")
        print(f"  exec round trip / raw spawn   {pct(execs, 50) / pct(base_exec, 50):6.2f}x")


if __name__ == "__main__":
    main()
