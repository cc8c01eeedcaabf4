//! Flashing: putting a release on a disk, a file or a disk in a rescue system over ssh.
pub mod facts;
pub mod gpt;
pub mod guard;
