//! Boot verification: boot an image in QEMU with UEFI firmware, read its serial console, and
//! judge it by the health line the image prints ([`health`]).
//!
//! Every QEMU process goes through a `runner`: these functions build the [`Command`] (for
//! [`verify`] and the KVM probe: stdin null, stdout and stderr piped) and hand it to the
//! runner, which spawns it. In imagebuild the runner is the one wrapper for external
//! commands that logs each command line; tests pass `|c| Ok(c.spawn()?)`.

pub mod console;
pub mod firmware;
pub mod health;
pub mod image;
pub mod qemu;
pub mod state;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use console::{ConsoleLog, Event, Framing, Sign, Source};
pub use health::{
    Check, CheckKind, CheckResult, GeneratedFile, HealthReport, image_files, parse_health_line,
};
pub use qemu::{Accel, Accelerator, Arch, DiskInterface, KVM_PROBE_TIMEOUT, Machine, probe_kvm};
use qemu::{ConsoleMode, Launch};

/// Spawns a command built here (see the module documentation).
pub type Runner<'a> = &'a dyn Fn(&mut Command) -> Result<Child>;

/// After a failure line, how long to keep reading (a panic's trace follows its first line).
const LINGER: Duration = Duration::from_millis(1500);
/// After QEMU is stopped, how long to wait for its last output.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How to run a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// From starting QEMU to the health line.
    pub timeout: Duration,
    pub accel: Accel,
    pub memory_mib: u32,
    /// The console log, created or truncated by each run.
    pub log_path: PathBuf,
    /// Also show the console on stderr as it arrives (a person is watching).
    pub interactive: bool,
    /// A second kernel RCU stall report after this much console silence means the guest
    /// is stuck (see [`console::StallWatch`]).
    pub stall_silence: Duration,
    /// The firmware to boot; None takes the machine's host files ([`Machine::firmware`]).
    pub firmware: Option<qemu::Firmware>,
    /// Attach the image writable (`run --writable`); verify keeps it untouched.
    pub writable: bool,
    /// More disks, writable, after the image (see [`qemu::Launch::disks`]).
    pub disks: Vec<PathBuf>,
    /// Forward this port on 127.0.0.1 to the guest's ssh (user networking).
    pub ssh_port: Option<u16>,
    /// A qcow2 file backed by the image, booted in its place (snapshot, so the image and
    /// the overlay stay as they are): a disk larger than the image ([`state::Rig`]).
    pub overlay: Option<PathBuf>,
    /// SMBIOS credentials (`io.systemd.credential:NAME=VALUE`) for the guest's systemd.
    pub credentials: Vec<(String, String)>,
    /// QEMU's block driver for the image file: "raw", or "qcow2", "vpc", "vmdk" when a
    /// cloud format is booted as it is.
    pub image_driver: &'static str,
}

impl VerifyOptions {
    /// The machine's defaults: its timeout and memory, `Accel::Auto`, no echo.
    pub fn for_machine(machine: &Machine, log_path: impl Into<PathBuf>) -> VerifyOptions {
        VerifyOptions {
            timeout: Duration::from_secs(machine.timeout_secs),
            accel: Accel::Auto,
            memory_mib: machine.memory_mib,
            log_path: log_path.into(),
            interactive: false,
            stall_silence: console::STALL_SILENCE,
            firmware: None,
            writable: false,
            disks: Vec::new(),
            ssh_port: None,
            overlay: None,
            credentials: Vec::new(),
            image_driver: "raw",
        }
    }
}

/// When a boot passed each milestone, counted from starting QEMU, in the order seen. Each
/// names the stage it ends: `firmware` (the kernel's EFI stub speaks), `kernel` (it runs
/// /init), `initramfs` (systemd starts in the root), `systemd` (the health line).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Timeline {
    marks: Vec<(&'static str, Duration)>,
    /// Why the first boot of this run was given up and the image booted again.
    pub retried_after: Option<FailReason>,
    /// The accelerator of the boot that passed.
    pub accel: Option<Accelerator>,
}

impl Timeline {
    /// Records `stage` as ended at `at` unless it already was.
    pub fn mark(&mut self, stage: &'static str, at: Duration) {
        if !self.marks.iter().any(|(s, _)| *s == stage) {
            self.marks.push((stage, at));
        }
    }

    /// Seconds spent in each stage (from the previous milestone to its own).
    pub fn stages(&self) -> Vec<(&'static str, f64)> {
        let mut last = Duration::ZERO;
        self.marks
            .iter()
            .map(|(stage, at)| {
                let took = at.saturating_sub(last);
                last = *at;
                (*stage, took.as_secs_f64())
            })
            .collect()
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .stages()
            .iter()
            .map(|(stage, secs)| format!("{stage} {secs:.1} s"))
            .collect();
        f.write_str(&parts.join(", "))?;
        if let Some(reason) = &self.retried_after {
            write!(f, "; booted twice, the first boot failed: {reason}")?;
        }
        Ok(())
    }
}

/// The verdict on one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The health line arrived, nothing failed and every check passed; the time is from
    /// starting QEMU to the health line, and the timeline says where it went.
    Pass(HealthReport, Duration, Timeline),
    /// `log_tail` holds the last 30 lines of the console log.
    Fail {
        reason: FailReason,
        log_tail: String,
    },
}

/// Why a boot failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// No health line within the timeout.
    Timeout(Duration),
    /// The console line holding `Kernel panic - not syncing`.
    KernelPanic(String),
    /// The imagebuild initramfs's line saying the root device was not found.
    RootNotFound(String),
    /// QEMU's message saying KVM cannot run the guest (use TCG).
    AccelError(String),
    /// The firmware started no boot entry and fell through to its UEFI shell.
    NoBootEntryStarted,
    /// Units that still had a job when the health script stopped waiting.
    Unsettled(Vec<String>),
    FailedUnits(Vec<String>),
    /// `label (detail)` of each failing check.
    FailedChecks(Vec<String>),
    /// QEMU exited before the health line (the guest powered off or rebooted, or QEMU failed).
    QemuExited(ExitStatus),
    /// The kernel's RCU stall report came again after a silent console: the guest is stuck.
    GuestStalled(String),
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::Timeout(limit) => {
                write!(f, "no health report within {} s", limit.as_secs())
            }
            FailReason::KernelPanic(line) => write!(f, "kernel panic: {line}"),
            FailReason::RootNotFound(line) => write!(f, "root device not found: {line}"),
            FailReason::AccelError(line) => write!(f, "KVM cannot run the guest (try TCG): {line}"),
            FailReason::NoBootEntryStarted => write!(
                f,
                "the firmware could not start the image's EFI binary and fell through to its \
                 UEFI shell (the loader's message is in the console above)"
            ),
            FailReason::Unsettled(units) => write!(f, "units still starting: {}", units.join(", ")),
            FailReason::FailedUnits(units) => write!(f, "failed units: {}", units.join(", ")),
            FailReason::FailedChecks(checks) => write!(f, "failed checks: {}", checks.join(", ")),
            FailReason::QemuExited(status) => {
                write!(f, "qemu exited before the health report ({status})")
            }
            FailReason::GuestStalled(line) => write!(
                f,
                "the guest stopped making progress: the kernel reported an RCU stall again \
                 after a silent console ({line}); under TCG this can be the emulator \
                 losing a timer interrupt, under KVM suspect the kernel or a driver"
            ),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass(_, elapsed, timeline) => {
                write!(f, "pass after {:.1} s ({timeline})", elapsed.as_secs_f64())
            }
            Outcome::Fail { reason, .. } => write!(f, "fail: {reason}"),
        }
    }
}

/// What is wrong with a boot according to its report, or None if it passes: failed units
/// first, then failing checks, then units that never finished starting.
pub fn judge(report: &HealthReport) -> Option<FailReason> {
    let failed_checks: Vec<String> = report
        .checks
        .iter()
        .filter(|check| !check.ok)
        .map(|check| format!("{} ({})", check.check, check.detail))
        .collect();
    if !report.failed_units.is_empty() {
        Some(FailReason::FailedUnits(report.failed_units.clone()))
    } else if !failed_checks.is_empty() {
        Some(FailReason::FailedChecks(failed_checks))
    } else if !report.pending_jobs.is_empty() {
        Some(FailReason::Unsettled(report.pending_jobs.clone()))
    } else {
        None
    }
}

/// Boots `image` on `machine` and judges it by its health line. The image is attached with
/// `snapshot=on` and never changes. The console goes to `opts.log_path` as it arrives; QEMU
/// is killed as soon as the health line or a failure (kernel panic, root device not found,
/// KVM error, a stuck guest) is seen, or at the timeout. A guest stuck under TCG is booted
/// once more, with its own timeout, and a pass then names the first failure. Errors are
/// for what prevents a run (no image, no firmware, QEMU not starting, the log not
/// writable); a bad boot is an [`Outcome::Fail`].
pub fn verify(
    image: &Path,
    machine: &Machine,
    opts: &VerifyOptions,
    runner: Runner,
) -> Result<Outcome> {
    let mut log = ConsoleLog::create(&opts.log_path, opts.interactive)?;
    let first = boot_once(image, machine, opts, runner, &mut log)?;
    // A guest stuck under TCG can be the emulator (a lost timer interrupt: the kernel
    // reports RCU stalls and idles for good) rather than the image: boot it once more and
    // say so. Under KVM, and on any other failure, the first verdict stands.
    let outcome = match first {
        (
            Outcome::Fail {
                reason: reason @ FailReason::GuestStalled(_),
                ..
            },
            Accelerator::Tcg,
        ) => {
            log.note(&format!("booting again: the first boot failed: {reason}"))?;
            match boot_once(image, machine, opts, runner, &mut log)?.0 {
                Outcome::Pass(report, took, mut timeline) => {
                    timeline.retried_after = Some(reason);
                    Outcome::Pass(report, took, timeline)
                }
                fail => fail,
            }
        }
        (outcome, _) => outcome,
    };
    log.note(&format!("outcome: {outcome}"))?;
    Ok(outcome)
}

/// One boot of `image`, recorded in `log`; the outcome and the accelerator it ran on.
fn boot_once(
    image: &Path,
    machine: &Machine,
    opts: &VerifyOptions,
    runner: Runner,
    log: &mut ConsoleLog,
) -> Result<(Outcome, Accelerator)> {
    let (mut command, accel, firmware, _vars) =
        prepare(image, machine, opts, runner, ConsoleMode::Captured)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    log.note(&format!(
        "imagebuild verify {} ({}, {accel}, firmware: {})",
        image.display(),
        machine.arch,
        firmware.origin
    ))?;
    log.note_command(&command)?;

    let started = Instant::now();
    let mut child = runner(&mut command).with_context(|| format!("starting {}", machine.binary))?;
    let events = console::spawn_readers(&mut child, Framing::Lines)?;
    let end = watch(
        &events,
        log,
        started,
        started + opts.timeout,
        opts.stall_silence,
    );
    let status = console::stop(&mut child)?;
    console::drain(&events, log, DRAIN_GRACE)?;
    let mut outcome = end?.outcome(status, opts.timeout, log.tail());
    if let Outcome::Pass(_, _, timeline) = &mut outcome {
        timeline.accel = Some(accel);
    }
    Ok((outcome, accel))
}

/// `imagebuild run`: the same command line as [`verify`] (snapshot disk, same firmware and
/// accelerator choice), but the console is the terminal (stdin, stdout and stderr inherited;
/// Ctrl-A x quits, Ctrl-A c is QEMU's monitor) and nothing is judged. Uses `opts.accel` and
/// `opts.memory_mib`. Returns QEMU's exit status.
pub fn run_interactive(
    image: &Path,
    machine: &Machine,
    opts: &VerifyOptions,
    runner: Runner,
) -> Result<ExitStatus> {
    let (mut command, _accel, _firmware, _vars) =
        prepare(image, machine, opts, runner, ConsoleMode::Terminal)?;
    command
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut child = runner(&mut command).with_context(|| format!("starting {}", machine.binary))?;
    child
        .wait()
        .with_context(|| format!("waiting for {}", machine.binary))
}

/// The QEMU command line for booting `image`, the accelerator chosen, the firmware, and
/// the private firmware variables file (which must live as long as QEMU runs).
fn prepare(
    image: &Path,
    machine: &Machine,
    opts: &VerifyOptions,
    runner: Runner,
    console: ConsoleMode,
) -> Result<(
    Command,
    Accelerator,
    qemu::Firmware,
    tempfile::NamedTempFile,
)> {
    std::fs::metadata(image).with_context(|| format!("reading image {}", image.display()))?;
    let firmware = match &opts.firmware {
        Some(f) => f.clone(),
        None => machine.firmware()?,
    };
    let accel = opts.accel.resolve(machine, &firmware, runner);
    let vars = firmware.vars_copy()?;
    let (image, image_format) = match &opts.overlay {
        Some(overlay) => (overlay.as_path(), "qcow2"),
        None => (image, opts.image_driver),
    };
    let launch = Launch {
        image: Some(image),
        image_format,
        credentials: &opts.credentials,
        firmware_code: &firmware.code,
        firmware_vars: vars.path(),
        accel,
        memory_mib: opts.memory_mib,
        console,
        writable: opts.writable,
        disks: &opts.disks,
        ssh_port: opts.ssh_port,
    };
    Ok((qemu_command(machine, &launch), accel, firmware, vars))
}

/// The QEMU command, run through `setpriv --pdeathsig KILL` (util-linux) where both are
/// found: QEMU is then killed when the imagebuild that started it dies (killed, or a
/// crash). An orphaned guest would keep its disks locked and run on unwatched.
fn qemu_command(machine: &Machine, launch: &Launch) -> Command {
    match (
        crate::host::which("setpriv"),
        crate::host::which(&machine.binary),
    ) {
        (Some(setpriv), Some(qemu)) => {
            let mut command = Command::new(setpriv);
            command
                .args(["--pdeathsig", "KILL", "--"])
                .arg(qemu)
                .args(machine.args(launch));
            command
        }
        _ => machine.command(launch),
    }
}

/// How watching the console ended.
enum End {
    Health(HealthReport, Duration, Timeline),
    Failed(FailReason),
    Exited,
    TimedOut,
}

impl End {
    fn outcome(self, status: ExitStatus, timeout: Duration, log_tail: String) -> Outcome {
        let reason = match self {
            End::Health(report, elapsed, timeline) => match judge(&report) {
                None => return Outcome::Pass(report, elapsed, timeline),
                Some(reason) => reason,
            },
            End::Failed(reason) => reason,
            End::Exited => FailReason::QemuExited(status),
            End::TimedOut => FailReason::Timeout(timeout),
        };
        Outcome::Fail { reason, log_tail }
    }
}

/// Records console lines until one decides the run, QEMU closes its console, or `deadline`.
fn watch(
    events: &Receiver<Event>,
    log: &mut ConsoleLog,
    started: Instant,
    deadline: Instant,
    stall_silence: Duration,
) -> Result<End> {
    let mut timeline = Timeline::default();
    let mut stalls = console::StallWatch::new(stall_silence);
    while let Some(event) = console::next_event(events, deadline) {
        let (source, line) = match event {
            Event::Line(source, line) => (source, line),
            Event::Closed(Source::Console) => return Ok(End::Exited),
            Event::Closed(Source::Qemu) => continue,
        };
        log.record(source, &line)?;
        if source == Source::Console
            && let Some(stage) = console::milestone(&line)
        {
            timeline.mark(stage, started.elapsed());
        }
        if source == Source::Console
            && let Some(reason) = stalls.line(&line, started.elapsed())
        {
            return Ok(End::Failed(reason));
        }
        match console::recognise(source, &line) {
            Some(Sign::Health(report)) => {
                let elapsed = started.elapsed();
                timeline.mark("systemd", elapsed);
                return Ok(End::Health(report, elapsed, timeline));
            }
            Some(Sign::Failure(reason)) => {
                linger(events, log, deadline)?;
                return Ok(End::Failed(reason));
            }
            None => {}
        }
    }
    Ok(End::TimedOut)
}

/// Keeps recording for a moment after a failure line, so the log holds what explains it.
fn linger(events: &Receiver<Event>, log: &mut ConsoleLog, deadline: Instant) -> Result<()> {
    let until = deadline.min(Instant::now() + LINGER);
    while let Some(Event::Line(source, line)) = console::next_event(events, until) {
        log.record(source, &line)?;
        if line.contains("---[ end Kernel panic") {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(failed_units: &[&str], checks: &[(&str, bool)]) -> HealthReport {
        HealthReport {
            image: "prod".into(),
            version: "1".into(),
            hostname: None,
            pending_jobs: Vec::new(),
            failed_units: failed_units.iter().map(|u| (*u).to_owned()).collect(),
            checks: checks
                .iter()
                .map(|(check, ok)| CheckResult {
                    check: (*check).into(),
                    ok: *ok,
                    detail: "seen".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_clean_report_passes() {
        assert_eq!(judge(&report(&[], &[("tcp 22", true)])), None);
    }

    #[test]
    fn failed_units_fail() {
        let reason = judge(&report(&["x.service"], &[("tcp 22", false)]));
        assert_eq!(
            reason,
            Some(FailReason::FailedUnits(vec!["x.service".into()]))
        );
    }

    #[test]
    fn failing_checks_fail() {
        let reason = judge(&report(
            &[],
            &[("tcp 22", true), ("unit ssh.service", false)],
        ));
        assert_eq!(
            reason,
            Some(FailReason::FailedChecks(vec![
                "unit ssh.service (seen)".into()
            ]))
        );
    }

    #[test]
    fn pending_jobs_fail() {
        let mut unsettled = report(&[], &[]);
        unsettled.pending_jobs = vec!["slow.service".into()];
        assert_eq!(
            judge(&unsettled),
            Some(FailReason::Unsettled(vec!["slow.service".into()]))
        );
    }

    #[test]
    fn a_timeline_reads_as_stages() {
        let mut t = Timeline::default();
        t.mark("firmware", Duration::from_millis(6900));
        t.mark("kernel", Duration::from_millis(10600));
        t.mark("kernel", Duration::from_millis(12000));
        t.mark("systemd", Duration::from_millis(40300));
        assert_eq!(
            t.to_string(),
            "firmware 6.9 s, kernel 3.7 s, systemd 29.7 s"
        );
    }

    #[test]
    fn reasons_read_well() {
        let reason = FailReason::FailedUnits(vec!["a.service".into(), "b.service".into()]);
        assert_eq!(reason.to_string(), "failed units: a.service, b.service");
        assert_eq!(
            FailReason::Timeout(Duration::from_secs(2)).to_string(),
            "no health report within 2 s"
        );
    }
}
