//! The root filesystem reader (ext4-view) as inspect and diff walk it, after the superblock
//! check `Image::root()` makes: every entry, every
//! symlink target, regular files' contents, whole and streamed.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        // What Image::root() checks before it loads a root filesystem.
        let sb = data.get(1024..2048).unwrap_or_default();
        if imagebuild::inspect::integrity::check_ext4_superblock(sb, data.len() as u64).is_err() {
            return;
        }
        let Ok(fs) = ext4_view::Ext4::load(Box::new(data.to_vec())) else {
            return;
        };
        if let Ok(entries) = imagebuild::inspect::rootfs::walk(&fs) {
            // As inspect and diff read files: whole (kept) and streamed (hashed).
            let mut contents = imagebuild::inspect::rootfs::Contents::new(&fs).limit(data.len() as u64);
            for e in entries.iter().filter(|e| e.is_file()).take(64) {
                let _ = contents.sha256(e);
                let _ = contents.keep(e);
            }
        }
    });
}
