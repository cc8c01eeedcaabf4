//! A UKI (a PE file) on the ESP: its sections, the kernel version in `.linux`, and the
//! `.initrd` cpio.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let file = imagebuild::fs::fat::EspFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: data.to_vec(),
        };
        let _ = imagebuild::inspect::esp::ukis(std::slice::from_ref(&file));
        let _ = imagebuild::inspect::kernel::kernel_version(data);
    });
}
