#!/usr/bin/env python3
"""CLI benchmark: `atoll exec SANDBOX -- true` (a process of the CLI per
call: login file read, TLS/HTTP client, sandbox lookup, execute) against
the Python SDK's `sandbox.process.exec("true")` in a warm process, and
against a bare `atoll version` (the CLI's own start-up), interleaved.

Prints medians, p95 and ratios; asserts nothing.
Usage: bench/cli_bench.py [--atoll BIN] [--images-dir DIR] [-n 30]
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import DEFAULT_BIN, ROOT, Api, Server, fmt_ms, pct  # noqa: E402

SDK_LOOP = """
import sys, time
from daytona import Daytona, DaytonaConfig
d = Daytona(DaytonaConfig(api_url=sys.argv[1], api_key=sys.argv[2]))
sb = d.get(sys.argv[3])
sb.process.exec("true")
for _ in range(int(sys.argv[4])):
    t = time.perf_counter()
    sb.process.exec("true")
    print(time.perf_counter() - t)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    with Server(args.atoll, args.images_dir) as srv:
        api = Api(srv.port, srv.key)
        sb = api.call("POST", "/api/sandbox", {"autoStopInterval": 0})
        env = dict(os.environ, ATOLL_API_URL=f"{srv.url}/api", ATOLL_API_KEY=srv.key)
        cli, start = [], []
        for _ in range(args.n):
            t = time.perf_counter()
            subprocess.run([args.atoll, "exec", sb["id"], "--", "true"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            cli.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([args.atoll, "version"], check=True, stdout=subprocess.DEVNULL)
            start.append(time.perf_counter() - t)
        sdk = [float(x) for x in subprocess.run(
            [venv_python, "-c", SDK_LOOP, f"{srv.url}/api", srv.key, sb["id"], str(args.n)],
            check=True, capture_output=True, text=True).stdout.split()]
        print("exec round trip (`true`):")
        print(f"  atoll exec (new process)   {fmt_ms(cli)}")
        print(f"  SDK process.exec (warm)    {fmt_ms(sdk)}")
        print(f"  atoll version (start-up)   {fmt_ms(start)}")
        print(f"  atoll exec / SDK p50 ratio {pct(cli, 50) / pct(sdk, 50):.2f}")
        api.call("DELETE", f"/api/sandbox/{sb['id']}")


if __name__ == "__main__":
    main()
