//! Helpers shared by the fuzz targets in `src/bin/`: each target feeds AFL++'s input to
//! one of imagebuild's readers, exactly as a user's file would reach it, and only a panic
//! (or a hang) counts; errors are the expected answer to bad input.

use std::path::PathBuf;

/// A scratch directory holding `files` (relative path, bytes), dropped with it.
pub fn scratch(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let paths = files
        .iter()
        .map(|(name, bytes)| {
            let p = dir.path().join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("a directory");
            }
            std::fs::write(&p, bytes).expect("a file");
            p
        })
        .collect();
    (dir, paths)
}

/// `data` split at its first NUL byte: two inputs from one.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
