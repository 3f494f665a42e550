//! The sandbox's environment layer, changeable while the daemon runs
//! (`POST /env`, the SDK's `update_env`): variables set on top of the
//! daemon's own environment, and names removed from it. Commands,
//! sessions and PTYs started after a change see it; running ones keep
//! theirs. With a state file (in a sandbox: on its own disk) changes
//! survive a stop and start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// Set and removed variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvLayer {
    pub set: BTreeMap<String, String>,
    /// Names removed from the daemon's own environment.
    pub removed: BTreeSet<String>,
}

/// The shared, changeable layer (cheap to clone: one per daemon).
#[derive(Debug, Clone, Default)]
pub struct SandboxEnv {
    layer: Arc<RwLock<EnvLayer>>,
    state_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("invalid environment variable {0:?}: names must be non-empty without '=' or NUL, values without NUL")]
    Invalid(String),
    #[error("saving the environment to {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxEnv {
    /// The layer given at create, or the one saved in `state_file` by an
    /// earlier run of this sandbox.
    pub fn new(initial: BTreeMap<String, String>, state_file: Option<PathBuf>) -> SandboxEnv {
        let saved = state_file
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<EnvLayer>(&b).ok());
        let layer = saved.unwrap_or(EnvLayer {
            set: initial,
            removed: BTreeSet::new(),
        });
        SandboxEnv {
            layer: Arc::new(RwLock::new(layer)),
            state_file,
        }
    }

    /// A copy of the layer now.
    pub fn snapshot(&self) -> EnvLayer {
        self.layer.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Removes `unset` and every variable whose value starts with
    /// `unset_value_prefix` (unless `set` names it), then applies `set`;
    /// saves the result. Returns the variables set.
    pub fn update(
        &self,
        set: &BTreeMap<String, String>,
        unset: &[String],
        unset_value_prefix: Option<&str>,
    ) -> Result<BTreeMap<String, String>, EnvError> {
        for (k, v) in set {
            if !super::plan::valid_env(k, v) {
                return Err(EnvError::Invalid(k.clone()));
            }
        }
        if let Some(k) = unset
            .iter()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(EnvError::Invalid(k.clone()));
        }
        let mut next = self.snapshot();
        for k in unset {
            next.set.remove(k);
            next.removed.insert(k.clone());
        }
        if let Some(prefix) = unset_value_prefix.filter(|p| !p.is_empty()) {
            next.set
                .retain(|k, v| set.contains_key(k) || !v.starts_with(prefix));
        }
        for (k, v) in set {
            next.removed.remove(k);
            next.set.insert(k.clone(), v.clone());
        }
        if let Some(path) = &self.state_file {
            save(path, &next)?;
        }
        let out = next.set.clone();
        *self.layer.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(out)
    }
}

impl From<BTreeMap<String, String>> for SandboxEnv {
    fn from(set: BTreeMap<String, String>) -> SandboxEnv {
        SandboxEnv::new(set, None)
    }
}

/// Writes the layer atomically (temp file, fsync, rename), 0600.
fn save(path: &Path, layer: &EnvLayer) -> Result<(), EnvError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| EnvError::Save {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&serde_json::to_vec(layer).unwrap_or_default())
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_apply_in_order_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("atoll-env-{}", std::process::id()));
        let file = dir.join("env.json");
        let _ = std::fs::remove_dir_all(&dir);
        let env = SandboxEnv::new(
            BTreeMap::from([("A".into(), "1".into()), ("SECRET".into(), "ph:x".into())]),
            Some(file.clone()),
        );
        let set = BTreeMap::from([("B".into(), "2".into())]);
        env.update(&set, &["A".into(), "PATH".into()], Some("ph:"))
            .unwrap();
        let l = env.snapshot();
        assert_eq!(l.set, set);
        assert!(l.removed.contains("PATH") && l.removed.contains("A"));
        // a new daemon of the same sandbox starts from the saved layer
        let again = SandboxEnv::new(BTreeMap::from([("A".into(), "1".into())]), Some(file));
        assert_eq!(again.snapshot(), l);
        assert!(env
            .update(&BTreeMap::from([("X=Y".into(), "1".into())]), &[], None)
            .is_err());
        assert_eq!(env.snapshot(), l, "a refused update changes nothing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
