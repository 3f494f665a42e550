#!/usr/bin/env bash
# Prepares a Debian bookworm host to build, run and test Atoll. Idempotent:
# installs only what is missing and touches the network only then.
#
#   - apt packages the runtime and the image build need (debootstrap, nftables, ...)
#   - a Rust toolchain (checked, not installed: see the message if missing)
#   - the Python venv .venv with the official Daytona SDK and pytest for tests/e2e
#   - the Python venv .venv-legacy with an older SDK (daytona==0.203.0, a release
#     integrations still pin) for tests/e2e/test_sdk_legacy.py
#   - tests/e2e-ts/node_modules (the official TypeScript SDK) and
#     tests/e2e-ts-legacy/node_modules (older `@daytonaio/sdk` releases) via `npm ci`,
#     when node and npm are installed; re-run only when package-lock.json changes
#
# Environment: DAYTONA_SDK_VERSION (default 0.226.1), DAYTONA_LEGACY_SDK_VERSION
# (default 0.203.0), PYTHON (default /usr/bin/python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DAYTONA_SDK_VERSION="${DAYTONA_SDK_VERSION:-0.226.1}"
DAYTONA_LEGACY_SDK_VERSION="${DAYTONA_LEGACY_SDK_VERSION:-0.203.0}"
PYTHON="${PYTHON:-/usr/bin/python3}"
APT_PACKAGES=(debootstrap s3fs zstd tar e2fsprogs xfsprogs postgresql iproute2 nftables ca-certificates build-essential pkg-config curl python3-venv python3-pylsp
    # image tests: a registry on loopback, a static busybox to build test images
    # from, htpasswd for its auth; skopeo + umoci are the pull baseline of make bench
    docker-registry busybox-static apache2-utils skopeo umoci
    # the web terminal's browser test: Debian's chromium, driven by Playwright
    chromium
    # the SSH bench's baseline: OpenSSH's server, run on loopback by the bench itself
    openssh-server)

say() { printf 'setup: %s\n' "$*" >&2; }

# --- apt packages -----------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    as_root=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null; then
            as_root=(sudo)
        else
            say "missing packages: ${missing[*]}; run this script as root to install them"
            exit 1
        fi
    fi
    say "installing ${missing[*]}"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- Rust -------------------------------------------------------------------
if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
    say "cargo not found. Install Rust with rustup:"
    say "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
    say "  . \"\$HOME/.cargo/env\""
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    say "note: cargo-nextest not found; 'make test' falls back to 'cargo test' (cargo install cargo-nextest --locked to get it)"
fi

# --- Python venv for the end-to-end tests -----------------------------------
venv_ok() {
    [[ -x .venv/bin/python ]] && .venv/bin/python - "$DAYTONA_SDK_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
assert version("daytona") == sys.argv[1]
version("pytest")
version("moto")
version("mcp")
assert version("playwright") == "1.65.3"
version("websocket-client")
EOF
}
if ! venv_ok; then
    if [[ ! -x .venv/bin/python ]]; then
        say "creating .venv with $PYTHON"
        "$PYTHON" -m venv .venv
    fi
    say "installing daytona==$DAYTONA_SDK_VERSION, pytest, moto (a local S3 for the archive tests), mcp (the client of the MCP tests) playwright (drives Debian's chromium in the web terminal test; no browser download) and websocket-client (raw WebSocket checks) into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check "daytona==$DAYTONA_SDK_VERSION" pytest "moto[server]==5.0.28" "mcp==2.3.0" "playwright==1.65.3" "websocket-client==1.9.2"
    venv_ok || { say "the venv at .venv is still incomplete"; exit 1; }
fi

# --- An older Python SDK for tests/e2e/test_sdk_legacy.py -------------------
# A venv of its own: integrations (LangChain, Mastra, ...) still pin this
# release, and it cannot share .venv with the current one (same package name).
legacy_venv_ok() {
    [[ -x .venv-legacy/bin/python ]] && .venv-legacy/bin/python - "$DAYTONA_LEGACY_SDK_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
assert version("daytona") == sys.argv[1]
EOF
}
if ! legacy_venv_ok; then
    if [[ ! -x .venv-legacy/bin/python ]]; then
        say "creating .venv-legacy with $PYTHON"
        "$PYTHON" -m venv .venv-legacy
    fi
    say "installing daytona==$DAYTONA_LEGACY_SDK_VERSION into .venv-legacy"
    .venv-legacy/bin/python -m pip install -q --disable-pip-version-check "daytona==$DAYTONA_LEGACY_SDK_VERSION"
    legacy_venv_ok || { say "the venv at .venv-legacy is still incomplete"; exit 1; }
fi

# --- TypeScript SDKs for the end-to-end tests (tests/e2e-ts, tests/e2e-ts-legacy)
# `npm ci` only when node_modules is missing or package-lock.json changed since the
# last install (hash kept in a stamp file inside node_modules). Without node the
# TypeScript tests skip themselves, so this step does too.
# web/: the browser code the binary embeds (xterm.js for the web terminal),
# vendored from npm at build time and compiled in by atoll-api's build script.
for TS_DIR in web tests/e2e-ts tests/e2e-ts-legacy; do
    [[ -f "$TS_DIR/package-lock.json" ]] || continue
    TS_STAMP="$TS_DIR/node_modules/.atoll-lock.sha256"
    if command -v node >/dev/null && command -v npm >/dev/null; then
        lock_hash=$(sha256sum "$TS_DIR/package-lock.json" | cut -d' ' -f1)
        if [[ ! -d "$TS_DIR/node_modules" || "$(cat "$TS_STAMP" 2>/dev/null)" != "$lock_hash" ]]; then
            say "installing the TypeScript SDKs into $TS_DIR/node_modules (npm ci)"
            (cd "$TS_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
            printf '%s\n' "$lock_hash" >"$TS_STAMP"
        fi
    else
        say "note: node/npm not found; the TypeScript SDK tests ($TS_DIR) will be skipped"
    fi
done

# --- Language servers for the daemon's LSP tests ------------------------------
# pylsp comes from apt above; typescript-language-server (and the TypeScript it
# drives) from npm, the versions the default image carries.
if command -v npm >/dev/null && ! command -v typescript-language-server >/dev/null; then
    say "installing typescript-language-server and typescript (npm -g)"
    npm install -g --no-audit --no-fund --loglevel=error typescript-language-server@4.4.1 typescript@5.9.3
fi

say "ok"
