//! Tool calling through the API on a real instruct model
//! (Qwen2.5-Coder-1.5B-Instruct): every `tool_choice` streamed and whole,
//! parallel calls on and off, and the 400s for tools that cannot be used.

mod support;

use serde_json::{Value, json};
use support::{Sse, TestNode};

const QWEN: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
        }, "required": ["city"], "additionalProperties": false}
    }})
}

fn add_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "add",
        "description": "Adds two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"], "additionalProperties": false}
    }})
}

fn request(question: &str, choice: Value, parallel: bool, stream: bool) -> Value {
    json!({
        "model": QWEN,
        "messages": [{"role": "user", "content": question}],
        "tools": [weather_tool(), add_tool()],
        "tool_choice": choice,
        "parallel_tool_calls": parallel,
        "temperature": 0,
        "max_tokens": 120,
        "stream": stream,
    })
}

/// Checks a call's arguments against the two tools' schemas.
fn check_call(name: &str, arguments: &str) {
    let v: Value = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{name}: {arguments:?} is not JSON: {e}"));
    let o = v.as_object().unwrap_or_else(|| panic!("{name}: {arguments} is not an object"));
    match name {
        "get_weather" => {
            assert!(o["city"].is_string(), "{arguments}");
            assert!(o.keys().all(|k| k == "city" || k == "unit"), "{arguments}");
            if let Some(u) = o.get("unit") {
                assert!(u == "celsius" || u == "fahrenheit", "{arguments}");
            }
        }
        "add" => {
            assert!(o["a"].is_number() && o["b"].is_number() && o.len() == 2, "{arguments}");
        }
        other => panic!("the model called {other}, which was not offered"),
    }
}

/// (content, [(id, name, arguments)], finish_reason) of a whole answer.
fn read_whole(r: &Value) -> (Option<String>, Vec<(String, String, String)>, String) {
    let c = &r["choices"][0];
    let calls = c["message"]["tool_calls"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    assert_eq!(t["type"], "function");
                    (t["id"].as_str().unwrap().into(), t["function"]["name"].as_str().unwrap().into(), t["function"]["arguments"].as_str().unwrap().into())
                })
                .collect()
        })
        .unwrap_or_default();
    (c["message"]["content"].as_str().map(String::from), calls, c["finish_reason"].as_str().unwrap().into())
}

/// The same from a stream's chunks: the id, type and name come once, on a
/// call's first delta; its arguments are the concatenation of the rest.
fn read_stream(chunks: &[Value]) -> (Option<String>, Vec<(String, String, String)>, String) {
    let (mut content, mut calls, mut finish) = (None::<String>, Vec::<(String, String, String)>::new(), String::new());
    for c in chunks {
        let choice = &c["choices"][0];
        if let Some(t) = choice["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
            content.get_or_insert_default().push_str(t);
        }
        for d in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = d["index"].as_u64().unwrap() as usize;
            if let Some(id) = d["id"].as_str() {
                assert_eq!(index, calls.len(), "a new call's index follows the last");
                assert_eq!(d["type"], "function");
                calls.push((id.into(), d["function"]["name"].as_str().unwrap().into(), String::new()));
            } else {
                assert!(d["function"].get("name").is_none(), "the name comes once: {d}");
            }
            calls[index].2.push_str(d["function"]["arguments"].as_str().unwrap());
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            assert!(finish.is_empty(), "one finish_reason");
            finish = f.into();
        }
    }
    (content, calls, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_choice_whole_and_streamed_gives_calls_that_match_the_offered_schemas() {
    let dir = tempfile::tempdir().unwrap();
    rbee_engine::store::Store::open(dir.path()).unwrap().import(&support::instruct("qwen-coder"), None).unwrap();
    let node = TestNode::start(|o| o.data_dir = Some(dir.path().to_path_buf())).await;
    let weather = "What is the weather like in Paris and in Berlin today?";
    let cases = [
        (json!("auto"), weather, true),
        (json!("auto"), "Write a haiku about bees.", true),
        (json!("required"), weather, true),
        (json!("required"), weather, false),
        (json!({"type": "function", "function": {"name": "add"}}), weather, true),
        (json!("none"), weather, true),
    ];
    for (choice, question, parallel) in cases {
        let whole: Value = node.post("/v1/chat/completions", &request(question, choice.clone(), parallel, false)).send().await.unwrap().json().await.unwrap();
        let (content, calls, finish) = read_whole(&whole);
        let what = format!("{choice} parallel={parallel} {question:?}: {whole}");
        for (id, name, arguments) in &calls {
            assert!(id.starts_with("call_"), "{what}");
            check_call(name, arguments);
        }
        match choice.as_str() {
            Some("none") => assert!(calls.is_empty() && content.is_some(), "{what}"),
            Some("required") => assert!(!calls.is_empty() && content.is_none(), "{what}"),
            Some("auto") if question == weather => assert!(!calls.is_empty(), "this model calls the weather tool here: {what}"),
            Some("auto") => assert!(calls.is_empty() && content.as_deref().is_some_and(|c| !c.is_empty()), "{what}"),
            _ => assert!(calls.len() == 1 && calls[0].1 == "add", "a named tool is the one call: {what}"),
        }
        if !parallel || choice.is_object() {
            assert!(calls.len() <= 1, "{what}");
        }
        assert_eq!(finish, if calls.is_empty() { "stop" } else { "tool_calls" }, "{what}");
        let ids: std::collections::HashSet<&String> = calls.iter().map(|c| &c.0).collect();
        assert_eq!(ids.len(), calls.len(), "ids are unique");

        // Streamed: the deltas assemble to the same answer (ids are new).
        let res = node.post("/v1/chat/completions", &request(question, choice.clone(), parallel, true)).send().await.unwrap();
        let (events, _) = Sse::new(res).all().await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let (s_content, s_calls, s_finish) = read_stream(&chunks);
        let strip = |c: &[(String, String, String)]| c.iter().map(|(_, n, a)| (n.clone(), a.clone())).collect::<Vec<_>>();
        assert_eq!((s_content.as_deref(), strip(&s_calls), s_finish.as_str()), (content.as_deref(), strip(&calls), finish.as_str()), "{what}");
    }

    // A conversation that carries calls and their results back renders and runs.
    let mut r = request("What is 2 plus 40?", json!("none"), true, false);
    r["messages"] = json!([
        {"role": "user", "content": "What is 2 plus 40?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 40}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    ]);
    let res: Value = node.post("/v1/chat/completions", &r).send().await.unwrap().json().await.unwrap();
    assert!(res["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{res}");

    // With a response format: a call where the model calls, else JSON of that format.
    let format = json!({"type": "json_schema", "json_schema": {"name": "reply", "strict": true, "schema": {
        "type": "object", "properties": {"reply": {"type": "string"}}, "required": ["reply"], "additionalProperties": false}}});
    for (question, calls_expected) in [(weather, true), ("Write a haiku about bees.", false)] {
        let mut body = request(question, json!("auto"), true, false);
        body["response_format"] = format.clone();
        let r: Value = node.post("/v1/chat/completions", &body).send().await.unwrap().json().await.unwrap();
        let (content, calls, _) = read_whole(&r);
        // Whether it calls is the model's choice (this one calls a tool even
        // for the haiku); either way the answer holds.
        if calls_expected {
            assert!(!calls.is_empty(), "{r}");
        }
        if !calls.is_empty() {
            assert!(content.is_none(), "{r}");
            for (_, name, arguments) in &calls {
                check_call(name, arguments);
            }
        } else {
            let v: Value = serde_json::from_str(content.as_deref().unwrap_or_default()).unwrap_or_else(|e| panic!("{r}: {e}"));
            assert!(v["reply"].is_string() && v.as_object().unwrap().len() == 1, "{r}");
        }
    }

    // What cannot be used is a 400 naming its field.
    for (patch, param, says) in [
        (json!({"tool_choice": {"type": "function", "function": {"name": "fly"}}}), "tool_choice", "fly"),
        (json!({"tool_choice": "sometimes"}), "tool_choice", "sometimes"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type", "function"),
        (json!({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}), "tools[0].function.name", "letters"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "strict": true, "parameters": {"type": "object", "properties": {"xs": {"type": "array", "uniqueItems": true}}}}}]}),
            "tools",
            "uniqueItems",
        ),
        (json!({"tool_choice": "required", "tools": []}), "tool_choice", "no `tools`"),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": {"type": "array", "uniqueItems": true}}}}),
            "response_format",
            "uniqueItems",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
            "JSON",
        ),
    ] {
        let mut body = request("hi", json!("auto"), true, false);
        body.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        let res = node.post("/v1/chat/completions", &body).send().await.unwrap();
        assert_eq!(res.status(), 400, "{patch}");
        let e: Value = res.json().await.unwrap();
        assert_eq!(e["error"]["param"], param, "{patch}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{patch}: {e}");
    }
    node.stop().await.unwrap();
}
