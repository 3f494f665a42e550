//! A sandbox's state, as Daytona names them on the wire and as the store
//! keeps them: one enum end to end, so a misspelt state is a compile error
//! and a stored value nobody knows is a read error, never a silent string.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Starting,
    Started,
    Stopping,
    Stopped,
    Resizing,
    Destroying,
    Destroyed,
    Error,
    Archiving,
    Archived,
    Restoring,
    Pausing,
    Paused,
    Resuming,
    /// Its runner stopped responding; reconciled when it answers again.
    Unknown,
    /// Created from `buildInfo`: waiting for its image to be built.
    PendingBuild,
    BuildingSnapshot,
    /// Its runner is pulling its image.
    PullingSnapshot,
    /// Its image could not be built or pulled (`errorReason` says why).
    BuildFailed,
    /// Its filesystem is being captured as a snapshot.
    Snapshotting,
}

impl SandboxState {
    /// Every state, in declaration order.
    pub const ALL: [SandboxState; 21] = [
        SandboxState::Creating,
        SandboxState::Starting,
        SandboxState::Started,
        SandboxState::Stopping,
        SandboxState::Stopped,
        SandboxState::Resizing,
        SandboxState::Destroying,
        SandboxState::Destroyed,
        SandboxState::Error,
        SandboxState::Archiving,
        SandboxState::Archived,
        SandboxState::Restoring,
        SandboxState::Pausing,
        SandboxState::Paused,
        SandboxState::Resuming,
        SandboxState::Unknown,
        SandboxState::PendingBuild,
        SandboxState::BuildingSnapshot,
        SandboxState::PullingSnapshot,
        SandboxState::BuildFailed,
        SandboxState::Snapshotting,
    ];

    /// The wire (and stored) name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Starting => "starting",
            SandboxState::Started => "started",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Resizing => "resizing",
            SandboxState::Destroying => "destroying",
            SandboxState::Destroyed => "destroyed",
            SandboxState::Error => "error",
            SandboxState::Archiving => "archiving",
            SandboxState::Archived => "archived",
            SandboxState::Restoring => "restoring",
            SandboxState::Pausing => "pausing",
            SandboxState::Paused => "paused",
            SandboxState::Resuming => "resuming",
            SandboxState::Unknown => "unknown",
            SandboxState::PendingBuild => "pending_build",
            SandboxState::BuildingSnapshot => "building_snapshot",
            SandboxState::PullingSnapshot => "pulling_snapshot",
            SandboxState::BuildFailed => "build_failed",
            SandboxState::Snapshotting => "snapshotting",
        }
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name no Atoll state has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl std::fmt::Display for UnknownState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown sandbox state {:?}", self.0)
    }
}

impl std::error::Error for UnknownState {}

impl std::str::FromStr for SandboxState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<SandboxState, UnknownState> {
        SandboxState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

impl PartialEq<str> for SandboxState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SandboxState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<SandboxState> for String {
    fn from(s: SandboxState) -> String {
        s.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_wire() {
        for s in SandboxState::ALL {
            assert_eq!(s.as_str().parse::<SandboxState>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("Started".parse::<SandboxState>().is_err());
        assert!("".parse::<SandboxState>().is_err());
    }
}
