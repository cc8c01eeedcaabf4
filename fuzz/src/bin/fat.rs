//! The ESP reader (FAT): every file with its contents, as inspect reads the ESP.
//! read_esp catches fatfs's panics (its arithmetic on a damaged FAT, checked by
//! overflow-checks) and returns them as errors: only a panic that escapes it is a crash,
//! so the hook that aborts on every panic is off (fuzz_nohook).
fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        let (_dir, paths) = imagebuild_fuzz::scratch(&[("esp.img", data)]);
        let file = std::fs::File::open(&paths[0]).expect("the input");
        let _ = imagebuild::fs::fat::read_esp(&file, 0, data.len() as u64);
    });
}
