//! Running a request on the best node of the swarm, and answering other
//! nodes' requests.
//!
//! [`generate`] ranks the nodes that can run the request and starts it on
//! the first that accepts; what it returns looks like a local generation (a
//! receiver of engine events), so the HTTP layer does not care where it
//! runs. A node that refuses or fails before the first token → the next
//! candidate. A node that dies mid-answer → the next candidate continues
//! from the prompt plus the text already sent, and the client sees one
//! answer whose usage counts both parts.
//!
//! On the wire (`/rbee/infer/1`, a stream of the swarm's encrypted
//! connection): one [`InferRequest`] frame, then [`InferFrame`]s back.
//! Dropping the stream stops the remote generation within one token.

use futures_util::StreamExt;
use rbee_engine::{Event, FinishReason, Prompt, Request, SamplingParams, Usage};
use rbee_swarm::frame;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::api::AppState;
use crate::api::error::ApiError;

/// The request stream's protocol name.
pub const INFER_PROTOCOL: &str = "/rbee/infer/1";

/// Events buffered between a source and the HTTP layer.
const BUFFER: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferRequest {
    pub model: String,
    pub prompt: Prompt,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InferFrame {
    Started { prompt_tokens: usize, model: String },
    Text { text: String },
    Done { finish: FinishReason, usage: Usage },
    /// A refusal or failure; `status` as the HTTP layer would answer it.
    Error { status: u16, message: String, code: Option<String>, param: Option<String> },
}

/// A generation started somewhere in the swarm.
#[derive(Debug)]
pub struct Started {
    pub events: mpsc::Receiver<Event>,
    pub prompt_tokens: usize,
    pub model: String,
    /// The node that started it ("" when the node runs alone).
    pub node_id: String,
}

/// Starts `prompt` on the best node for `model`.
///
/// # Errors
/// The [`ApiError`] of the last node tried, or 404 when no node has the model.
pub async fn generate(s: &AppState, model: &str, prompt: Prompt, params: SamplingParams, prompt_param: &'static str) -> Result<Started, ApiError> {
    let Some(client) = &s.swarm else {
        return local(s, model, prompt, params, prompt_param).await;
    };
    let id = resolve(s, model);
    let candidates: Vec<(String, bool)> =
        rbee_swarm::routing::rank(&client.peers(), &id, |n| client.rtt(n)).into_iter().map(|c| (c.node_id, c.local)).collect();
    if candidates.is_empty() {
        // Not in any registry (yet): the local store has the last word.
        return local(s, model, prompt, params, prompt_param).await;
    }
    let mut last = None;
    for (i, (node, is_local)) in candidates.iter().enumerate() {
        match start_on(s, node, *is_local, &id, prompt.clone(), params.clone(), prompt_param).await {
            Ok(st) => {
                let rest: Vec<(String, bool)> = candidates[i + 1..].to_vec();
                let (prompt_tokens, model, node_id) = (st.prompt_tokens, st.model.clone(), st.node_id.clone());
                let events = failover(s.clone(), st, id.clone(), prompt, params, rest, prompt_param);
                return Ok(Started { events, prompt_tokens, model, node_id });
            }
            Err(e) if retry_elsewhere(&e) => {
                tracing::debug!(%node, error = %e.message, "node refused; trying the next");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::model_not_found(model)))
}

/// Starts the request on `node`: here, or over the swarm.
async fn start_on(s: &AppState, node: &str, is_local: bool, model: &str, prompt: Prompt, params: SamplingParams, prompt_param: &'static str) -> Result<Started, ApiError> {
    if is_local { local(s, model, prompt, params, prompt_param).await } else { remote(s, node, model, prompt, params, prompt_param).await }
}

/// The catalog id `name` means here, or `name` itself (a peer's model).
fn resolve(s: &AppState, name: &str) -> String {
    if let Ok(e) = s.engine.store().get(name) {
        return e.id;
    }
    let Some(client) = &s.swarm else { return name.to_string() };
    let mut ids: Vec<String> = client.peers().iter().flat_map(|p| p.record.models_on_disk.iter().map(|m| m.id.clone())).filter(|id| id.starts_with(name)).collect();
    ids.sort();
    ids.dedup();
    match ids.as_slice() {
        [one] => one.clone(),
        _ => name.to_string(),
    }
}

fn retry_elsewhere(e: &ApiError) -> bool {
    e.status.as_u16() == 404 || e.status.is_server_error()
}

fn node_id(s: &AppState) -> String {
    s.swarm.as_ref().map(|c| c.peer_id.to_string()).unwrap_or_default()
}

async fn local(s: &AppState, model: &str, prompt: Prompt, params: SamplingParams, prompt_param: &'static str) -> Result<Started, ApiError> {
    let (engine, model) = (s.engine.clone(), model.to_string());
    let g = tokio::task::spawn_blocking(move || engine.generate(&model, Request { prompt, params }))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::from_engine(&e, prompt_param))?;
    Ok(Started { events: g.events, prompt_tokens: g.prompt_tokens, model: g.model, node_id: node_id(s) })
}

/// Opens a request stream to `node` and waits for it to start.
async fn remote(s: &AppState, node: &str, model: &str, prompt: Prompt, params: SamplingParams, prompt_param: &'static str) -> Result<Started, ApiError> {
    let client = s.swarm.as_ref().expect("remote needs the swarm");
    let unreachable = |what: String| {
        let mut e = ApiError::internal(&what);
        e.status = axum::http::StatusCode::BAD_GATEWAY;
        e
    };
    let mut stream = client.open(node, INFER_PROTOCOL).await.map_err(|e| unreachable(e.to_string()))?;
    frame::write(&mut stream, &InferRequest { model: model.to_string(), prompt, params }).await.map_err(|e| unreachable(format!("{node}: {e}")))?;
    match frame::read::<_, InferFrame>(&mut stream).await {
        Ok(Some(InferFrame::Started { prompt_tokens, model })) => {
            let (tx, rx) = mpsc::channel(BUFFER);
            tokio::spawn(pump(stream, tx));
            Ok(Started { events: rx, prompt_tokens, model, node_id: node.to_string() })
        }
        Ok(Some(InferFrame::Error { status, message, code, param })) => {
            let mut e = if status == 404 { ApiError::model_not_found(model) } else { ApiError::invalid(param.as_deref().unwrap_or(prompt_param), message) };
            e.status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            if e.status.is_server_error() {
                e.kind = "server_error";
                e.param = None;
            }
            e.code = code.and_then(|c| KNOWN_CODES.iter().copied().find(|k| *k == c));
            Err(e)
        }
        Ok(_) => Err(unreachable(format!("{node} answered out of order"))),
        Err(e) => Err(unreachable(format!("{node}: {e}"))),
    }
}

const KNOWN_CODES: &[&str] = &["model_not_found", "context_length_exceeded", "queue_full", "insufficient_memory", "shutting_down"];

/// Marker sent (as an `Error` event with this text) when the remote stream
/// broke: the failover task turns it into a continuation elsewhere.
const LOST: &str = "\u{0}rbee:lost";

/// Forwards a remote stream's frames as engine events.
async fn pump(mut stream: rbee_swarm::Stream, tx: mpsc::Sender<Event>) {
    loop {
        let ev = match frame::read::<_, InferFrame>(&mut stream).await {
            Ok(Some(InferFrame::Text { text })) => Event::Text(text),
            Ok(Some(InferFrame::Done { finish, usage })) => {
                let _ = tx.send(Event::Done { finish, usage }).await;
                return;
            }
            Ok(Some(InferFrame::Error { message, .. })) => {
                let _ = tx.send(Event::Error(message)).await;
                return;
            }
            Ok(Some(InferFrame::Started { .. })) => continue,
            Ok(None) | Err(_) => {
                let _ = tx.send(Event::Error(LOST.into())).await;
                return;
            }
        };
        // The client went away: dropping the stream stops the remote engine.
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

/// Passes `first`'s events on; if its node is lost mid-answer, continues
/// on the next candidates from the prompt plus the text already sent.
fn failover(
    s: AppState,
    first: Started,
    model: String,
    prompt: Prompt,
    params: SamplingParams,
    mut rest: Vec<(String, bool)>,
    prompt_param: &'static str,
) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(BUFFER);
    let prompt_tokens = first.prompt_tokens;
    tokio::spawn(async move {
        let mut events = first.events;
        let (mut text, mut tokens_before, mut tokens_now) = (String::new(), 0usize, 0usize);
        loop {
            let ev = events.recv().await;
            match ev {
                Some(Event::Text(t)) => {
                    tokens_now += 1;
                    text.push_str(&t);
                    if tx.send(Event::Text(t)).await.is_err() {
                        return;
                    }
                }
                Some(Event::Done { finish, mut usage }) => {
                    usage.completion_tokens += tokens_before;
                    usage.prompt_tokens = prompt_tokens;
                    let _ = tx.send(Event::Done { finish, usage }).await;
                    return;
                }
                Some(Event::Error(e)) if e == LOST => {
                    tokens_before += tokens_now;
                    tokens_now = 0;
                    tracing::warn!(model = %model, tokens = tokens_before, "the node running an answer went away; continuing elsewhere");
                    let mut params = params.clone();
                    if let Some(m) = params.max_tokens {
                        if m <= tokens_before {
                            let usage = Usage { prompt_tokens, cached_tokens: 0, completion_tokens: tokens_before, prompt_secs: 0.0, decode_secs: 0.0 };
                            let _ = tx.send(Event::Done { finish: FinishReason::Length, usage }).await;
                            return;
                        }
                        params.max_tokens = Some(m - tokens_before);
                    }
                    let cont = Prompt::Continue { prompt: Box::new(prompt.clone()), text: text.clone() };
                    let mut next = None;
                    while !rest.is_empty() {
                        let (node, is_local) = rest.remove(0);
                        if let Ok(st) = start_on(&s, &node, is_local, &model, cont.clone(), params.clone(), prompt_param).await {
                            next = Some(st);
                            break;
                        }
                    }
                    match next {
                        Some(st) => events = st.events,
                        None => {
                            let _ = tx.send(Event::Error("the node running this answer went away and no other node could continue it".into())).await;
                            return;
                        }
                    }
                }
                Some(Event::Error(e)) => {
                    let _ = tx.send(Event::Error(e)).await;
                    return;
                }
                None => return,
            }
        }
    });
    rx
}

/// Answers other nodes' request streams until the swarm stops.
pub fn serve(state: AppState, client: &rbee_swarm::Client) -> anyhow::Result<()> {
    let mut incoming = client.accept(INFER_PROTOCOL)?;
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            tokio::spawn(answer(state.clone(), peer.to_string(), stream));
        }
    });
    Ok(())
}

async fn answer(s: AppState, peer: String, mut stream: rbee_swarm::Stream) {
    let req: InferRequest = match frame::read(&mut stream).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "bad request frame");
            return;
        }
    };
    let refuse = |status: u16, message: String, code: Option<&str>, param: Option<String>| InferFrame::Error { status, message, code: code.map(String::from), param };
    if !s.sharing() {
        let _ = frame::write(&mut stream, &refuse(503, "this node does not run requests for others".into(), None, None)).await;
        return;
    }
    let started = match local(&s, &req.model, req.prompt, req.params, "prompt").await {
        Ok(st) => st,
        Err(e) => {
            let _ = frame::write(&mut stream, &refuse(e.status.as_u16(), e.message.clone(), e.code, e.param.clone())).await;
            return;
        }
    };
    tracing::debug!(%peer, model = %started.model, "running a request for a peer");
    if frame::write(&mut stream, &InferFrame::Started { prompt_tokens: started.prompt_tokens, model: started.model.clone() }).await.is_err() {
        return;
    }
    let mut events = started.events;
    while let Some(ev) = events.recv().await {
        let (frame_out, last) = match ev {
            Event::Text(text) => (InferFrame::Text { text }, false),
            Event::Done { finish, usage } => (InferFrame::Done { finish, usage }, true),
            Event::Error(message) => (InferFrame::Error { status: 500, message, code: None, param: None }, true),
        };
        // The caller went away: returning drops `events`, which stops the engine.
        if frame::write(&mut stream, &frame_out).await.is_err() || last {
            return;
        }
    }
}
