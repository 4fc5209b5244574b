//! `/metrics` in Prometheus' text format.
//!
//! Counters and histograms are updated as requests run; gauges of the
//! engine's state (loaded models, busy slots, queue) are read at scrape time
//! so they can never drift from the truth.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rbee_engine::LoadedInfo;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    /// `stop`, `length`, `error` or `cancelled` (the client went away).
    pub reason: &'static str,
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub generations: Family<EndLabels, Counter>,
    pub time_to_first_token: Histogram,
    pub time_per_token: Histogram,
    /// Model file bytes sent to peers copying a model, and received from them.
    pub copy_sent_bytes: Counter,
    pub copy_received_bytes: Counter,
    models_loaded: Gauge,
    slots_busy: Family<ModelLabels, Gauge>,
    queue_depth: Family<ModelLabels, Gauge>,
    /// Scrapes are serialised: the gauges are reset and refilled per scrape.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rbee");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by endpoint and status", requests.clone());
        let prompt_tokens = Counter::default();
        registry.register("prompt_tokens", "Prompt tokens processed", prompt_tokens.clone());
        let completion_tokens = Counter::default();
        registry.register("completion_tokens", "Tokens generated", completion_tokens.clone());
        let generations = Family::<EndLabels, Counter>::default();
        registry.register("generations", "Generations ended, by how they ended", generations.clone());
        // 5 ms … ~80 s.
        let time_to_first_token = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register("time_to_first_token_seconds", "Time from request to first generated token", time_to_first_token.clone());
        // 1 ms … ~16 s.
        let time_per_token = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register("time_per_output_token_seconds", "Mean time per generated token after the first, per generation", time_per_token.clone());
        let copy_sent_bytes = Counter::default();
        registry.register("copy_sent_bytes", "Model file bytes sent to peers that copy a model", copy_sent_bytes.clone());
        let copy_received_bytes = Counter::default();
        registry.register("copy_received_bytes", "Model file bytes copied from peers", copy_received_bytes.clone());
        let models_loaded = Gauge::default();
        registry.register("models_loaded", "Models in memory", models_loaded.clone());
        let slots_busy = Family::<ModelLabels, Gauge>::default();
        registry.register("slots_busy", "Slots running a generation, per loaded model", slots_busy.clone());
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        registry.register("queue_depth", "Requests waiting for a slot, per loaded model", queue_depth.clone());
        Self {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            generations,
            time_to_first_token,
            time_per_token,
            copy_sent_bytes,
            copy_received_bytes,
            models_loaded,
            slots_busy,
            queue_depth,
            scrape: Mutex::new(()),
        }
    }

    /// The text exposition, with gauges taken from `loaded` now.
    pub fn render(&self, loaded: &[LoadedInfo]) -> String {
        let _guard = self.scrape.lock().expect("scrape lock");
        self.slots_busy.clear();
        self.queue_depth.clear();
        self.models_loaded.set(i64::try_from(loaded.len()).unwrap_or(i64::MAX));
        for m in loaded {
            let labels = ModelLabels { model: m.id.clone() };
            self.slots_busy.get_or_create(&labels).set(i64::try_from(m.busy).unwrap_or(i64::MAX));
            self.queue_depth.get_or_create(&labels).set(i64::try_from(m.queued).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
