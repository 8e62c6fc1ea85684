//! Bearer tokens → roles → endpoint groups.
//!
//! Tokens are configured as hex SHA-256 digests; a presented token is hashed and compared against
//! every configured digest in constant time (no early exit, no map lookup keyed by the secret).
//! No token or an unknown one is 401, a known token whose role lacks the endpoint's group is 403;
//! both answer a JSON error body. Groups listed as public need no token.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

/// The endpoint groups (see [`AuthConfig`]).
pub const GROUPS: [&str; 14] = [
    "coverage",
    "sensors",
    "road",
    "epochs",
    "sql",
    "raw",
    "metrics",
    "map",
    "meta",
    "devices",
    "pilots",
    "pilots_write",
    "alerts",
    "alerts_write",
];

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("token {name:?}: sha256 must be 64 hex digits")]
    BadDigest { name: String },
    #[error("token {name:?}: role {role:?} is not configured under [query.auth.roles]")]
    UnknownRole { name: String, role: String },
    #[error("unknown endpoint group {0:?} (known: {GROUPS:?} or \"*\")")]
    UnknownGroup(String),
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Token { name: String, role: String },
}

impl Caller {
    pub fn label(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Token { name, .. } => name,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401: no token where one is needed, or a token nobody configured.
    Unauthenticated(&'static str),
    /// 403: the token's role may not use this group.
    Forbidden { role: String, group: String },
}

struct Token {
    name: String,
    role: String,
    digest: [u8; 32],
}

/// The checked auth configuration.
pub struct Auth {
    tokens: Vec<Token>,
    roles: std::collections::BTreeMap<String, Vec<String>>,
    public: Vec<String>,
}

fn check_groups(groups: &[String]) -> Result<(), AuthConfigError> {
    for g in groups {
        if g != "*" && !GROUPS.contains(&g.as_str()) {
            return Err(AuthConfigError::UnknownGroup(g.clone()));
        }
    }
    Ok(())
}

fn grants(groups: &[String], group: &str) -> bool {
    groups.iter().any(|g| g == "*" || g == group)
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Result<Auth, AuthConfigError> {
        check_groups(&cfg.public)?;
        for gs in cfg.roles.values() {
            check_groups(gs)?;
        }
        let mut tokens = Vec::new();
        for t in &cfg.tokens {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(t.sha256.trim(), &mut digest).map_err(|_| {
                AuthConfigError::BadDigest {
                    name: t.name.clone(),
                }
            })?;
            if !cfg.roles.contains_key(&t.role) {
                return Err(AuthConfigError::UnknownRole {
                    name: t.name.clone(),
                    role: t.role.clone(),
                });
            }
            tokens.push(Token {
                name: t.name.clone(),
                role: t.role.clone(),
                digest,
            });
        }
        Ok(Auth {
            tokens,
            roles: cfg.roles.clone(),
            public: cfg.public.clone(),
        })
    }

    /// Whether anonymous callers may use `group`. `"*"` among the public groups opens every group
    /// but `raw` (dashcam tracks and rejected messages): that one is public only when named.
    pub fn is_public(&self, group: &str) -> bool {
        self.public
            .iter()
            .any(|g| g == group || (g == "*" && group != "raw"))
    }

    /// Whether `caller` may use `group`.
    pub fn allows(&self, caller: &Caller, group: &str) -> bool {
        match caller {
            Caller::Anonymous => self.is_public(group),
            Caller::Token { role, .. } => {
                self.is_public(group) || self.roles.get(role).is_some_and(|gs| grants(gs, group))
            }
        }
    }

    /// The caller behind an `Authorization` header value (or none).
    pub fn identify(&self, authorization: Option<&str>) -> Result<Caller, Denied> {
        let Some(value) = authorization else {
            return Ok(Caller::Anonymous);
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(Denied::Unauthenticated(
                "the Authorization header must be `Bearer <token>`",
            ));
        };
        self.identify_token(token)
    }

    /// The caller behind a bare token (a PostgreSQL or Flight password).
    pub fn identify_token(&self, token: &str) -> Result<Caller, Denied> {
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            // Every digest is compared, whatever matched before.
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some(t);
            }
        }
        match found {
            Some(t) => Ok(Caller::Token {
                name: t.name.clone(),
                role: t.role.clone(),
            }),
            None => Err(Denied::Unauthenticated("unknown token")),
        }
    }

    /// Identifies the caller and checks `group` in one step.
    pub fn check(&self, authorization: Option<&str>, group: &str) -> Result<Caller, Denied> {
        self.allowed(self.identify(authorization)?, group)
    }

    /// [`Auth::check`] for a bare token.
    pub fn check_token(&self, token: &str, group: &str) -> Result<Caller, Denied> {
        self.allowed(self.identify_token(token)?, group)
    }

    fn allowed(&self, caller: Caller, group: &str) -> Result<Caller, Denied> {
        if self.allows(&caller, group) {
            return Ok(caller);
        }
        match caller {
            Caller::Anonymous => Err(Denied::Unauthenticated(
                "this endpoint needs a bearer token (Authorization: Bearer <token>)",
            )),
            Caller::Token { role, .. } => Err(Denied::Forbidden {
                role,
                group: group.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn sha(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    fn auth() -> Auth {
        let mut cfg = AuthConfig {
            public: vec!["meta".into()],
            ..Default::default()
        };
        cfg.roles
            .insert("planner".into(), vec!["sensors".into(), "sql".into()]);
        cfg.roles.insert("admin".into(), vec!["*".into()]);
        cfg.tokens.push(TokenConfig {
            name: "p".into(),
            role: "planner".into(),
            sha256: sha("planner-secret"),
        });
        cfg.tokens.push(TokenConfig {
            name: "a".into(),
            role: "admin".into(),
            sha256: sha("admin-secret"),
        });
        Auth::new(&cfg).unwrap()
    }

    #[test]
    fn tokens_roles_and_public_groups() {
        let a = auth();
        assert_eq!(a.check(None, "meta"), Ok(Caller::Anonymous));
        assert!(matches!(
            a.check(None, "sql"),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            a.check(Some("Bearer nope"), "meta"),
            Err(Denied::Unauthenticated("unknown token"))
        ));
        assert!(matches!(
            a.check(Some("Basic abc"), "sql"),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(a.check(Some("Bearer planner-secret"), "sql").is_ok());
        assert_eq!(
            a.check(Some("Bearer planner-secret"), "raw"),
            Err(Denied::Forbidden {
                role: "planner".into(),
                group: "raw".into()
            })
        );
        assert!(a.check(Some("Bearer admin-secret"), "raw").is_ok());
    }

    #[test]
    fn a_public_wildcard_opens_everything_but_raw_rows() {
        let mut cfg = AuthConfig {
            public: vec!["*".into()],
            ..AuthConfig::default()
        };
        let a = Auth::new(&cfg).unwrap();
        assert_eq!(a.check(None, "sql"), Ok(Caller::Anonymous));
        assert!(a.check(None, "raw").is_err());
        cfg.public.push("raw".into());
        let a = Auth::new(&cfg).unwrap();
        assert_eq!(a.check(None, "raw"), Ok(Caller::Anonymous));
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let mut cfg = AuthConfig::default();
        cfg.public.push("everything".into());
        assert!(matches!(
            Auth::new(&cfg),
            Err(AuthConfigError::UnknownGroup(_))
        ));
        let mut cfg = AuthConfig::default();
        cfg.tokens.push(TokenConfig {
            name: "x".into(),
            role: "ghost".into(),
            sha256: sha("x"),
        });
        assert!(matches!(
            Auth::new(&cfg),
            Err(AuthConfigError::UnknownRole { .. })
        ));
        cfg.tokens[0].sha256 = "zz".into();
        assert!(matches!(
            Auth::new(&cfg),
            Err(AuthConfigError::BadDigest { .. })
        ));
    }
}
