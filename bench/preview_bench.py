#!/usr/bin/env python3
"""Preview proxy benchmark: small keep-alive GETs and a bulk download
through `/preview/{id}/{port}/…` (host → API → daemon tunnel → server on
127.0.0.1 inside the sandbox), beside the same client talking to the same
server directly from inside the sandbox, measured in the same run. Prints
p50/p95 per-request latency, throughput and the ratios; asserts nothing.
The sandbox has no network path from the host, so "direct" runs inside it.
The server is Python's `http.server` (HTTP/1.0: a connection per request);
the same small GETs then go to a keep-alive variant (HTTP/1.1, no Nagle),
whose connections the daemon can reuse.

Usage: bench/preview_bench.py [--atoll BIN] [-n 500]
"""
import argparse
import base64
import json
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, pct  # noqa: E402

CLIENT = r'''
import http.client, json, sys, time
host, port, path, n, headers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
c = http.client.HTTPConnection(host, port, timeout=60)
lat = []
for _ in range(n):
    t = time.perf_counter()
    c.request("GET", path + "small.txt", headers=headers)
    r = c.getresponse(); r.read()
    lat.append(time.perf_counter() - t)
if sys.argv[6:] == ["latency-only"]:
    print(json.dumps({"lat": lat}))
    sys.exit()
t = time.perf_counter()
c.request("GET", path + "big.bin", headers=headers)
r = c.getresponse(); size = 0
while True:
    b = r.read(1 << 20)
    if not b: break
    size += len(b)
print(json.dumps({"lat": lat, "bytes": size, "secs": time.perf_counter() - t}))
'''

KEEPALIVE_APP = r'''
import http.server
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8001), H).serve_forever()
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=500)
    args = ap.parse_args()
    with Server(args.atoll, args.images_dir) as srv:
        api = Api(srv.port, srv.key)
        sb = api.call("POST", "/api/sandbox", {"autoStopInterval": 0})
        sid = sb["id"]
        ex = lambda cmd, t=600: api.call("POST", f"/toolbox/{sid}/process/execute", {"command": cmd, "timeout": t})
        ex("mkdir -p /tmp/www && cd /tmp/www && echo ok > small.txt && head -c 268435456 /dev/zero > big.bin")
        api.call("POST", f"/toolbox/{sid}/process/session", {"sessionId": "web"})
        api.call("POST", f"/toolbox/{sid}/process/session/web/exec",
                 {"command": "cd /tmp/www && python3 -m http.server 8000 --bind 127.0.0.1", "runAsync": True})
        app = base64.b64encode(KEEPALIVE_APP.encode()).decode()
        api.call("POST", f"/toolbox/{sid}/process/session", {"sessionId": "web-ka"})
        api.call("POST", f"/toolbox/{sid}/process/session/web-ka/exec",
                 {"command": f"cd /tmp/www && echo {app} | base64 -d > /tmp/ka.py && python3 /tmp/ka.py",
                  "runAsync": True})
        for port in (8000, 8001):
            for _ in range(100):
                if ex(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 1)\"")["exitCode"] == 0:
                    break
                time.sleep(0.1)
        link = api.call("GET", f"/api/sandbox/{sid}/ports/8000/preview-url")
        client = base64.b64encode(CLIENT.encode()).decode()
        direct_cmd = (f"echo {client} | base64 -d > /tmp/c.py && python3 /tmp/c.py 127.0.0.1 8000 / {args.n} "
                      f"'{json.dumps({})}'")
        direct = json.loads(ex(direct_cmd)["result"])
        u = urllib.parse.urlsplit(link["url"])
        import subprocess
        via = json.loads(subprocess.run(
            [sys.executable, "-c", CLIENT, u.hostname, str(u.port), u.path + "/", str(args.n),
             json.dumps({"X-Daytona-Preview-Token": link["token"], "X-Daytona-Skip-Last-Activity-Update": "true"})],
            capture_output=True, text=True, check=True).stdout)
        ka_direct = json.loads(ex(f"python3 /tmp/c.py 127.0.0.1 8001 / {args.n} '{{}}' latency-only")["result"])
        ka_link = api.call("GET", f"/api/sandbox/{sid}/ports/8001/preview-url")
        ka_u = urllib.parse.urlsplit(ka_link["url"])
        ka_via = json.loads(subprocess.run(
            [sys.executable, "-c", CLIENT, ka_u.hostname, str(ka_u.port), ka_u.path + "/", str(args.n),
             json.dumps({"X-Daytona-Preview-Token": ka_link["token"], "X-Daytona-Skip-Last-Activity-Update": "true"}),
             "latency-only"],
            capture_output=True, text=True, check=True).stdout)
        api.call("DELETE", f"/api/sandbox/{sid}")
    mib = lambda r: r["bytes"] / (1 << 20) / r["secs"]
    print(f"atoll preview benchmark: {args.n} small keep-alive GETs + 256 MiB download, {os.cpu_count()} cpus")
    print(f"  through the preview   {fmt_ms(via['lat'])}   {mib(via):7.1f} MiB/s")
    print(f"  direct (in sandbox)   {fmt_ms(direct['lat'])}   {mib(direct):7.1f} MiB/s")
    print(f"  added latency p50     {(pct(via['lat'], 50) - pct(direct['lat'], 50)) * 1000:6.2f} ms")
    print(f"  throughput ratio      {mib(via) / mib(direct):6.2f} of direct")
    print("keep-alive app (HTTP/1.1, TCP_NODELAY), same small GETs:")
    print(f"  through the preview   {fmt_ms(ka_via['lat'])}")
    print(f"  direct (in sandbox)   {fmt_ms(ka_direct['lat'])}")
    print(f"  added latency p50     {(pct(ka_via['lat'], 50) - pct(ka_direct['lat'], 50)) * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
