//! A node's life in a process that goes on without it (the app restarts
//! its node in-process): stopping it ends every task it started, and the
//! swarm sees it go at once; an answer whose node leaves is finished by
//! another, plain text or a tool call held to its schema.

mod support;

#[path = "../../engine/tests/support/hub.rs"]
#[allow(dead_code)]
mod hub;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use support::{TestNode, fixture};

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// A node in the swarm `code` holding the fixture.
async fn swarm_node(dir: &std::path::Path, code: &str, peers: Vec<String>, hf: Option<String>) -> TestNode {
    support::swarm_node(dir, code, peers, hf, true).await
}

async fn peers_up(n: &TestNode) -> Vec<String> {
    let v: Value = reqwest::get(format!("{}/api/swarm", n.url)).await.unwrap().json().await.unwrap();
    v["peers"].as_array().unwrap().iter().filter(|p| p["up"] == true).map(|p| p["node_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_no_task_behind_and_its_peers_see_it_leave() {
    let dir = tempfile::tempdir().unwrap();
    let code = rbee_swarm::SwarmKey::generate().join_code();
    let before = alive_tasks();
    // A hub that sends the file slowly, so a pull is running at the stop.
    let hub = hub::hub_for(&fixture());
    hub.pace.store(1 << 20, Ordering::SeqCst);
    let endpoint = hub::serve(hub.clone()).await;
    let with_hub = alive_tasks();
    let a = swarm_node(&dir.path().join("a"), &code, Vec::new(), Some(endpoint)).await;
    let a_addr = a.state.swarm.as_ref().unwrap().listen_addrs().await.unwrap()[0].clone();
    let a_id = a.state.swarm.as_ref().unwrap().peer_id.to_string();
    let b = swarm_node(&dir.path().join("b"), &code, vec![format!("{a_addr}/p2p/{a_id}")], None).await;
    let b_id = b.state.swarm.as_ref().unwrap().peer_id.to_string();
    for _ in 0..100 {
        if peers_up(&b).await.contains(&a_id) && peers_up(&a).await.contains(&b_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(peers_up(&b).await.contains(&a_id), "b sees a");
    // Work of every kind on a: an answer streamed, a pull under way, the swarm page's stream.
    let res = a
        .post("/v1/completions", &json!({"model": support::MODEL, "prompt": "The capital of France is", "max_tokens": 4, "stream": true}))
        .send()
        .await
        .unwrap();
    let (events, _) = support::Sse::new(res).all().await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let pull = a.post("/api/models/pull", &json!({"repo": "google/gemma", "file": "gemma.gguf"})).send().await.unwrap();
    assert_eq!(pull.status(), 202);
    let events = reqwest::get(format!("{}/api/swarm/events", a.url)).await.unwrap();
    assert!(alive_tasks() > with_hub, "a runs tasks");
    a.stop().await.unwrap();
    // The client's end of the swarm page's stream (ended by a's shutdown).
    drop(events);
    // b no longer lists a as up: a said goodbye when it stopped (had a's
    // swarm kept running, it would still answer b's probes).
    let mut down = false;
    for _ in 0..100 {
        if !peers_up(&b).await.contains(&a_id) {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down, "b still lists a as up after it stopped");
    b.stop().await.unwrap();
    // Everything both nodes started has ended; what is left is the hub's.
    let mut left = alive_tasks();
    for _ in 0..100 {
        left = alive_tasks();
        if left <= with_hub {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left <= with_hub, "{} tasks left behind (before the nodes: {with_hub}, before the hub: {before})", left - with_hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_node_leaves_mid_way_is_finished_here_with_exact_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, b_id) = two_nodes_b_loaded(dir.path()).await;
    let max = 300;
    let res = a
        .post("/v1/completions", &json!({"model": support::MODEL, "prompt": "日本の首都は東京です。京都は", "max_tokens": max, "temperature": 0, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    // Some of the answer from b, then b leaves the swarm.
    let chunks = read_while_leaving(res, 8, &b).await;
    let finishes: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| &c["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes, [&json!("length")]);
    let last = chunks.last().unwrap();
    // One answer whose usage counts both parts' tokens, exactly max_tokens.
    assert_eq!(last["usage"]["completion_tokens"], max, "{last}");
    assert_eq!(last["timings"]["node_id"], b_id.as_str(), "b started it: {last}");
    let text: String = chunks.iter().filter_map(|c| c["choices"].get(0)).filter_map(|c| c["text"].as_str()).collect();
    assert!(!text.is_empty());
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// Reads a stream answered by `b`: `before` events, then `b` leaves the
/// swarm, then the rest, which must end in `[DONE]` with no error; returns
/// the chunks.
async fn read_while_leaving(res: reqwest::Response, before: usize, b: &TestNode) -> Vec<Value> {
    let mut sse = support::Sse::new(res);
    let mut events = Vec::new();
    while events.len() < before {
        let support::SseItem::Data(d) = sse.next().await else { panic!("the stream ended early") };
        events.push(d);
    }
    b.state.swarm.as_ref().unwrap().leave().await;
    while let support::SseItem::Data(d) = sse.next().await {
        events.push(d);
    }
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c.get("error").is_none()), "{chunks:?}");
    chunks
}

/// Starts a and b in one swarm with the fixture loaded on b only, and waits
/// until a sees it there (a then routes the model's requests to b).
async fn two_nodes_b_loaded(dir: &std::path::Path) -> (TestNode, TestNode, String) {
    let code = rbee_swarm::SwarmKey::generate().join_code();
    let a = swarm_node(&dir.join("a"), &code, Vec::new(), None).await;
    let a_addr = a.state.swarm.as_ref().unwrap().listen_addrs().await.unwrap()[0].clone();
    let a_id = a.state.swarm.as_ref().unwrap().peer_id.to_string();
    let b = swarm_node(&dir.join("b"), &code, vec![format!("{a_addr}/p2p/{a_id}")], None).await;
    let b_id = b.state.swarm.as_ref().unwrap().peer_id.to_string();
    let warm = b.post("/v1/completions", &json!({"model": support::MODEL, "prompt": "a", "max_tokens": 1})).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    for _ in 0..100 {
        let v: Value = reqwest::get(format!("{}/api/swarm", a.url)).await.unwrap().json().await.unwrap();
        if v["peers"].as_array().unwrap().iter().any(|p| p["node_id"] == b_id.as_str() && !p["record"]["models_loaded"].as_array().unwrap().is_empty()) {
            return (a, b, b_id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a never saw b's loaded model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_schemas_logprobs_and_n_routed_to_a_peer_behave_as_local_ones_failover_included() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, b_id) = two_nodes_b_loaded(dir.path()).await;
    let note = json!({"type": "function", "function": {"name": "save_note", "parameters": {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 12}, "text": {"type": "string", "minLength": 150, "maxLength": 400}},
        "required": ["title", "text"], "additionalProperties": false
    }}});
    let ask = |extra: Value| {
        let mut body =
            json!({"model": support::MODEL, "messages": [{"role": "user", "content": "Write a long note about bees."}], "temperature": 0, "max_tokens": 300});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let check_note = |arguments: &str| {
        let v: Value = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{arguments:?}: {e}"));
        let text = v["text"].as_str().unwrap().chars().count();
        assert!(v["title"].as_str().unwrap().chars().count() <= 12 && (150..=400).contains(&text), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    };

    // Whole answers from b, asked at a.
    let r: Value =
        a.post_json("/v1/chat/completions", &ask(json!({"tools": [note], "tool_choice": "required", "parallel_tool_calls": false, "logprobs": true}))).await;
    assert_eq!(r["timings"]["node_id"], b_id.as_str(), "b ran it: {r}");
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
    let calls = r["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert!(calls.len() == 1 && calls[0]["function"]["name"] == "save_note", "{r}");
    check_note(calls[0]["function"]["arguments"].as_str().unwrap());
    let schema =
        json!({"type": "object", "properties": {"bees": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["bees"], "additionalProperties": false});
    let r: Value = a.post_json("/v1/chat/completions", &ask(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": true}}, "logprobs": true, "top_logprobs": 2}))).await;
    assert_eq!(r["timings"]["node_id"], b_id.as_str());
    let v: Value = serde_json::from_str(r["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(v["bees"].as_u64().unwrap() <= 9, "{r}");
    assert!(!r["choices"][0]["logprobs"]["content"].as_array().unwrap().is_empty(), "logprobs come over the swarm: {r}");
    // `n` choices all go to b, which runs the prompt once for them.
    let r: Value = a.post_json("/v1/chat/completions", &ask(json!({"n": 2, "temperature": 1.0, "seed": 7, "max_tokens": 8}))).await;
    assert_eq!(r["timings"]["node_id"], b_id.as_str());
    assert_eq!(r["choices"].as_array().unwrap().len(), 2, "{r}");
    assert!(a.state.engine.loaded().is_empty(), "no choice ran on a");
    // A schema b cannot enforce is b's 400, passed on with its field.
    let bad = json!({"type": "json_schema", "json_schema": {"name": "n", "strict": true, "schema": {"type": "array", "uniqueItems": true}}});
    let res = a.post("/v1/chat/completions", &ask(json!({"response_format": bad}))).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["param"], "response_format");

    // b leaves in the middle of a call: a finishes the call itself, and its
    // arguments still match the schema.
    let res = a
        .post("/v1/chat/completions", &ask(json!({"tools": [note], "tool_choice": "required", "parallel_tool_calls": false, "stream": true})))
        .send()
        .await
        .unwrap();
    let chunks = read_while_leaving(res, 10, &b).await;
    let mut arguments = String::new();
    let mut names = Vec::new();
    for c in &chunks {
        for d in c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            if let Some(n) = d["function"]["name"].as_str() {
                names.push(n.to_string());
            }
            if d["index"] == 0 {
                arguments.push_str(d["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    assert_eq!(names, ["save_note"], "the call opened once, on b");
    check_note(&arguments);
    assert!(!a.state.engine.loaded().is_empty(), "a finished the call itself");
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}
