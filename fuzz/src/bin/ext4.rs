//! The root filesystem reader (ext4-view) as inspect and diff walk it, after the superblock
//! check `Image::root()` makes: every entry, every
//! symlink target, every regular file's contents.
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
            for e in entries.iter().take(64) {
                let _ = fs.read(e.path.as_str());
            }
        }
    });
}
