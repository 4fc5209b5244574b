//! The OpenAI-compatible API on real sockets with the fixture model: wire
//! format of streamed and whole answers, every error object, queueing,
//! cancellation, keys, CORS, metrics and shutdown.

mod support;

use serde_json::{Value, json};
use support::{MODEL, Sse, SseItem, TestNode};

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({ "model": MODEL, "messages": [{ "role": "user", "content": content }] });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    let e = body["error"].clone();
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error object lacks {k}: {body}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_error_object_and_the_node_keeps_serving() {
    let node = TestNode::start(|o| o.max_context = Some(64)).await;
    let client = reqwest::Client::new();
    let raw = |path: &str, body: &'static str| client.post(format!("{}{path}", node.url)).header("content-type", "application/json").body(body);

    let (s, e) = error_of(raw("/v1/chat/completions", "{\"model\": ").send().await.unwrap()).await;
    assert_eq!((s, e["type"].as_str()), (400, Some("invalid_request_error")));
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"), "{e}");
    let (s, _) = error_of(raw("/v1/chat/completions", "").send().await.unwrap()).await;
    assert_eq!(s, 400);
    let (s, e) = error_of(raw("/v1/chat/completions", r#"{"model": "m", "messages": "hi"}"#).send().await.unwrap()).await;
    assert_eq!((s, e["param"].as_str()), (400, Some("messages")));
    let (s, e) = error_of(node.post("/v1/chat/completions", &json!({"model": MODEL, "messages": []})).send().await.unwrap()).await;
    assert_eq!((s, e["param"].as_str()), (400, Some("messages")));
    for (extra, param) in [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": -0.1}), "top_p"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"n": 17}), "n"),
        (json!({"logprobs": true, "top_logprobs": 25}), "top_logprobs"),
    ] {
        let (s, e) = error_of(node.post("/v1/chat/completions", &chat("hi", extra.clone())).send().await.unwrap()).await;
        assert_eq!((s, e["param"].as_str()), (400, Some(param)), "{extra}: {e}");
    }
    let (s, e) =
        error_of(node.post("/v1/chat/completions", &json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})).send().await.unwrap())
            .await;
    assert_eq!((s, e["code"].as_str(), e["param"].as_str()), (404, Some("model_not_found"), Some("model")));
    let (s, e) = error_of(node.post("/v1/completions", &json!({"model": "no-such-model", "prompt": "x"})).send().await.unwrap()).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("model_not_found")));
    // The context is capped at 64 tokens here.
    let long = "word ".repeat(200);
    let (s, e) = error_of(node.post("/v1/chat/completions", &chat(&long, json!({}))).send().await.unwrap()).await;
    assert_eq!((s, e["code"].as_str()), (400, Some("context_length_exceeded")));
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("64") && m.contains("20"), "both numbers in {m:?}");
    let (s, e) = error_of(node.post("/v1/completions", &json!({"model": MODEL, "prompt": ["a", "b"]})).send().await.unwrap()).await;
    assert_eq!((s, e["param"].as_str()), (400, Some("prompt")));
    let (s, e) = error_of(client.get(format!("{}/v1/nothing", node.url)).send().await.unwrap()).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));
    let (s, _) = error_of(client.delete(format!("{}/v1/chat/completions", node.url)).send().await.unwrap()).await;
    assert_eq!(s, 405);

    // Still serving, and the failures are counted by status.
    let res = node.post("/v1/chat/completions", &chat("Hello", json!({"max_tokens": 3}))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(node.metric(r#"rbee_http_requests_total{endpoint="/v1/chat/completions",status="400"}"#).await, Some(11.0));
    assert_eq!(node.metric(r#"rbee_http_requests_total{endpoint="/v1/chat/completions",status="404"}"#).await, Some(1.0));
    assert_eq!(node.metric(r#"rbee_http_requests_total{endpoint="/v1/chat/completions",status="200"}"#).await, Some(1.0));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_has_one_identity_role_first_one_finish_usage_last_then_done() {
    let node = TestNode::start(|_| {}).await;
    let res = node
        .post(
            "/v1/chat/completions",
            &chat("Tell me about bees.", json!({"max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}, "temperature": 0})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let (events, _) = Sse::new(res).all().await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let (id, created) = (chunks[0]["id"].clone(), chunks[0]["created"].clone());
    assert!(id.as_str().unwrap().starts_with("chatcmpl-"));
    assert!(chunks.iter().all(|c| c["id"] == id && c["created"] == created && c["object"] == "chat.completion.chunk" && c["model"] == MODEL));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks.iter().filter(|c| c["choices"][0]["delta"].get("role").is_some()).count(), 1);
    let finishes: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes, [&json!("length")]);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 12);
    assert!(usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(rest.iter().all(|c| c.get("usage") == Some(&Value::Null)), "usage is null on every other chunk");
    assert!(usage_chunk["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(rest.iter().all(|c| c.get("timings").is_none()), "timings only on the last chunk");
    let text: String = rest.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!text.trim().is_empty());

    // The same request whole: the same text, with usage; without
    // include_usage a stream has no usage field at all.
    let whole: Value = node.post_json("/v1/chat/completions", &chat("Tell me about bees.", json!({"max_tokens": 12, "temperature": 0}))).await;
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["total_tokens"], whole["usage"]["prompt_tokens"].as_u64().unwrap() + 12);
    assert!(whole["timings"]["decode_tokens_per_sec"].as_f64().unwrap() > 0.0);
    let res =
        node.post("/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "stream": true})).send().await.unwrap();
    let (events, _) = Sse::new(res).all().await;
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c.get("usage").is_none() && c["object"] == "text_completion"));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_honour_stop_seed_and_max_tokens() {
    let node = TestNode::start(|_| {}).await;
    let complete = |body: Value| {
        let req = node.post("/v1/completions", &body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let greedy = complete(json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})).await;
    let text = greedy["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text.starts_with(" the capital of"), "{text:?}");
    assert_eq!(greedy["choices"][0]["finish_reason"], "length");
    assert_eq!(greedy["usage"]["completion_tokens"], 8);
    // A stop string inside that text ends it there, unsent.
    let stopped = complete(json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "stop": ["capital"]})).await;
    assert_eq!(stopped["choices"][0]["text"], " the ");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    // Sampling with a seed repeats; another seed (almost surely) does not.
    let sampled = |seed: i64| complete(json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0, "seed": seed}));
    let (a, b, c) = (sampled(7).await, sampled(7).await, sampled(8).await);
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_ne!(a["choices"][0]["text"], c["choices"][0]["text"]);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_503_without_retry_and_a_dropped_stream_frees_its_slot() {
    let node = TestNode::start(|o| {
        o.slots = Some(1);
        o.queue_depth = Some(0);
    })
    .await;
    let long = chat("Write a long story.", json!({"max_tokens": 2000, "stream": true}));
    let mut first = Sse::new(node.post("/v1/chat/completions", &long).send().await.unwrap());
    assert!(matches!(first.next().await, SseItem::Data(_)));
    assert!(matches!(first.next().await, SseItem::Data(_)));
    let busy = format!("rbee_slots_busy{{model=\"{MODEL}\"}}");
    assert_eq!(node.metric(&busy).await, Some(1.0));
    let res = node.post("/v1/chat/completions", &chat("hi", json!({"max_tokens": 2}))).send().await.unwrap();
    assert_eq!(res.headers()["x-should-retry"], "false");
    let (s, e) = error_of(res).await;
    assert_eq!((s, e["code"].as_str()), (503, Some("queue_full")));

    // The client goes away mid-answer: the slot is free again.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while node.metric(&busy).await != Some(0.0) {
        assert!(std::time::Instant::now() < deadline, "the slot stayed busy after the client left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(node.metric(r#"rbee_generations_total{reason="cancelled"}"#).await, Some(1.0));
    let res = node.post("/v1/chat/completions", &chat("hi", json!({"max_tokens": 2}))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_streams_all_finish_and_long_prompts_get_keep_alives() {
    let node = TestNode::start(|o| o.keep_alive_secs = Some(0.005)).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let req = node.post(
            "/v1/chat/completions",
            &chat(&format!("Count to {i}."), json!({"max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}})),
        );
        tasks.push(tokio::spawn(async move { Sse::new(req.send().await.unwrap()).all().await }));
    }
    for t in tasks {
        let (events, _) = t.await.unwrap();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 6);
    }
    // A prompt of some hundred tokens takes long enough to process that
    // keep-alive comments are sent before the first token.
    let prompt = "The bees of the hive work all day long. ".repeat(40);
    let res = node.post("/v1/completions", &json!({"model": MODEL, "prompt": prompt, "max_tokens": 1, "stream": true})).send().await.unwrap();
    let mut sse = Sse::new(res);
    assert!(matches!(sse.next().await, SseItem::Data(_)));
    assert!(sse.comments > 0, "no keep-alive comment while the prompt was processed");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_metrics_and_cors_for_the_js_sdk() {
    let node = TestNode::start(|_| {}).await;
    let models: Value = reqwest::get(format!("{}/v1/models", node.url)).await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    let m = models["data"].as_array().unwrap().iter().find(|m| m["id"] == MODEL).unwrap();
    assert_eq!((m["object"].as_str(), m["rbee"]["architecture"].as_str()), (Some("model"), Some("gemma3")));
    let one: Value = reqwest::get(format!("{}/v1/models/{MODEL}", node.url)).await.unwrap().json().await.unwrap();
    assert_eq!(one["id"], MODEL);
    let health: Value = reqwest::get(format!("{}/health", node.url)).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    // Without a swarm key the node runs alone and says how to join one.
    let swarm: Value = reqwest::get(format!("{}/api/swarm", node.url)).await.unwrap().json().await.unwrap();
    assert_eq!(swarm["enabled"], false);
    assert!(swarm["message"].as_str().unwrap().contains("rbee swarm init"));
    assert_eq!(m["rbee"]["nodes"][0]["local"], true);

    let client = reqwest::Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/chat/completions", node.url))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,x-stainless-os,x-stainless-lang,x-stainless-retry-count")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:5173");
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("x-stainless-retry-count"));
    let foreign = client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/chat/completions", node.url))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(foreign.headers().get("access-control-allow-origin").is_none());

    node.post("/v1/completions", &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 3})).send().await.unwrap();
    let text = node.get_text("/metrics").await;
    for needle in [
        "rbee_models_loaded 1",
        "rbee_completion_tokens_total 3",
        "rbee_time_to_first_token_seconds_count 1",
        "rbee_time_per_output_token_seconds_count 1",
        &format!("rbee_queue_depth{{model=\"{MODEL}\"}} 0"),
        r#"rbee_http_requests_total{endpoint="/v1/completions",status="200"} 1"#,
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_other_machines_need_a_configured_key() {
    use axum::extract::connect_info::MockConnectInfo;
    use tower::ServiceExt;
    let cfg = rbee_node::Config::resolve(rbee_node::config::Overrides {
        listen: Some("0.0.0.0:0".into()),
        data_dir: Some(support::data_dir()),
        api_keys: Some(vec!["sk-office-1".into()]),
        ..Default::default()
    })
    .unwrap();
    let state = rbee_node::Service::new(rbee_engine::Engine::new(cfg.engine()).unwrap(), cfg);
    let call = |peer: &str, key: Option<&str>, path: &str| {
        let app = rbee_node::router(state.clone()).layer(MockConnectInfo(peer.parse::<std::net::SocketAddr>().unwrap()));
        let mut req = axum::http::Request::get(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        async move { app.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap() }
    };
    let res = call("192.168.1.20:50000", None, "/v1/models").await;
    assert_eq!(res.status(), 401);
    let body: Value = serde_json::from_slice(&http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(call("192.168.1.20:50000", Some("sk-office-2"), "/v1/models").await.status(), 401);
    assert_eq!(call("192.168.1.20:50000", Some("sk-office-1"), "/v1/models").await.status(), 200);
    assert_eq!(call("192.168.1.20:50000", None, "/health").await.status(), 200);
    assert_eq!(call("127.0.0.1:50000", None, "/v1/models").await.status(), 200);
    assert_eq!(call("[::ffff:127.0.0.1]:50000", None, "/v1/models").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_format_holds_the_answer_to_json_whole_and_streamed_and_bad_formats_name_their_field() {
    let node = TestNode::start(|_| {}).await;
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"enum": ["France", "Germany", "Italy"]},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 50}
        },
        "required": ["city", "country", "population_millions"],
        "additionalProperties": false
    });
    let format = json!({"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": true}});
    let ask = "Describe Paris as JSON.";
    let whole: Value = node.post_json("/v1/chat/completions", &chat(ask, json!({"temperature": 0, "max_tokens": 60, "response_format": format}))).await;
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?} is not JSON: {e}"));
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["city", "country", "population_millions"], "{content}");
    assert!(["France", "Germany", "Italy"].contains(&v["country"].as_str().unwrap()), "{content}");
    assert!(v["population_millions"].as_u64().unwrap() <= 50);
    assert_eq!(whole["choices"][0]["finish_reason"], "stop", "the grammar ends the answer");

    // Streamed, the deltas assemble to the same JSON.
    let res = node
        .post("/v1/chat/completions", &chat(ask, json!({"temperature": 0, "max_tokens": 60, "response_format": format, "stream": true})))
        .send()
        .await
        .unwrap();
    let (events, _) = Sse::new(res).all().await;
    let streamed: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"].as_str().map(String::from))
        .collect();
    assert_eq!(streamed, content);

    // Text completions too, with json_object (any object) and llama.cpp's
    // `schema` inside it.
    for format in [
        json!({"type": "json_object"}),
        json!({"type": "json_object", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}}),
    ] {
        let r: Value = node
            .post_json("/v1/completions", &json!({"model": MODEL, "prompt": "A JSON object:", "max_tokens": 80, "temperature": 0, "response_format": format}))
            .await;
        let text = r["choices"][0]["text"].as_str().unwrap();
        if r["choices"][0]["finish_reason"] == "stop" {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{format}: {text:?} is not JSON: {e}"));
            assert!(v.is_object(), "{text}");
        } else {
            assert!(text.trim_start().starts_with('{'), "{format}: cut short, still an object so far: {text:?}");
        }
    }

    for (format, param, says) in [
        (json!({"type": "xml"}), "response_format.type", "xml"),
        (json!({"type": "json_schema"}), "response_format.json_schema", "required"),
        (json!({"type": "json_schema", "json_schema": {"name": "x"}}), "response_format.json_schema.schema", "required"),
        (json!({"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}), "response_format.json_schema.schema", "JSON Schema"),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "array", "uniqueItems": true}}}),
            "response_format",
            "uniqueItems",
        ),
    ] {
        let (s, e) = error_of(node.post("/v1/chat/completions", &chat("hi", json!({"response_format": format}))).send().await.unwrap()).await;
        assert_eq!((s, e["param"].as_str()), (400, Some(param)), "{format}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{format}: {e}");
    }
    // Without `strict`, what cannot be enforced is left out and the rest holds.
    let lenient = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "maxItems": 4, "uniqueItems": true}}});
    let r: Value = node.post_json("/v1/chat/completions", &chat("Numbers:", json!({"temperature": 0, "max_tokens": 30, "response_format": lenient}))).await;
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Vec<u64> = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(v.len() <= 4 && v.iter().all(|n| (1..=9).contains(n)), "{text}");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_describe_each_token_whole_and_streamed_in_chat_and_completions() {
    let node = TestNode::start(|_| {}).await;
    let ask = json!({"max_tokens": 10, "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let whole: Value = node.post_json("/v1/chat/completions", &chat("Tell me about bees.", ask.clone())).await;
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    let tokens = whole["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(tokens.len() as u64, whole["usage"]["completion_tokens"].as_u64().unwrap(), "one entry per generated token");
    let joined: Vec<u8> = tokens.iter().flat_map(|t| t["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8)).collect();
    assert_eq!(String::from_utf8(joined).unwrap(), content, "the tokens' bytes make the text");
    for t in tokens {
        let lp = t["logprob"].as_f64().unwrap();
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let tops: Vec<f64> = top.iter().map(|a| a["logprob"].as_f64().unwrap()).collect();
        assert!(tops.windows(2).all(|w| w[0] >= w[1]) && tops.iter().all(|&l| l <= 0.0), "{t}");
        assert!(tops.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-4, "{t}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!((top[0]["token"].as_str(), top[0]["logprob"].as_f64()), (t["token"].as_str(), Some(lp)), "{t}");
    }
    // Streamed, each chunk carries its own tokens' logprobs.
    let res = node
        .post(
            "/v1/chat/completions",
            &chat("Tell me about bees.", json!({"max_tokens": 10, "temperature": 0, "logprobs": true, "top_logprobs": 3, "stream": true})),
        )
        .send()
        .await
        .unwrap();
    let (events, _) = Sse::new(res).all().await;
    let streamed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()))
        .flat_map(|c| c["choices"][0]["logprobs"]["content"].as_array().unwrap().clone())
        .collect();
    assert_eq!(&streamed, tokens);

    // Text completions: the legacy shape.
    let r: Value = node
        .post_json("/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2}))
        .await;
    let lp = &r["choices"][0]["logprobs"];
    let toks: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(toks.concat(), r["choices"][0]["text"].as_str().unwrap());
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), toks.len());
    let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(lp["top_logprobs"].as_array().unwrap().iter().all(|m| m.as_object().unwrap().len() <= 2));
    // Without the flag there are none.
    let plain: Value = node.post_json("/v1/chat/completions", &chat("Hi", json!({"max_tokens": 2}))).await;
    assert!(plain["choices"][0]["logprobs"].is_null());
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_each_answer_as_their_own_seed_would_whole_and_streamed() {
    let node = TestNode::start(|_| {}).await;
    let ask = |extra: Value| {
        chat(
            "Write about the sea.",
            json!({"max_tokens": 12, "temperature": 1.0, "seed": 40})
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .chain(extra.as_object().unwrap().clone())
                .collect::<serde_json::Map<_, _>>()
                .into(),
        )
    };
    let whole: Value = node.post_json("/v1/chat/completions", &ask(json!({"n": 3}))).await;
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{whole}");
    let texts: Vec<&str> = choices.iter().map(|c| c["message"]["content"].as_str().unwrap()).collect();
    assert_eq!(choices.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    // Choice i is what a single request with seed 40 + i answers.
    let mut completion = 0;
    for (i, text) in texts.iter().enumerate() {
        let one: Value = node.post_json("/v1/chat/completions", &ask(json!({"seed": 40 + i}))).await;
        assert_eq!(one["choices"][0]["message"]["content"].as_str().unwrap(), *text, "choice {i}");
        completion += one["usage"]["completion_tokens"].as_u64().unwrap();
        assert_eq!(one["usage"]["prompt_tokens"], whole["usage"]["prompt_tokens"], "the prompt is counted once");
    }
    assert_eq!(whole["usage"]["completion_tokens"].as_u64().unwrap(), completion, "usage counts every choice");
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "the seeds differ: {texts:?}");

    // Streamed: each chunk names its choice; every choice finishes once;
    // the pieces of each assemble to the same texts; usage then [DONE] last.
    let res = node.post("/v1/chat/completions", &ask(json!({"n": 3, "stream": true, "stream_options": {"include_usage": true}}))).send().await.unwrap();
    let (events, _) = Sse::new(res).all().await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let (usage, body) = chunks.split_last().unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], whole["usage"]["completion_tokens"]);
    let mut streamed = vec![String::new(); 3];
    let mut finishes = [0; 3];
    for c in body {
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        streamed[i].push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        if choice["finish_reason"].is_string() {
            finishes[i] += 1;
        }
    }
    assert_eq!(finishes, [1, 1, 1]);
    assert_eq!(streamed, texts);
    // Text completions too.
    let r: Value =
        node.post_json("/v1/completions", &json!({"model": MODEL, "prompt": "The sea is", "max_tokens": 6, "seed": 3, "temperature": 1.0, "n": 2})).await;
    assert_eq!(r["choices"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["choices"][1]["index"], 1);
    node.stop().await.unwrap();
}
