//! The GPT side of every image reader: the integrity check (primary and backup headers,
//! entry arrays, lengths, the root's ext4 superblock) and the partition table, on a whole
//! (small) disk file.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (_dir, paths) = imagebuild_fuzz::scratch(&[("disk.raw", data)]);
        let file = std::fs::File::open(&paths[0]).expect("the input");
        // As Image::open: the gpt crate reads only what the integrity check passed (it
        // asserts on some damaged tables: partition.rs:261 in gpt 4.1.0).
        if imagebuild::inspect::integrity::check(&file, data.len() as u64)
            == imagebuild::inspect::integrity::Verdict::Sound
        {
            let _ = imagebuild::disk::read_table(&file);
        }
    });
}
