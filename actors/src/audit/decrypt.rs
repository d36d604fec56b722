//! Auditing the secrets the engine opens by itself: a datastore secret
//! decrypted inside a template (`{{ st2kv.system.x | decrypt_kv }}` in an
//! action's or a rule's parameters) and a pack config's secret items
//! opened for a run. Each becomes a `key.decrypted` or
//! `pack_config.decrypted` event naming who (the execution's user), which
//! execution and action, and which key or item; never the value.
//!
//! Rendering is synchronous, so a scope is a thread-local: [`audited`]
//! opens one around the work, [`kv_read`] (from the key cache) notes each
//! secret value handed to a template still sealed, and the cipher reports
//! what it opened ([`squall_domain::secrets::track`]); a value opened that
//! was read in the scope is a decryption of that key.

use std::cell::RefCell;

use serde_json::json;
use squall_domain::template::KvScope;

use super::{Actor, Audit, AuditEvent, Object};

/// Whom the work inside a scope is for.
#[derive(Debug, Clone, Default)]
pub struct For {
    /// The execution's user (`system` for the engine's own work).
    pub user: String,
    /// The execution, once it has an id.
    pub execution: Option<String>,
    /// The action (`pack.name`).
    pub action: Option<String>,
    /// What was being prepared: `parameters`, `pack_config`.
    pub purpose: &'static str,
}

struct Read {
    sealed: String,
    scope: KvScope,
    name: String,
    audit: Audit,
}

struct Scope {
    who: For,
    reads: Vec<Read>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs `f` in a scope for `who`: every datastore secret it decrypts is
/// audited once `f` returns.
pub fn audited<R>(who: For, f: impl FnOnce() -> R) -> R {
    let outer = SCOPE.replace(Some(Scope {
        who,
        reads: Vec::new(),
    }));
    let (result, opened) = squall_domain::secrets::track(f);
    let Some(scope) = SCOPE.replace(outer) else {
        return result;
    };
    let mut seen = std::collections::BTreeSet::new();
    for sealed in opened {
        let Some(read) = scope.reads.iter().find(|r| r.sealed == sealed) else {
            continue;
        };
        let (scope_name, owner) = match &read.scope {
            KvScope::System => ("st2kv.system", None),
            KvScope::User(u) => ("st2kv.user", Some(u.as_str())),
        };
        if !seen.insert((scope_name, owner.map(str::to_string), read.name.clone())) {
            continue;
        }
        let key = match owner {
            Some(u) => format!("user:{u}:{}", read.name),
            None => format!("system:{}", read.name),
        };
        let event = event(
            &scope.who,
            "key.decrypted",
            &key,
            Object {
                kind: "key".into(),
                id: None,
                reference: Some(read.name.clone()),
            },
            json!({"scope": scope_name, "owner": owner}),
        );
        read.audit.emit(event);
    }
    result
}

/// Runs `f` in the current scope, or else in one for `who()`.
pub fn within<R>(who: impl FnOnce() -> For, f: impl FnOnce() -> R) -> R {
    if SCOPE.with_borrow(Option::is_some) {
        f()
    } else {
        audited(who(), f)
    }
}

/// The key cache handed `scope`/`name`'s sealed value to a template:
/// remembered, so that opening it in this scope is audited.
pub fn kv_read(audit: &Audit, scope: &KvScope, name: &str, sealed: &str) {
    SCOPE.with_borrow_mut(|s| {
        if let Some(s) = s {
            s.reads.push(Read {
                sealed: sealed.trim().to_string(),
                scope: scope.clone(),
                name: name.to_string(),
                audit: audit.clone(),
            });
        }
    });
}

/// `pack`'s config secret items `items` (dotted paths) were opened for
/// `user` (or for the current scope's execution, if any).
pub fn config_opened(audit: &Audit, pack: &str, items: &[String], user: &str) {
    let who = SCOPE
        .with_borrow(|s| s.as_ref().map(|s| s.who.clone()))
        .unwrap_or_else(|| For {
            user: user.to_string(),
            purpose: "pack_config",
            ..For::default()
        });
    for item in items {
        let event = event(
            &who,
            "pack_config.decrypted",
            &format!("{pack}:{item}"),
            Object {
                kind: "pack_config".into(),
                id: None,
                reference: Some(format!("{pack}.{item}")),
            },
            json!({"pack": pack, "item": item}),
        );
        audit.emit(event);
    }
}

fn event(
    who: &For,
    action: &str,
    what: &str,
    object: Object,
    mut data: serde_json::Value,
) -> AuditEvent {
    // One event per execution, purpose and key (a retried preparation
    // is the same act); without an execution, one per act.
    let id = match &who.execution {
        Some(execution) => format!("decrypt:{execution}:{}:{what}", who.purpose),
        None => format!(
            "decrypt:{}:{what}",
            squall_domain::ids::fresh(&squall_domain::time::now())
        ),
    };
    data["via"] = json!(who.purpose);
    data["execution"] = json!(who.execution);
    data["action"] = json!(who.action);
    AuditEvent::new(id, action, object, "success")
        .by(Actor {
            user: Some(who.user.clone()),
            method: Some(if who.execution.is_some() {
                "execution".into()
            } else {
                "system".into()
            }),
            remote_addr: None,
        })
        .with_data(data)
}
