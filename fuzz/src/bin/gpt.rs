//! The GPT side of every image reader: the integrity check (primary and backup headers,
//! entry arrays, lengths, the root's ext4 superblock) and the partition table, on a whole
//! (small) disk file.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (_dir, paths) = imagebuild_fuzz::scratch(&[("disk.raw", data)]);
        let file = std::fs::File::open(&paths[0]).expect("the input");
        let _ = imagebuild::inspect::integrity::check(&file, data.len() as u64);
        let _ = imagebuild::disk::read_table(&file);
    });
}
