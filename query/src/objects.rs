//! Small JSON objects kept next to the lake's tables on its object store, one per id under a prefix
//! (pilots, alert rules): created with a conditional put, listed, read, edited and deleted. They
//! survive restarts, and every replica of a service sees the same set.

use hexpulse_lake::{Lake, LakeError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a request about a stored object (a pilot, an alert rule) was refused or failed: the same
/// three ways for each kind, answered alike (`http::error::object_error`).
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// 400: the request is wrong; the code names what (`bad_area`, `bad_rule`, `unknown_metric`,
    /// `area_too_large`, ...).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// 409: as many objects of the kind are stored as the service keeps; the code names the kind
    /// (`too_many_pilots`, `too_many_rules`).
    #[error("{message}")]
    Full { code: &'static str, message: String },
    /// 503: the lake's store failed.
    #[error("object store: {0}")]
    Store(#[from] LakeError),
}

/// A 400 with its code.
pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> ObjectError {
    ObjectError::Invalid {
        code,
        message: message.into(),
    }
}

/// The objects under one prefix of the lake's store.
pub(crate) struct Objects {
    lake: Lake,
    prefix: &'static str,
}

/// Ids are 16 lowercase hex digits: nothing else names a stored object.
pub fn valid_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Objects {
    pub(crate) fn new(lake: Lake, prefix: &'static str) -> Objects {
        Objects { lake, prefix }
    }

    pub(crate) fn lake(&self) -> &Lake {
        &self.lake
    }

    fn path(&self, id: &str) -> String {
        format!("{}{id}.json", self.prefix)
    }

    /// The objects stored.
    pub(crate) async fn count(&self) -> Result<usize, LakeError> {
        Ok(self.lake.list(self.prefix).await?.len())
    }

    /// Stores `value` as `id`, unless an object of that id exists: whether it was stored.
    pub(crate) async fn create<T: Serialize>(
        &self,
        id: &str,
        value: &T,
    ) -> Result<bool, LakeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| LakeError::Corrupt {
            path: self.path(id),
            message: e.to_string(),
        })?;
        self.lake.put_if_absent(&self.path(id), bytes).await
    }

    /// Rewrites the object `id` with `value` (the caller has read it: an edit).
    pub(crate) async fn replace<T: Serialize>(&self, id: &str, value: &T) -> Result<(), LakeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| LakeError::Corrupt {
            path: self.path(id),
            message: e.to_string(),
        })?;
        self.lake.put(&self.path(id), bytes.into()).await
    }

    /// Every object, in the store's order.
    pub(crate) async fn list<T: DeserializeOwned>(&self) -> Result<Vec<T>, LakeError> {
        let mut out = Vec::new();
        for p in self.lake.list(self.prefix).await? {
            if !p.ends_with(".json") {
                continue;
            }
            if let Some(v) = self.read(&p).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// One object, if stored (none for an id that is not [`valid_id`]).
    pub(crate) async fn get<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, LakeError> {
        if !valid_id(id) {
            return Ok(None);
        }
        self.read(&self.path(id)).await
    }

    /// Deletes an object; whether there was one.
    pub(crate) async fn delete(&self, id: &str) -> Result<bool, LakeError> {
        if !valid_id(id) || !self.lake.exists(&self.path(id)).await? {
            return Ok(false);
        }
        self.lake.delete(&self.path(id)).await?;
        Ok(true)
    }

    async fn read<T: DeserializeOwned>(&self, p: &str) -> Result<Option<T>, LakeError> {
        let Some(bytes) = self.lake.get(p).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LakeError::Corrupt {
                path: p.to_string(),
                message: e.to_string(),
            })
    }
}
