//! `verify()` end to end with a fake "qemu": a bash script that ignores its arguments (it
//! saves them), prints boot noise and then a health line, a failure, or nothing.

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use imagebuild::verify::{self, Accel, Arch, FailReason, Machine, Outcome, VerifyOptions};
use tempfile::TempDir;

const NOISE: &str = r#"
printf '\033[2J\033[01;01H\033[=3hBdsDxe: loading Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0)\r\n'
printf 'EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path\r\n'
printf '[    0.000000] Linux version 6.12.48+deb13-cloud-amd64\r\n'
printf '[    3.669607] Run /init as init process\r\n'
printf '[    8.746699] systemd[1]: systemd 257.13-1~deb13u1 running in system mode (+PAM)\r\n'
printf '[  \033[0;32mOK\033[0m  ] Reached target \033[0;1;39mmulti-user.target\033[0m - Multi-User System.\r\n'
"#;

const HEALTHY: &str = r#"{"image":"prod","version":"2026.11.1","pending_jobs":[],"failed_units":[],"checks":[{"check":"unit ssh.service","ok":true,"detail":"active"}]}"#;

struct Fake {
    dir: TempDir,
    machine: Machine,
    image: PathBuf,
}

impl Fake {
    /// A machine whose binary runs `body` after saving its arguments to `args`.
    fn new(body: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("qemu");
        let args = dir.path().join("args");
        let text = format!(
            "#!/bin/bash\nprintf '%s\\n' \"$@\" > '{}'\n{NOISE}\n{body}\n",
            args.display()
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        for firmware in ["CODE.fd", "VARS.fd"] {
            std::fs::write(dir.path().join(firmware), firmware).unwrap();
        }
        let image = dir.path().join("disk.raw");
        std::fs::write(&image, b"image bytes").unwrap();
        let mut machine = Machine::builtin(Arch::Amd64);
        machine.binary = script.to_str().unwrap().to_owned();
        machine.firmware_code = vec![dir.path().join("CODE.fd").to_str().unwrap().to_owned()];
        machine.firmware_vars = vec![dir.path().join("VARS.fd").to_str().unwrap().to_owned()];
        Fake {
            dir,
            machine,
            image,
        }
    }

    fn options(&self, timeout_secs: u64) -> VerifyOptions {
        let mut options =
            VerifyOptions::for_machine(&self.machine, self.dir.path().join("logs/console.log"));
        options.timeout = Duration::from_secs(timeout_secs);
        options.accel = Accel::Tcg;
        options
    }

    /// Runs verify; returns the outcome and how long it took.
    fn verify(&self, timeout_secs: u64) -> (Outcome, Duration) {
        self.verify_with(&self.options(timeout_secs))
    }

    fn verify_with(&self, options: &VerifyOptions) -> (Outcome, Duration) {
        let started = Instant::now();
        let runner = |command: &mut Command| -> anyhow::Result<Child> { Ok(command.spawn()?) };
        let outcome = verify::verify(&self.image, &self.machine, options, &runner).unwrap();
        (outcome, started.elapsed())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/console.log")).unwrap()
    }

    fn args(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("args"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn fail_reason(outcome: Outcome) -> (FailReason, String) {
    match outcome {
        Outcome::Fail { reason, log_tail } => (reason, log_tail),
        Outcome::Pass(report, ..) => panic!("passed: {report:?}"),
    }
}

#[test]
fn a_health_line_passes_and_stops_qemu() {
    let fake = Fake::new(&format!(
        "printf '[   17.5] imagebuild-health[412]: IMAGEBUILD-HEALTH {HEALTHY}\\r\\n'\nexec sleep 30"
    ));
    let (outcome, took) = fake.verify(20);
    let Outcome::Pass(report, elapsed, timeline) = outcome.clone() else {
        panic!("{outcome:?}\n{}", fake.log())
    };
    // Every stage of the boot is timed, in order, and the verdict says so.
    let stages: Vec<&str> = timeline.stages().iter().map(|(s, _)| *s).collect();
    assert_eq!(stages, ["firmware", "kernel", "initramfs", "systemd"]);
    assert!(outcome.to_string().contains("(firmware "), "{outcome}");
    assert_eq!(
        (report.image.as_str(), report.version.as_str()),
        ("prod", "2026.11.1")
    );
    assert!(
        elapsed < Duration::from_secs(5) && took < Duration::from_secs(5),
        "killed, not waited for"
    );

    let log = fake.log();
    assert!(log.starts_with("# imagebuild verify "), "{log}");
    assert!(log.contains("\nBdsDxe: loading Boot0001"), "{log}");
    assert!(
        log.contains("\n[  OK  ] Reached target multi-user.target - Multi-User System.\n"),
        "{log}"
    );
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
    assert!(log.contains("\n# outcome: pass after "), "{log}");
    assert_eq!(std::fs::read(&fake.image).unwrap(), b"image bytes");
}

#[test]
fn the_command_line_uses_a_vars_copy_and_a_snapshot() {
    let fake = Fake::new(&format!(
        "echo 'IMAGEBUILD-HEALTH {HEALTHY}'\nexec sleep 30"
    ));
    let seen = RefCell::new(Vec::new());
    let runner = |command: &mut Command| -> anyhow::Result<Child> {
        seen.borrow_mut().push(verify::console::shell_line(command));
        Ok(command.spawn()?)
    };
    let outcome = verify::verify(&fake.image, &fake.machine, &fake.options(20), &runner).unwrap();
    assert!(matches!(outcome, Outcome::Pass(..)), "{outcome:?}");
    assert_eq!(seen.borrow().len(), 1, "Accel::Tcg runs no probe");

    let args = fake.args();
    let code = format!(
        "if=pflash,unit=0,format=raw,readonly=on,file={}",
        fake.machine.firmware_code[0]
    );
    assert!(args.contains(&code), "{args:?}");
    let vars = args
        .iter()
        .find_map(|a| a.strip_prefix("if=pflash,unit=1,format=raw,file="))
        .unwrap();
    assert_ne!(
        vars, fake.machine.firmware_vars[0],
        "a copy, not the template"
    );
    assert!(
        !std::path::Path::new(vars).exists(),
        "the copy is removed after the run"
    );
    let disk = format!(
        "if=none,id=disk0,format=raw,snapshot=on,file={}",
        fake.image.display()
    );
    assert!(args.contains(&disk), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["-accel", "tcg"]));
}

#[test]
fn failed_units_and_checks_fail() {
    let units = HEALTHY.replace(r#""failed_units":[]"#, r#""failed_units":["x.service"]"#);
    let fake = Fake::new(&format!("echo 'IMAGEBUILD-HEALTH {units}'\nexec sleep 30"));
    let (reason, tail) = fail_reason(fake.verify(20).0);
    assert_eq!(reason, FailReason::FailedUnits(vec!["x.service".into()]));
    assert!(tail.contains("IMAGEBUILD-HEALTH"), "{tail}");

    let checks = HEALTHY.replace(
        r#""ok":true,"detail":"active""#,
        r#""ok":false,"detail":"inactive""#,
    );
    let fake = Fake::new(&format!("echo 'IMAGEBUILD-HEALTH {checks}'\nexec sleep 30"));
    let (reason, _) = fail_reason(fake.verify(20).0);
    assert_eq!(
        reason,
        FailReason::FailedChecks(vec!["unit ssh.service (inactive)".into()])
    );
}

#[test]
fn a_kernel_panic_fails_with_its_trace_in_the_tail() {
    let fake = Fake::new(
        r#"
echo '[    2.100000] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)'
echo '[    2.100100] CPU: 0 UID: 0 PID: 1 Comm: swapper/0 Not tainted 6.12.48+deb13-cloud-amd64'
echo '[    2.100200] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---'
exec sleep 30"#,
    );
    let (outcome, took) = fake.verify(20);
    let (reason, tail) = fail_reason(outcome);
    assert_eq!(
        reason,
        FailReason::KernelPanic(
            "[    2.100000] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)".into()
        )
    );
    assert!(
        tail.ends_with("---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---"),
        "{tail}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn firmware_that_cannot_start_the_image_fails_at_the_shell_not_the_timeout() {
    // What AAVMF printed for a UKI whose .linux systemd-stub refused.
    let fake = Fake::new(
        r#"
echo 'BdsDxe: starting Boot0001 "UEFI QEMU NVMe Ctrl imagebuild 1" from PciRoot(0x0)/Pci(0x1,0x0)/NVMe(0x1,00-00-00-00-00-00-00-00)'
echo '../src/boot/linux.c:120@linux_exec: Bad kernel image: Unsupported'
echo 'BdsDxe: failed to start Boot0001 "UEFI QEMU NVMe Ctrl imagebuild 1" from PciRoot(0x0)/Pci(0x1,0x0)/NVMe(0x1,00-00-00-00-00-00-00-00): Unsupported'
echo 'UEFI Interactive Shell v2.2'
exec sleep 30"#,
    );
    let (outcome, took) = fake.verify(20);
    let (reason, tail) = fail_reason(outcome);
    assert_eq!(reason, FailReason::NoBootEntryStarted);
    assert!(tail.contains("Bad kernel image: Unsupported"), "{tail}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn a_missing_root_device_fails() {
    let fake = Fake::new(
        "echo 'imagebuild-initramfs: root device PARTUUID=6b1c-02 not found after 30 s'\nexec sleep 30",
    );
    let (reason, _) = fail_reason(fake.verify(20).0);
    assert_eq!(
        reason,
        FailReason::RootNotFound(
            "imagebuild-initramfs: root device PARTUUID=6b1c-02 not found after 30 s".into()
        )
    );
}

#[test]
fn silence_times_out_with_the_log_tail() {
    let fake = Fake::new("printf 'Shell> '\nexec sleep 30");
    let (outcome, took) = fake.verify(2);
    let (reason, tail) = fail_reason(outcome);
    assert_eq!(reason, FailReason::Timeout(Duration::from_secs(2)));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(tail.contains("Reached target multi-user.target"), "{tail}");
    assert!(
        tail.ends_with("Shell> "),
        "the unfinished last line is kept: {tail:?}"
    );
    assert!(
        fake.log()
            .ends_with("# outcome: fail: no health report within 2 s\n"),
        "{}",
        fake.log()
    );
}

#[test]
fn qemu_exiting_early_fails_with_its_message() {
    let fake = Fake::new(
        "echo \"qemu-system-x86_64: -drive if=none: Could not open 'disk.raw'\" >&2\nexit 1",
    );
    let (reason, tail) = fail_reason(fake.verify(20).0);
    let FailReason::QemuExited(status) = reason else {
        panic!("{reason:?}")
    };
    assert_eq!(status.code(), Some(1));
    let message = "[qemu] qemu-system-x86_64: -drive if=none: Could not open 'disk.raw'";
    assert!(
        tail.lines().any(|line| line == message),
        "stderr is in the tail: {tail}"
    );
}

#[test]
fn a_missing_image_is_an_error() {
    let fake = Fake::new("exit 0");
    let runner = |command: &mut Command| -> anyhow::Result<Child> { Ok(command.spawn()?) };
    let missing = fake.dir.path().join("nope.raw");
    let err = verify::verify(&missing, &fake.machine, &fake.options(2), &runner).unwrap_err();
    assert!(
        format!("{err:#}").starts_with(&format!("reading image {}", missing.display())),
        "{err:#}"
    );
}

/// A console that reports an RCU stall, stays silent, and reports it again: the shape of a
/// guest whose timer interrupt stopped under TCG.
const STALL: &str = r#"
printf '[   23.465441] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\r\n'
printf '[   23.475184] RIP: 0010:pv_native_safe_halt+0xf/0x20\r\n'
sleep 1.5
printf '[   86.489110] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\r\n'
exec sleep 30"#;

impl Fake {
    /// verify with a one-second stall silence, so a stuck boot is seen in seconds.
    fn verify_with_short_stalls(&self) -> (Outcome, Duration) {
        let mut options = self.options(20);
        options.stall_silence = Duration::from_secs(1);
        self.verify_with(&options)
    }
}

#[test]
fn a_stalled_guest_under_tcg_is_booted_once_more_and_the_verdict_says_so() {
    // The first boot stalls; the second (the counter file exists by then) is healthy.
    let fake = Fake::new(&format!(
        "boots=\"$(dirname \"$0\")/boots\"\nif [ ! -e \"$boots\" ]; then touch \"$boots\"\n{STALL}\nfi\n\
         echo 'IMAGEBUILD-HEALTH {HEALTHY}'\nexec sleep 30"
    ));
    let (outcome, took) = fake.verify_with_short_stalls();
    let Outcome::Pass(_, _, timeline) = &outcome else {
        panic!("{outcome:?}\n{}", fake.log())
    };
    assert!(
        matches!(&timeline.retried_after, Some(FailReason::GuestStalled(l)) if l.contains("86.489110")),
        "{timeline:?}"
    );
    assert!(
        outcome
            .to_string()
            .contains("booted twice, the first boot failed: the guest stopped making progress"),
        "{outcome}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let log = fake.log();
    assert!(
        log.contains("\n# booting again: the first boot failed: "),
        "{log}"
    );
    assert_eq!(log.matches("# imagebuild verify ").count(), 2, "{log}");
}

#[test]
fn a_guest_that_stalls_twice_fails_with_the_reason_not_the_timeout() {
    let fake = Fake::new(STALL);
    let (outcome, took) = fake.verify_with_short_stalls();
    let (reason, tail) = fail_reason(outcome);
    assert!(matches!(reason, FailReason::GuestStalled(_)), "{reason:?}");
    assert!(tail.contains("rcu_preempt detected stalls"), "{tail}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}, the timeout is 20 s"
    );
}
