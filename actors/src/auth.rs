//! Who may use the API: users with hashed passwords and roles, access
//! tokens with a time to live, and API keys.
//!
//! Nothing secret is stored in the clear: passwords are Argon2id hashes
//! (PHC strings), and tokens and API keys are stored under the SHA-256 of
//! their value, so a copy of the buckets does not let anyone in. Tokens and
//! keys are 256-bit random values, for which a fast hash is enough.
//!
//! | bucket | key | value |
//! | --- | --- | --- |
//! | `auth` | `users.<hex name>` | [`User`] |
//! | `auth` | `apikeys.<sha256 of key>` | [`ApiKey`] |
//! | `tokens` | `<sha256 of token>` | [`Token`] (the bucket forgets after [`MAX_TOKEN_TTL`]) |

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use squall_domain::ids;
use squall_domain::time::{self, Timestamp};

use crate::bus::{from_bytes, to_bytes, Bus, BusOp, BusOps};
use crate::error::{bus_err, EngineError};
use crate::mirror::{Mirror, Mirrored};
use crate::timing::MIRROR_CATCH_UP;

/// KV bucket of users and API keys.
pub const AUTH_BUCKET: &str = "auth";
/// KV bucket of access tokens.
pub const TOKENS_BUCKET: &str = "tokens";

/// The buckets this module keeps, as created with `replicas` replicas.
pub fn buckets(replicas: usize) -> Vec<kv::Config> {
    vec![
        crate::bus::bucket(
            AUTH_BUCKET,
            "Users (hashed passwords) and API keys (hashed).",
            1,
            replicas,
        ),
        kv::Config {
            max_age: MAX_TOKEN_TTL,
            ..crate::bus::bucket(
                TOKENS_BUCKET,
                "Access tokens by hash; entries expire.",
                1,
                replicas,
            )
        },
    ]
}
pub use crate::timing::{DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL};
/// Role of an action's token when its execution's user has no account:
/// the system user, as whom rules run actions. Whoever may write rules may
/// run actions, and no more.
pub const SYSTEM_USER_ROLE: Role = Role::Operator;
/// Name of the user `squall up` creates on a new cluster.
pub const ADMIN_USER: &str = "admin";

/// StackStorm's system roles, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything and changes nothing; never sees secrets.
    Observer,
    /// Also runs actions, fires webhooks, manages rules, keys and inquiries.
    Operator,
    /// Everything, including users, packs and other users' secrets.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Observer => "observer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "observer" => Ok(Role::Observer),
            "operator" | "power_user" | "power-user" => Ok(Role::Operator),
            "admin" | "system_admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: use admin, operator or observer"
            )),
        }
    }
}

/// A user account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    #[serde(with = "squall_domain::time::serde_ts")]
    pub created_at: Timestamp,
}

/// An access token, as stored (the token itself is not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub user: String,
    #[serde(with = "squall_domain::time::serde_ts")]
    pub expiry: Timestamp,
    /// The role of an action's token whose user has no account (the
    /// system user rules run as); `None` for every other token, whose role
    /// is its user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// An API key, as stored (the key itself is not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub user: String,
    /// SHA-256 of the key, hex; also the storage key.
    pub key_hash: String,
    #[serde(with = "squall_domain::time::serde_ts")]
    pub created_at: Timestamp,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

/// Who is calling, once a token or key has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

/// Why a user could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error(
        "user name {0:?} is not allowed: use 1-128 characters, no spaces or control characters"
    )]
    BadUserName(String),
    #[error("password too short: use at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

fn user_key(name: &str) -> String {
    format!("users.{}", hex::encode(name))
}

fn apikey_key(hash: &str) -> String {
    format!("apikeys.{hash}")
}

/// SHA-256 of a secret value, hex.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh 256-bit secret, hex.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn password_matches(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A bucket's entries as they are stored, with their revisions, kept
/// current by a watch.
#[derive(Debug, Default)]
struct Entries(HashMap<String, (u64, Bytes)>);

impl Mirror for Entries {
    fn apply(&mut self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => {
                self.0
                    .insert(entry.key.clone(), (entry.revision, entry.value.clone()));
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                self.0.remove(&entry.key);
            }
        }
    }
}

/// A token record for `user`, valid for `ttl` from now.
fn new_token(user: &str, ttl: Duration, role: Option<Role>) -> Token {
    let now = time::now();
    Token {
        id: ids::fresh(&now),
        user: user.to_string(),
        expiry: now + chrono::Duration::from_std(ttl).unwrap_or_default(),
        role,
    }
}

/// The users, tokens and API keys of a cluster.
///
/// Requests are authenticated from in-memory mirrors of the two buckets,
/// without a bus round trip: a token or key revoked, disabled or deleted
/// anywhere stops working here as soon as the watch delivers the change
/// (milliseconds). What the mirror does not hold yet (a token issued on
/// another node a moment ago) is read from the bucket.
#[derive(Clone)]
pub struct AuthStore {
    users: kv::Store,
    tokens: kv::Store,
    mirrored_users: Mirrored<Entries>,
    mirrored_tokens: Mirrored<Entries>,
    /// The bus's count of awaited operations: tokens stored and revoked.
    ops: std::sync::Arc<BusOps>,
}

impl fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthStore")
    }
}

impl AuthStore {
    /// Opens the buckets (created by [`Bus::open`]).
    pub async fn open(bus: &Bus) -> Result<AuthStore, EngineError> {
        let open = |name: &'static str| async move {
            bus.js
                .get_key_value(name)
                .await
                .map_err(|e| bus_err(&format!("open bucket {name}"), e))
        };
        let users = open(AUTH_BUCKET).await?;
        let tokens = open(TOKENS_BUCKET).await?;
        Ok(AuthStore {
            mirrored_users: Mirrored::start(&users, AUTH_BUCKET).await?,
            mirrored_tokens: Mirrored::start(&tokens, TOKENS_BUCKET).await?,
            users,
            tokens,
            ops: bus.ops.clone(),
        })
    }

    /// The value at `key`, from the mirror, else from the bucket.
    async fn cached<T: for<'de> Deserialize<'de>>(
        mirror: &Mirrored<Entries>,
        store: &kv::Store,
        key: &str,
    ) -> Result<Option<T>, EngineError> {
        let mirrored = mirror.read().0.get(key).map(|(_, bytes)| bytes.clone());
        match mirrored {
            Some(bytes) => Ok(Some(from_bytes(key, &bytes)?)),
            None => Self::get(store, key).await,
        }
    }

    /// Waits until this node's mirror of the `auth` bucket holds `key` at
    /// `revision` or later (`None`: holds it no more), so that a change
    /// made here holds for this node's very next request.
    async fn mirrored(&self, key: &str, revision: Option<u64>) {
        let caught_up = self.mirrored_users.until(MIRROR_CATCH_UP, |mirror| {
            match (mirror.0.get(key), revision) {
                (Some((seen, _)), Some(wanted)) => *seen >= wanted,
                (None, None) => true,
                _ => false,
            }
        });
        if !caught_up.await {
            tracing::warn!(key, "an auth change was slow to reach this node's mirror");
        }
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        store: &kv::Store,
        key: &str,
    ) -> Result<Option<T>, EngineError> {
        match store.get(key).await.map_err(|e| bus_err("read auth", e))? {
            Some(bytes) => Ok(Some(from_bytes(key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The user called `name`.
    pub async fn user(&self, name: &str) -> Result<Option<User>, EngineError> {
        Self::get(&self.users, &user_key(name)).await
    }

    /// Every user, sorted by name.
    pub async fn users(&self) -> Result<Vec<User>, EngineError> {
        let mut out: Vec<User> = self.scan("users.").await?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn scan<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, EngineError> {
        let mut keys = self
            .users
            .keys()
            .await
            .map_err(|e| bus_err("list auth", e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| bus_err("list auth", e))?;
            if key.starts_with(prefix) {
                if let Some(v) = Self::get(&self.users, &key).await? {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }

    /// Creates a user; fails if the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        role: Role,
    ) -> Result<User, AuthError> {
        if name.is_empty()
            || name.len() > 128
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(AuthError::BadUserName(name.to_string()));
        }
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(AuthError::WeakPassword);
        }
        let user = User {
            name: name.to_string(),
            password_hash: hash_password(password)?,
            role,
            created_at: time::now(),
        };
        match self.users.create(user_key(name), to_bytes(&user)?).await {
            Ok(_) => Ok(user),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(AuthError::UserExists(name.to_string()))
            }
            Err(e) => Err(bus_err("create user", e).into()),
        }
    }

    /// Creates the first admin with a random password when the cluster has
    /// no users yet. Returns the password when it created the user.
    pub async fn bootstrap_admin(&self) -> Result<Option<String>, AuthError> {
        if !self.users().await?.is_empty() {
            return Ok(None);
        }
        let password = random_secret()[..24].to_string();
        match self.create_user(ADMIN_USER, &password, Role::Admin).await {
            Ok(_) => Ok(Some(password)),
            // Another node created it first.
            Err(AuthError::UserExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The user if `password` is theirs.
    pub async fn check_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<User>, EngineError> {
        let Some(user) = self.user(name).await? else {
            // Spend the same effort as for a real user, so that timing does
            // not tell which names exist.
            let _ = hash_password(password);
            return Ok(None);
        };
        let phc = user.password_hash.clone();
        let pw = password.to_string();
        let ok = tokio::task::spawn_blocking(move || password_matches(&pw, &phc))
            .await
            .unwrap_or(false);
        Ok(ok.then_some(user))
    }

    /// Issues a token for `user`, valid for `ttl`. Returns the token value
    /// (shown once) and its record.
    pub async fn issue_token(
        &self,
        user: &str,
        ttl: Duration,
    ) -> Result<(String, Token), EngineError> {
        self.store_token(user, ttl, None).await
    }

    /// Issues the token an execution's action calls the API back with
    /// (`ST2_ACTION_AUTH_TOKEN`): its user's, or, for a user without an
    /// account (the system user rules run as), one with
    /// [`SYSTEM_USER_ROLE`]. Revoke it with [`AuthStore::revoke_token`]
    /// when the execution ends.
    pub async fn issue_action_token(
        &self,
        user: &str,
        ttl: Duration,
    ) -> Result<(String, Token), EngineError> {
        if self.mirrored_users.read().0.contains_key(&user_key(user)) {
            return self.store_token(user, ttl, None).await;
        }
        // Not in the mirror: no account, or one made elsewhere a moment
        // ago. The token is stored with the system role while the bucket
        // is asked, at once; an account found there has the token
        // rewritten without the role before anyone is given it.
        let value = random_secret();
        let mut token = new_token(user, ttl, Some(SYSTEM_USER_ROLE));
        let (stored, account) = tokio::join!(self.put_token(&value, &token), self.user(user));
        stored?;
        if account?.is_some() {
            token.role = None;
            self.put_token(&value, &token).await?;
        }
        Ok((value, token))
    }

    async fn store_token(
        &self,
        user: &str,
        ttl: Duration,
        role: Option<Role>,
    ) -> Result<(String, Token), EngineError> {
        let value = random_secret();
        let token = new_token(user, ttl, role);
        self.put_token(&value, &token).await?;
        Ok((value, token))
    }

    /// Stores `token` under the digest of its `value`.
    async fn put_token(&self, value: &str, token: &Token) -> Result<(), EngineError> {
        self.ops.count(BusOp::Put);
        self.tokens
            .put(digest(value), to_bytes(token)?)
            .await
            .map_err(|e| bus_err("store token", e))?;
        Ok(())
    }

    /// Deletes a token: it is refused from now on (every node's mirror
    /// hears of it within milliseconds).
    pub async fn revoke_token(&self, value: &str) -> Result<(), EngineError> {
        self.ops.count(BusOp::Delete);
        self.tokens
            .purge(digest(value))
            .await
            .map_err(|e| bus_err("revoke token", e))
    }

    /// Who a token belongs to and when it expires, if it is valid and
    /// unexpired.
    pub async fn resolve_token(
        &self,
        value: &str,
    ) -> Result<Option<(Principal, Timestamp)>, EngineError> {
        let key = digest(value);
        let Some(token) = Self::cached::<Token>(&self.mirrored_tokens, &self.tokens, &key).await?
        else {
            return Ok(None);
        };
        if token.expiry <= time::now() {
            return Ok(None);
        }
        let principal = match self.principal(&token.user).await? {
            Some(principal) => Some(principal),
            None => token.role.map(|role| Principal {
                user: token.user.clone(),
                role,
            }),
        };
        Ok(principal.map(|p| (p, token.expiry)))
    }

    /// Who an API key belongs to, if it exists and is enabled. Disabling or
    /// deleting a key reaches every node's mirror within milliseconds.
    pub async fn resolve_api_key(&self, value: &str) -> Result<Option<Principal>, EngineError> {
        let key = apikey_key(&digest(value));
        match Self::cached::<ApiKey>(&self.mirrored_users, &self.users, &key).await? {
            Some(key) if key.enabled => self.principal(&key.user).await,
            _ => Ok(None),
        }
    }

    async fn principal(&self, name: &str) -> Result<Option<Principal>, EngineError> {
        let user = Self::cached::<User>(&self.mirrored_users, &self.users, &user_key(name)).await?;
        Ok(user.map(|u| Principal {
            user: u.name,
            role: u.role,
        }))
    }

    /// Creates an API key for `user`. Returns the key (shown once) and its
    /// record.
    pub async fn create_api_key(
        &self,
        user: &str,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(String, ApiKey), EngineError> {
        let value = random_secret();
        let now = time::now();
        let key = ApiKey {
            id: ids::fresh(&now),
            user: user.to_string(),
            key_hash: digest(&value),
            created_at: now,
            enabled: true,
            metadata,
        };
        self.users
            .put(apikey_key(&key.key_hash), to_bytes(&key)?)
            .await
            .map_err(|e| bus_err("store API key", e))?;
        Ok((value, key))
    }

    /// Every API key, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, EngineError> {
        let mut keys: Vec<ApiKey> = self.scan("apikeys.").await?;
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    /// The API key named by its id or by the key itself (as StackStorm's
    /// `get_by_key_or_id`), with the revision of its record.
    pub async fn api_key(&self, id_or_key: &str) -> Result<Option<(ApiKey, u64)>, EngineError> {
        if let Some(found) = self.api_key_entry(&apikey_key(&digest(id_or_key))).await? {
            return Ok(Some(found));
        }
        if !ids::is_id(id_or_key) {
            return Ok(None);
        }
        let Some(key) = self
            .api_keys()
            .await?
            .into_iter()
            .find(|k| k.id == id_or_key)
        else {
            return Ok(None);
        };
        self.api_key_entry(&apikey_key(&key.key_hash)).await
    }

    async fn api_key_entry(&self, storage_key: &str) -> Result<Option<(ApiKey, u64)>, EngineError> {
        match self
            .users
            .entry(storage_key)
            .await
            .map_err(|e| bus_err("read API key", e))?
        {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some((
                from_bytes(storage_key, &entry.value)?,
                entry.revision,
            ))),
            _ => Ok(None),
        }
    }

    /// Stores a changed API key (same hash) if its record is still at
    /// `revision`; false if it changed or was deleted meanwhile.
    pub async fn update_api_key(&self, key: &ApiKey, revision: u64) -> Result<bool, EngineError> {
        let storage_key = apikey_key(&key.key_hash);
        match self
            .users
            .update(&storage_key, to_bytes(key)?, revision)
            .await
        {
            Ok(written) => {
                self.mirrored(&storage_key, Some(written)).await;
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(bus_err("update API key", e)),
        }
    }

    /// Deletes the API key with this id; false if there is none.
    pub async fn delete_api_key(&self, id: &str) -> Result<bool, EngineError> {
        let Some(key) = self.api_keys().await?.into_iter().find(|k| k.id == id) else {
            return Ok(false);
        };
        let storage_key = apikey_key(&key.key_hash);
        self.users
            .purge(&storage_key)
            .await
            .map_err(|e| bus_err("delete API key", e))?;
        self.mirrored(&storage_key, None).await;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hashed_with_a_salt() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert!(!a.contains("correct horse"));
        assert!(password_matches("correct horse", &a));
        assert!(!password_matches("correct horsE", &a));
        assert!(!password_matches("x", "not a hash"));
    }

    #[test]
    fn roles_parse_with_stackstorm_names() {
        assert_eq!("system_admin".parse::<Role>().unwrap(), Role::Admin);
        assert_eq!("power_user".parse::<Role>().unwrap(), Role::Operator);
        assert_eq!("observer".parse::<Role>().unwrap(), Role::Observer);
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("admin, operator or observer"));
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Observer);
    }

    #[test]
    fn secrets_are_random_and_digests_stable() {
        assert_ne!(random_secret(), random_secret());
        assert_eq!(random_secret().len(), 64);
        assert_eq!(digest("k"), digest("k"));
        assert_ne!(digest("k"), digest("K"));
    }
}
