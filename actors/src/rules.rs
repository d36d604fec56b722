//! The rules engine: one [`RulePartition`] actor per owned partition
//! consumes that partition's trigger instances, matches enabled rules by
//! trigger and criteria, and enforces each match: a rule enforcement record
//! and an execution request whose id is derived from trigger instance +
//! rule, so a redelivered trigger never starts the action twice.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Map, Value};
use squall_domain::execution::{
    EnforcementStatus, ExecutionRecord, RuleEnforcement, RuleSummary, TriggerInstance,
    TriggerInstanceSummary, RECORD_VERSION,
};
use squall_domain::model::RuleDef;
use squall_domain::template::{CompiledValue, KeyValueLookup, Renderer};
use squall_domain::{criteria, ids, time, triggers};
use tracing::Instrument;

use crate::bus::{trigger_partition_filter, Bus, TRIGGERS_STREAM};
use crate::catalog::{CatalogHandle, CatalogRule};
use crate::configs::ConfigCache;
use crate::consumer::{ConsumerSpec, Handler, Settle};
use crate::error::EngineError;
use crate::executions::{self, ExecutionSpec};
use crate::keys::KeyCache;
use crate::metrics::Evaluation;
use crate::timing::{ACK_WAIT, RETRY_DELAY};

/// Trigger instances a partition may hold unacknowledged.
const MAX_IN_FLIGHT: i64 = 512;
/// Trigger instances a partition enforces at once. Every effect's id
/// derives from the instance and the rule, so order does not matter.
const CONCURRENCY: usize = 32;

/// Durable consumer name of a rule partition.
pub fn consumer_name(partition: u32) -> String {
    format!("rules-{partition}")
}

/// Where the rule partition `partition` reads.
pub fn consumer_spec(partition: u32) -> ConsumerSpec {
    ConsumerSpec {
        stream: TRIGGERS_STREAM,
        name: consumer_name(partition),
        filter: trigger_partition_filter(partition),
        max_ack_pending: MAX_IN_FLIGHT,
        concurrency: CONCURRENCY,
        ack_wait: ACK_WAIT,
    }
}

/// Everything a partition needs.
#[derive(Debug, Clone)]
pub struct RulesContext {
    pub bus: Bus,
    pub catalog: CatalogHandle,
    pub renderer: Arc<Renderer>,
    /// The datastore, for `st2kv` in criteria and parameters.
    pub kv: KeyCache,
    /// Pack configs, for `config_context` in parameters.
    pub configs: ConfigCache,
}

/// Enforces one partition of the `TRIGGERS` stream, as the handler of a
/// [`Consumer`](crate::consumer::Consumer).
#[derive(Debug)]
pub struct RulePartition {
    pub ctx: RulesContext,
    pub partition: u32,
}

impl Handler for RulePartition {
    type Event = TriggerInstance;
    const WHAT: &'static str = "trigger instances";

    async fn handle(self: Arc<Self>, instance: TriggerInstance, _delivered: i64) -> Settle {
        let span = if crate::telemetry::on() {
            tracing::info_span!("trigger", otel.name = "rule.match", otel.kind = "consumer",
                trigger_instance = %instance.id, trigger_type = %instance.trigger_type,
                partition = self.partition,
                squall.trace_tag = instance.trace_tag.as_deref().unwrap_or(""))
        } else {
            tracing::info_span!("trigger", trigger_instance = %instance.id,
                trigger_type = %instance.trigger_type, partition = self.partition)
        };
        match process(&self.ctx, &instance, &self.ctx.kv)
            .instrument(span)
            .await
        {
            Ok(()) => {
                crate::metrics::trigger_processed();
                Settle::Done
            }
            Err(e) => {
                tracing::warn!(trigger_instance = %instance.id, error = %e,
                    "enforcement interrupted; the trigger will be redelivered");
                Settle::Later(RETRY_DELAY)
            }
        }
    }
}

/// Matches and enforces every rule for one trigger instance. Errors are
/// only retryable bus failures; problems with content are recorded as
/// failed enforcements.
pub async fn process(
    ctx: &RulesContext,
    instance: &TriggerInstance,
    kv: &KeyCache,
) -> Result<(), EngineError> {
    let catalog = ctx.catalog.load();
    // An execution's end: its notify and retry policy first, so both are
    // stored before the instance is acknowledged.
    if instance.trigger_type == squall_domain::notify::ACTION_TRIGGER {
        crate::notifier::follow_up(&ctx.bus, &ctx.renderer, &catalog, instance, kv).await?;
    }
    let mut not_matched = NotMatched(0);
    for rule in catalog.rules_for(&instance.trigger_type, &instance.trigger_parameters) {
        // An event from before the rule was enabled (a timer's tick fired
        // late, a backlog) is not the rule's to act on.
        if !rule.def.listened_at(instance.occurrence_time) {
            tracing::debug!(rule = %rule.def.reference(), instance = %instance.id,
                "trigger instance occurred before the rule was enabled; not enforced");
            continue;
        }
        let evaluate = || rule.criteria.matches(&instance.payload, &ctx.renderer, kv);
        let matched = match rule.criteria.may_open_secrets() {
            true => {
                crate::audit::decrypt::criteria(kv, &rule.def.reference(), &instance.id, evaluate)
            }
            false => evaluate(),
        };
        let failure = match matched {
            Ok(false) => {
                not_matched.0 += 1;
                continue;
            }
            Ok(true) => {
                crate::metrics::rules_evaluated(Evaluation::Matched, 1);
                None
            }
            Err(e) => {
                crate::metrics::rules_evaluated(Evaluation::Error, 1);
                Some(format!(
                    "criteria of rule {} failed: {e}",
                    rule.def.reference()
                ))
            }
        };
        let span = crate::telemetry::span(|| {
            tracing::info_span!("rule.enforce", squall.rule.ref = %rule.def.reference(),
                squall.trace_tag = instance.trace_tag.as_deref().unwrap_or(""),
                squall.enforcement.id = tracing::field::Empty)
        });
        enforce(ctx, &catalog, rule, instance, kv, failure)
            .instrument(span)
            .await?;
    }
    Ok(())
}

/// Rules an instance did not match, added to the metric once, however
/// the instance's processing ends (most rules do not match most events).
struct NotMatched(u64);

impl Drop for NotMatched {
    fn drop(&mut self) {
        if self.0 > 0 {
            crate::metrics::rules_evaluated(Evaluation::NotMatched, self.0);
        }
    }
}

async fn enforce(
    ctx: &RulesContext,
    catalog: &crate::catalog::Catalog,
    rule: &CatalogRule,
    instance: &TriggerInstance,
    kv: &KeyCache,
    criteria_failure: Option<String>,
) -> Result<(), EngineError> {
    let rule_ref = rule.def.reference();
    let at = instance.occurrence_time;
    let summary = rule_summary(&rule.def, &rule.id);
    let execution_id = ids::derived(&at, &["execution", &instance.id, &rule_ref]);
    let prepared = match criteria_failure {
        Some(reason) => Err(reason),
        None => prepare(ctx, catalog, rule, instance, kv, &summary, execution_id)?,
    };
    let (status, record, failure_reason) = match prepared {
        Ok(record) => (EnforcementStatus::Succeeded, Some(record), None),
        Err(reason) => {
            tracing::warn!(rule = %rule_ref, reason = %reason, "rule enforcement failed");
            (EnforcementStatus::Failed, None, Some(reason))
        }
    };
    crate::metrics::enforcement(status);
    let enforcement = RuleEnforcement {
        v: RECORD_VERSION,
        id: ids::derived(&at, &["enforcement", &instance.id, &rule_ref]),
        trigger_instance_id: instance.id.clone(),
        execution_id: record.as_ref().map(|r| r.id.clone()),
        rule: summary,
        status,
        failure_reason,
        enforced_at: time::now(),
    };
    let span = tracing::Span::current();
    span.record("squall.enforcement.id", enforcement.id.as_str());
    let Some(record) = record else {
        return ctx.bus.put_enforcement(&enforcement).await;
    };
    // Independent writes, at once: each is idempotent by its derived id,
    // and a failure of either sends the trigger round again.
    let (submitted, stored) = tokio::join!(
        executions::submit(&ctx.bus, record),
        ctx.bus.put_enforcement(&enforcement)
    );
    let submitted = submitted?;
    stored?;
    tracing::info!(rule = %rule_ref, execution = %submitted.id, "rule matched; execution requested");
    Ok(())
}

/// Renders the rule's action parameters and prepares the execution's
/// record. `Ok(Err(reason))` is a failed enforcement; `Err` is a bus
/// failure.
fn prepare(
    ctx: &RulesContext,
    catalog: &crate::catalog::Catalog,
    rule: &CatalogRule,
    instance: &TriggerInstance,
    kv: &KeyCache,
    summary: &RuleSummary,
    execution_id: String,
) -> Result<Result<ExecutionRecord, String>, EngineError> {
    // Secrets the rule's parameters decrypt are audited for the execution.
    let who = crate::audit::decrypt::For {
        user: executions::SYSTEM_USER.to_string(),
        execution: Some(execution_id.clone()),
        action: None,
        purpose: "rule_parameters",
    };
    let spec = crate::audit::decrypt::audited(kv, who, || {
        execution_spec(
            &ctx.renderer,
            &rule.def,
            &rule.parameters,
            instance,
            kv,
            summary,
        )
    });
    let spec = match spec {
        Ok(spec) => ExecutionSpec {
            id: Some(execution_id),
            ..spec
        },
        Err(reason) => return Ok(Err(reason)),
    };
    match executions::prepare(catalog, &ctx.renderer, kv, &ctx.configs, spec) {
        Ok(record) => Ok(Ok(record)),
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// The execution a matching rule asks for: its action parameters
/// (`parameters`, compiled) rendered against the trigger instance. `Err` is
/// why the enforcement fails.
fn execution_spec(
    renderer: &Renderer,
    rule: &RuleDef,
    parameters: &CompiledValue,
    instance: &TriggerInstance,
    kv: &dyn KeyValueLookup,
    summary: &RuleSummary,
) -> Result<ExecutionSpec, String> {
    let render_ctx = json!({
        "trigger": instance.payload,
        "rule": {"id": summary.id, "ref": summary.rule_ref, "name": rule.name, "pack": rule.pack},
    });
    let parameters = match renderer.render_compiled(parameters, &render_ctx, kv) {
        Ok(Value::Object(p)) => p,
        Ok(_) => return Err("action parameters did not render to a mapping".into()),
        Err(e) => return Err(format!("rendering action parameters failed: {e}")),
    };
    Ok(ExecutionSpec {
        action_ref: rule.action.action_ref.clone(),
        parameters,
        rule: Some(summary.clone()),
        trigger_instance: Some(TriggerInstanceSummary {
            id: instance.id.clone(),
            trigger: instance.trigger.clone(),
            trigger_type: instance.trigger_type.clone(),
            occurrence_time: instance.occurrence_time,
        }),
        trace_tag: instance.trace_tag.clone(),
        context: rule.context.clone(),
        ..ExecutionSpec::default()
    })
}

fn rule_summary(rule: &RuleDef, id: &str) -> RuleSummary {
    RuleSummary {
        id: id.to_string(),
        rule_ref: rule.reference(),
        name: rule.name.clone(),
        pack: rule.pack.clone(),
        uid: format!("rule:{}:{}", rule.pack, rule.name),
    }
}

/// What a rule is tested against.
#[derive(Debug, Clone)]
pub enum TestEvent {
    /// A stored trigger instance: its trigger must be the rule's.
    Instance(TriggerInstance),
    /// A payload, taken as an instance of the rule's own trigger.
    Payload(Value),
}

/// What a rule would do with an event, worked out by the same code the
/// rules engine runs, without writing or running anything.
#[derive(Debug, Clone, Serialize)]
pub struct RuleTest {
    /// The rule's reference.
    pub rule: String,
    /// Whether the rule would enforce: its trigger is the event's and its
    /// criteria match.
    pub matched: bool,
    pub trigger: TriggerCheck,
    pub criteria: criteria::Explanation,
    /// What the enforcement would request; only when the rule matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionPreview>,
}

/// Whether the event's trigger is the one the rule listens to.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerCheck {
    /// The rule's trigger type.
    pub expected: String,
    pub expected_parameters: Map<String, Value>,
    /// The event's trigger type (the rule's for a bare payload).
    pub actual: String,
    pub actual_parameters: Map<String, Value>,
    pub matched: bool,
}

/// The execution a matching rule would request.
#[derive(Debug, Clone, Serialize)]
pub struct ActionPreview {
    #[serde(rename = "ref")]
    pub action_ref: String,
    /// The parameters the execution would get: rendered by the rule, then
    /// resolved against the action (defaults, casts); `None` on error.
    pub parameters: Option<Map<String, Value>>,
    /// Why the enforcement would fail instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Tests `rule` (whose id is `rule_id`) against `event`, as
/// `st2-rule-tester` does: the trigger, every criterion explained, and
/// for a match the action parameters resolved as an enforcement would.
/// Patterns and parameters render with `renderer`, `kv` and `configs`.
pub fn test_rule(
    catalog: &crate::catalog::Catalog,
    renderer: &Renderer,
    kv: &KeyCache,
    configs: &ConfigCache,
    rule: &RuleDef,
    rule_id: &str,
    event: TestEvent,
) -> RuleTest {
    let instance = match event {
        TestEvent::Instance(instance) => instance,
        TestEvent::Payload(payload) => {
            let now = time::now();
            TriggerInstance {
                v: RECORD_VERSION,
                id: ids::fresh(&now),
                trigger: triggers::trigger_ref(&rule.trigger.kind, &rule.trigger.parameters),
                trigger_type: rule.trigger.kind.clone(),
                trigger_parameters: rule.trigger.parameters.clone(),
                payload,
                occurrence_time: now,
                trace_tag: None,
            }
        }
    };
    let trigger = TriggerCheck {
        matched: instance.trigger_type == rule.trigger.kind
            && instance.trigger_parameters == rule.trigger.parameters,
        expected: rule.trigger.kind.clone(),
        expected_parameters: rule.trigger.parameters.clone(),
        actual: instance.trigger_type.clone(),
        actual_parameters: instance.trigger_parameters.clone(),
    };
    let criteria = criteria::explain(&rule.criteria, &instance.payload, renderer, kv);
    let matched = trigger.matched && criteria.matched;
    let action = matched.then(|| {
        let summary = rule_summary(rule, rule_id);
        let parameters = CompiledValue::new(&Value::Object(rule.action.parameters.clone()));
        let prepared = execution_spec(renderer, rule, &parameters, &instance, kv, &summary)
            .and_then(|spec| {
                executions::prepare(catalog, renderer, kv, configs, spec).map_err(|e| e.to_string())
            });
        let (parameters, error) = match prepared {
            Ok(record) => (Some(record.parameters), None),
            Err(reason) => (None, Some(reason)),
        };
        ActionPreview {
            action_ref: rule.action.action_ref.clone(),
            parameters,
            error,
        }
    });
    RuleTest {
        rule: rule.reference(),
        matched,
        trigger,
        criteria,
        action,
    }
}
