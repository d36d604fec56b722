//! The engine's pieces on their own against a real nats-server, without a
//! node around them: a rule partition's enforcement of one trigger
//! instance (idempotent by derived ids, failures recorded, non-matches
//! leaving nothing), a runner pool's claim and run of the request it
//! made (straight to `running` in one compare-and-swap, a redelivery
//! running nothing again), and a workflow partition driving a workflow to
//! its end with every event delivered again, to itself and to a new
//! partition (a takeover), each task still running once.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use serde_json::{json, Value};
use squall_actors::auth::AuthStore;
use squall_actors::bus::{Bus, BusOp, EXECUTIONS_BUCKET, EXECUTIONS_STREAM, WORKFLOWS_STREAM};
use squall_actors::catalog::{Catalog, CatalogHandle};
use squall_actors::configs::ConfigCache;
use squall_actors::consumer::{Delivery, Handler, Settle};
use squall_actors::executions::{self, ExecutionSpec};
use squall_actors::flow_events::FlowEventMsg;
use squall_actors::keys::{KeyCache, KeyStore};
use squall_actors::rules::{self, RulesContext};
use squall_actors::runners::{CancelRegistry, RunnerContext, RunnerPool};
use squall_actors::workflows::{WorkflowContext, WorkflowPartition};
use squall_domain::execution::{
    EnforcementStatus, ExecutionRecord, ExecutionRequest, Status, TriggerInstance,
};
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

/// A runner pool of node `n1` with every built-in runner.
/// The workflow engine's context beside `rules`' (same catalog, key cache
/// and configs; a datastore key of its own).
async fn workflow_context(bus: &Bus, rules: &RulesContext) -> Result<WorkflowContext> {
    let keys = KeyStore::open(bus, Cipher::from_hex(&Cipher::generate_hex())?).await?;
    Ok(WorkflowContext {
        bus: bus.clone(),
        catalog: rules.catalog.clone(),
        renderer: rules.renderer.clone(),
        expressions: Arc::new(Renderer::new().keeping_none_marker()),
        kv: rules.kv.clone(),
        configs: rules.configs.clone(),
        cipher: keys.cipher().clone(),
        api_url: "http://127.0.0.1:9/v1".into(),
    })
}

async fn runner_pool(ctx: &RulesContext, data: &std::path::Path) -> Result<Arc<RunnerPool>> {
    let venvs = squall_runners::venv::Virtualenvs::new(data, Default::default());
    Ok(Arc::new(RunnerPool {
        ctx: RunnerContext {
            bus: ctx.bus.clone(),
            catalog: ctx.catalog.clone(),
            node: "n1".into(),
            api_url: "http://127.0.0.1:9/v1".into(),
            auth: AuthStore::open(&ctx.bus).await?,
            runners: Arc::new(squall_runners::registry(Default::default(), data, &venvs)),
            shutdown: tokio_util::sync::CancellationToken::new(),
            in_flight: tokio_util::task::TaskTracker::new(),
            cancels: CancelRegistry::default(),
            renderer: ctx.renderer.clone(),
            kv: ctx.kv.clone(),
            configs: ctx.configs.clone(),
        },
    }))
}

/// The first request on the work queue.
async fn first_request(bus: &Bus) -> Result<ExecutionRequest> {
    let mut stream = bus.js.get_stream(EXECUTIONS_STREAM).await?;
    let first = stream.info().await?.state.first_sequence;
    let raw = stream.get_raw_message(first).await?;
    Ok(serde_json::from_slice(&raw.payload)?)
}

/// The repository's `core` pack and the loadtest pack (its workflows).
fn with_loadtest_pack() -> Result<Catalog> {
    let flows = squall_domain::loader::load_pack(&repo_root().join("loadtest/packs/loadtest"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut packs = catalog(vec![])?.packs;
    packs.insert("loadtest".into(), flows);
    Ok(Catalog::build(packs))
}

/// Requests a run of `action` with `parameters`; its execution id.
async fn start(ctx: &RulesContext, action: &str, parameters: Value) -> Result<String> {
    let record = executions::prepare(
        &ctx.catalog.load(),
        &ctx.renderer,
        &ctx.kv,
        &ctx.configs,
        ExecutionSpec {
            action_ref: action.into(),
            parameters: serde_json::from_value(parameters)?,
            ..ExecutionSpec::default()
        },
    )?;
    Ok(executions::submit(&ctx.bus, record).await?.id)
}

/// Hands every request waiting on `requests` to `pool`, each run to its end.
async fn run_requests(
    pool: &Arc<RunnerPool>,
    requests: &async_nats::jetstream::consumer::PullConsumer,
) -> Result<()> {
    for request in take(requests).await? {
        let request: ExecutionRequest = serde_json::from_slice(&request)?;
        let settle = pool.clone().handle(request, 1).await;
        assert!(matches!(settle, Settle::Done), "{settle:?}");
    }
    Ok(())
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
    let pool = runner_pool(&rules_ctx, data.path()).await?;

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

/// A durable pull consumer on all of `stream`.
async fn reader(bus: &Bus, stream: &str) -> Result<async_nats::jetstream::consumer::PullConsumer> {
    Ok(bus
        .js
        .get_stream(stream)
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(format!("test-{stream}")),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?)
}

/// The payloads waiting on `consumer` (a short wait when none), acked.
async fn take(consumer: &async_nats::jetstream::consumer::PullConsumer) -> Result<Vec<Vec<u8>>> {
    use futures::StreamExt;
    let mut batch = consumer
        .fetch()
        .max_messages(64)
        .expires(std::time::Duration::from_millis(100))
        .messages()
        .await?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(m.payload.to_vec());
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(out)
}

#[tokio::test]
async fn a_workflow_partition_runs_each_task_once_however_often_its_events_come() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let rules_ctx = context(&bus, with_loadtest_pack()?).await?;
    let data = tempfile::tempdir()?;
    let pool = runner_pool(&rules_ctx, data.path()).await?;
    let wf_ctx = workflow_context(&bus, &rules_ctx).await?;
    let partition = Arc::new(WorkflowPartition::open(wf_ctx.clone(), 0).await?);

    let workflow = start(&rules_ctx, "loadtest.flow3", json!({})).await?;

    // The node's two loops, by hand: requests to the runner pool, events
    // to the partition, each event handled twice by it and once more by
    // a partition that has just taken over.
    let requests = reader(&bus, EXECUTIONS_STREAM).await?;
    let events = reader(&bus, WORKFLOWS_STREAM).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        run_requests(&pool, &requests).await?;
        for event in take(&events).await? {
            let event: FlowEventMsg = serde_json::from_slice(&event)?;
            for handler in [
                partition.clone(),
                partition.clone(),
                Arc::new(WorkflowPartition::open(wf_ctx.clone(), 0).await?),
            ] {
                let settle = handler.handle(event.clone(), 1).await;
                assert!(matches!(settle, Settle::Done), "{settle:?}");
            }
        }
        let (record, _) = bus.execution(&workflow).await?.expect("the workflow");
        if record.status.is_completed() {
            break record.status;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the workflow is still {:?}",
            record.status
        );
    };
    assert_eq!(status, Status::Succeeded);
    let tasks = children_of(&bus, &workflow).await?;
    // One record per task, each claimed and run once: requested,
    // scheduled, running, succeeded.
    let mut names: Vec<String> = tasks
        .iter()
        .map(|t| {
            t.context["orquesta"]["task_name"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["one", "three", "two"], "{tasks:?}");
    for task in &tasks {
        assert_eq!(task.status, Status::Succeeded);
        assert_eq!(task.log.len(), 4, "{:?}", task.log);
    }
    assert_eq!(
        requests_queued(&bus).await?,
        0,
        "every request was settled once"
    );
    Ok(())
}

/// The events `consumer` holds (a short wait when none), acked, decoded.
async fn events_of(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
) -> Result<Vec<FlowEventMsg>> {
    take(consumer)
        .await?
        .iter()
        .map(|e| Ok(serde_json::from_slice(e)?))
        .collect()
}

/// A runner's claim and its `start` are two steps: a pause, a resume or a
/// cancel can land between them, and its event can be handled before the
/// start, when the workflow has no record yet. Whatever the order, the
/// end state is exact: held here by handling every other event first,
/// and each start on a partition that has just taken over (a restart
/// between the two). A workflow (and a chain) paused first starts
/// `paused` with nothing started, and its resume runs it to its end, each
/// task once; one paused and resumed first runs and says `running`; one
/// canceled first ends `canceled` with nothing started, and a start
/// delivered again changes none of it.
#[tokio::test]
async fn a_pause_resume_or_cancel_before_the_start_event_is_never_lost() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let packs = tempfile::tempdir()?;
    let chains = squall_tests::write_pack(
        packs.path(),
        "pr",
        &[
            ("pack.yaml", "name: pr\nversion: 0.1.0\n"),
            (
                "actions/two.yaml",
                "name: two\nrunner_type: action-chain\nentry_point: chains/two.yaml\n",
            ),
            (
                "actions/chains/two.yaml",
                "chain:\n  - name: one\n    ref: core.noop\n    on-success: two\n  - name: two\n    ref: core.noop\n",
            ),
        ],
    )?;
    let mut cat = catalog(vec![])?.packs;
    for (name, dir) in [
        ("loadtest", repo_root().join("loadtest/packs/loadtest")),
        ("pr", chains),
    ] {
        let pack = squall_domain::loader::load_pack(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        cat.insert(name.into(), pack);
    }
    let rules_ctx = context(&bus, Catalog::build(cat)).await?;
    let data = tempfile::tempdir()?;
    let pool = runner_pool(&rules_ctx, data.path()).await?;
    let wf_ctx = workflow_context(&bus, &rules_ctx).await?;
    let partition = Arc::new(WorkflowPartition::open(wf_ctx.clone(), 0).await?);
    let flow_paused = start(&rules_ctx, "loadtest.flow3", json!({})).await?;
    let chain_paused = start(&rules_ctx, "pr.two", json!({})).await?;
    let flow_resumed = start(&rules_ctx, "loadtest.flow3", json!({})).await?;
    let chain_resumed = start(&rules_ctx, "pr.two", json!({})).await?;
    let flow_canceled = start(&rules_ctx, "loadtest.flow3", json!({})).await?;
    let chain_canceled = start(&rules_ctx, "pr.two", json!({})).await?;

    // Every claim: each execution is `running` and its start published.
    let requests = reader(&bus, EXECUTIONS_STREAM).await?;
    let events = reader(&bus, WORKFLOWS_STREAM).await?;
    run_requests(&pool, &requests).await?;
    // The requests land between each claim and its start.
    for id in [&flow_paused, &chain_paused, &flow_resumed, &chain_resumed] {
        let paused = executions::pause(&bus, id, "test").await?;
        assert!(
            matches!(paused, executions::PauseOutcome::Requested(_)),
            "{paused:?}"
        );
    }
    for id in [&flow_resumed, &chain_resumed] {
        let resumed = executions::resume(&bus, id, "test").await?;
        assert!(
            matches!(resumed, executions::PauseOutcome::Requested(_)),
            "{resumed:?}"
        );
    }
    for id in [&flow_canceled, &chain_canceled] {
        executions::cancel(&bus, id, "test").await?;
    }
    // Every other event first, then the starts, on a new partition.
    let is_start = |e: &FlowEventMsg| {
        matches!(
            e.event,
            squall_actors::flow_events::FlowEvent::Start { .. }
                | squall_actors::flow_events::FlowEvent::StartChain { .. }
        )
    };
    let (starts, others): (Vec<FlowEventMsg>, Vec<FlowEventMsg>) =
        events_of(&events).await?.into_iter().partition(is_start);
    assert_eq!((starts.len(), others.len()), (6, 8));
    for event in others {
        let settle = partition.clone().handle(event, 1).await;
        assert!(matches!(settle, Settle::Done), "{settle:?}");
    }
    let partition = Arc::new(WorkflowPartition::open(wf_ctx.clone(), 0).await?);
    for event in starts.iter().chain(&starts) {
        let settle = partition.clone().handle(event.clone(), 1).await;
        assert!(matches!(settle, Settle::Done), "{settle:?}");
    }
    let status = |id: String| {
        let bus = bus.clone();
        async move {
            let (record, _) = bus.execution(&id).await?.expect("a record");
            Ok::<_, anyhow::Error>(record.status)
        }
    };
    for id in [&flow_paused, &chain_paused] {
        assert_eq!(status(id.clone()).await?, Status::Paused, "{id}");
        assert!(children_of(&bus, id).await?.is_empty(), "nothing started");
    }
    for id in [&flow_canceled, &chain_canceled] {
        assert_eq!(status(id.clone()).await?, Status::Canceled, "{id}");
        assert!(children_of(&bus, id).await?.is_empty(), "nothing started");
    }
    // Each canceled with its own kind's result: the chain's cancel reached
    // the chain engine though the chain had no record yet.
    let (canceled, _) = bus.execution(&chain_canceled).await?.expect("the chain");
    assert_eq!(canceled.result["tasks"], json!([]), "{}", canceled.result);
    let (canceled, _) = bus.execution(&flow_canceled).await?.expect("the workflow");
    assert_eq!(canceled.result, json!({"output": null}));
    assert_eq!(status(flow_resumed.clone()).await?, Status::Running);
    assert_eq!(status(chain_resumed.clone()).await?, Status::Running);
    // Only the first tasks of the two that run were requested.
    assert_eq!(
        requests_queued(&bus).await?,
        2,
        "the resumed ones' first tasks"
    );

    // The paused ones resume; all four run to their end, each task once.
    for id in [&flow_paused, &chain_paused] {
        executions::resume(&bus, id, "test").await?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        run_requests(&pool, &requests).await?;
        for event in events_of(&events).await? {
            let settle = partition.clone().handle(event, 1).await;
            assert!(matches!(settle, Settle::Done), "{settle:?}");
        }
        let mut done = true;
        for id in [&flow_paused, &chain_paused, &flow_resumed, &chain_resumed] {
            done &= status(id.clone()).await?.is_completed();
        }
        if done {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "still running");
    }
    for (id, tasks) in [
        (&flow_paused, 3),
        (&chain_paused, 2),
        (&flow_resumed, 3),
        (&chain_resumed, 2),
    ] {
        assert_eq!(status(id.clone()).await?, Status::Succeeded, "{id}");
        let ran = children_of(&bus, id).await?;
        assert_eq!(ran.len(), tasks, "{id}: {ran:?}");
        for task in &ran {
            assert_eq!(task.status, Status::Succeeded);
            assert_eq!(task.log.len(), 4, "{:?}", task.log);
        }
    }
    for id in [&flow_canceled, &chain_canceled] {
        assert_eq!(status(id.clone()).await?, Status::Canceled, "{id}");
        assert!(children_of(&bus, id).await?.is_empty());
    }
    Ok(())
}

/// The executions whose parent is `parent`.
async fn children_of(bus: &Bus, parent: &str) -> Result<Vec<ExecutionRecord>> {
    let mut found = Vec::new();
    let mut keys = bus.bucket(EXECUTIONS_BUCKET)?.keys().await?;
    while let Some(key) = futures::StreamExt::next(&mut keys).await {
        let (record, _) = bus.execution(&key?).await?.expect("a record");
        if record.parent.as_deref() == Some(parent) {
            found.push(record);
        }
    }
    Ok(found)
}

/// Events that wait together reach the partition as one batch: the item
/// ends of a with-items task are applied with one record write and their
/// next items requested at once, and the batch delivered again (to the
/// partition and to one that has just taken over) runs no item twice.
#[tokio::test]
async fn a_workflow_partition_applies_waiting_item_ends_at_once() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let rules_ctx = context(&bus, with_loadtest_pack()?).await?;
    let data = tempfile::tempdir()?;
    let pool = runner_pool(&rules_ctx, data.path()).await?;
    let wf_ctx = workflow_context(&bus, &rules_ctx).await?;
    let partition = Arc::new(WorkflowPartition::open(wf_ctx.clone(), 0).await?);
    let workflow = start(
        &rules_ctx,
        "loadtest.items",
        json!({"count": 30, "concurrency": 10}),
    )
    .await?;

    let requests = reader(&bus, EXECUTIONS_STREAM).await?;
    let events = reader(&bus, WORKFLOWS_STREAM).await?;
    let deliveries = |events: &[FlowEventMsg]| {
        events
            .iter()
            .map(|event| Delivery {
                event: event.clone(),
                delivered: 1,
                parent: None,
            })
            .collect::<Vec<_>>()
    };
    let mut batches = 0;
    let mut last_batch = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        run_requests(&pool, &requests).await?;
        let waiting = events_of(&events).await?;
        if waiting.len() > 1 {
            let (writes, requested) = (bus.ops.get(BusOp::Update), requests_queued(&bus).await?);
            let settles = partition.clone().handle_batch(deliveries(&waiting)).await;
            assert_eq!(settles, vec![Settle::Done; waiting.len()]);
            let (record, _) = bus.execution(&workflow).await?.expect("the workflow");
            // One write of the workflow's record (and, at its end, one of
            // its execution's), not one per event.
            let expected = if record.status.is_completed() { 2 } else { 1 };
            assert_eq!(
                bus.ops.get(BusOp::Update) - writes,
                expected,
                "{} item ends",
                waiting.len()
            );
            // Each ended item makes room for the next, while items remain.
            let more = requests_queued(&bus).await? - requested;
            assert!(more <= waiting.len() as u64, "{more} requested");
            // Delivered again: nothing changes, nothing is requested.
            let settles = partition.clone().handle_batch(deliveries(&waiting)).await;
            assert_eq!(settles, vec![Settle::Done; waiting.len()]);
            assert_eq!(requests_queued(&bus).await? - requested, more);
            batches += 1;
            last_batch = waiting;
        } else {
            for event in waiting {
                let settle = partition.clone().handle(event, 1).await;
                assert!(matches!(settle, Settle::Done), "{settle:?}");
            }
        }
        let (record, _) = bus.execution(&workflow).await?.expect("the workflow");
        if record.status.is_completed() {
            assert_eq!(record.status, Status::Succeeded, "{:?}", record.result);
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the workflow is still {:?}",
            record.status
        );
    }
    assert!(batches >= 3, "only {batches} batches");
    // A partition that has just taken over gets the last batch again.
    let takeover = Arc::new(WorkflowPartition::open(wf_ctx.clone(), 0).await?);
    let settles = takeover.handle_batch(deliveries(&last_batch)).await;
    assert_eq!(settles, vec![Settle::Done; last_batch.len()]);

    let items = children_of(&bus, &workflow).await?;
    assert_eq!(items.len(), 30, "one execution per item");
    for item in &items {
        assert_eq!(item.status, Status::Succeeded);
        assert_eq!(item.log.len(), 4, "run once: {:?}", item.log);
    }
    assert_eq!(requests_queued(&bus).await?, 0, "nothing requested again");
    Ok(())
}
