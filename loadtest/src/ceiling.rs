//! The ceiling: Squall's loop with no Squall logic. Publish a message with
//! a `Nats-Msg-Id` to a stream, pull it, put a KV value, ack: the bus work
//! one execution needs at the least, so a report can say what fraction of
//! the bus alone Squall achieves on the same machine. Uses its own stream
//! and bucket, deleted afterwards.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;

use crate::LoadError;

const STREAM: &str = "LOADTEST_CEILING";
const BUCKET: &str = "loadtest_ceiling";

/// What the ceiling run measured.
#[derive(Debug, Clone)]
pub struct CeilingRun {
    pub messages: usize,
    pub secs: f64,
    /// Publish → KV put done → acked, ms.
    pub latencies: Vec<f64>,
}

/// Runs `count` messages through publish → consume → KV put → ack, with
/// up to `in_flight` unacknowledged publishes.
pub async fn run(nats_url: &str, count: usize, in_flight: usize) -> Result<CeilingRun, LoadError> {
    let client = async_nats::connect(nats_url)
        .await
        .map_err(|e| LoadError::nats("connect", e))?;
    let js = jetstream::new(client);
    let _ = js.delete_stream(STREAM).await;
    let _ = js.delete_key_value(BUCKET).await;
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["loadtest.ceiling.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| LoadError::nats("create stream", e))?;
    let kv = js
        .create_key_value(kv::Config {
            bucket: BUCKET.into(),
            history: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| LoadError::nats("create bucket", e))?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("ceiling".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: in_flight as i64 * 2,
            ..Default::default()
        })
        .await
        .map_err(|e| LoadError::nats("create consumer", e))?;
    let start = Instant::now();
    // The consumer side works `in_flight` messages at once, as Squall's
    // partitions and runner pools do.
    let worker = {
        let kv = kv.clone();
        tokio::spawn(async move {
            let latencies = std::sync::Mutex::new(Vec::with_capacity(count));
            let messages = consumer
                .messages()
                .await
                .map_err(|e| LoadError::nats("consume", e))?;
            messages
                .take(count)
                .for_each_concurrent(in_flight, |msg| {
                    let (kv, latencies) = (kv.clone(), &latencies);
                    async move {
                        let Ok(msg) = msg else { return };
                        let sent_ns: u128 = std::str::from_utf8(&msg.payload)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        let key = msg
                            .subject
                            .as_str()
                            .rsplit('.')
                            .next()
                            .unwrap_or("x")
                            .to_string();
                        if kv.put(key, msg.payload.clone()).await.is_err()
                            || msg.double_ack().await.is_err()
                        {
                            return;
                        }
                        let now_ns = start.elapsed().as_nanos();
                        if let Ok(mut l) = latencies.lock() {
                            l.push(now_ns.saturating_sub(sent_ns) as f64 / 1e6);
                        }
                    }
                })
                .await;
            Ok::<_, LoadError>(latencies.into_inner().unwrap_or_default())
        })
    };
    let mut acks = futures::stream::FuturesUnordered::new();
    for n in 0..count {
        let payload = start.elapsed().as_nanos().to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("ceiling-{n}").as_str());
        let ack = js
            .publish_with_headers(format!("loadtest.ceiling.{n}"), headers, payload.into())
            .await
            .map_err(|e| LoadError::nats("publish", e))?;
        acks.push(std::future::IntoFuture::into_future(ack));
        while acks.len() >= in_flight {
            if let Some(r) = acks.next().await {
                r.map_err(|e| LoadError::nats("publish ack", e))?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r.map_err(|e| LoadError::nats("publish ack", e))?;
    }
    let latencies = tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .map_err(|_| LoadError::Timeout("the ceiling consumer stalled".into()))?
        .map_err(|e| LoadError::Setup(format!("ceiling worker: {e}")))??;
    let secs = start.elapsed().as_secs_f64();
    let _ = js.delete_stream(STREAM).await;
    let _ = js.delete_key_value(BUCKET).await;
    Ok(CeilingRun {
        messages: latencies.len(),
        secs,
        latencies,
    })
}
