//! The guest's console as QEMU prints it: read line by line on threads, cleaned of escape
//! sequences, written to the run's log, and searched for the lines that decide a run.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::FailReason;
use super::health::{self, HealthReport};

/// Longer console lines are split; a guest printing without newlines cannot exhaust memory.
const LINE_MAX: u64 = 64 * 1024;
/// How many lines [`ConsoleLog::tail`] keeps.
const TAIL_LINES: usize = 30;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// QEMU's stdout: the guest's serial console.
    Console,
    /// QEMU's stderr: QEMU's own messages.
    Qemu,
}

/// What the reader threads send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A cleaned line (or, with [`Framing::Chunks`], a cleaned chunk; possibly empty).
    Line(Source, String),
    /// The stream ended: QEMU exited or closed it.
    Closed(Source),
}

/// How stdout is cut into [`Event::Line`]s; stderr is always read by lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Lines,
    /// Whatever each read returns, so that output without a newline is seen at once.
    Chunks,
}

/// Starts one thread per stream of `child`. If stdout and stderr are not both piped, the
/// child is stopped (it must not run unwatched) and this fails.
pub fn spawn_readers(child: &mut Child, framing: Framing) -> Result<Receiver<Event>> {
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        stop(child)?;
        bail!("qemu's stdout and stderr are not both piped");
    };
    let (sender, receiver) = mpsc::channel();
    let console = sender.clone();
    match framing {
        Framing::Lines => thread::spawn(move || read_lines(stdout, Source::Console, &console)),
        Framing::Chunks => thread::spawn(move || read_chunks(stdout, &console)),
    };
    thread::spawn(move || read_lines(stderr, Source::Qemu, &sender));
    Ok(receiver)
}

fn read_lines(stream: impl Read, source: Source, events: &Sender<Event>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(LINE_MAX).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if events.send(Event::Line(source, clean(&line))).is_err() {
                    return;
                }
            }
        }
    }
    // A send error means nobody listens any more; there is nothing left to tell.
    let _ = events.send(Event::Closed(source));
}

fn read_chunks(mut stream: impl Read, events: &Sender<Event>) {
    let mut buffer = [0; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buffer) {
        if events
            .send(Event::Line(Source::Console, clean(&buffer[..n])))
            .is_err()
        {
            return;
        }
    }
    // A send error means nobody listens any more; there is nothing left to tell.
    let _ = events.send(Event::Closed(Source::Console));
}

/// The next event, or None once `deadline` has passed (or both streams are closed).
pub fn next_event(events: &Receiver<Event>, deadline: Instant) -> Option<Event> {
    events
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// Kills QEMU (if it still runs) and reaps it.
pub fn stop(child: &mut Child) -> Result<ExitStatus> {
    // An error here means the process has already exited; wait() reaps it either way.
    let _ = child.kill();
    child.wait().context("waiting for qemu to exit")
}

/// Console bytes as text: escape sequences (ANSI/VT100, as firmware and systemd print them),
/// carriage returns and other control characters removed, tabs kept, invalid UTF-8 replaced.
pub fn clean(raw: &[u8]) -> String {
    let mut text = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            0x1b => i = escape_end(raw, i),
            b'\t' => {
                text.push(b'\t');
                i += 1;
            }
            byte => {
                if byte >= 0x20 && byte != 0x7f {
                    text.push(byte);
                }
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The index just after the escape sequence that starts at `start` (an ESC byte).
fn escape_end(raw: &[u8], start: usize) -> usize {
    let after = |i: usize| i.min(raw.len());
    match raw.get(start + 1) {
        // CSI: parameter and intermediate bytes, then one final byte.
        Some(b'[') => {
            let body = raw[start + 2..]
                .iter()
                .take_while(|b| (0x20..=0x3f).contains(*b))
                .count();
            after(start + 2 + body + 1)
        }
        // OSC: up to BEL or ESC \.
        Some(b']') => {
            let rest = &raw[start + 2..];
            match rest.iter().position(|&b| b == 0x07 || b == 0x1b) {
                Some(end) if rest[end] == 0x1b => after(start + 2 + end + 2),
                Some(end) => start + 2 + end + 1,
                None => raw.len(),
            }
        }
        // Character set designation: ESC ( B and friends.
        Some(b'(' | b')' | b'*' | b'+') => after(start + 3),
        Some(_) => start + 2,
        None => raw.len(),
    }
}

/// A line that decides a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sign {
    Health(HealthReport),
    Failure(FailReason),
}

/// Recognises the health line, the firmware giving up on the image, a kernel panic, the
/// initramfs not finding the root device and QEMU reporting a KVM failure.
pub fn recognise(source: Source, line: &str) -> Option<Sign> {
    match source {
        Source::Console => recognise_console(line),
        Source::Qemu => {
            is_accel_error(line).then(|| Sign::Failure(FailReason::AccelError(line.to_owned())))
        }
    }
}

fn recognise_console(line: &str) -> Option<Sign> {
    if let Some(report) = health::parse_health_line(line) {
        return Some(Sign::Health(report));
    }
    // EDK II's shell starts only once every boot option has failed.
    if line.contains("UEFI Interactive Shell") {
        return Some(Sign::Failure(FailReason::NoBootEntryStarted));
    }
    if line.contains("Kernel panic - not syncing") {
        return Some(Sign::Failure(FailReason::KernelPanic(line.to_owned())));
    }
    let root_not_found = line.contains("imagebuild-initramfs")
        && line.contains("root device")
        && line.contains("not found");
    root_not_found.then(|| Sign::Failure(FailReason::RootNotFound(line.to_owned())))
}

/// How long the console must have been silent before a second RCU stall report for the
/// guest to count as stuck. Stall reports repeat every 21-63 s; a guest that is only slow
/// (a starved vCPU) keeps printing in between.
pub const STALL_SILENCE: Duration = Duration::from_secs(15);

/// Tells a stuck guest from a slow one by the kernel's RCU stall reports. Seen under TCG:
/// after "Run /init" one vCPU's timer interrupt never came again; both vCPUs idled, and the
/// console held nothing but a stall report every 21-63 s until the timeout.
#[derive(Debug)]
pub struct StallWatch {
    silence: Duration,
    reports: u32,
    last_line: Duration,
}

impl StallWatch {
    pub fn new(silence: Duration) -> StallWatch {
        StallWatch {
            silence,
            reports: 0,
            last_line: Duration::ZERO,
        }
    }

    /// Takes each console line with the time it arrived; a failure once a stall report
    /// follows an earlier one after at least `silence` without any console output.
    pub fn line(&mut self, line: &str, at: Duration) -> Option<FailReason> {
        let quiet = at.saturating_sub(self.last_line);
        self.last_line = at;
        if !is_rcu_stall_report(line) {
            return None;
        }
        self.reports += 1;
        (self.reports > 1 && quiet >= self.silence)
            .then(|| FailReason::GuestStalled(line.trim().to_owned()))
    }
}

/// The first line of the kernel's RCU stall report ("rcu: INFO: rcu_preempt detected
/// stalls on CPUs/tasks:", "rcu: INFO: rcu_sched self-detected stall on CPU").
fn is_rcu_stall_report(line: &str) -> bool {
    line.contains("rcu: INFO: rcu_") && line.contains(" stall")
}

/// The boot stage a console line ends (see [`super::Timeline`]), if it marks one.
pub fn milestone(line: &str) -> Option<&'static str> {
    if line.starts_with("EFI stub: ") {
        Some("firmware")
    } else if line.contains("] Run /init as init process") {
        Some("kernel")
    } else if line.contains("systemd[1]: systemd ") && line.contains(" running in system mode") {
        Some("initramfs")
    } else {
        None
    }
}

/// QEMU's message when KVM cannot run the guest (it then stops the guest and stays silent).
pub fn is_accel_error(line: &str) -> bool {
    line.contains("KVM internal error") || line.contains("kvm run failed")
}

/// The log of one run: every console line and QEMU message as it arrives, plus notes.
/// Console lines are written as they are, QEMU's messages with `[qemu] `, notes with `# `.
pub struct ConsoleLog {
    file: File,
    tail: VecDeque<String>,
    echo: bool,
}

impl ConsoleLog {
    /// Creates (or truncates) the log; with `echo`, lines are also written to stderr.
    pub fn create(path: &Path, echo: bool) -> Result<ConsoleLog> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating log directory {}", parent.display()))?;
        }
        let file =
            File::create(path).with_context(|| format!("creating log {}", path.display()))?;
        Ok(ConsoleLog {
            file,
            tail: VecDeque::new(),
            echo,
        })
    }

    /// Records a line from QEMU; empty lines are skipped.
    pub fn record(&mut self, source: Source, line: &str) -> Result<()> {
        if line.trim().is_empty() {
            return Ok(());
        }
        let line = match source {
            Source::Console => line.to_owned(),
            Source::Qemu => format!("[qemu] {line}"),
        };
        self.write(&line)?;
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
        Ok(())
    }

    /// Writes a note (not part of the tail).
    pub fn note(&mut self, text: &str) -> Result<()> {
        self.write(&format!("# {text}"))
    }

    /// Notes the command line, shell-quoted.
    pub fn note_command(&mut self, command: &Command) -> Result<()> {
        self.note(&format!("+ {}", shell_line(command)))
    }

    /// The last lines recorded, oldest first.
    pub fn tail(&self) -> String {
        self.tail
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn write(&mut self, line: &str) -> Result<()> {
        if self.echo {
            crate::say!("{line}");
        }
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .context("writing the console log")
    }
}

/// Records what is still on its way (QEMU's last words) for at most `grace`.
pub fn drain(events: &Receiver<Event>, log: &mut ConsoleLog, grace: Duration) -> Result<()> {
    let deadline = Instant::now() + grace;
    while let Some(event) = next_event(events, deadline) {
        if let Event::Line(source, line) = event {
            log.record(source, &line)?;
        }
    }
    Ok(())
}

/// `command` as one shell-quoted line.
pub fn shell_line(command: &Command) -> String {
    let words: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy().into_owned())
        .collect();
    shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_escape_sequences_and_carriage_returns() {
        let raw = b"\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001\r\n";
        assert_eq!(clean(raw), "BdsDxe: loading Boot0001");
        let raw =
            b"\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m.\r\n";
        assert_eq!(clean(raw), "  OK  ] Reached target multi-user.target.");
        assert_eq!(clean(b"\x1b]0;title\x07a\x1b(Bb\tc\x08\x1b"), "ab\tc");
        assert_eq!(clean(b"caf\xc3\xa9 \xff"), "caf\u{e9} \u{fffd}");
    }

    #[test]
    fn recognises_failures_and_the_health_line() {
        let panic = "[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs";
        assert_eq!(
            recognise(Source::Console, panic),
            Some(Sign::Failure(FailReason::KernelPanic(panic.into())))
        );
        let root = "imagebuild-initramfs: root device PARTUUID=1234 not found after 30 s";
        assert_eq!(
            recognise(Source::Console, root),
            Some(Sign::Failure(FailReason::RootNotFound(root.into())))
        );
        let kvm = "KVM internal error. Suberror: 1";
        assert_eq!(
            recognise(Source::Qemu, kvm),
            Some(Sign::Failure(FailReason::AccelError(kvm.into())))
        );
        assert_eq!(
            recognise(Source::Console, kvm),
            None,
            "only QEMU's own messages"
        );
        let health = r#"IMAGEBUILD-HEALTH {"image":"a","version":"1","pending_jobs":[],"failed_units":[],"checks":[]}"#;
        assert!(matches!(
            recognise(Source::Console, health),
            Some(Sign::Health(_))
        ));
        assert_eq!(recognise(Source::Qemu, health), None);
        assert_eq!(recognise(Source::Console, "root device found"), None);
        assert_eq!(
            recognise(Source::Console, "UEFI Interactive Shell v2.2"),
            Some(Sign::Failure(FailReason::NoBootEntryStarted))
        );
    }

    #[test]
    fn log_keeps_the_last_lines_and_skips_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/run.log");
        let mut log = ConsoleLog::create(&path, false).unwrap();
        log.note("start").unwrap();
        for i in 0..40 {
            log.record(Source::Console, &format!("line {i}")).unwrap();
            log.record(Source::Console, "").unwrap();
        }
        log.record(Source::Qemu, "bye").unwrap();
        let tail = log.tail();
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(
            tail.starts_with("line 11\n") && tail.ends_with("line 39\n[qemu] bye"),
            "{tail}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 42);
        assert!(text.starts_with("# start\nline 0\n"));
    }

    #[test]
    fn shell_line_quotes_arguments() {
        let mut command = Command::new("qemu-system-x86_64");
        command.args(["-drive", "file=/tmp/a b.raw", "-m", "1024"]);
        assert_eq!(
            shell_line(&command),
            "qemu-system-x86_64 -drive 'file=/tmp/a b.raw' -m 1024"
        );
    }

    /// Feeds `(seconds, line)` pairs; the first failure and the second it came at.
    fn first_stall(lines: &[(f64, &str)]) -> Option<(f64, FailReason)> {
        let mut watch = StallWatch::new(STALL_SILENCE);
        lines.iter().find_map(|(at, line)| {
            watch
                .line(line, Duration::from_secs_f64(*at))
                .map(|r| (*at, r))
        })
    }

    const REPORT: &str = "[   23.465441] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:";

    #[test]
    fn a_guest_that_only_reports_stalls_is_stuck() {
        // The shape of the stuck boot's console: a report and its dump, then silence
        // until the next report.
        let stuck = [
            (5.3, "[    5.253982] Run /init as init process"),
            (23.5, REPORT),
            (23.6, "[   23.467915] Sending NMI from CPU 1 to CPUs 0:"),
            (
                23.7,
                "[   23.475184] RIP: 0010:pv_native_safe_halt+0xf/0x20",
            ),
            (
                86.5,
                "[   86.489110] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            ),
        ];
        let (at, reason) = first_stall(&stuck).expect("stuck");
        assert_eq!(at, 86.5);
        assert!(
            matches!(&reason, FailReason::GuestStalled(l) if l.contains("86.489110")),
            "{reason:?}"
        );
        assert!(reason.to_string().contains("TCG"), "{reason}");
    }

    #[test]
    fn a_slow_guest_that_keeps_printing_is_not_stuck() {
        let slow = [
            (20.0, REPORT),
            (
                21.0,
                "[   21.0] systemd[1]: Started systemd-journald.service",
            ),
            (
                35.0,
                "[  OK  ] Reached target sysinit.target - System Initialization.",
            ),
            (
                41.0,
                "[   41.0] rcu: INFO: rcu_preempt self-detected stall on CPU",
            ),
            (42.0, "IMAGEBUILD-HEALTH {}"),
        ];
        assert_eq!(first_stall(&slow), None);
        // One report alone, however long the silence before it, is not enough either.
        assert_eq!(first_stall(&[(5.0, "x"), (80.0, REPORT)]), None);
    }
}
