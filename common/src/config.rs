//! Layered configuration: embedded defaults, then an optional TOML file, then environment variables
//! named `HEXPULSE__SECTION__KEY` (double underscores separate levels; keys are lower-cased).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "HEXPULSE__";

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

/// Loads `T` from `defaults` (TOML text embedded in the binary), then `file` if given, then the env.
pub fn load<T: DeserializeOwned>(defaults: &str, file: Option<&Path>) -> Result<T, ConfigError> {
    load_with_env(defaults, file, ENV_PREFIX)
}

/// As [`load`], with another env prefix (tests use this to stay isolated from the process env).
pub fn load_with_env<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<T, ConfigError> {
    let mut fig = Figment::new().merge(Toml::string(defaults));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(Box::new(figment::Error::from(format!(
                "config file {} does not exist",
                path.display()
            )))));
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(Env::prefixed(env_prefix).split("__"));
    fig.extract().map_err(|e| ConfigError(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        server: Server,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Server {
        port: u16,
        #[serde(with = "humantime_serde")]
        timeout: std::time::Duration,
    }

    #[test]
    fn layers_and_unknown_fields() {
        let defaults = "[server]\nport = 1\ntimeout = \"15s\"\n";
        let c: Cfg = load_with_env(defaults, None, "HEXPULSE_TEST_NOPE__").unwrap();
        assert_eq!(c.server.port, 1);
        assert_eq!(c.server.timeout, std::time::Duration::from_secs(15));
        let bad = "[server]\nport = 1\ntimeout = \"15s\"\nprot = 2\n";
        let err = load_with_env::<Cfg>(bad, None, "HEXPULSE_TEST_NOPE__").unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        assert!(
            load_with_env::<Cfg>(defaults, Some(Path::new("/nonexistent.toml")), "X__").is_err()
        );
    }
}
