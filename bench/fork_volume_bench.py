#!/usr/bin/env python3
"""Fork and volume benchmark, on one `atoll serve`:

1. Fork of a started sandbox with 200 MiB written (POST /api/sandbox/{id}/fork
   until the child is started) against a create of a new sandbox from the
   default image, interleaved.
2. Disk taken by 10 forks of one unchanged parent (growth of the used
   space of the filesystem sandbox disks live on, the children alive)
   against 10 full copies of what the parent wrote.
3. Sequential write and read throughput (dd, 256 MiB, fsync on write) in a
   volume, in the sandbox's own disk, and in a host directory on the same
   filesystem, interleaved.

Prints medians, p95 and ratios; asserts nothing.
Usage: bench/fork_volume_bench.py [--atoll BIN] [--images-dir DIR] [-n 10]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, pct  # noqa: E402


def used(path: str) -> int:
    """Bytes in use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def exec_(api: Api, sid: str, cmd: str, timeout: int = 300) -> str:
    r = api.call("POST", f"/toolbox/{sid}/process/execute", {"command": f"sh -c '{cmd}'", "timeout": timeout})
    if r.get("exitCode") not in (0, None):
        raise RuntimeError(f"{cmd}: {r}")
    return r.get("result", "")


def dd_rate(text: str) -> float:
    """MB/s from dd's summary line."""
    m = re.search(r"([\d.]+) s, ", text)
    b = re.search(r"^(\d+) bytes", text, re.M)
    if not (m and b):
        raise RuntimeError(f"no dd summary in {text!r}")
    return int(b.group(1)) / float(m.group(1)) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=10, help="forks and creates of each kind")
    args = ap.parse_args()
    with Server(args.atoll, args.images_dir) as srv:
        api = Api(srv.port, srv.key)
        parent = api.call("POST", "/api/sandbox", {"autoStopInterval": 0})
        pid = parent["id"]
        exec_(api, pid, "head -c 209715200 /dev/urandom > /home/daytona/written && sync")
        pool = os.path.join(srv.data_dir, "sandboxes")
        kind = subprocess.run(["stat", "-f", "-c", "%T", pool], capture_output=True, text=True).stdout.strip()
        forks, creates, made = [], [], []
        for _ in range(args.n):
            t = time.perf_counter()
            child = api.call("POST", f"/api/sandbox/{pid}/fork", {})
            forks.append(time.perf_counter() - t)
            made.append(child["id"])
            t = time.perf_counter()
            sb = api.call("POST", "/api/sandbox", {"autoStopInterval": 0})
            creates.append(time.perf_counter() - t)
            made.append(sb["id"])
        print(f"fork of a sandbox with 200 MiB written, and create, interleaved (sandbox disks on {kind}):")
        print(f"  fork    {fmt_ms(forks)}")
        print(f"  create  {fmt_ms(creates)}")
        print(f"  fork/create p50 ratio {pct(forks, 50) / pct(creates, 50):.2f}")
        for sid in made:
            api.call("DELETE", f"/api/sandbox/{sid}")

        # Ten children alive at once: what they take on the sandboxes'
        # filesystem beyond the parent, against a full copy per fork.
        before = used(pool)
        children = [api.call("POST", f"/api/sandbox/{pid}/fork", {})["id"] for _ in range(args.n)]
        grown = used(pool) - before
        copies = args.n * (200 << 20)
        print(f"disk taken by {args.n} forks of one unchanged parent (used space of the sandboxes' filesystem):")
        print(f"  {args.n} forks   {grown / 2**20:8.1f} MiB")
        print(f"  {args.n} copies  {copies / 2**20:8.1f} MiB   ratio {grown / copies:.3f}")
        for sid in children:
            api.call("DELETE", f"/api/sandbox/{sid}")
        api.call("DELETE", f"/api/sandbox/{pid}")

        vol = api.call("POST", "/api/volumes", {"name": "bench-volume", "size": 2})
        sb = api.call("POST", "/api/sandbox", {"autoStopInterval": 0,
                                               "volumes": [{"volumeId": vol["id"], "mountPath": "/vol"}]})
        sid = sb["id"]
        host_dir = tempfile.mkdtemp(prefix="atoll-bench-host-", dir=os.path.dirname(args.images_dir))
        rates = {"volume": ([], []), "sandbox disk": ([], []), "host dir": ([], [])}
        write = "dd if=/dev/zero of={f} bs=1M count=256 conv=fsync 2>&1"
        read = "dd if={f} of=/dev/null bs=1M 2>&1"
        for _ in range(3):
            for kind, f in [("volume", "/vol/dd"), ("sandbox disk", "/home/daytona/dd")]:
                rates[kind][0].append(dd_rate(exec_(api, sid, write.format(f=f))))
                rates[kind][1].append(dd_rate(exec_(api, sid, read.format(f=f))))
                exec_(api, sid, f"rm -f {f}")
            f = os.path.join(host_dir, "dd")
            w = subprocess.run(["sh", "-c", write.format(f=f)], capture_output=True, text=True).stdout
            r = subprocess.run(["sh", "-c", read.format(f=f)], capture_output=True, text=True).stdout
            rates["host dir"][0].append(dd_rate(w))
            rates["host dir"][1].append(dd_rate(r))
            os.unlink(f)
        os.rmdir(host_dir)
        print("sequential throughput, 256 MiB (write with fsync; read right after, page cache warm):")
        base_w, base_r = pct(rates["host dir"][0], 50), pct(rates["host dir"][1], 50)
        for kind, (w, r) in rates.items():
            print(f"  {kind:13s} write {pct(w, 50):8.0f} MB/s ({pct(w, 50) / base_w:4.2f}x host)"
                  f"   read {pct(r, 50):8.0f} MB/s ({pct(r, 50) / base_r:4.2f}x host)")
        api.call("DELETE", f"/api/sandbox/{sid}")
        api.call("DELETE", f"/api/volumes/{vol['id']}")


if __name__ == "__main__":
    main()
