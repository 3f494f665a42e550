//! A built-in SFTP server (protocol version 3, as OpenSSH speaks it) for
//! the SSH gateway's `sftp` subsystem in images without OpenSSH's
//! `sftp-server`. The daemon starts it through `/process/exec-stream`
//! as a child of its own binary (`atoll-daemon sftp-server`), as the
//! sandbox user, in the sandbox: it reads requests on stdin, answers on
//! stdout, and touches files with that user's rights only, so nothing
//! here is trusted more than a shell of that user would be.
//!
//! Requests: open, close, read, write, (l|f)stat, (f)setstat, opendir,
//! readdir, remove, mkdir, rmdir, realpath, rename, readlink, symlink, and
//! the OpenSSH extensions `posix-rename@openssh.com`, `fsync@openssh.com`
//! and `hardlink@openssh.com`. Packets are capped; so are open handles.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The subcommand of `atoll-daemon` that runs it.
pub const SUBCOMMAND: &str = "sftp-server";

/// Largest request accepted (OpenSSH's limit).
const MAX_PACKET: usize = 256 * 1024;
/// Most bytes one READ returns.
const MAX_READ: u32 = 64 * 1024;
/// Most handles open at once.
const MAX_HANDLES: usize = 512;
/// Entries per READDIR answer.
const DIR_BATCH: usize = 100;

mod op {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
}

mod status {
    pub const OK: u32 = 0;
    pub const EOF: u32 = 1;
    pub const NO_SUCH_FILE: u32 = 2;
    pub const PERMISSION_DENIED: u32 = 3;
    pub const FAILURE: u32 = 4;
    pub const BAD_MESSAGE: u32 = 5;
    pub const OP_UNSUPPORTED: u32 = 8;
}

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

const OPEN_READ: u32 = 0x1;
const OPEN_WRITE: u32 = 0x2;
const OPEN_APPEND: u32 = 0x4;
const OPEN_CREAT: u32 = 0x8;
const OPEN_TRUNC: u32 = 0x10;
const OPEN_EXCL: u32 = 0x20;

/// A request the server cannot parse: the session ends.
#[derive(Debug)]
struct Malformed;

/// Reads the fields of one request.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, Malformed> {
        let (head, rest) = self.buf.split_first_chunk::<4>().ok_or(Malformed)?;
        self.buf = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let (head, rest) = self.buf.split_first_chunk::<8>().ok_or(Malformed)?;
        self.buf = rest;
        Ok(u64::from_be_bytes(*head))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        if n > self.buf.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn path(&mut self) -> Result<PathBuf, Malformed> {
        Ok(PathBuf::from(OsString::from_vec(self.bytes()?.to_vec())))
    }

    fn attrs(&mut self) -> Result<Attrs, Malformed> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.owner = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Ok(a)
    }
}

/// File attributes as SFTP carries them.
#[derive(Default)]
struct Attrs {
    size: Option<u64>,
    owner: Option<(u32, u32)>,
    permissions: Option<u32>,
    /// (atime, mtime), seconds.
    times: Option<(u32, u32)>,
}

impl Attrs {
    fn of(m: &fs::Metadata) -> Attrs {
        Attrs {
            size: Some(m.size()),
            owner: Some((m.uid(), m.gid())),
            permissions: Some(m.mode()),
            times: Some((m.atime() as u32, m.mtime() as u32)),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        flags |= if self.size.is_some() { ATTR_SIZE } else { 0 };
        flags |= if self.owner.is_some() { ATTR_UIDGID } else { 0 };
        flags |= if self.permissions.is_some() {
            ATTR_PERMISSIONS
        } else {
            0
        };
        flags |= if self.times.is_some() {
            ATTR_ACMODTIME
        } else {
            0
        };
        put_u32(out, flags);
        if let Some(s) = self.size {
            out.extend_from_slice(&s.to_be_bytes());
        }
        if let Some((u, g)) = self.owner {
            put_u32(out, u);
            put_u32(out, g);
        }
        if let Some(p) = self.permissions {
            put_u32(out, p);
        }
        if let Some((a, m)) = self.times {
            put_u32(out, a);
            put_u32(out, m);
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

enum Handle {
    File {
        file: File,
        append: bool,
    },
    /// A directory being listed: `.` and `..` first, then its entries as
    /// the kernel hands them out (never the whole listing in memory).
    Dir {
        path: PathBuf,
        dots: Vec<OsString>,
        entries: fs::ReadDir,
    },
}

/// One session's state.
pub struct Server {
    handles: HashMap<u32, Handle>,
    next_handle: u32,
    /// Where relative paths start (the user's home, as sshd's sftp-server).
    cwd: PathBuf,
}

/// An answer: its type and body (after the request id).
type Reply = (u8, Vec<u8>);

fn status_reply(code: u32, message: &str) -> Reply {
    let mut b = Vec::new();
    put_u32(&mut b, code);
    put_bytes(&mut b, message.as_bytes());
    put_bytes(&mut b, b"en");
    (op::STATUS, b)
}

fn ok() -> Reply {
    status_reply(status::OK, "Success")
}

fn io_reply(e: &io::Error) -> Reply {
    let code = match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => status::NO_SUCH_FILE,
        io::ErrorKind::PermissionDenied => status::PERMISSION_DENIED,
        _ => status::FAILURE,
    };
    status_reply(code, &e.to_string())
}

fn from_io(r: io::Result<Reply>) -> Reply {
    r.unwrap_or_else(|e| io_reply(&e))
}

/// `ls -l`-like line of a directory entry (what `sftp`'s `ls -l` shows).
fn long_name(name: &[u8], m: &fs::Metadata) -> Vec<u8> {
    let mode = m.mode();
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut perms = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let (_, month, day, hour, minute) = civil(m.mtime());
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut line = format!(
        "{perms} {:>4} {:<8} {:<8} {:>8} {} {:>2} {:02}:{:02} ",
        m.nlink(),
        m.uid(),
        m.gid(),
        m.size(),
        MONTHS[(month - 1) as usize],
        day,
        hour,
        minute
    )
    .into_bytes();
    line.extend_from_slice(name);
    line
}

/// (year, month, day, hour, minute) of a Unix time, UTC.
fn civil(t: i64) -> (i64, u32, u32, u32, u32) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Days to a civil date (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (secs / 3600) as u32,
        ((secs % 3600) / 60) as u32,
    )
}

/// `path` with `.` and `..` resolved lexically (what REALPATH answers for
/// a path that does not exist yet).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

impl Server {
    pub fn new(cwd: PathBuf) -> Server {
        Server {
            handles: HashMap::new(),
            next_handle: 1,
            cwd,
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.as_os_str().is_empty() {
            self.cwd.clone()
        } else {
            self.cwd.join(p)
        }
    }

    fn add_handle(&mut self, h: Handle) -> Reply {
        if self.handles.len() >= MAX_HANDLES {
            return status_reply(status::FAILURE, "too many open handles");
        }
        // Never an id still in use, even once the counter wraps.
        while self.handles.contains_key(&self.next_handle) {
            self.next_handle = self.next_handle.wrapping_add(1).max(1);
        }
        let id = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        self.handles.insert(id, h);
        let mut b = Vec::new();
        put_bytes(&mut b, id.to_string().as_bytes());
        (op::HANDLE, b)
    }

    fn handle_id(r: &mut Reader<'_>) -> Result<u32, Malformed> {
        Ok(std::str::from_utf8(r.bytes()?)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    fn attrs_reply(m: io::Result<fs::Metadata>) -> Reply {
        match m {
            Ok(m) => {
                let mut b = Vec::new();
                Attrs::of(&m).encode(&mut b);
                (op::ATTRS, b)
            }
            Err(e) => io_reply(&e),
        }
    }

    fn name_reply(entries: &[(Vec<u8>, Vec<u8>, Attrs)]) -> Reply {
        let mut b = Vec::new();
        put_u32(&mut b, entries.len() as u32);
        for (name, long, attrs) in entries {
            put_bytes(&mut b, name);
            put_bytes(&mut b, long);
            attrs.encode(&mut b);
        }
        (op::NAME, b)
    }

    fn set_attrs(path: &Path, file: Option<&File>, a: &Attrs) -> io::Result<()> {
        if let Some(size) = a.size {
            match file {
                Some(f) => f.set_len(size)?,
                None => OpenOptions::new().write(true).open(path)?.set_len(size)?,
            }
        }
        if let Some(mode) = a.permissions {
            let perms = fs::Permissions::from_mode(mode & 0o7777);
            match file {
                Some(f) => f.set_permissions(perms)?,
                None => fs::set_permissions(path, perms)?,
            }
        }
        if let Some((uid, gid)) = a.owner {
            match file {
                Some(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid))?,
                None => std::os::unix::fs::chown(path, Some(uid), Some(gid))?,
            }
        }
        if let Some((atime, mtime)) = a.times {
            let t = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s));
            match file {
                Some(f) => f.set_times(
                    fs::FileTimes::new()
                        .set_accessed(t(atime))
                        .set_modified(t(mtime)),
                )?,
                // By path: directories too, and files the owner may not
                // write.
                None => {
                    let ts = |s: u32| nix::sys::time::TimeSpec::new(i64::from(s), 0);
                    nix::sys::stat::utimensat(
                        nix::fcntl::AT_FDCWD,
                        path,
                        &ts(atime),
                        &ts(mtime),
                        nix::sys::stat::UtimensatFlags::FollowSymlink,
                    )
                    .map_err(io::Error::from)?
                }
            }
        }
        Ok(())
    }

    /// Answers one request (its type and the bytes after its id).
    fn handle(&mut self, kind: u8, r: &mut Reader<'_>) -> Result<Reply, Malformed> {
        Ok(match kind {
            op::OPEN => {
                let path = self.resolve(&r.path()?);
                let flags = r.u32()?;
                let attrs = r.attrs()?;
                let mut o = OpenOptions::new();
                o.read(flags & OPEN_READ != 0)
                    .write(flags & (OPEN_WRITE | OPEN_APPEND) != 0)
                    .append(flags & OPEN_APPEND != 0)
                    .truncate(flags & OPEN_TRUNC != 0)
                    .mode(attrs.permissions.map(|p| p & 0o7777).unwrap_or(0o666));
                if flags & OPEN_CREAT != 0 {
                    if flags & OPEN_EXCL != 0 {
                        o.create_new(true);
                    } else {
                        o.create(true);
                    }
                }
                match o.open(&path) {
                    Ok(file) => self.add_handle(Handle::File {
                        file,
                        append: flags & OPEN_APPEND != 0,
                    }),
                    Err(e) => io_reply(&e),
                }
            }
            op::CLOSE => {
                let id = Self::handle_id(r)?;
                match self.handles.remove(&id) {
                    Some(_) => ok(),
                    None => status_reply(status::FAILURE, "no such handle"),
                }
            }
            op::READ => {
                let id = Self::handle_id(r)?;
                let offset = r.u64()?;
                let len = r.u32()?.min(MAX_READ) as usize;
                match self.handles.get(&id) {
                    Some(Handle::File { file, .. }) => {
                        let mut buf = vec![0u8; len];
                        match file.read_at(&mut buf, offset) {
                            Ok(0) if len > 0 => status_reply(status::EOF, "End of file"),
                            Ok(n) => {
                                let mut b = Vec::with_capacity(n + 4);
                                put_bytes(&mut b, &buf[..n]);
                                (op::DATA, b)
                            }
                            Err(e) => io_reply(&e),
                        }
                    }
                    _ => status_reply(status::FAILURE, "no such file handle"),
                }
            }
            op::WRITE => {
                let id = Self::handle_id(r)?;
                let offset = r.u64()?;
                let data = r.bytes()?;
                match self.handles.get_mut(&id) {
                    Some(Handle::File { file, append }) => from_io(if *append {
                        file.write_all(data).map(|_| ok())
                    } else {
                        file.write_all_at(data, offset).map(|_| ok())
                    }),
                    _ => status_reply(status::FAILURE, "no such file handle"),
                }
            }
            op::LSTAT => Self::attrs_reply(fs::symlink_metadata(self.resolve(&r.path()?))),
            op::STAT => Self::attrs_reply(fs::metadata(self.resolve(&r.path()?))),
            op::FSTAT => match self.handles.get(&Self::handle_id(r)?) {
                Some(Handle::File { file, .. }) => Self::attrs_reply(file.metadata()),
                Some(Handle::Dir { path, .. }) => Self::attrs_reply(fs::metadata(path)),
                None => status_reply(status::FAILURE, "no such handle"),
            },
            op::SETSTAT => {
                let path = self.resolve(&r.path()?);
                let a = r.attrs()?;
                from_io(Self::set_attrs(&path, None, &a).map(|_| ok()))
            }
            op::FSETSTAT => {
                let id = Self::handle_id(r)?;
                let a = r.attrs()?;
                match self.handles.get(&id) {
                    Some(Handle::File { file, .. }) => {
                        from_io(Self::set_attrs(Path::new(""), Some(file), &a).map(|_| ok()))
                    }
                    Some(Handle::Dir { path, .. }) => {
                        let path = path.clone();
                        from_io(Self::set_attrs(&path, None, &a).map(|_| ok()))
                    }
                    None => status_reply(status::FAILURE, "no such handle"),
                }
            }
            op::OPENDIR => {
                let path = self.resolve(&r.path()?);
                match fs::read_dir(&path) {
                    Ok(entries) => self.add_handle(Handle::Dir {
                        path,
                        // Served from the end.
                        dots: vec!["..".into(), ".".into()],
                        entries,
                    }),
                    Err(e) => io_reply(&e),
                }
            }
            op::READDIR => match self.handles.get_mut(&Self::handle_id(r)?) {
                Some(Handle::Dir {
                    path,
                    dots,
                    entries,
                }) => {
                    let mut batch = Vec::new();
                    while batch.len() < DIR_BATCH {
                        let name = match dots.pop() {
                            Some(d) => d,
                            None => match entries.next() {
                                Some(Ok(e)) => e.file_name(),
                                Some(Err(_)) => continue,
                                None => break,
                            },
                        };
                        let Ok(m) = fs::symlink_metadata(path.join(&name)) else {
                            continue; // gone since the listing
                        };
                        let bytes = name.as_bytes().to_vec();
                        batch.push((bytes.clone(), long_name(&bytes, &m), Attrs::of(&m)));
                    }
                    if batch.is_empty() {
                        status_reply(status::EOF, "End of directory")
                    } else {
                        Self::name_reply(&batch)
                    }
                }
                _ => status_reply(status::FAILURE, "no such directory handle"),
            },
            op::REMOVE => from_io(fs::remove_file(self.resolve(&r.path()?)).map(|_| ok())),
            op::MKDIR => {
                let path = self.resolve(&r.path()?);
                let a = r.attrs()?;
                let mut b = fs::DirBuilder::new();
                std::os::unix::fs::DirBuilderExt::mode(
                    &mut b,
                    a.permissions.map(|p| p & 0o7777).unwrap_or(0o777),
                );
                from_io(b.create(&path).map(|_| ok()))
            }
            op::RMDIR => from_io(fs::remove_dir(self.resolve(&r.path()?)).map(|_| ok())),
            op::REALPATH => {
                let path = self.resolve(&r.path()?);
                let real = fs::canonicalize(&path).unwrap_or_else(|_| lexical(&path));
                let name = real.as_os_str().as_bytes().to_vec();
                Self::name_reply(&[(name.clone(), name, Attrs::default())])
            }
            op::RENAME => {
                let from = self.resolve(&r.path()?);
                let to = self.resolve(&r.path()?);
                // Version 3: never over an existing file.
                if fs::symlink_metadata(&to).is_ok() {
                    status_reply(status::FAILURE, "the target exists")
                } else {
                    from_io(fs::rename(&from, &to).map(|_| ok()))
                }
            }
            op::READLINK => match fs::read_link(self.resolve(&r.path()?)) {
                Ok(target) => {
                    let t = target.as_os_str().as_bytes().to_vec();
                    Self::name_reply(&[(t.clone(), t, Attrs::default())])
                }
                Err(e) => io_reply(&e),
            },
            op::SYMLINK => {
                // OpenSSH sends the target first, then the link's path.
                let target = r.path()?;
                let link = self.resolve(&r.path()?);
                from_io(std::os::unix::fs::symlink(&target, &link).map(|_| ok()))
            }
            op::EXTENDED => {
                let name = r.bytes()?.to_vec();
                match name.as_slice() {
                    b"posix-rename@openssh.com" => {
                        let from = self.resolve(&r.path()?);
                        let to = self.resolve(&r.path()?);
                        from_io(fs::rename(&from, &to).map(|_| ok()))
                    }
                    b"hardlink@openssh.com" => {
                        let from = self.resolve(&r.path()?);
                        let to = self.resolve(&r.path()?);
                        from_io(fs::hard_link(&from, &to).map(|_| ok()))
                    }
                    b"fsync@openssh.com" => match self.handles.get(&Self::handle_id(r)?) {
                        Some(Handle::File { file, .. }) => from_io(file.sync_all().map(|_| ok())),
                        _ => status_reply(status::FAILURE, "no such file handle"),
                    },
                    _ => status_reply(status::OP_UNSUPPORTED, "unsupported extension"),
                }
            }
            _ => status_reply(status::OP_UNSUPPORTED, "unsupported request"),
        })
    }

    /// Answers one packet (type byte first); `None` ends the session.
    pub fn packet(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        let (&kind, rest) = packet.split_first()?;
        let mut r = Reader { buf: rest };
        let mut out = Vec::new();
        if kind == op::INIT {
            r.u32().ok()?;
            out.push(op::VERSION);
            put_u32(&mut out, 3);
            for (name, version) in [
                ("posix-rename@openssh.com", "1"),
                ("hardlink@openssh.com", "1"),
                ("fsync@openssh.com", "1"),
            ] {
                put_bytes(&mut out, name.as_bytes());
                put_bytes(&mut out, version.as_bytes());
            }
            return Some(out);
        }
        let id = r.u32().ok()?;
        let (kind, body) = match self.handle(kind, &mut r) {
            Ok(reply) => reply,
            Err(Malformed) => status_reply(status::BAD_MESSAGE, "malformed request"),
        };
        out.push(kind);
        put_u32(&mut out, id);
        out.extend_from_slice(&body);
        Some(out)
    }
}

/// Serves one session on `input`/`output` until the client closes it.
pub fn serve(mut input: impl Read, mut output: impl Write, cwd: PathBuf) -> io::Result<()> {
    let mut server = Server::new(cwd);
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an SFTP packet of {len} bytes"),
            ));
        }
        let mut packet = vec![0u8; len];
        input.read_exact(&mut packet)?;
        let Some(reply) = server.packet(&packet) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a malformed SFTP packet",
            ));
        };
        output.write_all(&(reply.len() as u32).to_be_bytes())?;
        output.write_all(&reply)?;
        output.flush()?;
    }
}

/// `atoll-daemon sftp-server`: serves stdin/stdout from `$HOME`.
pub fn main_stdio() -> ! {
    let cwd = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_dir())
        .unwrap_or_else(|| PathBuf::from("/"));
    let stdin = io::stdin().lock();
    let stdout = io::BufWriter::with_capacity(MAX_READ as usize + 64, io::stdout().lock());
    match serve(stdin, stdout, cwd) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("sftp-server: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![kind];
        put_u32(&mut p, id);
        for f in fields {
            p.extend_from_slice(f);
        }
        p
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        put_bytes(&mut b, s);
        b
    }

    fn status_of(reply: &[u8]) -> u32 {
        assert_eq!(reply[0], op::STATUS, "{reply:?}");
        u32::from_be_bytes(reply[5..9].try_into().unwrap())
    }

    #[test]
    fn write_read_list_rename_and_remove() {
        let dir = std::env::temp_dir().join(format!("atoll-sftp-{}", uuid::Uuid::new_v4()));
        fs::create_dir(&dir).unwrap();
        let mut s = Server::new(dir.clone());
        let init = s.packet(&[op::INIT, 0, 0, 0, 3]).unwrap();
        assert_eq!(init[0], op::VERSION);
        // open(create, write) relative to the start directory
        let flags = (OPEN_WRITE | OPEN_CREAT | OPEN_TRUNC).to_be_bytes();
        let attrs = [ATTR_PERMISSIONS.to_be_bytes(), 0o640u32.to_be_bytes()].concat();
        let r = s
            .packet(&request(op::OPEN, 1, &[&string(b"a.txt"), &flags, &attrs]))
            .unwrap();
        assert_eq!(r[0], op::HANDLE);
        let handle = r[5..].to_vec();
        let r = s
            .packet(&request(
                op::WRITE,
                2,
                &[&handle, &5u64.to_be_bytes(), &string(b"world")],
            ))
            .unwrap();
        assert_eq!(status_of(&r), status::OK);
        s.packet(&request(op::CLOSE, 3, &[&handle])).unwrap();
        let on_disk = fs::read(dir.join("a.txt")).unwrap();
        assert_eq!(on_disk, b"\0\0\0\0\0world");
        assert_eq!(
            fs::metadata(dir.join("a.txt")).unwrap().mode() & 0o777,
            0o640
        );
        // read back from an offset, then EOF
        let r = s
            .packet(&request(
                op::OPEN,
                4,
                &[
                    &string(b"a.txt"),
                    &OPEN_READ.to_be_bytes(),
                    &0u32.to_be_bytes(),
                ],
            ))
            .unwrap();
        let handle = r[5..].to_vec();
        let r = s
            .packet(&request(
                op::READ,
                5,
                &[&handle, &5u64.to_be_bytes(), &100u32.to_be_bytes()],
            ))
            .unwrap();
        assert_eq!(r[0], op::DATA);
        assert_eq!(&r[9..], b"world");
        let r = s
            .packet(&request(
                op::READ,
                6,
                &[&handle, &10u64.to_be_bytes(), &100u32.to_be_bytes()],
            ))
            .unwrap();
        assert_eq!(status_of(&r), status::EOF);
        // realpath, readdir, rename (not over a file), remove
        let r = s
            .packet(&request(op::REALPATH, 7, &[&string(b".")]))
            .unwrap();
        assert_eq!(r[0], op::NAME);
        let r = s.packet(&request(op::OPENDIR, 8, &[&string(b"")])).unwrap();
        let dh = r[5..].to_vec();
        let r = s.packet(&request(op::READDIR, 9, &[&dh])).unwrap();
        assert_eq!(r[0], op::NAME);
        assert_eq!(u32::from_be_bytes(r[5..9].try_into().unwrap()), 3);
        let r = s.packet(&request(op::READDIR, 10, &[&dh])).unwrap();
        assert_eq!(status_of(&r), status::EOF);
        let r = s
            .packet(&request(
                op::RENAME,
                11,
                &[&string(b"a.txt"), &string(b"b.txt")],
            ))
            .unwrap();
        assert_eq!(status_of(&r), status::OK);
        let r = s
            .packet(&request(op::REMOVE, 12, &[&string(b"a.txt")]))
            .unwrap();
        assert_eq!(status_of(&r), status::NO_SUCH_FILE);
        let r = s
            .packet(&request(op::REMOVE, 13, &[&string(b"b.txt")]))
            .unwrap();
        assert_eq!(status_of(&r), status::OK);
        // times of a directory, by path
        fs::create_dir(dir.join("sub")).unwrap();
        let times = [
            ATTR_ACMODTIME.to_be_bytes(),
            1_000_000u32.to_be_bytes(),
            2_000_000u32.to_be_bytes(),
        ]
        .concat();
        let r = s
            .packet(&request(op::SETSTAT, 15, &[&string(b"sub"), &times]))
            .unwrap();
        assert_eq!(status_of(&r), status::OK);
        assert_eq!(fs::metadata(dir.join("sub")).unwrap().mtime(), 2_000_000);
        // a truncated request is a bad message, not a crash
        let r = s.packet(&request(op::OPEN, 14, &[&[0, 0, 0, 9]])).unwrap();
        assert_eq!(status_of(&r), status::BAD_MESSAGE);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0));
        assert_eq!(civil(1_796_553_912), (2026, 12, 6, 10, 45));
    }
}
