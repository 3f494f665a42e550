//! The daemon's configuration: JSON the runner hands the daemon (a sealed
//! memfd inherited from PID 1, or a file in standalone runs) (camelCase keys, unknown keys ignored
//! so the runner can grow it without breaking older daemons).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading daemon config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing daemon config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What the runner tells the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonConfig {
    /// Unix socket the toolbox API binds when no bound socket is handed
    /// over as a descriptor (standalone runs and tests).
    #[serde(default)]
    pub socket: PathBuf,
    /// User commands run as and created files belong to (resolved from the
    /// sandbox's `/etc/passwd` and `/etc/group`). `None`: the daemon's own user.
    #[serde(default)]
    pub user: Option<String>,
    /// Sandbox environment given at create, passed to every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory for commands and relative paths; default: the
    /// user's home.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// Where changes made with `POST /env` are kept, so they survive a
    /// restart (a sandbox keeps it on its own disk); `None`: not kept.
    #[serde(default)]
    pub env_file: Option<PathBuf>,
    /// The image's entrypoint (argv): started at boot as the single command
    /// of the entrypoint session (`GET /process/session/entrypoint`); empty:
    /// none.
    #[serde(default)]
    pub entrypoint: Vec<String>,
}

impl DaemonConfig {
    /// Reads the config from a descriptor (a sealed memfd from PID 1).
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Result<Self, ConfigError> {
        use std::io::Read;
        let path = PathBuf::from("<inherited descriptor>");
        let mut text = Vec::new();
        std::fs::File::from(fd)
            .read_to_end(&mut text)
            .map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse { path, source })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_camel_case_and_defaults() {
        let cfg: DaemonConfig = serde_json::from_str(
            r#"{"socket":"/run/a.sock","user":"daytona","env":{"A":"1"},"workDir":"/w","extra":1}"#,
        )
        .expect("valid config");
        assert_eq!(cfg.socket, PathBuf::from("/run/a.sock"));
        assert_eq!(cfg.user.as_deref(), Some("daytona"));
        assert_eq!(cfg.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(cfg.work_dir, Some(PathBuf::from("/w")));

        let min: DaemonConfig = serde_json::from_str(r#"{"socket":"/s"}"#).expect("minimal");
        assert_eq!(min.user, None);
        assert!(min.env.is_empty());
        assert_eq!(min.work_dir, None);
        assert!(min.entrypoint.is_empty());

        let with: DaemonConfig =
            serde_json::from_str(r#"{"socket":"/s","entrypoint":["sleep","infinity"]}"#)
                .expect("with an entrypoint");
        assert_eq!(with.entrypoint, ["sleep", "infinity"]);
    }
}
