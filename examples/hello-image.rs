//! Writes the e2e and example container image as an OCI layout (index tagged `1`): busybox
//! httpd serving a page on port 8080, for amd64 and arm64. Deterministic: the same busybox
//! binaries give the same index digest, which it prints. A DEST ending in `.tar` is an OCI
//! layout archive (what `[[stack]] oci-archives` reads, written whole or not at all), else
//! a layout directory.
//!
//!     cargo run --release --example hello-image -- DEST BUSYBOX_AMD64 BUSYBOX_ARM64

use imagebuild::profile::{Arch, DEFAULT_EPOCH};
use imagebuild::stack::ocibuild;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, amd64, arm64] = args.as_slice() else {
        anyhow::bail!("usage: hello-image DIR BUSYBOX_AMD64 BUSYBOX_ARM64");
    };
    let image = ocibuild::build(&[
        ocibuild::hello_spec(Arch::Amd64, std::fs::read(amd64)?, DEFAULT_EPOCH),
        ocibuild::hello_spec(Arch::Arm64, std::fs::read(arm64)?, DEFAULT_EPOCH),
    ])?;
    let dest = std::path::Path::new(dir);
    if dir.ends_with(".tar") {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        imagebuild::cache::write_atomic(dest, &image.layout_tar("1")?)?;
    } else {
        image.write_layout_dir(dest, "1")?;
    }
    println!("{}", image.index_digest);
    Ok(())
}
