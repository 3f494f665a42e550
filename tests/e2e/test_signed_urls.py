"""Signed file URLs (`sandbox.download_url` / `upload_url` /
`rotate_signing_key`) through the official SDK: the URLs work without an API
key, for their method and path only, until they expire; a tampered,
expired or rotated-away URL gets 403 and changes nothing."""

import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


def fetch(url: str, method: str = "GET", body: bytes | None = None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(data: bytes, name="file", filename="f.bin"):
    boundary = "atollboundary1234"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def with_query(url: str, **changes) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q.update(changes)
    return urlunsplit(parts._replace(query=urlencode(q)))


def test_download_and_upload_urls_work_without_a_key(sandbox):
    sandbox.fs.upload_file(b"report contents", "/home/daytona/report dir/r.txt")
    url = sandbox.download_url("/home/daytona/report dir/r.txt")
    assert "signature=" in url and "Authorization" not in url
    status, body = fetch(url)
    assert (status, body) == (200, b"report contents")

    up = sandbox.upload_url("/home/daytona/uploaded.bin", ttl_seconds=600)
    body, headers = multipart(b"\x00\x01 uploaded")
    status, _ = fetch(up, "POST", body, headers)
    assert status in (200, 201), status
    assert sandbox.fs.download_file("/home/daytona/uploaded.bin") == b"\x00\x01 uploaded"

    # A URL that never expires (ttl <= 0 gives expires=0).
    forever = sandbox.download_url("/home/daytona/report dir/r.txt", ttl_seconds=0)
    assert "expires=0" in forever
    assert fetch(forever)[0] == 200


def test_tampered_expired_and_misused_urls_get_403_and_change_nothing(sandbox):
    sandbox.fs.upload_file(b"secret a", "/home/daytona/a.txt")
    sandbox.fs.upload_file(b"secret b", "/home/daytona/b.txt")
    url = sandbox.download_url("/home/daytona/a.txt")
    # Another path under the same signature.
    assert fetch(with_query(url, path="/home/daytona/b.txt"))[0] == 403
    # A later expiry under the same signature.
    later = int(urlsplit(url).query and parse_qs(urlsplit(url).query)["expires"][0]) + 3600
    assert fetch(with_query(url, expires=str(later)))[0] == 403
    # A flipped signature, a garbage one, none at all.
    sig = parse_qs(urlsplit(url).query)["signature"][0]
    flipped = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
    assert fetch(with_query(url, signature=flipped))[0] == 403
    assert fetch(with_query(url, signature="v1_???"))[0] == 403
    no_sig = urlunsplit(urlsplit(url)._replace(query=urlencode({"path": "/home/daytona/a.txt"})))
    assert fetch(no_sig)[0] == 401
    # Expired: the SDK only makes future expiries, so sign one in the past
    # with the sandbox's key, as the SDK would.
    from daytona._utils.file_url_signing import compute_file_url_signature

    key = sandbox._ensure_signing_key()
    past = int(time.time()) - 5
    expired = with_query(
        url, expires=str(past), signature=compute_file_url_signature(key, "GET", "/home/daytona/a.txt", past)
    )
    status, body = fetch(expired)
    assert status == 403 and b"expired" in body
    # A download URL used to upload, and an upload URL to another operation.
    body, headers = multipart(b"overwritten")
    assert fetch(url, "POST", body, headers)[0] in (403, 405)
    up = sandbox.upload_url("/home/daytona/a.txt")
    assert fetch(up.replace("/files/upload-v2", "/files/upload"), "POST", body, headers)[0] == 403
    assert fetch(up.replace("/files/upload-v2", "/files/download"))[0] == 403
    assert sandbox.fs.download_file("/home/daytona/a.txt") == b"secret a"


def test_rotation_invalidates_every_url_made_before(sandbox):
    sandbox.fs.upload_file(b"x", "/home/daytona/x.txt")
    old_down = sandbox.download_url("/home/daytona/x.txt")
    old_up = sandbox.upload_url("/home/daytona/x.txt")
    assert fetch(old_down)[0] == 200
    sandbox.rotate_signing_key()
    assert fetch(old_down)[0] == 403
    body, headers = multipart(b"replaced")
    assert fetch(old_up, "POST", body, headers)[0] == 403
    assert sandbox.fs.download_file("/home/daytona/x.txt") == b"x"
    new_down = sandbox.download_url("/home/daytona/x.txt")
    assert fetch(new_down) == (200, b"x")


def test_a_url_of_one_sandbox_does_not_open_another(make_sandbox, server):
    a = make_sandbox()
    b = make_sandbox()
    b.fs.upload_file(b"b's data", "/home/daytona/data.txt")
    url = a.download_url("/home/daytona/data.txt")
    assert fetch(url.replace(a.id, b.id))[0] == 403
    # The signing key needs an API key of the sandbox's organization.
    status, _, _ = server.http("GET", f"/api/sandbox/{a.id}/signing-key", auth=False)
    assert status == 401
