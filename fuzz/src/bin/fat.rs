//! The ESP reader (FAT): every file with its contents, as inspect reads the ESP.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (_dir, paths) = imagebuild_fuzz::scratch(&[("esp.img", data)]);
        let file = std::fs::File::open(&paths[0]).expect("the input");
        let _ = imagebuild::fs::fat::read_esp(&file, 0, data.len() as u64);
    });
}
