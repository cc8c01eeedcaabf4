//! The root filesystem reader (ext4-view) as inspect and diff walk it: every entry, every
//! symlink target, every regular file's contents.
fn main() {
    afl::fuzz!(|data: &[u8]| {
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
