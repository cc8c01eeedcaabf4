//! QEMU machines (`qemu/amd64.toml`, `qemu/arm64.toml`), their UEFI firmware, the command
//! line that boots an image on them, and the KVM probe.

use std::ffi::OsString;
use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tempfile::NamedTempFile;

use super::Runner;
use super::console::{self, Event, Framing, Source};
use super::firmware::ReleaseFirmware;

/// How long [`Accel::Auto`] lets the KVM probe run.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Memory for the probe's firmware-only boot.
const PROBE_MEMORY_MIB: u32 = 256;

pub use crate::profile::Arch;

/// The Debian package holding an architecture's UEFI firmware for QEMU.
fn firmware_package(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "ovmf",
        Arch::Arm64 => "qemu-efi-aarch64",
    }
}

/// How the image is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskInterface {
    /// Fastest under TCG; Debian's cloud kernels have the driver built in.
    Nvme,
    /// Needs `virtio_blk` (a module in Debian's cloud kernels) in the initramfs.
    VirtioBlk,
}

/// A QEMU machine for one architecture, as described by `qemu/<arch>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub arch: Arch,
    /// The QEMU binary, looked up in PATH unless it holds a `/`.
    pub binary: String,
    /// `-machine`.
    pub machine: String,
    /// `-cpu` under TCG.
    pub cpu: String,
    /// `-cpu` under KVM.
    pub kvm_cpu: String,
    /// `-smp`.
    pub cpus: u32,
    /// Default `-m`, in MiB.
    pub memory_mib: u32,
    /// Default time a verification may take, in seconds.
    pub timeout_secs: u64,
    /// Firmware code search paths; the first that exists wins. Read-only pflash unit 0.
    pub firmware_code: Vec<String>,
    /// Firmware variable store search paths; each run gets a copy as pflash unit 1.
    pub firmware_vars: Vec<String>,
    /// The kernel console device (`ttyS0`, `ttyAMA0`): the image's command line must name it
    /// last, so that /dev/console, where the health line goes, is this serial port.
    pub console: String,
    pub disk_interface: DiskInterface,
    /// Appended to the command line as they are.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// The firmware package of an image's own Debian release, used before the host's files
    /// (see [`super::firmware`]).
    #[serde(default)]
    pub release_firmware: Option<ReleaseFirmware>,
}

impl Machine {
    /// The machine files shipped with imagebuild (`qemu/*.toml`).
    ///
    /// # Panics
    /// Never: a unit test parses both files.
    pub fn builtin(arch: Arch) -> Machine {
        let text = match arch {
            Arch::Amd64 => include_str!("../../qemu/amd64.toml"),
            Arch::Arm64 => include_str!("../../qemu/arm64.toml"),
        };
        // OK to unwrap: the built-in files are parsed by a unit test.
        Machine::from_toml(text).expect("built-in machine file parses")
    }

    /// Reads a machine file.
    pub fn load(path: &Path) -> Result<Machine> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading machine file {}", path.display()))?;
        Machine::from_toml(&text)
            .with_context(|| format!("parsing machine file {}", path.display()))
    }

    /// Parses and checks a machine description.
    pub fn from_toml(text: &str) -> Result<Machine> {
        let machine: Machine = toml::from_str(text)?;
        machine.validate()?;
        Ok(machine)
    }

    fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("binary", &self.binary),
            ("machine", &self.machine),
            ("cpu", &self.cpu),
            ("kvm_cpu", &self.kvm_cpu),
            ("console", &self.console),
        ] {
            if value.trim().is_empty() {
                bail!("`{key}` must not be empty");
            }
        }
        if self.firmware_code.is_empty() || self.firmware_vars.is_empty() {
            bail!("`firmware_code` and `firmware_vars` need at least one path each");
        }
        if self.cpus == 0 || self.memory_mib < 128 || self.timeout_secs == 0 {
            bail!("`cpus` and `timeout_secs` must be at least 1 and `memory_mib` at least 128");
        }
        if let Some(r) = &self.release_firmware {
            r.validate()?;
        }
        Ok(())
    }

    /// The firmware files that exist on this host.
    pub fn firmware(&self) -> Result<Firmware> {
        let code = self.first_existing("firmware_code", &self.firmware_code)?;
        Ok(Firmware {
            origin: format!("the host's {}", code.display()),
            vars_template: self.first_existing("firmware_vars", &self.firmware_vars)?,
            code,
        })
    }

    fn first_existing(&self, key: &str, paths: &[String]) -> Result<PathBuf> {
        paths
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .with_context(|| {
                format!(
                    "no {} firmware: none of the `{key}` paths exists ({}); install the {} package",
                    self.arch,
                    paths.join(", "),
                    firmware_package(self.arch)
                )
            })
    }

    /// The QEMU command for `launch`; stdio is left to the caller.
    pub fn command(&self, launch: &Launch) -> Command {
        let mut command = Command::new(&self.binary);
        command.args(self.args(launch));
        command
    }

    /// QEMU's arguments for `launch`.
    pub fn args(&self, launch: &Launch) -> Vec<OsString> {
        let (accel, cpu) = match launch.accel {
            Accelerator::Kvm => ("kvm", &self.kvm_cpu),
            Accelerator::Tcg => ("tcg", &self.cpu),
        };
        let serial = match launch.console {
            ConsoleMode::Captured => "stdio",
            ConsoleMode::Terminal => "mon:stdio",
        };
        let mut args: Vec<OsString> = [
            "-machine",
            &self.machine,
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &launch.memory_mib.to_string(),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            serial,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push("-drive".into());
        args.push(qemu_file_option(
            "if=pflash,unit=0,format=raw,readonly=on",
            launch.firmware_code,
        ));
        args.push("-drive".into());
        args.push(qemu_file_option(
            "if=pflash,unit=1,format=raw",
            launch.firmware_vars,
        ));
        args.push("-nic".into());
        args.push(match launch.ssh_port {
            None => "none".into(),
            Some(port) => {
                format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22").into()
            }
        });
        // With more disks, the firmware boots the image first, whatever they hold (a rescue
        // VM's target disk may hold a bootable image too).
        let order = !launch.disks.is_empty();
        if let Some(image) = launch.image {
            let snapshot = !launch.writable;
            args.extend(self.disk_args(0, image, launch.image_format, snapshot, order));
        }
        for (i, disk) in launch.disks.iter().enumerate() {
            args.extend(self.disk_args(i + 1, disk, "raw", false, order));
        }
        for (name, value) in launch.credentials {
            args.push("-smbios".into());
            args.push(format!("type=11,value=io.systemd.credential:{name}={value}").into());
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }

    /// The /dev/disk/by-id/ name udev gives disk `index` (1, 2, ...: the disks after the
    /// image) in the guest.
    pub fn disk_by_id(&self, index: usize) -> String {
        match self.disk_interface {
            DiskInterface::Nvme => {
                format!("/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_imagebuild-disk{index}")
            }
            DiskInterface::VirtioBlk => format!("/dev/disk/by-id/virtio-imagebuild-disk{index}"),
        }
    }

    /// Disk `index` (0: the image, serial `imagebuild`; then `imagebuild-diskN`). With
    /// `snapshot`, the guest's writes go to a temporary overlay and the file never changes.
    fn disk_args(
        &self,
        index: usize,
        file: &Path,
        format: &str,
        snapshot: bool,
        order: bool,
    ) -> Vec<OsString> {
        let id = format!("disk{index}");
        let serial = if index == 0 {
            "imagebuild".to_string()
        } else {
            format!("imagebuild-{id}")
        };
        let mut device = match self.disk_interface {
            DiskInterface::Nvme => format!("nvme,drive={id},serial={serial}"),
            DiskInterface::VirtioBlk => format!("virtio-blk-pci,drive={id},serial={serial}"),
        };
        if order {
            device.push_str(&format!(",bootindex={index}"));
        }
        let snapshot = if snapshot { ",snapshot=on" } else { "" };
        vec![
            "-drive".into(),
            qemu_file_option(&format!("if=none,id={id},format={format}{snapshot}"), file),
            "-device".into(),
            device.into(),
        ]
    }
}

/// `options,file=PATH`, with the commas in PATH doubled as QEMU's option syntax wants.
fn qemu_file_option(options: &str, path: &Path) -> OsString {
    let mut bytes = format!("{options},file=").into_bytes();
    for &byte in path.as_os_str().as_bytes() {
        bytes.push(byte);
        if byte == b',' {
            bytes.push(b',');
        }
    }
    OsString::from_vec(bytes)
}

/// The firmware files a run boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    /// The pristine variable store; runs use a copy ([`Firmware::vars_copy`]).
    pub vars_template: PathBuf,
    /// Where they come from, for logs: `ovmf 2025.02-8 of trixie`, `the host's /usr/...`.
    pub origin: String,
}

impl Firmware {
    /// A private, writable copy of the variable store, deleted when dropped.
    pub fn vars_copy(&self) -> Result<NamedTempFile> {
        let copy = tempfile::Builder::new()
            .prefix("imagebuild-vars-")
            .suffix(".fd")
            .tempfile()
            .context("creating a temporary firmware variable store")?;
        std::fs::copy(&self.vars_template, copy.path()).with_context(|| {
            format!(
                "copying firmware variables {}",
                self.vars_template.display()
            )
        })?;
        Ok(copy)
    }
}

/// Which accelerator to use; `Auto` probes KVM and falls back to TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accel {
    /// `Auto` becomes KVM if [`probe_kvm`] says it works, TCG otherwise; the others are kept.
    pub fn resolve(self, machine: &Machine, firmware: &Firmware, runner: Runner) -> Accelerator {
        let kvm = match self {
            Accel::Kvm => true,
            Accel::Tcg => false,
            Accel::Auto => probe_kvm(machine, firmware, KVM_PROBE_TIMEOUT, runner),
        };
        if kvm {
            Accelerator::Kvm
        } else {
            Accelerator::Tcg
        }
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleMode {
    /// QEMU's stdout, to be read (`-serial stdio`).
    Captured,
    /// The terminal, with QEMU's monitor on Ctrl-A c and quit on Ctrl-A x (`-serial mon:stdio`).
    Terminal,
}

/// What one QEMU run boots, and how.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// None boots the firmware alone.
    pub image: Option<&'a Path>,
    /// QEMU's format of `image`: "raw", or "qcow2" for an overlay.
    pub image_format: &'a str,
    /// SMBIOS type 11 strings `io.systemd.credential:NAME=VALUE`: credentials systemd
    /// imports at boot.
    pub credentials: &'a [(String, String)],
    pub firmware_code: &'a Path,
    /// The run's own copy of the variable store.
    pub firmware_vars: &'a Path,
    pub accel: Accelerator,
    pub memory_mib: u32,
    pub console: ConsoleMode,
    /// Attach `image` writable: the guest's writes reach the file (`imagebuild run
    /// --writable`). Off, `snapshot=on` keeps the file as it is.
    pub writable: bool,
    /// More disks, attached writable after the image, each with the serial
    /// `imagebuild-disk1`, `imagebuild-disk2`, ... (a flash target inside a rescue VM).
    pub disks: &'a [PathBuf],
    /// User networking with the guest's port 22 forwarded from this port on 127.0.0.1.
    /// None: no network at all.
    pub ssh_port: Option<u16>,
}

/// Whether KVM can run `machine` here: the host has the same architecture, /dev/kvm opens,
/// and `firmware`, booted under KVM without a disk, prints on the console within
/// `timeout`. QEMU failing, reporting a KVM error ("KVM internal error": the guest is then
/// stopped and stays silent) or silence until `timeout` all mean no. Opening /dev/kvm is not
/// enough: on some hosts it works and the guest hangs.
pub fn probe_kvm(
    machine: &Machine,
    firmware: &Firmware,
    timeout: Duration,
    runner: Runner,
) -> bool {
    if Arch::host() != Some(machine.arch) || !kvm_device_opens() {
        return false;
    }
    probe_kvm_boot(machine, firmware, timeout, runner).unwrap_or(false)
}

fn kvm_device_opens() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn probe_kvm_boot(
    machine: &Machine,
    firmware: &Firmware,
    timeout: Duration,
    runner: Runner,
) -> Result<bool> {
    let vars = firmware.vars_copy()?;
    let launch = Launch {
        image: None,
        image_format: "raw",
        credentials: &[],
        firmware_code: &firmware.code,
        firmware_vars: vars.path(),
        accel: Accelerator::Kvm,
        memory_mib: PROBE_MEMORY_MIB,
        console: ConsoleMode::Captured,
        writable: false,
        disks: &[],
        ssh_port: None,
    };
    let mut command = machine.command(&launch);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = runner(&mut command).with_context(|| format!("starting {}", machine.binary))?;
    let events = console::spawn_readers(&mut child, Framing::Chunks)?;
    let works = console_speaks(&events, Instant::now() + timeout);
    console::stop(&mut child)?;
    Ok(works)
}

/// Whether the console prints anything before `deadline`, QEMU's KVM error or QEMU's exit.
fn console_speaks(events: &Receiver<Event>, deadline: Instant) -> bool {
    while let Some(event) = console::next_event(events, deadline) {
        match event {
            Event::Line(Source::Console, _) => return true,
            Event::Line(Source::Qemu, line) if console::is_accel_error(&line) => return false,
            Event::Closed(Source::Console) => return false,
            Event::Line(Source::Qemu, _) | Event::Closed(Source::Qemu) => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    /// True if `args` holds `flag` directly followed by `value`.
    fn has_pair(args: &[OsString], flag: &str, value: &str) -> bool {
        args.windows(2)
            .any(|pair| pair[0] == OsStr::new(flag) && pair[1] == OsStr::new(value))
    }

    fn launch<'a>(image: Option<&'a Path>, accel: Accelerator) -> Launch<'a> {
        Launch {
            image,
            image_format: "raw",
            credentials: &[],
            firmware_code: Path::new("/fw/CODE.fd"),
            firmware_vars: Path::new("/tmp/vars,1.fd"),
            accel,
            memory_mib: 2048,
            console: ConsoleMode::Captured,
            writable: false,
            disks: &[],
            ssh_port: None,
        }
    }

    #[test]
    fn builtin_machines_parse() {
        let amd64 = Machine::builtin(Arch::Amd64);
        assert_eq!(
            (amd64.binary.as_str(), amd64.machine.as_str()),
            ("qemu-system-x86_64", "q35")
        );
        assert_eq!(amd64.firmware_code, ["/usr/share/OVMF/OVMF_CODE_4M.fd"]);
        assert_eq!(amd64.firmware_vars, ["/usr/share/OVMF/OVMF_VARS_4M.fd"]);
        assert_eq!(
            (amd64.console.as_str(), amd64.disk_interface),
            ("ttyS0", DiskInterface::Nvme)
        );
        let arm64 = Machine::builtin(Arch::Arm64);
        assert_eq!(
            (arm64.binary.as_str(), arm64.machine.as_str()),
            ("qemu-system-aarch64", "virt,gic-version=3")
        );
        assert_eq!(arm64.cpu, "max,pauth-impdef=on");
        assert_eq!(arm64.firmware_code, ["/usr/share/AAVMF/AAVMF_CODE.fd"]);
        assert_eq!(arm64.console, "ttyAMA0");
    }

    #[test]
    fn machine_files_are_checked() {
        let good = include_str!("../../qemu/amd64.toml");
        let unknown = format!("{good}\nvga = \"std\"\n");
        assert!(
            format!("{:#}", Machine::from_toml(&unknown).unwrap_err())
                .contains("unknown field `vga`")
        );
        let bad_disk = good.replace("\"nvme\"", "\"ide\"");
        assert!(
            format!("{:#}", Machine::from_toml(&bad_disk).unwrap_err())
                .contains("unknown variant `ide`")
        );
        let no_firmware = good.replace("[\"/usr/share/OVMF/OVMF_CODE_4M.fd\"]", "[]");
        assert!(
            Machine::from_toml(&no_firmware)
                .unwrap_err()
                .to_string()
                .contains("firmware_code")
        );
        let virtio = good.replace("\"nvme\"", "\"virtio-blk\"");
        assert_eq!(
            Machine::from_toml(&virtio).unwrap().disk_interface,
            DiskInterface::VirtioBlk
        );
    }

    #[test]
    fn amd64_command_line() {
        let machine = Machine::builtin(Arch::Amd64);
        let args = machine.args(&launch(Some(Path::new("/out/prod.raw")), Accelerator::Tcg));
        for (flag, value) in [
            ("-machine", "q35"),
            ("-accel", "tcg"),
            ("-cpu", "max"),
            ("-smp", "2"),
            ("-m", "2048"),
            ("-serial", "stdio"),
            ("-nic", "none"),
            (
                "-drive",
                "if=pflash,unit=0,format=raw,readonly=on,file=/fw/CODE.fd",
            ),
            ("-drive", "if=pflash,unit=1,format=raw,file=/tmp/vars,,1.fd"),
            (
                "-drive",
                "if=none,id=disk0,format=raw,snapshot=on,file=/out/prod.raw",
            ),
            ("-device", "nvme,drive=disk0,serial=imagebuild"),
            ("-device", "virtio-rng-pci"),
            ("-boot", "menu=on,splash-time=0"),
        ] {
            assert!(has_pair(&args, flag, value), "{flag} {value} in {args:?}");
        }
        assert!(args.iter().any(|a| a == "-no-reboot") && args.iter().any(|a| a == "-nodefaults"));
    }

    #[test]
    fn arm64_command_line_under_kvm_and_tcg() {
        let machine = Machine::builtin(Arch::Arm64);
        let tcg = machine.args(&launch(Some(Path::new("/out/prod.raw")), Accelerator::Tcg));
        assert!(has_pair(&tcg, "-machine", "virt,gic-version=3"));
        assert!(has_pair(&tcg, "-accel", "tcg") && has_pair(&tcg, "-cpu", "max,pauth-impdef=on"));
        // AAVMF waits out its own boot-menu timeout unless QEMU says 0.
        assert!(has_pair(&tcg, "-boot", "menu=on,splash-time=0"));
        assert!(has_pair(
            &tcg,
            "-drive",
            "if=none,id=disk0,format=raw,snapshot=on,file=/out/prod.raw"
        ));
        let kvm = machine.args(&launch(None, Accelerator::Kvm));
        assert!(has_pair(&kvm, "-accel", "kvm") && has_pair(&kvm, "-cpu", "host"));
        assert!(
            !kvm.iter().any(|a| a.to_string_lossy().contains("snapshot")),
            "no disk"
        );
    }

    #[test]
    fn virtio_blk_and_terminal_console() {
        let mut machine = Machine::builtin(Arch::Amd64);
        machine.disk_interface = DiskInterface::VirtioBlk;
        let mut terminal = launch(Some(Path::new("/img")), Accelerator::Tcg);
        terminal.console = ConsoleMode::Terminal;
        let args = machine.args(&terminal);
        assert!(has_pair(
            &args,
            "-device",
            "virtio-blk-pci,drive=disk0,serial=imagebuild"
        ));
        assert!(has_pair(&args, "-serial", "mon:stdio"));
    }

    #[test]
    fn writable_image_more_disks_and_ssh() {
        let machine = Machine::builtin(Arch::Amd64);
        let disks = [PathBuf::from("/tmp/target.raw")];
        let mut l = launch(Some(Path::new("/img")), Accelerator::Tcg);
        l.writable = true;
        l.disks = &disks;
        l.ssh_port = Some(2222);
        let args = machine.args(&l);
        assert!(has_pair(
            &args,
            "-drive",
            "if=none,id=disk0,format=raw,file=/img"
        ));
        assert!(has_pair(
            &args,
            "-drive",
            "if=none,id=disk1,format=raw,file=/tmp/target.raw"
        ));
        assert!(has_pair(
            &args,
            "-device",
            "nvme,drive=disk1,serial=imagebuild-disk1,bootindex=1"
        ));
        assert!(has_pair(
            &args,
            "-device",
            "nvme,drive=disk0,serial=imagebuild,bootindex=0"
        ));
        assert!(has_pair(
            &args,
            "-nic",
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22"
        ));
        assert!(!has_pair(&args, "-nic", "none"));
    }

    #[test]
    fn an_overlay_and_credentials() {
        let machine = Machine::builtin(Arch::Amd64);
        let creds = [(
            "imagebuild.state.data.device".to_string(),
            machine.disk_by_id(1),
        )];
        let mut l = launch(Some(Path::new("/tmp/overlay.qcow2")), Accelerator::Tcg);
        l.image_format = "qcow2";
        l.credentials = &creds;
        let args = machine.args(&l);
        assert!(has_pair(
            &args,
            "-drive",
            "if=none,id=disk0,format=qcow2,snapshot=on,file=/tmp/overlay.qcow2"
        ));
        assert!(has_pair(
            &args,
            "-smbios",
            "type=11,value=io.systemd.credential:imagebuild.state.data.device=/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_imagebuild-disk1"
        ));
    }

    #[test]
    fn missing_firmware_names_the_package() {
        let mut machine = Machine::builtin(Arch::Arm64);
        machine.firmware_code = vec!["/nonexistent/CODE.fd".into()];
        let err = machine.firmware().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/CODE.fd") && err.contains("qemu-efi-aarch64"),
            "{err}"
        );
    }

    #[test]
    fn vars_copy_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("VARS.fd");
        std::fs::write(&template, b"vars").unwrap();
        let firmware = Firmware {
            code: template.clone(),
            vars_template: template.clone(),
            origin: "a test".into(),
        };
        let copy = firmware.vars_copy().unwrap();
        assert_ne!(copy.path(), template);
        assert_eq!(std::fs::read(copy.path()).unwrap(), b"vars");
    }

    /// A machine whose "qemu" is a bash script running `body`, with dummy firmware.
    fn fake_machine(dir: &Path, body: &str) -> Machine {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("qemu");
        std::fs::write(&script, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("fw.fd"), b"firmware").unwrap();
        let mut machine = Machine::builtin(Arch::Amd64);
        machine.binary = script.to_str().unwrap().to_owned();
        machine.firmware_code = vec![dir.join("fw.fd").to_str().unwrap().to_owned()];
        machine.firmware_vars = machine.firmware_code.clone();
        machine
    }

    /// Runs the probe's boot against a fake; returns its answer and how long it took.
    fn probe_fake(body: &str, timeout: Duration) -> (bool, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let machine = fake_machine(dir.path(), body);
        let runner =
            |command: &mut Command| -> Result<std::process::Child> { Ok(command.spawn()?) };
        let started = Instant::now();
        let firmware = machine.firmware().unwrap();
        let works = probe_kvm_boot(&machine, &firmware, timeout, &runner).unwrap();
        (works, started.elapsed())
    }

    #[test]
    fn probe_accepts_console_output_without_a_newline() {
        let (works, took) = probe_fake("printf '\\033[2J'; exec sleep 30", Duration::from_secs(5));
        assert!(works && took < Duration::from_secs(2), "{works} {took:?}");
    }

    #[test]
    fn probe_refuses_a_kvm_error_at_once() {
        let body = "echo 'KVM internal error. Suberror: 1' >&2; exec sleep 30";
        let (works, took) = probe_fake(body, Duration::from_secs(5));
        assert!(!works && took < Duration::from_secs(2), "{works} {took:?}");
    }

    #[test]
    fn probe_refuses_silence_and_exits() {
        let (works, took) = probe_fake("exec sleep 30", Duration::from_secs(1));
        assert!(
            !works && took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let (works, took) = probe_fake("exit 1", Duration::from_secs(5));
        assert!(!works && took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn foreign_architectures_never_use_kvm() {
        let foreign = match Arch::host() {
            Some(Arch::Amd64) => Arch::Arm64,
            _ => Arch::Amd64,
        };
        let runner = |_: &mut Command| -> Result<std::process::Child> { panic!("nothing runs") };
        let firmware = Firmware {
            code: "/nonexistent/CODE.fd".into(),
            vars_template: "/nonexistent/VARS.fd".into(),
            origin: "none".into(),
        };
        assert!(!probe_kvm(
            &Machine::builtin(foreign),
            &firmware,
            KVM_PROBE_TIMEOUT,
            &runner
        ));
    }
}
