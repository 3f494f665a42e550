-- Time to live: the sandbox is deleted at auto_destroy_at (ms) whatever
-- its state; ttl_minutes as last set (0: none).
ALTER TABLE sandboxes ADD COLUMN ttl_minutes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN auto_destroy_at BIGINT;
-- Organization secrets mounted as environment variables: a JSON object of
-- env var name -> secret name.
ALTER TABLE sandboxes ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}';
-- HTTP(S)_PROXY given at create.
ALTER TABLE sandboxes ADD COLUMN outbound_proxy_url TEXT;
-- Minutes a create may wait for room (Atoll never queues: kept and shown).
ALTER TABLE sandboxes ADD COLUMN queue_timeout BIGINT;
-- Set while the sandbox is an unclaimed member of a warm pool.
ALTER TABLE sandboxes ADD COLUMN warm_pool_id TEXT;

CREATE INDEX sandboxes_by_ttl ON sandboxes (auto_destroy_at);
CREATE INDEX sandboxes_by_warm_pool ON sandboxes (warm_pool_id);

-- Per-sandbox keys signed file URLs are made with (rotating one
-- invalidates every URL made before).
CREATE TABLE sandbox_signing_keys (
    sandbox_id TEXT PRIMARY KEY,
    signing_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Organization secrets. The value is stored sealed (AES-256-GCM under the
-- server's secrets key, nonce prepended, base64); it is never returned.
CREATE TABLE secrets (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    description TEXT,
    hosts TEXT NOT NULL,
    sealed_value TEXT NOT NULL,
    placeholder TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);

-- Warm pools: `pool` sandboxes of one snapshot and size kept started.
CREATE TABLE warm_pools (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    snapshot TEXT NOT NULL,
    target TEXT NOT NULL,
    pool BIGINT NOT NULL,
    cpu BIGINT NOT NULL,
    memory BIGINT NOT NULL,
    disk BIGINT NOT NULL,
    os_user TEXT NOT NULL,
    env TEXT NOT NULL,
    error_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, snapshot, target)
);
