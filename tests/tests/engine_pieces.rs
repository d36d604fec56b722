//! The engine's pieces on their own against a real nats-server, without a
//! node around them: a rule partition's enforcement of one trigger
//! instance (idempotent by derived ids, failures recorded, non-matches
//! leaving nothing), and a runner pool's claim and run of the request it
//! made (straight to `running` in one compare-and-swap, a redelivery
//! running nothing again).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use serde_json::{json, Value};
use squall_actors::auth::AuthStore;
use squall_actors::bus::{Bus, BusOp, EXECUTIONS_STREAM};
use squall_actors::catalog::{Catalog, CatalogHandle};
use squall_actors::configs::ConfigCache;
use squall_actors::consumer::{Handler, Settle};
use squall_actors::keys::{KeyCache, KeyStore};
use squall_actors::rules::{self, RulesContext};
use squall_actors::runners::{CancelRegistry, RunnerContext, RunnerPool};
use squall_domain::execution::{EnforcementStatus, ExecutionRequest, Status, TriggerInstance};
use squall_domain::model::PackBundle;
use squall_domain::secrets::Cipher;
use squall_domain::template::Renderer;
use squall_domain::{ids, time, triggers};
use squall_tests::{repo_root, NatsServer};

async fn bus(nats: &NatsServer) -> Result<Bus> {
    let client = async_nats::connect(nats.url()).await?;
    Ok(Bus::open(client, squall_actors::node::layout(1), 4).await?)
}

/// The repository's `core` pack and a pack `t` with `rules`.
fn catalog(rules: Vec<Value>) -> Result<Catalog> {
    let core = squall_domain::loader::load_pack(&repo_root().join("packs/core"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t: PackBundle = serde_json::from_value(json!({
        "pack": {"ref": "t", "name": "t", "version": "1.0.0"},
        "path": "/packs/t",
        "rules": rules,
    }))?;
    Ok(Catalog::build(BTreeMap::from([
        ("core".to_string(), core),
        ("t".to_string(), t),
    ])))
}

/// A webhook rule on `hook` whose criteria want `body.n > 1`, running
/// `core.noop`.
fn rule(name: &str, criteria: Value) -> Value {
    json!({
        "name": name, "pack": "t", "enabled": true,
        "trigger": {"type": triggers::WEBHOOK, "parameters": {"url": "hook"}},
        "criteria": criteria,
        "action": {"ref": "core.noop", "parameters": {}},
    })
}

async fn context(bus: &Bus, catalog: Catalog) -> Result<RulesContext> {
    let keys = KeyStore::open(bus, Cipher::from_hex(&Cipher::generate_hex())?).await?;
    let handle = CatalogHandle::default();
    handle.store(catalog);
    Ok(RulesContext {
        bus: bus.clone(),
        catalog: handle,
        renderer: Arc::new(Renderer::new()),
        kv: KeyCache::start(&keys, bus.audit.clone()).await?,
        configs: ConfigCache::start(bus).await?,
    })
}

fn webhook(id: &str, body: Value) -> TriggerInstance {
    TriggerInstance {
        v: 1,
        id: id.to_string(),
        trigger: triggers::WEBHOOK.to_string(),
        trigger_type: triggers::WEBHOOK.to_string(),
        trigger_parameters: json!({"url": "hook"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        payload: json!({"body": body, "headers": {}}),
        occurrence_time: time::now(),
        trace_tag: None,
    }
}

async fn requests_queued(bus: &Bus) -> Result<u64> {
    Ok(bus
        .js
        .get_stream(EXECUTIONS_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages)
}

#[tokio::test]
async fn a_rule_partition_enforces_each_match_once_and_records_failures() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let ctx = context(
        &bus,
        catalog(vec![
            rule(
                "wants_big",
                json!({"trigger.body.n": {"type": "gt", "pattern": 1}}),
            ),
            // A regex that does not compile: the enforcement fails, named.
            rule(
                "broken",
                json!({"trigger.body.s": {"type": "regex", "pattern": "(unclosed"}}),
            ),
        ])?,
    )
    .await?;

    // A match: one record (`requested`, its id derived from instance and
    // rule), one request on the work queue, one enforcement; processing
    // the same instance again (a redelivery) changes nothing.
    let instance = webhook("ti-1", json!({"n": 5, "s": "x"}));
    rules::process(&ctx, &instance, &ctx.kv).await?;
    rules::process(&ctx, &instance, &ctx.kv).await?;
    let at = instance.occurrence_time;
    let id = ids::derived(&at, &["execution", "ti-1", "t.wants_big"]);
    let (record, _) = bus.execution(&id).await?.expect("the execution's record");
    assert_eq!(record.status, Status::Requested);
    assert_eq!(record.action.action_ref, "core.noop");
    assert_eq!(
        record.rule.as_ref().map(|r| r.rule_ref.as_str()),
        Some("t.wants_big")
    );
    assert_eq!(requests_queued(&bus).await?, 1);
    let enforced = ids::derived(&at, &["enforcement", "ti-1", "t.wants_big"]);
    let e = bus.enforcement(&enforced).await?.expect("an enforcement");
    assert_eq!(e.status, EnforcementStatus::Succeeded);
    assert_eq!(e.execution_id.as_deref(), Some(id.as_str()));
    let failed = ids::derived(&at, &["enforcement", "ti-1", "t.broken"]);
    let f = bus
        .enforcement(&failed)
        .await?
        .expect("a failed enforcement");
    assert_eq!(f.status, EnforcementStatus::Failed);
    assert_eq!(f.execution_id, None);
    let reason = f.failure_reason.unwrap_or_default();
    assert!(reason.contains("t.broken"), "{reason}");
    assert_eq!(bus.enforcement_ids().await?.len(), 2);

    // No match: no record, no request; only the broken rule's failure.
    let small = webhook("ti-2", json!({"n": 0, "s": "x"}));
    rules::process(&ctx, &small, &ctx.kv).await?;
    let at = small.occurrence_time;
    let none = ids::derived(&at, &["execution", "ti-2", "t.wants_big"]);
    assert!(bus.execution(&none).await?.is_none());
    assert_eq!(requests_queued(&bus).await?, 1);
    let not_enforced = ids::derived(&at, &["enforcement", "ti-2", "t.wants_big"]);
    assert!(bus.enforcement(&not_enforced).await?.is_none());
    assert_eq!(bus.enforcement_ids().await?.len(), 3);
    Ok(())
}

/// The first request on the work queue.
async fn first_request(bus: &Bus) -> Result<ExecutionRequest> {
    let mut stream = bus.js.get_stream(EXECUTIONS_STREAM).await?;
    let first = stream.info().await?.state.first_sequence;
    let raw = stream.get_raw_message(first).await?;
    Ok(serde_json::from_slice(&raw.payload)?)
}

#[tokio::test]
async fn a_runner_claims_straight_to_running_and_a_redelivery_runs_nothing() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let rules_ctx = context(
        &bus,
        catalog(vec![rule(
            "always",
            json!({"trigger.body.n": {"type": "exists"}}),
        )])?,
    )
    .await?;
    let instance = webhook("ti-run", json!({"n": 1}));
    rules::process(&rules_ctx, &instance, &rules_ctx.kv).await?;
    let request = first_request(&bus).await?;
    assert!(
        request.created.is_some(),
        "the first request carries the record"
    );

    let data = tempfile::tempdir()?;
    let venvs = squall_runners::venv::Virtualenvs::new(data.path(), Default::default());
    let pool = Arc::new(RunnerPool {
        ctx: RunnerContext {
            bus: bus.clone(),
            catalog: rules_ctx.catalog.clone(),
            node: "n1".into(),
            api_url: "http://127.0.0.1:9/v1".into(),
            auth: AuthStore::open(&bus).await?,
            runners: Arc::new(squall_runners::registry(
                Default::default(),
                data.path(),
                &venvs,
            )),
            shutdown: tokio_util::sync::CancellationToken::new(),
            in_flight: tokio_util::task::TaskTracker::new(),
            cancels: CancelRegistry::default(),
            renderer: rules_ctx.renderer.clone(),
            kv: rules_ctx.kv.clone(),
            configs: rules_ctx.configs.clone(),
        },
    });

    // First delivery: no read, one swap to `running`, one final swap.
    let (gets, updates) = (bus.ops.get(BusOp::Get), bus.ops.get(BusOp::Update));
    let settle = pool.clone().handle(request.clone(), 1).await;
    assert!(matches!(settle, Settle::Done), "{settle:?}");
    assert_eq!(bus.ops.get(BusOp::Get) - gets, 0);
    assert_eq!(bus.ops.get(BusOp::Update) - updates, 2);
    let (record, revision) = bus
        .execution(&request.execution_id)
        .await?
        .expect("the record");
    assert_eq!(record.status, Status::Succeeded);
    assert_eq!(record.node.as_deref(), Some("n1"));
    // `scheduled` is logged as StackStorm's clients expect it, in the
    // same swap as `running` (two updates in all, counted above).
    let statuses: Vec<Status> = record.log.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            Status::Requested,
            Status::Scheduled,
            Status::Running,
            Status::Succeeded
        ]
    );

    // Delivered again (an ack lost): the record says it ended, so nothing
    // runs and nothing is written.
    let settle = pool.clone().handle(request.clone(), 2).await;
    assert!(matches!(settle, Settle::Done), "{settle:?}");
    let (again, rev_again) = bus
        .execution(&request.execution_id)
        .await?
        .expect("the record");
    assert_eq!(rev_again, revision);
    assert_eq!(again.log.len(), 4);
    Ok(())
}
