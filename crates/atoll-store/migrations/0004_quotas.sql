-- Per-organization quota overrides. A NULL column follows the server's
-- default (`atoll serve --max-…-per-org`); -1 is unlimited; n >= 0 a limit.
CREATE TABLE organization_quotas (
    organization_id TEXT PRIMARY KEY REFERENCES organizations(id),
    max_sandboxes BIGINT,
    total_cpu BIGINT,
    total_memory BIGINT,
    total_disk BIGINT,
    updated_at BIGINT NOT NULL
);

-- The lifecycle scheduler deletes expired signed preview tokens.
CREATE INDEX signed_preview_tokens_by_expiry ON signed_preview_tokens (expires_at);
