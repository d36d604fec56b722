//! StackStorm's checks of a workflow's tasks against the registered
//! actions, made before the workflow starts (st2's
//! `services/workflows.py` `inspect_task_contents`): each task's action
//! reference is well formed and registered, its input gives every required
//! parameter that has no default and nothing the action does not take.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::spec::WorkflowSpec;
use crate::model::ParamSpec;

const SCHEMA_PATH: &str = "properties.tasks.patternProperties.^\\w+$";

/// The content errors of `spec`, in StackStorm's shape and order (by
/// `schema_path`, then the tasks in the definition's order). `parameters` gives an action's parameters,
/// its runner's included, or `None` when it is not registered.
pub fn check_contents(
    spec: &WorkflowSpec,
    parameters: impl Fn(&str) -> Option<BTreeMap<String, ParamSpec>>,
) -> Vec<Value> {
    let mut errors = Vec::new();
    let action_schema = format!("{SCHEMA_PATH}.properties.action");
    let input_schema = format!("{SCHEMA_PATH}.properties.input");
    for (task, def) in spec
        .task_order
        .iter()
        .filter_map(|t| spec.tasks.get_key_value(t))
    {
        let Some(action) = def.action.as_deref() else {
            continue;
        };
        if action.is_empty() || action.contains("<%") || crate::template::is_template(action) {
            continue;
        }
        let action_path = format!("tasks.{task}.action");
        let error = |message: String, spec_path: String, schema_path: &str| {
            json!({
                "type": "content",
                "message": message,
                "spec_path": spec_path,
                "schema_path": schema_path,
            })
        };
        if !action.contains('.') {
            errors.push(error(
                format!("The action reference \"{action}\" is not formatted correctly."),
                action_path,
                &action_schema,
            ));
            continue;
        }
        let Some(params) = parameters(action) else {
            errors.push(error(
                format!("The action \"{action}\" is not registered in the database."),
                action_path,
                &action_schema,
            ));
            continue;
        };
        let Value::Object(input) = &def.input else {
            continue;
        };
        for (name, _) in params
            .iter()
            .filter(|(name, p)| p.required && p.default.is_none() && !input.contains_key(*name))
        {
            errors.push(error(
                format!("Action \"{action}\" is missing required input \"{name}\"."),
                format!("tasks.{task}.input"),
                &input_schema,
            ));
        }
        for name in input.keys().filter(|name| !params.contains_key(*name)) {
            errors.push(error(
                format!("Action \"{action}\" has unexpected input \"{name}\"."),
                format!("tasks.{task}.input.{name}"),
                &format!("{input_schema}.patternProperties.^\\w+$"),
            ));
        }
    }
    // Python's sort is stable: same schema path, task order.
    errors.sort_by(|a, b| a["schema_path"].as_str().cmp(&b["schema_path"].as_str()));
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(names: &[(&str, bool)]) -> BTreeMap<String, ParamSpec> {
        names
            .iter()
            .map(|(n, required)| {
                (
                    n.to_string(),
                    ParamSpec {
                        required: *required,
                        ..ParamSpec::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn checks_references_registration_and_inputs_as_stackstorm() {
        let (spec, issues) = super::super::inspect(
            "version: 1.0\ntasks:\n  a:\n    action: echo\n  c:\n    action: core.echo messages=hi\n  z:\n    action: core.gone\n  b:\n    action: core.nope\n  d:\n    action: <% ctx().x %>\n  e:\n    action: core.echo message=hi\n",
        );
        let spec = spec.unwrap_or_else(|| panic!("{issues:?}"));
        let errors = check_contents(&spec, |r| {
            (r == "core.echo").then(|| params(&[("message", true), ("cmd", false)]))
        });
        let messages: Vec<&str> = errors
            .iter()
            .map(|e| e["message"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            messages,
            vec![
                "The action reference \"echo\" is not formatted correctly.",
                "The action \"core.gone\" is not registered in the database.",
                "The action \"core.nope\" is not registered in the database.",
                "Action \"core.echo\" is missing required input \"message\".",
                "Action \"core.echo\" has unexpected input \"messages\".",
            ]
        );
        assert_eq!(errors[4]["spec_path"], "tasks.c.input.messages");
        assert_eq!(
            errors[4]["schema_path"],
            "properties.tasks.patternProperties.^\\w+$.properties.input.patternProperties.^\\w+$"
        );
    }
}
