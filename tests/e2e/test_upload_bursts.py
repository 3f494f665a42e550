"""Bursts of parallel uploads across idle gaps: none may be lost.

500 files go up through the official SDK in 5 bursts of 100 concurrent
uploads (single `upload_file` calls from 80 threads, each right after a
download or a command on the same sandbox as integrations do, beside 4
concurrent bulk `upload_files` calls of 5 files). Between two bursts on the
same sandbox its toolbox connections sit idle longer than the proxy pool
keeps an idle daemon connection (`DEFAULT_IDLE_TIMEOUT`, 30 s, in
crates/atoll-proxy/src/lib.rs; the daemon itself closes no idle connection),
so the later burst meets a pool whose connections all expired. The pool keeps
idle connections per sandbox daemon, so the bursts rotate over three
sandboxes and the gaps overlap: the test takes about 45 s, not 2 minutes.

Every upload must succeed (no 502, no error at all) and every file's content
must round-trip, checked both inside the sandbox (sha256) and by bulk
download through the SDK.

The Python SDK's uploads did not hit the race the proxy's body replay fixed
("error writing a body to connection") even on a build without that fix;
`@daytonaio/sdk` 0.143's streamed multipart bodies do, and its concurrent
upload bursts in tests/e2e-ts-legacy/legacy.test.mjs are the regression test
for it (a few uploads lost in most runs without the fix).
"""

from __future__ import annotations

import hashlib
import random
import time
from concurrent.futures import ThreadPoolExecutor

from daytona import FileDownloadRequest, FileUpload

# Longer than the proxy pool's idle timeout (30 s).
IDLE_GAP_S = 32.0
BURSTS = 5
FILES_PER_BURST = 100
BULK_CALLS_PER_BURST = 4
FILES_PER_BULK_CALL = 5
SINGLE_UPLOADS_PER_BURST = FILES_PER_BURST - BULK_CALLS_PER_BURST * FILES_PER_BULK_CALL
DIR = "/home/daytona/burst"


def payload(rng: random.Random, burst: int, index: int) -> bytes:
    """Distinct content of a size from 1 byte to 256 KiB."""
    size = rng.choice([1, 100, 4096, 65_536, 200_000, 262_144]) + rng.randrange(0, 512)
    head = f"burst {burst} file {index}\n".encode()
    return (head + rng.randbytes(size))[:size]


def run_burst(sb, burst: int, rng: random.Random, pool: ThreadPoolExecutor) -> tuple[dict[str, bytes], list[str]]:
    """One burst of FILES_PER_BURST uploads to ``sb``; returns the files and
    the failures (call, path, error)."""
    files = {f"{DIR}/b{burst}-{i:03d}.bin": payload(rng, burst, i) for i in range(FILES_PER_BURST)}
    paths = list(files)
    singles = paths[:SINGLE_UPLOADS_PER_BURST]
    bulk = paths[SINGLE_UPLOADS_PER_BURST:]

    def single(i: int, path: str) -> None:
        # What integrations do all the time: an upload right after a
        # download or a command on the same sandbox.
        if i % 2:
            assert sb.fs.download_file(f"{DIR}/seed.txt") == b"seed\n"
        else:
            assert sb.process.exec("true").exit_code == 0
        sb.fs.upload_file(files[path], path)

    def bulk_call(chunk: list[str]) -> None:
        sb.fs.upload_files([FileUpload(source=files[p], destination=p) for p in chunk])

    jobs = [(f"upload_file {p}", pool.submit(single, i, p)) for i, p in enumerate(singles)]
    for k in range(BULK_CALLS_PER_BURST):
        chunk = bulk[k * FILES_PER_BULK_CALL:(k + 1) * FILES_PER_BULK_CALL]
        jobs.append((f"upload_files {chunk[0]}..", pool.submit(bulk_call, chunk)))
    failures = []
    for what, job in jobs:
        try:
            job.result(timeout=300)
        except Exception as e:  # every kind of failure is reported, none tolerated
            failures.append(f"burst {burst}: {what}: {type(e).__name__}: {e}")
    return files, failures


def test_upload_bursts_across_idle_gaps_lose_nothing(make_sandbox):
    rng = random.Random(20240610)
    sandboxes = [make_sandbox() for _ in range(3)]
    for sb in sandboxes:
        sb.fs.create_folder(DIR, "755")
        sb.fs.upload_file(b"seed\n", f"{DIR}/seed.txt")

    # Bursts rotate over the sandboxes; a burst on a sandbox that had one
    # before waits until that sandbox has been idle for IDLE_GAP_S.
    order = [sandboxes[b % len(sandboxes)] for b in range(BURSTS)]
    assert any(order[b] is order[b - len(sandboxes)] for b in range(len(sandboxes), BURSTS))
    expected: dict[str, dict[str, bytes]] = {sb.id: {} for sb in sandboxes}
    last_used: dict[str, float] = {}
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=SINGLE_UPLOADS_PER_BURST + BULK_CALLS_PER_BURST) as pool:
        for burst, sb in enumerate(order):
            if sb.id in last_used:
                idle = time.monotonic() - last_used[sb.id]
                if idle < IDLE_GAP_S:
                    time.sleep(IDLE_GAP_S - idle)
            files, failed = run_burst(sb, burst, rng, pool)
            last_used[sb.id] = time.monotonic()
            expected[sb.id].update(files)
            failures += failed
    assert not failures, f"{len(failures)} of {BURSTS * FILES_PER_BURST} uploads failed:\n" + "\n".join(failures[:20])

    total = 0
    for sb in sandboxes:
        want = expected[sb.id]
        total += len(want)
        # Inside the sandbox: exactly these files with exactly this content.
        out = sb.process.exec(f"cd {DIR} && sha256sum b*.bin").result
        got = {f"{DIR}/{line.split()[1]}": line.split()[0] for line in out.splitlines()}
        assert got == {p: hashlib.sha256(c).hexdigest() for p, c in want.items()}
        # Back through the SDK.
        back = sb.fs.download_files([FileDownloadRequest(source=p) for p in want])
        assert [r.error for r in back if r.error] == []
        assert {r.source: r.result for r in back} == want
    assert total == BURSTS * FILES_PER_BURST
