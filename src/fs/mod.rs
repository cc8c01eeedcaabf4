//! Filesystems, each written straight into its region of the disk image file.

pub mod ext4;
pub mod fat;
pub mod range;
