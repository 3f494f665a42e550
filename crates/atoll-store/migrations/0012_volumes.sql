-- Volumes: data that outlives a sandbox. A local volume lives on one
-- runner (`runner_id`), its files on a filesystem of its own there.
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    size_gib BIGINT NOT NULL,
    runner_id TEXT,
    error_reason TEXT,
    used_bytes BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_used_at BIGINT,
    UNIQUE (organization_id, name)
);
