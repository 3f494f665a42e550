-- Leases: which API server runs a deployment-wide periodic task (the
-- lifecycle scheduler, the metrics sampler, the warm-pool filler) when
-- several share this database. A holder renews before `expires_at`; a
-- lease past it goes to whoever asks next.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
