//! The UEFI firmware a verification boots. A machine file can name its release's firmware
//! package (`[release_firmware]` in `qemu/<arch>.toml`): then an image of a Debian release
//! boots on that release's own firmware (trixie's `ovmf` for a trixie image), whatever the
//! host runs. The package is fetched once through apt, whose signed indexes vouch for it,
//! from the build's mirror, and its two files are kept in the cache. The host's firmware
//! files are the fallback: for images that are not Debian, and, with a warning, when the
//! package cannot be fetched.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use super::qemu::{Arch, Firmware};
use crate::cache::Cache;
use crate::host::Host;

/// Cache entries live under `<cache>/firmware/`.
const KIND: &str = "firmware";

/// One fetch at a time in this process: two boots of one release share the download.
static FETCH: Mutex<()> = Mutex::new(());

/// A machine file's `[release_firmware]`: the package and the two files in it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFirmware {
    /// The Debian package (`ovmf`, `qemu-efi-aarch64`).
    pub package: String,
    /// The firmware code, as installed by the package (`/usr/share/OVMF/OVMF_CODE_4M.fd`).
    pub code: String,
    /// The pristine variable store, as installed by the package.
    pub vars: String,
}

impl ReleaseFirmware {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.package.is_empty()
                && self
                    .package
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b)),
            "`release_firmware.package` must be a Debian package name, not {:?}",
            self.package
        );
        for (key, path) in [("code", &self.code), ("vars", &self.vars)] {
            ensure!(
                path.starts_with('/') && !path.ends_with('/'),
                "`release_firmware.{key}` must be an absolute file path, not {path:?}"
            );
        }
        Ok(())
    }
}

/// Where a release's firmware comes from.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub cache: &'a Cache,
    /// The Debian mirror (the build's; the host's apt mirror otherwise).
    pub mirror: &'a str,
    /// The release's code name (`trixie`).
    pub release: &'a str,
    pub arch: Arch,
}

/// The firmware of `spec.package` from `origin.release`: from the cache, else fetched.
pub fn release_firmware(host: &Host, spec: &ReleaseFirmware, origin: &Origin) -> Result<Firmware> {
    let _one = FETCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let keys = Keys::new(spec, origin.release);
    if let Some(fw) = cached(host, spec, origin, &keys)? {
        return Ok(fw);
    }
    host.note(&format!(
        "firmware: fetching {} of {} from {}",
        spec.package, origin.release, origin.mirror
    ));
    let work = tempfile::Builder::new()
        .prefix(&crate::leftovers::work_prefix())
        .tempdir_in(ensure_dir(origin.cache.root())?)
        .context("creating a directory to fetch firmware in")?;
    let deb = download(host, &spec.package, origin, work.path())?;
    let version = deb_version(&deb)?;
    let code = work.path().join("code.fd");
    let vars = work.path().join("vars.fd");
    extract(
        &deb,
        &[(spec.code.as_str(), &code), (spec.vars.as_str(), &vars)],
    )
    .with_context(|| format!("unpacking {}", deb.display()))?;
    let keep = |key: &str, file: &Path| {
        origin.cache.put(KIND, key, |tmp| {
            std::fs::rename(file, tmp).with_context(|| format!("moving {}", file.display()))
        })
    };
    let code = keep(&keys.code, &code)?;
    let vars = keep(&keys.vars, &vars)?;
    // Written last: its presence says the two files are complete.
    origin.cache.put(KIND, &keys.version, |tmp| {
        std::fs::write(tmp, format!("{version}\n")).context("writing the firmware version")
    })?;
    Ok(firmware(spec, origin, code.path, vars.path, &version))
}

fn firmware(
    spec: &ReleaseFirmware,
    origin: &Origin,
    code: PathBuf,
    vars: PathBuf,
    version: &str,
) -> Firmware {
    Firmware {
        code,
        vars_template: vars,
        origin: format!("{} {} of {}", spec.package, version.trim(), origin.release),
    }
}

/// The cache keys of one release's firmware files.
struct Keys {
    code: String,
    vars: String,
    version: String,
}

impl Keys {
    fn new(spec: &ReleaseFirmware, release: &str) -> Keys {
        let key = |path: &str| {
            let name = path.rsplit('/').next().unwrap_or(path);
            format!("{release}_{}_{name}", spec.package)
        };
        Keys {
            code: key(&spec.code),
            vars: key(&spec.vars),
            version: format!("{release}_{}.version", spec.package),
        }
    }
}

fn cached(
    host: &Host,
    spec: &ReleaseFirmware,
    origin: &Origin,
    keys: &Keys,
) -> Result<Option<Firmware>> {
    let Some(version) = origin.cache.get(host, KIND, &keys.version)? else {
        return Ok(None);
    };
    let (Some(code), Some(vars)) = (
        origin.cache.get(host, KIND, &keys.code)?,
        origin.cache.get(host, KIND, &keys.vars)?,
    ) else {
        return Ok(None);
    };
    let version = std::fs::read_to_string(&version.path)
        .with_context(|| format!("reading {}", version.path.display()))?;
    Ok(Some(firmware(spec, origin, code.path, vars.path, &version)))
}

fn ensure_dir(dir: &Path) -> Result<&Path> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `apt-get download PACKAGE` from the release, with apt state of its own in `work` (the
/// host's sources, lists and preferences are not used; its keyring and proxy settings are).
fn download(host: &Host, package: &str, origin: &Origin, work: &Path) -> Result<PathBuf> {
    let sources = work.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb {} {} main\n", origin.mirror, origin.release),
    )
    .context("writing a sources list")?;
    for dir in ["lists/partial", "archives/partial"] {
        ensure_dir(&work.join(dir))?;
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.current_dir(work).arg("-q");
        for (k, v) in [
            (
                "Dir::Etc::SourceList",
                sources.to_string_lossy().into_owned(),
            ),
            ("Dir::Etc::SourceParts", "/dev/null".into()),
            ("Dir::Etc::Preferences", "/dev/null".into()),
            ("Dir::Etc::PreferencesParts", "/dev/null".into()),
            (
                "Dir::State::Lists",
                work.join("lists").to_string_lossy().into_owned(),
            ),
            (
                "Dir::Cache::Archives",
                work.join("archives").to_string_lossy().into_owned(),
            ),
            ("Dir::Cache::pkgcache", String::new()),
            ("Dir::Cache::srcpkgcache", String::new()),
            ("APT::Architecture", origin.arch.to_string()),
            ("APT::Architectures", origin.arch.to_string()),
            // The work directory is private to this process; apt's download user could not
            // write to it.
            ("APT::Sandbox::User", "root".into()),
        ] {
            cmd.arg("-o").arg(format!("{k}={v}"));
        }
        cmd.args(args);
        cmd
    };
    host.run(&mut apt(&["update"]))?;
    // apt-get update exits 0 when the mirror cannot be reached; say so here rather than
    // "unable to locate package" later.
    let indexed = std::fs::read_dir(work.join("lists"))
        .with_context(|| format!("reading {}", work.join("lists").display()))?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
    ensure!(
        indexed,
        "apt-get update fetched no package index of {} from {} (see the log for apt's words)",
        origin.release,
        origin.mirror
    );
    host.run(&mut apt(&["download", package]))?;
    let prefix = format!("{package}_");
    let found = std::fs::read_dir(work)
        .with_context(|| format!("reading {}", work.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        });
    found.with_context(|| format!("apt-get download {package} left no {package}_*.deb"))
}

/// The version in a downloaded package's file name (`ovmf_2025.02-8+deb13u1_all.deb`;
/// apt writes an epoch's colon as `%3a`).
fn deb_version(deb: &Path) -> Result<String> {
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let mut parts = name.split('_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(version), Some(_)) => Ok(version.replace("%3a", ":")),
        _ => bail!("{name} is not named PACKAGE_VERSION_ARCH.deb"),
    }
}

/// The package's data archive, decompressed, from the `ar` container of a .deb.
fn data_tar(deb: &Path) -> Result<Box<dyn Read>> {
    let mut f =
        BufReader::new(File::open(deb).with_context(|| format!("opening {}", deb.display()))?);
    let mut magic = [0u8; 8];
    ensure!(
        f.read_exact(&mut magic).is_ok() && &magic == b"!<arch>\n",
        "not a Debian package (no ar header)"
    );
    loop {
        let mut header = [0u8; 60];
        f.read_exact(&mut header)
            .context("the package has no data.tar member")?;
        let name = String::from_utf8_lossy(&header[..16]);
        let name = name.trim_end().trim_end_matches('/').to_string();
        let size: u64 = String::from_utf8_lossy(&header[48..58])
            .trim()
            .parse()
            .with_context(|| format!("bad size of ar member {name}"))?;
        if let Some(compression) = name.strip_prefix("data.tar") {
            let body = f.take(size);
            return Ok(match compression {
                "" => Box::new(body),
                ".xz" => Box::new(xz2::read::XzDecoder::new(body)),
                ".zst" => Box::new(zstd::Decoder::new(body)?),
                ".gz" => Box::new(flate2::read::GzDecoder::new(body)),
                other => bail!("unknown compression of data.tar{other}"),
            });
        }
        // Members are padded to an even length.
        std::io::copy(&mut (&mut f).take(size + size % 2), &mut std::io::sink())
            .with_context(|| format!("skipping ar member {name}"))?;
    }
}

/// Writes each package path in `wanted` to its destination, following symbolic links
/// within the package (`AAVMF_CODE.fd -> AAVMF_CODE.no-secboot.fd`).
fn extract(deb: &Path, wanted: &[(&str, &Path)]) -> Result<()> {
    let mut paths: Vec<PathBuf> = wanted
        .iter()
        .map(|(p, _)| normalize(Path::new(p)))
        .collect();
    let mut done = vec![false; wanted.len()];
    // A link to a file earlier in the archive needs another pass; a chain of links, one each.
    for _pass in 0..4 {
        let mut links: HashMap<usize, PathBuf> = HashMap::new();
        let mut archive = tar::Archive::new(data_tar(deb)?);
        for entry in archive.entries().context("reading data.tar")? {
            let mut entry = entry.context("reading data.tar")?;
            let path = normalize(&entry.path().context("a path in data.tar")?);
            let hits: Vec<usize> = (0..wanted.len())
                .filter(|&i| !done[i] && paths[i] == path)
                .collect();
            let Some(&first) = hits.first() else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular => {
                    let dest = wanted[first].1;
                    let mut out = File::create(dest)
                        .with_context(|| format!("creating {}", dest.display()))?;
                    std::io::copy(&mut entry, &mut out)
                        .with_context(|| format!("writing {}", dest.display()))?;
                    for &i in &hits {
                        if i != first {
                            std::fs::copy(dest, wanted[i].1)
                                .with_context(|| format!("writing {}", wanted[i].1.display()))?;
                        }
                        done[i] = true;
                    }
                    done[first] = true;
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .context("a link in data.tar")?
                        .context("a link without a target")?;
                    let resolved = if target.is_absolute() {
                        normalize(&target)
                    } else {
                        normalize(&path.parent().unwrap_or(Path::new("")).join(target))
                    };
                    for &i in &hits {
                        links.insert(i, resolved.clone());
                    }
                }
                other => bail!(
                    "{} is a {other:?} in the package, not a file",
                    path.display()
                ),
            }
        }
        if done.iter().all(|d| *d) {
            return Ok(());
        }
        if links.is_empty() {
            let missing: Vec<_> = (0..wanted.len())
                .filter(|&i| !done[i])
                .map(|i| wanted[i].0)
                .collect();
            bail!("the package has no {}", missing.join(", "));
        }
        for (i, target) in links {
            paths[i] = target;
        }
    }
    bail!("a chain of more than three symbolic links in the package")
}

/// A path inside a package, without the leading `./` or `/`, with `.` and `..` resolved.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A .deb (ar container, data.tar.xz) holding `entries` of a tar built in memory.
    fn deb(dir: &Path, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
        let mut tb = tar::Builder::new(Vec::new());
        build(&mut tb);
        let tar_bytes = tb.into_inner().unwrap();
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&tar_bytes[..], 1)
            .read_to_end(&mut xz)
            .unwrap();
        let mut ar = b"!<arch>\n".to_vec();
        for (name, body) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.xz", b"odd".to_vec()),
            ("data.tar.xz", xz),
        ] {
            ar.extend(
                format!(
                    "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    0,
                    0,
                    0,
                    100_644,
                    body.len()
                )
                .as_bytes(),
            );
            ar.extend(&body);
            if body.len() % 2 == 1 {
                ar.push(b'\n');
            }
        }
        let path = dir.join("fw_1:2.0-1_all.deb");
        std::fs::write(&path, ar).unwrap();
        path
    }

    fn file(tb: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tb.append_data(&mut h, path, body).unwrap();
    }

    fn link(tb: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        tb.append_link(&mut h, path, target).unwrap();
    }

    #[test]
    fn extracts_files_and_follows_links_either_way_round() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = deb(dir.path(), |tb| {
            file(tb, "./usr/share/FW/CODE.real.fd", b"code");
            // A link to a file the archive has already passed, and one to a file after it.
            link(tb, "./usr/share/FW/CODE.fd", "CODE.real.fd");
            link(tb, "./usr/share/FW/VARS.fd", "../FW/sub/VARS.real.fd");
            file(tb, "./usr/share/FW/sub/VARS.real.fd", b"vars");
        });
        let (code, vars) = (dir.path().join("c"), dir.path().join("v"));
        extract(
            &pkg,
            &[
                ("/usr/share/FW/CODE.fd", &code),
                ("/usr/share/FW/VARS.fd", &vars),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read(&code).unwrap(), b"code");
        assert_eq!(std::fs::read(&vars).unwrap(), b"vars");
        assert_eq!(deb_version(&pkg).unwrap(), "1:2.0-1");
        let pkg = pkg.with_file_name("fw_1%3a2.0-1_all.deb");
        assert_eq!(deb_version(&pkg).unwrap(), "1:2.0-1");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = deb(dir.path(), |tb| file(tb, "./usr/share/FW/CODE.fd", b"code"));
        let out = dir.path().join("x");
        let err = extract(
            &pkg,
            &[
                ("/usr/share/FW/CODE.fd", &out),
                ("/usr/share/FW/VARS.fd", &out),
            ],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "the package has no /usr/share/FW/VARS.fd");
        let err = data_tar(&out).err().unwrap();
        assert!(err.to_string().contains("not a Debian package"), "{err:#}");
    }

    #[test]
    fn machine_files_name_a_package_and_absolute_paths() {
        let ok = ReleaseFirmware {
            package: "qemu-efi-aarch64".into(),
            code: "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
            vars: "/usr/share/AAVMF/AAVMF_VARS.fd".into(),
        };
        ok.validate().unwrap();
        let relative = ReleaseFirmware {
            code: "usr/share/AAVMF/AAVMF_CODE.fd".into(),
            ..ok.clone()
        };
        assert!(
            relative
                .validate()
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        let bad = ReleaseFirmware {
            package: "ovmf main".into(),
            ..ok
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn keys_name_release_package_and_file() {
        let spec = ReleaseFirmware {
            package: "ovmf".into(),
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        };
        let k = Keys::new(&spec, "trixie");
        assert_eq!(k.code, "trixie_ovmf_OVMF_CODE_4M.fd");
        assert_eq!(k.vars, "trixie_ovmf_OVMF_VARS_4M.fd");
        assert_eq!(k.version, "trixie_ovmf.version");
    }

    #[test]
    fn the_shipped_machines_name_their_release_packages() {
        for (arch, package) in [(Arch::Amd64, "ovmf"), (Arch::Arm64, "qemu-efi-aarch64")] {
            let spec = super::super::Machine::builtin(arch)
                .release_firmware
                .unwrap();
            assert_eq!(spec.package, package);
        }
    }

    /// Needs apt-get (every Debian host has it); the mirror is a directory that does not
    /// exist (a closed port would cost apt's retries, seconds).
    #[test]
    fn a_failed_fetch_leaves_nothing_and_the_cache_is_used_without_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let spec = ReleaseFirmware {
            package: "ovmf".into(),
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        };
        let origin = Origin {
            cache: &cache,
            mirror: "file:/nonexistent/debian",
            release: "trixie",
            arch: Arch::Amd64,
        };
        let host = Host::new(false);
        let err = release_firmware(&host, &spec, &origin).unwrap_err();
        // The wrapper quotes apt's own words.
        assert!(
            format!("{err:#}").contains("'file:/nonexistent/debian trixie Release' does not have"),
            "{err:#}"
        );
        let left: Vec<_> = std::fs::read_dir(cache.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");

        let keys = Keys::new(&spec, "trixie");
        for (key, body) in [
            (&keys.code, "code"),
            (&keys.vars, "vars"),
            (&keys.version, "2025.02-8\n"),
        ] {
            cache
                .put(KIND, key, |p| Ok(std::fs::write(p, body)?))
                .unwrap();
        }
        let fw = release_firmware(&host, &spec, &origin).unwrap();
        assert_eq!(std::fs::read(&fw.code).unwrap(), b"code");
        assert_eq!(std::fs::read(&fw.vars_template).unwrap(), b"vars");
        assert_eq!(fw.origin, "ovmf 2025.02-8 of trixie");
    }
}
