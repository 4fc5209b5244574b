//! `/api/conversations` over real sockets: what the UI's chat list relies
//! on, kept in the data dir's SQLite file across a node restart.

mod support;

use serde_json::{Value, json};
use support::TestNode;

async fn start(dir: &std::path::Path) -> TestNode {
    let dir = dir.to_path_buf();
    TestNode::start(move |o| o.data_dir = Some(dir)).await
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_created_searched_renamed_trimmed_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", node.url);

    // An empty body is allowed: a new, untitled conversation.
    let (s, first) = send(http.post(url("/api/conversations"))).await;
    assert_eq!(s, 201, "{first}");
    let (s, c) = send(http.post(url("/api/conversations")).json(&json!({"title": "Lisbon trip", "model": "gemma"}))).await;
    assert_eq!(s, 201);
    let id = c["id"].as_str().unwrap().to_string();
    let msgs = url(&format!("/api/conversations/{id}/messages"));
    let (s, q) = send(http.post(&msgs).json(&json!({"role": "user", "content": "Which tram goes to Belém?"}))).await;
    assert_eq!(s, 201, "{q}");
    send(http.post(&msgs).json(&json!({"role": "assistant", "content": "Tram 15E.", "model": "gemma", "node_id": "12D3KooW", "tokens_per_sec": 38.2}))).await;
    let (_, wrong) = send(http.post(&msgs).json(&json!({"role": "assistant", "content": "A wrong answer to regenerate"}))).await;

    // Newest first; search looks into message text.
    let (_, list) = send(http.get(url("/api/conversations"))).await;
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str(), first["id"].as_str().unwrap()]);
    let (_, found) = send(http.get(url("/api/conversations?q=belém"))).await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found}");
    let (_, none) = send(http.get(url("/api/conversations?q=Porto"))).await;
    assert!(none["data"].as_array().unwrap().is_empty());

    // Regenerate: drop the last answer.
    let (s, t) = send(http.delete(format!("{msgs}/{}", wrong["id"]))).await;
    assert_eq!((s, t["removed"].as_u64()), (200, Some(1)));
    let (s, r) = send(http.patch(url(&format!("/api/conversations/{id}"))).json(&json!({"title": "Trams"}))).await;
    assert_eq!((s, r["title"].as_str()), (200, Some("Trams")));

    // Its own settings: set, then one cleared with null while the others stay.
    let chat = url(&format!("/api/conversations/{id}"));
    let (s, r) = send(http.patch(&chat).json(&json!({"instructions": "Answer in Portuguese.", "temperature": 0.3, "max_tokens": 64}))).await;
    assert_eq!((s, r["instructions"].as_str(), r["temperature"].as_f64(), r["max_tokens"].as_u64()), (200, Some("Answer in Portuguese."), Some(0.3), Some(64)));
    let (s, r) = send(http.patch(&chat).json(&json!({"temperature": null}))).await;
    assert_eq!(
        (s, r["instructions"].as_str(), r["temperature"].clone(), r["max_tokens"].as_u64()),
        (200, Some("Answer in Portuguese."), Value::Null, Some(64))
    );
    let (s, _) = send(http.delete(url(&format!("/api/conversations/{}", first["id"].as_str().unwrap())))).await;
    assert_eq!(s, 200);

    // Bad input: the API's own error object, and nothing stored is lost.
    for (req, status, param) in [
        (http.post(&msgs).json(&json!({"role": "robot", "content": "x"})), 400, Some("role")),
        (http.post(&msgs).body("{\"role\":"), 400, None),
        (http.post(&msgs).json(&json!({"role": "user", "content": "x", "colour": 1})), 400, None),
        (http.patch(url(&format!("/api/conversations/{id}"))).json(&json!({"title": "t".repeat(201)})), 400, Some("title")),
        (http.patch(url(&format!("/api/conversations/{id}"))).json(&json!({"temperature": 7})), 400, Some("temperature")),
        (http.patch(url(&format!("/api/conversations/{id}"))).json(&json!({"max_tokens": 0})), 400, Some("max_tokens")),
        (http.patch(url(&format!("/api/conversations/{id}"))).json(&json!({"max_tokens": -3})), 400, None),
        (http.patch(url(&format!("/api/conversations/{id}"))).json(&json!({"instructions": "i".repeat(20_001)})), 400, Some("instructions")),
        (http.get(url("/api/conversations/no-such-id")), 404, None),
        (http.delete(format!("{msgs}/999999")), 404, None),
        (http.put(url("/api/conversations")), 405, None),
    ] {
        let (s, e) = send(req).await;
        assert_eq!(s, status, "{e}");
        assert!(e["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        if let Some(p) = param {
            assert_eq!(e["error"]["param"].as_str(), Some(p), "{e}");
        }
    }
    node.stop().await.unwrap();

    let node = start(dir.path()).await;
    let (s, c) = send(reqwest::Client::new().get(format!("{}/api/conversations/{id}", node.url))).await;
    assert_eq!(s, 200);
    assert_eq!(c["title"], "Trams");
    assert_eq!((c["instructions"].as_str(), c["max_tokens"].as_u64()), (Some("Answer in Portuguese."), Some(64)), "kept with the conversation");
    let m = c["messages"].as_array().unwrap();
    assert_eq!(m.len(), 2, "{c}");
    assert_eq!((m[1]["content"].as_str(), m[1]["tokens_per_sec"].as_f64(), m[1]["node_id"].as_str()), (Some("Tram 15E."), Some(38.2), Some("12D3KooW")));
    let (_, list) = send(reqwest::Client::new().get(format!("{}/api/conversations", node.url))).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    node.stop().await.unwrap();
}
