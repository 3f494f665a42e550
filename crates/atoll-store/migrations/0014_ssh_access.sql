-- SSH access tokens of sandboxes (`POST /api/sandbox/{id}/ssh-access`):
-- stored as a SHA-256 of the token, never the token.
CREATE TABLE ssh_access (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ssh_access_sandbox ON ssh_access (sandbox_id);
