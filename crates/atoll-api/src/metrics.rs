//! Sandbox metrics: the latest reading (what the toolbox's
//! `/system/metrics` answers: the daemon inside cannot see its own cgroup,
//! so this server answers from the runtime) and the history
//! (`/api/sandbox/{id}/telemetry/metrics`), kept by a sampler task that
//! reads every running or paused sandbox each interval, writes the tick's
//! samples in one batch and prunes those past the retention window.
//!
//! Cpu is a rate: the runtime reports cumulative cpu time, and the
//! percentage of the sandbox's cpu limit is computed between two readings
//! (so a sandbox's first sample in the history has cpu 0).

use crate::auth::Principal;
use crate::dto::{MetricDataPoint, MetricSeries, MetricsResponse, SystemMetrics};
use crate::error::ApiError;
use crate::service::state;
use crate::AppState;
use atoll_runtime_api::SandboxUsage;
use atoll_store::{MetricSample, SandboxRecord};
use atoll_types::time::{now_millis, parse_timestamp_millis, rfc3339_millis};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the sampler reads sandboxes and how long samples are kept.
#[derive(Debug, Clone, Copy)]
pub struct MetricsConfig {
    pub interval: Duration,
    pub retention: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            interval: Duration::from_secs(15),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Reads one metric's value from a sample.
pub type MetricValue = fn(&MetricSample) -> f64;

/// Daytona's metric names, as the SDKs ask for them, with the sample field
/// each one reads.
pub const METRICS: &[(&str, MetricValue)] = &[
    ("daytona.sandbox.cpu.utilization", |m| m.cpu_used_pct),
    ("daytona.sandbox.cpu.limit", |m| m.cpu_count as f64),
    ("daytona.sandbox.memory.usage", |m| m.mem_used as f64),
    ("daytona.sandbox.memory.limit", |m| m.mem_total as f64),
    ("daytona.sandbox.memory.cache", |m| m.mem_cache as f64),
    ("daytona.sandbox.filesystem.usage", |m| m.disk_used as f64),
    ("daytona.sandbox.filesystem.total", |m| m.disk_total as f64),
];

/// Most data points one series of a history answer has; longer ranges
/// are averaged into this many buckets.
pub const MAX_POINTS: usize = 1000;

/// One cumulative cpu reading.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    pub at: Instant,
    pub cpu_ns: u64,
}

/// Cpu use between two readings as a percentage of `cpus` cores (0 when
/// no time passed or the counter went back, as after a restart).
pub fn cpu_percent(before: CpuReading, after: CpuReading, cpus: i64) -> f64 {
    let wall = after.at.saturating_duration_since(before.at).as_nanos() as f64;
    if wall <= 0.0 || after.cpu_ns < before.cpu_ns || cpus <= 0 {
        return 0.0;
    }
    let pct = (after.cpu_ns - before.cpu_ns) as f64 / (wall * cpus as f64) * 100.0;
    (pct.min(100.0) * 100.0).round() / 100.0
}

/// A sample of `usage`, as stored.
fn sample_of(r: &SandboxRecord, at_ms: i64, cpu_pct: f64, u: &SandboxUsage) -> MetricSample {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    MetricSample {
        sandbox_id: r.id.clone(),
        sampled_at: at_ms,
        cpu_count: r.cpu,
        cpu_used_pct: cpu_pct,
        mem_used: i(u.memory_used),
        mem_cache: i(u.memory_cache),
        mem_total: if u.memory_limit > 0 {
            i(u.memory_limit)
        } else {
            r.memory << 30
        },
        disk_used: i(u.disk_used),
        disk_total: i(u.disk_total),
    }
}

/// Does a sandbox in `state` have processes to read (frozen ones count)?
fn is_sampled(s: atoll_types::SandboxState) -> bool {
    s == state::STARTED || s == state::PAUSED
}

/// Averages `samples` (oldest first) into at most `max` buckets of equal
/// time; each bucket is stamped with its first sample's time.
pub fn downsample(samples: Vec<MetricSample>, max: usize) -> Vec<MetricSample> {
    if samples.len() <= max || max == 0 {
        return samples;
    }
    let first = samples[0].sampled_at;
    let last = samples[samples.len() - 1].sampled_at;
    let width = ((last - first) / max as i64).max(1) + 1;
    let mut out: Vec<(MetricSample, i64)> = Vec::with_capacity(max);
    for m in samples {
        let bucket = (m.sampled_at - first) / width;
        match out.last_mut() {
            Some((acc, n)) if (acc.sampled_at - first) / width == bucket => {
                *n += 1;
                let k = *n as f64;
                let avg = |a: i64, b: i64| ((a as f64) + (b as f64 - a as f64) / k).round() as i64;
                acc.cpu_used_pct += (m.cpu_used_pct - acc.cpu_used_pct) / k;
                acc.cpu_count = m.cpu_count.max(acc.cpu_count);
                acc.mem_used = avg(acc.mem_used, m.mem_used);
                acc.mem_cache = avg(acc.mem_cache, m.mem_cache);
                acc.mem_total = m.mem_total.max(acc.mem_total);
                acc.disk_used = avg(acc.disk_used, m.disk_used);
                acc.disk_total = m.disk_total.max(acc.disk_total);
            }
            _ => out.push((m, 1)),
        }
    }
    out.into_iter().map(|(m, _)| m).collect()
}

/// A `from`/`to` query value: RFC 3339 (Python's `%z` offsets too). A
/// `+` a client left unencoded arrives as a space.
fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    parse_timestamp_millis(v)
        .or_else(|| {
            let fixed = v.rfind(' ').filter(|&i| i > 10).map(|i| {
                let mut f = v.to_string();
                f.replace_range(i..i + 1, "+");
                f
            })?;
            parse_timestamp_millis(&fixed)
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} must be an RFC 3339 timestamp (e.g. 2026-01-02T03:04:05Z), got {v:?}"
            ))
        })
}

impl AppState {
    /// The runtime's usage of one sandbox (`None`: not running, or the
    /// runtime did not answer).
    async fn usage_of(&self, id: &str) -> Option<SandboxUsage> {
        match self.rt_by_id(id).await {
            Ok(rt) => rt.usage(id).await.ok().flatten(),
            Err(_) => None,
        }
    }

    /// This sandbox's usage now (the toolbox's `SystemMetrics`). The cpu
    /// rate is taken since this endpoint's previous reading of it, or over
    /// a short window when there is none recent.
    pub async fn latest_metrics(&self, r: &SandboxRecord) -> Result<SystemMetrics, ApiError> {
        if !is_sampled(r.state) {
            return Err(ApiError::Conflict(format!(
                "Sandbox {} is not started (state: {})",
                r.id, r.state
            )));
        }
        let not_running = || ApiError::Conflict(format!("Sandbox {} is not running", r.id));
        let mut usage = self.usage_of(&r.id).await.ok_or_else(not_running)?;
        let mut now = CpuReading {
            at: Instant::now(),
            cpu_ns: usage.cpu_ns,
        };
        let previous = self
            .cpu_readings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.id)
            .copied()
            .filter(|p| {
                let age = now.at.saturating_duration_since(p.at);
                age >= Duration::from_millis(100) && age <= Duration::from_secs(300)
            });
        let before = match previous {
            Some(p) => p,
            None => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let first = now;
                usage = self.usage_of(&r.id).await.ok_or_else(not_running)?;
                now = CpuReading {
                    at: Instant::now(),
                    cpu_ns: usage.cpu_ns,
                };
                first
            }
        };
        let pct = cpu_percent(before, now, r.cpu);
        {
            let mut readings = self.cpu_readings.lock().unwrap_or_else(|p| p.into_inner());
            if readings.len() > 10_000 {
                readings.clear();
            }
            readings.insert(r.id.clone(), now);
        }
        let at = now_millis();
        let m = sample_of(r, at, pct, &usage);
        Ok(SystemMetrics {
            cpu_count: m.cpu_count,
            cpu_used_pct: m.cpu_used_pct,
            disk_free: i64::try_from(usage.disk_free).unwrap_or(i64::MAX),
            disk_total: m.disk_total,
            disk_used: m.disk_used,
            mem_cache: m.mem_cache,
            mem_total: m.mem_total,
            mem_used: m.mem_used,
            timestamp: rfc3339_millis(at),
            timestamp_unix: at / 1000,
        })
    }

    /// The sandbox's samples in the query's `from`..`to` (RFC 3339;
    /// default: everything kept), one series per metric named in
    /// `metricNames` (repeated or comma-separated; default: all). Names
    /// this server does not record get no series, as a telemetry backend
    /// without them would answer.
    pub async fn metrics_history(
        &self,
        p: &Principal,
        id_or_name: &str,
        q: &crate::extract::QueryPairs,
    ) -> Result<MetricsResponse, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let from = q.get("from").map(|v| parse_time("from", v)).transpose()?;
        let to = q.get("to").map(|v| parse_time("to", v)).transpose()?;
        let (from, to) = (from.unwrap_or(0), to.unwrap_or(i64::MAX));
        if from > to {
            return Err(ApiError::BadRequest(format!(
                "from ({}) is after to ({})",
                rfc3339_millis(from),
                rfc3339_millis(to)
            )));
        }
        let wanted = q.all("metricNames");
        let names: Vec<&(&str, MetricValue)> = METRICS
            .iter()
            .filter(|(n, _)| wanted.is_empty() || wanted.contains(n))
            .collect();
        // Retention bounds how many there can be; a few more than a day
        // of one-second samples is past any sane configuration.
        let samples = self.store.metric_samples(&r.id, from, to, 200_000).await?;
        let samples = downsample(samples, MAX_POINTS);
        Ok(MetricsResponse {
            series: names
                .into_iter()
                .map(|(name, value)| MetricSeries {
                    metric_name: name.to_string(),
                    data_points: samples
                        .iter()
                        .map(|m| MetricDataPoint {
                            timestamp: rfc3339_millis(m.sampled_at),
                            value: value(m),
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// One sampler tick: reads every running or paused sandbox, stores the
    /// samples in one batch and prunes expired ones. `previous` carries
    /// each sandbox's last cpu reading from tick to tick.
    pub async fn sample_metrics(
        &self,
        previous: &mut HashMap<String, CpuReading>,
    ) -> Result<usize, ApiError> {
        let rows: Vec<SandboxRecord> = self
            .store
            .all_sandboxes()
            .await?
            .into_iter()
            .filter(|r| is_sampled(r.state))
            .collect();
        let mut usages = Vec::with_capacity(rows.len());
        for r in &rows {
            usages.push((self.usage_of(&r.id).await, Instant::now()));
        }
        let at = now_millis();
        let mut batch = Vec::with_capacity(rows.len());
        let mut seen = HashMap::with_capacity(rows.len());
        for (r, (usage, read_at)) in rows.iter().zip(usages) {
            let Some(u) = usage else { continue };
            let now = CpuReading {
                at: read_at,
                cpu_ns: u.cpu_ns,
            };
            let pct = previous
                .get(&r.id)
                .map(|&before| cpu_percent(before, now, r.cpu))
                .unwrap_or(0.0);
            seen.insert(r.id.clone(), now);
            batch.push(sample_of(r, at, pct, &u));
        }
        *previous = seen;
        self.store.insert_metric_samples(&batch).await?;
        let keep_ms = self.config.metrics.retention.as_millis() as i64;
        self.store.prune_metric_samples(at - keep_ms).await?;
        Ok(batch.len())
    }
}

/// Runs the sampler forever on the current runtime.
pub fn spawn_sampler(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(state.config.metrics.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous = HashMap::new();
        let ttl = crate::leases::ttl_for(state.config.metrics.interval);
        loop {
            interval.tick().await;
            if !state.hold_lease(crate::leases::METRICS, ttl).await {
                previous.clear(); // stale by the time this server samples again
                continue;
            }
            if let Err(e) = state.sample_metrics(&mut previous).await {
                tracing::warn!(error = %e, "sampling sandbox metrics failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_of_the_limit_between_two_readings() {
        let t0 = Instant::now();
        let r = |ms: u64, cpu_ms: u64| CpuReading {
            at: t0 + Duration::from_millis(ms),
            cpu_ns: cpu_ms * 1_000_000,
        };
        // one core busy for the whole second, on a 2-cpu sandbox: 50 %
        assert_eq!(cpu_percent(r(0, 0), r(1000, 1000), 2), 50.0);
        assert_eq!(cpu_percent(r(0, 100), r(1000, 350), 1), 25.0);
        // idle, no time, counter reset, no cpus
        assert_eq!(cpu_percent(r(0, 5), r(1000, 5), 1), 0.0);
        assert_eq!(cpu_percent(r(10, 0), r(10, 5), 1), 0.0);
        assert_eq!(cpu_percent(r(0, 500), r(1000, 5), 1), 0.0);
        assert_eq!(cpu_percent(r(0, 0), r(1000, 5), 0), 0.0);
        // never above 100 (accounting jitter)
        assert_eq!(cpu_percent(r(0, 0), r(1000, 1010), 1), 100.0);
    }

    fn sample(at: i64, mem: i64) -> MetricSample {
        MetricSample {
            sandbox_id: "s".into(),
            sampled_at: at,
            cpu_count: 1,
            cpu_used_pct: mem as f64,
            mem_used: mem,
            mem_cache: 0,
            mem_total: 100,
            disk_used: mem,
            disk_total: 1000,
        }
    }

    #[test]
    fn long_histories_are_averaged_into_buckets() {
        let few: Vec<_> = (0..10).map(|i| sample(i * 15_000, i)).collect();
        assert_eq!(downsample(few.clone(), 10), few);
        let many: Vec<_> = (0..5000).map(|i| sample(i * 1000, i % 2 * 100)).collect();
        let out = downsample(many, 1000);
        assert!(out.len() <= 1000 && out.len() >= 900, "{}", out.len());
        assert!(out.windows(2).all(|w| w[0].sampled_at < w[1].sampled_at));
        // alternating 0 and 100 average to about 50 in every bucket
        assert!(
            out.iter().all(|m| (40..=60).contains(&m.mem_used)),
            "{out:?}"
        );
        assert!(out
            .iter()
            .all(|m| m.mem_total == 100 && m.disk_total == 1000));
        assert_eq!(out[0].sampled_at, 0);
    }

    #[test]
    fn query_times_accept_what_the_sdks_send() {
        let ms = 1_767_323_045_678;
        assert_eq!(parse_time("from", "2026-01-02T03:04:05.678Z").unwrap(), ms);
        assert_eq!(
            parse_time("from", "2026-01-02T03:04:05.678000+0000").unwrap(),
            ms
        );
        // an unencoded `+` decoded as a space
        assert_eq!(
            parse_time("from", "2026-01-02T03:04:05.678000 0000").unwrap(),
            ms
        );
        assert!(parse_time("to", "last tuesday").is_err());
    }
}
