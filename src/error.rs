//! Errors a user can act on. Everything else is an `anyhow::Error` with context.
//!
//! A `UserError` anywhere in an error chain makes the CLI print its hint.

use std::fmt;

/// What kind of problem the user has to solve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The input (profile, overlay, tarball) is wrong.
    Invalid,
    /// The input asks for something imagebuild does not do.
    Unsupported,
    /// Stored data (cache, image) does not match its checksum or format.
    Corrupt,
    /// The host lacks a tool or a tool failed.
    Tool,
}

/// An error with a message and, where there is one, the fix.
#[derive(Debug)]
pub struct UserError {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
}

impl UserError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Invalid,
            message: message.into(),
            hint: None,
        }
    }

    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// Shorthand: `bail_user!(UserError::invalid(..).hint(..))`.
#[macro_export]
macro_rules! bail_user {
    ($e:expr) => {
        return Err(anyhow::Error::new($e))
    };
}

/// The hints of every `UserError` in the chain, outermost first.
pub fn hints(err: &anyhow::Error) -> Vec<String> {
    err.chain()
        .filter_map(|e| e.downcast_ref::<UserError>())
        .filter_map(|e| e.hint.clone())
        .collect()
}
