//! Constrained decoding: output held to a JSON schema or a grammar.
//!
//! The models here have random weights, so left alone they write noise:
//! every answer that parses and matches its schema does so because of the
//! mask, and sampling at temperature 1 with many seeds walks many paths
//! through each grammar.

mod support;

use rbee_engine::{Error, Event, FinishReason, Grammar, Message, Prompt, Request, SamplingParams, Tool, ToolChoice, Tools};
use serde_json::{Value, json};
use support::{engine_with, tiny};

fn constrained(prompt: Prompt, grammar: Grammar, seed: u64, max_tokens: usize) -> Request {
    Request {
        prompt,
        params: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            max_tokens: Some(max_tokens),
            grammar: Some(grammar),
            ..Default::default()
        },
    }
}

fn collect(mut g: rbee_engine::Generation) -> (String, FinishReason) {
    let mut text = String::new();
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Text { text: t, .. } => text.push_str(&t),
            Event::Done { finish, .. } => return (text, finish),
            Event::Error(e) => panic!("generation failed: {e}"),
            Event::ToolCall { .. } | Event::ToolArguments { .. } => panic!("no tools were offered"),
        }
    }
    panic!("stream ended without Done");
}

/// Checks `v` against the part of JSON Schema these tests use; `Err` says where it fails.
fn validate(v: &Value, s: &Value, at: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{at}: {why} (value {v})"));
    if let Some(options) = s.get("anyOf").and_then(Value::as_array) {
        return if options.iter().any(|o| validate(v, o, at).is_ok()) { Ok(()) } else { fail("matches no anyOf option") };
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return fail("not in enum");
    }
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(o) = v.as_object() else { return fail("not an object") };
            let props = s.get("properties").and_then(Value::as_object);
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    return fail(&format!("lacks required {r}"));
                }
            }
            for (k, val) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => validate(val, ps, &format!("{at}.{k}"))?,
                    None if s.get("additionalProperties") == Some(&Value::Bool(false)) => return fail(&format!("has extra property {k}")),
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(a) = v.as_array() else { return fail("not an array") };
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && a.len() as u64 > max
            {
                return fail("too many items");
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    validate(x, items, &format!("{at}[{i}]"))?;
                }
            }
        }
        Some("string") => {
            let Some(t) = v.as_str() else { return fail("not a string") };
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && t.chars().count() as u64 > max
            {
                return fail("too long");
            }
        }
        Some("integer") => {
            let Some(n) = v.as_i64() else { return fail("not an integer") };
            if s.get("minimum").and_then(Value::as_i64).is_some_and(|m| n < m) || s.get("maximum").and_then(Value::as_i64).is_some_and(|m| n > m) {
                return fail("out of range");
            }
        }
        Some("boolean") if !v.is_boolean() => return fail("not a boolean"),
        _ => {}
    }
    Ok(())
}

fn schemas() -> Vec<Value> {
    vec![
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
                "active": {"type": "boolean"}
            },
            "required": ["name", "age", "tags", "active"],
            "additionalProperties": false
        }),
        json!({
            "type": "object",
            "properties": {
                "point": {
                    "type": "object",
                    "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5}, "y": {"type": "integer", "minimum": -5, "maximum": 5}},
                    "required": ["x", "y"],
                    "additionalProperties": false
                },
                "side": {"enum": ["left", "right", null]}
            },
            "required": ["point", "side"],
            "additionalProperties": false
        }),
        json!({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999}, {"type": "string", "maxLength": 4}]}),
    ]
}

#[test]
fn random_models_write_json_that_matches_the_schema() {
    for arch in ["llama", "qwen2"] {
        let (_d, engine, id) = engine_with(&tiny(arch), |_| {});
        for schema in schemas() {
            for seed in 0..6 {
                let g = Grammar::JsonSchema { schema: schema.clone(), strict: true };
                let (text, finish) = collect(engine.generate(&id, constrained(Prompt::Text("hello the world".into()), g, seed, 400)).unwrap());
                assert_eq!(finish, FinishReason::Stop, "{arch} seed {seed}: the grammar ends the answer: {text:?}");
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{arch} seed {seed}: {text:?} is not JSON: {e}"));
                validate(&v, &schema, "$").unwrap_or_else(|e| panic!("{arch} seed {seed}: {text:?}: {e}"));
            }
        }
    }
}

#[test]
fn a_lark_grammar_limits_the_answer_to_its_language() {
    let (_d, engine, id) = engine_with(&tiny("llama"), |_| {});
    let mut seen = std::collections::HashSet::new();
    for seed in 0..12 {
        let g = Grammar::Lark { grammar: r#"start: ("yes" | "no") "!"?"#.into() };
        let (text, _) = collect(engine.generate(&id, constrained(Prompt::Text("hello".into()), g, seed, 50)).unwrap());
        assert!(["yes", "no", "yes!", "no!"].contains(&text.as_str()), "seed {seed}: {text:?}");
        seen.insert(text);
    }
    assert!(seen.len() > 1, "sampling still chooses among what the grammar allows: {seen:?}");
}

#[test]
fn a_continuation_keeps_to_the_grammar_from_where_the_text_stopped() {
    let (_d, engine, id) = engine_with(&tiny("qwen2"), |_| {});
    let schema = &schemas()[0];
    for seed in 0..4 {
        let started = r#"{"name": "Ad"#;
        let prompt = Prompt::Continue { prompt: Box::new(Prompt::Text("hello".into())), text: started.into() };
        let g = Grammar::JsonSchema { schema: schema.clone(), strict: true };
        let (rest, _) = collect(engine.generate(&id, constrained(prompt, g, seed, 400)).unwrap());
        let whole = format!("{started}{rest}");
        let v: Value = serde_json::from_str(&whole).unwrap_or_else(|e| panic!("seed {seed}: {whole:?} is not JSON: {e}"));
        validate(&v, schema, "$").unwrap();
        assert!(v["name"].as_str().unwrap().starts_with("Ad"), "{whole}");
    }
    // Text that already broke the grammar is the caller's error.
    let prompt = Prompt::Continue { prompt: Box::new(Prompt::Text("hello".into())), text: "[1, 2".into() };
    let err = engine.generate(&id, constrained(prompt, Grammar::JsonSchema { schema: schema.clone(), strict: true }, 0, 50)).unwrap_err();
    assert!(matches!(err, Error::InvalidGrammar { .. }), "{err}");
}

#[test]
fn strict_refuses_what_it_cannot_enforce_and_lenient_enforces_the_rest() {
    let (_d, engine, id) = engine_with(&tiny("llama"), |_| {});
    let schema = json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3, "uniqueItems": true});
    let err = engine.generate(&id, constrained(Prompt::Text("hello".into()), Grammar::JsonSchema { schema: schema.clone(), strict: true }, 0, 50)).unwrap_err();
    match &err {
        Error::InvalidGrammar { message: m, .. } => assert!(m.contains("uniqueItems"), "the error names the keyword: {m}"),
        other => panic!("expected InvalidGrammar, got {other:?}"),
    }
    for seed in 0..4 {
        let g = Grammar::JsonSchema { schema: schema.clone(), strict: false };
        let (text, _) = collect(engine.generate(&id, constrained(Prompt::Text("hello".into()), g, seed, 100)).unwrap());
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        validate(&v, &schema, "$").unwrap();
    }
    let bad = Grammar::Lark { grammar: "start: undefined_rule".into() };
    assert!(matches!(engine.generate(&id, constrained(Prompt::Text("x".into()), bad, 0, 5)), Err(Error::InvalidGrammar { .. })));
}

fn tool(name: &str, parameters: Value) -> Tool {
    Tool { name: name.into(), description: Some(format!("The {name} function.")), parameters, strict: true }
}

fn weather_and_add() -> Vec<Tool> {
    vec![
        tool(
            "get_weather",
            json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": false}),
        ),
        tool(
            "add",
            json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 100}, "b": {"type": "integer", "minimum": 0, "maximum": 100}}, "required": ["a", "b"], "additionalProperties": false}),
        ),
    ]
}

/// Reads a generation with tool calls: (text, [(name, arguments)], finish).
fn collect_calls(mut g: rbee_engine::Generation) -> (String, Vec<(String, String)>, FinishReason) {
    let (mut text, mut calls) = (String::new(), Vec::<(String, String)>::new());
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Text { text: t, .. } => text.push_str(&t),
            Event::ToolCall { index, id, name, .. } => {
                assert_eq!(index, calls.len());
                assert!(id.starts_with("call_"), "{id}");
                calls.push((name, String::new()));
            }
            Event::ToolArguments { index, text: t, .. } => calls[index].1.push_str(&t),
            Event::Done { finish, .. } => return (text, calls, finish),
            Event::Error(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("stream ended without Done");
}

#[test]
fn required_and_named_calls_name_an_offered_tool_with_arguments_that_match_its_schema() {
    let offered = weather_and_add();
    for arch in ["qwen2", "llama"] {
        let (_d, engine, id) = engine_with(&tiny(arch), |_| {});
        for (choice, seeds) in [(ToolChoice::Required, 0..6), (ToolChoice::Function { name: "add".into() }, 0..4)] {
            for seed in seeds {
                let mut req = constrained(Prompt::Chat(vec![Message::new("user", "What is the weather in Paris?")]), Grammar::JsonObject, seed, 300);
                req.params.grammar = None;
                req.params.tools = Some(Tools { tools: offered.clone(), choice: choice.clone(), parallel: false });
                let (text, calls, finish) = collect_calls(engine.generate(&id, req).unwrap());
                assert_eq!((text.as_str(), calls.len(), finish), ("", 1, FinishReason::ToolCalls), "{arch} {choice:?} seed {seed}: {calls:?}");
                let (name, args) = &calls[0];
                let t = offered.iter().find(|t| &t.name == name).unwrap_or_else(|| panic!("{name} was not offered"));
                if let ToolChoice::Function { name: want } = &choice {
                    assert_eq!(name, want);
                }
                let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{arch} seed {seed}: {args:?}: {e}"));
                validate(&v, &t.parameters, name).unwrap_or_else(|e| panic!("{arch} seed {seed}: {e}"));
            }
        }
    }
}

#[test]
fn a_named_tool_that_was_not_offered_and_a_strict_schema_that_cannot_be_enforced_are_refused() {
    let (_d, engine, id) = engine_with(&tiny("qwen2"), |_| {});
    let chat = || Prompt::Chat(vec![Message::new("user", "hi")]);
    let mut req = constrained(chat(), Grammar::JsonObject, 0, 10);
    req.params.grammar = None;
    req.params.tools = Some(Tools { tools: weather_and_add(), choice: ToolChoice::Function { name: "fly".into() }, parallel: true });
    let err = engine.generate(&id, req.clone()).unwrap_err();
    assert!(matches!(&err, Error::InvalidGrammar { message: m, .. } if m.contains("fly")), "{err}");
    let mut tools = weather_and_add();
    tools[1].parameters = json!({
        "type": "object",
        "properties": {"xs": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3, "uniqueItems": true}},
        "required": ["xs"],
        "additionalProperties": false
    });
    req.params.tools = Some(Tools { tools: tools.clone(), choice: ToolChoice::Auto, parallel: true });
    let err = engine.generate(&id, req.clone()).unwrap_err();
    assert!(matches!(&err, Error::InvalidGrammar { message: m, .. } if m.contains("add") && m.contains("uniqueItems")), "{err}");
    // Not strict: the keyword is left out and the call still holds.
    tools[1].strict = false;
    req.params.tools = Some(Tools { tools: tools.clone(), choice: ToolChoice::Function { name: "add".into() }, parallel: true });
    req.params.max_tokens = Some(300);
    let (_, calls, finish) = collect_calls(engine.generate(&id, req).unwrap());
    assert_eq!((calls.len(), finish), (1, FinishReason::ToolCalls));
    let v: Value = serde_json::from_str(&calls[0].1).unwrap();
    validate(&v, &tools[1].parameters, "add").unwrap();
}

#[test]
fn with_a_response_format_an_auto_answer_is_that_json_or_calls_from_the_first_token() {
    let offered = weather_and_add();
    let format =
        json!({"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}}, "required": ["answer"], "additionalProperties": false});
    let (_d, engine, id) = engine_with(&tiny("qwen2"), |_| {});
    let (mut answers, mut called) = (0, 0);
    for seed in 0..8 {
        let mut req = constrained(
            Prompt::Chat(vec![Message::new("user", "What is the weather in Paris?")]),
            Grammar::JsonSchema { schema: format.clone(), strict: true },
            seed,
            300,
        );
        req.params.tools = Some(Tools { tools: offered.clone(), choice: ToolChoice::Auto, parallel: true });
        let (text, calls, finish) = collect_calls(engine.generate(&id, req).unwrap());
        if calls.is_empty() {
            // Random weights may run out of tokens mid-answer; what there is must be a prefix.
            if finish == FinishReason::Stop {
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {text:?}: {e}"));
                validate(&v, &format, "response_format").unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                answers += 1;
            }
        } else {
            assert!(text.trim().is_empty(), "seed {seed}: no text before or between calls: {text:?}");
            for (name, args) in &calls {
                let t = offered.iter().find(|t| &t.name == name).unwrap_or_else(|| panic!("{name} was not offered"));
                let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("seed {seed}: {args:?}: {e}"));
                validate(&v, &t.parameters, name).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            }
            called += 1;
        }
    }
    // These seeds give both kinds (4 and 4 when written).
    assert!(answers > 0 && called > 0, "{answers} JSON answers, {called} with calls");
    // A response format that cannot be enforced names response_format, not tools.
    let mut req = constrained(
        Prompt::Chat(vec![Message::new("user", "hi")]),
        Grammar::JsonSchema { schema: json!({"type": "array", "uniqueItems": true}), strict: true },
        0,
        10,
    );
    req.params.tools = Some(Tools { tools: offered, choice: ToolChoice::Auto, parallel: true });
    let err = engine.generate(&id, req).unwrap_err();
    assert!(matches!(&err, Error::InvalidGrammar { field: "response_format", .. }), "{err}");
}

// Templates of the three other families' shape (written here, not the
// vendors' own): what makes rbee tell them apart and what they do with
// `tools`, calls and results.
const MISTRAL_LIKE: &str = "{{ bos_token }}{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}\
{% for m in messages %}{% if m.role == 'user' %}[INST]{{ m.content }}[/INST]\
{% elif m.role == 'tool' %}[TOOL_RESULTS]{{ m.tool_call_id }}: {{ m.content }}[/TOOL_RESULTS]\
{% elif m.tool_calls %}[TOOL_CALLS][{% for c in m.tool_calls %}{% if c.id | length != 9 %}{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{% endif %}\
{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}, \"id\": \"{{ c.id }}\"}{% endfor %}]{{ eos_token }}\
{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}";
const LLAMA3_LIKE: &str = "{{ bos_token }}{% if tools %}<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, respond with a JSON for a function call: {{ tools | tojson }}<|eot_id|>{% endif %}\
{% for m in messages %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>\n\n\
{% if m.tool_calls %}{% for c in m.tool_calls %}{\"name\": \"{{ c.function.name }}\", \"parameters\": {{ c.function.arguments | tojson }}}{% endfor %}{% else %}{{ m.content }}{% endif %}<|eot_id|>{% endfor %}\
{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
const PHI4_LIKE: &str = "{% for m in messages %}{% if m.role == 'system' and 'tools' in m %}<|system|>{{ m.content }}<|tool|>{{ m.tools }}<|/tool|><|end|>\
{% else %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

#[test]
fn llama3_mistral_and_phi4_models_call_in_their_own_forms_held_to_the_schemas() {
    let offered = weather_and_add();
    let cases = [
        ("mistral", support::Tiny { extra_specials: vec!["[TOOL_CALLS]"], template: Some(MISTRAL_LIKE.into()), ..tiny("llama") }),
        ("llama3", support::Tiny { template: Some(LLAMA3_LIKE.into()), ..tiny("llama") }),
        (
            "phi4",
            support::Tiny {
                extra_specials: vec!["<|tool_call|>", "<|/tool_call|>", "<|tool|>", "<|/tool|>"],
                template: Some(PHI4_LIKE.into()),
                ..tiny("phi3")
            },
        ),
    ];
    let question = || vec![Message::new("user", "What is the weather in Paris?")];
    for (family, t) in cases {
        let (_d, engine, id) = engine_with(&t, |_| {});
        let tools = |choice: ToolChoice, parallel: bool| Some(Tools { tools: offered.clone(), choice, parallel });
        let mut checked = 0;
        for (choice, parallel, seeds) in
            [(ToolChoice::Required, true, 0..4), (ToolChoice::Required, false, 4..6), (ToolChoice::Function { name: "add".into() }, true, 0..3)]
        {
            for seed in seeds {
                let mut req = constrained(Prompt::Chat(question()), Grammar::JsonObject, seed, 400);
                req.params.grammar = None;
                req.params.tools = tools(choice.clone(), parallel);
                let mut g = engine.generate(&id, req).unwrap();
                let (mut calls, mut text, mut finish) = (Vec::<(String, String, String)>::new(), String::new(), None);
                while let Some(ev) = g.events.blocking_recv() {
                    match ev {
                        Event::Text { text: t, .. } => text.push_str(&t),
                        Event::ToolCall { id, name, .. } => calls.push((id, name, String::new())),
                        Event::ToolArguments { index, text: t, .. } => calls[index].2.push_str(&t),
                        Event::Done { finish: f, .. } => finish = Some(f),
                        Event::Error(e) => panic!("{family}: {e}"),
                    }
                }
                let what = format!("{family} {choice:?} parallel={parallel} seed {seed}: {text:?} {calls:?}");
                if finish == Some(FinishReason::Length) {
                    // Random weights can run past max_tokens inside a long string; what there is is a prefix.
                    continue;
                }
                checked += 1;
                assert_eq!((text.trim(), finish), ("", Some(FinishReason::ToolCalls)), "{what}");
                assert!(!calls.is_empty(), "{what}");
                if !parallel || matches!(choice, ToolChoice::Function { .. }) || family == "llama3" {
                    assert_eq!(calls.len(), 1, "one call: {what}");
                }
                for (call_id, name, args) in &calls {
                    if family == "mistral" {
                        assert!(call_id.len() == 9 && call_id.chars().all(|c| c.is_ascii_alphanumeric()), "{what}");
                    }
                    let tool = offered.iter().find(|t| &t.name == name).unwrap_or_else(|| panic!("{name} was not offered: {what}"));
                    if let ToolChoice::Function { name: want } = &choice {
                        assert_eq!(name, want);
                    }
                    let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{what}: {e}"));
                    validate(&v, &tool.parameters, name).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
            }
        }
        // 8, 9 and 8 of 9 when written.
        assert!(checked >= 6, "{family}: only {checked} of 9 answers complete");
        // none: no calls.
        for seed in 0..3 {
            let mut req = constrained(Prompt::Chat(question()), Grammar::JsonObject, seed, 60);
            req.params.grammar = None;
            req.params.tools = tools(ToolChoice::None, true);
            let (_, calls, _) = collect_calls(engine.generate(&id, req).unwrap());
            assert!(calls.is_empty(), "{family} none seed {seed}: {calls:?}");
        }
        // A conversation with OpenAI-style call ids and a result renders
        // (Mistral's template takes only nine-character ids) and runs.
        let mut history = question();
        history.push(Message {
            tool_calls: vec![rbee_engine::ToolCall {
                id: "call_Xy12ab34cd56ef78gh90ij12".into(),
                name: "get_weather".into(),
                arguments: "{\"city\": \"Paris\", \"unit\": \"c\"}".into(),
            }],
            ..Message::new("assistant", "")
        });
        history.push(Message { tool_call_id: Some("call_Xy12ab34cd56ef78gh90ij12".into()), ..Message::new("tool", "21 C, sunny") });
        let model = engine.model(&id).unwrap();
        let rendered = model.template.render_with_tools(&history, tools(ToolChoice::Auto, true).as_ref(), true).unwrap_or_else(|e| panic!("{family}: {e}"));
        assert!(rendered.contains("get_weather") && rendered.contains("21 C, sunny"), "{family}: {rendered}");
        if family == "phi4" {
            assert!(rendered.contains("<|tool|>[{\"name\": \"get_weather\""), "the tools in the system message: {rendered}");
        }
        let mut req = constrained(Prompt::Chat(history), Grammar::JsonObject, 1, 20);
        req.params.grammar = None;
        req.params.tools = tools(ToolChoice::Auto, true);
        collect_calls(engine.generate(&id, req).unwrap());
    }
}

#[test]
fn in_auto_the_text_never_holds_a_call_that_escaped_the_grammar() {
    let offered = weather_and_add();
    for arch in ["qwen2", "llama"] {
        let (_d, engine, id) = engine_with(&tiny(arch), |_| {});
        for seed in 0..6 {
            let mut req = constrained(Prompt::Chat(vec![Message::new("user", "What is the weather in Paris?")]), Grammar::JsonObject, seed, 120);
            req.params.grammar = None;
            req.params.tools = Some(Tools { tools: offered.clone(), choice: ToolChoice::Auto, parallel: true });
            let (text, calls, _) = collect_calls(engine.generate(&id, req).unwrap());
            let lead = text.trim_start().trim_start_matches('{').trim_start();
            assert!(!text.contains("<tool_call>") && !lead.starts_with("\"name\""), "{arch} seed {seed}: {text:?}");
            for (name, args) in &calls {
                let t = offered.iter().find(|t| &t.name == name).unwrap_or_else(|| panic!("{name} was not offered"));
                let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{arch} seed {seed}: {args:?}: {e}"));
                validate(&v, &t.parameters, name).unwrap_or_else(|e| panic!("{arch} seed {seed}: {e}"));
            }
        }
    }
}

#[test]
fn no_text_can_carry_a_call_past_the_grammar_whatever_follows_it() {
    // The grammar is checked on prefixes, as a model writes: anything it
    // lets through is something a model may write.
    let (_d, engine, id) = engine_with(&tiny("qwen2"), |_| {});
    let model = engine.model(&id).unwrap();
    let tools = Tools { tools: weather_and_add(), choice: ToolChoice::Auto, parallel: true };
    let grammar = tools.grammar(model.template.tool_format, None, |s| model.tokenizer.control_token(s), |_| Ok(())).unwrap();
    let fits = |text: &str| model.constraint(&grammar).unwrap().advance_text(text).is_ok();
    for ok in [
        "Plain text, with {\"name\": \"x\"} later on.",
        "{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}",
        "{{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}}",
        "Let me look.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>",
        "Sure.\n```json\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n```",
    ] {
        assert!(fits(ok), "{ok:?}");
    }
    for bad in [
        // A leading call with text after it, or arguments off its schema.
        "{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}} and more",
        "{\"name\": \"add\", \"arguments\": {\"a\": \"x\"",
        // A call in text before another opener.
        "```json\n{\"name\": \"add\", \"arguments\": {\"a\": \"x\"}}\n``` then <tool_call>",
        "<tool_call>\n{\"name\": \"fly\"",
    ] {
        assert!(!fits(bad), "{bad:?}");
    }
}
