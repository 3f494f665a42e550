-- Which sandbox each fork was made from (kept when either is deleted:
-- `parent` of a fork whose parent is gone answers 404).
CREATE TABLE sandbox_forks (
    child_id TEXT PRIMARY KEY,
    parent_id TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX sandbox_forks_parent ON sandbox_forks (parent_id);
