//! What `atoll serve` does to keep tenants apart from each other and from
//! other users of the host: the default per-organization quotas, the
//! per-API-key rate limit (flags and environment), and the modes of the
//! data directory and the SQLite database (0700 and 0600: the database
//! holds the server's preview key, and the directory every sandbox's
//! disk).

use anyhow::{Context, Result};
use atoll_api::quota::{Quota, MAX_QUOTA_VALUE};
use atoll_api::ratelimit::RateLimit;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct TenancyArgs {
    /// Default for every organization without its own quota (set with
    /// `PUT /api/admin/organizations/{id}/quota`): at most this many
    /// sandboxes, in any state. Unset: unlimited.
    #[arg(long, env = "ATOLL_MAX_SANDBOXES_PER_ORG", value_parser = quota_value)]
    max_sandboxes_per_org: Option<i64>,
    /// Default organization quota: total cpus of its running (creating,
    /// starting, started, stopping, restoring, resizing) sandboxes. Unset:
    /// unlimited.
    #[arg(long, env = "ATOLL_MAX_CPU_PER_ORG", value_parser = quota_value)]
    max_cpu_per_org: Option<i64>,
    /// Default organization quota: total memory (GiB) of its running
    /// sandboxes. Unset: unlimited.
    #[arg(long, env = "ATOLL_MAX_MEMORY_GIB_PER_ORG", value_parser = quota_value)]
    max_memory_gib_per_org: Option<i64>,
    /// Default organization quota: total disk (GiB) of its sandboxes whose
    /// disk is on this host (all but archived ones). Unset: unlimited.
    #[arg(long, env = "ATOLL_MAX_DISK_GIB_PER_ORG", value_parser = quota_value)]
    max_disk_gib_per_org: Option<i64>,
    /// Requests a minute each API key may send to `/api` (a token bucket;
    /// toolbox and preview traffic is not limited). 0: no limit.
    #[arg(long, env = "ATOLL_RATE_LIMIT_PER_MINUTE", default_value_t = 6000)]
    rate_limit_per_minute: u32,
    /// Requests a key may send at once before the per-minute rate applies
    /// (default: the per-minute figure).
    #[arg(long, env = "ATOLL_RATE_LIMIT_BURST")]
    rate_limit_burst: Option<u32>,
}

fn quota_value(v: &str) -> Result<i64, String> {
    match v.parse::<i64>() {
        Ok(n) if (0..=MAX_QUOTA_VALUE).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from 0 to {MAX_QUOTA_VALUE} (leave it unset for no limit)"
        )),
    }
}

impl TenancyArgs {
    pub fn quota_defaults(&self) -> Quota {
        Quota {
            max_sandboxes: self.max_sandboxes_per_org,
            total_cpu: self.max_cpu_per_org,
            total_memory: self.max_memory_gib_per_org,
            total_disk: self.max_disk_gib_per_org,
        }
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        let limit = RateLimit {
            per_minute: self.rate_limit_per_minute,
            burst: self.rate_limit_burst.unwrap_or(self.rate_limit_per_minute),
        };
        (limit.per_minute > 0 && limit.burst > 0).then_some(limit)
    }
}

/// Creates the data directory if needed and makes it 0700, whatever mode
/// it had. A shared directory (world-writable or sticky, like `/tmp`) or
/// `/` is refused rather than locked down.
pub fn private_data_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let mode = std::fs::metadata(&dir)?.permissions().mode();
    anyhow::ensure!(
        dir != Path::new("/") && mode & 0o1002 == 0,
        "data dir {} is shared (mode {:o}); use a directory of Atoll's own, e.g. {}",
        dir.display(),
        mode & 0o7777,
        dir.join("atoll").display()
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making data dir {} private (0700)", dir.display()))?;
    Ok(dir)
}

/// A 32-byte key kept as 64 hex characters in `path`, made (random, mode
/// 0600) if the file does not exist.
fn key_file(path: &Path, what: &str) -> Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    crate::serve::getrandom_fill(&mut bytes).context("reading /dev/urandom")?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(crate::serve::hex_encode(&bytes).as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing the {what} {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating the {what} {}", path.display())),
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    let text = text.trim();
    anyhow::ensure!(
        text.len() == 64,
        "the {what} in {} must be 64 hex characters",
        path.display()
    );
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("the {what} in {} is not hex", path.display()))?;
    }
    Ok(bytes)
}

/// The key organization secrets are sealed with, from `path` (64 hex
/// characters), made (random, mode 0600) if the file does not exist.
pub fn secrets_key(path: &Path) -> Result<atoll_api::secrets::SecretsKey> {
    let bytes = key_file(path, "secrets key")?;
    atoll_api::secrets::SecretsKey::from_bytes(&bytes)
        .with_context(|| format!("the secrets key in {}", path.display()))
}

/// This deployment's control-plane key (signs requests to remote runners),
/// an Ed25519 seed kept like the secrets key.
pub fn control_key(path: &Path) -> Result<atoll_remote::ControlKey> {
    let seed = key_file(path, "control-plane key")?;
    atoll_remote::ControlKey::from_seed(&seed)
        .map_err(|e| anyhow::anyhow!("the control-plane key in {}: {e}", path.display()))
}

/// The id of this data directory's embedded runner, kept in
/// `<data-dir>/runner.id` (made on first start; servers sharing the data
/// directory share the runner, so they share the id). Written to a
/// temporary file and linked into place, so a racing server reads either
/// nothing or the whole id.
pub fn runner_id(data_dir: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("runner.id");
    let valid = |t: &str| {
        !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !path.exists() {
        let tmp = data_dir.join(format!(".runner.id.{}", std::process::id()));
        let id = uuid::Uuid::new_v4().to_string();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(id.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let id = text.trim();
    anyhow::ensure!(valid(id), "{} does not hold a runner id", path.display());
    Ok(id.to_string())
}

/// The file of a `sqlite:` database URL (`None` for other databases and
/// in-memory ones).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Creates the database file 0600 before SQLite opens it (SQLite gives the
/// `-wal` and `-shm` files it makes the database file's mode).
pub fn precreate_database(db: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .with_context(|| format!("creating the database {}", db.display()))?;
    private_database(db)
}

/// Makes the database file and its `-wal`/`-shm` companions 0600, also
/// when an older server created them with the umask's mode.
pub fn private_database(db: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("making {} private (0600)", path.display()))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/atoll/atoll.db"),
            Some(PathBuf::from("/var/lib/atoll/atoll.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:rel.db?mode=rwc"),
            Some(PathBuf::from("rel.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }

    #[test]
    fn data_dir_and_database_become_private() {
        let base = std::env::temp_dir().join(format!("atoll-tenancy-{}", std::process::id()));
        let dir = base.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = private_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("atoll.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::write(dir.join("atoll.db-wal"), b"").unwrap();
        for p in [&db, &dir.join("atoll.db-wal")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        precreate_database(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("atoll.db-wal")), 0o600);
        let fresh = dir.join("new.db");
        precreate_database(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        // Shared directories are refused, not locked down.
        let shared = base.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = private_data_dir(&shared).unwrap_err().to_string();
        assert!(e.contains("shared"), "{e}");
        assert_eq!(mode(&shared), 0o1777);
        assert!(private_data_dir(Path::new("/")).is_err());
        std::fs::remove_dir_all(base).unwrap();
    }
}
