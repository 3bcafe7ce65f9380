//! Errors of the numeric core.

use std::path::PathBuf;

/// A configuration that cannot be built, or a data file that cannot be read.
///
/// Every message names the bad field or file, the value found, and what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field holds a value outside what is accepted.
    #[error("{field} = {value}: expected {expected}")]
    Invalid {
        /// Dotted path of the field, e.g. `optimizer.momentum`.
        field: String,
        /// The value found, as written.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// A data file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file was read but its contents are not valid.
    #[error("{path}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line or offset where it applies.
        message: String,
    },
}

impl ConfigError {
    /// `field = value: expected ...`.
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// Returns `Err(ConfigError::Invalid)` unless `ok`.
pub fn ensure(
    ok: bool,
    field: &str,
    value: impl std::fmt::Display,
    expected: &str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, value, expected))
    }
}
