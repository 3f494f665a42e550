//! How the CLI looks on a terminal: colour (table headers, states, error
//! prefixes) and the spinner on slow waits. Colour is on only where the
//! stream is a terminal, and off with `--no-color`, `NO_COLOR` (any
//! non-empty value, per no-color.org) or `TERM=dumb`; pipes and files
//! always get plain text.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Whether the command line or the environment turned colour off.
pub fn disabled_by(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter().any(|a| a == "--no-color")
        || std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
        || std::env::var_os("TERM").is_some_and(|t| t == "dumb")
}

pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// Which stream a text goes to (colour depends on that stream being a
/// terminal).
#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

fn enabled(stream: Stream) -> bool {
    !DISABLED.load(Ordering::Relaxed)
        && match stream {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
}

/// `text` wrapped in the SGR `code` when `stream` shows colour.
pub fn paint(stream: Stream, code: &str, text: &str) -> String {
    if enabled(stream) && !code.is_empty() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub const BOLD: &str = "1";
pub const RED: &str = "31";

/// The colour of a resource state: green running or ready, yellow on its
/// way somewhere, red failed, none for resting states.
pub fn state_code(state: &str) -> &'static str {
    match state {
        "started" | "active" | "ready" => "32",
        "error" | "build_failed" | "unknown" => "31",
        "stopped" | "archived" | "paused" | "inactive" => "",
        _ => "33",
    }
}

/// A wait shown on stderr: a spinner with the elapsed time and the
/// current state on a terminal, a dot per tick elsewhere.
pub struct Waiting {
    what: String,
    started: Instant,
    tick: usize,
    tty: bool,
    shown: bool,
}

const FRAMES: &[char] = &['|', '/', '-', '\\'];

impl Waiting {
    pub fn new(what: impl Into<String>) -> Waiting {
        Waiting {
            what: what.into(),
            started: Instant::now(),
            tick: 0,
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// One tick, `state` the resource's state now.
    pub fn tick(&mut self, state: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let frame = FRAMES[self.tick % FRAMES.len()];
            let _ = write!(
                err,
                "\r{frame} {} ({}s, {})\x1b[K",
                self.what,
                self.started.elapsed().as_secs(),
                paint(Stream::Stderr, state_code(state), state)
            );
        } else if self.shown {
            let _ = write!(err, ".");
        } else {
            let _ = write!(err, "{} .", self.what);
        }
        let _ = err.flush();
        self.tick += 1;
        self.shown = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.shown {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K");
        } else {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_flag_turns_colour_off() {
        assert!(disabled_by(["atoll".into(), "--no-color".into()]));
    }

    #[test]
    fn states_have_colours() {
        assert_eq!(state_code("started"), "32");
        assert_eq!(state_code("build_failed"), "31");
        assert_eq!(state_code("stopped"), "");
        assert_eq!(state_code("pulling_snapshot"), "33");
    }
}
