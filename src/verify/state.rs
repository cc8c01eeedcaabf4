//! What a boot of an image with `[[state]]` needs to pass as it would on a server: room on
//! the OS disk for the state partitions systemd-repart makes on first boot, and a blank disk
//! for each state on a device of its own. The image file itself never changes: the OS disk
//! is a qcow2 overlay backed by the image, with a virtual size that leaves the room, booted
//! with `snapshot=on`; each device state gets a sparse file attached after the image, named
//! to the guest by the credential `imagebuild.state.LABEL.device` (which the image's state
//! script takes in place of the profile's glob, as on a machine `flash --credential` set
//! it for).
//!
//! A boot the user describes (`--writable`: the image file is the disk; `--disk`: the user's
//! own disks) gets nothing added: it boots what it was given.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{Machine, VerifyOptions};
use crate::host::Host;
use crate::size::MIB;

/// Where the image records its states.
pub use crate::tree::state::STATE_JSON;

/// Room left on the OS disk besides the states' sizes: partition alignment and the backup
/// GPT.
const SLACK: u64 = 64 * MIB;

/// Size of the blank disk given to a state on a device of its own (sparse: only what
/// mkfs.ext4 writes takes space).
const BLANK_DEVICE: u64 = 512 * MIB;

/// One `[[state]]` as the image records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageState {
    pub label: String,
    /// The device glob; None: a partition on the OS disk.
    pub device: Option<String>,
    /// Bytes of the partition on the OS disk.
    pub size: Option<u64>,
}

#[derive(Deserialize)]
struct StateJson {
    states: Vec<ImageState>,
}

/// The states `image` declares; none for an image without state.json (built before
/// `[[state]]` existed).
pub fn image_states(image: &Path) -> Result<Vec<ImageState>> {
    let fs = crate::inspect::Image::open(image)?.root()?;
    if !fs.exists(STATE_JSON)? {
        return Ok(Vec::new());
    }
    let json: StateJson = serde_json::from_slice(&fs.read(STATE_JSON)?)
        .with_context(|| format!("reading {STATE_JSON} in {}", image.display()))?;
    Ok(json.states)
}

/// The files a boot uses in place of, or besides, the image; deleted when dropped.
pub struct Rig {
    _dir: tempfile::TempDir,
    /// What was added, for the console log: "a 1.2 GiB disk for srv-data", ...
    pub notes: Vec<String>,
}

/// Sets up `opts` for the states of `image` (see the module's text); None when the image
/// has no state or the boot is the user's own (`opts.writable` or `opts.disks`).
/// `view` is the image as raw bytes (itself, or a raw copy of a cloud format).
pub fn rig(
    host: &Host,
    image: &Path,
    view: &Path,
    machine: &Machine,
    opts: &mut VerifyOptions,
) -> Result<Option<Rig>> {
    if opts.writable || !opts.disks.is_empty() {
        return Ok(None);
    }
    let states = image_states(view)?;
    if states.is_empty() {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("imagebuild-verify-")
        .tempdir()
        .context("making a directory for the boot's disks")?;
    let mut notes = Vec::new();
    let room: u64 = states.iter().filter_map(|s| s.size).sum();
    if states.iter().any(|s| s.device.is_none()) {
        let len = std::fs::metadata(view)
            .with_context(|| format!("reading image {}", view.display()))?
            .len();
        let size = (len + room + SLACK).div_ceil(MIB) * MIB;
        let overlay = dir.path().join("os-disk.qcow2");
        let backing = std::path::absolute(image)?;
        host.run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", opts.image_driver, "-b"])
                .arg(&backing)
                .arg(&overlay)
                .arg(size.to_string()),
        )?;
        notes.push(format!(
            "the OS disk is {} MiB (the image and {} MiB for its state partitions)",
            size / MIB,
            room.div_ceil(MIB)
        ));
        opts.overlay = Some(overlay);
    }
    for s in states.iter().filter(|s| s.device.is_some()) {
        let file = dir.path().join(format!("{}.raw", s.label));
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(BLANK_DEVICE))
            .with_context(|| format!("making {}", file.display()))?;
        opts.disks.push(file);
        let by_id = machine.disk_by_id(opts.disks.len());
        notes.push(format!(
            "a blank {} MiB disk for state {} at {by_id}",
            BLANK_DEVICE / MIB,
            s.label
        ));
        opts.credentials
            .push((format!("imagebuild.state.{}.device", s.label), by_id));
    }
    for n in &notes {
        host.note(&format!("verify: {n}"));
    }
    Ok(Some(Rig { _dir: dir, notes }))
}
