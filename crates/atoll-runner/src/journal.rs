//! The runner's state journal: one small JSON file per sandbox recording
//! the intent to run it and, once spawned, the host pid and start time of
//! its PID 1, and whether it is paused. Written atomically (temp file,
//! fsync, rename) so a runner killed at any point finds either the old or
//! the new entry on restart.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Spawn in progress: cgroup may exist, PID 1 may not.
    Creating,
    /// PID 1 runs; `pid` and `start_time` identify it.
    Running,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub id: String,
    pub state: EntryState,
    /// Host pid of the sandbox's PID 1.
    pub pid: Option<i32>,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22),
    /// which tells a live sandbox from a reused pid.
    pub start_time: Option<u64>,
    pub updated_at_ms: i64,
    /// The sandbox's address, host-side veth and network policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::network::Lease>,
    /// The sandbox's slice of host uids (held while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uids: Option<crate::userns::UidRange>,
    /// Inode of its pid namespace: a toolbox peer must live in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    /// Paused: every process frozen. Written before freezing and cleared
    /// after thawing, so a runner restarted in between freezes it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Its disk's block device (major, minor), to read its changes from
    /// (a commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_dev: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(|source| JournalError::Io {
            path: dir.into(),
            source,
        })?;
        // A runner killed mid-write leaves its temp file; the entry itself
        // is still the old one (or absent), so the temp file is garbage.
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Journal { dir: dir.into() })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn write(&self, entry: &Entry) -> Result<(), JournalError> {
        let path = self.path(&entry.id);
        let tmp = self.dir.join(format!(".{}.tmp", entry.id));
        let err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec(entry).unwrap_or_default();
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn remove(&self, id: &str) -> Result<(), JournalError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Io { path, source }),
        }
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        serde_json::from_slice(&fs::read(self.path(id)).ok()?).ok()
    }

    /// Every readable entry. Unreadable files (torn writes cannot happen,
    /// but a full disk can leave a stray temp file) are skipped.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect();
        out.sort_by(|a: &Entry, b| a.id.cmp(&b.id));
        out
    }
}

/// Start time (field 22 of `/proc/<pid>/stat`) of a live process.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parens: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state); field 22 is index 19 here.
    let field = rest.split_whitespace().nth(19)?;
    let state = rest.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    field.parse().ok()
}

/// Is `entry`'s PID 1 still the process it recorded?
pub fn is_alive(entry: &Entry) -> bool {
    match (entry.pid, entry.start_time) {
        (Some(pid), Some(st)) => process_start_time(pid) == Some(st),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_identify_live_processes() {
        let dir = std::env::temp_dir().join(format!("atoll-journal-{}", std::process::id()));
        let j = Journal::open(&dir).unwrap();
        let me = std::process::id() as i32;
        let e = Entry {
            id: "a".into(),
            state: EntryState::Running,
            pid: Some(me),
            start_time: process_start_time(me),
            updated_at_ms: 1,
            net: None,
            uids: None,
            pid_ns: None,
            paused: true,
            disk_dev: Some((7, 3)),
        };
        j.write(&e).unwrap();
        assert_eq!(j.get("a"), Some(e.clone()));
        assert!(is_alive(&e));
        let reused = Entry {
            start_time: e.start_time.map(|t| t + 1),
            ..e.clone()
        };
        assert!(!is_alive(&reused));
        // entries written before `paused` existed read as not paused
        fs::write(
            dir.join("old.json"),
            br#"{"id":"old","state":"running","pid":null,"startTime":null,"updatedAtMs":1}"#,
        )
        .unwrap();
        assert!(!j.get("old").unwrap().paused);
        j.remove("old").unwrap();
        assert_eq!(j.entries().len(), 1);
        j.remove("a").unwrap();
        assert!(j.entries().is_empty());
        // a temp file left by a runner killed mid-write is swept on open
        fs::write(dir.join(".b.tmp"), b"{").unwrap();
        Journal::open(&dir).unwrap();
        assert!(!dir.join(".b.tmp").exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
