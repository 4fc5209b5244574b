//! HTTP benchmark (run by `e2e/bench/http.sh`, not part of CI): the same
//! generation through the engine directly and through a streamed
//! `/v1/completions` request on a real socket, in one process, alternating;
//! then aggregate throughput with 1, 2, 4 and 8 concurrent HTTP clients
//! (eight slots: requests decode together in one batch).
//!
//! The HTTP layer's share of time to first token is taken per request: the
//! client's time minus the node's own `timings.ttft_ms` for that request
//! (engine call to first token). Comparing separate direct and HTTP runs
//! cannot resolve milliseconds on a shared machine, where the prompt's
//! compute alone moves by more than that from run to run.
//!
//! Usage: http_bench MODEL.gguf [REPEATS]. Prints one JSON object.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rbee_engine::{Event, Prompt, Request, SamplingParams};
use rbee_node::config::{Config, Overrides};
use serde_json::json;

const PROMPT: &str = "The history of the honey bee begins long before people kept hives. Wild colonies nested in hollow trees and rock crevices, and";
const TOKENS: usize = 32;

struct Run {
    ttft: Duration,
    decode_tps: f64,
    /// Through HTTP: the node's own measure of the same request's time from
    /// handing it to the engine to the first token (`timings.ttft_ms`), so
    /// that `ttft - engine_ttft` is the HTTP layer's share of this request.
    engine_ttft: Option<Duration>,
}

fn params() -> SamplingParams {
    SamplingParams { max_tokens: Some(TOKENS), ignore_eos: true, ..SamplingParams::greedy() }
}

async fn direct(engine: &rbee_engine::Engine, model: &str) -> Result<Run> {
    let start = Instant::now();
    let mut g = engine.generate(model, Request { prompt: Prompt::Text(PROMPT.into()), params: params() })?;
    let mut first = None;
    while let Some(ev) = g.events.recv().await {
        match ev {
            Event::Text { .. } | Event::ToolCall { .. } | Event::ToolArguments { .. } => {
                first.get_or_insert_with(Instant::now);
            }
            Event::Done { usage, .. } => {
                let first = first.context("no text")?;
                let tail = first.elapsed().as_secs_f64();
                return Ok(Run { ttft: first - start, decode_tps: (usage.completion_tokens - 1) as f64 / tail, engine_ttft: None });
            }
            Event::Error(e) => bail!(e),
        }
    }
    bail!("no Done")
}

async fn http(client: &reqwest::Client, url: &str, model: &str) -> Result<(Run, usize)> {
    let body = json!({"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": true,
                      "stream": true, "stream_options": {"include_usage": true}});
    let start = Instant::now();
    let mut res = client.post(format!("{url}/v1/completions")).json(&body).send().await?;
    if !res.status().is_success() {
        bail!("HTTP {}", res.status());
    }
    let (mut first, mut buf, mut tokens, mut engine_ttft) = (None, String::new(), 0, None);
    while let Some(chunk) = res.chunk().await? {
        buf.push_str(std::str::from_utf8(&chunk)?);
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data)?;
            if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                first.get_or_insert_with(Instant::now);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as usize;
            }
            if let Some(ms) = v["timings"]["ttft_ms"].as_f64() {
                engine_ttft = Some(Duration::from_secs_f64(ms / 1e3));
            }
        }
    }
    let first = first.context("no text")?;
    let tail = first.elapsed().as_secs_f64();
    Ok((Run { ttft: first - start, decode_tps: (tokens - 1) as f64 / tail, engine_ttft }, tokens))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let gguf = args.next().context("usage: http_bench MODEL.gguf [REPEATS]")?;
    let repeats: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(15);
    let dir = tempfile::tempdir()?;
    let cfg =
        Config::resolve(Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(dir.path().to_path_buf()), slots: Some(8), ..Overrides::default() })?;
    let engine = rbee_engine::Engine::new(cfg.engine())?;
    let model = engine.store().import(std::path::Path::new(&gguf), None)?.id;
    engine.model(&model)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let state = rbee_node::Service::new(engine.clone(), cfg);
    tokio::spawn(rbee_node::serve(listener, state, std::future::pending()));
    let client = reqwest::Client::new();

    // Warm-up (caches, allocator, the connection).
    direct(&engine, &model).await?;
    http(&client, &url, &model).await?;

    let (mut d_ttft, mut h_ttft, mut d_tps, mut h_tps, mut diffs, mut layer) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..repeats {
        // Alternate which goes first so drift on the shared machine is shared.
        let (d, (h, _)) = if i % 2 == 0 {
            let d = direct(&engine, &model).await?;
            (d, http(&client, &url, &model).await?)
        } else {
            let h = http(&client, &url, &model).await?;
            (direct(&engine, &model).await?, h)
        };
        d_ttft.push(d.ttft.as_secs_f64() * 1e3);
        h_ttft.push(h.ttft.as_secs_f64() * 1e3);
        diffs.push((h.ttft.as_secs_f64() - d.ttft.as_secs_f64()) * 1e3);
        layer.push((h.ttft.as_secs_f64() - h.engine_ttft.context("no timings in the stream")?.as_secs_f64()) * 1e3);
        d_tps.push(d.decode_tps);
        h_tps.push(h.decode_tps);
    }

    let mut concurrency = serde_json::Map::new();
    for clients in [1usize, 2, 4, 8] {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, url, model) = (client.clone(), url.clone(), model.clone());
            tasks.push(tokio::spawn(async move {
                let mut tokens = 0;
                for _ in 0..3 {
                    tokens += http(&client, &url, &model).await?.1;
                }
                anyhow::Ok(tokens)
            }));
        }
        let mut tokens = 0;
        for t in tasks {
            tokens += t.await??;
        }
        let secs = start.elapsed().as_secs_f64();
        concurrency.insert(format!("{clients}"), json!({"completion_tokens": tokens, "secs": secs, "tokens_per_sec": tokens as f64 / secs}));
    }

    let report = json!({
        "prompt": PROMPT,
        "completion_tokens": TOKENS,
        "repeats": repeats,
        "threads": std::env::var("CANDLE_NUM_THREADS").ok(),
        "ttft_ms": {"direct_median": median(d_ttft), "http_median": median(h_ttft), "http_minus_direct_median_of_pairs": median(diffs),
                    "http_layer_median": median(layer.clone()), "http_layer_max": layer.iter().copied().fold(0.0, f64::max)},
        "decode_tokens_per_sec": {"direct_median": median(d_tps.clone()), "http_median": median(h_tps.clone()), "http_over_direct": median(h_tps) / median(d_tps)},
        "concurrent_http_clients": concurrency,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
