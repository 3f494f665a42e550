-- Auto-pause: minutes of inactivity before a started sandbox is paused
-- (0: never).
ALTER TABLE sandboxes ADD COLUMN auto_pause_interval BIGINT NOT NULL DEFAULT 0;

-- Resource usage samples of running sandboxes, taken by the API's metrics
-- sampler every few seconds and pruned past the retention window. Cpu is
-- in hundredths of a percent of the sandbox's cpu limit; sizes in bytes.
CREATE TABLE sandbox_metrics (
    sandbox_id TEXT NOT NULL,
    sampled_at BIGINT NOT NULL,
    cpu_count BIGINT NOT NULL,
    cpu_used_centipct BIGINT NOT NULL,
    mem_used BIGINT NOT NULL,
    mem_cache BIGINT NOT NULL,
    mem_total BIGINT NOT NULL,
    disk_used BIGINT NOT NULL,
    disk_total BIGINT NOT NULL,
    PRIMARY KEY (sandbox_id, sampled_at)
);

-- Pruning deletes by age across every sandbox.
CREATE INDEX sandbox_metrics_by_time ON sandbox_metrics (sampled_at);
