//! The datastore: StackStorm's key-value pairs, in the `keys` bucket.
//!
//! A pair lives in the `system` scope or in one user's scope. Secret values
//! are sealed with the cluster's [`Cipher`] before they are stored, so the
//! bucket never holds them in the clear. A pair may carry an expiry; an
//! expired pair reads as absent and is purged when met.
//!
//! | key | value |
//! | --- | --- |
//! | `system.<hex name>` | [`KeyRecord`] |
//! | `user.<hex user>.<hex name>` | [`KeyRecord`] |
//!
//! Names are hex-encoded because StackStorm allows characters (`:`, `/`,
//! spaces) that NATS keys do not.

use std::collections::HashMap;
use std::fmt;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use squall_domain::secrets::Cipher;
use squall_domain::template::{KeyValueLookup, KvScope};
use squall_domain::time::{self, Timestamp};

use crate::bus::{from_bytes, to_bytes, Bus};
use crate::error::{bus_err, EngineError};
use crate::mirror::{Mirror, Mirrored};

/// KV bucket of the datastore.
pub const KEYS_BUCKET: &str = "keys";

/// The bucket this module keeps, as created with `replicas` replicas.
pub fn buckets(replicas: usize) -> Vec<kv::Config> {
    vec![crate::bus::bucket(
        KEYS_BUCKET,
        "The datastore; secret values sealed.",
        1,
        replicas,
    )]
}
/// Version of [`KeyRecord`].
pub const KEY_RECORD_VERSION: u32 = 1;

/// Where a pair lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "user", rename_all = "lowercase")]
pub enum Scope {
    System,
    User(String),
}

impl Scope {
    /// StackStorm's name of the scope: `st2kv.system` or `st2kv.user`.
    pub fn st2_name(&self) -> &'static str {
        match self {
            Scope::System => "st2kv.system",
            Scope::User(_) => "st2kv.user",
        }
    }

    fn prefix(&self) -> String {
        match self {
            Scope::System => "system.".into(),
            Scope::User(u) => format!("user.{}.", hex::encode(u)),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix(), hex::encode(name))
    }

    /// The scope and name a bucket key stands for.
    fn parse_key(key: &str) -> Option<(Scope, String)> {
        let text = |h: &str| hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok());
        match key.split('.').collect::<Vec<_>>().as_slice() {
            ["system", name] => Some((Scope::System, text(name)?)),
            ["user", user, name] => Some((Scope::User(text(user)?), text(name)?)),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::System => f.write_str("system"),
            Scope::User(u) => write!(f, "user {u}"),
        }
    }
}

/// One stored pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    #[serde(default)]
    pub v: u32,
    pub name: String,
    /// The value; for a secret, sealed by the cluster's cipher.
    pub value: String,
    #[serde(default)]
    pub secret: bool,
    pub scope: Scope,
    #[serde(with = "squall_domain::time::serde_ts")]
    pub updated_at: Timestamp,
    #[serde(default, with = "squall_domain::time::serde_opt_ts")]
    pub expire_timestamp: Option<Timestamp>,
}

impl KeyRecord {
    fn expired(&self, now: &Timestamp) -> bool {
        self.expire_timestamp.is_some_and(|t| t <= *now)
    }
}

/// What a write did, for the `core.st2.key_value_pair.*` triggers.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Created(KeyRecord),
    Updated { old: KeyRecord, new: KeyRecord },
}

/// The datastore of a cluster.
#[derive(Clone)]
pub struct KeyStore {
    kv: kv::Store,
    cipher: Cipher,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyStore")
    }
}

impl KeyStore {
    /// Opens the bucket (created by [`Bus::open`]) with the cluster's key.
    pub async fn open(bus: &Bus, cipher: Cipher) -> Result<KeyStore, EngineError> {
        let kv = bus
            .js
            .get_key_value(KEYS_BUCKET)
            .await
            .map_err(|e| bus_err("open bucket keys", e))?;
        Ok(KeyStore { kv, cipher })
    }

    /// The cluster's cipher.
    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    /// The unexpired pair `name` of `scope`.
    pub async fn get(&self, scope: &Scope, name: &str) -> Result<Option<KeyRecord>, EngineError> {
        let key = scope.key(name);
        let Some(bytes) = self
            .kv
            .get(&key)
            .await
            .map_err(|e| bus_err("read key", e))?
        else {
            return Ok(None);
        };
        let record: KeyRecord = from_bytes(&key, &bytes)?;
        if record.expired(&time::now()) {
            self.purge(&key).await;
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Every unexpired pair of `scope` whose name starts with `prefix`,
    /// sorted by name.
    pub async fn list(&self, scope: &Scope, prefix: &str) -> Result<Vec<KeyRecord>, EngineError> {
        self.scan(&scope.prefix(), prefix).await
    }

    /// Every unexpired pair of every user scope whose name starts with
    /// `prefix`.
    pub async fn list_all_users(&self, prefix: &str) -> Result<Vec<KeyRecord>, EngineError> {
        self.scan("user.", prefix).await
    }

    async fn scan(
        &self,
        key_prefix: &str,
        name_prefix: &str,
    ) -> Result<Vec<KeyRecord>, EngineError> {
        let mut keys = self.kv.keys().await.map_err(|e| bus_err("list keys", e))?;
        let now = time::now();
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| bus_err("list keys", e))?;
            if !key.starts_with(key_prefix) {
                continue;
            }
            let Some(bytes) = self
                .kv
                .get(&key)
                .await
                .map_err(|e| bus_err("read key", e))?
            else {
                continue;
            };
            let record: KeyRecord = from_bytes(&key, &bytes)?;
            if record.expired(&now) {
                self.purge(&key).await;
            } else if record.name.starts_with(name_prefix) {
                out.push(record);
            }
        }
        out.sort_by(|a, b| (&a.scope, &a.name).cmp(&(&b.scope, &b.name)));
        Ok(out)
    }

    /// Sets `name` in `scope` to `plaintext` (sealed when `secret`),
    /// expiring after `ttl` seconds if given.
    pub async fn set(
        &self,
        scope: Scope,
        name: &str,
        plaintext: &str,
        secret: bool,
        ttl: Option<u64>,
    ) -> Result<Change, EngineError> {
        let now = time::now();
        let record = KeyRecord {
            v: KEY_RECORD_VERSION,
            name: name.to_string(),
            value: if secret {
                self.cipher.encrypt(plaintext)
            } else {
                plaintext.to_string()
            },
            secret,
            scope: scope.clone(),
            updated_at: now,
            expire_timestamp: ttl.map(|s| {
                now + chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
            }),
        };
        let old = self.get(&scope, name).await?;
        self.kv
            .put(scope.key(name), to_bytes(&record)?)
            .await
            .map_err(|e| bus_err("store key", e))?;
        Ok(match old {
            Some(old) => Change::Updated { old, new: record },
            None => Change::Created(record),
        })
    }

    /// Deletes `name` from `scope`; the deleted pair, if there was one.
    pub async fn delete(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<Option<KeyRecord>, EngineError> {
        let Some(old) = self.get(scope, name).await? else {
            return Ok(None);
        };
        self.kv
            .purge(scope.key(name))
            .await
            .map_err(|e| bus_err("delete key", e))?;
        Ok(Some(old))
    }

    /// The plaintext of a pair (secrets opened).
    pub fn plaintext(&self, record: &KeyRecord) -> Result<String, EngineError> {
        if !record.secret {
            return Ok(record.value.clone());
        }
        self.cipher
            .decrypt(&record.value)
            .map_err(|e| EngineError::Corrupt {
                key: format!("{} {}", record.scope, record.name),
                message: format!("{e}: was the datastore key file replaced?"),
            })
    }

    async fn purge(&self, key: &str) {
        if let Err(e) = self.kv.purge(key).await {
            tracing::warn!(key, error = %e, "could not purge an expired datastore key");
        }
    }
}

/// A node's live copy of the datastore, for templates (`st2kv.system.x`):
/// rendering is synchronous, so it reads a [`Mirrored`] copy of the `keys`
/// bucket. A change reaches it milliseconds after the write.
#[derive(Clone)]
/// With the node's audit emitter: a secret handed to a template is noted,
/// so that decrypting it there is audited ([`crate::audit::decrypt`]).
pub struct KeyCache(Mirrored<KeyEntries>, crate::audit::Audit);

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyCache")
    }
}

/// Every stored pair by scope and name.
#[derive(Default)]
pub struct KeyEntries(HashMap<(Scope, String), KeyRecord>);

impl Mirror for KeyEntries {
    fn apply(&mut self, entry: &kv::Entry) {
        let Some(key) = Scope::parse_key(&entry.key) else {
            return;
        };
        match entry.operation {
            kv::Operation::Put => match from_bytes::<KeyRecord>(&entry.key, &entry.value) {
                Ok(record) => {
                    self.0.insert(key, record);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable datastore entry"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.0.remove(&key);
            }
        }
    }
}

impl KeyCache {
    /// Starts mirroring `store`'s bucket; returns once the current contents
    /// are loaded.
    pub async fn start(
        store: &KeyStore,
        audit: crate::audit::Audit,
    ) -> Result<KeyCache, EngineError> {
        Ok(KeyCache(Mirrored::start(&store.kv, "keys").await?, audit))
    }
}

impl crate::audit::decrypt::KeyOwners for KeyCache {
    fn audit(&self) -> &crate::audit::Audit {
        &self.1
    }

    /// A scan, for the rare decryption of a value not read where it is
    /// opened.
    fn holder(&self, sealed: &str) -> Option<(KvScope, String)> {
        let entries = self.0.read();
        entries
            .0
            .iter()
            .find(|(_, r)| r.secret && r.value.trim() == sealed)
            .map(|((scope, name), _)| {
                let scope = match scope {
                    Scope::System => KvScope::System,
                    Scope::User(u) => KvScope::User(u.clone()),
                };
                (scope, name.clone())
            })
    }
}

impl KeyValueLookup for KeyCache {
    fn get(&self, scope: KvScope, name: &str) -> Option<String> {
        let key = match &scope {
            KvScope::System => Scope::System,
            KvScope::User(u) => Scope::User(u.clone()),
        };
        let entries = self.0.read();
        let record = entries
            .0
            .get(&(key, name.to_string()))
            .filter(|r| !r.expired(&time::now()))?;
        if record.secret {
            crate::audit::decrypt::kv_read(&scope, name, &record.value);
        }
        Some(record.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_round_trip_any_name() {
        for (scope, name) in [
            (Scope::System, "a.b:c/d e"),
            (Scope::User("alice@example.com".into()), "token"),
        ] {
            assert_eq!(
                Scope::parse_key(&scope.key(name)),
                Some((scope.clone(), name.to_string()))
            );
        }
        assert_eq!(Scope::parse_key("nonsense"), None);
        assert_eq!(Scope::parse_key("system.zz"), None);
    }
}
