//! Every external command imagebuild runs goes through [`Host::run`] or [`Host::stream`]:
//! the full command line is logged as one shell-quoted line (`+ mke2fs -q ...`), stdin is
//! null, and a failure becomes an error that quotes the tail of stderr.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::error::{Kind, UserError};

/// Lines of stderr quoted in an error.
const TAIL_LINES: usize = 25;

/// Where command lines and tool output are logged.
#[derive(Clone, Default)]
pub struct Host {
    log: Arc<Mutex<Option<File>>>,
    verbose: bool,
}

impl Host {
    pub fn new(verbose: bool) -> Self {
        Self {
            log: Arc::default(),
            verbose,
        }
    }

    /// Sends the log to `path` from now on (the build's `build.log`).
    pub fn log_to(&self, path: &Path) -> Result<()> {
        let f = File::create(path).with_context(|| format!("creating log {}", path.display()))?;
        *self.log.lock().expect("log lock") = Some(f);
        Ok(())
    }

    /// Stops logging to a file and returns nothing; the file is closed.
    pub fn close_log(&self) {
        *self.log.lock().expect("log lock") = None;
    }

    /// Writes one line to the log (and to stderr with `-v`).
    pub fn note(&self, line: &str) {
        if self.verbose {
            crate::say!("{line}");
        }
        if let Some(f) = self.log.lock().expect("log lock").as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Runs `cmd` to completion, returning its output; non-zero exit is an error.
    pub fn run(&self, cmd: &mut Command) -> Result<Output> {
        self.run_with_stdin(cmd.stdin(Stdio::null()))
    }

    /// [`Host::run`] with the stdin the caller set on `cmd` (a file to read from).
    pub fn run_with_stdin(&self, cmd: &mut Command) -> Result<Output> {
        hermetic(cmd);
        let line = command_line(cmd);
        self.note(&format!("+ {line}"));
        let out = cmd.output().map_err(|e| spawn_error(cmd, &e))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        for l in stderr.lines() {
            self.note(&format!("  {l}"));
        }
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().collect();
            let tail = tail[tail.len().saturating_sub(TAIL_LINES)..].join("\n");
            return Err(tool_failed(cmd, &out.status.to_string(), &tail));
        }
        Ok(out)
    }

    /// Runs `cmd`, handing each stderr line to `on_line` as it arrives (for progress);
    /// stdout goes to the log. Non-zero exit is an error quoting stderr's tail.
    pub fn stream(&self, cmd: &mut Command, on_line: &mut dyn FnMut(&str)) -> Result<()> {
        hermetic(cmd);
        let line = command_line(cmd);
        self.note(&format!("+ {line}"));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(cmd, &e))?;
        // OK to unwrap: both were set to piped above.
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = self.clone();
        let out_thread = std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                log.note(&format!("  {l}"));
            }
        });
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            self.note(&format!("  {l}"));
            on_line(&l);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(l);
        }
        let _ = out_thread.join();
        let status = child
            .wait()
            .with_context(|| format!("waiting for {}", program(cmd)))?;
        if !status.success() {
            let tail: Vec<String> = tail.into();
            return Err(tool_failed(cmd, &status.to_string(), &tail.join("\n")));
        }
        Ok(())
    }
}

impl Host {
    /// Starts `cmd` (as built by the caller, stdio included) after logging it; for
    /// long-running programs such as QEMU whose output the caller reads.
    pub fn spawn(&self, cmd: &mut Command) -> Result<std::process::Child> {
        hermetic(cmd);
        self.note(&format!("+ {}", command_line(cmd)));
        cmd.spawn().map_err(|e| spawn_error(cmd, &e))
    }
}

/// The parts of the caller's environment that could reach an image are fixed for every
/// command: the time zone, the locale and the file-creation mask (which the command
/// inherits, see [`pin_umask`]). A variable the caller set on `cmd` is kept.
fn hermetic(cmd: &mut Command) {
    let set: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
    for (k, v) in [("TZ", "UTC"), ("LC_ALL", "C.UTF-8")] {
        if !set.iter().any(|s| s == k) {
            cmd.env(k, v);
        }
    }
    if !set.iter().any(|s| s == "LANGUAGE") {
        cmd.env_remove("LANGUAGE");
    }
}

/// Sets this process's umask to 022, so files imagebuild and the commands it runs create
/// get the same modes whatever the caller's umask is.
pub fn pin_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

fn spawn_error(cmd: &Command, e: &std::io::Error) -> anyhow::Error {
    let prog = program(cmd);
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::Error::new(
            UserError::new(Kind::Tool, format!("`{prog}` is not installed")).hint(
                "run `scripts/host-setup.sh` (or `imagebuild doctor` to see what is missing)",
            ),
        )
    } else {
        anyhow::anyhow!("starting `{prog}`: {e}")
    }
}

fn tool_failed(cmd: &Command, status: &str, tail: &str) -> anyhow::Error {
    let mut msg = format!("`{}` failed ({status})", program(cmd));
    if !tail.trim().is_empty() {
        msg.push_str(":\n");
        for l in tail.lines() {
            msg.push_str("    ");
            msg.push_str(l);
            msg.push('\n');
        }
        msg.pop();
    }
    msg.push_str(&format!("\n  command: {}", command_line(cmd)));
    anyhow::Error::new(UserError::new(Kind::Tool, msg))
}

/// The command as one shell-quoted line, with the environment it sets in front.
pub fn command_line(cmd: &Command) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), quote(v)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    shlex::try_quote(&s).map_or_else(|_| format!("{s:?}"), |q| q.into_owned())
}

/// Finds `name` on PATH or in the sbin directories (which root's PATH may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_shell_quoted_with_env() {
        let mut c = Command::new("mke2fs");
        c.arg("-L").arg("my root").env("E2FSPROGS_FAKE_TIME", "1");
        assert_eq!(
            command_line(&c),
            "E2FSPROGS_FAKE_TIME=1 mke2fs -L 'my root'"
        );
    }

    #[test]
    fn failure_quotes_stderr_and_command() {
        let host = Host::new(false);
        let err = host
            .run(Command::new("sh").args(["-c", "echo first >&2; echo 'the reason' >&2; exit 3"]))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("`sh` failed (exit status: 3)"), "{msg}");
        assert!(msg.contains("the reason"), "{msg}");
        assert!(
            msg.contains("command: LC_ALL=C.UTF-8 TZ=UTC sh -c"),
            "{msg}"
        );
    }

    #[test]
    fn missing_tool_names_the_fix() {
        let err = Host::new(false)
            .run(&mut Command::new("imagebuild-no-such-tool"))
            .unwrap_err();
        assert!(crate::error::hints(&err)[0].contains("host-setup.sh"));
    }

    #[test]
    fn stream_hands_lines_over_and_logs_them() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(false);
        host.log_to(&dir.path().join("log")).unwrap();
        let mut seen = Vec::new();
        host.stream(
            Command::new("sh").args(["-c", "echo a >&2; echo out; echo b >&2"]),
            &mut |l| seen.push(l.to_string()),
        )
        .unwrap();
        host.close_log();
        assert_eq!(seen, ["a", "b"]);
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(log.starts_with("+ LC_ALL=C.UTF-8 TZ=UTC sh -c"), "{log}");
        assert!(log.contains("  out\n"), "{log}");
    }
}
