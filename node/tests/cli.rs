//! The `rbee` command as a user runs it, on the fixture model.

#[path = "../../engine/tests/support/fixture.rs"]
mod fixture;

use std::path::Path;
use std::process::{Command, Output};

fn rbee(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbee")).env("RBEE_CONFIG", data.join("no-config.toml")).arg("--data-dir").arg(data).args(args).output().expect("rbee runs")
}

fn ok(out: Output) -> (String, String) {
    let (so, se) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "rbee failed: {se}");
    (so, se)
}

#[test]
fn import_list_survive_a_corrupt_catalog_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (out, _) = ok(rbee(&data, &["models", "import", fixture::fixture().to_str().unwrap()]));
    assert!(out.contains("imported gemma-3-270m-q4_k_m (gemma3, Q4_K_M"), "{out}");
    let (before, _) = ok(rbee(&data, &["models", "ls"]));
    assert!(before.contains("gemma-3-270m-q4_k_m") && before.contains("a5fd3b62230a"), "{before}");

    std::fs::write(data.join("catalog.sqlite"), b"garbage garbage garbage garbage garbage garbage garbage garbage").unwrap();
    let (after, warn) = ok(rbee(&data, &["models", "ls"]));
    assert!(warn.contains("warning:") && warn.contains("rebuilt"), "{warn}");
    assert_eq!(after, before, "the same models are listed");
    let (_, warn) = ok(rbee(&data, &["models", "ls"]));
    assert!(!warn.contains("warning"), "repaired once, quiet after: {warn}");

    let (out, _) = ok(rbee(&data, &["models", "rm", "gemma-3"]));
    assert!(out.contains("removed gemma-3-270m-q4_k_m"), "{out}");
    let (out, _) = ok(rbee(&data, &["models", "ls"]));
    assert!(out.contains("no models"), "{out}");
}

#[test]
fn truncated_gguf_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(fixture::fixture()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = rbee(&dir.path().join("data"), &["models", "import", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cut.gguf") && err.contains("truncated"), "{err}");
}

#[test]
fn generate_streams_a_sensible_continuation_and_seeds_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(rbee(&data, &["models", "import", fixture::fixture().to_str().unwrap()]));
    let (greedy, _) = ok(rbee(&data, &["generate", "gemma-3-270m-q4_k_m", "The capital of France is", "--temperature", "0", "--max-tokens", "12"]));
    assert!(greedy.starts_with(" the capital of the country of France"), "llama.cpp's greedy continuation: {greedy}");
    let seeded = ["generate", "gemma-3-270m-q4_k_m", "The capital of France is", "--seed", "7", "--max-tokens", "24"];
    let a = rbee(&data, &seeded);
    let b = rbee(&data, &seeded);
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout, "same seed, identical bytes");
    let out = rbee(&data, &["generate", "nope", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("model `nope` not found"));
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["chat", "--help"],
        &["models", "--help"],
        &["models", "pull", "--help"],
        &["generate", "--help"],
        &["hw", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rbee")).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8(out.stdout).unwrap().contains("Usage: rbee"), "{args:?}");
    }
}

#[test]
fn chat_answers_each_line_in_one_conversation() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    ok(rbee(dir.path(), &["models", "import", fixture::fixture().to_str().unwrap()]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbee"))
        .env("RBEE_CONFIG", dir.path().join("none.toml"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "chat", "--temperature", "0", "--max-tokens", "12"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"What is the capital of France?\n\nAnd of Italy?\n/exit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Two answers of 12 tokens each (the fixture is a base model: they read oddly).
    assert!(text.lines().filter(|l| !l.trim().is_empty()).count() >= 2, "two answers expected: {text:?}");
}

/// A `rbee serve` process on an ephemeral port, stopped with SIGTERM on drop.
struct Served {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        ok(rbee(dir.path(), &["models", "import", fixture::fixture().to_str().unwrap()]));
        let mut child = Command::new(env!("CARGO_BIN_EXE_rbee"))
            .env("RBEE_CONFIG", dir.path().join("none.toml"))
            .args(["--data-dir", dir.path().to_str().unwrap(), "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url =
            line.trim().strip_prefix("rbee listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).trim_end_matches("/v1").to_string();
        Self { child, url, _dir: dir }
    }

    fn term(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc_kill(self.child.id() as i32, 15) };
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_answer_in_flight_refuses_new_work_and_exits_0() {
    let mut node = Served::start(&["--shutdown-grace-secs", "60"]);
    let client = reqwest::Client::new();
    let body = serde_json::json!({"model": "gemma-3-270m-q4_k_m", "prompt": "Once upon a time", "max_tokens": 40, "stream": true, "temperature": 0});
    let mut res = client.post(format!("{}/v1/completions", node.url)).json(&body).send().await.unwrap();
    let first = res.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    node.term();
    // New connections are refused while the answer in flight goes on.
    let addr = node.url.trim_start_matches("http://").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting connections after SIGTERM");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut rest = Vec::new();
    while let Some(c) = res.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.contains("\"finish_reason\":\"length\"") && rest.trim_end().ends_with("data: [DONE]"), "the answer was cut: {rest:?}");
    let status = tokio::task::spawn_blocking(move || node.child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_requests_leaves_it_serving_with_flat_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Served::start(&[]);
    let pid = node.child.id();
    let client = reqwest::Client::new();
    let bodies: [&[u8]; 8] = [
        b"{",
        b"not json at all",
        b"{\"model\": 5}",
        b"{\"model\": \"x\", \"messages\": {}}",
        b"{\"model\": \"gemma\", \"messages\": [], \"temperature\": \"hot\"}",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b"{\"model\": \"gemma\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": -1}",
    ];
    let flood = |n: usize| {
        let (client, url) = (client.clone(), node.url.clone());
        async move {
            for i in 0..n {
                let res = client.post(format!("{url}/v1/chat/completions")).body(bodies[i % bodies.len()]).send().await.unwrap();
                assert!(res.status() == 400, "request {i}: {}", res.status());
                let e: serde_json::Value = res.json().await.unwrap();
                assert_eq!(e["error"]["type"], "invalid_request_error");
            }
            // Not HTTP at all, on fresh connections.
            for _ in 0..n / 50 {
                let mut s = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.unwrap();
                s.write_all(b"\x16\x03\x01 this is not http\r\n\r\n").await.unwrap();
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
            }
        }
    };
    flood(200).await;
    let before = support_rss_kib(pid);
    flood(1000).await;
    let after = support_rss_kib(pid);
    eprintln!("RSS before the flood {} KiB, after 1000 malformed requests {} KiB", before, after);
    assert!(after < before + 16 * 1024, "RSS grew from {before} to {after} KiB");
    let ok: serde_json::Value = client
        .post(format!("{}/v1/chat/completions", node.url))
        .json(&serde_json::json!({"model": "gemma-3-270m-q4_k_m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["usage"]["completion_tokens"], 2);
}

fn support_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap()
}
