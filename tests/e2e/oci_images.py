"""OCI images the tests build themselves, and a real registry on loopback to
push them to (Debian's `docker-registry`, started by the test): never the
internet.

`Layer` builds a layer tar in memory from entries (files, dirs, symlinks,
hard links, devices, raw hostile names); `push_image` uploads layers, config
and manifest through the distribution API, as `docker push` would.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """`docker-registry serve` on 127.0.0.1, optionally with basic auth."""

    def __init__(self, user: str | None = None, password: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="atoll-registry-"))
        self.port = _free_port()
        self.user, self.password = user, password
        config = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.dir / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if user:
            htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                      capture_output=True, text=True).stdout
            (self.dir / "htpasswd").write_text(htpasswd)
            config += ["auth:", "  htpasswd:", "    realm: atoll-test",
                       f"    path: {self.dir / 'htpasswd'}"]
        (self.dir / "config.yml").write_text("\n".join(config) + "\n")
        self.log = open(self.dir / "log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.dir / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401: it is up
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"docker-registry did not start: {(self.dir / 'log').read_text()}")
                time.sleep(0.1)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _request(self, method: str, url: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None):
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        if self.user:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return urllib.request.urlopen(req, timeout=60)

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._request("POST", f"{self.url}/v2/{repo}/blobs/uploads/") as r:
            location = r.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        with self._request("PUT", f"{location}{sep}digest={digest}", data,
                           {"Content-Type": "application/octet-stream"}):
            pass
        return digest

    def push_manifest(self, repo: str, tag: str, manifest: bytes, media_type: str) -> str:
        with self._request("PUT", f"{self.url}/v2/{repo}/manifests/{tag}", manifest,
                           {"Content-Type": media_type}):
            pass
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Layer:
    """A layer tar built entry by entry."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int, uid: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid = ti.gid = uid
        ti.mtime = 1_700_000_000
        return ti

    def dir(self, name: str, mode: int = 0o755, uid: int = 0) -> "Layer":
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid))
        return self

    def file(self, name: str, data: bytes | str, mode: int = 0o644, uid: int = 0) -> "Layer":
        data = data.encode() if isinstance(data, str) else data
        ti = self._info(name, tarfile.REGTYPE, mode, uid)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str) -> "Layer":
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def hardlink(self, name: str, target: str) -> "Layer":
        ti = self._info(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def device(self, name: str, major: int, minor: int, block: bool = False) -> "Layer":
        ti = self._info(name, tarfile.BLKTYPE if block else tarfile.CHRTYPE, 0o666)
        ti.devmajor, ti.devminor = major, minor
        self.tar.addfile(ti)
        return self

    def whiteout(self, path: str) -> "Layer":
        d, _, base = path.rpartition("/")
        return self.file(f"{d}/.wh.{base}" if d else f".wh.{base}", b"")

    def opaque(self, directory: str) -> "Layer":
        return self.file(f"{directory.rstrip('/')}/.wh..wh..opq", b"")

    def raw(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def raw_tar_entry(name: bytes, data: bytes = b"", kind: bytes = b"0", linkname: bytes = b"") -> bytes:
    """One ustar entry with `name` written as given (tarfile would refuse
    hostile names); append `END_OF_TAR` after the last."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = f"{len(data):011o}\0".encode()
    h[136:148] = b"14524464000\0"
    h[148:156] = b" " * 8
    h[156:157] = kind
    h[157:157 + len(linkname)] = linkname
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    out = bytes(h) + data
    return out + b"\0" * ((512 - len(out) % 512) % 512)


END_OF_TAR = b"\0" * 1024


def busybox_base() -> Layer:
    """A small root filesystem: static busybox as /bin/sh and friends, root
    and the `daytona` user, /tmp, a home."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    layer = Layer()
    for d in ["bin", "etc", "tmp", "root", "home", "usr", "usr/bin", "var"]:
        layer.dir(d, 0o1777 if d == "tmp" else 0o755)
    layer.dir("home/daytona", 0o755, uid=1000)
    layer.file("bin/busybox", busybox, 0o755)
    applets = subprocess.run(["busybox", "--list"], capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            layer.hardlink(f"bin/{applet}", "bin/busybox")
    layer.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                              "daytona:x:1000:1000::/home/daytona:/bin/sh\n")
    layer.file("etc/group", "root:x:0:\ndaytona:x:1000:\n")
    layer.file("etc/os-release", "ID=atoll-test\n")
    return layer


def compress(raw: bytes, how: str) -> tuple[bytes, str]:
    if how == "gzip":
        return gzip.compress(raw, compresslevel=1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    if how == "zstd":
        out = subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, capture_output=True, check=True).stdout
        return out, "application/vnd.oci.image.layer.v1.tar+zstd"
    return raw, "application/vnd.oci.image.layer.v1.tar"


def push_image(registry: Registry, repo: str, tag: str, layers: list[bytes], *,
               env: list[str] | None = None, cmd: list[str] | None = None,
               entrypoint: list[str] | None = None, workdir: str | None = None,
               compression: list[str] | str = "gzip", docker_media: bool = False,
               lie_size: int | None = None, diff_ids: list[str] | None = None,
               as_index: bool = False) -> str:
    """Pushes an image of raw layer tars; returns its manifest digest.
    `lie_size` adds that much to the last layer's descriptor size;
    `diff_ids` replaces the config's."""
    kinds = [compression] * len(layers) if isinstance(compression, str) else compression
    descs, real_diff_ids = [], []
    for raw, how in zip(layers, kinds):
        blob, media = compress(raw, how)
        if docker_media:
            media = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        digest = registry.push_blob(repo, blob)
        descs.append({"mediaType": media, "digest": digest, "size": len(blob)})
        real_diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    if lie_size is not None:
        descs[-1]["size"] += lie_size
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": cmd, "Entrypoint": entrypoint, "WorkingDir": workdir or ""},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or real_diff_ids},
    }
    config_blob = json.dumps(config).encode()
    config_digest = registry.push_blob(repo, config_blob)
    if docker_media:
        manifest_type = "application/vnd.docker.distribution.manifest.v2+json"
        config_type = "application/vnd.docker.container.image.v1+json"
    else:
        manifest_type = "application/vnd.oci.image.manifest.v1+json"
        config_type = "application/vnd.oci.image.config.v1+json"
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config_blob)},
        "layers": descs,
    }).encode()
    if not as_index:
        return registry.push_manifest(repo, tag, manifest, manifest_type)
    digest = registry.push_manifest(repo, "amd64-" + tag, manifest, manifest_type)
    # An arm64 image beside it (its config says arm64: pulling it would fail).
    arm_config = json.dumps({**config, "architecture": "arm64"}).encode()
    arm_config_digest = registry.push_blob(repo, arm_config)
    arm_manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": arm_config_digest, "size": len(arm_config)},
        "layers": descs,
    }).encode()
    arm_digest = registry.push_manifest(repo, "arm64-" + tag, arm_manifest, manifest_type)
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": manifest_type, "digest": arm_digest, "size": len(arm_manifest),
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": manifest_type, "digest": digest, "size": len(manifest),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }).encode()
    return registry.push_manifest(repo, tag, index, "application/vnd.oci.image.index.v1+json")


def _image_config(raw_layers: list[bytes], entrypoint, cmd, env) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": cmd, "Entrypoint": entrypoint, "WorkingDir": ""},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(r).hexdigest() for r in raw_layers]},
    }).encode()


def _tar_of(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def oci_archive(layers: list[bytes], *, entrypoint=None, cmd=None, env=None,
                as_index: bool = False, corrupt_layer: bool = False) -> bytes:
    """An OCI image layout as a tar (what `skopeo copy … oci-archive:` and
    `docker save` since Docker 25 write): gzip layers, `index.json` naming
    the manifest (or, with `as_index`, an index of an arm64 and an amd64
    image)."""
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[f"blobs/sha256/{digest[7:]}"] = data
        return digest

    descs = []
    for raw in layers:
        blob, media = compress(raw, "gzip")
        descs.append({"mediaType": media, "digest": put(blob), "size": len(blob)})
    config = _image_config(layers, entrypoint, cmd, env)
    manifest_type = "application/vnd.oci.image.manifest.v1+json"

    def manifest_for(cfg: bytes) -> bytes:
        return json.dumps({"schemaVersion": 2, "mediaType": manifest_type,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(cfg), "size": len(cfg)},
                           "layers": descs}).encode()

    manifest = manifest_for(config)
    top = {"mediaType": manifest_type, "digest": put(manifest), "size": len(manifest)}
    if as_index:
        arm = manifest_for(json.dumps({**json.loads(config), "architecture": "arm64"}).encode())
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [
                                {"mediaType": manifest_type, "digest": put(arm), "size": len(arm),
                                 "platform": {"architecture": "arm64", "os": "linux"}},
                                {**top, "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": put(index),
               "size": len(index)}
    if corrupt_layer:
        key = f"blobs/sha256/{descs[-1]['digest'][7:]}"
        blobs[key] = gzip.compress(layers[-1] + b"\0" * 512, mtime=0)
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [top]}).encode(), **blobs}
    return _tar_of(files)


def docker_save_archive(layers: list[bytes], *, entrypoint=None, cmd=None, env=None,
                        tag: str = "app:1", layer_paths: list[str] | None = None,
                        symlinks: dict[str, str] | None = None,
                        claimed: list[bytes] | None = None) -> bytes:
    """The older `docker save` format: `manifest.json`, the config as
    `<id>.json`, each layer an uncompressed `<id>/layer.tar`. `claimed`:
    the layers the config's diff ids name instead (a lie)."""
    config = _image_config(claimed or layers, entrypoint, cmd, env)
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    files = {config_name: config}
    paths = []
    for raw in layers:
        path = f"{hashlib.sha256(raw).hexdigest()}/layer.tar"
        files[path] = raw
        paths.append(path)
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": layer_paths or paths}]
    files["manifest.json"] = json.dumps(manifest).encode()
    return _tar_of(files, symlinks)


def gzip_bomb_layer(name: str, size: int) -> bytes:
    """A gzip stream of a tar holding `size` zero bytes (a multiple of 1
    MiB), compressed as it is made (about 1000:1): the raw tar never sits in
    memory."""
    import zlib
    header = bytearray(raw_tar_entry(name.encode(), b"")[:512])
    header[124:136] = f"{size:011o}\0".encode()
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    co = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [co.compress(bytes(header))]
    chunk = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        out.append(co.compress(chunk))
    out.append(co.compress(END_OF_TAR))
    out.append(co.flush())
    return b"".join(out)


def api(server, method: str, path: str, body=None, headers: dict | None = None):
    """A raw API call; returns (status, parsed JSON or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{server.url}/api{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_snapshot(server, ident: str, timeout: float = 120, headers: dict | None = None) -> dict:
    deadline = time.time() + timeout
    while True:
        status, snap = api(server, "GET", f"/snapshots/{ident}", headers=headers)
        assert status == 200, snap
        if snap["state"] in ("active", "error", "build_failed"):
            return snap
        if time.time() > deadline:
            raise AssertionError(f"snapshot {ident} still {snap['state']}")
        time.sleep(0.2)


__all__ = ["Registry", "Layer", "busybox_base", "push_image", "raw_tar_entry", "END_OF_TAR",
           "oci_archive", "docker_save_archive",
           "gzip_bomb_layer", "api", "wait_snapshot", "os"]
