//! The files a sandbox gets generated at every start (`/etc/hostname`,
//! `/etc/hosts`, `/etc/resolv.conf`), written by its PID 1 as root of its
//! user namespace onto its own disk, after `pivot_root`: they count against
//! its quota and no write can land on the host. A sandbox that replaced
//! one with a symlink, directory or FIFO keeps its choice (nothing is
//! followed or blocked on).

use serde::{Deserialize, Serialize};

/// Contents of the generated files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EtcFiles {
    pub hostname: String,
    pub hosts: String,
    pub resolv_conf: String,
}

impl EtcFiles {
    pub fn new(hostname: &str, resolv_conf: &str) -> EtcFiles {
        EtcFiles {
            hostname: format!("{hostname}\n"),
            hosts: format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            ),
            resolv_conf: resolv_conf.into(),
        }
    }

    /// Writes the files under `/etc` of the current root (the sandbox's);
    /// failures are logged to stderr, not fatal.
    pub fn write(&self) {
        let etc = match crate::safe_fs::open_dir(std::path::Path::new("/etc")) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("atoll-sandbox-init: /etc: {e}; generated files skipped");
                return;
            }
        };
        for (name, body) in [
            ("hostname", &self.hostname),
            ("hosts", &self.hosts),
            ("resolv.conf", &self.resolv_conf),
        ] {
            // Unchanged content is left alone (no copy-up for nothing).
            let same = crate::safe_fs::open_file(&etc, name, nix::fcntl::OFlag::O_RDONLY, 0)
                .and_then(|mut f| {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut f, &mut s).map(|_| s)
                })
                .is_ok_and(|s| s == *body);
            if same {
                continue;
            }
            if let Err(e) = crate::safe_fs::write_file(&etc, name, body.as_bytes(), 0o644) {
                eprintln!("atoll-sandbox-init: /etc/{name}: {e}; left as the sandbox has it");
            }
        }
    }
}
