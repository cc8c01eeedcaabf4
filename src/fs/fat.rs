//! Reproducible FAT32 EFI system partitions, written with the `fatfs` crate.
//!
//! `fatfs` 0.3.6 leaves three things that `fsck.fat -n` rejects; `write_esp` fixes them:
//! - the FSInfo free-cluster count is left "unknown": we make `fatfs` count the free
//!   clusters right after formatting, so it keeps the number up to date and writes it out;
//! - every subdirectory starts with an LFN entry before `.` and another before `..`, and
//! - `..` of a first-level directory points at the root cluster instead of 0:
//!   after `fatfs` has unmounted, `fix_dot_entries` rewrites each subdirectory so it starts
//!   with `.` and `..` (pointing at 0 for the root), followed by the other entries in order.
//!
//! Everything `fatfs` would pick by itself (cluster size, volume id, geometry, clock) is pinned,
//! so the same inputs always give the same bytes. `put_files` adds files to an ESP made
//! earlier (the credentials `imagebuild flash` writes), with the same fixes and no clock.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail, ensure};

use super::range::FileRange;

/// One file to put on the ESP; `path` uses '/' and no leading slash, e.g. "EFI/BOOT/BOOTX64.EFI".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspFile {
    pub path: String,
    pub data: Vec<u8>,
}

const SECTOR: u64 = 512;
/// FAT32 needs at least 65525 clusters; stay 16 clusters clear of that boundary, as
/// Microsoft's FAT specification recommends, because some implementations are off by a few.
const MIN_CLUSTERS: u64 = 65525 + 16;
/// Most clusters FAT32 can address.
const MAX_CLUSTERS: u64 = 0x0FFF_FFF4;
/// Cluster sizes we use, largest (fewest FAT sectors) first.
const CLUSTER_SIZES: [u64; 4] = [4096, 2048, 1024, 512];
/// `fatfs` formats FAT32 with 8 reserved sectors and (by our choice) 2 FATs.
const RESERVED_SECTORS: u64 = 8;
const FATS: u64 = 2;
/// Smallest region `write_esp` accepts: 66575 sectors (about 32.5 MiB) give exactly
/// `MIN_CLUSTERS` clusters of 512 bytes.
const MIN_ESP_SIZE: u64 = 66575 * SECTOR;

/// 1980-01-01T00:00:00Z and 2107-12-31T23:59:58Z, the range of FAT timestamps.
const FAT_EPOCH_MIN: i64 = 315_532_800;
const FAT_EPOCH_MAX: i64 = 4_354_819_198;

/// Directory entry layout.
const ENTRY: usize = 32;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LFN: u8 = 0x0F;
const DOT: [u8; 11] = *b".          ";
const DOTDOT: [u8; 11] = *b"..         ";
/// Deepest directory nesting we follow; guards against loops in damaged filesystems.
const MAX_DEPTH: usize = 64;

/// Formats `size` bytes at `offset` of `disk` as FAT32 with the given volume id and label,
/// and writes `files` (parent directories created as needed). Every timestamp is `epoch`
/// (unix seconds, clamped to 1980-01-01..2107-12-31). Same inputs => same bytes, always.
///
/// `size` must be a multiple of 512 and at least 34,086,400 bytes (66575 sectors, about
/// 32.5 MiB: 65541 clusters of 512 bytes plus FATs and reserved sectors). The cluster size is the
/// largest of 4, 2, 1 KiB and 512 bytes that still gives a valid FAT32 (e.g. 512 bytes for
/// 64 MiB, 1 KiB for 128 MiB, 2 KiB for 256 MiB). Files are written sorted by path; `label`
/// may be empty or up to 11 characters of A-Z, 0-9, space and `` !#$%&'()-@^_`{}~ ``.
pub fn write_esp(
    disk: &File,
    offset: u64,
    size: u64,
    volume_id: u32,
    label: &str,
    epoch: i64,
    files: &[EspFile],
) -> Result<()> {
    let cluster_size = cluster_size_for(size)?;
    let label = volume_label(label)?;
    let files = sorted_files(files)?;
    let mut region = FileRange::new(disk, offset, size)?;
    zero(disk, offset, size).context("zeroing the ESP region")?;
    format(&mut region, size, cluster_size, volume_id, label)?;
    fill(&mut region, epoch, &files)?;
    fix_dot_entries(&mut region).context("fixing the ESP's . and .. entries")
}

/// Lists the regular files of a FAT filesystem at `offset`/`size` of `disk`, sorted by path,
/// with their contents. Never writes to `disk`.
///
/// fatfs does arithmetic on the filesystem's own numbers unchecked (a cluster number below
/// 2, a cluster count times its size: found by the `fat` fuzz target); those overflows are
/// checked in every build (Cargo.toml) and a panic they raise is this function's error
/// about a damaged FAT, not the end of imagebuild.
pub fn read_esp(disk: &File, offset: u64, size: u64) -> Result<Vec<EspFile>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_esp_unguarded(disk, offset, size)
    }))
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the FAT filesystem is damaged: its numbers overflow (see the message above)"
        ))
    })
}

fn read_esp_unguarded(disk: &File, offset: u64, size: u64) -> Result<Vec<EspFile>> {
    let region = FileRange::read_only(disk, offset, size)?;
    let fs = fatfs::FileSystem::new(region, fatfs::FsOptions::new())
        .context("opening the FAT filesystem")?;
    let mut files = Vec::new();
    let mut budget = Budget {
        bytes: size,
        entries: size / 32,
    };
    read_dir(&fs.root_dir(), "", 0, &mut budget, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// What a FAT of `size` bytes can hold at most: its files' bytes together, and one
/// 32-byte directory entry per 32 bytes. A damaged FAT whose cluster chains loop would
/// otherwise be read without end (the `fat` fuzz target: 23 GB from a 530 KiB input).
struct Budget {
    bytes: u64,
    entries: u64,
}

/// Writes `files` into the FAT filesystem that fills `esp` (one partition's bytes), keeping
/// everything else on it: parent directories are made as needed, a file of the same name
/// (FAT ignores case) is replaced, and one that already holds the same bytes under the same
/// name is left alone. New entries get the modification time of the existing file
/// `stamp_like` (e.g. the UKI, which `write_esp` stamped with the build's epoch), never the
/// clock, so the same filesystem and files always give the same bytes; the `.` and `..`
/// entries of new directories are fixed as `write_esp` fixes them.
pub fn put_files<D: Read + Write + Seek>(
    mut esp: D,
    stamp_like: &str,
    files: &[EspFile],
) -> Result<()> {
    let files = sorted_files(files)?;
    let stamp = modified(&mut esp, stamp_like)?;
    // OK: one small value per call (see `epoch_clock`).
    let clock: &'static EpochClock = Box::leak(Box::new(EpochClock(stamp)));
    let options = fatfs::FsOptions::new()
        .update_accessed_date(false)
        .time_provider(clock);
    let fs = mount(&mut esp, options)?;
    // Makes fatfs keep FSInfo's free count right (it counts when the count is unknown).
    fs.stats().context("counting the free clusters")?;
    let root = fs.root_dir();
    for f in files {
        replace_file(&root, f).with_context(|| format!("writing {} to the ESP", f.path))?;
    }
    drop(root);
    fs.unmount().context("unmounting the ESP")?;
    fix_dot_entries(&mut esp).context("fixing the ESP's . and .. entries")
}

/// A regular file in an ESP directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirFile {
    pub name: String,
    pub size: u64,
}

/// The regular files in directory `dir` of the FAT filesystem in `esp`, in directory
/// order; empty when there is no such directory. Never writes.
pub fn list_dir<D: Read + Write + Seek>(mut esp: D, dir: &str) -> Result<Vec<DirFile>> {
    let fs = mount(&mut esp, fatfs::FsOptions::new())?;
    let root = fs.root_dir();
    let Some(dir) = open_dir(&root, dir)? else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for entry in dir.iter() {
        let entry = entry.context("listing an ESP directory")?;
        if entry.is_file() {
            files.push(DirFile {
                name: entry.file_name(),
                size: entry.len(),
            });
        }
    }
    Ok(files)
}

/// The FAT filesystem in `esp` (fatfs wants the stream at its start).
fn mount<D: Read + Write + Seek>(
    esp: &mut D,
    options: fatfs::FsOptions,
) -> Result<fatfs::FileSystem<&mut D>> {
    esp.seek(SeekFrom::Start(0))?;
    fatfs::FileSystem::new(esp, options).context("opening the FAT filesystem")
}

/// The directory at `path` ("" for the root), or None when a component is missing.
fn open_dir<'a, T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'a, T>,
    path: &str,
) -> Result<Option<fatfs::Dir<'a, T>>> {
    let mut dir = root.clone();
    for component in path.split('/').filter(|c| !c.is_empty()) {
        match find(&dir, component)? {
            Some(e) if e.is_dir() => dir = e.to_dir(),
            _ => return Ok(None),
        }
    }
    Ok(Some(dir))
}

/// The entry of `dir` named `name`, compared as FAT does (ignoring case).
fn find<'a, T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'a, T>,
    name: &str,
) -> Result<Option<fatfs::DirEntry<'a, T>>> {
    for entry in dir.iter() {
        let entry = entry.context("listing an ESP directory")?;
        if entry.file_name().to_uppercase() == name.to_uppercase() {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// The modification time of the file at `path`.
fn modified<D: Read + Write + Seek>(esp: &mut D, path: &str) -> Result<fatfs::DateTime> {
    let fs = mount(esp, fatfs::FsOptions::new())?;
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let root = fs.root_dir();
    let entry = match open_dir(&root, dir)? {
        Some(d) => find(&d, name)?.filter(fatfs::DirEntry::is_file),
        None => None,
    };
    let entry = entry.with_context(|| format!("the ESP has no file {path}"))?;
    Ok(entry.modified())
}

/// Creates `file`'s parent directories, and the file unless it is there with these bytes
/// under this very name; a file of the same name otherwise is removed first.
fn replace_file<T: fatfs::ReadWriteSeek>(root: &fatfs::Dir<T>, file: &EspFile) -> Result<()> {
    let (parents, name) = file.path.rsplit_once('/').unwrap_or(("", &file.path));
    let mut dir = root.clone();
    for component in parents.split('/').filter(|c| !c.is_empty()) {
        dir = dir.create_dir(component)?;
    }
    if let Some(old) = find(&dir, name)? {
        ensure!(old.is_file(), "{} is a directory on the ESP", file.path);
        let mut data = Vec::new();
        old.to_file().read_to_end(&mut data)?;
        if old.file_name() == name && data == file.data {
            return Ok(());
        }
        dir.remove(&old.file_name())?;
    }
    let mut out = dir.create_file(name)?;
    out.write_all(&file.data)?;
    out.flush()?;
    Ok(())
}

/// Picks the largest cluster size that gives `size` a valid FAT32, or explains why none does.
fn cluster_size_for(size: u64) -> Result<u32> {
    ensure!(
        size >= MIN_ESP_SIZE,
        "ESP region of {size} bytes is too small: FAT32 needs at least {MIN_ESP_SIZE} bytes"
    );
    ensure!(
        size.is_multiple_of(SECTOR),
        "ESP region size {size} is not a multiple of {SECTOR}"
    );
    let Some(&best) = CLUSTER_SIZES
        .iter()
        .find(|&&c| (MIN_CLUSTERS..=MAX_CLUSTERS).contains(&fat32_clusters(size, c)))
    else {
        bail!("ESP region of {size} bytes is too large for FAT32 with clusters of at most 4 KiB");
    };
    // OK to unwrap: every entry of CLUSTER_SIZES fits in u32.
    Ok(u32::try_from(best).unwrap())
}

/// Number of clusters `fatfs` makes for a FAT32 of `size` bytes (same formula as its
/// `determine_sectors_per_fat`), so we can pick the cluster size before formatting.
fn fat32_clusters(size: u64, cluster_size: u64) -> u64 {
    let sectors = size / SECTOR;
    let per_cluster = cluster_size / SECTOR;
    let t1 = sectors - RESERVED_SECTORS + 2 * per_cluster;
    let t2 = cluster_size * 8 / 32 + FATS;
    let sectors_per_fat = t1.div_ceil(t2);
    (sectors - RESERVED_SECTORS - FATS * sectors_per_fat) / per_cluster
}

/// Pads a volume label to 11 bytes; `None` for an empty label (`fatfs` then writes "NO NAME").
fn volume_label(label: &str) -> Result<Option<[u8; 11]>> {
    if label.is_empty() {
        return Ok(None);
    }
    let allowed =
        |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit() || b" !#$%&'()-@^_`{}~".contains(&c);
    ensure!(
        label.len() <= 11 && label.bytes().all(allowed) && !label.starts_with(' '),
        "volume label {label:?} is not 1-11 characters of A-Z, 0-9, space and !#$%&'()-@^_`{{}}~"
    );
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(Some(out))
}

/// Checks the paths and sorts the files by path, so the input order does not matter.
fn sorted_files(files: &[EspFile]) -> Result<Vec<&EspFile>> {
    for f in files {
        let bad = f
            .path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
        ensure!(
            !bad,
            "ESP path {:?} is not of the form DIR/.../NAME",
            f.path
        );
    }
    let mut sorted: Vec<&EspFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    // FAT names are case-insensitive: "a" and "A" would be the same file.
    let mut keys: Vec<String> = sorted.iter().map(|f| f.path.to_uppercase()).collect();
    keys.sort();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        bail!("ESP path {:?} is given twice (FAT ignores case)", w[0]);
    }
    Ok(sorted)
}

/// Zeroes `size` bytes at `offset` of `disk`, skipping chunks that already read as zero
/// (keeps sparse files sparse).
fn zero(disk: &File, offset: u64, size: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        // OK to unwrap: the value is at most CHUNK.
        let len = usize::try_from(CHUNK.min(size - pos)).unwrap();
        let at = offset + pos;
        let is_zero = disk.read_exact_at(&mut buf[..len], at).is_ok() && buf[..len] == zeros[..len];
        if !is_zero {
            disk.write_all_at(&zeros[..len], at)?;
        }
        pos += len as u64;
    }
    Ok(())
}

/// Formats the region as FAT32, pinning every option `fatfs` would otherwise default.
fn format(
    region: &mut FileRange,
    size: u64,
    cluster_size: u32,
    volume_id: u32,
    label: Option<[u8; 11]>,
) -> Result<()> {
    let sectors = u32::try_from(size / SECTOR).context("ESP region has too many sectors")?;
    let mut options = fatfs::FormatVolumeOptions::new()
        .bytes_per_sector(SECTOR as u16)
        .total_sectors(sectors)
        .bytes_per_cluster(cluster_size)
        .fat_type(fatfs::FatType::Fat32)
        .fats(FATS as u8)
        .media(0xF8)
        .sectors_per_track(32)
        .heads(64)
        .drive_num(0x80)
        .volume_id(volume_id);
    if let Some(label) = label {
        options = options.volume_label(label);
    }
    region.seek(SeekFrom::Start(0))?;
    fatfs::format_volume(&mut *region, options).context("formatting the ESP as FAT32")?;
    region.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Mounts the fresh filesystem, writes `files` and unmounts.
fn fill(region: &mut FileRange, epoch: i64, files: &[&EspFile]) -> Result<()> {
    let options = fatfs::FsOptions::new()
        .update_accessed_date(false)
        .time_provider(epoch_clock(epoch));
    let fs = fatfs::FileSystem::new(&mut *region, options).context("mounting the fresh ESP")?;
    ensure!(
        fs.fat_type() == fatfs::FatType::Fat32,
        "fatfs did not format the ESP as FAT32"
    );
    // Counting the free clusters now makes fatfs keep FSInfo's free count up to date.
    fs.stats().context("counting the ESP's free clusters")?;
    let root = fs.root_dir();
    for f in files {
        write_file(&root, f).with_context(|| format!("writing {} to the ESP", f.path))?;
    }
    drop(root);
    fs.unmount().context("unmounting the ESP")
}

/// Creates `file`'s parent directories and the file itself.
fn write_file<T: fatfs::ReadWriteSeek>(root: &fatfs::Dir<T>, file: &EspFile) -> io::Result<()> {
    let (parents, name) = match file.path.rsplit_once('/') {
        Some((parents, name)) => (Some(parents), name),
        None => (None, file.path.as_str()),
    };
    let mut dir = root.clone();
    for component in parents.into_iter().flat_map(|p| p.split('/')) {
        dir = dir.create_dir(component)?;
    }
    let mut out = dir.create_file(name)?;
    out.write_all(&file.data)?;
    out.flush()
}

/// A `fatfs` clock that always says `epoch`. fatfs 0.3 wants a `&'static` provider, so this
/// leaks one small value per call (an image build formats one ESP).
fn epoch_clock(epoch: i64) -> &'static EpochClock {
    Box::leak(Box::new(EpochClock(dos_date_time(epoch))))
}

#[derive(Debug)]
struct EpochClock(fatfs::DateTime);

impl fatfs::TimeProvider for EpochClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// Converts unix seconds (UTC) to a FAT date and time, clamped to what FAT can store.
fn dos_date_time(epoch: i64) -> fatfs::DateTime {
    let secs = epoch.clamp(FAT_EPOCH_MIN, FAT_EPOCH_MAX);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let time = secs.rem_euclid(86_400);
    // OK to unwrap: the clamp keeps the year in 1980..=2107 and the rest are small.
    let small = |v: i64| u16::try_from(v).unwrap();
    fatfs::DateTime {
        date: fatfs::Date {
            year: small(year),
            month: small(month),
            day: small(day),
        },
        time: fatfs::Time {
            hour: small(time / 3600),
            min: small(time / 60 % 60),
            sec: small(time % 60),
            millis: 0,
        },
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends the regular files under `dir` (whose path is `prefix`) to `out`.
fn read_dir<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<T>,
    prefix: &str,
    depth: usize,
    budget: &mut Budget,
    out: &mut Vec<EspFile>,
) -> Result<()> {
    ensure!(
        depth < MAX_DEPTH,
        "ESP directory {prefix:?} is nested too deeply"
    );
    for entry in dir.iter() {
        let entry = entry.with_context(|| format!("listing ESP directory {prefix:?}"))?;
        ensure!(
            budget.entries > 0,
            "the FAT filesystem is damaged: directory {prefix:?} lists more entries than the \
             filesystem has room for (its cluster chain loops)"
        );
        budget.entries -= 1;
        let name = entry.file_name();
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if entry.is_dir() && name != "." && name != ".." {
            read_dir(&entry.to_dir(), &path, depth + 1, budget, out)?;
        } else if entry.is_file() {
            let mut data = Vec::new();
            entry
                .to_file()
                .take(budget.bytes + 1)
                .read_to_end(&mut data)
                .with_context(|| format!("reading ESP file {path:?}"))?;
            ensure!(
                data.len() as u64 <= budget.bytes,
                "the FAT filesystem is damaged: its files hold more than the filesystem's \
                 size (ESP file {path:?}; a cluster chain loops or is shared)"
            );
            budget.bytes -= data.len() as u64;
            out.push(EspFile { path, data });
        }
    }
    Ok(())
}

/// The FAT32 layout facts `fix_dot_entries` needs, read from the boot sector.
struct Geometry {
    cluster_size: u64,
    fat_offset: u64,
    data_offset: u64,
    root_cluster: u32,
    clusters: u32,
}

impl Geometry {
    fn read<D: Read + Seek>(region: &mut D) -> Result<Self> {
        let mut boot = [0u8; 512];
        read_at(region, 0, &mut boot).context("reading the boot sector")?;
        let u16_at = |i: usize| u64::from(u16::from_le_bytes([boot[i], boot[i + 1]]));
        let u32_at =
            |i: usize| u32::from_le_bytes([boot[i], boot[i + 1], boot[i + 2], boot[i + 3]]);
        let sector = u16_at(0x0B);
        let cluster_size = sector * u64::from(boot[0x0D]);
        let fat_offset = sector * u16_at(0x0E);
        let data_offset = fat_offset + sector * u64::from(boot[0x10]) * u64::from(u32_at(0x24));
        let data_sectors =
            (u64::from(u32_at(0x20)) * sector).saturating_sub(data_offset) / sector.max(1);
        ensure!(
            cluster_size > 0 && sector > 0,
            "boot sector has a zero sector or cluster size"
        );
        let clusters =
            u32::try_from(data_sectors * sector / cluster_size).context("too many clusters")?;
        Ok(Geometry {
            cluster_size,
            fat_offset,
            data_offset,
            root_cluster: u32_at(0x2C),
            clusters,
        })
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + u64::from(cluster - 2) * self.cluster_size
    }

    /// The clusters of the chain starting at `first`.
    fn chain<D: Read + Seek>(&self, region: &mut D, first: u32) -> Result<Vec<u32>> {
        let mut chain = Vec::new();
        let mut cluster = first;
        while cluster < 0x0FFF_FFF8 {
            ensure!(
                (2..self.clusters + 2).contains(&cluster),
                "cluster {cluster} is out of range"
            );
            ensure!(
                chain.len() < self.clusters as usize,
                "cluster chain from {first} loops"
            );
            chain.push(cluster);
            let mut entry = [0u8; 4];
            read_at(region, self.fat_offset + 4 * u64::from(cluster), &mut entry)?;
            cluster = u32::from_le_bytes(entry) & 0x0FFF_FFFF;
        }
        Ok(chain)
    }

    /// The raw entries of the directory at `first`, and its clusters.
    fn read_dir<D: Read + Seek>(&self, region: &mut D, first: u32) -> Result<(Vec<u8>, Vec<u32>)> {
        let chain = self.chain(region, first)?;
        let mut data = vec![0u8; chain.len() * self.cluster_size as usize];
        for (c, buf) in chain
            .iter()
            .zip(data.chunks_mut(self.cluster_size as usize))
        {
            read_at(region, self.cluster_offset(*c), buf)?;
        }
        Ok((data, chain))
    }

    fn write_dir<D: Write + Seek>(&self, region: &mut D, chain: &[u32], data: &[u8]) -> Result<()> {
        for (c, buf) in chain.iter().zip(data.chunks(self.cluster_size as usize)) {
            region.seek(SeekFrom::Start(self.cluster_offset(*c)))?;
            region.write_all(buf)?;
        }
        Ok(())
    }
}

/// Rewrites every subdirectory to start with `.` and `..` (no LFN entries for them), with
/// `..` pointing at 0 when the parent is the root, as `fsck.fat` and the FAT spec want.
fn fix_dot_entries<D: Read + Write + Seek>(region: &mut D) -> Result<()> {
    let geometry = Geometry::read(region)?;
    fix_dir(region, &geometry, geometry.root_cluster, None, 0)
}

/// Fixes the subdirectories of the directory at `cluster`, and that directory itself unless
/// it is the root (`parent` is `None`); `parent` is `Some(0)` for first-level directories.
fn fix_dir<D: Read + Write + Seek>(
    region: &mut D,
    geometry: &Geometry,
    cluster: u32,
    parent: Option<u32>,
    depth: usize,
) -> Result<()> {
    ensure!(depth < MAX_DEPTH, "ESP directories are nested too deeply");
    let (data, chain) = geometry.read_dir(region, cluster)?;
    let entries = used_entries(&data);
    if let Some(parent) = parent {
        let fixed = dots_first(&entries, cluster, parent, data.len())
            .with_context(|| format!("directory at cluster {cluster}"))?;
        geometry.write_dir(region, &chain, &fixed)?;
    }
    let here = if parent.is_some() { cluster } else { 0 };
    for e in entries.iter().filter(|e| is_subdir(e)) {
        fix_dir(region, geometry, entry_cluster(e), Some(here), depth + 1)?;
    }
    Ok(())
}

/// The 32-byte entries before the end-of-directory marker.
fn used_entries(data: &[u8]) -> Vec<&[u8]> {
    data.chunks(ENTRY).take_while(|e| e[0] != 0).collect()
}

fn is_lfn(e: &[u8]) -> bool {
    e[11] & 0x3F == ATTR_LFN
}

fn is_dot(e: &[u8]) -> bool {
    !is_lfn(e) && (e[..11] == DOT || e[..11] == DOTDOT)
}

fn is_subdir(e: &[u8]) -> bool {
    e[0] != 0xE5 && !is_lfn(e) && e[11] & ATTR_DIRECTORY != 0 && !is_dot(e)
}

fn entry_cluster(e: &[u8]) -> u32 {
    u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
        | u32::from(u16::from_le_bytes([e[26], e[27]]))
}

fn set_entry_cluster(e: &mut [u8], cluster: u32) {
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
}

/// `.` and `..` (with the right clusters), then the other entries in their order, without
/// the LFN entries that belonged to `.` and `..`; zero-padded to `len` bytes.
fn dots_first(entries: &[&[u8]], cluster: u32, parent: u32, len: usize) -> Result<Vec<u8>> {
    let find = |name: &[u8; 11]| entries.iter().find(|e| !is_lfn(e) && e[..11] == name[..]);
    let (Some(dot), Some(dotdot)) = (find(&DOT), find(&DOTDOT)) else {
        bail!("directory has no . or .. entry");
    };
    let mut out = Vec::with_capacity(len);
    for (entry, target) in [(dot, cluster), (dotdot, parent)] {
        let start = out.len();
        out.extend_from_slice(entry);
        set_entry_cluster(&mut out[start..], target);
    }
    // An LFN run belongs to the short entry that follows it: drop runs that precede a dot.
    let mut run = Vec::new();
    for e in entries {
        if is_lfn(e) {
            run.push(*e);
        } else if is_dot(e) {
            run.clear();
        } else {
            run.drain(..).for_each(|l| out.extend_from_slice(l));
            out.extend_from_slice(e);
        }
    }
    out.resize(len, 0);
    Ok(out)
}

fn read_at<D: Read + Seek>(region: &mut D, at: u64, buf: &mut [u8]) -> io::Result<()> {
    region.seek(SeekFrom::Start(at))?;
    region.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    const MIB: u64 = 1 << 20;
    const OFFSET: u64 = MIB;
    const SIZE: u64 = 64 * MIB;
    const FILE_LEN: u64 = 70 * MIB;
    const EPOCH: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    /// A temporary file that deletes itself.
    struct Temp(PathBuf);

    impl Temp {
        fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Temp(std::env::temp_dir().join(format!(
                "imagebuild-fat-{}-{n}-{tag}.img",
                std::process::id()
            )))
        }

        fn create(&self, len: u64, fill: u8) -> File {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.0)
                .unwrap();
            file.write_all_at(&vec![fill; len as usize], 0).unwrap();
            file
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Deterministic pseudo-random bytes (xorshift64).
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    fn sample_files() -> Vec<EspFile> {
        vec![
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                data: noise(3 * MIB as usize + 123, 1),
            },
            EspFile {
                path: "EFI/debian/grub.cfg".into(),
                data: b"search --fs-uuid --set=root x\n".to_vec(),
            },
            EspFile {
                path: "EFI/debian/fonts/unicode with a long name.pf2".into(),
                data: noise(70_000, 2),
            },
            EspFile {
                path: "loader/entries/empty.conf".into(),
                data: Vec::new(),
            },
            EspFile {
                path: "startup.nsh".into(),
                data: b"\\EFI\\BOOT\\BOOTX64.EFI\n".to_vec(),
            },
        ]
    }

    /// Writes `files` into a fresh 0xAA-filled image and returns the image's bytes.
    fn build(volume_id: u32, files: &[EspFile]) -> Vec<u8> {
        let temp = Temp::new("build");
        let file = temp.create(FILE_LEN, 0xAA);
        write_esp(&file, OFFSET, SIZE, volume_id, "ESP", EPOCH, files).unwrap();
        std::fs::read(&temp.0).unwrap()
    }

    /// Runs `fsck.fat -n` on `region` and panics unless it succeeds without complaints, i.e.
    /// prints nothing but its version line and the "N files, used/total clusters" summary.
    fn assert_fsck_clean(region: &[u8]) -> String {
        let temp = Temp::new("fsck");
        std::fs::write(&temp.0, region).unwrap();
        let out = Command::new("fsck.fat").arg("-n").arg(&temp.0).output().unwrap_or_else(|e| {
            panic!("cannot run fsck.fat ({e}); install dosfstools: apt-get install -y --no-install-recommends dosfstools")
        });
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let clean =
            lines.len() == 2 && lines[0].starts_with("fsck.fat ") && lines[1].contains(" files, ");
        assert!(
            out.status.success() && clean,
            "fsck.fat -n complained ({}):\n{text}",
            out.status
        );
        text
    }

    fn region_of(image: &[u8]) -> &[u8] {
        &image[OFFSET as usize..(OFFSET + SIZE) as usize]
    }

    #[test]
    fn fsck_finds_nothing_to_complain_about() {
        let image = build(0x1234_ABCD, &sample_files());
        let region = region_of(&image);
        let summary = assert_fsck_clean(region);
        // 5 files and 7 directories (EFI, BOOT, debian, fonts, loader, entries + the label).
        assert!(summary.contains(": 12 files, "), "{summary}");
        assert_eq!(&region[0x52..0x5A], b"FAT32   ", "not FAT32");
        assert_eq!(
            &region[0x43..0x47],
            &0x1234_ABCDu32.to_le_bytes(),
            "volume id (blkid UUID 1234-ABCD)"
        );
        assert_eq!(&region[0x47..0x52], b"ESP        ", "volume label");
    }

    #[test]
    fn same_inputs_give_same_bytes() {
        let files = sample_files();
        let first = build(7, &files);
        assert!(first == build(7, &files), "two identical builds differ");
        let mut reversed = files.clone();
        reversed.reverse();
        assert!(
            first == build(7, &reversed),
            "input order changed the bytes"
        );
        assert!(
            first != build(8, &files),
            "volume id did not change the bytes"
        );
    }

    #[test]
    fn bytes_outside_the_region_are_untouched() {
        let image = build(7, &sample_files());
        assert!(
            image[..OFFSET as usize].iter().all(|&b| b == 0xAA),
            "bytes before the region changed"
        );
        assert!(
            image[(OFFSET + SIZE) as usize..].iter().all(|&b| b == 0xAA),
            "bytes after the region changed"
        );
        assert_eq!(image.len() as u64, FILE_LEN);
    }

    #[test]
    fn read_esp_returns_what_was_written() {
        let temp = Temp::new("read");
        let file = temp.create(FILE_LEN, 0xAA);
        let mut files = sample_files();
        write_esp(&file, OFFSET, SIZE, 7, "ESP", EPOCH, &files).unwrap();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(read_esp(&file, OFFSET, SIZE).unwrap(), files);
    }

    #[test]
    fn sizes_pick_valid_fat32_cluster_sizes() {
        let temp = Temp::new("sizes");
        for (size, cluster) in [
            (MIN_ESP_SIZE, 512),
            (64 * MIB, 512),
            (128 * MIB, 1024),
            (256 * MIB, 2048),
        ] {
            assert_eq!(cluster_size_for(size).unwrap(), cluster, "size {size}");
            let file = temp.create(size, 0);
            write_esp(&file, 0, size, 1, "", EPOCH, &sample_files()).unwrap();
            assert_fsck_clean(&std::fs::read(&temp.0).unwrap());
        }
    }

    #[test]
    fn too_small_region_names_both_sizes() {
        let temp = Temp::new("small");
        let file = temp.create(32 * MIB, 0);
        let err = write_esp(&file, 0, 32 * MIB, 1, "ESP", EPOCH, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&(32 * MIB).to_string()) && err.contains(&MIN_ESP_SIZE.to_string()),
            "{err}"
        );
        assert!(cluster_size_for(MIN_ESP_SIZE - SECTOR).is_err());
    }

    #[test]
    fn bad_paths_and_labels_are_refused() {
        let temp = Temp::new("bad");
        let file = temp.create(SIZE, 0);
        let one = |path: &str| EspFile {
            path: path.into(),
            data: vec![1],
        };
        for files in [
            vec![one("/EFI/x")],
            vec![one("EFI//x")],
            vec![one("EFI/../x")],
            vec![one("a/B"), one("A/b")],
        ] {
            assert!(
                write_esp(&file, 0, SIZE, 1, "ESP", EPOCH, &files).is_err(),
                "{files:?}"
            );
        }
        for label in ["esp", "TWELVE CHARS", " ESP", "É"] {
            assert!(
                write_esp(&file, 0, SIZE, 1, label, EPOCH, &[]).is_err(),
                "{label:?}"
            );
        }
    }

    /// A fresh ESP with the sample files in `temp`'s file.
    fn fresh(temp: &Temp) -> File {
        let file = temp.create(FILE_LEN, 0xAA);
        write_esp(&file, OFFSET, SIZE, 7, "ESP", EPOCH, &sample_files()).unwrap();
        file
    }

    fn put(file: &File, files: &[EspFile]) -> Result<()> {
        let range = FileRange::new(file, OFFSET, SIZE).unwrap();
        put_files(range, "EFI/BOOT/BOOTX64.EFI", files)
    }

    fn one(path: &str, data: &[u8]) -> EspFile {
        EspFile {
            path: path.into(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn put_files_adds_and_replaces_and_keeps_the_rest() {
        let temp = Temp::new("put");
        let file = fresh(&temp);
        let added = one("EFI/BOOT/BOOTX64.EFI.extra.d/a.cred", b"1");
        let replaced = one("EFI/debian/grub.cfg", b"new\n");
        put(&file, &[added.clone(), replaced.clone()]).unwrap();
        let mut want: Vec<EspFile> = sample_files()
            .into_iter()
            .filter(|f| f.path != replaced.path)
            .chain([added, replaced.clone()])
            .collect();
        want.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(read_esp(&file, OFFSET, SIZE).unwrap(), want);
        let image = std::fs::read(&temp.0).unwrap();
        let summary = assert_fsck_clean(region_of(&image));
        assert!(summary.contains(": 14 files, "), "{summary}");
        assert!(
            image[..OFFSET as usize].iter().all(|&b| b == 0xAA)
                && image[(OFFSET + SIZE) as usize..].iter().all(|&b| b == 0xAA),
            "bytes outside the region changed"
        );
    }

    #[test]
    fn put_files_is_deterministic_and_idempotent() {
        let files = [
            one("EFI/BOOT/BOOTX64.EFI.extra.d/b.cred", b"2"),
            one("EFI/BOOT/BOOTX64.EFI.extra.d/a.cred", &noise(5000, 3)),
        ];
        let (ta, tb) = (Temp::new("det-a"), Temp::new("det-b"));
        let (a, b) = (fresh(&ta), fresh(&tb));
        put(&a, &files).unwrap();
        put(&b, &files).unwrap();
        let once = std::fs::read(&ta.0).unwrap();
        assert!(once == std::fs::read(&tb.0).unwrap(), "two runs differ");
        put(&a, &files).unwrap();
        assert!(
            once == std::fs::read(&ta.0).unwrap(),
            "the same files again changed bytes"
        );
    }

    #[test]
    fn replacing_twice_leaves_one_file_named_as_last_given() {
        let temp = Temp::new("twice");
        let file = fresh(&temp);
        put(&file, &[one("EFI/x.d/Name.cred", b"one")]).unwrap();
        put(&file, &[one("EFI/x.d/Name.cred", b"two")]).unwrap();
        put(&file, &[one("EFI/x.d/NAME.cred", b"three")]).unwrap();
        let range = FileRange::new(&file, OFFSET, SIZE).unwrap();
        let listed = list_dir(range, "EFI/x.d").unwrap();
        assert_eq!(
            listed,
            [DirFile {
                name: "NAME.cred".into(),
                size: 5
            }]
        );
        let files = read_esp(&file, OFFSET, SIZE).unwrap();
        let got = files
            .iter()
            .find(|f| f.path == "EFI/x.d/NAME.cred")
            .unwrap();
        assert_eq!(got.data, b"three");
        assert_fsck_clean(region_of(&std::fs::read(&temp.0).unwrap()));
    }

    #[test]
    fn new_entries_take_the_stamp_of_the_given_file() {
        let temp = Temp::new("stamp");
        let file = fresh(&temp);
        put(&file, &[one("EFI/BOOT/new.d/a.cred", b"1")]).unwrap();
        let mut range = FileRange::new(&file, OFFSET, SIZE).unwrap();
        let got = modified(&mut range, "EFI/BOOT/new.d/a.cred").unwrap();
        let want = dos_date_time(EPOCH);
        assert_eq!(
            (got.date.year, got.date.month, got.date.day),
            (2023, 11, 14)
        );
        assert_eq!(
            (got.time.hour, got.time.min),
            (want.time.hour, want.time.min)
        );
        let err = put_files(
            FileRange::new(&file, OFFSET, SIZE).unwrap(),
            "EFI/BOOT/MISSING.EFI",
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("the ESP has no file EFI/BOOT/MISSING.EFI"),
            "{err:#}"
        );
    }

    #[test]
    fn list_dir_names_files_only() {
        let temp = Temp::new("list");
        let file = fresh(&temp);
        let range = || FileRange::read_only(&file, OFFSET, SIZE).unwrap();
        let names = |dir: &str| -> Vec<String> {
            list_dir(range(), dir)
                .unwrap()
                .into_iter()
                .map(|f| f.name)
                .collect()
        };
        assert_eq!(names("efi/boot"), ["BOOTX64.EFI"]);
        assert_eq!(names(""), ["startup.nsh"]);
        assert!(list_dir(range(), "EFI/none").unwrap().is_empty());
    }

    #[test]
    fn timestamps_are_the_clamped_epoch() {
        let dt = dos_date_time(EPOCH);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (2023, 11, 14));
        assert_eq!((dt.time.hour, dt.time.min, dt.time.sec), (22, 13, 20));
        let low = dos_date_time(0).date;
        assert_eq!((low.year, low.month, low.day), (1980, 1, 1));
        let high = dos_date_time(i64::MAX);
        assert_eq!(
            (high.date.year, high.date.month, high.date.day),
            (2107, 12, 31)
        );
        assert_eq!((high.time.hour, high.time.min, high.time.sec), (23, 59, 58));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
