//! What the UI's Models and Settings pages do, over real sockets: pulls
//! from a local stand-in of the Hugging Face hub with progress and cancel,
//! uploads, deletes, and settings written to a real config file.

mod support;

#[path = "../../engine/tests/support/hub.rs"]
mod hub;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use support::{MODEL, TestNode, fixture};

/// A node with its own empty data dir (and config file there), pulling from `hf`.
async fn empty_node(dir: &std::path::Path, hf: Option<String>) -> TestNode {
    let mut cfg = rbee_node::Config::resolve(rbee_node::config::Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("data")),
        hf_endpoint: hf,
        ..Default::default()
    })
    .unwrap();
    cfg.config_file = Some(dir.join("config.toml"));
    // The port is given as `rbee serve --listen` gives it: not the file's.
    cfg.fixed = vec!["listen"];
    TestNode::start_with(cfg).await
}

async fn json(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

async fn pulls(n: &TestNode) -> Vec<Value> {
    let (_, v) = json(reqwest::get(format!("{}/api/models/pulls", n.url)).await.unwrap()).await;
    v["data"].as_array().unwrap().clone()
}

async fn model_ids(n: &TestNode) -> Vec<String> {
    let (_, v) = json(reqwest::get(format!("{}/v1/models", n.url)).await.unwrap()).await;
    v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

/// Polls the pull until it leaves `running`; returns it and the largest
/// `done_bytes` seen on the way.
async fn wait_pull(n: &TestNode, id: u64) -> (Value, u64) {
    let mut most = 0;
    for _ in 0..600 {
        let p = pulls(n).await.into_iter().find(|p| p["id"] == id).unwrap();
        most = most.max(p["done_bytes"].as_u64().unwrap());
        if p["state"] != "running" {
            return (p, most);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pull {id} still running after a minute");
}

#[tokio::test]
async fn a_pull_shows_progress_can_be_cancelled_and_resumes_into_the_model_list() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub::hub_for(&fixture());
    let size = hub.bytes.len() as u64;
    // Slow enough to watch (and cancel): about 6 s for the whole file.
    hub.pace.store(usize::try_from(size / 6).unwrap(), Ordering::SeqCst);
    let endpoint = hub::serve(hub.clone()).await;
    let n = empty_node(dir.path(), Some(endpoint)).await;
    let body = json!({"repo": "unsloth/gemma-3-270m-it-GGUF", "file": "gemma-3-270m-it-Q4_K_M.gguf"});

    let (status, p) = json(n.post("/api/models/pull", &body).send().await.unwrap()).await;
    assert_eq!(status, 202, "{p}");
    assert_eq!((p["state"].as_str(), p["revision"].as_str()), (Some("running"), Some("main")));
    let id = p["id"].as_u64().unwrap();
    let (_, again) = json(n.post("/api/models/pull", &body).send().await.unwrap()).await;
    assert_eq!(again["id"], id, "pulling the same file while it runs is the same pull");

    // Progress moves, then Cancel stops it and nothing is added.
    let mut seen = 0;
    for _ in 0..100 {
        let p = pulls(&n).await.into_iter().find(|p| p["id"] == id).unwrap();
        seen = p["done_bytes"].as_u64().unwrap();
        if seen > 0 {
            assert_eq!(p["total_bytes"], size);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen > 0 && seen < size, "progress shown part way: {seen} of {size}");
    let res = reqwest::Client::new().delete(format!("{}/api/models/pulls/{id}", n.url)).send().await.unwrap();
    let (status, cancelled) = json(res).await;
    assert_eq!((status, cancelled["state"].as_str()), (200, Some("cancelled")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = pulls(&n).await.into_iter().find(|p| p["id"] == id).unwrap();
    assert_eq!(p["state"], "cancelled", "a cancelled pull stays cancelled");
    // And the download really stopped: the hub sends nothing more (it would
    // go on at about a sixth of the file a second).
    let sent = hub.sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let more = hub.sent.load(Ordering::SeqCst) - sent;
    assert!(more <= 256 << 10, "the hub sent {more} more bytes after the pull was cancelled");
    assert!(model_ids(&n).await.is_empty());

    // Pulled again (full speed), it completes into the model list, and the
    // model answers.
    hub.pace.store(0, Ordering::SeqCst);
    let (_, p) = json(n.post("/api/models/pull", &body).send().await.unwrap()).await;
    let (done, _) = wait_pull(&n, p["id"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["done_bytes"], size);
    let model = done["model"].as_str().unwrap().to_string();
    assert_eq!(model, "gemma-3-270m-it-q4_k_m");
    assert_eq!(model_ids(&n).await, std::slice::from_ref(&model));
    let res = n.post("/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // Dismissing finished pulls empties the list.
    for p in pulls(&n).await {
        reqwest::Client::new().delete(format!("{}/api/models/pulls/{}", n.url, p["id"])).send().await.unwrap();
    }
    assert!(pulls(&n).await.is_empty());
    n.stop().await.unwrap();
}

#[tokio::test]
async fn bad_pulls_are_refused_or_fail_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let n = empty_node(dir.path(), Some(hub::serve_empty().await)).await;
    for (body, param) in [
        (json!({"repo": "no-slash", "file": "m.gguf"}), "repo"),
        (json!({"repo": "../etc/x", "file": "m.gguf"}), "repo"),
        (json!({"repo": "a/b", "file": "../../m.gguf"}), "file"),
        (json!({"repo": "a/b", "file": "README.md"}), "file"),
    ] {
        let (status, v) = json(n.post("/api/models/pull", &body).send().await.unwrap()).await;
        assert_eq!((status, v["error"]["param"].as_str()), (400, Some(param)), "{body}: {v}");
    }
    let (status, v) = json(n.post("/api/models/pull", &json!({"repo": "a/b"})).send().await.unwrap()).await;
    assert_eq!(status, 400, "{v}");
    let (_, p) = json(n.post("/api/models/pull", &json!({"repo": "acme/none", "file": "x.gguf"})).send().await.unwrap()).await;
    let (failed, _) = wait_pull(&n, p["id"].as_u64().unwrap()).await;
    assert_eq!(failed["state"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("404"), "{failed}");
    let res = reqwest::Client::new().delete(format!("{}/api/models/pulls/999", n.url)).send().await.unwrap();
    assert_eq!(res.status(), 404);
    n.stop().await.unwrap();
}

#[tokio::test]
async fn an_uploaded_gguf_is_imported_and_a_model_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let n = empty_node(dir.path(), None).await;
    let client = reqwest::Client::new();
    let upload = |name: &str, bytes: Vec<u8>| client.post(format!("{}/api/models/import?filename={name}", n.url)).body(bytes).send();

    // Garbage and empty uploads are refused; the store stays empty and no upload is left behind.
    let (status, v) = json(upload("junk.gguf", vec![7u8; 4096]).await.unwrap()).await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("file")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("junk.gguf"), "{v}");
    let (status, _) = json(upload("empty.gguf", Vec::new()).await.unwrap()).await;
    assert_eq!(status, 400);
    let (status, v) = json(client.post(format!("{}/api/models/import", n.url)).body(vec![1u8]).send().await.unwrap()).await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("filename")));
    assert!(model_ids(&n).await.is_empty());

    // The fixture, uploaded, is listed and answers.
    let (status, m) = json(upload("Gemma-3-270M-Q4_K_M.gguf", std::fs::read(fixture()).unwrap()).await.unwrap()).await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["id"], MODEL);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("data/models")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.iter().all(|f| !f.to_string_lossy().starts_with(".upload")), "{leftovers:?}");
    let res = n.post("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // Delete: only an exact id; afterwards gone from the list, the disk and the API.
    let res = client.delete(format!("{}/v1/models/gemma", n.url)).send().await.unwrap();
    assert_eq!(res.status(), 404, "a prefix does not delete");
    let (status, v) = json(client.delete(format!("{}/v1/models/{MODEL}", n.url)).send().await.unwrap()).await;
    assert_eq!((status, v), (200, json!({"id": MODEL, "object": "model", "deleted": true})));
    assert!(model_ids(&n).await.is_empty());
    assert!(!dir.path().join(format!("data/models/{MODEL}.gguf")).exists());
    let (status, v) = json(client.delete(format!("{}/v1/models/{MODEL}", n.url)).send().await.unwrap()).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("model_not_found")));
    n.stop().await.unwrap();
}

#[tokio::test]
async fn settings_are_written_to_the_config_file_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "slots = 3\n").unwrap();
    let n = empty_node(dir.path(), None).await;
    let client = reqwest::Client::new();
    let patch = |body: Value| client.patch(format!("{}/api/settings", n.url)).json(&body).send();

    let (status, s) = json(reqwest::get(format!("{}/api/settings", n.url)).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!((s["share"].as_bool(), s["swarm"]["enabled"].as_bool(), s["can_restart"].as_bool()), (Some(true), Some(false), Some(false)));
    assert_eq!(s["restart_required"], json!([]));

    // Sharing applies at once and is saved; other settings stay in the file.
    let (status, s) = json(patch(json!({"share": false})).await.unwrap()).await;
    assert_eq!((status, s["share"].as_bool()), (200, Some(false)));
    assert!(!n.state.sharing());
    let saved = rbee_node::config::Overrides::from_file(&file).unwrap();
    assert_eq!((saved.share, saved.slots), (Some(false), Some(3)));

    // Bad values: 400 naming the field, and the file is unchanged.
    let before = std::fs::read_to_string(&file).unwrap();
    for (body, param) in [
        (json!({"listen": "localhost"}), "listen"),
        (json!({"listen": "0.0.0.0:7833"}), "api_keys"),
        (json!({"api_keys": ["short"]}), "api_keys"),
        (json!({"swarm_key": "not-a-code"}), "swarm_key"),
    ] {
        let (status, v) = json(patch(body.clone()).await.unwrap()).await;
        assert_eq!((status, v["error"]["param"].as_str()), (400, Some(param)), "{body}: {v}");
    }
    let (status, _) = json(patch(json!({"shar": true})).await.unwrap()).await;
    assert_eq!(status, 400, "unknown fields are refused");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    // A new swarm, the LAN with a key: saved, and a restart is needed.
    let (status, s) = json(client.post(format!("{}/api/settings/new-swarm", n.url)).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let code = s["saved"]["swarm_join_code"].as_str().unwrap().to_string();
    assert!(rbee_swarm::SwarmKey::from_join_code(&code).is_ok());
    let (status, s) = json(patch(json!({"listen": "0.0.0.0:7999", "api_keys": ["sk-office-1234"]})).await.unwrap()).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["restart_required"], json!(["api_keys", "swarm_key"]));
    assert_eq!(s["overridden"], json!(["listen"]), "the address this run was given keeps overriding the file's");
    let cfg = rbee_node::config::load(Some(file.clone()), rbee_node::config::Overrides::default()).unwrap();
    assert_eq!((cfg.listen.to_string(), cfg.api_keys.clone(), cfg.slots), ("0.0.0.0:7999".to_string(), vec!["sk-office-1234".to_string()], 3));
    assert_eq!(cfg.swarm_key.unwrap().join_code(), code);

    // Joining another swarm by its code, then leaving.
    let other = rbee_swarm::SwarmKey::generate().join_code();
    let (_, s) = json(patch(json!({"swarm_key": other})).await.unwrap()).await;
    assert_eq!(s["saved"]["swarm_join_code"], other.as_str());
    let (_, s) = json(patch(json!({"swarm_key": null})).await.unwrap()).await;
    assert_eq!(s["saved"]["swarm_join_code"], Value::Null);
    assert!(rbee_node::config::Overrides::from_file(&file).unwrap().swarm_key.is_none());

    // Restart: refused where the host cannot, done where it can.
    let (status, v) = json(client.post(format!("{}/api/restart", n.url)).send().await.unwrap()).await;
    assert_eq!(status, 409);
    assert!(v["error"]["message"].as_str().unwrap().contains("rbee serve"), "{v}");
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    n.state.set_restart_hook(move || tx.send(()).unwrap());
    let (status, _) = json(client.post(format!("{}/api/restart", n.url)).send().await.unwrap()).await;
    assert_eq!(status, 202);
    rx.recv_timeout(Duration::from_secs(1)).expect("the host's restart was called");
    n.stop().await.unwrap();
}

#[tokio::test]
async fn settings_are_closed_to_other_machines() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = rbee_node::Config::resolve(rbee_node::config::Overrides {
        listen: Some("0.0.0.0:0".into()),
        api_keys: Some(vec!["sk-office-1234".into()]),
        data_dir: Some(dir.path().join("data")),
        ..Default::default()
    })
    .unwrap();
    cfg.config_file = Some(dir.path().join("config.toml"));
    let state = rbee_node::Service::new(rbee_engine::Engine::new(cfg.engine()).unwrap(), cfg);
    let from = |ip: [u8; 4]| axum::extract::connect_info::MockConnectInfo(std::net::SocketAddr::from((ip, 50000)));
    let req = |method: &str, path: &str| {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Bearer sk-office-1234")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(if method == "PATCH" { r#"{"share": false}"# } else { "" }))
            .unwrap()
    };
    for (method, path) in [("GET", "/api/settings"), ("PATCH", "/api/settings"), ("POST", "/api/settings/new-swarm"), ("POST", "/api/restart")] {
        let app = rbee_node::router(state.clone()).layer(from([192, 168, 1, 20]));
        let res = app.oneshot(req(method, path)).await.unwrap();
        assert_eq!(res.status(), 403, "{method} {path} from the LAN, even with a key");
    }
    assert!(state.sharing(), "nothing changed");
    assert!(!dir.path().join("config.toml").exists());
    let app = rbee_node::router(state.clone()).layer(from([127, 0, 0, 1]));
    assert_eq!(app.oneshot(req("GET", "/api/settings")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_swarm_page_stream_starts_with_the_registry_and_ends_at_shutdown() {
    // A long grace period: the open stream must end with the shutdown, not hold it up.
    let n = TestNode::start(|o| o.shutdown_grace_secs = Some(60.0)).await;
    let res = reqwest::get(format!("{}/api/swarm/events", n.url)).await.unwrap();
    let mut sse = support::Sse::new(res);
    let support::SseItem::Data(first) = sse.next().await else { panic!("no event") };
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["enabled"], false, "{v}");
    assert!(v["message"].as_str().unwrap().contains("running alone"));
    let stopping = tokio::spawn(n.stop());
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), sse.next()).await.expect("the stream ended"), support::SseItem::End);
    tokio::time::timeout(Duration::from_secs(20), stopping).await.expect("the node stopped without waiting out its grace period").unwrap().unwrap();
}

#[tokio::test]
async fn a_swarm_key_given_at_start_needs_no_restart_until_another_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let key = rbee_swarm::SwarmKey::generate();
    let mut cfg = rbee_node::Config::resolve(rbee_node::config::Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().join("data")),
        swarm_key: Some(key.join_code()),
        ..Default::default()
    })
    .unwrap();
    cfg.config_file = Some(dir.path().join("config.toml"));
    cfg.fixed = vec!["listen", "swarm_key"];
    // Alone on loopback: no mDNS, nothing to find.
    cfg.mdns = false;
    cfg.swarm_listen = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let n = TestNode::start_with(cfg).await;
    let client = reqwest::Client::new();
    let (_, s) = json(client.get(format!("{}/api/settings", n.url)).send().await.unwrap()).await;
    assert_eq!((s["swarm"]["enabled"].as_bool(), s["restart_required"].clone(), s["overridden"].clone()), (Some(true), json!([]), json!([])), "{s}");

    // Saving another swarm in the file: the running key still comes from
    // the flag, so the page must not promise a restart applies it.
    let other = rbee_swarm::SwarmKey::generate().join_code();
    let (status, s) = json(client.patch(format!("{}/api/settings", n.url)).json(&json!({"swarm_key": other})).send().await.unwrap()).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!((s["restart_required"].clone(), s["overridden"].clone()), (json!([]), json!(["swarm_key"])));
    n.stop().await.unwrap();
}
