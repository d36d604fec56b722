//! The datastore as templates read it: `st2kv.system.<key>` and
//! `st2kv.user.<key>`, looked up in rounds during a render.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use minijinja::value::{Object, ObjectRepr};
use minijinja::{Error, Value};
use serde_json::Value as Json;

/// Scope of a datastore key, as templates name it (`st2kv.system.x`,
/// `st2kv.user.x`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvScope {
    System,
    /// Keys of one user (StackStorm stores them as `<user>:<key>`).
    User(String),
}

/// Read access to the datastore for templates.
pub trait KeyValueLookup: Send + Sync {
    /// The value of `name` in `scope` as stored (a secret stays sealed;
    /// `| decrypt_kv` with [`Renderer::with_cipher`] opens it); `None` when
    /// the key does not exist.
    fn get(&self, scope: KvScope, name: &str) -> Option<String>;
}

/// A datastore with no keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKeyValues;

impl KeyValueLookup for NoKeyValues {
    fn get(&self, _scope: KvScope, _name: &str) -> Option<String> {
        None
    }
}

/// Runs `render` with `ctx` plus `st2kv` as the root context.
///
/// minijinja values must be `'static`, so the borrowed `kv` cannot be called
/// from inside a render. Rendering therefore runs in rounds: a key the
/// template reads that is not known yet reads as missing and is recorded;
/// after the round those keys are looked up and the template rendered
/// again. A round that reads nothing new is the result. Templates that don't
/// use `st2kv` render once; each round only adds keys, so this ends.
/// Names besides the context's that a render sees (e.g. callables).
pub type Extras = BTreeMap<String, Value>;

pub(super) fn with_datastore<T>(
    ctx: &Json,
    extra: &Extras,
    kv: &dyn KeyValueLookup,
    render: impl Fn(&Value) -> Result<T, Error>,
) -> Result<T, Error> {
    let reads = Arc::new(KvReads::default());
    let root = root_context(ctx, extra, &reads);
    loop {
        let result = render(&root);
        let wanted = reads.take_wanted();
        if wanted.is_empty() {
            return result;
        }
        reads.learn(wanted, kv);
    }
}

fn root_context(ctx: &Json, extra: &Extras, reads: &Arc<KvReads>) -> Value {
    let mut vars: BTreeMap<String, Value> = match ctx {
        Json::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let action_context = ctx.get("action_context");
    let user = ["api_user", "user"]
        .iter()
        .find_map(|k| action_context?.get(k)?.as_str())
        .map(str::to_string);
    vars.insert(
        "st2kv".to_string(),
        Value::from_object(St2Kv {
            reads: Arc::clone(reads),
            user,
        }),
    );
    vars.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    Value::from(vars)
}

pub(super) type KvKey = (KvScope, String);

/// What one render learnt from the datastore, and what it asked for that
/// is not known yet.
#[derive(Debug, Default)]
struct KvReads {
    state: Mutex<KvReadsState>,
}

#[derive(Debug, Default)]
struct KvReadsState {
    known: HashMap<KvKey, Option<String>>,
    wanted: BTreeSet<KvKey>,
}

impl KvReads {
    /// `Some(value)` when the key has been looked up (`value` is `None` for a
    /// missing key); `None` when it has not, recording it as wanted.
    fn read(&self, key: KvKey) -> Option<Option<String>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.known.get(&key) {
            Some(value) => Some(value.clone()),
            None => {
                state.wanted.insert(key);
                None
            }
        }
    }

    fn take_wanted(&self) -> BTreeSet<KvKey> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut state.wanted)
    }

    fn learn(&self, keys: BTreeSet<KvKey>, kv: &dyn KeyValueLookup) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (scope, name) in keys {
            let value = kv.get(scope.clone(), &name);
            state.known.insert((scope, name), value);
        }
    }
}

/// `st2kv`: `.system` and `.user` scopes.
#[derive(Debug)]
struct St2Kv {
    reads: Arc<KvReads>,
    user: Option<String>,
}

impl Object for St2Kv {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let scope = match key.as_str()? {
            "system" => KvScope::System,
            "user" => KvScope::User(self.user.clone()?),
            _ => return None,
        };
        Some(Value::from_object(KvNode {
            reads: Arc::clone(&self.reads),
            scope,
            key: None,
        }))
    }
}

/// A datastore scope, or a key in it that has no value. Like StackStorm's
/// `KeyValueLookup`, attribute access extends the key with a dot
/// (`st2kv.system.a.b` reads key `a.b`), and a missing key renders as an
/// empty string. A key that exists reads as its string value.
#[derive(Debug)]
pub(super) struct KvNode {
    reads: Arc<KvReads>,
    scope: KvScope,
    /// `None` for the scope itself.
    pub(super) key: Option<String>,
}

impl Object for KvNode {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, name: &Value) -> Option<Value> {
        let name = name.as_str()?;
        let key = match &self.key {
            Some(prefix) => format!("{prefix}.{name}"),
            None => name.to_string(),
        };
        match self.reads.read((self.scope.clone(), key.clone())) {
            Some(Some(value)) => Some(Value::from(value)),
            Some(None) | None => Some(Value::from_object(KvNode {
                reads: Arc::clone(&self.reads),
                scope: self.scope.clone(),
                key: Some(key),
            })),
        }
    }

    fn render(self: &Arc<Self>, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}
