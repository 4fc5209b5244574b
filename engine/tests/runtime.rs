//! The engine's runtime behaviour on tiny models: slots, queue, cancel,
//! idle unload, memory refusal, seeds, bad input.

mod support;

use std::time::{Duration, Instant};

use rbee_engine::{Config, Engine, Error, Event, FinishReason, Prompt, Request, SamplingParams};
use support::{Tiny, engine_with, tiny};

fn request(max_tokens: usize, seed: u64) -> Request {
    Request {
        prompt: Prompt::Text("hello the world".into()),
        params: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        },
    }
}

/// Reads a generation to its end: (text, finish, completion tokens).
fn collect(mut g: rbee_engine::Generation) -> (String, FinishReason, usize) {
    let mut text = String::new();
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Text { text: t, .. } => text.push_str(&t),
            Event::Done { finish, usage } => return (text, finish, usage.completion_tokens),
            Event::Error(e) => panic!("generation failed: {e}"),
            Event::ToolCall { .. } | Event::ToolArguments { .. } => panic!("no tools were offered"),
        }
    }
    panic!("stream ended without Done");
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn same_seed_same_text_other_seed_other_text() {
    let (_d, engine, id) = engine_with(&tiny("llama"), |_| {});
    let a = collect(engine.generate(&id, request(40, 1)).unwrap());
    let b = collect(engine.generate(&id, request(40, 1)).unwrap());
    let c = collect(engine.generate(&id, request(40, 2)).unwrap());
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
}

#[test]
fn max_tokens_ends_with_length() {
    let (_d, engine, id) = engine_with(&tiny("qwen3"), |_| {});
    let mut req = request(7, 3);
    req.params.temperature = 0.0;
    let (_, finish, n) = collect(engine.generate(&id, req).unwrap());
    assert_eq!((finish, n), (FinishReason::Length, 7));
}

#[test]
fn slots_run_concurrently_and_overflow_is_refused() {
    let (_d, engine, id) = engine_with(&tiny("llama"), |c| {
        c.slots = 2;
        c.queue_depth = 1;
    });
    // Unread streams fill their bounded channel and hold their slot.
    let a = engine.generate(&id, request(100_000, 1)).unwrap();
    let b = engine.generate(&id, request(100_000, 2)).unwrap();
    wait_until("both slots busy", || engine.loaded().first().is_some_and(|l| l.busy == 2));
    let c = engine.generate(&id, request(5, 3)).unwrap();
    wait_until("third request queued", || engine.loaded()[0].queued == 1);
    let err = engine.generate(&id, request(5, 4)).unwrap_err();
    assert!(matches!(err, Error::QueueFull { slots: 2, .. }), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    // Cancelling one frees a slot for the queued request, which completes.
    drop(a);
    let (_, _, n) = collect(c);
    assert!(n >= 1);
    drop(b);
    wait_until("slots idle", || engine.loaded()[0].busy == 0);
}

#[test]
fn dropping_the_receiver_stops_generation() {
    let t = Tiny { context_length: 1 << 20, ..tiny("gemma3") };
    let (_d, engine, id) = engine_with(&t, |c| {
        c.slots = 1;
        c.max_context = 1 << 20;
    });
    let mut g = engine.generate(&id, request(1 << 20, 5)).unwrap();
    assert!(matches!(g.events.blocking_recv(), Some(Event::Text { .. })));
    drop(g);
    // A million tokens would take minutes; cancelled, the slot frees at once.
    wait_until("slot freed after cancel", || engine.loaded()[0].busy == 0);
    let (_, _, n) = collect(engine.generate(&id, request(3, 6)).unwrap());
    assert!(n >= 1, "the slot serves the next request");
}

#[test]
fn idle_models_unload_and_reload_on_demand() {
    let (_d, engine, id) = engine_with(&tiny("qwen2"), |c| c.idle_timeout = Duration::from_millis(300));
    collect(engine.generate(&id, request(3, 1)).unwrap());
    assert_eq!(engine.loaded().len(), 1);
    wait_until("unloaded after idle timeout", || engine.loaded().is_empty());
    collect(engine.generate(&id, request(3, 1)).unwrap());
    assert_eq!(engine.loaded().len(), 1);
}

#[test]
fn loading_refuses_what_does_not_fit_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    // Claims a context so long that its KV cache could never fit.
    let huge = Tiny { context_length: 1 << 40, ..tiny("llama") }.write_in(dir.path(), "huge");
    let small = tiny("llama").write_in(dir.path(), "small");
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.max_context = usize::MAX;
    let engine = Engine::new(cfg).unwrap();
    let huge = engine.store().import(&huge, None).unwrap().id;
    let small = engine.store().import(&small, None).unwrap().id;
    let err = engine.generate(&huge, request(3, 1)).unwrap_err();
    match &err {
        Error::OutOfMemory { needed_mib, available_mib, .. } => assert!(needed_mib > available_mib),
        other => panic!("expected OutOfMemory, got {other}"),
    }
    assert!(err.to_string().contains("MiB available"), "{err}");
    assert!(engine.loaded().is_empty());
    collect(engine.generate(&small, request(3, 1)).unwrap());
}

#[test]
fn bad_requests_get_clear_errors() {
    let (_d, engine, id) = engine_with(&tiny("phi3"), |c| c.max_context = 64);
    let mut bad = request(3, 1);
    bad.params.temperature = -1.0;
    assert!(engine.generate(&id, bad).unwrap_err().to_string().contains("temperature"));
    let err = engine.generate("no-such-model", request(3, 1)).unwrap_err();
    assert!(matches!(err, Error::ModelNotFound(_)), "{err}");
    let long = Request { prompt: Prompt::Text("hello ".repeat(100)), ..request(3, 1) };
    let err = engine.generate(&id, long).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    let err = engine.generate(&id, Request { prompt: Prompt::Tokens(vec![]), ..request(3, 1) }).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = engine.generate(&id, Request { prompt: Prompt::Tokens(vec![u32::MAX]), ..request(3, 1) }).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    // Still serving.
    collect(engine.generate(&id, request(3, 1)).unwrap());
}

/// Reads a generation to its end: its text and usage.
fn text_and_usage(mut g: rbee_engine::Generation) -> (String, rbee_engine::Usage) {
    let mut text = String::new();
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Text { text: t, .. } => text.push_str(&t),
            Event::Done { usage, .. } => return (text, usage),
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("stream ended without Done");
}

#[test]
fn requests_sharing_a_prompt_run_it_once_and_fork_with_the_same_text_as_alone() {
    // Several prompt chunks long, so the fork copies more than one chunk.
    let long = "hello the world ".repeat(300);
    let req = |seed| Request { prompt: Prompt::Text(long.clone()), ..request(24, seed) };
    let (_d, engine, id) = engine_with(&tiny("llama"), |_| {});
    // Started together, as the choices of an `n` = 3 request are.
    let gens: Vec<_> = (1..=3).map(|seed| engine.generate(&id, req(seed)).unwrap()).collect();
    let prompt_tokens = gens[0].prompt_tokens;
    assert!(prompt_tokens > 2 * rbee_engine::generate::PREFILL_CHUNK, "{prompt_tokens}");
    let forked: Vec<(String, rbee_engine::Usage)> = gens.into_iter().map(text_and_usage).collect();
    assert_eq!(forked[0].1.cached_tokens, 0, "the first runs the prompt");
    for (text, usage) in &forked[1..] {
        assert_eq!(usage.cached_tokens, prompt_tokens - 1, "the others take all of it but the token that gives their first logits: {usage:?}");
        assert_eq!(usage.prompt_tokens, prompt_tokens);
        assert!(!text.is_empty());
    }
    // Each alone, on an engine that never saw the prompt: the same texts.
    for (seed, (text, _)) in (1..=3).zip(&forked) {
        let (_d, alone, id) = engine_with(&tiny("llama"), |_| {});
        let (want, usage) = text_and_usage(alone.generate(&id, req(seed)).unwrap());
        assert_eq!(usage.cached_tokens, 0);
        assert_eq!(text, &want, "seed {seed}: forking does not change the answer");
    }
    assert_ne!(forked[0].0, forked[1].0, "different seeds, different answers");
}
