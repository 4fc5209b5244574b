//! What constrained decoding costs (not part of CI), on one model:
//! - building the model's grammar vocabulary (once per model);
//! - the mask per token: a schema's answer walked token by token, the mask
//!   computed and applied to a logits row before each (median and p99 µs);
//! - decode tok/s of the same request with and without a JSON schema, in
//!   alternating runs.
//!
//! Usage: grammar_bench MODEL.gguf [RUNS]. Prints one JSON object.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use rbee_engine::{Config, Engine, Event, Grammar, Message, Model, Prompt, Request, SamplingParams};
use serde_json::json;

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "year": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "scores": {"type": "array", "items": {"type": "number"}},
            "notes": {"type": "string"}
        },
        "required": ["title", "year", "tags", "scores", "notes"],
        "additionalProperties": false
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Decode tok/s of one request (after its first token).
fn decode_rate(engine: &Engine, model: &str, grammar: Option<Grammar>, tokens: usize) -> Result<f64> {
    let params = SamplingParams { max_tokens: Some(tokens), seed: Some(1), temperature: 0.7, grammar, ..SamplingParams::default() };
    let prompt = Prompt::Chat(vec![Message::new("user", "Describe a made-up film as JSON with a title, year, many tags, many scores and long notes.")]);
    let mut g = engine.generate(model, Request { prompt, params })?;
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Done { usage, .. } => return Ok(usage.completion_tokens.saturating_sub(1) as f64 / usage.decode_secs.max(1e-9)),
            Event::Error(e) => bail!(e),
            _ => {}
        }
    }
    bail!("no Done")
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let gguf = args.next().context("usage: grammar_bench MODEL.gguf [RUNS]")?;
    let runs: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(3);
    let mut report = serde_json::Map::new();

    let model = Model::load(std::path::Path::new(&gguf), &rbee_engine::Device::Cpu, 4096)?;
    report.insert("vocabulary".into(), model.tokenizer.vocab_size().into());
    let t = Instant::now();
    let mut c = model.constraint(&Grammar::JsonSchema { schema: schema(), strict: true })?;
    report.insert("vocabulary_build_and_first_compile_ms".into(), (t.elapsed().as_secs_f64() * 1e3).into());
    let t = Instant::now();
    let _ = model.constraint(&Grammar::JsonSchema { schema: schema(), strict: true })?;
    report.insert("compile_ms".into(), (t.elapsed().as_secs_f64() * 1e3).into());

    // A valid answer, walked token by token.
    let answer = json!({
        "title": "The Long Summer of the Bees",
        "year": 1987,
        "tags": ["drama", "nature", "family", "coming of age", "rural"],
        "scores": [7.5, 8.25, 6.0, 9.125],
        "notes": "A quiet film about a beekeeper's daughter who spends one summer learning the trade, filmed on location with real hives and very little dialogue."
    })
    .to_string();
    let ids = model.tokenizer.encode(&answer)?;
    let mut logits = vec![0.0f32; model.tokenizer.vocab_size()];
    let mut micros = Vec::with_capacity(ids.len());
    for &id in &ids {
        logits.fill(0.0);
        let t = Instant::now();
        c.mask(&mut logits)?;
        micros.push(t.elapsed().as_secs_f64() * 1e6);
        if logits[id as usize] == f32::NEG_INFINITY {
            bail!("the mask refused token {id} of a valid answer");
        }
        c.advance(&[id])?;
    }
    micros.sort_by(f64::total_cmp);
    report.insert("mask_tokens".into(), micros.len().into());
    report.insert("mask_us_median".into(), percentile(&micros, 0.5).into());
    report.insert("mask_us_p99".into(), percentile(&micros, 0.99).into());
    report.insert("mask_us_max".into(), micros[micros.len() - 1].into());
    drop(model);

    let dir = tempfile::tempdir()?;
    let engine = Engine::new(Config::new(dir.path().to_path_buf()))?;
    let id = engine.store().import(std::path::Path::new(&gguf), None)?.id;
    engine.model(&id)?;
    let (mut free, mut held) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        free.push(decode_rate(&engine, &id, None, 96)?);
        held.push(decode_rate(&engine, &id, Some(Grammar::JsonSchema { schema: schema(), strict: true }), 96)?);
    }
    free.sort_by(f64::total_cmp);
    held.sort_by(f64::total_cmp);
    let (f, h) = (percentile(&free, 0.5), percentile(&held, 0.5));
    report.insert("decode_tok_s_free".into(), f.into());
    report.insert("decode_tok_s_json_schema".into(), h.into());
    report.insert("decode_ratio".into(), (h / f).into());
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}
