"""Volumes in an S3-compatible bucket (`--volumes-url s3://bucket/prefix`):
moto's S3 server on loopback stands in for the bucket, mounted by the
runner with Debian's s3fs. A volume's files are objects under its prefix;
sandboxes share them, they survive sandbox deletes and server restarts,
the files API reaches them, and deleting the volume removes its objects."""
import os
import secrets
import shutil
import urllib.request

import pytest
from daytona import CreateSandboxFromSnapshotParams, VolumeMount

from conftest import running_server
from oci_images import api
from test_archive_s3 import s3  # noqa: F401  (the moto fixture)

BUCKET = "atoll-archives"

pytestmark = [
    pytest.mark.skipif(os.environ.get("ATOLL_E2E_DATABASE") == "postgres",
                       reason="the volume backend does not depend on the store"),
    pytest.mark.skipif(shutil.which("s3fs") is None, reason="s3fs is missing: run scripts/setup.sh"),
]


def bucket_keys(url: str) -> list[str]:
    body = urllib.request.urlopen(f"{url}/{BUCKET}?list-type=2", timeout=10).read().decode()
    return [part.split("</Key>")[0] for part in body.split("<Key>")[1:]]


def run(sb, cmd: str) -> str:
    r = sb.process.exec(cmd)
    assert r.exit_code == 0, r.result
    return r.result


def test_an_s3_volume_round_trip(atoll_bin, images_dir, s3):  # noqa: F811
    env = {
        "ATOLL_VOLUMES_URL": f"s3://{BUCKET}/volumes",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT": s3,
        "AWS_ALLOW_HTTP": "true",
    }
    with running_server(atoll_bin, images_dir, env) as srv:
        d = srv.client()
        vol = d.volume.get(f"s3vol-{secrets.token_hex(3)}", create=True)
        assert vol.state == "ready"
        a = d.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=vol.id, mount_path="/home/daytona/s3")]))
        b = d.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=vol.id, mount_path="/data")]))
        try:
            run(a, "mkdir -p /home/daytona/s3/dir && echo via-s3 > /home/daytona/s3/dir/note")
            assert run(b, "cat /data/dir/note").strip() == "via-s3"
            run(b, "echo from-b > /data/b.txt")
        finally:
            a.delete()
            b.delete()
        keys = bucket_keys(s3)
        assert f"volumes/{vol.id}/dir/note" in keys, keys
        # The files API reaches it without a sandbox.
        status, _, body = srv.http("GET", f"/api/volumes/{vol.id}/files/download?path=b.txt")
        assert (status, body) == (200, b"from-b\n")
        srv.stop()
        srv.start()
        d = srv.client()
        c = d.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=vol.id, mount_path="/again")]))
        try:
            assert run(c, "cat /again/dir/note /again/b.txt").split() == ["via-s3", "from-b"]
        finally:
            c.delete()
        d.volume.delete(d.volume.get(vol.name))
        assert not [k for k in bucket_keys(s3) if k.startswith(f"volumes/{vol.id}/")], bucket_keys(s3)
        assert api(srv, "GET", f"/volumes/{vol.id}")[0] == 404
