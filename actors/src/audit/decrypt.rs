//! Auditing the secrets the engine opens by itself: a datastore secret
//! decrypted inside a template (`{{ st2kv.system.x | decrypt_kv }}` in an
//! action's or a rule's parameters, a rule's criteria, an ActionChain's
//! parameters, a notification) or an Orquesta expression
//! (`st2kv('x', decrypt=true)`, `{{ ctx().sealed | decrypt_kv }}`), and a
//! pack config's secret items opened for a run. Each becomes a
//! `key.decrypted` or `pack_config.decrypted` event naming who (the
//! execution's user), which execution and action (or rule and trigger
//! instance), and which key or item; never the value.
//!
//! Rendering is synchronous, so a scope is a thread-local: [`audited`]
//! opens one around the work, [`kv_read`] (from the key cache) notes each
//! secret value handed to a template still sealed, and the cipher reports
//! what it opened ([`squall_domain::secrets::track`]). Every value opened
//! in a scope is audited once:
//! - read in the scope: a decryption of that key (`origin: read`);
//! - not read there but some key holds it (a sealed value carried in a
//!   workflow's context, a parameter, a trigger's payload): a decryption
//!   of that key (`origin: carried`);
//! - held by no key (since changed or deleted): a decryption of an unknown
//!   key, named by a digest of the sealed text (`origin: unknown`);
//! - opened by code that audits it itself ([`self_audited`]: a pack
//!   config's items) or by a scope inside this one: not again.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde_json::json;
use sha2::{Digest, Sha256};
use squall_domain::execution::ExecutionRecord;
use squall_domain::orquesta::conductor::SecretScope;
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

impl For {
    /// For execution `record`: its user, id and action.
    pub fn execution(record: &ExecutionRecord, purpose: &'static str) -> For {
        For {
            user: record
                .context
                .get("user")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(squall_domain::execution::SYSTEM_USER)
                .to_string(),
            execution: Some(record.id.clone()),
            action: Some(record.action.action_ref.clone()),
            purpose,
        }
    }
}

/// Where inside the work of a [`For`] secrets are opened, when that says
/// more than the execution does (or there is none).
#[derive(Debug, Clone)]
pub enum Part {
    /// The expressions of a workflow's task.
    Task(String),
    /// A rule's criteria, evaluated for a trigger instance.
    Criteria {
        rule: String,
        trigger_instance: String,
    },
}

impl Part {
    /// What the part adds to the event's id and data.
    fn describe(&self, data: &mut serde_json::Value) -> String {
        match self {
            Part::Task(task) => {
                data["task"] = json!(task);
                task.clone()
            }
            Part::Criteria {
                rule,
                trigger_instance,
            } => {
                data["rule"] = json!(rule);
                data["trigger_instance"] = json!(trigger_instance);
                format!("{trigger_instance}:{rule}")
            }
        }
    }
}

/// What auditing a decryption needs of the datastore: where to report it,
/// and which key a sealed value is the secret of. The node's key cache
/// ([`crate::keys::KeyCache`]) is it.
pub trait KeyOwners: Sync {
    /// The node's audit emitter.
    fn audit(&self) -> &Audit;
    /// The secret key whose stored (sealed) value is `sealed`, if one is.
    fn holder(&self, sealed: &str) -> Option<(KvScope, String)>;
}

/// Audits what a workflow's expressions open (`st2kv(key, decrypt=true)`,
/// `st2kv.system.x | decrypt_kv`, `ctx().sealed | decrypt_kv`) for the
/// workflow execution it holds: the conductor evaluates each expression
/// that may open a secret inside [`SecretScope::around`], which opens a
/// scope naming the execution's user, id and action, and the task.
pub struct Workflow<'a> {
    pub execution: &'a ExecutionRecord,
    pub kv: &'a dyn KeyOwners,
}

impl SecretScope for Workflow<'_> {
    fn around(&self, task: Option<&str>, evaluate: &mut dyn FnMut()) {
        let who = For::execution(self.execution, "workflow_expression");
        audited_in(
            self.kv,
            who,
            task.map(|t| Part::Task(t.to_string())),
            evaluate,
        );
    }
}

struct Read {
    sealed: String,
    scope: KvScope,
    name: String,
}

struct Scope {
    who: For,
    part: Option<Part>,
    reads: Vec<Read>,
    /// Sealed values opened in the scope that are audited already.
    claimed: BTreeSet<String>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs `f` in a scope for `who`: every secret it decrypts is audited
/// once `f` returns, through `kv`'s audit emitter (`kv` also tells which
/// key holds a value opened without being read in the scope).
pub fn audited<R>(kv: &dyn KeyOwners, who: For, f: impl FnOnce() -> R) -> R {
    audited_in(kv, who, None, f)
}

/// [`audited`], for `part` of `who`'s work.
pub fn audited_in<R>(kv: &dyn KeyOwners, who: For, part: Option<Part>, f: impl FnOnce() -> R) -> R {
    let outer = SCOPE.replace(Some(Scope {
        who,
        part,
        reads: Vec::new(),
        claimed: BTreeSet::new(),
    }));
    let (result, opened) = squall_domain::secrets::track(f);
    let scope = SCOPE.replace(outer);
    // What this scope audits, an enclosing one must not audit again.
    claim(&opened);
    let Some(scope) = scope else {
        return result;
    };
    let mut seen = BTreeSet::new();
    for sealed in opened {
        if scope.claimed.contains(&sealed) {
            continue;
        }
        let (what, object, data) = match opened_key(&scope.reads, kv, &sealed) {
            Some((origin, key_scope, name)) => {
                let (scope_name, owner) = match &key_scope {
                    KvScope::System => ("st2kv.system", None),
                    KvScope::User(u) => ("st2kv.user", Some(u.as_str())),
                };
                let what = match owner {
                    Some(u) => format!("user:{u}:{name}"),
                    None => format!("system:{name}"),
                };
                let data = json!({"scope": scope_name, "owner": owner, "origin": origin});
                (what, Some(name), data)
            }
            None => {
                // No key holds it any more: named by what was opened,
                // which tells nothing of the value.
                let digest = hex::encode(&Sha256::digest(sealed.as_bytes())[..8]);
                let data = json!({"scope": null, "owner": null, "origin": "unknown",
                    "sealed_sha256": digest});
                (format!("sealed:{digest}"), None, data)
            }
        };
        if !seen.insert(what.clone()) {
            continue;
        }
        let object = Object {
            kind: "key".into(),
            id: None,
            reference: object,
        };
        let event = event(
            &scope.who,
            scope.part.as_ref(),
            "key.decrypted",
            &what,
            object,
            data,
        );
        kv.audit().emit(event);
    }
    result
}

/// The key a value opened in a scope is the secret of, and how the scope
/// came by it: `read` from the datastore there, or `carried` from
/// elsewhere (a key holds it still).
fn opened_key(
    reads: &[Read],
    kv: &dyn KeyOwners,
    sealed: &str,
) -> Option<(&'static str, KvScope, String)> {
    if let Some(read) = reads.iter().find(|r| r.sealed == sealed) {
        return Some(("read", read.scope.clone(), read.name.clone()));
    }
    kv.holder(sealed)
        .map(|(scope, name)| ("carried", scope, name))
}

/// Marks `opened` as audited in the current scope, if any.
fn claim(opened: &[String]) {
    SCOPE.with_borrow_mut(|s| {
        if let Some(s) = s {
            s.claimed.extend(opened.iter().cloned());
        }
    });
}

/// Runs `f`, which opens secrets and audits them itself (a pack config's
/// items, [`config_opened`]): the scope it runs in does not report them
/// again.
pub fn self_audited<R>(f: impl FnOnce() -> R) -> R {
    let (result, opened) = squall_domain::secrets::track(f);
    claim(&opened);
    result
}

/// Runs `f`, the evaluation of rule `rule`'s criteria for trigger
/// instance `trigger_instance`, in a scope for the system user (rules act
/// as it).
pub fn criteria<R>(
    kv: &dyn KeyOwners,
    rule: &str,
    trigger_instance: &str,
    f: impl FnOnce() -> R,
) -> R {
    let who = For {
        user: squall_domain::execution::SYSTEM_USER.to_string(),
        purpose: "rule_criteria",
        ..For::default()
    };
    let part = Part::Criteria {
        rule: rule.to_string(),
        trigger_instance: trigger_instance.to_string(),
    };
    audited_in(kv, who, Some(part), f)
}

/// Runs `f` in the current scope, or else in one for `who()`.
pub fn within<R>(kv: &dyn KeyOwners, who: impl FnOnce() -> For, f: impl FnOnce() -> R) -> R {
    if SCOPE.with_borrow(Option::is_some) {
        f()
    } else {
        audited(kv, who(), f)
    }
}

/// The key cache handed `scope`/`name`'s sealed value to a template:
/// remembered, so that opening it in this scope is audited as a
/// decryption of that key.
pub fn kv_read(scope: &KvScope, name: &str, sealed: &str) {
    SCOPE.with_borrow_mut(|s| {
        if let Some(s) = s {
            s.reads.push(Read {
                sealed: sealed.trim().to_string(),
                scope: scope.clone(),
                name: name.to_string(),
            });
        }
    });
}

/// `pack`'s config secret items `items` (dotted paths) were opened for
/// `user` (or for the current scope's execution, if any).
pub fn config_opened(audit: &Audit, pack: &str, items: &[String], user: &str) {
    let (who, part) = SCOPE
        .with_borrow(|s| s.as_ref().map(|s| (s.who.clone(), s.part.clone())))
        .unwrap_or_else(|| {
            let who = For {
                user: user.to_string(),
                purpose: "pack_config",
                ..For::default()
            };
            (who, None)
        });
    for item in items {
        let event = event(
            &who,
            part.as_ref(),
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
    part: Option<&Part>,
    action: &str,
    what: &str,
    object: Object,
    mut data: serde_json::Value,
) -> AuditEvent {
    let part = part.map(|p| p.describe(&mut data));
    // One event per execution, purpose, part and key (a retried
    // preparation, a re-evaluation, is the same act); without an
    // execution, one per part and key, or else one per act.
    let id = match (&who.execution, part) {
        (Some(execution), None) => format!("decrypt:{execution}:{}:{what}", who.purpose),
        (Some(execution), Some(part)) => {
            format!("decrypt:{execution}:{}:{part}:{what}", who.purpose)
        }
        (None, Some(part)) => format!("decrypt:{part}:{}:{what}", who.purpose),
        (None, None) => format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Object {
        Object {
            kind: "key".into(),
            id: None,
            reference: Some(name.into()),
        }
    }

    #[test]
    fn a_part_names_itself_in_the_id_and_the_data() {
        let workflow = For {
            user: "alice".into(),
            execution: Some("wf1".into()),
            action: Some("p.flow".into()),
            purpose: "workflow_expression",
        };
        let task = Part::Task("fetch".into());
        let e = event(
            &workflow,
            Some(&task),
            "key.decrypted",
            "system:pw",
            key("pw"),
            json!({"scope": "st2kv.system"}),
        );
        assert_eq!(
            e.audit_id,
            "decrypt:wf1:workflow_expression:fetch:system:pw"
        );
        assert_eq!(e.data["task"], "fetch");
        assert_eq!(e.data["execution"], "wf1");
        assert_eq!(e.actor.user.as_deref(), Some("alice"));
        // Without a part, the id it always had.
        let plain = event(
            &workflow,
            None,
            "key.decrypted",
            "system:pw",
            key("pw"),
            json!({}),
        );
        assert_eq!(plain.audit_id, "decrypt:wf1:workflow_expression:system:pw");
        // Criteria have no execution: the trigger instance and rule.
        let criteria = Part::Criteria {
            rule: "p.guard".into(),
            trigger_instance: "ti1".into(),
        };
        let system = For {
            user: squall_domain::execution::SYSTEM_USER.into(),
            purpose: "rule_criteria",
            ..For::default()
        };
        let e = event(
            &system,
            Some(&criteria),
            "key.decrypted",
            "system:pw",
            key("pw"),
            json!({}),
        );
        assert_eq!(e.audit_id, "decrypt:ti1:p.guard:rule_criteria:system:pw");
        assert_eq!(e.data["rule"], "p.guard");
        assert_eq!(e.data["trigger_instance"], "ti1");
        assert_eq!(e.actor.method.as_deref(), Some("system"));
    }
}
