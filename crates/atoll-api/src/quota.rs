//! Per-organization quotas: how many sandboxes an organization may have
//! and how much cpu, memory and disk they may hold together. The rules
//! (which states hold what, whether a write fits) are pure and
//! unit-tested; the `AppState` methods at the end run them inside
//! `Store::write_sandbox_checked`, so the check and the write that takes
//! the resources are one step, across API processes too. Checked: create,
//! start (stopped → starting, archived → restoring), recover and resize.
//!
//! What counts, as Daytona counts it (with one difference, `error` holding
//! its disk, because `recover` restarts it over the disk it kept):
//!
//! | quota | held by |
//! |---|---|
//! | `maxSandboxes` | every sandbox of the organization, in any state |
//! | `totalCpuQuota`, `totalMemoryQuota` | sandboxes that run or are about to: `creating`, `starting`, `started`, `stopping`, `restoring`, `resizing` |
//! | `totalDiskQuota` | those, and `stopped`, `archiving`, `error` (their disk is on the host); an `archived` sandbox's disk is in the archive store |

use crate::dto::{OrganizationQuota, OrganizationUsage, UpdateOrganizationQuota};
use crate::error::ApiError;
use crate::lifecycle::state;
use crate::AppState;
use atoll_store::{OrgQuotaRecord, SandboxHolding, SandboxRecord, SandboxWrite};
use atoll_types::time::now_millis;

/// Largest quota value the admin API takes (and the flags).
pub const MAX_QUOTA_VALUE: i64 = 1_000_000_000;

/// Limits of one organization; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub max_sandboxes: Option<i64>,
    /// Cpus.
    pub total_cpu: Option<i64>,
    /// GiB.
    pub total_memory: Option<i64>,
    /// GiB.
    pub total_disk: Option<i64>,
}

/// What an organization's sandboxes hold together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub sandboxes: i64,
    pub cpu: i64,
    /// GiB.
    pub memory: i64,
    /// GiB.
    pub disk: i64,
}

/// A write refused for a quota. Messages start as Daytona's do
/// ("Total CPU limit exceeded. Maximum allowed: 250.") and name the quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    #[error("Sandbox limit exceeded. Maximum allowed: {max} (quota maxSandboxes; the organization has {have}). Delete sandboxes or ask an administrator to raise the quota.")]
    Sandboxes { max: i64, have: i64 },
    #[error("Total CPU limit exceeded. Maximum allowed: {max} (quota totalCpuQuota; {used} in use, {wanted} more requested). Stop sandboxes or ask an administrator to raise the quota.")]
    Cpu { max: i64, used: i64, wanted: i64 },
    #[error("Total memory limit exceeded. Maximum allowed: {max}GiB (quota totalMemoryQuota; {used}GiB in use, {wanted}GiB more requested). Stop sandboxes or ask an administrator to raise the quota.")]
    Memory { max: i64, used: i64, wanted: i64 },
    #[error("Total disk limit exceeded. Maximum allowed: {max}GiB (quota totalDiskQuota; {used}GiB in use, {wanted}GiB more requested). Archive or delete sandboxes or ask an administrator to raise the quota.")]
    Disk { max: i64, used: i64, wanted: i64 },
}

/// Does a sandbox in `state` hold its cpu and memory?
pub fn holds_compute(s: atoll_types::SandboxState) -> bool {
    matches!(
        s,
        state::CREATING
            | state::STARTING
            | state::STARTED
            | state::STOPPING
            | state::RESTORING
            | state::RESIZING
            // Paused: its memory is kept, and a resume takes nothing new.
            | state::PAUSING
            | state::PAUSED
            | state::RESUMING
            // Waiting for its image, then it starts.
            | state::PENDING_BUILD
            | state::BUILDING_SNAPSHOT
            | state::PULLING_SNAPSHOT
            | state::SNAPSHOTTING
    )
}

/// Does a sandbox in `state` hold its disk on the host?
pub fn holds_disk(s: atoll_types::SandboxState) -> bool {
    holds_compute(s) || matches!(s, state::STOPPED | state::ARCHIVING | state::ERROR)
}

impl Quota {
    /// The limits in force: the organization's overrides over the server's
    /// defaults (`-1` in an override is unlimited).
    pub fn effective(defaults: &Quota, over: Option<&OrgQuotaRecord>) -> Quota {
        let pick = |default: Option<i64>, o: Option<i64>| match o {
            None => default,
            Some(v) if v < 0 => None,
            Some(v) => Some(v),
        };
        let over = over.cloned().unwrap_or_default();
        Quota {
            max_sandboxes: pick(defaults.max_sandboxes, over.max_sandboxes),
            total_cpu: pick(defaults.total_cpu, over.total_cpu),
            total_memory: pick(defaults.total_memory, over.total_memory),
            total_disk: pick(defaults.total_disk, over.total_disk),
        }
    }

    /// May one sandbox go from `before` (`None`: it does not exist yet) to
    /// `after`, while the organization's other sandboxes hold `others`? A
    /// quota is only enforced where the sandbox takes more than it held,
    /// so starting a stopped sandbox is never refused for disk, even over
    /// a disk quota an administrator has since lowered.
    pub fn admits(
        &self,
        others: &[SandboxHolding],
        before: Option<&SandboxHolding>,
        after: &SandboxHolding,
    ) -> Result<(), QuotaExceeded> {
        let used = Usage::of(others);
        let had = before.map(Usage::of_one).unwrap_or_default();
        let wants = Usage::of_one(after);
        let over = |max: Option<i64>, used: i64, had: i64, wants: i64| {
            max.filter(|&max| wants > had && used + wants > max)
        };
        if let Some(max) = over(self.max_sandboxes, used.sandboxes, had.sandboxes, 1) {
            return Err(QuotaExceeded::Sandboxes {
                max,
                have: used.sandboxes,
            });
        }
        if let Some(max) = over(self.total_cpu, used.cpu, had.cpu, wants.cpu) {
            return Err(QuotaExceeded::Cpu {
                max,
                used: used.cpu + had.cpu,
                wanted: wants.cpu - had.cpu,
            });
        }
        if let Some(max) = over(self.total_memory, used.memory, had.memory, wants.memory) {
            return Err(QuotaExceeded::Memory {
                max,
                used: used.memory + had.memory,
                wanted: wants.memory - had.memory,
            });
        }
        if let Some(max) = over(self.total_disk, used.disk, had.disk, wants.disk) {
            return Err(QuotaExceeded::Disk {
                max,
                used: used.disk + had.disk,
                wanted: wants.disk - had.disk,
            });
        }
        Ok(())
    }
}

impl Usage {
    pub fn of(holdings: &[SandboxHolding]) -> Usage {
        holdings.iter().fold(Usage::default(), |sum, h| {
            let one = Usage::of_one(h);
            Usage {
                sandboxes: sum.sandboxes + one.sandboxes,
                cpu: sum.cpu + one.cpu,
                memory: sum.memory + one.memory,
                disk: sum.disk + one.disk,
            }
        })
    }

    fn of_one(h: &SandboxHolding) -> Usage {
        let compute = holds_compute(h.state);
        Usage {
            sandboxes: 1,
            cpu: if compute { h.cpu } else { 0 },
            memory: if compute { h.memory } else { 0 },
            disk: if holds_disk(h.state) { h.disk } else { 0 },
        }
    }
}

/// What `r` holds, for the quota rules.
pub fn holding(r: &SandboxRecord) -> SandboxHolding {
    SandboxHolding {
        id: r.id.clone(),
        state: r.state,
        cpu: r.cpu,
        memory: r.memory,
        disk: r.disk,
    }
}

impl AppState {
    /// Inserts a new sandbox row if the organization's quotas admit it.
    pub(crate) async fn insert_within_quota(&self, r: &SandboxRecord) -> Result<(), ApiError> {
        let defaults = self.config.quota_defaults;
        let wants = holding(r);
        let admitted = self
            .store
            .write_sandbox_checked(SandboxWrite::Insert(r), |over, others| {
                Quota::effective(&defaults, over).admits(others, None, &wants)
            })
            .await?;
        admitted.map_err(|e| {
            tracing::info!(organization = %r.organization_id, error = %e, "create refused by quota");
            ApiError::from(e)
        })
    }

    /// Moves `r` to `state` as `save` does, but only if the organization's
    /// quotas admit what the sandbox holds in `state`. A refusal writes
    /// nothing and leaves `r` as it was.
    pub(crate) async fn save_within_quota(
        &self,
        r: &mut SandboxRecord,
        state: atoll_types::SandboxState,
    ) -> Result<(), ApiError> {
        let before = holding(r);
        let mut after = before.clone();
        after.state = state;
        self.save_within_quota_as(r, state, before, after).await
    }

    /// [`AppState::save_within_quota`] for a sandbox that held `before`
    /// (its stored state) and is checked as holding `wants`, which may
    /// differ from what `r` says (a resize is checked as the sandbox will
    /// be after it, and holds the larger of old and new meanwhile).
    pub(crate) async fn save_within_quota_as(
        &self,
        r: &mut SandboxRecord,
        state: atoll_types::SandboxState,
        before: SandboxHolding,
        wants: SandboxHolding,
    ) -> Result<(), ApiError> {
        let next = crate::service::moved(r, state, None);
        let defaults = self.config.quota_defaults;
        let write = SandboxWrite::Update {
            record: &next,
            expected_state: before.state,
        };
        let admitted = self
            .store
            .write_sandbox_checked(write, |over, others| {
                Quota::effective(&defaults, over).admits(others, Some(&before), &wants)
            })
            .await?;
        if let Err(e) = admitted {
            tracing::info!(sandbox = %r.id, organization = %r.organization_id, error = %e, "refused by quota");
            return Err(e.into());
        }
        *r = next;
        Ok(())
    }

    /// An organization (by id or name), its quotas and usage. Admin only.
    pub async fn org_quota(&self, id_or_name: &str) -> Result<OrganizationQuota, ApiError> {
        let org = self
            .store
            .org_by_id_or_name(id_or_name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Organization {id_or_name} not found")))?;
        let over = self.store.org_quota(&org.id).await?;
        let q = Quota::effective(&self.config.quota_defaults, over.as_ref());
        let u = Usage::of(&self.store.holdings_in_org(&org.id).await?);
        let over = over.unwrap_or_default();
        Ok(OrganizationQuota {
            organization_id: org.id,
            max_sandboxes: q.max_sandboxes,
            total_cpu_quota: q.total_cpu,
            total_memory_quota: q.total_memory,
            total_disk_quota: q.total_disk,
            overrides: UpdateOrganizationQuota {
                max_sandboxes: over.max_sandboxes,
                total_cpu_quota: over.total_cpu,
                total_memory_quota: over.total_memory,
                total_disk_quota: over.total_disk,
            },
            usage: OrganizationUsage {
                sandboxes: u.sandboxes,
                cpu: u.cpu,
                memory: u.memory,
                disk: u.disk,
            },
        })
    }

    /// Replaces an organization's quota overrides. Lowering a quota below
    /// what is in use stops nothing; it refuses what would take more.
    pub async fn set_org_quota(
        &self,
        id_or_name: &str,
        req: UpdateOrganizationQuota,
    ) -> Result<OrganizationQuota, ApiError> {
        for (name, v) in [
            ("maxSandboxes", req.max_sandboxes),
            ("totalCpuQuota", req.total_cpu_quota),
            ("totalMemoryQuota", req.total_memory_quota),
            ("totalDiskQuota", req.total_disk_quota),
        ] {
            if let Some(v) = v.filter(|v| !(-1..=MAX_QUOTA_VALUE).contains(v)) {
                return Err(ApiError::BadRequest(format!(
                    "{name} must be -1 (unlimited), null (the server's default) or from 0 to {MAX_QUOTA_VALUE}, got {v}"
                )));
            }
        }
        let org = self
            .store
            .org_by_id_or_name(id_or_name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Organization {id_or_name} not found")))?;
        self.store
            .put_org_quota(&OrgQuotaRecord {
                organization_id: org.id.clone(),
                max_sandboxes: req.max_sandboxes,
                total_cpu: req.total_cpu_quota,
                total_memory: req.total_memory_quota,
                total_disk: req.total_disk_quota,
                updated_at: now_millis(),
            })
            .await?;
        tracing::info!(organization = %org.id, ?req, "organization quota set");
        self.org_quota(&org.id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(
        id: &str,
        state: atoll_types::SandboxState,
        cpu: i64,
        memory: i64,
        disk: i64,
    ) -> SandboxHolding {
        SandboxHolding {
            id: id.into(),
            state,
            cpu,
            memory,
            disk,
        }
    }

    const ALL: &[atoll_types::SandboxState] = &atoll_types::SandboxState::ALL;

    #[test]
    fn what_each_state_holds() {
        for s in ALL {
            let compute = [
                "creating",
                "starting",
                "started",
                "stopping",
                "restoring",
                "resizing",
                "pausing",
                "paused",
                "resuming",
                "pending_build",
                "building_snapshot",
                "pulling_snapshot",
                "snapshotting",
            ]
            .contains(&s.as_str());
            let disk = compute || ["stopped", "archiving", "error"].contains(&s.as_str());
            assert_eq!(holds_compute(*s), compute, "{s}");
            assert_eq!(holds_disk(*s), disk, "{s}");
        }
        // Every transitional state but destroying holds what it is moving.
        for s in state::TRANSITIONAL {
            assert!(holds_disk(*s) || *s == state::DESTROYING, "{s}");
        }
    }

    #[test]
    fn usage_sums_what_each_state_holds() {
        let u = Usage::of(&[
            h("a", state::STARTED, 2, 4, 10),
            h("b", state::STOPPED, 8, 8, 5),
            h("c", state::ARCHIVED, 8, 8, 50),
            h("d", state::ERROR, 1, 1, 3),
        ]);
        assert_eq!(
            u,
            Usage {
                sandboxes: 4,
                cpu: 2,
                memory: 4,
                disk: 18
            }
        );
    }

    #[test]
    fn overrides_replace_defaults_and_minus_one_is_unlimited() {
        let defaults = Quota {
            max_sandboxes: Some(10),
            total_cpu: Some(4),
            total_memory: None,
            total_disk: Some(100),
        };
        assert_eq!(Quota::effective(&defaults, None), defaults);
        let over = OrgQuotaRecord {
            max_sandboxes: Some(2),
            total_cpu: Some(-1),
            total_memory: Some(16),
            total_disk: None,
            ..Default::default()
        };
        assert_eq!(
            Quota::effective(&defaults, Some(&over)),
            Quota {
                max_sandboxes: Some(2),
                total_cpu: None,
                total_memory: Some(16),
                total_disk: Some(100),
            }
        );
    }

    #[test]
    fn creates_fit_up_to_each_limit_and_not_past_it() {
        let others = [
            h("a", state::STARTED, 1, 1, 3),
            h("b", state::STOPPED, 1, 1, 3),
        ];
        let new = h("n", state::CREATING, 1, 1, 3);
        let q = |max_sandboxes, total_cpu, total_memory, total_disk| Quota {
            max_sandboxes,
            total_cpu,
            total_memory,
            total_disk,
        };
        assert_eq!(Quota::default().admits(&others, None, &new), Ok(()));
        assert_eq!(
            q(Some(3), Some(2), Some(2), Some(9)).admits(&others, None, &new),
            Ok(())
        );
        assert_eq!(
            q(Some(2), None, None, None).admits(&others, None, &new),
            Err(QuotaExceeded::Sandboxes { max: 2, have: 2 })
        );
        assert_eq!(
            q(None, Some(1), None, None).admits(&others, None, &new),
            Err(QuotaExceeded::Cpu {
                max: 1,
                used: 1,
                wanted: 1
            })
        );
        assert_eq!(
            q(None, None, Some(1), None).admits(&others, None, &new),
            Err(QuotaExceeded::Memory {
                max: 1,
                used: 1,
                wanted: 1
            })
        );
        assert_eq!(
            q(None, None, None, Some(8)).admits(&others, None, &new),
            Err(QuotaExceeded::Disk {
                max: 8,
                used: 6,
                wanted: 3
            })
        );
        // A limit of 0 admits nothing.
        assert!(q(Some(0), None, None, None)
            .admits(&[], None, &new)
            .is_err());
    }

    #[test]
    fn starts_are_checked_only_for_what_they_add() {
        let others = [h("a", state::STARTED, 2, 2, 3)];
        let stopped = h("s", state::STOPPED, 1, 1, 3);
        let starting = h("s", state::STARTING, 1, 1, 3);
        let cpu2 = Quota {
            total_cpu: Some(2),
            ..Default::default()
        };
        let msg = cpu2
            .admits(&others, Some(&stopped), &starting)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("Total CPU limit exceeded. Maximum allowed: 2")
                && msg.contains("totalCpuQuota"),
            "{msg}"
        );
        // The sandbox count and the disk a stopped sandbox already holds
        // are not asked for again, even over a lowered quota.
        let tight = Quota {
            max_sandboxes: Some(1),
            total_disk: Some(1),
            ..Default::default()
        };
        assert_eq!(tight.admits(&others, Some(&stopped), &starting), Ok(()));
        // Restoring an archived sandbox takes its disk back.
        let archived = h("s", state::ARCHIVED, 1, 1, 3);
        let restoring = h("s", state::RESTORING, 1, 1, 3);
        let disk5 = Quota {
            total_disk: Some(5),
            ..Default::default()
        };
        assert!(matches!(
            disk5.admits(&others, Some(&archived), &restoring),
            Err(QuotaExceeded::Disk {
                max: 5,
                used: 3,
                wanted: 3
            })
        ));
        // Stopping, or shrinking, always fits.
        let started = h("s", state::STARTED, 4, 4, 3);
        let smaller = h("s", state::RESIZING, 1, 1, 3);
        assert_eq!(cpu2.admits(&others, Some(&started), &smaller), Ok(()));
        // Growing counts only the difference.
        let grown = h("s", state::RESIZING, 3, 1, 3);
        let from = h("s", state::STARTED, 1, 1, 3);
        let cpu4 = Quota {
            total_cpu: Some(4),
            ..Default::default()
        };
        assert_eq!(
            cpu4.admits(&others, Some(&from), &grown),
            Err(QuotaExceeded::Cpu {
                max: 4,
                used: 3,
                wanted: 2
            })
        );
    }
}
