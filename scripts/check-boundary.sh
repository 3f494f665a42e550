#!/usr/bin/env bash
# The runtime boundary (ARCHITECTURE.md, "Runtime boundary"): the control
# plane (atoll-api) reaches compute only through atoll-runtime-api, so it
# must not compile the runner or the host-level crates the runner uses.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO="${CARGO:-cargo}"
forbidden='^(atoll-runner|nix|seccompiler|object_store) '
deps=$("$CARGO" tree -p atoll-api -e normal --prefix none --offline 2>/dev/null || "$CARGO" tree -p atoll-api -e normal --prefix none)
if bad=$(grep -E "$forbidden" <<<"$deps" | sort -u) && [[ -n "$bad" ]]; then
    echo "check-boundary: atoll-api depends on runner internals:" >&2
    echo "$bad" >&2
    echo "(reach them through atoll-runtime-api's Runtime trait instead)" >&2
    exit 1
fi
echo "check-boundary: atoll-api depends on no runner internals"
