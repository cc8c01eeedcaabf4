//! The tar reader of bases: the tree read from an uncompressed tar, then written back as
//! the deterministic root tar mke2fs reads.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (_dir, paths) = imagebuild_fuzz::scratch(&[("base.tar", data)]);
        if let Ok(tree) = imagebuild::tree::Tree::from_tar(&paths[0]) {
            let _ = tree.write_tar(std::io::sink());
        }
    });
}
