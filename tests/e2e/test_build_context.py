"""Build contexts: local files an `Image` adds (`add_local_file`,
`add_local_dir`, `COPY` in a Dockerfile) uploaded by the official SDK
through `/api/object-storage/push-access` to Atoll's S3-compatible endpoint
over HTTPS (the server's local CA trusted in a private mount namespace, as
the SDK's upload client trusts only the system bundle), then copied into
the image by the builder. Also the endpoint's own rules: Signature V4,
per-organization keys, payload hashes, expiry."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import pytest

from oci_images import END_OF_TAR, Layer, Registry, api, busybox_base, push_image, raw_tar_entry, wait_snapshot

store_independent = pytest.mark.skipif(os.environ.get("ATOLL_E2E_DATABASE") == "postgres",
                                       reason="builds do not depend on the store")

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="module")
def base_image():
    registry = Registry()
    repo = f"ctx/base-{secrets.token_hex(3)}"
    push_image(registry, repo, "1", [busybox_base().raw()])
    yield f"{registry.host}/{repo}:1"
    registry.stop()


def trusting_bundle(server, tmp_path: Path) -> Path:
    """The system CA bundle plus the server's local CA."""
    ca = Path(server.data_dir) / "tls" / "ca.pem"
    assert ca.is_file(), "atoll serve makes its local CA at <data-dir>/tls/ca.pem"
    bundle = tmp_path / "bundle.pem"
    system = Path(SYSTEM_BUNDLE).read_bytes() if Path(SYSTEM_BUNDLE).exists() else b""
    bundle.write_bytes(system + b"\n" + ca.read_bytes())
    return bundle


def run_sdk(server, tmp_path: Path, code: str, *args: str, trust: bool = True) -> dict:
    """Runs `code` (Python using the SDK; it prints one JSON line last)
    in a private mount namespace whose system CA bundle trusts the
    server's CA (or not, with trust=False)."""
    script = tmp_path / f"sdk_{secrets.token_hex(3)}.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env["DAYTONA_API_URL"] = server.api_url
    env["DAYTONA_API_KEY"] = server.api_key
    env.pop("DAYTONA_TARGET", None)
    bundle = trusting_bundle(server, tmp_path) if trust else Path(SYSTEM_BUNDLE)
    target = SYSTEM_BUNDLE if Path(SYSTEM_BUNDLE).exists() else None
    assert target, "the system CA bundle is missing (ca-certificates)"
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
           'mount --bind "$0" "$1" && shift && exec "$@"', str(bundle), target,
           sys.executable, str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (f"the SDK script printed no result (exit {proc.returncode})\n"
                   f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}\n"
                   f"server log:\n{server.log_tail(60)}")
    return json.loads(lines[-1])


SDK_BUILD = """
    import json, sys, traceback
    from daytona import Daytona, Image, CreateSnapshotParams, CreateSandboxFromSnapshotParams
    ctx, base, name = sys.argv[1], sys.argv[2], sys.argv[3]
    d = Daytona()
    image = (Image.base(base)
             .add_local_dir(f"{ctx}/tree", "/app/tree")
             .add_local_file(f"{ctx}/hello.txt", "/app/hello.txt")
             .add_local_file(f"{ctx}/hello.txt", "/home/daytona/")
             .run_commands("cat /app/hello.txt > /app/copied"))
    logs = []
    try:
        snap = d.snapshot.create(CreateSnapshotParams(name=name, image=image), on_logs=logs.append)
    except Exception as e:
        print(json.dumps({"error": repr(e), "logs": logs}))
        sys.exit(0)
    sb = d.create(CreateSandboxFromSnapshotParams(snapshot=name))
    try:
        r = sb.process.exec(
            "cat /app/copied; sha256sum /app/tree/big.bin | cut -d' ' -f1; "
            "stat -c '%u:%g %a' /app/tree/sub/run.sh /app/hello.txt /home/daytona /home/daytona/hello.txt; "
            "readlink /app/tree/link; cat /app/tree/sub/deep/note")
        print(json.dumps({"state": snap.state, "id": snap.id, "out": r.result.splitlines()}))
    finally:
        sb.delete()
"""


def make_context(root: Path, big: bytes) -> Path:
    ctx = root / "ctx"
    (ctx / "tree" / "sub" / "deep").mkdir(parents=True)
    (ctx / "hello.txt").write_text("hello from the context\n")
    (ctx / "tree" / "big.bin").write_bytes(big)
    run = ctx / "tree" / "sub" / "run.sh"
    run.write_text("#!/bin/sh\necho run\n")
    run.chmod(0o750)
    (ctx / "tree" / "sub" / "deep" / "note").write_text("deep\n")
    # A symlink out of the context is copied as a symlink, never followed.
    (ctx / "tree" / "link").symlink_to("/etc/shadow")
    return ctx


@store_independent
def test_local_files_reach_the_image_through_the_sdk_upload(server, base_image, tmp_path):
    # 12 MiB: the SDK's upload goes multipart (5 MiB parts, out of order).
    big = os.urandom(12 << 20)
    ctx = make_context(tmp_path, big)
    name = f"ctx-{secrets.token_hex(4)}"
    out = run_sdk(server, tmp_path, SDK_BUILD, str(ctx), base_image, name)
    assert "error" not in out, out
    assert out["state"] == "active"
    lines = out["out"]
    assert lines[0] == "hello from the context"
    assert lines[1] == hashlib.sha256(big).hexdigest()
    # Copied files are root's (Docker's default); modes are kept; an
    # existing directory keeps its owner (daytona's home).
    assert lines[2] == "0:0 750", lines
    assert lines[3] == "0:0 644", lines
    assert lines[4] == "1000:0 755" or lines[4].startswith("1000:"), lines
    assert lines[5].startswith("0:0"), lines
    assert lines[6] == "/etc/shadow" and lines[7] == "deep", lines
    status, text = api(server, "GET", f"/snapshots/{out['id']}/build-logs")
    assert "Step 2/5 : COPY" in text and "copied" in text, text

    # The same image again: every step comes from the cache, and the
    # contexts are not uploaded again (they are found by hash).
    again = run_sdk(server, tmp_path, SDK_BUILD, str(ctx), base_image, name + "-again")
    assert "error" not in again, again
    assert again["out"][:2] == lines[:2]
    status, text = api(server, "GET", f"/snapshots/{again['id']}/build-logs")
    assert text.count("Using cache") == 4, text

    # One changed file: the steps before its COPY come from the cache,
    # its COPY and what follows are redone.
    (ctx / "hello.txt").write_text("changed\n")
    changed = run_sdk(server, tmp_path, SDK_BUILD, str(ctx), base_image, name + "-changed")
    assert "error" not in changed, changed
    assert changed["out"][0] == "changed", changed
    status, text = api(server, "GET", f"/snapshots/{changed['id']}/build-logs")
    assert text.count("Using cache") == 1, text  # the COPY of the unchanged directory


SDK_DOCKERFILE = """
    import json, sys
    from daytona import Daytona, Image, CreateSnapshotParams, CreateSandboxFromSnapshotParams
    dockerfile, name = sys.argv[1], sys.argv[2]
    d = Daytona()
    logs = []
    try:
        snap = d.snapshot.create(CreateSnapshotParams(name=name, image=Image.from_dockerfile(dockerfile)),
                                 on_logs=logs.append)
    except Exception as e:
        print(json.dumps({"error": str(e), "logs": logs}))
        sys.exit(0)
    sb = d.create(CreateSandboxFromSnapshotParams(snapshot=name))
    try:
        r = sb.process.exec("cat /srv/app/main.py /srv/app/lib/util.py /srv/app/conf/app.ini; "
                            "stat -c '%u:%g' /srv/app/main.py /srv/app/conf/app.ini; ls /srv/app")
        print(json.dumps({"out": r.result.splitlines(), "logs": logs}))
    finally:
        sb.delete()
"""


@store_independent
def test_a_dockerfile_with_copy_of_its_own_directory(server, base_image, tmp_path):
    proj = tmp_path / "proj"
    (proj / "lib").mkdir(parents=True)
    (proj / "main.py").write_text("print('main')\n")
    (proj / "lib" / "util.py").write_text("UTIL = 1\n")
    (proj / "app.ini").write_text("[app]\n")
    (proj / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM {base_image}
        WORKDIR /srv/app
        COPY main.py ./
        COPY lib lib/
        COPY --chown=daytona:daytona app.ini conf/app.ini
        RUN ls -R /srv/app > /srv/app/listing
        """))
    out = run_sdk(server, tmp_path, SDK_DOCKERFILE, str(proj / "Dockerfile"), f"df-{secrets.token_hex(4)}")
    assert "error" not in out, out
    assert out["out"][:3] == ["print('main')", "UTIL = 1", "[app]"], out
    assert out["out"][3:5] == ["0:0", "1000:1000"], out
    assert set(out["out"][5:]) >= {"main.py", "lib", "conf", "listing"}, out


def upload_context(server, tar: bytes) -> str:
    """Uploads a context tar as the SDKs do (signed PUT); its hash."""
    status, access = api(server, "GET", "/object-storage/push-access")
    assert status == 200, access
    h = secrets.token_hex(16)
    url = f"{access['storageUrl']}/{access['bucket']}/{access['organizationId']}/{h}/context.tar"
    status, body = s3(server, "PUT", url, sign("PUT", url, access, tar), tar)
    assert status == 200, body
    return h


def build(server, dockerfile: str, hashes: list[str]) -> dict:
    status, snap = api(server, "POST", "/snapshots", {"name": f"raw-{secrets.token_hex(4)}", "buildInfo": {
        "dockerfileContent": dockerfile, "contextHashes": hashes}})
    assert status == 200, snap
    return wait_snapshot(server, snap["id"])


@store_independent
def test_copy_of_a_file_not_in_the_context_fails_the_build_naming_it(server, base_image):
    ctx = upload_context(server, Layer().file("present.txt", "x\n").raw())
    snap = build(server, f"FROM {base_image}\nCOPY present.txt /p\nCOPY missing.txt /m\n", [ctx])
    assert snap["state"] == "build_failed", snap
    assert "missing.txt: not found in the build context" in snap["errorReason"], snap
    assert "COPY missing.txt /m" in snap["errorReason"], snap


@store_independent
def test_hostile_context_tars_are_refused_or_stay_inside_the_context(server, base_image, tmp_path):
    marker = f"atoll-ctx-escape-{secrets.token_hex(4)}"
    # `..` in a name: the context is refused, nothing is written outside.
    dotdot = upload_context(server, raw_tar_entry(f"../../../../tmp/{marker}".encode(), b"pwned") + END_OF_TAR)
    snap = build(server, f"FROM {base_image}\nCOPY x /x\n", [dotdot])
    assert snap["state"] == "build_failed" and ".." in snap["errorReason"], snap
    assert not Path(f"/tmp/{marker}").exists()

    # A symlink to the host's /etc, and a file written through it: the file
    # lands inside the context; COPY through the symlink reads the
    # context's own tree, never the host's.
    tar = (Layer().symlink("etc-link", "/etc").file(f"etc-link/{marker}", "inside\n")
           .symlink("passwd", "/etc/passwd").raw())
    ctx = upload_context(server, tar)
    snap = build(server, f"FROM {base_image}\nCOPY etc-link/ /got/\n", [ctx])
    assert snap["state"] == "active", snap.get("errorReason")
    assert not Path(f"/etc/{marker}").exists()
    out = run_sdk(server, tmp_path, """
        import json, sys
        from daytona import Daytona, CreateSandboxFromSnapshotParams
        sb = Daytona().create(CreateSandboxFromSnapshotParams(snapshot=sys.argv[1]))
        try:
            r = sb.process.exec(f"cat /got/{sys.argv[2]}; ls /got | wc -l")
            print(json.dumps({"out": r.result.splitlines()}))
        finally:
            sb.delete()
    """, snap["name"], marker)
    assert out["out"] == ["inside", "1"], out
    # A destination that is a symlink in the image is refused (writing a
    # directory there would hide what it points to).
    snap = build(server, f"FROM {base_image}\nRUN ln -s /usr /linked\nCOPY etc-link/ /linked/x/\n", [ctx])
    assert snap["state"] == "build_failed" and "symlink" in snap["errorReason"], snap
    # A source that is a symlink out of the context resolves inside it:
    # the host's /etc/passwd is never read.
    snap = build(server, f"FROM {base_image}\nCOPY passwd /p\n", [ctx])
    assert snap["state"] == "build_failed" and "passwd: not found" in snap["errorReason"], snap


def test_without_the_ca_trusted_the_sdk_refuses_the_upload(server, base_image, tmp_path):
    """The endpoint is HTTPS with the local CA's certificate: a client that
    does not trust the CA does not upload (nothing is sent in clear)."""
    ctx = make_context(tmp_path, b"small")
    out = run_sdk(server, tmp_path, SDK_BUILD, str(ctx), base_image, f"untrusted-{secrets.token_hex(3)}",
                  trust=False)
    assert "error" in out, out


# ---- the endpoint's rules, with a signer of our own ----------------------

def sign(method: str, url: str, access: dict, body: bytes = b"", *, amz_date: str | None = None,
         payload_hash: str | None = None, token: str | None = None, secret: str | None = None) -> dict:
    """Signature V4 headers for one request (what the SDKs' clients send)."""
    u = urllib.parse.urlsplit(url)
    amz_date = amz_date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = payload_hash or hashlib.sha256(body).hexdigest()
    headers = {
        "host": u.netloc,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
        "x-amz-security-token": token if token is not None else access["sessionToken"],
    }
    signed = sorted(headers)
    query = "&".join(sorted(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True)))
    canonical = "\n".join([method, u.path, query, "".join(f"{h}:{headers[h]}\n" for h in signed),
                           ";".join(signed), payload_hash])
    scope = f"{day}/{access['region']}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + (secret or access["secret"])).encode()
    for part in (day, access["region"], "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access['accessKey']}/{scope}, "
                                f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    return headers


def s3(server, method: str, url: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:
    """One request to the endpoint over HTTPS, trusting only the local CA:
    its status and body."""
    status, data, _ = s3_full(server, method, url, headers, body)
    return status, data


def s3_full(server, method: str, url: str, headers: dict, body: bytes = b""):
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=str(Path(server.data_dir) / "tls" / "ca.pem"))
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=30)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body,
                     headers={k: v for k, v in headers.items() if k != "host"})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_the_endpoint_checks_signatures_keys_payloads_and_expiry(server, tmp_path):
    status, access = api(server, "GET", "/object-storage/push-access")
    assert status == 200, access
    assert access["storageUrl"].startswith("https://"), access
    base = f"{access['storageUrl']}/{access['bucket']}"
    key = f"{access['organizationId']}/{'ab' * 16}/context.tar"
    url = f"{base}/{key}"

    body = b"hello world"
    status, _ = s3(server, "PUT", url, sign("PUT", url, access, body), body)
    assert status == 200
    status, _ = s3(server, "HEAD", url, sign("HEAD", url, access))
    assert status == 200
    status, got = s3(server, "GET", url, sign("GET", url, access))
    assert (status, got) == (200, body)

    # Unsigned, wrongly signed, a body that is not what was signed, a
    # wrong session token, a date an hour off: all refused, nothing stored.
    other = f"{base}/{access['organizationId']}/{'cd' * 16}/context.tar"
    assert s3(server, "PUT", other, {"x-amz-content-sha256": hashlib.sha256(b"x").hexdigest()}, b"x")[0] == 403
    assert s3(server, "PUT", other, sign("PUT", other, access, b"x", secret="0" * 64), b"x")[0] == 403
    status, err = s3(server, "PUT", other, sign("PUT", other, access, b"signed"), b"tampered")
    assert status == 400 and b"XAmzContentSHA256Mismatch" in err, err
    assert s3(server, "PUT", other, sign("PUT", other, access, b"x", token="f" * 64), b"x")[0] == 403
    old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ")
    status, err = s3(server, "PUT", other, sign("PUT", other, access, b"x", amz_date=old), b"x")
    assert status == 403 and b"RequestTimeTooSkewed" in err, err
    assert s3(server, "HEAD", other, sign("HEAD", other, access))[0] == 404

    # Another organization's keys and other buckets are out of reach.
    foreign = f"{base}/some-other-org/{'ab' * 16}/context.tar"
    status, err = s3(server, "PUT", foreign, sign("PUT", foreign, access, b"x"), b"x")
    assert status == 403 and b"AccessDenied" in err, err
    traversal = f"{base}/{access['organizationId']}/../some-other-org/x"
    assert s3(server, "GET", traversal, sign("GET", traversal, access))[0] in (403, 404)
    bucket = f"{access['storageUrl']}/another-bucket/{key}"
    assert s3(server, "PUT", bucket, sign("PUT", bucket, access, b"x"), b"x")[0] == 404

    # Expired or forged access keys.
    forged = dict(access, accessKey="ATL" + "0" * 16 + access["accessKey"][19:])
    status, err = s3(server, "GET", url, sign("GET", url, forged))
    assert status == 403 and b"ExpiredToken" in err, err
    made_up = dict(access, accessKey="AKIAEXAMPLE")
    assert s3(server, "HEAD", url, sign("HEAD", url, made_up))[0] == 403

    # A listing shows the organization's own objects only.
    listing = f"{base}/?list-type=2&max-keys=10&prefix={urllib.parse.quote(access['organizationId'] + '/', safe='')}"
    status, xml = s3(server, "GET", listing, sign("GET", listing, access))
    assert status == 200 and key.encode() in xml, xml
    listing = f"{base}/?list-type=2&prefix=some-other-org%2F"
    status, xml = s3(server, "GET", listing, sign("GET", listing, access))
    assert status == 200 and b"<Contents>" not in xml
    # Listings page: one key at a time, a continuation token to the next
    # (keys of their own prefix: other tests share the organization).
    stem = secrets.token_hex(4)
    mine = [stem + c * 24 for c in "12"]
    for h in mine:
        k = f"{base}/{access['organizationId']}/{h}/context.tar"
        assert s3(server, "PUT", k, sign("PUT", k, access, b"p"), b"p")[0] == 200
    prefix = urllib.parse.quote(f"{access['organizationId']}/{stem}", safe='')
    seen, token = [], None
    for _ in range(5):
        q = f"{base}/?list-type=2&max-keys=1&prefix={prefix}"
        if token:
            q += "&continuation-token=" + urllib.parse.quote(token, safe="")
        status, xml = s3(server, "GET", q, sign("GET", q, access))
        assert status == 200, xml
        seen += re.findall(rb"<Key>([^<]+)</Key>", xml)
        more = re.search(rb"<NextContinuationToken>([^<]+)</NextContinuationToken>", xml)
        assert (b"<IsTruncated>true</IsTruncated>" in xml) == bool(more), xml
        if not more:
            break
        token = more.group(1).decode()
    assert [k.decode().split("/")[1] for k in seen] == mine, seen

    # buildInfo naming a context nobody uploaded: 400 at create.
    status, body = api(server, "POST", "/snapshots", {"name": f"noctx-{secrets.token_hex(3)}", "buildInfo": {
        "dockerfileContent": "FROM busybox\nCOPY x /x\n", "contextHashes": ["ef" * 16]}})
    assert status == 400 and "was not uploaded" in body["message"], body
    status, body = api(server, "POST", "/snapshots", {"name": f"badctx-{secrets.token_hex(3)}", "buildInfo": {
        "dockerfileContent": "FROM busybox\n", "contextHashes": ["../../etc"]}})
    assert status == 400, body

    # A multipart upload: parts out of order, completed, listed parts only.
    mp = f"{base}/{access['organizationId']}/{'12' * 16}/context.tar"
    status, xml = s3(server, "POST", mp + "?uploads=", sign("POST", mp + "?uploads=", access))
    assert status == 200, xml
    upload_id = xml.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
    parts = {2: b"B" * 100, 1: b"A" * (5 << 20)}
    etags = {}
    for n, data in parts.items():
        u = f"{mp}?partNumber={n}&uploadId={upload_id}"
        status, _, headers = s3_full(server, "PUT", u, sign("PUT", u, access, data), data)
        assert status == 200
        etags[n] = headers["etag"]
    u = f"{mp}?uploadId={upload_id}"

    def complete(tags: dict) -> bytes:
        listed = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{tags[n]}</ETag></Part>" for n in (1, 2))
        return f"<CompleteMultipartUpload>{listed}</CompleteMultipartUpload>".encode()

    body = complete({1: etags[1], 2: '"not-the-etag"'})
    status, err = s3(server, "POST", u, sign("POST", u, access, body), body)
    assert status == 400 and b"InvalidPart" in err, err
    body = complete(etags)
    status, xml = s3(server, "POST", u, sign("POST", u, access, body), body)
    assert status == 200, xml
    status, got = s3(server, "GET", mp, sign("GET", mp, access))
    assert status == 200 and got == parts[1] + parts[2]
    assert s3(server, "DELETE", mp, sign("DELETE", mp, access))[0] == 204
    assert s3(server, "HEAD", mp, sign("HEAD", mp, access))[0] == 404
