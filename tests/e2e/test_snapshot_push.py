"""`atoll snapshot push`: a local image archive (an OCI image layout, as a
tar or a directory; a `docker save` tar, gzip-compressed too) uploaded
through the server's object store and imported by the runner, with no
registry anywhere; sandboxes of it run its files and its entrypoint.
Hostile archives (paths out of the archive, symbolic links to host
files, a blob that is not what its digest says) fail the snapshot with
a reason and read nothing outside the archive."""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import subprocess
import tarfile
from pathlib import Path

import pytest

from oci_images import Layer, api, busybox_base, docker_save_archive, oci_archive

# The import happens on the runner; the store only records a snapshot.
pytestmark = pytest.mark.skipif(os.environ.get("ATOLL_E2E_DATABASE") == "postgres",
                                reason="runner-side image work does not depend on the store")

ENTRYPOINT = ["sh", "-c", "echo booted; echo warn >&2; exec sleep 100000"]


@pytest.fixture
def atoll(atoll_bin, server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYTONA_", "ATOLL_API_"))}
    env.update({"ATOLL_API_URL": server.api_url, "ATOLL_API_KEY": server.api_key,
                "ATOLL_CONFIG": str(tmp_path / "none.json"),
                "ATOLL_TLS_CA_FILE": str(Path(server.data_dir) / "tls" / "ca.pem")})

    def run(*args, check=True):
        p = subprocess.run([str(atoll_bin), *args], capture_output=True, text=True, env=env,
                           timeout=600)
        assert not check or p.returncode == 0, p
        return p
    return run


def app_layer(text: str) -> bytes:
    return Layer().dir("app").file("app/hello.txt", text).raw()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def test_push_an_oci_archive_and_run_its_files_and_entrypoint(atoll, tmp_path):
    archive = tmp_path / "app.tar"
    archive.write_bytes(oci_archive([busybox_base().raw(), app_layer("hi from the archive\n")],
                                    entrypoint=ENTRYPOINT, as_index=True))
    name = unique("pushed")
    snap = json.loads(atoll("snapshot", "push", str(archive), "--name", name, "-o", "json").stdout)
    assert snap["state"] == "active" and snap["name"] == name, snap
    sb = json.loads(atoll("sandbox", "create", "--snapshot", name, "-o", "json").stdout)
    try:
        assert atoll("exec", sb["id"], "--", "cat", "/app/hello.txt").stdout == "hi from the archive\n"
        # The image's own files (busybox), not the default image's.
        assert atoll("exec", sb["id"], "--", "test", "-e", "/usr/bin/python3",
                     check=False).returncode == 1
        # Its entrypoint ran: `atoll logs` shows its output, streams apart.
        p = atoll("logs", sb["id"])
        assert (p.stdout, p.stderr) == ("booted\n", "warn\n"), p
    finally:
        atoll("sandbox", "delete", sb["id"])
    # The same archive again: nothing new to upload or unpack.
    again = json.loads(atoll("snapshot", "push", str(archive), "--name", unique("again"),
                             "-o", "json").stdout)
    assert again["state"] == "active"
    assert again["buildInfo"]["contextHashes"] == snap["buildInfo"]["contextHashes"]
    for n in (name, again["name"]):
        atoll("snapshot", "delete", n)


def test_push_a_gzipped_docker_save_and_an_oci_layout_directory(atoll, tmp_path):
    saved = tmp_path / "saved.tar.gz"
    saved.write_bytes(gzip.compress(docker_save_archive(
        [busybox_base().raw(), app_layer("from docker save\n")], tag="myapp:1"), mtime=0))
    name = unique("saved")
    snap = json.loads(atoll("snapshot", "push", str(saved), "--name", name, "-o", "json").stdout)
    assert snap["state"] == "active", snap
    sb = json.loads(atoll("sandbox", "create", "--snapshot", name, "-o", "json").stdout)
    try:
        assert atoll("exec", sb["id"], "--", "cat", "/app/hello.txt").stdout == "from docker save\n"
    finally:
        atoll("sandbox", "delete", sb["id"])
    layout = tmp_path / "layout"
    layout.mkdir()
    oci = tmp_path / "oci.tar"
    oci.write_bytes(oci_archive([busybox_base().raw(), app_layer("from a directory\n")]))
    with tarfile.open(oci) as t:
        t.extractall(layout)  # our own archive
    snap = json.loads(atoll("snapshot", "push", str(layout), "--name", unique("dir"),
                            "-o", "json").stdout)
    assert snap["state"] == "active", snap
    # A directory that is no image is refused before anything is sent.
    p = atoll("snapshot", "push", str(tmp_path), "--name", unique("none"), check=False)
    assert p.returncode == 1 and "OCI image layout" in p.stderr, p


def test_hostile_archives_fail_the_snapshot_and_read_nothing_outside(atoll, tmp_path, server):
    # A layer no store has yet (one it has is reused by its diff id and
    # never read from the archive).
    base = Layer().file("unique", secrets.token_hex(16)).raw()
    cases = {
        # A layer path out of the archive.
        "escape": docker_save_archive([base], layer_paths=["../../../../etc/passwd"]),
        # A layer that is a symbolic link to a host file.
        "symlink": docker_save_archive([base], layer_paths=["evil/layer.tar"],
                                       symlinks={"evil": "/etc"}),
        # A blob that is not what its digest says.
        "corrupt": oci_archive([base, app_layer("x")], corrupt_layer=True),
        # No image at all.
        "nothing": None,
        # Claims a layer the store already has (the busybox base, pushed
        # above or by another organization) with other bytes.
        "claim": docker_save_archive([Layer().file("evil", "x").raw()],
                                     claimed=[busybox_base().raw()]),
        # The same claim, its layer path leading nowhere.
        "claim-missing": docker_save_archive([busybox_base().raw()],
                                             layer_paths=["../../x/layer.tar"]),
    }
    for kind, data in cases.items():
        path = tmp_path / f"{kind}.tar"
        if kind == "nothing":
            with tarfile.open(path, "w") as t:
                info = tarfile.TarInfo("readme.txt")
                info.size = 2
                t.addfile(info, io.BytesIO(b"hi"))
        else:
            path.write_bytes(data)
        p = atoll("snapshot", "push", str(path), "--name", unique(kind), check=False)
        assert p.returncode == 1 and "failed" in p.stderr, (kind, p)
        reason = p.stderr.lower()
        expected = {"escape": "etc/passwd", "symlink": "layer.tar", "corrupt": "hashes to",
                    "nothing": "neither", "claim": "the config says",
                    "claim-missing": "no such file"}[kind]
        assert expected in reason, (kind, p.stderr)
        # Host paths are never shown.
        assert str(server.data_dir) not in p.stderr


def test_create_snapshot_with_an_archive_validates_first(server):
    # Never uploaded: 400 and no snapshot.
    name = unique("absent")
    status, body = api(server, "POST", "/snapshots", {"name": name, "imageArchive": "0" * 32})
    assert status == 400 and "was not uploaded" in body["message"], body
    assert api(server, "GET", f"/snapshots/{name}")[0] == 404
    for bad in ({"imageArchive": "../../x"}, {"imageArchive": "0" * 32, "imageName": "alpine"}):
        status, body = api(server, "POST", "/snapshots", {"name": unique("bad"), **bad})
        assert status == 400, (bad, body)
