//! What a hostile web page or a flood of half-open connections can do to a
//! node on the user's machine: nothing. Real sockets, raw HTTP where a
//! browser's headers matter, real files.

mod support;

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use support::{MODEL, TestNode, fixture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` (request line and headers, no blank line) and `body` as one
/// raw HTTP/1.1 request; returns the status and the body parsed as JSON
/// (`Null` when it is not JSON).
async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await.expect("answered").unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked bodies: take the JSON object between the first `{` and the last `}`.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// A node of its own data dir (so that what it writes can be looked at),
/// holding the fixture, with a config file.
async fn own_node(dir: &std::path::Path, tweak: impl FnOnce(&mut rbee_node::config::Overrides)) -> TestNode {
    let store = rbee_engine::store::Store::open(dir).unwrap();
    if store.list().unwrap().is_empty() {
        store.import(&fixture(), None).unwrap();
    }
    drop(store);
    let mut o = rbee_node::config::Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(dir.to_path_buf()), ..Default::default() };
    tweak(&mut o);
    let mut cfg = rbee_node::Config::resolve(o).unwrap();
    cfg.config_file = Some(dir.join("config.toml"));
    TestNode::start_with(cfg).await
}

#[tokio::test]
async fn a_rebinding_host_is_refused_on_every_route_family() {
    let n = TestNode::start(|_| {}).await;
    let port = n.addr.port();
    let routes: [(&str, &str, &[u8]); 11] = [
        ("GET", "/v1/models", b""),
        ("POST", "/v1/completions", br#"{"model":"gemma-3-270m-q4_k_m","prompt":"a","max_tokens":1}"#),
        ("GET", "/api/settings", b""),
        ("PATCH", "/api/settings", br#"{"listen":"0.0.0.0:7833","api_keys":["attacker-key-1"]}"#),
        ("GET", "/api/conversations", b""),
        ("GET", "/api/swarm", b""),
        ("GET", "/api/models/pulls", b""),
        ("GET", "/", b""),
        ("GET", "/assets/x.js", b""),
        ("GET", "/health", b""),
        ("GET", "/metrics", b""),
    ];
    for (method, path, body) in routes {
        let (status, v) = raw(n.addr, &format!("{method} {path} HTTP/1.1\r\nhost: evil.example:{port}"), body).await;
        assert_eq!(status, 403, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "forbidden_host", "{method} {path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("allowed_hosts"));
    }
    // The names this machine really has still work.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] {
        let (status, v) = raw(n.addr, &format!("GET /health HTTP/1.1\r\nhost: {host}"), b"").await;
        assert_eq!(status, 200, "{host}: {v}");
    }
    n.stop().await.unwrap();
}

#[tokio::test]
async fn cross_site_simple_posts_change_nothing_and_the_nodes_own_page_still_can() {
    let dir = tempfile::tempdir().unwrap();
    let n = own_node(dir.path(), |_| {}).await;
    let port = n.addr.port();
    let form = "content-type: application/x-www-form-urlencoded";
    let host = format!("host: 127.0.0.1:{port}");
    for (path, extra, body) in [
        ("/api/settings/new-swarm", format!("origin: https://evil.example\r\n{form}"), &b"a=b"[..]),
        ("/api/conversations", "origin: https://evil.example\r\ncontent-type: text/plain".to_string(), br#"{"title":"planted"}"#),
        ("/api/models/import?filename=planted.gguf", "origin: null\r\ncontent-type: application/octet-stream".into(), b"GGUF...."),
        ("/api/models/pull", format!("sec-fetch-site: cross-site\r\n{form}"), br#"{"repo":"a/b","file":"c.gguf"}"#),
        (
            "/v1/completions",
            "origin: http://192.168.1.66:8080\r\ncontent-type: text/plain".into(),
            br#"{"model":"gemma-3-270m-q4_k_m","prompt":"a","max_tokens":1}"#,
        ),
        ("/api/restart", format!("sec-fetch-site: same-site\r\n{form}"), b""),
    ] {
        let (status, v) = raw(n.addr, &format!("POST {path} HTTP/1.1\r\n{host}\r\n{extra}"), body).await;
        assert_eq!(status, 403, "{path}: {v}");
        assert_eq!(v["error"]["code"], "cross_origin_request", "{path}: {v}");
    }
    assert!(!dir.path().join("config.toml").exists(), "the swarm key was not replaced");
    let list: Value = reqwest::get(format!("{}/api/conversations", n.url)).await.unwrap().json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
    assert!(reqwest::get(format!("{}/api/models/pulls", n.url)).await.unwrap().json::<Value>().await.unwrap()["data"].as_array().unwrap().is_empty());
    // The node's own page (same origin) and clients without Origin (SDKs) work.
    let (status, v) = raw(
        n.addr,
        &format!("POST /api/conversations HTTP/1.1\r\n{host}\r\norigin: http://127.0.0.1:{port}\r\ncontent-type: application/json"),
        br#"{"title":"mine"}"#,
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = raw(n.addr, &format!("POST /v1/completions HTTP/1.1\r\n{host}"), br#"{"model":"gemma-3-270m-q4_k_m","prompt":"a","max_tokens":1}"#).await;
    assert_eq!(status, 200, "{v}");
    n.stop().await.unwrap();
}

#[tokio::test]
async fn a_revision_that_climbs_out_of_the_store_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("outside");
    let n = own_node(&dir.path().join("data"), |_| {}).await;
    let depth = "../".repeat(8);
    for (field, body) in [
        ("revision", json!({"repo": "a/b", "file": "x.gguf", "revision": format!("{depth}{}", target.display())})),
        ("revision", json!({"repo": "a/b", "file": "x.gguf", "revision": "main/../../x"})),
        ("file", json!({"repo": "a/b", "file": "../../x.gguf"})),
        ("repo", json!({"repo": "../../a", "file": "x.gguf"})),
    ] {
        let res = n.post("/api/models/pull", &body).send().await.unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["param"], field, "{v}");
    }
    assert!(!target.exists());
    assert!(!dir.path().join("data/downloads").exists(), "hf-hub was never reached");
    n.stop().await.unwrap();
}

#[tokio::test]
async fn two_imports_at_once_are_both_catalogued_with_the_hashes_of_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let n = own_node(&dir.path().join("data"), |_| {}).await;
    let base = std::fs::read(fixture()).unwrap();
    let copies: Vec<Vec<u8>> = (0u8..2)
        .map(|i| {
            let mut b = base.clone();
            b.extend([i + 1; 64]);
            b
        })
        .collect();
    let client = reqwest::Client::new();
    let sends = copies.iter().map(|b| client.post(format!("{}/api/models/import?filename=twin.gguf", n.url)).body(b.clone()).send());
    let answers = futures_util::future::join_all(sends).await;
    let mut ids = Vec::new();
    for a in answers {
        let a = a.unwrap();
        assert_eq!(a.status(), 201);
        ids.push(a.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    assert_eq!(ids, ["twin", "twin-2"]);
    for id in &ids {
        let e = n.state.engine.store().get(id).unwrap();
        assert_eq!(rbee_engine::store::hash_file(&e.path).unwrap(), e.sha256, "{id}");
    }
    let models = dir.path().join("data/models");
    let leftovers: Vec<String> =
        std::fs::read_dir(&models).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    n.stop().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_half_sent_requests_leaves_health_answering() {
    let n = TestNode::start(|o| {
        o.max_connections = Some(32);
        o.header_timeout_secs = Some(2.0);
    })
    .await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(n.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ").await.unwrap();
        flood.push(s);
    }
    // At once, not after the header timeout: the oldest idle connections make room.
    let health = tokio::time::timeout(Duration::from_secs(1), reqwest::get(format!("{}/health", n.url))).await.expect("health answered while flooded").unwrap();
    assert_eq!(health.status(), 200);
    // A connection that never finishes its headers is closed.
    let mut slow = TcpStream::connect(n.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    // Hyper closes it (EOF, or a reset) instead of waiting for ever.
    let _ = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await.expect("closed after the header timeout");
    drop(flood);
    n.stop().await.unwrap();
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_metadata_bomb_is_refused_without_the_memory_it_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let n = own_node(&dir.path().join("data"), |_| {}).await;
    // One metadata array of 50 000 000 one-byte elements: 50 MB on disk,
    // ~1.6 GB once read as values.
    let count = 50_000_000u64;
    let bomb = dir.path().join("bomb.gguf");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&bomb).unwrap());
        f.write_all(b"GGUF").unwrap();
        f.write_all(&3u32.to_le_bytes()).unwrap();
        f.write_all(&0u64.to_le_bytes()).unwrap();
        f.write_all(&1u64.to_le_bytes()).unwrap();
        f.write_all(&5u64.to_le_bytes()).unwrap();
        f.write_all(b"bomb.").unwrap();
        f.write_all(&9u32.to_le_bytes()).unwrap();
        f.write_all(&0u32.to_le_bytes()).unwrap();
        f.write_all(&count.to_le_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(count >> 20) + 1 {
            f.write_all(&zeros).unwrap();
        }
    }
    let before = peak_rss();
    let res = reqwest::Client::new().post(format!("{}/api/models/import?filename=bomb.gguf", n.url)).body(std::fs::read(&bomb).unwrap()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("more than"), "{v}");
    let grew = peak_rss().saturating_sub(before);
    // The upload's own buffer (the body read here, 50 MB) is all it may cost.
    assert!(grew < 200 << 20, "peak RSS grew by {} MiB", grew >> 20);
    n.stop().await.unwrap();
}

#[tokio::test]
async fn uploads_past_the_limit_and_bad_file_names_are_client_errors() {
    let dir = tempfile::tempdir().unwrap();
    let n = own_node(&dir.path().join("data"), |o| o.max_upload_mib = Some(1)).await;
    let client = reqwest::Client::new();
    let send = |name: String, bytes: Vec<u8>| client.post(format!("{}/api/models/import", n.url)).query(&[("filename", name)]).body(bytes).send();
    let res = send("big.gguf".into(), vec![0u8; 2 << 20]).await.unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["param"], "file");
    for name in ["a\0b.gguf".to_string(), format!("{}.gguf", "x".repeat(256))] {
        let res = send(name, b"GGUF".to_vec()).await.unwrap();
        assert_eq!(res.status(), 400);
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["param"], "filename");
    }
    // axum's own rejections come in OpenAI's shape too.
    for path in ["/v1/models/%FF%FE", "/api/models/import?filename=%FF"] {
        let (status, v) = raw(n.addr, &format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1"), b"").await;
        assert!(status == 400 || status == 405, "{path}: {status}");
        assert!(v["error"]["message"].is_string(), "{path}: {v}");
    }
    let (status, v) = raw(n.addr, "POST /api/models/import?filename=%FF%FE.gguf HTTP/1.1\r\nhost: 127.0.0.1", b"GGUF").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let models: Value = reqwest::get(format!("{}/v1/models", n.url)).await.unwrap().json().await.unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "only the fixture: {models}");
    assert_eq!(models["data"][0]["id"], MODEL);
    n.stop().await.unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn settings_are_written_for_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let n = own_node(&dir.path().join("data"), |_| {}).await;
    let file = dir.path().join("data/config.toml");
    let res = n.post("/api/settings/new-swarm", &json!({})).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let res = reqwest::Client::new().patch(format!("{}/api/settings", n.url)).json(&json!({"api_keys": ["a-long-key-1"]})).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&file).unwrap().contains("a-long-key-1"));
    n.stop().await.unwrap();
    // A file others could read (written by hand) is restricted when read.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    rbee_node::config::load(Some(file.clone()), rbee_node::config::Overrides::default()).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    // The swarm's identity key, created by a node that joins a swarm.
    let code = rbee_swarm::SwarmKey::generate().join_code();
    let n = own_node(&dir.path().join("data"), |o| {
        o.swarm_key = Some(code);
        o.swarm_listen = Some("/ip4/127.0.0.1/tcp/0".into());
        o.mdns = Some(false);
    })
    .await;
    let key = dir.path().join("data/swarm/identity.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    n.stop().await.unwrap();
}
