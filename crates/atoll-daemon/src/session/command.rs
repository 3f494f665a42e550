//! One command of a session: its files and FIFOs, its bounded log, its exit
//! code, its input, and the pump task that moves bytes from the FIFOs into
//! the log.
//!
//! The pump opens nothing late: every read end exists before the shell is
//! told to run the command, so the shell's opens never block. A command is
//! *finished* when the shell reports `$?` on the exit FIFO (or the shell
//! itself ends, or the session is deleted); at that moment everything the
//! command wrote is already in the FIFOs' buffers, so one non-blocking drain
//! makes the log complete. Background processes the command left behind
//! may keep writing to its stdout and stderr afterwards; the pump keeps
//! appending until they close them (or the session is deleted) instead of
//! closing the read ends, which would kill them with SIGPIPE.

use std::fs::OpenOptions as FileOptions;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use nix::sys::stat::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::log::{truncation_notice, CommandLog, Stream};
use super::shell::CommandFiles;
use super::SessionError;

/// Exit code given to commands that never reported one because their
/// session was deleted (as if SIGKILLed).
pub const KILLED_EXIT_CODE: i32 = 128 + 9;
/// Largest chunk a follower gets at once.
pub const FOLLOW_CHUNK: usize = 64 * 1024;
/// Input requests queued for a command that is not reading them.
const INPUT_QUEUE: usize = 64;

/// What a command's state looks like from outside.
#[derive(Debug)]
struct State {
    log: CommandLog,
    exit_code: Option<i32>,
    /// Queue to the input task; dropped when the command finishes.
    input: Option<mpsc::Sender<Bytes>>,
}

/// One command of a session.
#[derive(Debug)]
pub struct Command {
    pub id: String,
    /// The command text (shortened when the session's budget evicts it).
    text: Mutex<String>,
    /// Whether the command was started with `runAsync` (its stdin is a FIFO
    /// the daemon feeds; otherwise `/dev/null`).
    pub accepts_input: bool,
    pub suppress_input_echo: bool,
    log_limit: usize,
    state: Mutex<State>,
    /// Bumped on every change; followers and waiters watch it.
    progress: watch::Sender<u64>,
}

/// A snapshot of a command's log.
#[derive(Debug, Clone)]
pub struct LogSnapshot {
    /// Marked log, led by a truncation notice when older bytes are gone.
    pub marked: Vec<u8>,
    pub truncated: bool,
    pub exit_code: Option<i32>,
}

/// Where a follower is in a command's log.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    pos: u64,
    noticed: bool,
}

/// What a follower reads next.
#[derive(Debug)]
pub struct Chunk {
    /// Marked bytes (possibly empty).
    pub data: Vec<u8>,
    /// The command has finished and the follower has everything.
    pub done: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Command {
    pub fn new(
        id: String,
        text: String,
        accepts_input: bool,
        suppress_input_echo: bool,
        log_limit: usize,
    ) -> Self {
        Command {
            id,
            text: Mutex::new(text),
            accepts_input,
            suppress_input_echo,
            log_limit,
            state: Mutex::new(State {
                log: CommandLog::new(log_limit),
                exit_code: None,
                input: None,
            }),
            progress: watch::Sender::new(0),
        }
    }

    pub fn text(&self) -> String {
        lock(&self.text).clone()
    }

    pub fn exit_code(&self) -> Option<i32> {
        lock(&self.state).exit_code
    }

    /// Bytes this command holds in memory (log and text).
    pub fn retained(&self) -> usize {
        lock(&self.state).log.retained() + lock(&self.text).len()
    }

    /// Drops the log and shortens the text (the session's budget is spent).
    pub fn evict(&self) {
        lock(&self.state).log.evict();
        let mut text = lock(&self.text);
        if text.len() > 1024 {
            let mut cut = 1024;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        drop(text);
        self.bump();
    }

    fn bump(&self) {
        self.progress.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    pub(super) fn append(&self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        lock(&self.state).log.append(stream, data);
        self.bump();
    }

    pub(super) fn finish(&self, code: i32) {
        let mut st = lock(&self.state);
        if st.exit_code.is_none() {
            st.exit_code = Some(code);
        }
        st.input = None;
        st.log.shrink();
        drop(st);
        self.bump();
    }

    /// The whole kept log.
    pub fn snapshot(&self) -> LogSnapshot {
        let st = lock(&self.state);
        let mut marked = Vec::new();
        if st.log.truncated() {
            marked = truncation_notice(st.log.start(), self.log_limit);
        }
        marked.extend(st.log.contents());
        LogSnapshot {
            marked,
            truncated: st.log.truncated(),
            exit_code: st.exit_code,
        }
    }

    /// The next bytes for a follower at `cursor`, with a truncation notice
    /// first if it missed dropped bytes.
    pub fn read(&self, cursor: &mut Cursor, max: usize) -> Chunk {
        let st = &*lock(&self.state);
        let mut data = Vec::new();
        if cursor.pos < st.log.start() && !cursor.noticed {
            cursor.noticed = true;
            data = truncation_notice(st.log.start(), self.log_limit);
        }
        let (bytes, next) = st.log.read_from(cursor.pos, max);
        cursor.pos = next;
        data.extend(bytes);
        Chunk {
            done: st.exit_code.is_some() && next == st.log.end(),
            data,
        }
    }

    /// Waits until the command has finished; its exit code.
    pub async fn wait(&self) -> i32 {
        let mut rx = self.subscribe();
        loop {
            if let Some(code) = self.exit_code() {
                return code;
            }
            if rx.changed().await.is_err() {
                // Unreachable while `self` lives (it owns the sender).
                return self.exit_code().unwrap_or(KILLED_EXIT_CODE);
            }
        }
    }

    /// Queues input for the command's stdin (and echoes it to the log as
    /// stdout unless echo is suppressed). A trailing newline is added when
    /// missing, as Daytona does, so line readers see it.
    pub fn send_input(&self, data: &str) -> Result<(), SessionError> {
        let mut bytes = data.as_bytes().to_vec();
        if !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        let mut st = lock(&self.state);
        if let Some(code) = st.exit_code {
            return Err(SessionError::CommandCompleted {
                id: self.id.clone(),
                exit_code: code,
            });
        }
        if !self.accepts_input {
            return Err(SessionError::NoStdin {
                id: self.id.clone(),
            });
        }
        let Some(tx) = st.input.as_ref() else {
            return Err(SessionError::CommandCompleted {
                id: self.id.clone(),
                exit_code: st.exit_code.unwrap_or(KILLED_EXIT_CODE),
            });
        };
        tx.try_send(Bytes::from(bytes.clone()))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SessionError::InputBacklog {
                    id: self.id.clone(),
                    queue: INPUT_QUEUE,
                },
                mpsc::error::TrySendError::Closed(_) => SessionError::CommandCompleted {
                    id: self.id.clone(),
                    exit_code: KILLED_EXIT_CODE,
                },
            })?;
        if !self.suppress_input_echo {
            st.log.append(Stream::Stdout, &bytes);
        }
        drop(st);
        self.bump();
        Ok(())
    }
}

/// The read (and input write) ends of a command's FIFOs.
pub struct Pipes {
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    exit: pipe::Receiver,
    stdin: Option<pipe::Sender>,
}

/// Creates the command's files (FIFOs and the script holding `text`),
/// owned by `owner` when commands run as another user, and opens the
/// daemon's ends. On error nothing is left behind.
pub fn prepare(
    files: &CommandFiles,
    text: &str,
    owner: Option<(u32, u32)>,
) -> Result<Pipes, SessionError> {
    let result = prepare_inner(files, text, owner);
    if result.is_err() {
        remove_files(files);
    }
    result
}

fn prepare_inner(
    files: &CommandFiles,
    text: &str,
    owner: Option<(u32, u32)>,
) -> Result<Pipes, SessionError> {
    let io = |what| move |source| SessionError::Io { what, source };
    for fifo in files.fifos() {
        nix::unistd::mkfifo(fifo, Mode::from_bits_truncate(0o600))
            .map_err(|e| io("creating a command FIFO")(io::Error::from(e)))?;
    }
    let mut script = FileOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&files.script)
        .map_err(io("writing the command script"))?;
    script
        .write_all(text.as_bytes())
        .and_then(|()| script.write_all(b"\n"))
        .map_err(io("writing the command script"))?;
    drop(script);
    if let Some((uid, gid)) = owner {
        for path in files.all() {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io("handing the command files to the sandbox user"))?;
        }
    }
    let open_rx = |p: &Path| {
        pipe::OpenOptions::new()
            .open_receiver(p)
            .map_err(io("opening a command FIFO"))
    };
    let stdin = match &files.stdin {
        // Read-write: opening never waits for the shell, and the shell's
        // open for reading never waits for us.
        Some(p) => Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(p)
                .map_err(io("opening the command's input FIFO"))?,
        ),
        None => None,
    };
    Ok(Pipes {
        stdout: open_rx(&files.stdout)?,
        stderr: open_rx(&files.stderr)?,
        exit: open_rx(&files.exit)?,
        stdin,
    })
}

/// Removes a command's files (their open ends stay valid).
pub fn remove_files(files: &CommandFiles) {
    for p in files.all() {
        let _ = std::fs::remove_file(p);
    }
}

/// Creates a session directory, mode 0711: the sandbox user can reach the
/// files inside by name but cannot list, replace or remove them.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o711).create(path)
}

/// Starts the command's pump (and its input task); both end by themselves.
pub fn start(
    cmd: Arc<Command>,
    pipes: Pipes,
    files: CommandFiles,
    shell_ended: watch::Receiver<Option<i32>>,
    cancel: CancellationToken,
) {
    let Pipes {
        stdout,
        stderr,
        exit,
        stdin,
    } = pipes;
    if let Some(stdin) = stdin {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        lock(&cmd.state).input = Some(tx);
        tokio::spawn(feed_input(stdin, rx, cancel.clone()));
    }
    tokio::spawn(pump(cmd, stdout, stderr, exit, files, shell_ended, cancel));
}

/// Writes queued input to the command's stdin FIFO until the queue closes
/// (the command finished) or the session is deleted.
async fn feed_input(
    mut stdin: pipe::Sender,
    mut rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
) {
    loop {
        let data = tokio::select! {
            d = rx.recv() => d,
            _ = cancel.cancelled() => None,
        };
        let Some(data) = data else { return };
        let written = tokio::select! {
            r = stdin.write_all(&data) => r.is_ok(),
            _ = cancel.cancelled() => false,
        };
        if !written {
            return;
        }
    }
}

/// Reads from an optional receiver; never ready when it is gone.
pub(super) async fn read_some(
    rx: &mut Option<pipe::Receiver>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match rx {
        Some(rx) => rx.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Reads what is in a FIFO right now, without waiting; `false` at end of
/// file or on error.
pub(super) fn drain_now(rx: &pipe::Receiver, buf: &mut [u8], mut sink: impl FnMut(&[u8])) -> bool {
    loop {
        match nix::unistd::read(rx.as_fd(), buf) {
            Ok(0) => return false,
            Ok(n) => sink(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

fn parse_exit(bytes: &[u8]) -> i32 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

async fn pump(
    cmd: Arc<Command>,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    exit: pipe::Receiver,
    files: CommandFiles,
    mut shell_ended: watch::Receiver<Option<i32>>,
    cancel: CancellationToken,
) {
    let mut out = Some(stdout);
    let mut err = Some(stderr);
    let mut exit = Some(exit);
    let mut exit_bytes = Vec::new();
    let mut obuf = vec![0u8; 64 * 1024];
    let mut ebuf = vec![0u8; 64 * 1024];
    let mut xbuf = [0u8; 64];
    let mut watch_shell = true;
    // Until the command finishes, a FIFO that reached end of file stays open
    // (so the shell's open for writing can never block); afterwards it is
    // closed.
    let (mut out_eof, mut err_eof) = (false, false);

    let finish = |code: i32,
                  out: &mut Option<pipe::Receiver>,
                  err: &mut Option<pipe::Receiver>,
                  out_eof: &mut bool,
                  err_eof: &mut bool,
                  obuf: &mut [u8]| {
        if let Some(rx) = out.as_ref().filter(|_| !*out_eof) {
            *out_eof = !drain_now(rx, obuf, |b| cmd.append(Stream::Stdout, b));
        }
        if let Some(rx) = err.as_ref().filter(|_| !*err_eof) {
            *err_eof = !drain_now(rx, obuf, |b| cmd.append(Stream::Stderr, b));
        }
        if *out_eof {
            *out = None;
        }
        if *err_eof {
            *err = None;
        }
        cmd.finish(code);
        remove_files(&files);
    };

    if let Some(code) = *shell_ended.borrow() {
        finish(
            code,
            &mut out,
            &mut err,
            &mut out_eof,
            &mut err_eof,
            &mut obuf,
        );
    }
    loop {
        let finished = cmd.exit_code().is_some();
        if finished {
            exit = None;
            if out.is_none() && err.is_none() {
                return;
            }
        }
        tokio::select! {
            r = read_some(&mut out, &mut obuf), if !out_eof => match r {
                Ok(n) if n > 0 => cmd.append(Stream::Stdout, &obuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    out_eof = true;
                    if finished {
                        out = None;
                    }
                }
            },
            r = read_some(&mut err, &mut ebuf), if !err_eof => match r {
                Ok(n) if n > 0 => cmd.append(Stream::Stderr, &ebuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    err_eof = true;
                    if finished {
                        err = None;
                    }
                }
            },
            r = read_some(&mut exit, &mut xbuf), if !finished => match r {
                Ok(n) if n > 0 => exit_bytes.extend_from_slice(&xbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(_) if !exit_bytes.is_empty() => {
                    let code = parse_exit(&exit_bytes);
                    finish(code, &mut out, &mut err, &mut out_eof, &mut err_eof, &mut obuf);
                }
                _ => {
                    // End of file without a status: no writer has come yet
                    // (or one left without writing). Wait for the next.
                    exit = pipe::OpenOptions::new().open_receiver(&files.exit).ok();
                }
            },
            changed = shell_ended.changed(), if watch_shell && !finished => match changed {
                Ok(()) => {
                    if let Some(code) = *shell_ended.borrow() {
                        finish(code, &mut out, &mut err, &mut out_eof, &mut err_eof, &mut obuf);
                    }
                }
                Err(_) => watch_shell = false,
            },
            _ = cancel.cancelled() => {
                if !finished {
                    finish(KILLED_EXIT_CODE, &mut out, &mut err, &mut out_eof, &mut err_eof, &mut obuf);
                }
                return;
            }
        }
        // A stream that ended before the command finished is closed once it
        // has.
        if cmd.exit_code().is_some() {
            if out_eof {
                out = None;
            }
            if err_eof {
                err = None;
            }
        }
    }
}
