//! The engine's one consumer loop: [`Consumer`], an actor that reads a
//! durable JetStream pull consumer, decodes each message, hands it to a
//! [`Handler`] with bounded concurrency, and settles it as the handler says
//! (acknowledge, deliver again after a delay, or drop). A handler that
//! batches ([`Handler::BATCH`]) is handed the messages waiting in a row
//! at once, and still settles each on its own.
//!
//! Rule partitions and workflow partitions are consumers with different
//! handlers. What they share lives here, once:
//! - an unreadable message is dropped (`Term`) with an error, never retried;
//! - a handler that runs long keeps its message (`Progress` every third
//!   of the ack wait);
//! - nothing is acknowledged once the node's leases have lapsed
//!   ([`LeaseValidity`]): a fenced node's late answer must not consume a
//!   message its partition's next owner is about to handle;
//! - the durable consumer is opened with the engine's one ack wait
//!   ([`ACK_WAIT`](crate::timing::ACK_WAIT)).
//!
//! The actor owns its handler tasks: stopping it (a partition disowned,
//! the node shutting down) gives them [`STOP_GRACE`] to finish, then aborts
//! them; their messages, unacknowledged, come back after the ack wait.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::bus::{from_bytes, Bus};
use crate::error::{bus_err, EngineError};
use crate::lease::LeaseValidity;
use crate::pump::Pump;
use crate::timing::STOP_GRACE;

/// What becomes of a handled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Its effects are stored: acknowledge it.
    Done,
    /// Not now (a bus error, a record not readable yet): deliver it again
    /// after this delay.
    Later(Duration),
    /// It can never be handled: drop it, logging why.
    Drop(String),
}

impl Settle {
    /// `Later(delay)` for a retryable error, `Drop` for any other.
    pub fn from_error(e: &EngineError, delay: Duration) -> Settle {
        if e.is_retryable() {
            Settle::Later(delay)
        } else {
            Settle::Drop(e.to_string())
        }
    }
}

/// What a consumer does with each message.
pub trait Handler: Send + Sync + 'static {
    /// The message, as JSON.
    type Event: DeserializeOwned + Send + 'static;
    /// What the messages are, for logs (`trigger instances`).
    const WHAT: &'static str;

    /// Handles one message, delivered for the `delivered`th time. Runs
    /// concurrently with others of the same consumer, up to its
    /// concurrency.
    fn handle(
        self: Arc<Self>,
        event: Self::Event,
        delivered: i64,
    ) -> impl Future<Output = Settle> + Send;

    /// Messages waiting together that [`Handler::handle_batch`] may take at
    /// once; 1 (the default) hands each to [`Handler::handle`].
    const BATCH: usize = 1;

    /// Handles messages that were waiting together, in delivery order,
    /// with one settle per message in the same order. Called only when
    /// [`Handler::BATCH`] is above 1 and more than one message waits; a
    /// handler batches to share work between messages (one record write
    /// for many events), never to change what each one does.
    fn handle_batch(
        self: Arc<Self>,
        batch: Vec<Delivery<Self::Event>>,
    ) -> impl Future<Output = Vec<Settle>> + Send {
        async move {
            let mut settles = Vec::with_capacity(batch.len());
            for delivery in batch {
                settles.push(
                    self.clone()
                        .handle(delivery.event, delivery.delivered)
                        .await,
                );
            }
            settles
        }
    }

    /// Every this often, and once at start, [`Handler::tick`] runs. It
    /// takes a handler slot like a message: with a concurrency of one it
    /// never overlaps a message.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Periodic work (sweeps).
    fn tick(self: Arc<Self>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One message of a batch: its event, how often it was delivered, and the
/// trace context its publisher sent (the handler's spans for it continue
/// that trace).
#[derive(Debug)]
pub struct Delivery<E> {
    pub event: E,
    pub delivered: i64,
    pub parent: Option<opentelemetry::Context>,
}

/// Where a consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    /// The durable consumer's name.
    pub name: String,
    pub filter: String,
    /// Messages JetStream hands out before one is settled.
    pub max_ack_pending: i64,
    /// Messages handled at once.
    pub concurrency: usize,
    /// [`ACK_WAIT`](crate::timing::ACK_WAIT), but for tests.
    pub ack_wait: Duration,
}

/// Opens (creating if needed) a durable pull consumer and returns its
/// message stream.
pub async fn pull_messages(
    bus: &Bus,
    spec: &ConsumerSpec,
) -> Result<consumer::pull::Stream, EngineError> {
    let name = &spec.name;
    let stream = bus
        .js
        .get_stream(spec.stream)
        .await
        .map_err(|e| bus_err("open stream", e))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: spec.filter.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_ack_pending: spec.max_ack_pending,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| bus_err(&format!("open consumer {name}"), e))?;
    consumer
        .messages()
        .await
        .map_err(|e| bus_err(&format!("consume {name}"), e))
}

/// The consumer actor; one per partition (or pool) it serves.
#[derive(Debug)]
pub struct Consumer<H>(std::marker::PhantomData<H>);

impl<H> Default for Consumer<H> {
    fn default() -> Self {
        Consumer(std::marker::PhantomData)
    }
}

/// Messages of [`Consumer`].
#[derive(Debug)]
pub enum ConsumerMsg {
    Delivered(Box<Result<jetstream::Message, consumer::pull::MessagesError>>),
    StreamEnded,
    /// A handler task ended (a tick's, or a message's); another may start.
    Finished {
        tick: bool,
    },
    Tick,
}

/// Work waiting for a handler slot.
enum Work {
    Message(Box<jetstream::Message>),
    Tick,
}

/// State of [`Consumer`].
pub struct ConsumerState<H> {
    handler: Arc<H>,
    spec: ConsumerSpec,
    lease: LeaseValidity,
    /// Waiting for a free slot: at most `max_ack_pending` messages and one
    /// tick.
    waiting: VecDeque<Work>,
    running: JoinSet<()>,
    /// Work started and not yet reported `Finished`: the slots in use.
    /// Counted, not read off `running`, whose tasks may still be winding
    /// down after reporting.
    busy: usize,
    /// A tick is waiting or running.
    ticking: bool,
    _pump: Pump,
}

impl<H> std::fmt::Debug for ConsumerState<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerState")
            .field("consumer", &self.spec.name)
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Actor for Consumer<H> {
    type Msg = ConsumerMsg;
    type State = ConsumerState<H>;
    type Arguments = (Bus, ConsumerSpec, Arc<H>, LeaseValidity);

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        (bus, spec, handler, lease): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let messages = pull_messages(&bus, &spec).await?;
        if let Some(every) = handler.tick_every() {
            myself.send_message(ConsumerMsg::Tick)?;
            myself.send_interval(every, || ConsumerMsg::Tick);
        }
        let pump = Pump::start(
            messages,
            myself,
            |m| ConsumerMsg::Delivered(Box::new(m)),
            ConsumerMsg::StreamEnded,
        );
        Ok(ConsumerState {
            handler,
            spec,
            lease,
            waiting: VecDeque::new(),
            running: JoinSet::new(),
            busy: 0,
            ticking: false,
            _pump: pump,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerMsg>,
        msg: ConsumerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Delivered(m) => {
                let m = (*m).map_err(|e| bus_err(&format!("consume {}", H::WHAT), e))?;
                state.waiting.push_back(Work::Message(Box::new(m)));
            }
            ConsumerMsg::StreamEnded => {
                return Err(Box::new(bus_err(
                    &format!("consume {}", H::WHAT),
                    "stream ended",
                )))
            }
            ConsumerMsg::Finished { tick } => {
                state.busy -= 1;
                state.ticking &= !tick;
                // Tasks that have ended leave the set.
                while state.running.try_join_next().is_some() {}
            }
            // Skipped while the previous tick still waits or runs.
            ConsumerMsg::Tick if !state.ticking => {
                state.ticking = true;
                state.waiting.push_back(Work::Tick);
            }
            ConsumerMsg::Tick => {}
        }
        start_waiting(&myself, state);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConsumerMsg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let all_ended = async { while state.running.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, all_ended).await.is_err() {
            tracing::debug!(consumer = %state.spec.name, running = state.running.len(),
                "handlers aborted at stop; their messages come back after the ack wait");
            state.running.abort_all();
        }
        Ok(())
    }
}

/// What a panic said, when it said it as text.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

/// Starts waiting work while slots are free. A handler that batches
/// takes the messages waiting behind the first one too, up to its
/// [`Handler::BATCH`].
fn start_waiting<H: Handler>(myself: &ActorRef<ConsumerMsg>, state: &mut ConsumerState<H>) {
    while state.busy < state.spec.concurrency {
        let Some(work) = state.waiting.pop_front() else {
            return;
        };
        let tick = matches!(work, Work::Tick);
        let job: futures::future::BoxFuture<'static, ()> = match work {
            Work::Tick => Box::pin(state.handler.clone().tick()),
            Work::Message(first) => {
                let mut batch = vec![*first];
                while batch.len() < H::BATCH {
                    match state.waiting.pop_front() {
                        Some(Work::Message(msg)) => batch.push(*msg),
                        Some(tick) => {
                            state.waiting.push_front(tick);
                            break;
                        }
                        None => break,
                    }
                }
                let handling = Handling {
                    handler: state.handler.clone(),
                    lease: state.lease.clone(),
                    name: state.spec.name.clone(),
                    progress: state.spec.ack_wait / 3,
                };
                if batch.len() == 1 {
                    Box::pin(handling.one(batch.swap_remove(0)))
                } else {
                    Box::pin(handling.many(batch))
                }
            }
        };
        let me = myself.clone();
        let name = state.spec.name.clone();
        state.busy += 1;
        state.running.spawn(async move {
            // A panic is logged and frees its slot like any end; a message
            // it was handling stays unsettled and comes back after the ack
            // wait, and the others go on.
            if let Err(panic) = AssertUnwindSafe(job).catch_unwind().await {
                tracing::error!(consumer = %name, panic = ?panic_text(panic),
                    "a handler panicked; its message comes back after the ack wait");
            }
            let _ = me.cast(ConsumerMsg::Finished { tick });
        });
    }
}

/// What handling messages needs besides them.
struct Handling<H> {
    handler: Arc<H>,
    lease: LeaseValidity,
    name: String,
    /// How often a message under way is reported in progress.
    progress: Duration,
}

impl<H: Handler> Handling<H> {
    /// Decodes, handles and settles one message.
    async fn one(self, msg: jetstream::Message) {
        let settle = match decode::<H>(&msg) {
            Ok(Delivery {
                event,
                delivered,
                parent,
            }) => {
                let handled = self.handler.handle(event, delivered);
                match parent {
                    Some(cx) => {
                        use opentelemetry::context::FutureExt;
                        keep_while(&[&msg], self.progress, handled.with_context(cx)).await
                    }
                    None => keep_while(&[&msg], self.progress, handled).await,
                }
            }
            Err(settle) => settle,
        };
        settle_message(&self.name, &self.lease, &msg, settle).await;
    }

    /// Decodes the messages, hands the readable ones to the handler at
    /// once, and settles each as it says (one it gave no answer for comes
    /// back after the ack wait).
    async fn many(self, msgs: Vec<jetstream::Message>) {
        let mut settles: Vec<Option<Settle>> = vec![None; msgs.len()];
        let mut batch = Vec::with_capacity(msgs.len());
        let mut positions = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.iter().enumerate() {
            match decode::<H>(msg) {
                Ok(delivery) => {
                    batch.push(delivery);
                    positions.push(i);
                }
                Err(settle) => settles[i] = Some(settle),
            }
        }
        if !batch.is_empty() {
            let all: Vec<&jetstream::Message> = msgs.iter().collect();
            let handled = keep_while(&all, self.progress, self.handler.handle_batch(batch)).await;
            for (i, settle) in positions.into_iter().zip(handled) {
                settles[i] = Some(settle);
            }
        }
        for (msg, settle) in msgs.iter().zip(settles) {
            if let Some(settle) = settle {
                settle_message(&self.name, &self.lease, msg, settle).await;
            }
        }
    }
}

/// A message's event, or the settle of one that cannot be read.
fn decode<H: Handler>(msg: &jetstream::Message) -> Result<Delivery<H::Event>, Settle> {
    match from_bytes::<H::Event>(&msg.subject, &msg.payload) {
        Ok(event) => Ok(Delivery {
            event,
            delivered: msg.info().map_or(1, |i| i.delivered),
            // The handler's spans continue the publisher's trace.
            parent: crate::telemetry::extract(msg.headers.as_ref()),
        }),
        Err(e) => Err(Settle::Drop(format!("unreadable {}: {e}", H::WHAT))),
    }
}

/// Runs `work`, reporting progress on `msgs` every `progress` while it
/// lasts.
async fn keep_while<T>(
    msgs: &[&jetstream::Message],
    progress: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            settle = &mut work => return settle,
            () = tokio::time::sleep(progress) => {
                for msg in msgs {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(subject = %msg.subject, error = %e, "progress not reported");
                    }
                }
            }
        }
    }
}

/// Settles `msg` as the handler said, unless the leases lapsed meanwhile.
async fn settle_message(
    consumer: &str,
    lease: &LeaseValidity,
    msg: &jetstream::Message,
    settle: Settle,
) {
    if !lease.valid() {
        tracing::warn!(consumer, subject = %msg.subject,
            "leases lapsed while handling; the message is left to the partition's next owner");
        return;
    }
    let acked = match &settle {
        Settle::Done => msg.ack().await,
        Settle::Later(delay) => msg.ack_with(AckKind::Nak(Some(*delay))).await,
        Settle::Drop(reason) => {
            tracing::error!(consumer, subject = %msg.subject, reason = %reason, "message dropped");
            msg.ack_with(AckKind::Term).await
        }
    };
    if let Err(e) = acked {
        tracing::warn!(consumer, subject = %msg.subject, error = %e,
            "settling a message failed; JetStream delivers it again");
    }
}
