//! Pack config values, cluster-wide: the `configs` bucket (`<pack>` →
//! [`StoredConfig`]), written by registration (from `<configs dir>/<pack>.yaml`,
//! as `st2ctl reload --register-configs` does) and by `PUT /configs/{pack}`,
//! and [`ConfigCache`], each node's mirrored copy that runs read
//! synchronously. A literal value of a `secret: true` item is sealed with
//! the cluster's datastore key before it is stored. [`resolve`] gives a
//! run its config (rendered, secrets opened, defaults filled); the resolved
//! config is handed to the runner and stored nowhere.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use squall_domain::loader::LoadErrors;
use squall_domain::model::PackBundle;
use squall_domain::pack_config::{self, ConfigError};
use squall_domain::registration::Mode;
use squall_domain::secrets::Cipher;
use squall_domain::template::Renderer;

use crate::bus::{from_bytes, to_bytes, Bus};
use crate::catalog::Catalog;
use crate::error::{bus_err, EngineError};
use crate::mirror::{Mirror, Mirrored};

/// The bucket of pack config values.
pub const CONFIGS_BUCKET: &str = "configs";

/// The bucket this module keeps, as created with `replicas` replicas.
pub fn buckets(replicas: usize) -> Vec<kv::Config> {
    vec![crate::bus::bucket(
        CONFIGS_BUCKET,
        "Pack config values by pack.",
        1,
        replicas,
    )]
}

/// Version of the stored [`StoredConfig`] layout.
pub const CONFIG_VERSION: u32 = 1;

/// One pack's config values as stored: raw (dynamic values unrendered),
/// with the schema's defaults filled when they were checked, literal
/// secrets sealed.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConfig {
    #[serde(default)]
    pub v: u32,
    pub values: Map<String, Value>,
    /// Paths of the values sealed with the datastore key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<Vec<String>>,
    /// SHA-256 of the config file last registered (`PUT /configs` keeps
    /// it): a node start takes its file only when that differs, so a value
    /// set through the API survives the restart of a node whose file was
    /// not edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_digest: Option<String>,
}

impl fmt::Debug for StoredConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredConfig")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl StoredConfig {
    /// The values with their sealed secrets opened.
    pub fn open(
        &self,
        pack: &str,
        cipher: Option<&Cipher>,
    ) -> Result<Map<String, Value>, ConfigError> {
        if self.sealed.is_empty() {
            return Ok(self.values.clone());
        }
        let sealed_err = |field: String, message: String| ConfigError::Sealed {
            pack: pack.to_string(),
            field,
            message,
        };
        let Some(cipher) = cipher else {
            return Err(sealed_err(
                self.sealed[0].join("."),
                "no datastore key to open it with".into(),
            ));
        };
        pack_config::unseal(&self.values, &self.sealed, cipher)
            .map_err(|(field, e)| sealed_err(field, e.to_string()))
    }
}

/// Stores `values` as `pack`'s config (checked against `schema`, whose
/// secret items' literal values are sealed with `cipher`); returns the
/// bucket revision.
pub async fn put(
    bus: &Bus,
    cipher: &Cipher,
    pack: &str,
    schema: Option<&Map<String, Value>>,
    values: &Map<String, Value>,
    file_digest: Option<String>,
) -> Result<u64, EngineError> {
    let (values, sealed) = match schema {
        Some(schema) => pack_config::seal(values, schema, cipher),
        None => (values.clone(), Vec::new()),
    };
    let stored = StoredConfig {
        v: CONFIG_VERSION,
        values,
        sealed,
        file_digest,
    };
    bus.bucket(CONFIGS_BUCKET)?
        .put(pack, to_bytes(&stored)?)
        .await
        .map_err(|e| bus_err("store pack config", e))
}

/// A pack's config as its file gives it, checked against the pack's schema.
#[derive(Clone)]
pub struct FileConfig {
    pub pack: String,
    pub schema: Option<Map<String, Value>>,
    pub values: Map<String, Value>,
    pub digest: String,
}

impl fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileConfig")
            .field("pack", &self.pack)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Reads `<configs dir>/<pack>.yaml` for the pack in `dir`; `None` when
/// there is no configs directory or no file. Problems are the pack's
/// registration errors, each with file, line and field.
pub fn read_file(
    configs_dir: Option<&Path>,
    dir: &Path,
    bundle: &PackBundle,
) -> Result<Option<FileConfig>, LoadErrors> {
    let Some(configs_dir) = configs_dir else {
        return Ok(None);
    };
    let pack = &bundle.pack.pack_ref;
    let values = pack_config::read_file(configs_dir, pack, bundle.config_schema.as_ref()).map_err(
        |errors| LoadErrors {
            pack: dir.to_path_buf(),
            errors,
        },
    )?;
    Ok(values.map(|values| FileConfig {
        pack: pack.clone(),
        schema: bundle.config_schema.clone(),
        values,
        digest: file_digest(&pack_config::config_file(configs_dir, pack)),
    }))
}

fn file_digest(file: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(file).unwrap_or_default()))
}

/// Stores a config read from its file, as registration in `mode` does: an
/// explicit registration always takes the file; a node start only when the
/// file changed since it was last taken (or nothing is stored). Returns
/// whether it was stored.
pub async fn store_file(
    bus: &Bus,
    cipher: &Cipher,
    file: FileConfig,
    mode: Mode,
) -> Result<bool, EngineError> {
    if mode == Mode::Start {
        if let Some(stored) = get(bus, &file.pack).await? {
            if stored.file_digest.as_deref() == Some(file.digest.as_str()) {
                return Ok(false);
            }
        }
    }
    put(
        bus,
        cipher,
        &file.pack,
        file.schema.as_ref(),
        &file.values,
        Some(file.digest),
    )
    .await?;
    tracing::info!(pack = %file.pack, "pack config registered from its file");
    Ok(true)
}

/// Writes `values` to `<configs dir>/<pack>.yaml` (as StackStorm's
/// `PUT /configs` does, so a later registration reads what the API set).
pub fn write_file(
    configs_dir: &Path,
    pack: &str,
    values: &Map<String, Value>,
) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(configs_dir)?;
    let file = pack_config::config_file(configs_dir, pack);
    let text = pack_config::file_text(values).map_err(std::io::Error::other)?;
    let tmp = configs_dir.join(format!(".{pack}.yaml.tmp"));
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, &file)
}

/// Reads one pack's stored config from the bucket.
pub async fn get(bus: &Bus, pack: &str) -> Result<Option<StoredConfig>, EngineError> {
    match bus
        .bucket(CONFIGS_BUCKET)?
        .get(pack)
        .await
        .map_err(|e| bus_err("read pack config", e))?
    {
        Some(bytes) => Ok(Some(from_bytes(pack, &bytes)?)),
        None => Ok(None),
    }
}

/// A node's live copy of the `configs` bucket, with the node's audit
/// emitter (opening a config's secrets for a run is audited).
#[derive(Clone)]
pub struct ConfigCache(Mirrored<ConfigEntries>, crate::audit::Audit);

impl fmt::Debug for ConfigCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigCache")
    }
}

/// Every stored config by pack.
#[derive(Default)]
pub struct ConfigEntries(BTreeMap<String, StoredConfig>);

impl Mirror for ConfigEntries {
    fn apply(&mut self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match from_bytes::<StoredConfig>(&entry.key, &entry.value) {
                Ok(config) => {
                    self.0.insert(entry.key.clone(), config);
                }
                Err(e) => tracing::warn!(pack = %entry.key, error = %e, "unreadable pack config"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.0.remove(&entry.key);
            }
        }
    }
}

impl ConfigCache {
    /// Starts mirroring the bucket; returns once its contents are loaded.
    pub async fn start(bus: &Bus) -> Result<ConfigCache, EngineError> {
        Ok(ConfigCache(
            Mirrored::start(bus.bucket(CONFIGS_BUCKET)?, CONFIGS_BUCKET).await?,
            bus.audit.clone(),
        ))
    }

    /// One pack's stored config (its literal secrets sealed).
    pub fn get(&self, pack: &str) -> Option<StoredConfig> {
        self.0.read().0.get(pack).cloned()
    }

    /// Every stored config, by pack.
    pub fn all(&self) -> BTreeMap<String, StoredConfig> {
        self.0.read().0.clone()
    }
}

/// The config of `pack` as a run of `user` gets it (StackStorm's
/// `ContentPackConfigLoader`): the stored values checked against the
/// pack's current schema, rendered, decrypted, with defaults (no stored
/// values: the defaults alone).
pub fn resolve(
    configs: &ConfigCache,
    catalog: &Catalog,
    pack: &str,
    user: &str,
    renderer: &Renderer,
    kv: &crate::keys::KeyCache,
) -> Result<Map<String, Value>, ConfigError> {
    let schema = catalog
        .packs
        .get(pack)
        .and_then(|b| b.config_schema.clone())
        .unwrap_or_default();
    let values = match configs.get(pack) {
        Some(stored) => {
            // Audited below as the config's items, not as datastore keys.
            let opened =
                crate::audit::decrypt::self_audited(|| stored.open(pack, renderer.cipher()))?;
            if !stored.sealed.is_empty() {
                let items: Vec<String> = stored.sealed.iter().map(|p| p.join(".")).collect();
                crate::audit::decrypt::config_opened(&configs.1, pack, &items, user);
            }
            Some(opened)
        }
        None if schema.is_empty() => return Ok(Map::new()),
        None => None,
    };
    let who = || crate::audit::decrypt::For {
        user: user.to_string(),
        purpose: "pack_config",
        ..Default::default()
    };
    crate::audit::decrypt::within(kv, who, || {
        pack_config::resolve(pack, &schema, values.as_ref(), user, renderer, kv)
    })
}
