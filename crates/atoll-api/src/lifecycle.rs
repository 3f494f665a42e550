//! The sandbox state machine as data: Daytona's states, which actions each
//! allows, and what an illegal request is told. Pure, exhaustively
//! unit-tested; the service applies it and persists every transition.

use atoll_types::SandboxState;
use std::time::Duration;

/// What a caller (or the scheduler) asks of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Delete,
    Resize,
    Recover,
    Archive,
    Pause,
    Snapshot,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "started",
            Action::Stop => "stopped",
            Action::Delete => "deleted",
            Action::Resize => "resized",
            Action::Recover => "recovered",
            Action::Archive => "archived",
            Action::Pause => "paused",
            Action::Snapshot => "snapshotted",
        }
    }
}

/// The decision for one (state, action) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Already where the action leads: answer with the sandbox as it is.
    Noop,
    /// Go through `via` (a transitional state) and run the action.
    Run { via: SandboxState },
    /// Refused: 409 naming the current state.
    Illegal,
}

/// The states by the names the code has always used for them.
pub mod state {
    use atoll_types::SandboxState;

    pub const CREATING: SandboxState = SandboxState::Creating;
    pub const STARTING: SandboxState = SandboxState::Starting;
    pub const STARTED: SandboxState = SandboxState::Started;
    pub const STOPPING: SandboxState = SandboxState::Stopping;
    pub const STOPPED: SandboxState = SandboxState::Stopped;
    pub const RESIZING: SandboxState = SandboxState::Resizing;
    pub const DESTROYING: SandboxState = SandboxState::Destroying;
    pub const DESTROYED: SandboxState = SandboxState::Destroyed;
    pub const ERROR: SandboxState = SandboxState::Error;
    pub const ARCHIVING: SandboxState = SandboxState::Archiving;
    pub const ARCHIVED: SandboxState = SandboxState::Archived;
    pub const RESTORING: SandboxState = SandboxState::Restoring;
    pub const PAUSING: SandboxState = SandboxState::Pausing;
    pub const PAUSED: SandboxState = SandboxState::Paused;
    pub const RESUMING: SandboxState = SandboxState::Resuming;
    /// Its runner stopped responding: nothing is known of it until the
    /// runner answers again (then it is reconciled).
    pub const UNKNOWN: SandboxState = SandboxState::Unknown;
    pub const PENDING_BUILD: SandboxState = SandboxState::PendingBuild;
    pub const BUILDING_SNAPSHOT: SandboxState = SandboxState::BuildingSnapshot;
    pub const PULLING_SNAPSHOT: SandboxState = SandboxState::PullingSnapshot;
    pub const BUILD_FAILED: SandboxState = SandboxState::BuildFailed;
    pub const SNAPSHOTTING: SandboxState = SandboxState::Snapshotting;

    /// States an operation passes through; none may last.
    pub const TRANSITIONAL: &[SandboxState] = &[
        CREATING,
        STARTING,
        STOPPING,
        RESIZING,
        DESTROYING,
        ARCHIVING,
        RESTORING,
        PAUSING,
        RESUMING,
        PENDING_BUILD,
        BUILDING_SNAPSHOT,
        PULLING_SNAPSHOT,
        SNAPSHOTTING,
    ];
}

/// How long a transitional state may last before the sandbox is put in
/// `error` (the operation behind it has hung or its server died).
pub fn transition_timeout(state: SandboxState) -> Option<Duration> {
    match state {
        state::CREATING | state::STARTING => Some(Duration::from_secs(120)),
        state::STOPPING | state::RESIZING => Some(Duration::from_secs(60)),
        // A freeze gives up after 10 s; a thaw is immediate.
        state::PAUSING | state::RESUMING => Some(Duration::from_secs(60)),
        state::DESTROYING => Some(Duration::from_secs(120)),
        // Packing or unpacking a large disk takes a while.
        state::ARCHIVING | state::RESTORING => Some(Duration::from_secs(1800)),
        // Pulls and builds of large images; a build is bounded on its own.
        state::PENDING_BUILD | state::BUILDING_SNAPSHOT | state::PULLING_SNAPSHOT => {
            Some(Duration::from_secs(3600))
        }
        state::SNAPSHOTTING => Some(Duration::from_secs(1800)),
        _ => None,
    }
}

pub fn decide(current: SandboxState, action: Action) -> Decision {
    use state::*;
    match (action, current) {
        // Delete works from every state.
        (Action::Delete, _) => Decision::Run { via: DESTROYING },
        (Action::Start, STARTED) => Decision::Noop,
        (Action::Start, STOPPED) => Decision::Run { via: STARTING },
        (Action::Start, ARCHIVED) => Decision::Run { via: RESTORING },
        (Action::Start, PAUSED) => Decision::Run { via: RESUMING },
        (Action::Pause, STARTED) => Decision::Run { via: PAUSING },
        (Action::Pause, PAUSED) => Decision::Noop,
        (Action::Archive, STOPPED) => Decision::Run { via: ARCHIVING },
        (Action::Archive, ARCHIVED) => Decision::Noop,
        (Action::Stop, STOPPED) => Decision::Noop,
        (Action::Stop, STARTED | PAUSED | ERROR) => Decision::Run { via: STOPPING },
        (Action::Resize, STARTED | STOPPED) => Decision::Run { via: RESIZING },
        (Action::Recover, ERROR) => Decision::Run { via: STARTING },
        (Action::Recover, STARTED) => Decision::Noop,
        (Action::Snapshot, STARTED) => Decision::Run { via: SNAPSHOTTING },
        _ => Decision::Illegal,
    }
}

/// The 409 message for an illegal request.
pub fn illegal_message(id: &str, current: SandboxState, action: Action) -> String {
    let hint = match (action, current) {
        (Action::Start, state::ERROR) => "; recover it (POST /sandbox/{id}/recover) or delete it",
        (Action::Recover, _) => "; only sandboxes in state error can be recovered",
        (Action::Archive, state::STARTED | state::PAUSED) => "; stop it first",
        (Action::Pause, state::STOPPED | state::ARCHIVED) => {
            "; only started sandboxes can be paused"
        }
        (Action::Resize, state::PAUSED) => "; start it (resume) first",
        (_, state::UNKNOWN) => {
            "; its runner is not responding (delete it, or wait for the runner to return)"
        }
        (_, s) if state::TRANSITIONAL.contains(&s) => "; wait for the current operation to finish",
        _ => "",
    };
    format!(
        "Sandbox {id} cannot be {} while it is {current}{hint}",
        action.verb()
    )
}

#[cfg(test)]
mod tests {
    use super::state::*;
    use super::*;

    const ALL: &[SandboxState] = &SandboxState::ALL;
    const ACTIONS: &[Action] = &[
        Action::Start,
        Action::Stop,
        Action::Delete,
        Action::Resize,
        Action::Recover,
        Action::Archive,
        Action::Pause,
        Action::Snapshot,
    ];

    #[test]
    fn delete_is_allowed_from_every_state() {
        for s in ALL {
            assert_eq!(
                decide(*s, Action::Delete),
                Decision::Run { via: DESTROYING },
                "{s}"
            );
        }
    }

    #[test]
    fn every_pair_has_exactly_the_expected_decision() {
        for s in ALL {
            for a in ACTIONS {
                let d = decide(*s, *a);
                let expected = match (*a, *s) {
                    (Action::Delete, _) => Decision::Run { via: DESTROYING },
                    (Action::Start, STARTED)
                    | (Action::Stop, STOPPED)
                    | (Action::Recover, STARTED) => Decision::Noop,
                    (Action::Start, STOPPED) | (Action::Recover, ERROR) => {
                        Decision::Run { via: STARTING }
                    }
                    (Action::Stop, STARTED | PAUSED | ERROR) => Decision::Run { via: STOPPING },
                    (Action::Start, PAUSED) => Decision::Run { via: RESUMING },
                    (Action::Pause, STARTED) => Decision::Run { via: PAUSING },
                    (Action::Pause, PAUSED) => Decision::Noop,
                    (Action::Resize, STARTED | STOPPED) => Decision::Run { via: RESIZING },
                    (Action::Start, ARCHIVED) => Decision::Run { via: RESTORING },
                    (Action::Archive, STOPPED) => Decision::Run { via: ARCHIVING },
                    (Action::Archive, ARCHIVED) => Decision::Noop,
                    (Action::Snapshot, STARTED) => Decision::Run { via: SNAPSHOTTING },
                    _ => Decision::Illegal,
                };
                assert_eq!(d, expected, "{s} {a:?}");
            }
        }
    }

    #[test]
    fn transitional_states_time_out_and_settled_ones_do_not() {
        for s in ALL {
            assert_eq!(
                transition_timeout(*s).is_some(),
                TRANSITIONAL.contains(s),
                "{s}"
            );
        }
    }

    #[test]
    fn messages_name_the_current_state() {
        let m = illegal_message("abc", DESTROYED, Action::Start);
        assert_eq!(m, "Sandbox abc cannot be started while it is destroyed");
        assert!(illegal_message("abc", STOPPING, Action::Stop)
            .contains("wait for the current operation"));
        assert!(illegal_message("abc", ERROR, Action::Start).contains("recover"));
        assert_eq!(
            illegal_message("abc", STARTED, Action::Archive),
            "Sandbox abc cannot be archived while it is started; stop it first"
        );
        assert_eq!(
            illegal_message("abc", STOPPED, Action::Pause),
            "Sandbox abc cannot be paused while it is stopped; only started sandboxes can be paused"
        );
        assert!(illegal_message("abc", PAUSING, Action::Pause)
            .contains("wait for the current operation"));
    }
}
