//! Loading: file → TOML table → `HERALD_*` environment overrides → typed [`Config`]
//! through `serde_path_to_error`, then [`Config::validate`].

use std::path::Path;

use super::{env_note, Config, ConfigError, Origin, Provenance};

const ENV_PREFIX: &str = "HERALD_";

impl Config {
    /// Loads `path` (or the defaults when `None`), applies `HERALD_*` variables from
    /// `env`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (origin, mut table) = match path {
            None => (Origin::Defaults, toml::Table::new()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let table = text
                    .parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: p.to_owned(),
                        message: e.message().to_owned(),
                    })?;
                (Origin::File(p.to_owned()), table)
            }
        };
        let from_env = apply_env(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let env = env_note(&from_env, &key).unwrap_or_default();
                ConfigError::Invalid {
                    origin: origin.clone(),
                    env,
                    key,
                    message: e.into_inner().to_string(),
                }
            })?;
        let mut config = config;
        config.provenance = Provenance { origin, from_env };
        config.validate().map_err(|e| config.attribute(e))?;
        Ok(config)
    }
}

/// Applies `HERALD_<SECTION>__<KEY>=value` variables to `table`. A value is read as
/// TOML (numbers, booleans, arrays) unless the key is a string key, in which case it
/// is taken verbatim, so `HERALD_SERVER__NODE_ID=42` stays the string `"42"`.
/// Returns `(dotted key, variable name)` for every override, for error messages.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let known = defaults
            .get(section)
            .and_then(|s| s.as_table())
            .and_then(|s| s.get(key));
        let Some(default) = known else {
            return Err(ConfigError::UnknownEnv {
                var,
                key: format!("{section}.{key}"),
            });
        };
        let value = if default.is_str() {
            toml::Value::String(raw)
        } else {
            format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw))
        };
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = entry.as_table_mut() {
            t.insert(key.to_owned(), value);
        }
        applied.push((format!("{section}.{key}"), var));
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{file, no_env};
    use crate::config::*;

    #[test]
    fn defaults_match_config_md() {
        let c = Config::load(None, no_env()).expect("defaults load");
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.session.heartbeat_interval_ms, 25_000);
        assert_eq!(c.session.queue_max_bytes, 1_048_576);
        assert_eq!(c.session.slow_consumer, SlowConsumer::Drop);
        assert_eq!(c.history.size, 100);
        assert_eq!(c.history.ttl_ms, 300_000);
        assert!(c.publish.from_clients && c.publish.http);
        assert_eq!(c.auth.mode, "none");
        assert_eq!(c.auth.default_subscribe, vec![">".to_string()]);
    }

    #[test]
    fn file_values_apply() {
        let f = file("[session]\nslow_consumer = \"disconnect\"\nmax_subscriptions = 3\n[history]\nsize = 0\n");
        let c = Config::load(Some(f.path()), no_env()).expect("loads");
        assert_eq!(c.session.slow_consumer, SlowConsumer::Disconnect);
        assert_eq!(c.session.max_subscriptions, 3);
        assert_eq!(c.history.size, 0);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = file("[session]\nqueue_max_byte = 10\n");
        let err = Config::load(Some(f.path()), no_env()).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("queue_max_byte"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let f = file("[sessions]\nx = 1\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("unknown")
            .to_string();
        assert!(msg.contains("sessions"), "{msg}");
    }

    #[test]
    fn bad_value_names_key_value_and_expectation() {
        let f = file("[session]\nslow_consumer = \"dropp\"\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("session.slow_consumer"), "{msg}");
        assert!(msg.contains("dropp"), "{msg}");
        let f = file("[server]\nlisten = \"nowhere\"\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("bad")
            .to_string();
        assert!(
            msg.contains("server.listen") && msg.contains("nowhere") && msg.contains("host:port"),
            "{msg}"
        );
        let f = file("[session]\nmax_subscriptions = \"many\"\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("session.max_subscriptions"), "{msg}");
    }

    #[test]
    fn syntax_error_names_file() {
        let f = file("[server\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("not valid TOML"), "{msg}");
    }

    #[test]
    fn env_overrides_single_keys_with_types() {
        let f = file("[server]\nlisten = \"127.0.0.1:9000\"\n");
        let env = vec![
            (
                "HERALD_SERVER__LISTEN".to_string(),
                "0.0.0.0:8080".to_string(),
            ),
            ("HERALD_SERVER__NODE_ID".to_string(), "42".to_string()),
            (
                "HERALD_SESSION__MAX_SUBSCRIPTIONS".to_string(),
                "7".to_string(),
            ),
            ("HERALD_PUBLISH__HTTP".to_string(), "false".to_string()),
            (
                "HERALD_SERVER__ALLOWED_ORIGINS".to_string(),
                "[\"https://a.example\"]".to_string(),
            ),
            ("HERALD_LOG".to_string(), "debug".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::load(Some(f.path()), env).expect("loads");
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.server.node_id, "42");
        assert_eq!(c.session.max_subscriptions, 7);
        assert!(!c.publish.http);
        assert_eq!(
            c.server.allowed_origins,
            vec!["https://a.example".to_string()]
        );
    }

    #[test]
    fn env_errors_name_the_variable() {
        let env = vec![("HERALD_SERVER__LISTENN".to_string(), "x".to_string())];
        let msg = Config::load(None, env).expect_err("unknown").to_string();
        assert!(
            msg.contains("HERALD_SERVER__LISTENN") && msg.contains("server.listenn"),
            "{msg}"
        );
        let env = vec![(
            "HERALD_SESSION__MAX_SUBSCRIPTIONS".to_string(),
            "lots".to_string(),
        )];
        let msg = Config::load(None, env).expect_err("bad").to_string();
        assert!(
            msg.contains("HERALD_SESSION__MAX_SUBSCRIPTIONS")
                && msg.contains("session.max_subscriptions"),
            "{msg}"
        );
        let env = vec![(
            "HERALD_SESSION__QUEUE_MAX_BYTES".to_string(),
            "10".to_string(),
        )];
        let msg = Config::load(None, env).expect_err("range").to_string();
        assert!(
            msg.contains("HERALD_SESSION__QUEUE_MAX_BYTES") && msg.contains("at least 1024"),
            "{msg}"
        );
    }
}
