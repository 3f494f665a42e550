//! The SSH gateway of `atoll serve --ssh-listen`: `ssh <token>@host`
//! lands in a sandbox, the token one `POST /api/sandbox/{id}/ssh-access`
//! handed out.
//!
//! The gateway is an SSH server ([`russh`]) that authenticates the user
//! *name*: `none` (what OpenSSH tries first) or any password is accepted
//! for a live token of a started sandbox, checked on every connection
//! against the store, so an expired or revoked token is refused at once
//! and one sandbox's token never reaches another. Nothing of the sandbox
//! is trusted: its daemon is reached over the runtime's toolbox
//! connection (the peer-checked one the toolbox API uses), ports over the
//! runtime's in-namespace connect.
//!
//! Per channel:
//! - a shell, or a command with `ssh -t`: a PTY session of the daemon
//!   (`/process/pty/create-connect`, with Atoll's `command` for the
//!   latter), so the user gets a real terminal as the sandbox user, window
//!   changes (`POST /process/pty/{id}/resize`) and the exit code; the
//!   session is killed when the channel goes;
//! - a command without a PTY (`ssh host cmd`, `scp -O`) and the `sftp`
//!   subsystem (modern `scp`, `sftp`, editors): the daemon's binary-clean
//!   `/process/exec-stream` (stdin, stdout, stderr apart; EOF; signals;
//!   exit code); `sftp` runs the image's `/usr/lib/openssh/sftp-server`
//!   as the sandbox user, as sshd does;
//! - `direct-tcpip` (`ssh -L`): a connection to `127.0.0.1:port` inside
//!   the sandbox, for loopback destinations only.
//!
//! The host key is an Ed25519 key made once and kept (0600) by the caller.

mod daemon;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::ssh_access::SshTarget;
use atoll_api::AppState;
use russh::keys::ssh_key::{private::Ed25519Keypair, LineEnding};
use russh::keys::PrivateKey;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use thiserror::Error;
use tokio::net::TcpListener;

#[derive(Debug, Error)]
pub enum SshError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the SSH host key {path} is not an OpenSSH private key: {message}")]
    BadKey { path: String, message: String },
}

/// Most env variables one channel may set, and their total size.
const MAX_ENV_VARS: usize = 64;
const MAX_ENV_BYTES: usize = 64 * 1024;
/// Most channels open at once on one connection.
const MAX_CHANNELS: usize = 64;
/// The program the `sftp` subsystem runs in the sandbox.
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// The host key at `path`, made (Ed25519, 0600, written aside and
/// renamed) if there is none yet.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, SshError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            return PrivateKey::from_openssh(pem.trim()).map_err(|e| SshError::BadKey {
                path: shown,
                message: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SshError::Io {
                what: "reading",
                path: shown,
                source,
            })
        }
    }
    let io = |what| {
        let shown = shown.clone();
        move |source| SshError::Io {
            what,
            path: shown,
            source,
        }
    };
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| io("seeding a key for")(std::io::Error::other(e)))?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| SshError::BadKey {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("writing"))?;
        f.write_all(pem.as_bytes()).map_err(io("writing"))?;
        f.sync_all().map_err(io("syncing"))?;
    }
    std::fs::rename(&tmp, path).map_err(io("installing"))?;
    Ok(key)
}

/// The host key's public half, as `ssh-ed25519 AAAA…` (for known_hosts).
pub fn public_key_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap_or_default()
}

/// Serves SSH on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: AppState, key: PrivateKey) {
    let config = Arc::new(server::Config {
        methods: MethodSet::from(&[MethodKind::None, MethodKind::Password][..]),
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: None,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        keys: vec![key],
        ..Default::default()
    });
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an SSH connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let conn = Connection::new(state.clone(), peer);
        let config = config.clone();
        tokio::spawn(async move {
            match server::run_stream(config, socket, conn).await {
                Ok(session) => {
                    if let Err(e) = session.await {
                        tracing::debug!(peer = %peer, error = %e, "SSH connection ended");
                    }
                }
                Err(e) => tracing::debug!(peer = %peer, error = %e, "SSH handshake failed"),
            }
        });
    }
}

/// What a session channel asked for before its shell, command or
/// subsystem.
struct Pending {
    channel: Channel<Msg>,
    pty: Option<daemon::PtyRequest>,
    env: BTreeMap<String, String>,
}

/// One SSH connection: the sandbox its token named, and its channels
/// that have not started yet.
pub struct Connection {
    state: AppState,
    peer: SocketAddr,
    sandbox: Option<String>,
    pending: HashMap<ChannelId, Pending>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl Connection {
    fn new(state: AppState, peer: SocketAddr) -> Connection {
        Connection {
            state,
            peer,
            sandbox: None,
            pending: HashMap::new(),
            open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    async fn check(&mut self, user: &str) -> Auth {
        match self.state.ssh_started_sandbox(user).await {
            Ok(SshTarget::Sandbox(id)) => {
                tracing::info!(peer = %self.peer, sandbox = %id, "SSH login");
                self.sandbox = Some(id);
                Auth::Accept
            }
            Ok(SshTarget::NotStarted(id, state)) => {
                tracing::info!(peer = %self.peer, sandbox = %id, state = %state, "SSH login to a sandbox that is not started");
                Auth::reject()
            }
            Ok(SshTarget::Refused) => {
                tracing::info!(peer = %self.peer, "SSH login with an unknown, expired or revoked token");
                Auth::reject()
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "checking an SSH token failed");
                Auth::reject()
            }
        }
    }

    /// Starts what a session channel asked for: `command` (`None`: a
    /// shell), or the sftp subsystem.
    fn launch(&mut self, id: ChannelId, what: daemon::Launch, session: &mut Session) -> bool {
        let (Some(sandbox), Some(p)) = (self.sandbox.clone(), self.pending.remove(&id)) else {
            return false;
        };
        let _ = session.channel_success(id);
        let state = self.state.clone();
        let open = self.open.clone();
        tokio::spawn(async move {
            daemon::run_channel(state, sandbox, p.channel, p.pty, p.env, what).await;
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
        true
    }
}

/// Whether `host` names the sandbox's own loopback (all `ssh -L`
/// reaches).
fn loopback(host: &str) -> bool {
    matches!(
        host.trim_matches(|c| c == '[' || c == ']'),
        "localhost" | "127.0.0.1" | "::1" | "0.0.0.0"
    )
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.check(user).await)
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.check(user).await)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _key: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Keys prove nothing here: the user name is the credential.
        Ok(Auth::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let busy = self.open.load(std::sync::atomic::Ordering::Relaxed);
        if self.sandbox.is_none() || busy >= MAX_CHANNELS {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending.insert(
            channel.id(),
            Pending {
                channel,
                pty: None,
                env: BTreeMap::new(),
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        id: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.pending.get_mut(&id) {
            Some(p) => {
                p.pty = Some(daemon::PtyRequest {
                    term: term.chars().take(64).collect(),
                    cols: daemon::dimension(col_width),
                    rows: daemon::dimension(row_height),
                });
                session.channel_success(id)?;
            }
            None => session.channel_failure(id)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match self.pending.get_mut(&id) {
            Some(p) => {
                let used: usize = p.env.iter().map(|(k, v)| k.len() + v.len()).sum();
                let fits = p.env.len() < MAX_ENV_VARS
                    && used + name.len() + value.len() <= MAX_ENV_BYTES
                    && !name.is_empty()
                    && !name.contains(['=', '\0'])
                    && !value.contains('\0');
                if fits {
                    p.env.insert(name.into(), value.into());
                }
                fits
            }
            None => false,
        };
        if ok {
            session.channel_success(id)?;
        } else {
            session.channel_failure(id)?;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.launch(id, daemon::Launch::Shell, session) {
            session.channel_failure(id)?;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        if command.trim().is_empty() || !self.launch(id, daemon::Launch::Command(command), session)
        {
            session.channel_failure(id)?;
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" || !self.launch(id, daemon::Launch::Sftp, session) {
            session.channel_failure(id)?;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        id: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.pending.remove(&id).is_some() {
            self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let port = u16::try_from(port_to_connect).ok().filter(|p| *p > 0);
        let (Some(sandbox), Some(port), true) =
            (self.sandbox.clone(), port, loopback(host_to_connect))
        else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let state = self.state.clone();
        tokio::spawn(async move {
            match state.ssh_port_stream(&sandbox, port).await {
                Ok(mut inside) => {
                    reply.accept().await;
                    let mut outside = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                }
                Err(e) => {
                    tracing::debug!(sandbox = %sandbox, port, error = %e, "ssh -L: connecting inside the sandbox failed");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_forwarded() {
        for h in ["localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"] {
            assert!(loopback(h), "{h}");
        }
        for h in ["10.0.0.1", "example.com", "169.254.169.254", ""] {
            assert!(!loopback(h), "{h}");
        }
    }

    #[test]
    fn a_host_key_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("atoll-ssh-key-{}", std::process::id()));
        let path = dir.join("ssh_host_ed25519_key");
        let a = load_or_create_host_key(&path).unwrap();
        let b = load_or_create_host_key(&path).unwrap();
        assert_eq!(public_key_line(&a), public_key_line(&b));
        assert!(public_key_line(&a).starts_with("ssh-ed25519 "));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            load_or_create_host_key(&path),
            Err(SshError::BadKey { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
