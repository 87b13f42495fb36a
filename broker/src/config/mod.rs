//! Configuration: one TOML file, `HERALD_<SECTION>__<KEY>` environment overrides, and
//! defaults for every key: the contract is [docs/configuration.md](../../../docs/configuration.md).
//!
//! Loading goes file → TOML table → environment overrides → typed [`Config`] through
//! `serde_path_to_error`, so every error names the key (`session.slow_consumer`), the
//! source (the file or the environment variable) and what was expected. Unknown keys
//! are errors: a typo must never silently fall back to a default.

//!
//! ## Layout
//! - `schema.rs`: the typed [`Config`], one struct per section, with the defaults.
//! - `load.rs`: [`Config::load`]: file, environment overrides, typed result.
//! - `validate.rs`: [`Config::validate`]: ranges and combinations. Pure: it reads no
//!   file and builds nothing; what needs files or clients (the JWT verifier, the TLS
//!   certificate, the bridges' clients) is built once at start, and its errors are
//!   attributed to keys the same way ([`Config::attribute`]).
//! - `mask.rs`: [`Config::to_masked_toml`] for `herald check-config`.

use std::fmt;
use std::path::PathBuf;

mod load;
mod mask;
mod schema;
mod validate;

#[cfg(feature = "nats")]
pub(crate) use mask::mask_url_credentials;
pub use schema::*;

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// No file given: built-in defaults (plus environment).
    #[default]
    Defaults,
    /// A TOML file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => f.write_str("the built-in defaults"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a configuration was refused. Each variant names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: no such key `{key}` (keys look like HERALD_SESSION__QUEUE_MAX_BYTES)")]
    UnknownEnv { var: String, key: String },
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("config error in {origin}{env}: `{key}`: {message}")]
    Invalid {
        origin: Origin,
        /// ` (from HERALD_…)` when an environment variable set the key.
        env: String,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// `key` holds `value`, which is not what was expected. The origin is filled in
    /// by [`Config::attribute`].
    pub(crate) fn invalid(key: &str, value: impl fmt::Display, expected: &str) -> ConfigError {
        ConfigError::at(
            key.to_owned(),
            format!("`{value}` is not valid: expected {expected}"),
        )
    }

    /// `key` is wrong, for the reason in `message`.
    pub(crate) fn at(key: String, message: String) -> ConfigError {
        ConfigError::Invalid {
            origin: Origin::Defaults,
            env: String::new(),
            key,
            message,
        }
    }
}

fn invalid(key: &str, value: impl fmt::Display, expected: &str) -> ConfigError {
    ConfigError::invalid(key, value, expected)
}

/// Where a loaded configuration came from: its file and the environment variables
/// that set keys, so an error found later still names them.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    origin: Origin,
    /// `(dotted key, variable name)` of every environment override.
    from_env: Vec<(String, String)>,
}

impl Config {
    /// Where this configuration came from.
    pub fn origin(&self) -> &Origin {
        &self.provenance.origin
    }

    /// Names this configuration's file, and the environment variable when one set
    /// the key, in an error about one of its keys.
    pub fn attribute(&self, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid {
                key, message, env, ..
            } => {
                let p = &self.provenance;
                let env = env_note(&p.from_env, &key).unwrap_or(env);
                ConfigError::Invalid {
                    origin: p.origin.clone(),
                    env,
                    key,
                    message,
                }
            }
            other => other,
        }
    }
}

/// ` (from HERALD_…)` when an environment variable set `key`.
fn env_note(from_env: &[(String, String)], key: &str) -> Option<String> {
    from_env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, var)| format!(" (from {var})"))
}

#[cfg(test)]
mod test_util {
    use std::io::Write;

    pub(super) fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    pub(super) fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }
}
