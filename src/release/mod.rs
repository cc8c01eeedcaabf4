//! Releases: the immutable record of published images and the names users give them.
//!
//! - [`name`]: the plain-name rule for profile names, image names and versions, and release
//!   names (`PROFILE`, `PROFILE@VERSION`, `PROFILE@sha256:PREFIX`, a path);
//! - [`record`]: `out/PROFILE/releases.json`, where a version names one sha256 for good;
//! - [`list`]: `imagebuild releases`, newest first;
//! - [`resolve`]: from a name to an image file, checked against its record.

pub mod list;
pub mod name;
pub mod record;
pub mod resolve;

pub use name::ReleaseName;
pub use record::{Release, Releases, Verification};
pub use resolve::{Latest, Resolved, resolve};
