-- Runners: the compute hosts sandboxes run on. `atoll serve` registers its
-- embedded runner (local = 1); remote ones are registered by an admin
-- (POST /api/runners) and authenticate with their own key, stored hashed.
-- Capacity is what the runner reported in its last health check; state is
-- initializing until the first one, ready while they arrive, unresponsive
-- when they stop, disabled/decommissioned by an admin.
CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    region TEXT NOT NULL,
    runner_class TEXT NOT NULL,
    tags TEXT NOT NULL,
    api_key_hash TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    unschedulable BIGINT NOT NULL,
    draining BIGINT NOT NULL,
    local BIGINT NOT NULL,
    api_url TEXT,
    proxy_url TEXT,
    domain TEXT,
    app_version TEXT,
    cpu BIGINT NOT NULL,
    memory_gib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    metrics TEXT,
    last_checked BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The runner a sandbox lives on (NULL: rows from before runners existed,
-- which are on the embedded runner).
ALTER TABLE sandboxes ADD COLUMN runner_id TEXT;
CREATE INDEX sandboxes_by_runner ON sandboxes (runner_id);
