//! Inputs the fuzz targets (fuzz/) found crashing, kept so they never crash again. Each
//! is fed the way its target feeds it; the test fails by panicking or aborting, as the
//! target did.

use std::io::Read;
use std::path::Path;

/// The fixtures of `target` (tests/fixtures/fuzz/TARGET/*.gz), decompressed.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let mut data = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap())
                .read_to_end(&mut data)
                .unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// ext4-view sized its tables from a damaged superblock and asked for 68 GB to 1.1 TB,
/// aborting the process; the superblock check refuses these before it.
#[test]
fn ext4_superblocks_that_made_ext4_view_abort_are_refused() {
    for (name, data) in inputs("ext4") {
        let sb = data.get(1024..2048).unwrap_or_default();
        let verdict = imagebuild::inspect::integrity::check_ext4_superblock(sb, data.len() as u64);
        assert!(verdict.is_err(), "{name}: passed the superblock check");
    }
}

/// fatfs overflowed on these ESPs (cluster numbers below 2, cluster arithmetic): reading
/// them is an error about a damaged FAT, never a panic out of read_esp.
#[test]
fn fat_filesystems_that_overflowed_fatfs_are_errors() {
    for (name, data) in inputs("fat") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let read = imagebuild::fs::fat::read_esp(&file, 0, data.len() as u64);
        assert!(read.is_err(), "{name}: read as a sound FAT");
    }
}

/// ext4-view allocated (or would stream) what a damaged inode claims, 190 GB to 2 TB: a
/// file read whole or hashed is refused past its filesystem's size, as inspect and diff
/// read them. A test that aborts or runs for hours fails.
#[test]
fn files_claiming_more_than_their_filesystem_are_errors() {
    let mut refused = 0;
    for (name, data) in inputs("ext4-read") {
        let sb = data.get(1024..2048).unwrap_or_default();
        if imagebuild::inspect::integrity::check_ext4_superblock(sb, data.len() as u64).is_err() {
            continue;
        }
        let Ok(fs) = ext4_view::Ext4::load(Box::new(data.clone())) else {
            continue;
        };
        let Ok(entries) = imagebuild::inspect::rootfs::walk(&fs) else {
            continue;
        };
        let mut contents = imagebuild::inspect::rootfs::Contents::new(&fs).limit(data.len() as u64);
        for e in entries.iter().filter(|e| e.is_file()).take(64) {
            if e.size > data.len() as u64 {
                assert!(contents.sha256(e).is_err(), "{name}: {} hashed", e.path);
                assert!(contents.keep(e).is_err(), "{name}: {} read", e.path);
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no input had a file claiming too much");
}

/// The gpt crate (4.1.0) fails an assertion on these tables; the integrity check, which
/// runs before it in Image::open, finds them damaged, so it never reads them.
#[test]
fn gpt_tables_that_made_the_gpt_crate_assert_never_reach_it() {
    for (name, data) in inputs("gpt") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let verdict = imagebuild::inspect::integrity::check(&file, data.len() as u64);
        assert_ne!(
            verdict,
            imagebuild::inspect::integrity::Verdict::Sound,
            "{name}: passed the integrity check"
        );
        assert!(imagebuild::inspect::Image::open(&path).is_err(), "{name}");
    }
}

/// FATs whose cluster chains loop: read_esp read them without end (23 GB of memory for
/// a 530 KiB input, killed by the OOM killer; the fat target saw these as hangs). Reading
/// them is an error, or a listing within what the filesystem can hold.
#[test]
fn fat_filesystems_whose_chains_loop_are_read_within_their_size() {
    for (name, data) in inputs("fat-hang") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        match imagebuild::fs::fat::read_esp(&file, 0, data.len() as u64) {
            Ok(files) => {
                let total: usize = files.iter().map(|f| f.data.len()).sum();
                assert!(
                    total <= data.len(),
                    "{name}: {total} bytes read from {}",
                    data.len()
                );
            }
            Err(e) => eprintln!("{name}: {e:#}"),
        }
    }
}
