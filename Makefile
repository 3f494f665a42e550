# Atoll developer entry points. Everything is built for an explicit target
# (see .cargo/config.toml), so binaries live in target/x86_64-unknown-linux-gnu/.
#
#   make run                 setup, release build, `atoll serve` (DATA_DIR=/var/lib/atoll)
#   make test                setup, fmt, clippy and boundary checks, debug build, unit + integration
#                            tests, e2e SDK tests
#                            (on SQLite, then again on PostgreSQL)
#   make build | bench | fmt | clippy | setup | e2e
#
# Overridable: DATA_DIR, SERVE_ARGS (extra `atoll serve` flags), PYTEST_ARGS, CARGO.

SHELL := /bin/bash
CARGO ?= cargo
TARGET_DIR := target/x86_64-unknown-linux-gnu
DEBUG_BIN := $(TARGET_DIR)/debug/atoll
RELEASE_BIN := $(TARGET_DIR)/release/atoll
DATA_DIR ?= /var/lib/atoll
SERVE_ARGS ?=
PYTEST_ARGS ?= -x -q

.PHONY: boundary run test build build-failpoints release setup unit e2e e2e-postgres bench fmt fmt-check clippy

setup:
	./scripts/setup.sh

build:
	$(CARGO) build -p atoll

# The crash-matrix build: failpoints armed by ATOLL_FAILPOINT (tests only),
# in its own profile so it never replaces the normal binary.
build-failpoints:
	$(CARGO) build -p atoll --profile failpoints --features failpoints

release:
	$(CARGO) build --release -p atoll

run: setup release
	$(RELEASE_BIN) serve --data-dir $(DATA_DIR) $(SERVE_ARGS)

test: setup fmt-check clippy boundary build unit e2e e2e-postgres

unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace; \
	else \
		echo "cargo-nextest not found; using cargo test"; \
		$(CARGO) test --workspace; \
	fi

# The e2e suite starts `atoll serve` itself (tests/e2e/conftest.py); the first
# run on a machine builds the default image into /var/lib/atoll/images.
e2e: build build-failpoints
	ATOLL_BIN="$(CURDIR)/$(DEBUG_BIN)" ATOLL_FAILPOINT_BIN="$(CURDIR)/$(TARGET_DIR)/failpoints/atoll" \
		.venv/bin/python -m pytest $(PYTEST_ARGS) tests/e2e

# The same end-to-end suite with every server on PostgreSQL (a throw-away
# cluster the harness starts on loopback).
e2e-postgres: build build-failpoints
	ATOLL_E2E_DATABASE=postgres ATOLL_BIN="$(CURDIR)/$(DEBUG_BIN)" \
		ATOLL_FAILPOINT_BIN="$(CURDIR)/$(TARGET_DIR)/failpoints/atoll" \
		.venv/bin/python -m pytest $(PYTEST_ARGS) tests/e2e

bench: release
	@if [ -x bench/run ]; then \
		ATOLL_BIN="$(CURDIR)/$(RELEASE_BIN)" bench/run; \
	else \
		$(CARGO) bench --workspace; \
	fi

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The control plane compiles no runner internals (see ARCHITECTURE.md).
boundary:
	CARGO=$(CARGO) ./scripts/check-boundary.sh
