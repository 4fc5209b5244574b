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
//! On the wire (`/rbee/infer/2`, a stream of the swarm's encrypted
//! connection): one [`InferRequest`] frame, then [`InferFrame`]s back. The
//! version moves when a request can carry something an older node would
//! ignore (2: `grammar` in the sampling parameters), so such a node is not
//! asked: it cannot open the stream, and the next candidate is tried.
//! Dropping the stream stops the remote generation within one token.

use futures_util::StreamExt;
use rbee_engine::{Event, FinishReason, Prompt, Request, SamplingParams, Usage};
use rbee_swarm::{NodeId, frame};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::service::Service;

/// Why a request could not be started somewhere.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node's engine refused or failed.
    #[error(transparent)]
    Engine(#[from] rbee_engine::Error),
    /// A peer refused, with the status its API would have answered and why.
    #[error("{message}")]
    Peer { status: u16, message: String, code: Option<String>, param: Option<String> },
    /// A peer could not be reached, or broke the protocol.
    #[error("{0}")]
    Unreachable(String),
    /// No node of the swarm has the model.
    #[error("model `{0}` not found")]
    NotFound(String),
    /// This node failed (a task died).
    #[error("{0}")]
    Internal(String),
}

/// The request stream's protocol name.
pub const INFER_PROTOCOL: &str = "/rbee/infer/2";

/// The load query: a peer opens a stream and this node writes the models it
/// has loaded with their slots' load now (`Vec<LoadedModel>`), then closes it.
pub const LOAD_PROTOCOL: &str = "/rbee/load/1";

/// Routing asks this many of the best-ranked peers for their load…
const ASK_LOAD: usize = 3;
/// …and waits this long before going by their records.
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

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
    Started {
        prompt_tokens: usize,
        model: String,
    },
    /// `tokens`: how many tokens this text stands for (older peers leave it
    /// out, and sent one text per token).
    Text {
        text: String,
        #[serde(default = "one")]
        tokens: usize,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        logprobs: Vec<rbee_engine::TokenLogprob>,
    },
    ToolCall {
        index: usize,
        id: String,
        name: String,
        tokens: usize,
    },
    ToolArguments {
        index: usize,
        text: String,
        tokens: usize,
    },
    Done {
        finish: FinishReason,
        usage: Usage,
    },
    /// A refusal or failure; `status` as the HTTP layer would answer it.
    Error {
        status: u16,
        message: String,
        code: Option<String>,
        param: Option<String>,
    },
}

fn one() -> usize {
    1
}

/// A generation started somewhere in the swarm.
#[derive(Debug)]
pub struct Started {
    pub events: mpsc::Receiver<Event>,
    pub prompt_tokens: usize,
    pub model: String,
    /// The node that started it (`None` when the node runs alone).
    pub node_id: Option<NodeId>,
}

/// A generation begun on one node, before failover wraps it.
#[derive(Debug)]
struct Begun {
    source: Source,
    prompt_tokens: usize,
    model: String,
    node_id: Option<NodeId>,
}

/// A node that may run the request, and whether it is this one.
type Candidate = (NodeId, bool);

/// Starts `prompt` on the best node for `model`.
///
/// # Errors
/// The error of the last node tried, or [`Error::NotFound`] when no node has the model.
pub async fn generate(s: &Service, model: &str, prompt: Prompt, params: SamplingParams) -> Result<Started, Error> {
    generate_on(s, model, prompt, params, None).await
}

/// Like [`generate`], trying `prefer` first when it may run the model: the
/// choices of an `n` > 1 request go where the first went, so that node runs
/// their shared prompt once.
///
/// # Errors
/// As [`generate`].
pub async fn generate_on(s: &Service, model: &str, prompt: Prompt, params: SamplingParams, prefer: Option<&NodeId>) -> Result<Started, Error> {
    let Some(client) = &s.swarm else {
        return local(s, model, prompt, params).await;
    };
    let id = resolve(s, model);
    let peers = with_current_load(s, client, &id).await;
    let ranked = rbee_swarm::routing::rank(&peers, &id, |n| client.rtt(n));
    let mut candidates: Vec<Candidate> = ranked.iter().map(|c| (c.node_id.clone(), c.local)).collect();
    // This node's catalog is the truth about itself; its record may not say
    // so yet (the first one goes out after the hardware probe). It goes
    // where it would rank: after the peers ready to start at once, before
    // the rest (local wins ties).
    if !ranked.iter().any(|c| c.local) && s.engine.store().get(&id).is_ok() {
        let at = ranked.iter().position(|c| !(c.loaded && c.free_slots > 0)).unwrap_or(ranked.len());
        candidates.insert(at, (NodeId::from(client.peer_id), true));
    }
    if let Some(at) = prefer.and_then(|p| candidates.iter().position(|(n, _)| n == p)) {
        let preferred = candidates.remove(at);
        candidates.insert(0, preferred);
    }
    if candidates.is_empty() {
        // Not in any registry (yet): the local store has the last word.
        return local(s, model, prompt, params).await;
    }
    let mut last = None;
    for (i, (node, is_local)) in candidates.iter().enumerate() {
        match start_on(s, node, *is_local, &id, prompt.clone(), params.clone()).await {
            Ok(b) => {
                let rest: Vec<Candidate> = candidates[i + 1..].to_vec();
                let (prompt_tokens, model, node_id) = (b.prompt_tokens, b.model.clone(), b.node_id.clone());
                let events = failover(s.clone(), b.source, prompt_tokens, id.clone(), prompt, params, rest);
                return Ok(Started { events, prompt_tokens, model, node_id });
            }
            Err(e) if retry_elsewhere(&e) => {
                tracing::debug!(%node, error = %e, "node refused; trying the next");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::NotFound(model.to_string())))
}

/// The registry with the load of this node and of the best-ranked peers for
/// `model` as it is now: records carry load only as it was when last
/// published (a change of load alone goes out at most every few seconds),
/// so the few peers a request may go to are asked, all at once. A peer that
/// does not answer within `LOAD_WAIT` is ranked by its record.
async fn with_current_load(s: &Service, client: &rbee_swarm::Client, model: &str) -> Vec<rbee_swarm::PeerView> {
    let mut peers: Vec<rbee_swarm::PeerView> = client.peers().as_ref().clone();
    let mine = crate::swarm::loaded_models(s);
    let current = |p: &mut rbee_swarm::PeerView, loaded: Vec<rbee_swarm::record::LoadedModel>| {
        let mut r = p.record.as_ref().clone();
        r.models_loaded = loaded;
        p.record = std::sync::Arc::new(r);
    };
    if let Some(me) = peers.iter_mut().find(|p| p.local) {
        current(me, mine);
    }
    let ask: Vec<NodeId> =
        rbee_swarm::routing::rank(&peers, model, |n| client.rtt(n)).into_iter().filter(|c| !c.local).take(ASK_LOAD).map(|c| c.node_id).collect();
    let answers = futures_util::future::join_all(ask.iter().map(|n| ask_load(client, n))).await;
    for (n, loaded) in ask.iter().zip(answers) {
        if let Some(loaded) = loaded
            && let Some(p) = peers.iter_mut().find(|p| &p.node_id == n)
        {
            current(p, loaded);
        }
    }
    peers
}

async fn ask_load(client: &rbee_swarm::Client, node: &NodeId) -> Option<Vec<rbee_swarm::record::LoadedModel>> {
    let ask = async {
        let mut stream = client.open(node, LOAD_PROTOCOL).await.ok()?;
        frame::read(&mut stream).await.ok().flatten()
    };
    tokio::time::timeout(LOAD_WAIT, ask).await.ok().flatten()
}

/// Starts the request on `node`: here, or over the swarm.
async fn start_on(s: &Service, node: &NodeId, is_local: bool, model: &str, prompt: Prompt, params: SamplingParams) -> Result<Begun, Error> {
    if is_local {
        let st = local(s, model, prompt, params).await?;
        Ok(Begun { source: Source::Local(st.events), prompt_tokens: st.prompt_tokens, model: st.model, node_id: st.node_id })
    } else {
        remote(s, node, model, prompt, params).await
    }
}

/// The catalog id `name` means here, or `name` itself (a peer's model).
fn resolve(s: &Service, name: &str) -> String {
    if let Ok(e) = s.engine.store().get(name) {
        return e.id;
    }
    let Some(client) = &s.swarm else { return name.to_string() };
    let mut ids: Vec<String> =
        client.peers().iter().flat_map(|p| p.record.models_on_disk.iter().map(|m| m.id.clone())).filter(|id| id.starts_with(name)).collect();
    ids.sort();
    ids.dedup();
    match ids.as_slice() {
        [one] => one.clone(),
        _ => name.to_string(),
    }
}

/// Whether another node may succeed where this error came from: anything
/// but a request that is wrong wherever it runs.
fn retry_elsewhere(e: &Error) -> bool {
    match e {
        Error::Engine(e) => !is_client_error(e),
        Error::Peer { status, .. } => *status == 404 || *status >= 500,
        Error::Unreachable(_) | Error::NotFound(_) | Error::Internal(_) => true,
    }
}

/// Engine errors about the request itself (the same on every node).
fn is_client_error(e: &rbee_engine::Error) -> bool {
    use rbee_engine::Error as E;
    matches!(e, E::InvalidRequest(_) | E::InvalidGrammar { .. } | E::Template(_) | E::PromptTooLong { .. } | E::InvalidName { .. } | E::WrongModelKind(_))
}

async fn local(s: &Service, model: &str, prompt: Prompt, params: SamplingParams) -> Result<Started, Error> {
    let (engine, model) = (s.engine.clone(), model.to_string());
    let g = tokio::task::spawn_blocking(move || engine.generate(&model, Request { prompt, params }))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .inspect_err(|e| {
            // The model's own file is unusable: the admin must act, and the
            // message (which names the file) is what they need.
            if matches!(e, rbee_engine::Error::InvalidModel { .. } | rbee_engine::Error::UnsupportedArchitecture(_)) {
                tracing::error!(error = %e, "model failed to load");
            }
        })?;
    let node_id = s.swarm.as_ref().map(|c| NodeId::from(c.peer_id));
    Ok(Started { events: g.events, prompt_tokens: g.prompt_tokens, model: g.model, node_id })
}

/// Opens a request stream to `node` and waits for it to start.
async fn remote(s: &Service, node: &NodeId, model: &str, prompt: Prompt, params: SamplingParams) -> Result<Begun, Error> {
    let client = s.swarm.as_ref().expect("remote needs the swarm");
    let unreachable = Error::Unreachable;
    let mut stream = client.open(node, INFER_PROTOCOL).await.map_err(|e| unreachable(e.to_string()))?;
    frame::write(&mut stream, &InferRequest { model: model.to_string(), prompt, params }).await.map_err(|e| unreachable(format!("{node}: {e}")))?;
    match frame::read::<_, InferFrame>(&mut stream).await {
        Ok(Some(InferFrame::Started { prompt_tokens, model })) => {
            let (tx, rx) = mpsc::channel(BUFFER);
            s.tasks.spawn(pump(stream, tx));
            Ok(Begun { source: Source::Remote(rx), prompt_tokens, model, node_id: Some(node.clone()) })
        }
        Ok(Some(InferFrame::Error { status, message, code, param })) => Err(Error::Peer { status, message, code, param }),
        Ok(_) => Err(unreachable(format!("{node} answered out of order"))),
        Err(e) => Err(unreachable(format!("{node}: {e}"))),
    }
}

/// The codes a peer's refusal may carry that are passed on to clients.
pub const KNOWN_CODES: &[&str] = &["model_not_found", "model_not_supported", "context_length_exceeded", "queue_full", "insufficient_memory", "shutting_down"];

/// How this node refuses a peer's request on the wire: the status and code
/// its own API would answer, the field at fault, and a message that names no
/// internals (the detail is logged here).
fn refusal(e: &Error) -> InferFrame {
    use rbee_engine::Error as E;
    let frame = |status: u16, message: String, code: Option<&str>, param: Option<&str>| InferFrame::Error {
        status,
        message,
        code: code.map(String::from),
        param: param.map(String::from),
    };
    match e {
        Error::Engine(E::ModelNotFound(_)) | Error::NotFound(_) => frame(404, e.to_string(), Some("model_not_found"), Some("model")),
        Error::Engine(E::PromptTooLong { .. }) => frame(400, e.to_string(), Some("context_length_exceeded"), Some("prompt")),
        Error::Engine(E::InvalidGrammar { field, .. }) => frame(400, e.to_string(), None, Some(field)),
        Error::Engine(E::WrongModelKind(_)) => frame(400, e.to_string(), Some("model_not_supported"), Some("model")),
        Error::Engine(inner) if is_client_error(inner) => frame(400, e.to_string(), None, Some("prompt")),
        Error::Engine(E::QueueFull { .. }) => frame(503, e.to_string(), Some("queue_full"), None),
        Error::Engine(E::OutOfMemory { .. }) => frame(503, e.to_string(), Some("insufficient_memory"), None),
        Error::Engine(E::ShuttingDown) => frame(503, e.to_string(), Some("shutting_down"), None),
        Error::Engine(E::InvalidModel { .. } | E::UnsupportedArchitecture(_)) => frame(500, e.to_string(), None, None),
        other => {
            tracing::error!(error = %other, "a peer's request failed");
            frame(500, "the node failed while running the model".into(), None, None)
        }
    }
}

/// What the source of an answer yields: the engine's events, or word that
/// the node running it is gone (its stream broke before the answer ended),
/// which the failover task turns into a continuation elsewhere.
#[derive(Debug)]
enum Step {
    Event(Event),
    Lost,
}

/// Where an answer's events come from: this node's engine, or a peer's
/// stream read by [`pump`].
#[derive(Debug)]
enum Source {
    Local(mpsc::Receiver<Event>),
    Remote(mpsc::Receiver<Step>),
}

impl Source {
    async fn recv(&mut self) -> Option<Step> {
        match self {
            Source::Local(rx) => rx.recv().await.map(Step::Event),
            Source::Remote(rx) => rx.recv().await,
        }
    }
}

/// Forwards a remote stream's frames as steps.
async fn pump(mut stream: rbee_swarm::Stream, tx: mpsc::Sender<Step>) {
    loop {
        let ev = match frame::read::<_, InferFrame>(&mut stream).await {
            Ok(Some(InferFrame::Text { text, tokens, logprobs })) => Step::Event(Event::Text { text, tokens, logprobs }),
            Ok(Some(InferFrame::ToolCall { index, id, name, tokens })) => Step::Event(Event::ToolCall { index, id, name, tokens }),
            Ok(Some(InferFrame::ToolArguments { index, text, tokens })) => Step::Event(Event::ToolArguments { index, text, tokens }),
            Ok(Some(InferFrame::Done { finish, usage })) => {
                let _ = tx.send(Step::Event(Event::Done { finish, usage })).await;
                return;
            }
            Ok(Some(InferFrame::Error { message, .. })) => {
                let _ = tx.send(Step::Event(Event::Error(message))).await;
                return;
            }
            Ok(Some(InferFrame::Started { .. })) => continue,
            Ok(None) | Err(_) => {
                let _ = tx.send(Step::Lost).await;
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
/// on the next candidates from the prompt plus the text already sent. Usage
/// and `max_tokens` count the tokens each text event says it stands for, so
/// an answer that moved keeps exact counts whatever its script (one CJK
/// character or emoji is often several tokens).
#[allow(clippy::too_many_arguments)]
fn failover(
    s: Service,
    first: Source,
    prompt_tokens: usize,
    model: String,
    prompt: Prompt,
    params: SamplingParams,
    mut rest: Vec<Candidate>,
) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(BUFFER);
    s.tasks.clone().spawn(async move {
        let mut source = first;
        // The model's text so far (tool calls as it wrote them), tokens sent
        // by sources that were lost, and tokens sent by the current one.
        let (mut text, mut tokens_before, mut tokens_now) = (String::new(), 0usize, 0usize);
        let mut in_call = false;
        loop {
            match source.recv().await {
                Some(Step::Event(ev @ (Event::Text { .. } | Event::ToolCall { .. } | Event::ToolArguments { .. }))) => {
                    match &ev {
                        Event::Text { text: t, tokens, .. } => {
                            tokens_now += tokens;
                            text.push_str(t);
                        }
                        Event::ToolCall { name, tokens, .. } => {
                            tokens_now += tokens;
                            // Written in the Hermes form; the continuing node's
                            // engine rewrites it in its model's own.
                            text.push_str(&rbee_engine::tools::reopen(rbee_engine::tools::ToolFormat::Hermes, name, in_call));
                            in_call = true;
                        }
                        Event::ToolArguments { text: t, tokens, .. } => {
                            tokens_now += tokens;
                            text.push_str(t);
                        }
                        _ => {}
                    }
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Some(Step::Event(Event::Done { finish, mut usage })) => {
                    usage.completion_tokens += tokens_before;
                    usage.prompt_tokens = prompt_tokens;
                    usage.cached_tokens = usage.cached_tokens.min(prompt_tokens);
                    let _ = tx.send(Event::Done { finish, usage }).await;
                    return;
                }
                Some(Step::Lost) => {
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
                        if let Ok(b) = start_on(&s, &node, is_local, &model, cont.clone(), params.clone()).await {
                            next = Some(b);
                            break;
                        }
                    }
                    match next {
                        Some(b) => source = b.source,
                        None => {
                            let _ = tx.send(Event::Error("the node running this answer went away and no other node could continue it".into())).await;
                            return;
                        }
                    }
                }
                Some(Step::Event(Event::Error(e))) => {
                    let _ = tx.send(Event::Error(e)).await;
                    return;
                }
                None => return,
            }
        }
    });
    rx
}

/// Requests from other nodes answered at once; more are refused (503) so
/// that a peer cannot make this node hold unbounded streams.
pub const MAX_INBOUND: usize = 64;

/// Answers other nodes' request streams until the node stops.
pub fn serve(state: Service, client: &rbee_swarm::Client) -> anyhow::Result<()> {
    serve_load(state.clone(), client)?;
    let mut incoming = client.accept(INFER_PROTOCOL)?;
    let (tasks, stop) = (state.tasks.clone(), state.background.clone());
    let room = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
    tasks.clone().spawn(async move {
        while let Some((peer, mut stream)) = next_stream(&mut incoming, &stop).await {
            let Ok(permit) = room.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = MAX_INBOUND, "too many requests from peers at once; refusing one");
                tasks.spawn(async move {
                    let busy = InferFrame::Error { status: 503, message: "this node is answering too many peers' requests".into(), code: None, param: None };
                    let _ = frame::write(&mut stream, &busy).await;
                });
                continue;
            };
            let (s, stop) = (state.clone(), stop.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = answer(s, peer.to_string(), stream) => {}
                    () = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

/// The next stream a peer opens, or `None` once the node stops.
pub(crate) async fn next_stream<S: futures_util::Stream + Unpin>(incoming: &mut S, stop: &tokio_util::sync::CancellationToken) -> Option<S::Item> {
    tokio::select! {
        next = incoming.next() => next,
        () = stop.cancelled() => None,
    }
}

/// Answers other nodes' load queries until the node stops (a few at a
/// time: one that finds no room is closed unanswered, and the asker goes by
/// the record).
fn serve_load(state: Service, client: &rbee_swarm::Client) -> anyhow::Result<()> {
    let mut incoming = client.accept(LOAD_PROTOCOL)?;
    let (tasks, stop) = (state.tasks.clone(), state.background.clone());
    let room = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
    tasks.clone().spawn(async move {
        while let Some((_, mut stream)) = next_stream(&mut incoming, &stop).await {
            let Ok(permit) = room.clone().try_acquire_owned() else { continue };
            let loaded = crate::swarm::loaded_models(&state);
            tasks.spawn(async move {
                let _ = tokio::time::timeout(LOAD_WAIT, async {
                    let _ = frame::write(&mut stream, &loaded).await;
                    let _ = futures_util::AsyncWriteExt::close(&mut stream).await;
                })
                .await;
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn answer(s: Service, peer: String, mut stream: rbee_swarm::Stream) {
    let req: InferRequest = match frame::read(&mut stream).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "bad request frame");
            return;
        }
    };
    if !s.sharing() {
        let busy = InferFrame::Error { status: 503, message: "this node does not run requests for others".into(), code: None, param: None };
        let _ = frame::write(&mut stream, &busy).await;
        return;
    }
    let started = match local(&s, &req.model, req.prompt, req.params).await {
        Ok(b) => b,
        Err(e) => {
            let _ = frame::write(&mut stream, &refusal(&e)).await;
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
            Event::Text { text, tokens, logprobs } => (InferFrame::Text { text, tokens, logprobs }, false),
            Event::ToolCall { index, id, name, tokens } => (InferFrame::ToolCall { index, id, name, tokens }, false),
            Event::ToolArguments { index, text, tokens } => (InferFrame::ToolArguments { index, text, tokens }, false),
            Event::Done { finish, usage } => (InferFrame::Done { finish, usage }, true),
            Event::Error(message) => (InferFrame::Error { status: 500, message, code: None, param: None }, true),
        };
        // The caller went away: returning drops `events`, which stops the engine.
        if frame::write(&mut stream, &frame_out).await.is_err() || last {
            return;
        }
    }
}
