//! imagebuild: reproducible, bootable disk images from declarative profiles.
//!
//! Data flows one way: `profile` -> `base` (tar stream) -> `tree` -> `fs` + `disk` ->
//! `output`. Every external command goes through `host`.

pub mod base;
pub mod boot;
pub mod build;
pub mod cache;
pub mod cli;
pub mod disk;
pub mod doctor;
pub mod error;
pub mod flash;
pub mod formats;
pub mod fs;
pub mod host;
pub mod ids;
pub mod inspect;
pub mod leftovers;
pub mod lock;
pub mod machine;
pub mod output;
pub mod profile;
pub mod progress;
pub mod publish;
pub mod release;
pub mod secrets;
pub mod size;
pub mod sparse;
pub mod stack;
pub mod testing;
pub mod tree;
pub mod verify;
