-- The S3-compatible endpoint the SDKs upload build contexts to
-- (`/api/object-storage/push-access`). Objects live in the database, in
-- parts, so every API server of a deployment sees them.

-- An upload in progress (S3 multipart, or one PUT).
CREATE TABLE object_uploads (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    object_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- The bytes of an upload, by part number.
CREATE TABLE object_parts (
    upload_id TEXT NOT NULL,
    part_number BIGINT NOT NULL,
    etag TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);

-- A finished object: its upload's parts in order.
CREATE TABLE objects (
    organization_id TEXT NOT NULL,
    object_key TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    parts TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    etag TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (organization_id, object_key)
);
