//! Policies: their fields and the policy type they name.

use serde_json::Value;
use serde_yaml::Value as Yaml;

use crate::model::PolicyDef;

use super::doc::{check_name_with, claim_pack, Doc};
use super::Problem;

const POLICY_FIELDS: &[&str] = &[
    "name",
    "pack",
    "description",
    "enabled",
    "resource_ref",
    "policy_type",
    "parameters",
    "metadata_file",
    "id",
    "ref",
    "uid",
];

pub(super) fn check_policy(
    pack: Option<&str>,
    mut doc: Doc<'_>,
) -> Result<PolicyDef, Vec<Problem>> {
    let top = doc.map.clone();
    doc.unknown_fields("", &top, POLICY_FIELDS);
    check_name_with(&mut doc, true);
    claim_pack(&mut doc, pack);
    for derived in ["id", "ref", "uid"] {
        doc.map.remove(derived);
    }
    match doc.get("resource_ref").and_then(Yaml::as_str) {
        Some(r)
            if r.split_once('.')
                .is_some_and(|(p, n)| !p.is_empty() && !n.is_empty()) => {}
        Some(r) => {
            let r = r.to_string();
            doc.problem(
                "resource_ref",
                format!("{r:?} is not an action ref of the form pack.name"),
            )
        }
        None => doc.problem(
            "resource_ref",
            "missing: the action (pack.name) the policy applies to",
        ),
    }
    let params: serde_json::Map<String, Value> = match doc.get("parameters") {
        None | Some(Yaml::Null) => serde_json::Map::new(),
        Some(p) => match serde_json::to_value(p) {
            Ok(Value::Object(m)) => m,
            _ => {
                doc.problem(
                    "parameters",
                    "must be a mapping of parameter names to values",
                );
                serde_json::Map::new()
            }
        },
    };
    match doc
        .get("policy_type")
        .and_then(Yaml::as_str)
        .map(str::to_string)
    {
        Some(t) => match crate::policies::lookup(&t) {
            Some(policy_type) => {
                for (name, message) in crate::policies::check_parameters(&policy_type, &params) {
                    doc.problem(&format!("parameters.{name}"), message);
                }
            }
            None => {
                let known: Vec<_> = crate::policies::all().iter().map(|t| t.reference).collect();
                doc.problem(
                    "policy_type",
                    format!("{t:?} is not a policy type ({})", known.join(", ")),
                )
            }
        },
        None => doc.problem(
            "policy_type",
            "missing: one of action.concurrency, action.concurrency.attr, action.retry",
        ),
    }
    doc.into_model()
}
