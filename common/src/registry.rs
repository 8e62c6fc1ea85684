//! The device registry: which devices exist, with kind, public key, asserted location and owner.
//!
//! Loaded from a JSON or CSV file (by extension) and reloaded when the file changes
//! ([`Registry::watch`] polls its modification time and size). Ingest's admin endpoints edit it with
//! [`Registry::upsert`] and [`Registry::remove`], which rewrite the file atomically, so processors and
//! the query service reading the same file see the same devices. Weak keys are refused on every path.
//!
//! JSON: `[{"public_key": "<hex>", "kind": "heartbeat", "lat": 52.5, "lng": 13.4, "owner": "alice"}]`.
//! CSV: a header `public_key,kind,lat,lng,owner` and one row per device.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
// Keys are registered devices' public keys, chosen by nobody who could aim them at one bucket, so a
// fast hash needs no DoS resistance; lookups of unknown keys cannot lengthen the table's probes.
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::KindName;
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

/// One registered device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Ed25519 public key, 64 hex characters.
    pub public_key: String,
    pub kind: KindName,
    /// Asserted location (where the owner says the device is installed).
    pub lat: f64,
    pub lng: f64,
    pub owner: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading registry file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("registry file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("device {key}: {message}")]
    InvalidDevice { key: String, message: String },
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl Device {
    /// Decoded key bytes, refusing malformed and weak keys.
    pub fn key_bytes(&self) -> Result<[u8; 32]> {
        self.parsed_key().map(|k| k.to_bytes())
    }

    /// The parsed key, refusing malformed and weak keys and out-of-range asserted locations.
    pub fn parsed_key(&self) -> Result<VerifyingKey> {
        let invalid = |message: String| RegistryError::InvalidDevice {
            key: self.public_key.clone(),
            message,
        };
        let bytes = hex::decode(&self.public_key)
            .map_err(|e| invalid(format!("public_key is not hex: {e}")))?;
        let key = sign::parse_public_key(&bytes).map_err(|e| invalid(e.to_string()))?;
        if !(-90.0..=90.0).contains(&self.lat) || !(-180.0..=180.0).contains(&self.lng) {
            return Err(invalid(format!(
                "asserted location ({}, {}) out of range",
                self.lat, self.lng
            )));
        }
        Ok(key)
    }
}

/// See [`Registry::read`].
pub struct RegistryView<'a>(std::sync::RwLockReadGuard<'a, Snapshot>);

impl RegistryView<'_> {
    pub fn get(&self, key: &[u8]) -> Option<&Device> {
        self.get_with_key(key).map(|(d, _)| d)
    }

    /// The device and its parsed (decompressed, non-weak) public key.
    pub fn get_with_key(&self, key: &[u8]) -> Option<(&Device, &VerifyingKey)> {
        let key: &[u8; 32] = key.try_into().ok()?;
        self.0.devices.get(key).map(|(d, k)| (d, k))
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    devices: HashMap<[u8; 32], (Device, VerifyingKey)>,
    stamp: Option<(SystemTime, u64)>,
}

/// A shared, reloadable registry. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<Snapshot>>,
    /// Bumped under the write lock by every change of the devices ([`Registry::generation`]).
    generation: Arc<AtomicU64>,
    path: Option<PathBuf>,
}

impl Registry {
    /// An in-memory registry with no backing file.
    pub fn from_devices(devices: Vec<Device>) -> Result<Self> {
        let reg = Registry::default();
        reg.replace(devices)?;
        Ok(reg)
    }

    /// Loads `path`; a missing file is an empty registry that is created on the first upsert.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let reg = Registry {
            inner: Default::default(),
            generation: Default::default(),
            path: Some(path.into()),
        };
        reg.reload_if_changed()?;
        Ok(reg)
    }

    fn replace(&self, devices: Vec<Device>) -> Result<()> {
        let map = keyed(devices)?;
        let mut snap = self.inner.write().expect("registry lock");
        snap.devices = map;
        self.changed();
        Ok(())
    }

    /// A number that changes whenever the devices change, so that a caller may keep what it looked
    /// up while the number stays. Read it before the look-up: an answer is then never newer than
    /// the number kept with it claims, only older, and the next change is seen.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Called with the write lock held, after the change.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The device with this public key.
    pub fn get(&self, key: &[u8]) -> Option<Device> {
        let key: &[u8; 32] = key.try_into().ok()?;
        self.inner
            .read()
            .expect("registry lock")
            .devices
            .get(key)
            .map(|(d, _)| d.clone())
    }

    /// A read view for many look-ups under one lock. Do not hold it across an `.await`.
    pub fn read(&self) -> RegistryView<'_> {
        RegistryView(self.inner.read().expect("registry lock"))
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("registry lock").devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All devices, sorted by key.
    pub fn devices(&self) -> Vec<Device> {
        let mut v: Vec<Device> = self
            .inner
            .read()
            .expect("registry lock")
            .devices
            .values()
            .map(|(d, _)| d.clone())
            .collect();
        v.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        v
    }

    /// Adds or replaces a device, persisting the file if there is one.
    pub fn upsert(&self, device: Device) -> Result<()> {
        let key = device.parsed_key()?;
        self.edit(|m| {
            m.insert(key.to_bytes(), (device, key));
        })
    }

    /// Adds or replaces many devices with one file write.
    pub fn upsert_all(&self, devices: Vec<Device>) -> Result<()> {
        let keyed = devices
            .into_iter()
            .map(|d| {
                let k = d.parsed_key()?;
                Ok((k.to_bytes(), (d, k)))
            })
            .collect::<Result<Vec<_>>>()?;
        self.edit(|m| m.extend(keyed))
    }

    /// Removes a device; returns whether it existed.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        let Ok(key) = <[u8; 32]>::try_from(key) else {
            return Ok(false);
        };
        let mut existed = false;
        self.edit(|m| existed = m.remove(&key).is_some())?;
        Ok(existed)
    }

    fn edit(&self, f: impl FnOnce(&mut HashMap<[u8; 32], (Device, VerifyingKey)>)) -> Result<()> {
        let mut snap = self.inner.write().expect("registry lock");
        f(&mut snap.devices);
        self.changed();
        if let Some(path) = &self.path {
            let mut devices: Vec<&Device> = snap.devices.values().map(|(d, _)| d).collect();
            devices.sort_by(|a, b| a.public_key.cmp(&b.public_key));
            write_file(path, &devices)?;
            snap.stamp = file_stamp(path);
        }
        Ok(())
    }

    /// Re-reads the file if its modification time or size changed. Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        // Under the lock from the stamp to the swap: an edit (which writes the file under it)
        // falling between the file's read and the swap would see its device dropped from memory,
        // and from the file at the next edit, which writes what memory holds.
        let mut snap = self.inner.write().expect("registry lock");
        let stamp = file_stamp(path);
        if stamp == snap.stamp {
            return Ok(false);
        }
        let devices = if stamp.is_some() {
            read_file(path)?
        } else {
            Vec::new()
        };
        snap.devices = keyed(devices)?;
        snap.stamp = stamp;
        self.changed();
        Ok(true)
    }

    /// Polls the file every `every` until `stop` is cancelled. A bad edit is logged and the previous
    /// devices are kept.
    pub async fn watch(self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        crate::tasks::every(every, stop, || {
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(devices = self.len(), "device registry reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "device registry not reloaded; keeping the previous one")
                }
            }
            std::future::ready(())
        })
        .await;
    }
}

/// Devices by their parsed keys.
fn keyed(devices: Vec<Device>) -> Result<HashMap<[u8; 32], (Device, VerifyingKey)>> {
    let mut map = HashMap::with_capacity_and_hasher(devices.len(), Default::default());
    for d in devices {
        let k = d.parsed_key()?;
        map.insert(k.to_bytes(), (d, k));
    }
    Ok(map)
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// Reads a registry file (JSON array, or CSV by extension).
pub fn read_file(path: &Path) -> Result<Vec<Device>> {
    let text = std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.into(),
        source,
    })?;
    let parse = |message: String| RegistryError::Parse {
        path: path.into(),
        message,
    };
    if is_csv(path) {
        let mut rdr = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_slice());
        rdr.deserialize()
            .collect::<std::result::Result<Vec<Device>, _>>()
            .map_err(|e| parse(e.to_string()))
    } else {
        serde_json::from_slice(&text).map_err(|e| parse(e.to_string()))
    }
}

fn write_file(path: &Path, devices: &[&Device]) -> Result<()> {
    let io = |source| RegistryError::Io {
        path: path.into(),
        source,
    };
    let bytes = if is_csv(path) {
        let mut w = csv::Writer::from_writer(Vec::new());
        for d in devices {
            w.serialize(d).map_err(|e| RegistryError::Parse {
                path: path.into(),
                message: e.to_string(),
            })?;
        }
        w.into_inner().map_err(|e| io(e.into_error()))?
    } else {
        serde_json::to_vec_pretty(devices).expect("devices serialise")
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(i: u8) -> Device {
        let key = hexpulse_schemas::sign::signing_key_from_seed([i; 32]);
        Device {
            public_key: hex::encode(key.verifying_key().as_bytes()),
            kind: KindName::Heartbeat,
            lat: 52.5,
            lng: 13.4,
            owner: format!("owner{i}"),
        }
    }

    /// Edits racing the file watcher's reloads keep every device, in memory and in the file (a
    /// reload that read the file before an edit and swapped after it dropped the edit's device).
    #[test]
    fn edits_racing_reloads_lose_no_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.json");
        let reg = Registry::open(&path).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (reg, done) = (reg.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    reg.reload_if_changed().unwrap();
                }
            })
        };
        for i in 1..=150u8 {
            reg.upsert(device(i)).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap();
        reg.reload_if_changed().unwrap();
        assert_eq!(reg.len(), 150);
        assert_eq!(read_file(&path).unwrap().len(), 150);
    }

    #[test]
    fn weak_keys_are_refused() {
        let mut weak = device(1);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        weak.public_key = hex::encode(identity);
        assert!(Registry::from_devices(vec![weak.clone()]).is_err());
        let reg = Registry::from_devices(vec![device(2)]).unwrap();
        assert!(reg.upsert(weak).is_err());
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn file_round_trip_json_and_csv_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["devices.json", "devices.csv"] {
            let path = dir.path().join(name);
            let _ = std::fs::remove_file(&path);
            let reg = Registry::open(&path).unwrap();
            assert!(reg.is_empty());
            reg.upsert(device(1)).unwrap();
            reg.upsert(device(2)).unwrap();
            let other = Registry::open(&path).unwrap();
            assert_eq!(other.devices(), reg.devices());
            assert!(
                reg.remove(&hex::decode(&device(1).public_key).unwrap())
                    .unwrap()
            );
            assert!(other.reload_if_changed().unwrap() || other.len() == 1);
            assert_eq!(other.devices(), vec![device(2)]);
        }
    }
}
