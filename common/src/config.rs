//! Layered configuration: embedded defaults, then TOML files in the order given (later wins; a
//! deployment layers an overlay's file over its base file), then environment variables named
//! `HEXPULSE__SECTION__KEY` (double underscores separate levels; keys are lower-cased).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "HEXPULSE__";

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

/// Loads `T` from `defaults` (TOML text embedded in the binary), then each of `files` in order, then
/// the env.
pub fn load<T: DeserializeOwned, P: AsRef<Path>>(
    defaults: &str,
    files: &[P],
) -> Result<T, ConfigError> {
    load_with_env(defaults, files, ENV_PREFIX)
}

/// As [`load`], with another env prefix (tests use this to stay isolated from the process env).
pub fn load_with_env<T: DeserializeOwned, P: AsRef<Path>>(
    defaults: &str,
    files: &[P],
    env_prefix: &str,
) -> Result<T, ConfigError> {
    let mut fig = Figment::new().merge(Toml::string(defaults));
    for path in files {
        let path = path.as_ref();
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

/// `host:port` (or `[v6]:port`) split into the host, without brackets, and the port; `None` when
/// the port is missing or not a number, or the host is empty.
pub fn host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
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
        let none: &[&Path] = &[];
        let c: Cfg = load_with_env(defaults, none, "HEXPULSE_TEST_NOPE__").unwrap();
        assert_eq!(c.server.port, 1);
        assert_eq!(c.server.timeout, std::time::Duration::from_secs(15));
        let bad = "[server]\nport = 1\ntimeout = \"15s\"\nprot = 2\n";
        let err = load_with_env::<Cfg, &Path>(bad, none, "HEXPULSE_TEST_NOPE__").unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        assert!(
            load_with_env::<Cfg, _>(defaults, &[Path::new("/nonexistent.toml")], "X__").is_err()
        );
        // Files layer in order: the second one's keys win, the first one's others stay.
        let dir = std::env::temp_dir().join(format!("hexpulse-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.toml"), dir.join("b.toml"));
        std::fs::write(&a, "[server]\nport = 2\ntimeout = \"3s\"\n").unwrap();
        std::fs::write(&b, "[server]\nport = 4\n").unwrap();
        let c: Cfg = load_with_env(defaults, &[&a, &b], "X__").unwrap();
        assert_eq!(c.server.port, 4);
        assert_eq!(c.server.timeout, std::time::Duration::from_secs(3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_port_splits_names_v4_and_v6() {
        assert_eq!(
            host_port("mqtt.local:1883"),
            Some(("mqtt.local".into(), 1883))
        );
        assert_eq!(host_port("127.0.0.1:1"), Some(("127.0.0.1".into(), 1)));
        assert_eq!(host_port("[::1]:1883"), Some(("::1".into(), 1883)));
        for bad in ["mqtt.local", "mqtt.local:", ":1883", "h:70000", "h:x"] {
            assert_eq!(host_port(bad), None, "{bad}");
        }
    }
}
