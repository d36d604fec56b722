//! The engine's one consumer loop against a real nats-server: bounded
//! concurrency, settling as the handler says, unreadable messages dropped,
//! messages waiting in a row handed to a batching handler at once, and
//! nothing acknowledged once the node's leases lapsed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use ractor::Actor;
use serde_json::Value;
use squall_actors::bus::{Bus, TRIGGERS_STREAM};
use squall_actors::consumer::{Consumer, ConsumerSpec, Delivery, Handler, Settle};
use squall_actors::lease::LeaseValidity;
use squall_tests::{poll, NatsServer};
use tokio::sync::Semaphore;

/// Records what it handles; each message waits for a permit of `gate`
/// and is settled as `settle` says for its `n`.
#[derive(Debug)]
struct Recorder {
    seen: Mutex<HashMap<u64, usize>>,
    now: Mutex<(usize, usize)>,
    gate: Semaphore,
    settle: fn(u64, usize) -> Settle,
}

impl Recorder {
    fn new(open: bool, settle: fn(u64, usize) -> Settle) -> Arc<Recorder> {
        Arc::new(Recorder {
            seen: Mutex::new(HashMap::new()),
            now: Mutex::new((0, 0)),
            gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
            settle,
        })
    }

    fn times(&self, n: u64) -> usize {
        self.seen.lock().unwrap().get(&n).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.seen.lock().unwrap().values().sum()
    }

    /// (handling now, most ever at once).
    fn concurrency(&self) -> (usize, usize) {
        *self.now.lock().unwrap()
    }
}

impl Handler for Recorder {
    type Event = Value;
    const WHAT: &'static str = "test events";

    async fn handle(self: Arc<Self>, event: Value, _delivered: i64) -> Settle {
        let n = event["n"].as_u64().unwrap_or(0);
        {
            let mut now = self.now.lock().unwrap();
            now.0 += 1;
            now.1 = now.1.max(now.0);
        }
        let permit = self.gate.acquire().await;
        drop(permit);
        self.now.lock().unwrap().0 -= 1;
        let times = {
            let mut seen = self.seen.lock().unwrap();
            let times = seen.entry(n).or_default();
            *times += 1;
            *times
        };
        (self.settle)(n, times)
    }
}

async fn bus(nats: &NatsServer) -> Result<Bus> {
    let client = async_nats::connect(nats.url()).await?;
    Ok(Bus::open(client, squall_actors::node::layout(1), 4).await?)
}

fn spec(concurrency: usize, ack_wait: Duration) -> ConsumerSpec {
    ConsumerSpec {
        stream: TRIGGERS_STREAM,
        name: "test".into(),
        filter: "squall.trigger.0.>".into(),
        max_ack_pending: 64,
        concurrency,
        ack_wait,
    }
}

async fn publish(bus: &Bus, from: u64, to: u64) -> Result<()> {
    for n in from..to {
        bus.js
            .publish(
                format!("squall.trigger.0.m{n}"),
                serde_json::json!({ "n": n }).to_string().into(),
            )
            .await?
            .await?;
    }
    Ok(())
}

/// (delivered but not settled, not yet delivered).
async fn pending(bus: &Bus) -> Result<(usize, u64)> {
    let info = bus.triggers.consumer_info("test").await?;
    Ok((info.num_ack_pending, info.num_pending))
}

/// Every message published so far acknowledged. The consumer's pending
/// counts alone do not say so: they are the consumer's view, which the
/// server updates after it has stored a message and acknowledged its
/// publish, so for a moment they read `(0, 0)` while a message is still to
/// be delivered (about one run in six finished its first wait with one
/// message of three handled). The ack floor reaching the stream's last
/// sequence does say so: it moves only when a message is acknowledged.
async fn settled(bus: &Bus) -> Result<()> {
    poll(Duration::from_secs(10), || async {
        let last = bus.triggers.clone().info().await?.state.last_sequence;
        let info = bus.triggers.consumer_info("test").await?;
        let done = info.ack_floor.stream_sequence >= last
            && (info.num_ack_pending, info.num_pending) == (0, 0);
        Ok(done.then_some(()))
    })
    .await
}

#[tokio::test]
async fn a_consumer_handles_at_most_its_concurrency_at_once() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let handler = Recorder::new(false, |_, _| Settle::Done);
    let lease = LeaseValidity::unbounded();
    let args = (
        bus.clone(),
        spec(3, Duration::from_secs(30)),
        handler.clone(),
        lease,
    );
    let (actor, _) = Actor::spawn(None, Consumer::<Recorder>::default(), args).await?;
    publish(&bus, 0, 10).await?;
    poll(Duration::from_secs(10), || async {
        Ok((handler.concurrency().0 == 3).then_some(()))
    })
    .await?;
    handler.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    settled(&bus).await?;
    assert_eq!(handler.total(), 10);
    assert_eq!(handler.concurrency(), (0, 3));
    actor.stop(None);
    Ok(())
}

#[tokio::test]
async fn a_consumer_settles_as_its_handler_says() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    // 1 is not possible on its first try; 2 can never be handled.
    let handler = Recorder::new(true, |n, times| match (n, times) {
        (1, 1) => Settle::Later(Duration::from_millis(200)),
        (2, _) => Settle::Drop("never".into()),
        _ => Settle::Done,
    });
    let args = (
        bus.clone(),
        spec(4, Duration::from_secs(30)),
        handler.clone(),
        LeaseValidity::unbounded(),
    );
    let (actor, _) = Actor::spawn(None, Consumer::<Recorder>::default(), args).await?;
    publish(&bus, 0, 3).await?;
    // An unreadable message is dropped without reaching the handler.
    bus.js
        .publish("squall.trigger.0.junk", "not json".into())
        .await?
        .await?;
    settled(&bus).await?;
    assert_eq!(
        (handler.times(0), handler.times(1), handler.times(2)),
        (1, 2, 1)
    );
    assert_eq!(handler.total(), 4);
    actor.stop(None);
    Ok(())
}

#[tokio::test]
async fn a_consumer_whose_lease_lapsed_acknowledges_nothing_more() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let handler = Recorder::new(true, |_, _| Settle::Done);
    let lease = LeaseValidity::default();
    lease.hold_until(tokio::time::Instant::now() + Duration::from_secs(3600));
    let args = (
        bus.clone(),
        spec(4, Duration::from_secs(1)),
        handler.clone(),
        lease.clone(),
    );
    let (actor, _) = Actor::spawn(None, Consumer::<Recorder>::default(), args).await?;
    publish(&bus, 0, 3).await?;
    settled(&bus).await?;
    assert_eq!(handler.total(), 3);

    // Fenced: what it handles now stays unacknowledged, so JetStream hands
    // it out again after the ack wait (to the partition's next owner).
    lease.lapse();
    publish(&bus, 3, 5).await?;
    poll(Duration::from_secs(10), || async {
        Ok((handler.times(3) >= 2 && handler.times(4) >= 2).then_some(()))
    })
    .await?;
    assert_eq!(pending(&bus).await?.0, 2, "a fenced consumer acknowledged");
    assert_eq!(handler.times(0), 1, "an acknowledged message came back");

    // Leases back: the next delivery is acknowledged, and that is the end.
    lease.hold_until(tokio::time::Instant::now() + Duration::from_secs(3600));
    settled(&bus).await?;
    actor.stop(None);
    Ok(())
}

#[tokio::test]
async fn one_at_a_time_a_consumer_goes_on_past_every_message_even_a_panicking_one() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    // Message 0 makes its handler panic, every time it comes.
    let handler = Recorder::new(true, |n, _| {
        assert_ne!(n, 0, "a handler bug");
        Settle::Done
    });
    let args = (
        bus.clone(),
        spec(1, Duration::from_secs(1)),
        handler.clone(),
        LeaseValidity::unbounded(),
    );
    let (actor, _) = Actor::spawn(None, Consumer::<Recorder>::default(), args).await?;
    publish(&bus, 0, 200).await?;
    poll(Duration::from_secs(30), || async {
        Ok((1..200).all(|n| handler.times(n) == 1).then_some(()))
    })
    .await?;
    assert!(handler.times(0) >= 1);
    assert_eq!(handler.concurrency().1, 1, "one at a time");
    actor.stop(None);
    Ok(())
}

/// Takes the messages waiting in a row, up to 8 at once; each call waits
/// for a permit of `gate`. Message 5 is not possible on its first try.
#[derive(Debug)]
struct Batcher {
    batches: Mutex<Vec<Vec<(u64, i64)>>>,
    gate: Semaphore,
}

impl Handler for Batcher {
    type Event = Value;
    const WHAT: &'static str = "test events";
    const BATCH: usize = 8;

    async fn handle(self: Arc<Self>, event: Value, delivered: i64) -> Settle {
        let one = Delivery {
            event,
            delivered,
            parent: None,
        };
        self.handle_batch(vec![one]).await.remove(0)
    }

    async fn handle_batch(self: Arc<Self>, batch: Vec<Delivery<Value>>) -> Vec<Settle> {
        drop(self.gate.acquire().await);
        let seen: Vec<(u64, i64)> = batch
            .iter()
            .map(|d| (d.event["n"].as_u64().unwrap_or(u64::MAX), d.delivered))
            .collect();
        self.batches.lock().unwrap().push(seen.clone());
        seen.iter()
            .map(|(n, delivered)| match (n, delivered) {
                (5, 1) => Settle::Later(Duration::from_millis(100)),
                _ => Settle::Done,
            })
            .collect()
    }
}

#[tokio::test]
async fn one_at_a_time_a_batching_consumer_takes_the_waiting_messages_together() -> Result<()> {
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let handler = Arc::new(Batcher {
        batches: Mutex::new(Vec::new()),
        gate: Semaphore::new(0),
    });
    let args = (
        bus.clone(),
        spec(1, Duration::from_secs(30)),
        handler.clone(),
        LeaseValidity::unbounded(),
    );
    let (actor, _) = Actor::spawn(None, Consumer::<Batcher>::default(), args).await?;
    // The first message holds the handler while the rest arrive and wait,
    // an unreadable one among them.
    publish(&bus, 0, 10).await?;
    bus.js
        .publish("squall.trigger.0.junk", "not json".into())
        .await?
        .await?;
    publish(&bus, 10, 20).await?;
    poll(Duration::from_secs(10), || async {
        Ok((pending(&bus).await? == (21, 0)).then_some(()))
    })
    .await?;
    handler.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    settled(&bus).await?;

    let batches = handler.batches.lock().unwrap().clone();
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 8),
        "{batches:?}"
    );
    assert!(
        batches.iter().filter(|b| b.len() > 1).count() >= 2,
        "waiting messages came one by one: {batches:?}"
    );
    let mut handled: Vec<(u64, i64)> = batches.concat();
    handled.sort_unstable();
    let mut expected: Vec<(u64, i64)> = (0..20).map(|n| (n, 1)).collect();
    expected.insert(6, (5, 2));
    assert_eq!(
        handled, expected,
        "each once, 5 again after its Later, the junk never"
    );
    actor.stop(None);
    Ok(())
}

/// `Bucket::modify` under contention: concurrent writers of one key each
/// see their change applied exactly once; `Keep` writes nothing and gives
/// the revision that holds the value.
#[tokio::test]
async fn a_typed_bucket_applies_concurrent_modifications_once_each() -> Result<()> {
    use squall_actors::bus::{Bucket, Change};
    let nats = NatsServer::start()?;
    let bus = bus(&nats).await?;
    let counters: Bucket<u64> =
        Bucket::new(bus.bucket(squall_actors::bus::CLUSTER_BUCKET)?.clone());
    let writers = (0..8).map(|_| {
        let counters = counters.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                counters
                    .modify("counter", |n| Change::Write(n.unwrap_or(0) + 1, ()))
                    .await?;
            }
            Ok::<_, squall_actors::EngineError>(())
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer??;
    }
    let (value, revision) = counters.get("counter").await?.expect("the counter");
    assert_eq!(value, 80, "every increment applied once");
    let (seen, kept_at) = counters.modify("counter", Change::<u64, _>::Keep).await?;
    assert_eq!((seen, kept_at), (Some(80), revision), "Keep writes nothing");
    assert_eq!(
        counters.create("counter", &1).await?,
        None,
        "create never overwrites"
    );
    Ok(())
}
