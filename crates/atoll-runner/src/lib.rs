//! Sandbox runtime: turns a `SandboxSpec` into a running, isolated process
//! tree (namespaces, overlay rootfs, cgroups, seccomp, capabilities) and back.
//!
//! Layout mirrors a sandbox's parts: `spec` (the plan as data), `init` (the
//! privileged helper that builds the sandbox and execs the daemon as PID 1),
//! `mounts`, `userns` (per-sandbox uid slices, idmapped mounts), `etc`,
//! `safe_fs` (opening beneath a directory without following links), `network` (veth slots, addresses and the nftables policy, over
//! `netlink`), `caps`, `seccomp`, `cgroup`, `journal` (what is running, so a
//! restarted runner re-adopts it), `image` (the content-addressed image
//! store), `runtime` (`NamespaceRuntime`, the blocking operations) and
//! `local` (`LocalRuntime`: the control plane's `atoll_runtime_api::Runtime`
//! over them, with the toolbox peer check and the in-namespace connects, so
//! no host path or namespace leaves this crate).

pub mod archive;
pub mod build;
pub mod caps;
pub mod cgroup;
pub mod commit;
pub mod disk;
pub mod etc;
pub mod image;
pub mod init;
pub mod journal;
pub mod local;
pub mod mounts;
pub mod netlink;
pub mod network;
pub mod oci;
pub mod runtime;
pub mod safe_fs;
pub mod sandbox_fs;
pub mod seccomp;
pub mod spec;
pub mod userns;
pub mod volumes;

pub use local::LocalRuntime;
pub use runtime::{NamespaceRuntime, Observed, RuntimeConfig, RuntimeError};
pub use spec::{Limits, SandboxSpec};
