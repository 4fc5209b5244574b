//! Models copied between the swarm's nodes: a pull of a file that peers
//! hold comes from them (several at once, resuming what it had), not from
//! the hub; a node that cannot reach the hub finds the file by its name; a
//! copy whose content is not the hub's file is refused and the hub is used.
//! Real nodes on loopback sockets, real libp2p, the real fixture model.

mod support;

#[path = "../../engine/tests/support/hub.rs"]
#[allow(dead_code)]
mod hub;

use std::time::Duration;

use serde_json::{Value, json};
use support::{TestNode, fixture};

const REPO: &str = "unsloth/gemma-3-270m-it-GGUF";
const FILE: &str = "gemma-3-270m-it-Q4_K_M.gguf";

/// A node in the swarm `code`, holding the fixture when `with_model`
/// (imported: its record has the sha256, not the hub name).
async fn node(dir: &std::path::Path, code: &str, peers: Vec<String>, hf: String, with_model: bool) -> TestNode {
    support::swarm_node(dir, code, peers, Some(hf), with_model).await
}

async fn address(n: &TestNode) -> String {
    let c = n.state.swarm.as_ref().unwrap();
    format!("{}/p2p/{}", c.listen_addrs().await.unwrap()[0], c.peer_id)
}

/// How many other live nodes `n`'s registry lists with a model file of this sha256.
async fn holders(n: &TestNode, sha: &str) -> usize {
    let v: Value = reqwest::get(format!("{}/api/swarm", n.url)).await.unwrap().json().await.unwrap();
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["up"] == true && p["local"] == false)
        .filter(|p| p["record"]["models_on_disk"].as_array().unwrap().iter().any(|m| m["sha256"] == sha))
        .count()
}

async fn wait_holders(n: &TestNode, sha: &str, want: usize) {
    for _ in 0..200 {
        if holders(n, sha).await >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{want} peers holding {sha} never showed up");
}

/// Pulls the hub file on `n` and waits for the pull to end; its last state.
async fn pull(n: &TestNode) -> Value {
    let res = n.post("/api/models/pull", &json!({"repo": REPO, "file": FILE})).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    for _ in 0..1200 {
        let all: Value = reqwest::get(format!("{}/api/models/pulls", n.url)).await.unwrap().json().await.unwrap();
        let p = all["data"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap().clone();
        if p["state"] != "running" {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pull still running after a minute");
}

fn data_ranges(hub: &hub::Hub) -> Vec<String> {
    hub.ranges.lock().unwrap().iter().filter(|r| *r != "bytes=0-0").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_copies_the_file_from_the_peers_that_hold_it_resuming_what_it_had_and_finds_it_by_name_without_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let code = rbee_swarm::SwarmKey::generate().join_code();
    let hub = hub::hub_for(&fixture());
    let size = hub.bytes.len() as u64;
    let sha = hub.etag.clone();
    let endpoint = hub::serve(hub.clone()).await;

    let a = node(&dir.path().join("a"), &code, Vec::new(), endpoint.clone(), true).await;
    let c = node(&dir.path().join("c"), &code, vec![address(&a).await], endpoint.clone(), true).await;
    // b already has the first chunk from an earlier copy that stopped.
    let b_dir = dir.path().join("b");
    let part = rbee_engine::store::Store::open(&b_dir).unwrap().partial_copy(&sha);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let chunk = usize::try_from(rbee_node::copy::CHUNK).unwrap();
    let mut partial = hub.bytes[..chunk].to_vec();
    partial.resize(hub.bytes.len(), 0);
    std::fs::write(&part, &partial).unwrap();
    let mut have = vec![0u8; usize::try_from(size.div_ceil(rbee_node::copy::CHUNK)).unwrap()];
    have[0] = 1;
    std::fs::write(part.with_extension("have"), &have).unwrap();
    let b = node(&b_dir, &code, vec![address(&a).await, address(&c).await], endpoint.clone(), false).await;
    wait_holders(&b, &sha, 2).await;

    let p = pull(&b).await;
    assert_eq!(p["state"], "done", "{p}");
    assert_eq!(p["from_peers"].as_array().unwrap().len(), 2, "copied from both peers: {p}");
    assert!(p["bytes_per_s"].as_u64().unwrap() > 0, "{p}");
    assert!(data_ranges(&hub).is_empty(), "nothing came from the hub: {:?}", data_ranges(&hub));
    // Both peers sent part of it, and together exactly what b lacked.
    let sent_a = a.metric("rbee_copy_sent_bytes_total").await.unwrap();
    let sent_c = c.metric("rbee_copy_sent_bytes_total").await.unwrap();
    assert!(sent_a > 0.0 && sent_c > 0.0, "a sent {sent_a}, c sent {sent_c}");
    #[allow(clippy::cast_precision_loss)]
    let lacked = (size - rbee_node::copy::CHUNK) as f64;
    assert_eq!(sent_a + sent_c, lacked, "the chunk b had was not sent again");
    assert_eq!(b.metric("rbee_copy_received_bytes_total").await.unwrap(), lacked);
    let models: Value = reqwest::get(format!("{}/v1/models", b.url)).await.unwrap().json().await.unwrap();
    let mine = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "gemma-3-270m-it-q4_k_m").unwrap_or_else(|| panic!("{models}"));
    let source = mine["rbee"]["source"].as_str().unwrap();
    assert!(source.starts_with(&format!("{REPO}, copied from ")) && source.contains(" over the LAN at "), "{source}");
    let entry = b.state.engine.store().get("gemma-3-270m-it-q4_k_m").unwrap();
    assert_eq!(rbee_engine::store::hash_file(&entry.path).unwrap(), sha);
    assert!(!part.exists() && !part.with_extension("have").exists(), "the partial copy is gone once catalogued");

    // A node whose hub cannot say what the file is (it has none) finds the
    // peer that pulled that repository's file by its name.
    let d = node(&dir.path().join("d"), &code, vec![address(&b).await], hub::serve_empty().await, false).await;
    wait_holders(&d, &sha, 3).await;
    let p = pull(&d).await;
    assert_eq!(p["state"], "done", "{p}");
    assert_eq!(p["from_peers"].as_array().unwrap().len(), 1, "only b pulled it by that name: {p}");
    let entry = d.state.engine.store().get("gemma-3-270m-it-q4_k_m").unwrap();
    assert_eq!(rbee_engine::store::hash_file(&entry.path).unwrap(), sha);

    for n in [d, b, c, a] {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_is_not_the_hubs_file_is_refused_and_the_hub_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let code = rbee_swarm::SwarmKey::generate().join_code();
    let hub = hub::hub_for(&fixture());
    let sha = hub.etag.clone();
    let endpoint = hub::serve(hub.clone()).await;
    // a's file went bad on its disk after it was catalogued (its record
    // still names the good sha256).
    let a = node(&dir.path().join("a"), &code, Vec::new(), endpoint.clone(), true).await;
    let path = a.state.engine.store().list().unwrap()[0].path.clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let b = node(&dir.path().join("b"), &code, vec![address(&a).await], endpoint, false).await;
    wait_holders(&b, &sha, 1).await;

    let p = pull(&b).await;
    assert_eq!(p["state"], "done", "{p}");
    assert!(p["from_peers"].as_array().unwrap().is_empty(), "{p}");
    let note = p["note"].as_str().unwrap_or_else(|| panic!("the pull says what happened: {p}"));
    assert!(note.contains("refused") && note.contains("Hugging Face"), "{note}");
    assert!(!data_ranges(&hub).is_empty(), "the file came from the hub");
    let list = b.state.engine.store().list().unwrap();
    assert_eq!(list.len(), 1, "only the good file is catalogued");
    assert_eq!((list[0].sha256.as_str(), rbee_engine::store::hash_file(&list[0].path).unwrap().as_str()), (sha.as_str(), sha.as_str()));
    let part = b.state.engine.store().partial_copy(&sha);
    assert!(!part.exists(), "the bad copy is gone");
    for n in [b, a] {
        n.stop().await.unwrap();
    }
}
