-- The name of a sandbox's image in its runner's image store (a snapshot's
-- store name); NULL: its snapshot name is one (the built-in image).
ALTER TABLE sandboxes ADD COLUMN image_ref TEXT;

-- Snapshots an organization made: pulled from a registry, built, or
-- captured from a sandbox. Runners store the image as `image_ref`.
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    image_name TEXT,
    image_ref TEXT NOT NULL,
    state TEXT NOT NULL,
    error_reason TEXT,
    size_bytes BIGINT,
    entrypoint TEXT,
    cpu BIGINT NOT NULL,
    gpu BIGINT NOT NULL,
    mem BIGINT NOT NULL,
    disk BIGINT NOT NULL,
    build_info TEXT,
    source_sandbox_id TEXT,
    region_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_used_at BIGINT,
    UNIQUE (organization_id, name)
);

-- Lines a pull, build or capture printed, in order, per snapshot or
-- sandbox: any API server can stream them.
CREATE TABLE build_logs (
    owner_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (owner_id, seq)
);

-- Registry credentials of an organization; the password is sealed like
-- secrets and never returned.
CREATE TABLE docker_registries (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    username TEXT NOT NULL,
    sealed_password TEXT NOT NULL,
    project TEXT NOT NULL,
    registry_type TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);
