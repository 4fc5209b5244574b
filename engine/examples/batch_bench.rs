//! Engine throughput with concurrent requests (not part of CI): N requests
//! of the same length started together on a model with N slots, for N = 1,
//! 2, 4 and 8; total generated tokens per second, from the first request
//! started to the last one done.
//!
//! Usage: batch_bench MODEL.gguf [TOKENS]. Prints one JSON object.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use rbee_engine::{Config, Engine, Event, Prompt, Request, SamplingParams};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let gguf = args.next().context("usage: batch_bench MODEL.gguf [TOKENS]")?;
    let tokens: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(64);
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::new(dir.path().to_path_buf());
    cfg.slots = 8;
    let engine = Engine::new(cfg)?;
    let model = engine.store().import(std::path::Path::new(&gguf), None)?.id;
    engine.model(&model)?;
    let mut report = serde_json::Map::new();
    for clients in [1usize, 2, 4, 8] {
        let start = Instant::now();
        let gens = (0..clients)
            .map(|i| {
                let params = SamplingParams { max_tokens: Some(tokens), ignore_eos: true, seed: Some(i as u64), ..SamplingParams::default() };
                engine.generate(&model, Request { prompt: Prompt::Text(format!("Request {i}: the history of bees")), params })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut total = 0;
        for mut g in gens {
            loop {
                match g.events.blocking_recv() {
                    Some(Event::Text { .. } | Event::ToolCall { .. } | Event::ToolArguments { .. }) => {}
                    Some(Event::Done { usage, .. }) => {
                        total += usage.completion_tokens;
                        break;
                    }
                    Some(Event::Error(e)) => bail!(e),
                    None => bail!("no Done"),
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        report.insert(clients.to_string(), serde_json::json!({"completion_tokens": total, "secs": secs, "tokens_per_sec": total as f64 / secs}));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({"threads": std::env::var("CANDLE_NUM_THREADS").ok(), "tokens_per_request": tokens, "concurrent_requests": report})
        )?
    );
    Ok(())
}
