#!/usr/bin/env python3
"""Image benchmark, all on loopback (a `docker-registry` the bench starts):

1. Pull + unpack of a multi-layer image (~4 gzip layers built from host
   directories): `atoll image pull` into an empty store, against `skopeo copy`
   + `umoci unpack` of the same image, interleaved, each into fresh dirs.
2. Create (POST /api/sandbox until started) from the pulled image against
   create from the default image, interleaved, on one `atoll serve`.

3. A Dockerfile of five RUN steps over that image built cold (a new first
   step each time), against a rebuild with only the last step changed (the
   first four from the layer cache), interleaved.

Prints medians, p95 and ratios; asserts nothing.
Usage: bench/image_bench.py [--atoll BIN] [--images-dir DIR] [-n 5] [--creates 20]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
from benchlib import DEFAULT_BIN, Api, Server, fmt_ms, pct  # noqa: E402
from oci_images import Registry, busybox_base, push_image  # noqa: E402

# Host directories that become the image's upper layers (what exists).
LAYER_DIRS = ["/usr/lib/python3.11", "/usr/share/perl", "/usr/include", "/usr/share/i18n"]


def dir_layer(path: str) -> bytes:
    import io
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.add(path, arcname=path.lstrip("/"), filter=lambda ti: None if ti.isdev() else ti)
    return buf.getvalue()


def timed(argv, env=None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoll", default=os.environ.get("ATOLL_BIN", DEFAULT_BIN))
    ap.add_argument("--images-dir", default=os.environ.get("ATOLL_IMAGES_DIR", "/var/lib/atoll/images"))
    ap.add_argument("-n", type=int, default=5, help="pulls of each kind")
    ap.add_argument("--creates", type=int, default=20, help="creates of each kind")
    args = ap.parse_args()
    for tool in ["skopeo", "umoci", "docker-registry"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/setup.sh")

    reg = Registry()
    work = tempfile.mkdtemp(prefix="atoll-image-bench-")
    try:
        layers = [busybox_base().raw()] + [dir_layer(d) for d in LAYER_DIRS if os.path.isdir(d)]
        raw_mib = sum(len(x) for x in layers) / (1 << 20)
        push_image(reg, "bench/multi", "1", layers, cmd=["sleep", "infinity"])
        ref = f"{reg.host}/bench/multi:1"
        print(f"image: {len(layers)} layers, {raw_mib:.0f} MiB uncompressed, gzip")

        atoll, pair = [], []
        for i in range(args.n):
            store = os.path.join(work, f"store-{i}")
            atoll.append(timed([args.atoll, "image", "pull", ref, "--images-dir", store]))
            oci, bundle = os.path.join(work, f"oci-{i}"), os.path.join(work, f"bundle-{i}")
            t = time.perf_counter()
            subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:1"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["umoci", "unpack", "--image", f"{oci}:1", bundle],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pair.append(time.perf_counter() - t)
            for d in (store, oci, bundle):
                shutil.rmtree(d, ignore_errors=True)
        print(f"pull+unpack  atoll image pull      {fmt_ms(atoll)}")
        print(f"pull+unpack  skopeo copy + umoci   {fmt_ms(pair)}")
        print(f"ratio of medians atoll/(skopeo+umoci): {pct(atoll, 50) / pct(pair, 50):.2f}x")

        with Server(args.atoll, args.images_dir) as srv:
            api = Api(srv.port, srv.key)
            snap = api.call("POST", "/api/snapshots", {"name": "bench-multi", "imageName": ref})
            deadline = time.time() + 300
            while snap["state"] not in ("active", "error"):
                if time.time() > deadline:
                    raise SystemExit("the snapshot was not pulled in 5 minutes")
                time.sleep(0.1)
                snap = api.call("GET", f"/api/snapshots/{snap['id']}")
            if snap["state"] != "active":
                raise SystemExit(f"pull failed: {snap['errorReason']}")
            default, pulled = [], []
            for i in range(args.creates):
                for body, out in (({}, default), ({"snapshot": "bench-multi"}, pulled)):
                    t = time.perf_counter()
                    sb = api.call("POST", "/api/sandbox", body)
                    out.append(time.perf_counter() - t)
                    assert sb["state"] == "started", sb
                    api.call("DELETE", f"/api/sandbox/{sb['id']}")
            print(f"create  default image          {fmt_ms(default)}")
            print(f"create  pulled {len(layers)}-layer image  {fmt_ms(pulled)}")
            print(f"ratio of medians pulled/default: {pct(pulled, 50) / pct(default, 50):.2f}x")

            def build(dockerfile):
                t = time.perf_counter()
                s = api.call("POST", "/api/snapshots", {"name": f"bench-build-{os.urandom(4).hex()}",
                                                       "buildInfo": {"dockerfileContent": dockerfile}})
                while s["state"] not in ("active", "error", "build_failed"):
                    time.sleep(0.05)
                    s = api.call("GET", f"/api/snapshots/{s['id']}")
                elapsed = time.perf_counter() - t
                if s["state"] != "active":
                    raise SystemExit(f"build failed: {s['errorReason']}")
                return elapsed, s["id"]

            cold, warm = [], []
            for i in range(args.n):
                salt = os.urandom(6).hex()
                steps = [f"RUN echo {salt} > /salt"] + [
                    f"RUN mkdir -p /opt/s{k} && seq 1 2000 > /opt/s{k}/numbers" for k in range(3)]
                base_df = f"FROM {ref}\n" + "\n".join(steps) + "\n"
                elapsed, sid = build(base_df + "RUN echo first > /last\n")
                cold.append(elapsed)
                elapsed, sid2 = build(base_df + "RUN echo second > /last\n")
                warm.append(elapsed)
                for x in (sid, sid2):
                    api.call("DELETE", f"/api/snapshots/{x}")
            print(f"build 5 RUN steps, cold cache         {fmt_ms(cold)}")
            print(f"rebuild, last step changed (warm)     {fmt_ms(warm)}")
            print(f"ratio of medians warm/cold: {pct(warm, 50) / pct(cold, 50):.2f}x")
            api.call("DELETE", f"/api/snapshots/{snap['id']}")
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
