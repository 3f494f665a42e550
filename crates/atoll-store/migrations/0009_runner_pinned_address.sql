-- An address an admin pinned for a runner at registration: the runner's
-- health checks must report exactly it (a stolen runner key cannot point
-- the control plane elsewhere). NULL: the runner reports its own.
ALTER TABLE runners ADD COLUMN pinned_api_url TEXT;
