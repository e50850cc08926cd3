//! What loading a config file can end in. Every refusal of a value names the
//! file, the line and the field (`shop.toml:12: field `plan.max_batch_bytes`:
//! ...`); operators and the tests read these messages, so their form is
//! kept exactly.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path:?}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}: field `{field}`: {message}")]
    Invalid {
        path: String,
        line: usize,
        field: String,
        message: String,
    },
}
