"""Archive and restore against an S3-compatible store (`--archive-url
s3://bucket/prefix`): moto's S3 server on loopback stands in for the
bucket. The archive object appears in the bucket (not in the local
archives dir), restore brings the files back and removes the object."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from daytona import CreateSandboxFromSnapshotParams

from conftest import running_server

BUCKET = "atoll-archives"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3():
    port = free_port()
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"{url}/{BUCKET}", method="PUT")
                urllib.request.urlopen(req, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def bucket_keys(url):
    body = urllib.request.urlopen(f"{url}/{BUCKET}?list-type=2", timeout=10).read().decode()
    keys = []
    for part in body.split("<Key>")[1:]:
        keys.append(part.split("</Key>")[0])
    return keys


def test_archive_round_trip_through_s3(atoll_bin, images_dir, s3):
    env = {
        "ATOLL_ARCHIVE_URL": f"s3://{BUCKET}/sandboxes",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT": s3,
        "AWS_ALLOW_HTTP": "true",
    }
    with running_server(atoll_bin, images_dir, env) as srv:
        d = srv.client()
        sb = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
        sb.process.exec("head -c 20000000 /dev/urandom > /home/daytona/blob && sha256sum /home/daytona/blob > /home/daytona/sum")
        want = sb.fs.download_file("/home/daytona/sum")
        sb.stop()
        sb.archive()
        sb.refresh_data()
        assert sb.state == "archived"
        assert bucket_keys(s3) == [f"sandboxes/{sb.id}.tar.zst"]
        assert os.listdir(os.path.join(srv.data_dir, "archives")) == [], "the archive lives in the bucket"
        assert not os.path.exists(os.path.join(srv.data_dir, "sandboxes", sb.id, "disk.img"))
        sb.start()
        r = sb.process.exec("sha256sum /home/daytona/blob")
        assert r.result.encode() == want
        assert bucket_keys(s3) == [], "restore removes the archive object"
        # archived again, then deleted: the object goes with the sandbox
        sb.stop()
        sb.archive()
        assert len(bucket_keys(s3)) == 1
        d.delete(sb)
        assert bucket_keys(s3) == []
