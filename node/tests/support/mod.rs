//! Test support: nodes on real sockets serving the fixture model, and a
//! small SSE reader.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use rbee_node::Service;
use rbee_node::config::{Config, Overrides};

#[path = "../../../engine/tests/support/fixture.rs"]
mod fixture;
#[allow(unused_imports)]
pub use fixture::{fixture, instruct};

/// The fixture's id in the catalog.
pub const MODEL: &str = "gemma-3-270m-q4_k_m";

/// A data dir holding the fixture, imported once per test process and shared
/// by its nodes (the catalog is SQLite; several engines may open it).
///
/// A static is never dropped, so a `TempDir` here would leave a copy of the
/// model behind after every process (nextest runs each test in its own):
/// the dir is named after the process instead, and each new one removes
/// those of processes that have ended.
pub fn data_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join("rbee-node-tests");
        std::fs::create_dir_all(&root).unwrap();
        #[cfg(target_os = "linux")]
        for e in std::fs::read_dir(&root).unwrap().flatten() {
            let pid = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = root.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let store = rbee_engine::store::Store::open(&dir).unwrap();
        store.import(&fixture(), None).unwrap();
        dir
    })
    .clone()
}

/// A node serving the API on an ephemeral loopback port, in this process.
pub struct TestNode {
    pub url: String,
    pub addr: SocketAddr,
    pub state: Service,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    /// Starts a node with the settings `tweak` sets on top of the defaults.
    pub async fn start(tweak: impl FnOnce(&mut Overrides)) -> Self {
        let mut o = Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(data_dir()), ..Overrides::default() };
        tweak(&mut o);
        let cfg = Config::resolve(o).unwrap();
        Self::start_with(cfg).await
    }

    /// Starts a node as `rbee serve` does (`node::start`), serving until [`stop`](Self::stop).
    pub async fn start_with(cfg: Config) -> Self {
        let node = rbee_node::node::start(cfg).await.unwrap();
        let (addr, state) = (node.addr, node.state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let done = tokio::spawn(node.serve(async move {
            let _ = stopped.await;
        }));
        Self { url: format!("http://{addr}"), addr, state, stop: Some(stop), done: Some(done) }
    }

    /// Signals shutdown and waits for the server to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap()
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        reqwest::Client::new().post(format!("{}{path}", self.url)).json(body)
    }

    /// POSTs `body` to `path` and reads the answer as JSON, whatever its status.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        self.post(path, body).send().await.unwrap().json().await.unwrap()
    }

    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(format!("{}{path}", self.url)).await.unwrap().text().await.unwrap()
    }

    /// The value of one sample in `/metrics`, e.g. `rbee_slots_busy{model="x"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.get_text("/metrics").await;
        text.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
    }
}

/// A node with its own data dir (its own swarm identity) in the swarm
/// `code`, on loopback without mDNS, dialing `peers`, pulling from `hf`;
/// holding the fixture (imported) when `with_model`.
pub async fn swarm_node(dir: &std::path::Path, code: &str, peers: Vec<String>, hf: Option<String>, with_model: bool) -> TestNode {
    let store = rbee_engine::store::Store::open(dir).unwrap();
    if with_model && store.list().unwrap().is_empty() {
        store.import(&fixture(), None).unwrap();
    }
    drop(store);
    let cfg = Config::resolve(Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.to_path_buf()),
        swarm_key: Some(code.into()),
        swarm_listen: Some("/ip4/127.0.0.1/tcp/0".into()),
        mdns: Some(false),
        peers: Some(peers),
        hf_endpoint: hf,
        ..Default::default()
    })
    .unwrap();
    TestNode::start_with(cfg).await
}

/// One SSE stream read line by line: `data:` payloads and `:` comments.
pub struct Sse {
    res: reqwest::Response,
    buf: String,
    pub comments: usize,
}

#[derive(Debug, PartialEq)]
pub enum SseItem {
    Data(String),
    End,
}

impl Sse {
    pub fn new(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), 200, "stream refused");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Self { res, buf: String::new(), comments: 0 }
    }

    /// The next `data:` payload (comments are counted), or `End` when the body ends.
    pub async fn next(&mut self) -> SseItem {
        loop {
            while let Some(i) = self.buf.find('\n') {
                let line: String = self.buf.drain(..=i).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(d) = line.strip_prefix("data:") {
                    return SseItem::Data(d.trim_start().to_string());
                }
                if line.starts_with(':') {
                    self.comments += 1;
                }
            }
            match self.res.chunk().await.unwrap() {
                Some(b) => self.buf.push_str(std::str::from_utf8(&b).unwrap()),
                None => return SseItem::End,
            }
        }
    }

    /// Every payload up to the end of the body.
    pub async fn all(mut self) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        while let SseItem::Data(d) = self.next().await {
            out.push(d);
        }
        (out, self.comments)
    }
}
