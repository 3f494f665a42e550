"""The web terminal (`{public-url}/terminal/{sandboxId}?token=…`) in a real
browser: Debian's headless chromium driven by Playwright (no browser
download). The page loads xterm.js from the server itself, opens a PTY in
the sandbox, takes keystrokes and shows their output, follows the window's
size, and reports the shell's exit; without the sandbox's own token there
is nothing to see."""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def status_of(url: str, method: str = "GET") -> int:
    try:
        return urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def screen(page) -> str:
    return page.locator(".xterm-rows").inner_text()


def state(page) -> str:
    return page.locator("#state").inner_text()


def wait_for(page, what, check, timeout: float = 20):
    """Polls ``check(page)`` through locators (the page's CSP forbids
    evaluated scripts, as it should)."""
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check(page):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{what}: state {state(page)!r}, screen {screen(page)[-600:]!r}")


def test_type_a_command_and_see_its_output(server, sandbox, browser):
    token = sandbox.get_preview_link(3000).token
    page = browser.new_page(viewport={"width": 1000, "height": 600})
    try:
        page.goto(f"{server.url}/terminal/{sandbox.id}?token={token}")
        wait_for(page, "connected", lambda p: state(p) == "connected")
        page.click("#term")
        page.keyboard.type("echo $((40+2))-$(id -un)\n")
        wait_for(page, "the command's output", lambda p: "42-daytona" in screen(p))
        # The terminal follows the window: a smaller window, fewer columns.
        page.set_viewport_size({"width": 500, "height": 400})
        page.wait_for_timeout(800)
        page.keyboard.type("stty size | tr ' ' x\n")
        wait_for(page, "stty size", lambda p: re.search(r"\b\d+x\d+\b", screen(p)))
        rows, cols = (int(x) for x in re.search(r"\b(\d+)x(\d+)\b", screen(page)).groups())
        assert 20 < cols < 80 and 5 < rows < 40, (rows, cols)
        page.keyboard.type("exit 5\n")
        wait_for(page, "the exit", lambda p: state(p).startswith("exited"))
        assert state(page) == "exited (5)"
    finally:
        page.close()


def test_without_the_sandboxs_token_there_is_no_terminal(server, sandbox):
    base = f"{server.url}/terminal/{sandbox.id}"
    assert status_of(base) == 401
    assert status_of(base + "?token=" + "0" * 32) == 401
    assert status_of(f"{server.url}/terminal/no-such-sandbox?token=x") == 401
    # A signed preview URL's token opens its port, not a shell.
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=60)
    assert status_of(f"{base}?token={signed.token}") == 401
    assert status_of(f"{base}/pty?token={signed.token}&session=x") == 401
    token = sandbox.get_preview_link(3000).token
    assert status_of(f"{base}?token={token}") == 200
    # Bad sessions are refused before anything reaches the sandbox.
    assert status_of(f"{base}/resize?token={token}&session=../x&cols=1&rows=1", "POST") == 400
    # The page's assets come from this server.
    assert status_of(f"{server.url}/terminal/assets/xterm.js") == 200
    assert status_of(f"{server.url}/terminal/assets/nope.js") == 404
