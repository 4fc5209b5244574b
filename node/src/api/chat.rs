//! `POST /v1/chat/completions` and `POST /v1/completions`, streamed and not.
//!
//! Both run one engine generation and differ only in how its text is
//! wrapped. A streamed answer is fed by a task that owns the generation: when
//! the client goes away the task's channel closes, the task drops the
//! generation, and the engine stops within one token and frees the slot.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use rbee_engine::{Event, FinishReason, Prompt, SamplingParams, TokenLogprob, Usage as EngineUsage};
use tokio::sync::mpsc;

use super::JsonBody;
use super::error::ApiError;
use super::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatLogprobs, ChatRequest, Chunk, ChunkChoice, CompletionRequest, Delta, FunctionDelta, FunctionOut,
    Sampling, TextChoice, TextCompletion, TextLogprobs, Timings, ToolCallDelta, ToolCallOut, Usage,
};
use crate::metrics::EndLabels;
use crate::service::Service;

pub async fn chat(State(s): State<Service>, JsonBody(req): JsonBody<ChatRequest>) -> Result<Response, ApiError> {
    let mut params = req.sampling.to_params()?;
    params.tools = req.tools()?;
    let prompt = Prompt::Chat(req.messages()?);
    run(s, Kind::Chat, req.model, prompt, params, &req.sampling).await
}

pub async fn completions(State(s): State<Service>, JsonBody(req): JsonBody<CompletionRequest>) -> Result<Response, ApiError> {
    let params = req.sampling.to_params()?;
    let prompt = req.prompt()?;
    run(s, Kind::Text, req.model, prompt, params, &req.sampling).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn prompt_param(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Text => "prompt",
        }
    }
}

/// One response's identity, the same on every chunk.
#[derive(Debug, Clone)]
struct Ids {
    id: String,
    created: u64,
    model: String,
}

async fn run(s: Service, kind: Kind, model: String, prompt: Prompt, params: SamplingParams, sampling: &Sampling) -> Result<Response, ApiError> {
    let started = Instant::now();
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "`model` is empty: name a model from GET /v1/models"));
    }
    // On this node or another; loading, rendering and tokenizing run off the async threads.
    let engine_start = Instant::now();
    let logprobs = params.logprobs.is_some();
    let to_api = |e: crate::dispatch::Error| ApiError::from_dispatch(&e, kind.prompt_param());
    let first = crate::dispatch::generate(&s, &model, prompt.clone(), params.clone()).await.map_err(to_api)?;
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    let ids = Ids {
        id: format!("{prefix}-{:024x}", rand::rng().random::<u128>() >> 32),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        model: first.model.clone(),
    };
    let tracker =
        |node_id: Option<rbee_swarm::NodeId>| Tracker { state: s.clone(), model: ids.model.clone(), node_id, started, engine_start, first: None, ended: false };
    // `n` > 1: the other choices start where the first did (that node runs
    // the prompt once and forks), each with its own seed. Dropping what has
    // started cancels it if one cannot.
    let node = first.node_id.clone();
    let mut choices = vec![(first.events, tracker(first.node_id))];
    for i in 1..sampling.choices() {
        let p = SamplingParams { seed: params.seed.map(|seed| seed.wrapping_add(i as u64)), ..params.clone() };
        let g = crate::dispatch::generate_on(&s, &ids.model, prompt.clone(), p, node.as_ref()).await.map_err(to_api)?;
        choices.push((g.events, tracker(g.node_id)));
    }
    if sampling.stream() { Ok(stream(s, kind, ids, choices, sampling.include_usage(), logprobs)) } else { collect(kind, ids, choices, logprobs).await }
}

/// The usage of a response: the prompt once (the choices share it), the
/// completion tokens of every choice.
fn total_usage(usages: &[EngineUsage]) -> EngineUsage {
    let mut total = usages[0].clone();
    total.completion_tokens = usages.iter().map(|u| u.completion_tokens).sum();
    total.decode_secs = usages.iter().map(|u| u.decode_secs).fold(0.0, f64::max);
    total
}

/// Records a generation's metrics; one dropped before its end counts as cancelled.
struct Tracker {
    state: Service,
    model: String,
    node_id: Option<rbee_swarm::NodeId>,
    /// When the request reached its handler.
    started: Instant,
    /// When it was handed to the engine.
    engine_start: Instant,
    first: Option<Instant>,
    ended: bool,
}

impl Tracker {
    fn token(&mut self) {
        if self.first.is_none() {
            self.first = Some(Instant::now());
            self.state.metrics.time_to_first_token.observe(self.started.elapsed().as_secs_f64());
        }
    }

    fn timings(&self, usage: &EngineUsage) -> Timings {
        let ms = |d: f64| d * 1e3;
        let per_sec = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Timings {
            node_id: self.node_id.clone(),
            ttft_ms: self.first.map_or(0.0, |f| ms((f - self.engine_start).as_secs_f64())),
            prompt_ms: ms(usage.prompt_secs),
            prompt_tokens_per_sec: per_sec(usage.prompt_tokens.saturating_sub(usage.cached_tokens), usage.prompt_secs),
            decode_ms: ms(usage.decode_secs),
            decode_tokens_per_sec: per_sec(usage.completion_tokens.saturating_sub(1), usage.decode_secs),
        }
    }

    fn done(&mut self, usage: &EngineUsage, finish: FinishReason) {
        self.token();
        let m = &self.state.metrics;
        m.prompt_tokens.inc_by(u64::try_from(usage.prompt_tokens).unwrap_or(0));
        m.completion_tokens.inc_by(u64::try_from(usage.completion_tokens).unwrap_or(0));
        if usage.completion_tokens > 1 && usage.decode_secs > 0.0 {
            m.time_per_token.observe(usage.decode_secs / (usage.completion_tokens - 1) as f64);
            self.state.record_decode_speed(&self.model, (usage.completion_tokens - 1) as f64 / usage.decode_secs);
        }
        self.end(finish_reason(finish));
    }

    fn end(&mut self, reason: &'static str) {
        if !self.ended {
            self.ended = true;
            self.state.metrics.generations.get_or_create(&EndLabels { reason }).inc();
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.end("cancelled");
    }
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

/// One choice of a whole (not streamed) answer.
struct Collected {
    text: String,
    calls: Vec<ToolCallOut>,
    logprobs: Vec<TokenLogprob>,
    finish: FinishReason,
    usage: EngineUsage,
    timings: Timings,
}

async fn collect_one(mut events: mpsc::Receiver<Event>, mut tracker: Tracker) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut calls: Vec<ToolCallOut> = Vec::new();
    let mut lps = Vec::new();
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Text { text: t, logprobs: l, .. } => {
                tracker.token();
                text.push_str(&t);
                lps.extend(l);
            }
            Event::ToolCall { id, name, .. } => {
                tracker.token();
                calls.push(ToolCallOut { id, kind: "function", function: FunctionOut { name, arguments: String::new() } });
            }
            Event::ToolArguments { index, text: t, .. } => {
                if let Some(c) = calls.get_mut(index) {
                    c.function.arguments.push_str(&t);
                }
            }
            Event::Done { finish, usage } => {
                tracker.done(&usage, finish);
                let timings = tracker.timings(&usage);
                return Ok(Collected { text, calls, logprobs: lps, finish, usage, timings });
            }
            Event::Error(e) => {
                tracker.end("error");
                return Err(ApiError::internal(&e));
            }
        }
    }
    tracker.end("error");
    Err(ApiError::internal(&"the engine ended the generation without finishing it"))
}

async fn collect(kind: Kind, ids: Ids, choices: Vec<(mpsc::Receiver<Event>, Tracker)>, logprobs: bool) -> Result<Response, ApiError> {
    let done: Vec<Collected> = futures_util::future::try_join_all(choices.into_iter().map(|(events, tracker)| collect_one(events, tracker))).await?;
    let usage = Usage::from(&total_usage(&done.iter().map(|c| c.usage.clone()).collect::<Vec<_>>()));
    let timings = done[0].timings.clone();
    Ok(match kind {
        Kind::Chat => Json(ChatCompletion {
            id: ids.id,
            object: "chat.completion",
            created: ids.created,
            model: ids.model,
            choices: done
                .into_iter()
                .enumerate()
                .map(|(i, c)| ChatChoice {
                    index: i as u32,
                    logprobs: logprobs.then(|| ChatLogprobs::new(&c.logprobs)),
                    finish_reason: finish_reason(c.finish),
                    message: AssistantMessage { role: "assistant", content: (!c.text.is_empty() || c.calls.is_empty()).then_some(c.text), tool_calls: c.calls },
                })
                .collect(),
            usage,
            timings,
        })
        .into_response(),
        Kind::Text => Json(TextCompletion {
            id: ids.id,
            object: "text_completion",
            created: ids.created,
            model: ids.model,
            choices: done
                .into_iter()
                .enumerate()
                .map(|(i, c)| TextChoice {
                    index: i as u32,
                    logprobs: logprobs.then(|| TextLogprobs::new(&c.logprobs, 0)),
                    finish_reason: Some(finish_reason(c.finish)),
                    text: c.text,
                })
                .collect(),
            usage,
            timings,
        })
        .into_response(),
    })
}

/// Builds the `data:` payloads of one streamed response.
struct Chunks {
    kind: Kind,
    ids: Ids,
    include_usage: bool,
    /// Per choice: whether its role was sent (chat).
    role_sent: Vec<bool>,
    /// Logprobs were asked for.
    logprobs: bool,
    /// Per choice: characters of a text completion sent so far (for `text_offset`).
    offset: Vec<usize>,
}

impl Chunks {
    fn usage_field(&self) -> Option<Option<Usage>> {
        self.include_usage.then_some(None)
    }

    fn json<T: serde::Serialize>(v: &T) -> SseEvent {
        SseEvent::default().data(serde_json::to_string(v).expect("chunks serialize"))
    }

    fn chat(&self, index: usize, delta: Delta, logprobs: Option<ChatLogprobs>, finish: Option<&'static str>, timings: Option<Timings>) -> SseEvent {
        Self::json(&Chunk {
            id: self.ids.id.clone(),
            object: "chat.completion.chunk",
            created: self.ids.created,
            model: self.ids.model.clone(),
            choices: vec![ChunkChoice { index: index as u32, delta, logprobs, finish_reason: finish }],
            usage: self.usage_field(),
            timings,
        })
    }

    fn text(&self, index: usize, text: String, logprobs: Option<TextLogprobs>, finish: Option<&'static str>, timings: Option<Timings>) -> SseEvent {
        Self::json(&Chunk {
            id: self.ids.id.clone(),
            object: "text_completion",
            created: self.ids.created,
            model: self.ids.model.clone(),
            choices: vec![TextChoice { index: index as u32, text, logprobs, finish_reason: finish }],
            usage: self.usage_field(),
            timings,
        })
    }

    /// The events for a piece of choice `index`'s text (and its tokens'
    /// logprobs, when asked for): the role first, once, in chat.
    fn piece(&mut self, index: usize, text: String, lps: &[TokenLogprob], out: &mut Vec<SseEvent>) {
        match self.kind {
            Kind::Chat => {
                if !self.role_sent[index] {
                    self.role_sent[index] = true;
                    out.push(self.chat(index, Delta { role: Some("assistant"), content: Some(String::new()), tool_calls: None }, None, None, None));
                }
                if !text.is_empty() {
                    let lp = self.logprobs.then(|| ChatLogprobs::new(lps));
                    out.push(self.chat(index, Delta { role: None, content: Some(text), tool_calls: None }, lp, None, None));
                }
            }
            Kind::Text => {
                if !text.is_empty() {
                    let lp = self.logprobs.then(|| TextLogprobs::new(lps, self.offset[index]));
                    self.offset[index] += text.chars().count();
                    out.push(self.text(index, text, lp, None, None));
                }
            }
        }
    }

    /// The events for a tool call's first piece (`name`) or more of its arguments.
    fn call(&mut self, choice: usize, index: usize, id: Option<String>, name: Option<String>, arguments: String, out: &mut Vec<SseEvent>) {
        self.piece(choice, String::new(), &[], out);
        let kind = id.as_ref().map(|_| "function");
        let delta = ToolCallDelta { index, id, kind, function: FunctionDelta { name, arguments } };
        out.push(self.chat(choice, Delta { role: None, content: None, tool_calls: Some(vec![delta]) }, None, None, None));
    }

    /// Choice `index`'s finish chunk; it carries the timings unless a usage chunk will.
    fn finish(&mut self, index: usize, finish: &'static str, timings: Timings, out: &mut Vec<SseEvent>) {
        self.piece(index, String::new(), &[], out);
        let on_finish = (!self.include_usage).then_some(timings);
        out.push(match self.kind {
            Kind::Chat => self.chat(index, Delta::default(), None, Some(finish), on_finish),
            Kind::Text => self.text(index, String::new(), None, Some(finish), on_finish),
        });
    }

    /// After every choice has finished: the usage chunk if asked for (with
    /// the timings), and `[DONE]`.
    fn end(&self, usage: &EngineUsage, timings: Timings, out: &mut Vec<SseEvent>) {
        if self.include_usage {
            let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
            out.push(Self::json(&Chunk::<ChunkChoice> {
                id: self.ids.id.clone(),
                object,
                created: self.ids.created,
                model: self.ids.model.clone(),
                choices: Vec::new(),
                usage: Some(Some(Usage::from(usage))),
                timings: Some(timings),
            }));
        }
        out.push(SseEvent::default().data("[DONE]"));
    }

    fn error(err: &ApiError, out: &mut Vec<SseEvent>) {
        out.push(Self::json(&serde_json::json!({ "error": err.object() })));
        out.push(SseEvent::default().data("[DONE]"));
    }
}

/// Events buffered between the generation task and the connection.
const SSE_BUFFER: usize = 64;

/// Streams the choices' events as they come, each chunk naming its choice.
fn stream(s: Service, kind: Kind, ids: Ids, choices: Vec<(mpsc::Receiver<Event>, Tracker)>, include_usage: bool, logprobs: bool) -> Response {
    let (tx, mut rx) = mpsc::channel::<SseEvent>(SSE_BUFFER);
    let n = choices.len();
    let mut chunks = Chunks { kind, ids, include_usage, role_sent: vec![false; n], logprobs, offset: vec![0; n] };
    // One reader per choice feeds a shared channel; when the connection
    // goes, the readers' sends fail and they drop their generations.
    let (merged_tx, mut merged) = mpsc::channel::<(usize, Option<Event>)>(SSE_BUFFER);
    let mut trackers = Vec::with_capacity(n);
    for (i, (mut events, tracker)) in choices.into_iter().enumerate() {
        trackers.push(tracker);
        let merged_tx = merged_tx.clone();
        s.tasks.spawn(async move {
            loop {
                let ev = events.recv().await;
                let end = !matches!(ev, Some(Event::Text { .. } | Event::ToolCall { .. } | Event::ToolArguments { .. }));
                if merged_tx.send((i, ev)).await.is_err() || end {
                    return;
                }
            }
        });
    }
    drop(merged_tx);
    s.tasks.spawn(async move {
        let mut out = Vec::with_capacity(4);
        let mut usages: Vec<Option<(EngineUsage, Timings)>> = vec![None; n];
        while let Some((i, ev)) = merged.recv().await {
            let tracker = &mut trackers[i];
            let failed = match ev {
                Some(Event::Text { text: t, logprobs: l, .. }) => {
                    tracker.token();
                    chunks.piece(i, t, &l, &mut out);
                    false
                }
                Some(Event::ToolCall { index, id, name, .. }) => {
                    tracker.token();
                    chunks.call(i, index, Some(id), Some(name), String::new(), &mut out);
                    false
                }
                Some(Event::ToolArguments { index, text, .. }) => {
                    chunks.call(i, index, None, None, text, &mut out);
                    false
                }
                Some(Event::Done { finish, usage }) => {
                    tracker.done(&usage, finish);
                    let timings = tracker.timings(&usage);
                    chunks.finish(i, finish_reason(finish), timings.clone(), &mut out);
                    usages[i] = Some((usage, timings));
                    if let Some(done) = usages.iter().cloned().collect::<Option<Vec<_>>>() {
                        let total = total_usage(&done.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>());
                        chunks.end(&total, done[0].1.clone(), &mut out);
                    }
                    false
                }
                Some(Event::Error(e)) => {
                    tracker.end("error");
                    Chunks::error(&ApiError::internal(&e), &mut out);
                    true
                }
                None => {
                    tracker.end("error");
                    Chunks::error(&ApiError::internal(&"the engine ended the generation without finishing it"), &mut out);
                    true
                }
            };
            for ev in out.drain(..) {
                // The client went away: dropping the readers stops the engine.
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            if failed || usages.iter().all(Option::is_some) {
                return;
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>)));
    let keep_alive = Arc::clone(&s.config).keep_alive;
    let mut res = Sse::new(body).keep_alive(KeepAlive::new().interval(keep_alive)).into_response();
    // Reverse proxies (nginx) would otherwise hold the stream back.
    res.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    /// The engine cannot be made to fail mid-answer on demand, so its event
    /// channel is fed by hand here; everything after it is the real stream.
    #[tokio::test]
    async fn a_failure_after_the_stream_began_is_an_error_event_then_done() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::resolve(Overrides { data_dir: Some(dir.path().to_path_buf()), ..Overrides::default() }).unwrap();
        let state = Service::new(rbee_engine::Engine::new(cfg.engine()).unwrap(), cfg);
        let (tx, rx) = mpsc::channel(8);
        tx.send(Event::Text { text: "Hel".into(), tokens: 1, logprobs: Vec::new() }).await.unwrap();
        tx.send(Event::Error("tensor computation failed: out of device memory".into())).await.unwrap();
        drop(tx);
        let ids = Ids { id: "chatcmpl-1".into(), created: 1, model: "m".into() };
        let tracker = Tracker {
            state: state.clone(),
            model: "m".into(),
            node_id: None,
            started: Instant::now(),
            engine_start: Instant::now(),
            first: None,
            ended: false,
        };
        let res = stream(state.clone(), Kind::Chat, ids, vec![(rx, tracker)], false, false);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.len(), 4, "{body}");
        assert!(data[1].contains("\"content\":\"Hel\""));
        let err: serde_json::Value = serde_json::from_str(data[2]).unwrap();
        assert_eq!(err["error"]["type"], "server_error");
        // The detail is logged, not sent.
        assert!(!err["error"]["message"].as_str().unwrap().contains("device memory"));
        assert_eq!(data[3], "[DONE]");
        assert!(state.metrics.render(&[]).contains("rbee_generations_total{reason=\"error\"} 1"));
    }
}
