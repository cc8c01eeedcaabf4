//! `dpkg-deb` and `dpkg-split` as dpkg calls them while it installs a package, run natively.
//!
//! In a bootstrap for another architecture every program in the target runs under
//! qemu-user. For each package dpkg runs `dpkg-split -Qao` (is it a split part?),
//! `dpkg-deb --control` (which runs `tar`) and `dpkg-deb --fsys-tarfile`, so the package is
//! decompressed by emulated code and four emulated programs start. imagebuild puts this
//! binary, statically linked for the host, in the target's /usr/sbin for the bootstrap only
//! (dpkg finds it there before /usr/bin on PATH) and removes it again.
//!
//! It does exactly those three things and hands everything else, unchanged, to the
//! target's own program: other options, split parts, old-format or bzip2/lzma packages,
//! and control archives holding anything but root-owned regular files. Its output is the
//! output of the real programs: the same bytes of the data archive on stdout; the control
//! files with the archive's modes, owners and times, as `tar -x` run as root makes them.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let args: Vec<OsString> = args.collect();
    let name = Path::new(&argv0)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or_default()
        .to_string();
    let done = match (name.as_str(), args.as_slice()) {
        ("dpkg-deb", [op, deb]) if op == "--fsys-tarfile" => fsys_tarfile(Path::new(deb)),
        ("dpkg-deb", [op, deb, dir]) if op == "--control" => {
            control(Path::new(deb), Path::new(dir))
        }
        ("dpkg-split", [op, _, deb]) if op == "-Qao" => {
            return match is_whole_deb(Path::new(deb)) {
                // "not a part": what `dpkg-split -Qao` says of an ordinary package.
                Ok(true) => ExitCode::from(1),
                _ => real(&name, &args),
            };
        }
        _ => Ok(Done::No),
    };
    match done {
        Ok(Done::Yes) => ExitCode::SUCCESS,
        Ok(Done::No) => real(&name, &args),
        Err(e) => {
            eprintln!("{name} (imagebuild's native backend): error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Whether the request was carried out, or is left to the target's program.
enum Done {
    Yes,
    No,
}

/// Runs the target's own program (under emulation) with the same arguments: the one in
/// /usr/bin, or in $DPKG_BACKEND_REAL_DIR (for tests).
fn real(name: &str, args: &[OsString]) -> ExitCode {
    let dir = std::env::var_os("DPKG_BACKEND_REAL_DIR").unwrap_or_else(|| "/usr/bin".into());
    let path = Path::new(&dir).join(name);
    let e = Command::new(&path).arg0(name).args(args).exec();
    eprintln!(
        "{name} (imagebuild's native backend): cannot run {}: {e}",
        path.display()
    );
    ExitCode::from(2)
}

const AR_MAGIC: &[u8; 8] = b"!<arch>\n";

/// A member of the .deb's ar archive: its name and where its bytes are.
struct Member {
    name: String,
    offset: u64,
    size: u64,
}

/// The members of a format 2.x .deb up to and including the first whose name starts with
/// `want` ("control.tar" or "data.tar"); None when the file is anything else.
fn find_member(file: &mut File, want: &str) -> io::Result<Option<Member>> {
    let mut magic = [0u8; 8];
    if read_full(file, &mut magic)? != 8 || &magic != AR_MAGIC {
        return Ok(None);
    }
    let mut offset = 8u64;
    let mut first = true;
    loop {
        let mut header = [0u8; 60];
        if read_full(file, &mut header)? != 60 || &header[58..60] != b"`\n" {
            return Ok(None);
        }
        let name = String::from_utf8_lossy(&header[..16]);
        let name = name.trim_end().trim_end_matches('/').to_string();
        let Some(size) = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            return Ok(None);
        };
        offset += 60;
        if first {
            // "debian-binary" holding "2.x\n"; a split part starts with "debian-split".
            let mut version = [0u8; 2];
            if name != "debian-binary" || size < 2 || read_full(file, &mut version)? != 2 {
                return Ok(None);
            }
            if &version != b"2." {
                return Ok(None);
            }
            first = false;
        } else if name.starts_with(want) {
            return Ok(Some(Member { name, offset, size }));
        }
        offset += size + (size & 1);
        file.seek(SeekFrom::Start(offset))?;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The member's bytes, decompressed; None for a compression left to the real program.
fn decoder(mut file: File, member: &Member, stem: &str) -> io::Result<Option<Box<dyn Read>>> {
    file.seek(SeekFrom::Start(member.offset))?;
    let raw = file.take(member.size);
    let reader: Box<dyn Read> = match &member.name[stem.len()..] {
        "" => Box::new(raw),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        ".xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(raw)),
        ".zst" => Box::new(zstd::stream::read::Decoder::new(raw)?),
        _ => return Ok(None),
    };
    Ok(Some(reader))
}

fn open_member(deb: &Path, stem: &str) -> io::Result<Option<Box<dyn Read>>> {
    let mut file = File::open(deb)?;
    match find_member(&mut file, stem)? {
        Some(m) => decoder(file, &m, stem),
        None => Ok(None),
    }
}

/// `dpkg-deb --fsys-tarfile DEB`: the data archive, decompressed, on stdout.
fn fsys_tarfile(deb: &Path) -> io::Result<Done> {
    let Some(mut data) = open_member(deb, "data.tar")? else {
        return Ok(Done::No);
    };
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
    io::copy(&mut data, &mut out)?;
    out.flush()?;
    Ok(Done::Yes)
}

/// `dpkg-deb --control DEB DIR`: the control files extracted into DIR (made if missing).
/// Only as root (dpkg in a bootstrap is, also in a user namespace): tar run by another user
/// keeps neither owners nor modes as they are, and that case is left to dpkg-deb's own tar.
fn control(deb: &Path, dir: &Path) -> io::Result<Done> {
    if !rustix::process::geteuid().is_root() {
        return Ok(Done::No);
    }
    let Some(mut member) = open_member(deb, "control.tar")? else {
        return Ok(Done::No);
    };
    let mut bytes = Vec::new();
    member.read_to_end(&mut bytes)?;
    // Only root-owned regular files (and the archive's "./"): anything else is left to
    // dpkg-deb and its tar.
    for entry in tar::Archive::new(bytes.as_slice()).entries()? {
        let entry = entry?;
        let h = entry.header();
        let path = entry.path()?;
        // "./postinst": one plain name after any "./".
        let mut names = path.components().filter(|c| *c != Component::CurDir);
        let depth = match (names.next(), names.next()) {
            (None, _) => 0,
            (Some(Component::Normal(_)), None) => 1,
            _ => 2,
        };
        let top_dir = h.entry_type().is_dir() && depth == 0;
        let plain_file = h.entry_type().is_file() && depth == 1;
        if !(top_dir || plain_file) || h.uid()? != 0 || h.gid()? != 0 {
            return Ok(Done::No);
        }
    }
    match std::fs::DirBuilder::new().mode(0o777).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let mut archive = tar::Archive::new(bytes.as_slice());
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut top = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            entry.unpack_in(dir)?;
        } else {
            top = Some((entry.header().mode()?, entry.header().mtime()?));
        }
    }
    // Like tar, the directory takes the "./" entry's mode and time last.
    if let Some((mode, mtime)) = top {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7777))?;
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        filetime::set_file_times(dir, t, t)?;
    }
    Ok(Done::Yes)
}

/// Whether DEB is an ordinary (format 2.x) package rather than a part of a split one.
fn is_whole_deb(deb: &Path) -> io::Result<bool> {
    let mut file = File::open(deb)?;
    Ok(find_member(&mut file, "control.tar")?.is_some())
}
