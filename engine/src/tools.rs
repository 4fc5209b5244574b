//! Tool calls: the prompt that offers a request's tools to the model, the
//! grammar that holds its calls to them, and the parser that turns its
//! output into calls.
//!
//! Models write calls in the Hermes form that Qwen2.5, Qwen3 and SmolLM3
//! were trained on: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
//! parallel calls as consecutive blocks. A chat template that knows tools
//! (`<tool_call>` in its source) gets them as its `tools` variable and renders
//! calls and results itself; for one that does not, the tools and the form
//! are described in the system message and calls and results are written
//! into the conversation as text in the same form.
//!
//! The grammar (llguidance, Lark) makes every call name a tool the request
//! offered, with arguments valid against that tool's schema: with
//! `tool_choice` `auto` the model writes free text until it opens a call;
//! `required` and a named tool constrain from the first token; `none` keeps
//! the opener out of the text.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::constraint::Grammar;
use crate::error::{Error, Result};
use crate::template::Message;

/// What opens and closes a call in the model's output.
pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// A call in a Markdown fence, up to its name: ```` ```json\n{"name" ````.
/// Small models (Qwen2.5-Coder 1.5B) write their calls so when they choose
/// to call; llama.cpp reads them as calls too. [`fence_start`] matches the
/// same text.
const FENCE_REGEX: &str = r#"```(json)?[ \t\r\n]*\{[ \t\r\n]*"name""#;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema for the arguments object.
    pub parameters: Value,
    /// A keyword of `parameters` that cannot be enforced is an error (else it is ignored).
    #[serde(default)]
    pub strict: bool,
}

/// Which calls the model may or must make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ToolChoice {
    /// Text or calls, as the model decides.
    Auto,
    /// Text only.
    None,
    /// At least one call, no text.
    Required,
    /// One call of this tool, no text.
    Function { name: String },
}

/// A request's tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// Several calls in one answer.
    pub parallel: bool,
}

/// A call in a conversation: the assistant's, or one the model is making.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

impl Tools {
    /// Checks names and choice.
    ///
    /// # Errors
    /// [`Error::InvalidGrammar`] for a named tool the request does not offer,
    /// or no tools with a choice that needs one.
    pub fn validate(&self) -> Result<()> {
        if let ToolChoice::Function { name } = &self.choice
            && !self.tools.iter().any(|t| &t.name == name)
        {
            let offered: Vec<&str> = self.tools.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::InvalidGrammar {
                field: "tool_choice",
                message: format!("tool_choice names the function `{name}`, which `tools` does not offer (it offers {offered:?})"),
            });
        }
        if self.tools.is_empty() && self.choice != ToolChoice::None {
            return Err(Error::InvalidGrammar { field: "tool_choice", message: "tool_choice asks for a call but `tools` is empty".into() });
        }
        Ok(())
    }

    /// The tools in the shape chat templates take (OpenAI's).
    pub fn for_template(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    // In the order clients send them, which models saw in training.
                    let mut f = serde_json::Map::new();
                    f.insert("name".into(), t.name.clone().into());
                    if let Some(d) = &t.description {
                        f.insert("description".into(), d.clone().into());
                    }
                    f.insert("parameters".into(), t.parameters.clone());
                    json!({"type": "function", "function": f})
                })
                .collect(),
        )
    }

    /// The grammar the answer must match, for a model that writes calls in
    /// `format`; `special` gives the id of a control token by its text (an
    /// opener such as Mistral's `[TOOL_CALLS]` is one, and the grammar must
    /// name it as a token). With `answer` (a `response_format` JSON grammar)
    /// and choice `auto`, an answer that is not a call is JSON of that
    /// format, and a call comes first or not at all.
    ///
    /// # Errors
    /// [`Error::InvalidGrammar`] for a `strict` tool whose schema cannot be
    /// enforced, or an `answer` grammar that is not JSON.
    pub fn grammar(
        &self,
        format: ToolFormat,
        answer: Option<&Grammar>,
        special: impl Fn(&str) -> Option<u32>,
        strict_check: impl Fn(&Grammar) -> Result<()>,
    ) -> Result<Grammar> {
        for t in self.tools.iter().filter(|t| t.strict) {
            strict_check(&Grammar::JsonSchema { schema: t.parameters.clone(), strict: true }).map_err(|e| Error::InvalidGrammar {
                field: "tools",
                message: format!("tool `{}`: {}", t.name, e.to_string().replace("the JSON schema", "its parameters")),
            })?;
        }
        let syntax = format.syntax();
        let calls: Vec<&Tool> = match &self.choice {
            ToolChoice::Function { name } => self.tools.iter().filter(|t| &t.name == name).collect(),
            _ => self.tools.iter().collect(),
        };
        let call = json!({
            "x-guidance": {"whitespace_pattern": crate::constraint::JSON_WHITESPACE, "lenient": true},
            "anyOf": calls.iter().map(|t| json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, syntax.args_key: arguments_schema(&t.parameters)},
                "required": ["name", syntax.args_key],
                "additionalProperties": false,
            })).collect::<Vec<_>>(),
        });
        let answer =
            match answer {
                Some(g) => Some(g.json_schema().ok_or_else(|| Error::InvalidGrammar {
                    field: "response_format",
                    message: "only a JSON response_format can be combined with tools".into(),
                })?),
                None => None,
            };
        // A marker that is a control token is named as a token: text never
        // spells it, so free text cannot write it either.
        let lit = |s: &str| special(s).map_or_else(|| lark_str(s), |id| format!("<[{id}]>"));
        let open_special = special(syntax.open).is_some();
        let parallel = self.parallel && syntax.parallel && !matches!(self.choice, ToolChoice::Function { .. });
        // What follows the opener (or is the whole call, for a bare one).
        let rest = if syntax.list {
            let more = if parallel { "(WS? \",\" WS? call)*" } else { "" };
            let close = if syntax.close.is_empty() { String::new() } else { format!("WS? {}", lit(syntax.close)) };
            format!("rest: WS? \"[\" WS? call {more} WS? \"]\" {close} WS?\n")
        } else if syntax.close.is_empty() {
            "rest: WS? call WS?\n".to_string()
        } else {
            let more = if parallel { format!("(WS? {} WS? call WS? {})*", lit(syntax.open), lit(syntax.close)) } else { String::new() };
            format!("rest: WS? call WS? {} {more} WS?\n", lit(syntax.close))
        };
        let open = if syntax.bare { String::new() } else { lit(syntax.open) };
        let fence = if syntax.fenced {
            let more = if parallel { "(WS? FENCE fenced_call)* WS?" } else { "WS?" };
            format!(
                "FENCE: /{FENCE_REGEX}/\nfenced_call: WS? \":\" WS? named WS? \"}}\" WS? \"```\"\nfenced: FENCE fenced_call {more}\nnamed: {}\n",
                named_calls(&calls, syntax.args_key).join(" | ")
            )
        } else {
            String::new()
        };
        let head = match self.choice {
            // The answer is JSON of the response format, or calls from its
            // first token: a call cannot follow JSON text.
            ToolChoice::Auto if answer.is_some() => {
                let fenced = if syntax.fenced { " | fenced" } else { "" };
                format!("start: answer | {open} rest{fenced}\nanswer: %json {}\n{fence}", answer.as_ref().expect("matched"))
            }
            // Free text until the model opens a call; then the call. The
            // text never holds an opener, alone or before a call (the text
            // of a `[lazy]` rule is only a prefix while it runs: it could
            // otherwise carry a call the parser reads but the grammar never
            // checked), so every call goes through the call rules.
            ToolChoice::Auto => {
                let ws = "[ \\t\\r\\n]*";
                let mut excluded: Vec<String> = Vec::new();
                let mut alternatives: Vec<String> = Vec::new();
                let mut rules = fence.clone();
                let named = named_calls(&calls, syntax.args_key).join(" | ");
                if syntax.bare {
                    // A bare `{"name"` anywhere opens a call.
                    excluded.push(format!("(?s:.*)\\{{{ws}\"name\"(?s:.*)"));
                    alternatives.push("bare_hd bare_call".into());
                    rules.push_str(&format!(
                        "bare_hd[lazy]: NO_CALL BARE\nBARE: /\\{{{ws}\"name\"/\nbare_call: WS? \":\" WS? bare_named WS? \"}}\" WS?\nbare_named: {named}\n"
                    ));
                } else if open_special {
                    alternatives.push(format!("TEXT {open} rest"));
                } else {
                    excluded.push(format!("(?s:.*){}(?s:.*)", regex_escape(syntax.open)));
                    alternatives.push("call_hd rest".into());
                    rules.push_str(&format!("call_hd[lazy]: NO_CALL {open}\n"));
                }
                if syntax.fenced {
                    excluded.push(format!("(?s:.*){FENCE_REGEX}(?s:.*)"));
                    alternatives.push(if parallel { "fence_hd fenced_call (WS? FENCE fenced_call)* WS?".into() } else { "fence_hd fenced_call WS?".into() });
                    rules.push_str("fence_hd[lazy]: NO_CALL FENCE\n");
                }
                if syntax.lead {
                    // A call as the whole answer, with no opener: `{"name"…}`,
                    // or `{{"name"…}}` as Qwen2.5-Coder's template shows it.
                    excluded.push(format!("{ws}\\{{\\{{?{ws}\"name\"(?s:.*)"));
                    alternatives.push("LEAD1 lead_call1 | LEAD2 lead_call2".into());
                    rules.push_str(&format!(
                        "LEAD1: /{ws}\\{{{ws}\"name\"/\nLEAD2: /{ws}\\{{\\{{{ws}\"name\"/\nlead_call1: WS? \":\" WS? lead_named WS? \"}}\" WS?\nlead_call2: WS? \":\" WS? lead_named WS? \"}}}}\" WS?\nlead_named: {named}\n"
                    ));
                }
                let text = if excluded.is_empty() {
                    "NO_CALL: /(?s:.*)/\n".to_string()
                } else {
                    format!("NO_CALL: /(?s:.*)/{}\n", excluded.iter().map(|e| format!(" & ~/{e}/")).collect::<String>())
                };
                format!("start: NO_CALL | {}\n{text}{rules}", alternatives.join(" | "))
            }
            ToolChoice::Required | ToolChoice::Function { .. } => format!("start: {open} rest\n"),
            ToolChoice::None => {
                let grammar = if open_special {
                    // Text never writes a control token.
                    "start: TEXT\nTEXT: /(?s:.*)/\n".to_string()
                } else {
                    let opener = if syntax.bare { "\\{[ \\t\\r\\n]*\"name\"".to_string() } else { regex_escape(syntax.open) };
                    format!("start: NO_CALL\nNO_CALL: /(?s:.*)/ & ~/(?s:.*){opener}(?s:.*)/\n")
                };
                return Ok(Grammar::Lark { grammar });
            }
        };
        let grammar = format!("{head}{rest}call: %json {call}\nTEXT: /(?s:.*)/\nWS: /[ \\t\\r\\n]{{1,4}}/\n");
        Ok(Grammar::Lark { grammar })
    }
}

/// Each of `calls` from its name's value on, for a call whose `{"name"`
/// a lexeme already matched (a fence, or a bare call's start).
fn named_calls(calls: &[&Tool], args_key: &str) -> Vec<String> {
    calls
        .iter()
        .map(|t| {
            let args = json!({
                "x-guidance": {"whitespace_pattern": crate::constraint::JSON_WHITESPACE, "lenient": true},
                "allOf": [arguments_schema(&t.parameters)],
            });
            format!("{} WS? \",\" WS? {} WS? \":\" WS? %json {args}", lark_str(&lark_str(&t.name)), lark_str(&lark_str(args_key)))
        })
        .collect()
}

/// A tool's `parameters` as the schema of its arguments: an object even
/// when the tool declares none.
fn arguments_schema(parameters: &Value) -> Value {
    match parameters {
        Value::Object(o) if !o.is_empty() => parameters.clone(),
        _ => json!({"type": "object"}),
    }
}

fn lark_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// `s` as a literal inside a Lark `/regex/`.
fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if "\\.+*?()|[]{}^$#&-~/".contains(c) { format!("\\{c}") } else { c.to_string() }).collect()
}

/// How a model family writes tool calls, recognised from its chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes, as Qwen2.5, Qwen3 and SmolLM3 write:
    /// `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, parallel
    /// calls as consecutive blocks. The template renders `tools`, calls and
    /// results itself.
    Hermes,
    /// Llama 3.1 and 3.2: `{"name": …, "parameters": {…}}` as the whole
    /// answer, one call per turn (the official templates refuse more).
    Llama3,
    /// Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`; call ids
    /// are nine letters and digits (its templates refuse others).
    Mistral,
    /// Phi-4-mini: `<|tool_call|>[{"name": …, "arguments": {…}}]<|/tool_call|>`;
    /// the tools go in the system message's `tools` field as JSON.
    Phi4,
    /// The template knows nothing of tools: rbee describes them in the
    /// system message and writes calls and results as text, in the Hermes form.
    Described,
}

/// The text of one format's calls.
#[derive(Debug, Clone, Copy)]
pub struct Syntax {
    /// What opens the calls ("" when a call is a bare JSON object).
    pub open: &'static str,
    /// What closes them ("" when nothing does).
    pub close: &'static str,
    /// The key of the arguments object.
    pub args_key: &'static str,
    /// The calls are a JSON array after the opener.
    pub list: bool,
    /// A call may start as a bare `{"name"` with no opener, anywhere.
    pub bare: bool,
    /// A call may be the whole answer as a bare `{"name"` or `{{"name"`
    /// (Qwen2.5-Coder's template shows the form with doubled braces, and its
    /// small models copy it).
    pub lead: bool,
    /// Several calls in one answer.
    pub parallel: bool,
    /// A call in a Markdown fence counts (small Qwen2.5-Coder models write them so).
    pub fenced: bool,
}

impl ToolFormat {
    /// The format of a template, from its source.
    pub fn of_template(source: &str) -> Self {
        if source.contains(OPEN) && source.contains("tools") {
            Self::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            Self::Mistral
        } else if source.contains("<|tool_call|>") || source.contains("<|tool|>") {
            Self::Phi4
        } else if source.contains("<|start_header_id|>") && source.contains("tools") && (source.contains("ipython") || source.contains("<|python_tag|>")) {
            Self::Llama3
        } else {
            Self::Described
        }
    }

    /// Whether the template itself takes `tools`.
    pub fn native(self) -> bool {
        matches!(self, Self::Hermes | Self::Llama3 | Self::Mistral)
    }

    pub fn syntax(self) -> Syntax {
        match self {
            Self::Hermes | Self::Described => {
                Syntax { open: OPEN, close: CLOSE, args_key: "arguments", list: false, bare: false, lead: true, parallel: true, fenced: true }
            }
            Self::Llama3 => {
                Syntax { open: "<|python_tag|>", close: "", args_key: "parameters", list: false, bare: true, lead: false, parallel: false, fenced: false }
            }
            Self::Mistral => {
                Syntax { open: "[TOOL_CALLS]", close: "", args_key: "arguments", list: true, bare: false, lead: false, parallel: true, fenced: false }
            }
            Self::Phi4 => Syntax {
                open: "<|tool_call|>",
                close: "<|/tool_call|>",
                args_key: "arguments",
                list: true,
                bare: false,
                lead: false,
                parallel: true,
                fenced: false,
            },
        }
    }

    /// A new call id in the form this family's templates accept.
    fn call_id(self) -> String {
        use rand::Rng;
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut rng = rand::rng();
        let mut random = |n: usize| (0..n).map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())])).collect::<String>();
        match self {
            Self::Mistral => random(9),
            _ => format!("call_{}", random(24)),
        }
    }
}

/// `id` as nine letters and digits (Mistral's templates refuse other ids):
/// the same id always maps to the same nine.
fn nine_char_id(id: &str) -> String {
    if id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return id.to_string();
    }
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    // FNV-1a, then base 62.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..9)
        .map(|_| {
            let c = CHARS[(h % 62) as usize];
            h /= 62;
            char::from(c)
        })
        .collect()
}

/// The conversation as a template of `format` takes it. Templates that
/// know tools get it as sent (Mistral's with call ids made nine
/// characters); Phi-4-mini's gets the tools as JSON in the system message's
/// `tools` field and earlier calls as its own call text; for a template that
/// does not know tools, the tools go into the system message and calls and
/// results become text.
pub fn prepare(format: ToolFormat, messages: &[Message], tools: Option<&Tools>) -> Vec<Message> {
    let offered = tools.filter(|t| !t.tools.is_empty() && t.choice != ToolChoice::None);
    match format {
        ToolFormat::Hermes | ToolFormat::Llama3 => return messages.to_vec(),
        ToolFormat::Mistral => {
            return messages
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    for c in &mut m.tool_calls {
                        c.id = nine_char_id(&c.id);
                    }
                    m.tool_call_id = m.tool_call_id.as_deref().map(nine_char_id);
                    m
                })
                .collect();
        }
        ToolFormat::Phi4 => {
            let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
            if let Some(t) = offered {
                let list: Vec<Value> = t.for_template().as_array().into_iter().flatten().map(|f| f["function"].clone()).collect();
                let mut system = match messages.first() {
                    Some(m) if m.role == "system" => m.clone(),
                    _ => Message::new("system", ""),
                };
                system.tools = Some(python_json(&Value::Array(list)));
                out.push(system);
            }
            let skip = usize::from(!out.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
            for m in &messages[skip..] {
                if m.role == "assistant" && !m.tool_calls.is_empty() {
                    out.push(Message::new("assistant", format!("{}{}", m.content, write_calls(format, &m.tool_calls))));
                } else {
                    out.push(m.clone());
                }
            }
            return out;
        }
        ToolFormat::Described => {}
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(t) = offered {
        let described = describe(t);
        match messages.first() {
            Some(m) if m.role == "system" => out.push(Message::new("system", format!("{}\n\n{described}", m.content))),
            _ => out.push(Message::new("system", described)),
        }
    }
    let skip = usize::from(!out.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&write_calls(format, &m.tool_calls));
                out.push(Message::new("assistant", text));
            }
            "tool" => {
                let text = format!("<tool_response>\n{}\n</tool_response>", m.content);
                // Consecutive results share one user turn.
                match out.last_mut() {
                    Some(prev) if prev.role == "user" && prev.content.ends_with("</tool_response>") => {
                        prev.content.push('\n');
                        prev.content.push_str(&text);
                    }
                    _ => out.push(Message::new("user", text)),
                }
            }
            _ => out.push(Message::new(&m.role, m.content.clone())),
        }
    }
    out
}

/// `calls` as a model of `format` writes them.
pub fn write_calls(format: ToolFormat, calls: &[ToolCall]) -> String {
    let syntax = format.syntax();
    let one = |c: &ToolCall| format!("{{\"name\": {}, \"{}\": {}}}", lark_str(&c.name), syntax.args_key, c.arguments);
    if syntax.list {
        let list: Vec<String> = calls.iter().map(one).collect();
        return format!("{}[{}]{}", syntax.open, list.join(", "), syntax.close);
    }
    if syntax.close.is_empty() {
        return calls.iter().map(one).collect::<Vec<_>>().join("\n");
    }
    calls.iter().map(|c| format!("{}\n{}\n{}", syntax.open, one(c), syntax.close)).collect::<Vec<_>>().join("\n")
}

/// The system text that offers `tools` to a model whose template does not.
fn describe(tools: &Tools) -> String {
    let list: Vec<String> = tools.for_template().as_array().into_iter().flatten().map(|t| python_json(&t["function"])).collect();
    format!(
        "You can call functions to help answer. The functions are:\n<tools>\n{}\n</tools>\n\nTo call a function, reply with a JSON object inside {OPEN}{CLOSE} tags, and nothing else:\n{OPEN}\n{{\"name\": \"function name\", \"arguments\": {{\"argument\": \"value\"}}}}\n{CLOSE}\nThe result comes back inside <tool_response></tool_response> tags. When no function helps, answer directly.",
        list.join("\n")
    )
}

/// JSON as Python's `json.dumps` writes it (`", "` and `": "` between items,
/// non-ASCII kept): the form chat templates' `tojson` gives under Hugging
/// Face's renderer, which models saw in training. With `indent`, one item
/// per line.
pub fn python_json_indent(v: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_py(v, indent, 0, &mut out);
    out
}

pub fn python_json(v: &Value) -> String {
    python_json_indent(v, None)
}

fn write_py(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k).expect("strings serialize"));
                out.push_str(": ");
                write_py(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).expect("values serialize")),
    }
}

/// The text a model of `format` wrote to open call `name` (after another
/// call when `after_call`), up to where its arguments begin: with the
/// arguments sent so far, what a node that continues an answer another node
/// began must take as already written.
pub fn reopen(format: ToolFormat, name: &str, after_call: bool) -> String {
    let syntax = format.syntax();
    let head = format!("{{\"name\": {}, \"{}\": ", lark_str(name), syntax.args_key);
    match (syntax.list, after_call) {
        (true, false) => format!("{}[{head}", syntax.open),
        (true, true) => format!("}}, {head}"),
        (false, false) if syntax.bare => head,
        (false, true) if syntax.close.is_empty() => format!("}}\n{head}"),
        (false, false) => format!("{}\n{head}", syntax.open),
        (false, true) => format!("}}\n{}\n{}\n{head}", syntax.close, syntax.open),
    }
}

/// Rewrites text in which a model of another format (the Hermes form, as
/// failover writes it) made calls into the form `format` writes: what a
/// node whose model is of `format` continues from.
pub fn rewrite(text: &str, format: ToolFormat) -> String {
    if matches!(format, ToolFormat::Hermes | ToolFormat::Described) {
        return text.to_string();
    }
    let mut out = String::new();
    let mut open_call = false;
    let mut p = Parser::new(ToolFormat::Hermes);
    let mut pieces = p.push(text);
    pieces.extend(p.finish());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Call { name, .. } => {
                out.push_str(&reopen(format, &name, open_call));
                open_call = true;
            }
            Piece::Arguments { text, .. } => out.push_str(&text),
        }
    }
    out
}

/// What the parser makes of the model's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text for the answer's content.
    Text(String),
    /// A call opens: its index in the answer, id and name.
    Call { index: usize, id: String, name: String },
    /// More of call `index`'s arguments (JSON text; the pieces of a call join to its arguments).
    Arguments { index: usize, text: String },
}

/// Turns streamed output into text and calls. Text that may be the start of
/// an opener is held back until it is known not to be; a call's name is
/// given as soon as it is written, its arguments as they are generated.
#[derive(Debug)]
pub struct Parser {
    format: ToolFormat,
    syntax: Syntax,
    state: State,
    buf: String,
    calls: usize,
    /// How the call being read started (and so how it ends).
    start: Start,
    /// It started with doubled braces (`{{"name"…}}`).
    doubled: bool,
    /// Text other than whitespace has been given: a call can no longer lead.
    spoke: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// After the format's opener.
    Tagged,
    /// In a Markdown fence (it ends with ```` ``` ````).
    Fenced,
    /// A bare `{"name"` (it ends with its object).
    Bare,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Text,
    /// After a list format's opener, before its `[`.
    List,
    /// After the opener, before the name has been read.
    Head,
    /// In the arguments object: nesting depth, inside a string, after a backslash.
    Arguments { depth: usize, in_string: bool, escaped: bool, started: bool },
    /// After the arguments, up to and including the closer.
    Tail,
    /// After a list format's `]`, before its closer.
    Close,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new(ToolFormat::Hermes)
    }
}

impl Parser {
    /// A parser of `format`'s calls.
    pub fn new(format: ToolFormat) -> Self {
        Self { format, syntax: format.syntax(), state: State::Text, buf: String::new(), calls: 0, start: Start::Tagged, doubled: false, spoke: false }
    }

    /// Calls opened so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Whether `token` (a control token's text) opens or closes this
    /// format's calls: the text stream leaves control tokens out, so the
    /// generator hands them in.
    pub fn is_marker(&self, token: &str) -> bool {
        !token.is_empty() && (token == self.syntax.open || token == self.syntax.close)
    }

    /// A parser that has read `text` (written earlier, by another node):
    /// what follows continues it, and calls are numbered after its calls.
    pub fn after(format: ToolFormat, text: &str) -> Self {
        let mut p = Self::new(format);
        p.push(text);
        p
    }

    /// Feeds `text`; returns what it completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        let syntax = self.syntax;
        loop {
            match &mut self.state {
                State::Text => {
                    // Between calls only whitespace is written: it is not text.
                    let between = self.calls > 0;
                    if syntax.lead && !self.spoke && !between {
                        let t = self.buf.trim_start();
                        let lead = self.buf.len() - t.len();
                        let doubled = t.starts_with("{{");
                        match call_at(&t[usize::from(doubled)..], false) {
                            Fence::Whole(len) => {
                                self.buf.drain(..lead + usize::from(doubled) + len);
                                self.buf.insert_str(0, "{\"name\"");
                                (self.start, self.doubled) = (Start::Bare, doubled);
                                self.state = State::Head;
                                continue;
                            }
                            // Only whitespace so far, or what may still become a call.
                            Fence::Partial => return out,
                            _ if t.is_empty() => return out,
                            Fence::No => {}
                        }
                    }
                    let tagged = (!syntax.open.is_empty()).then(|| self.buf.find(syntax.open)).flatten().map(|at| (at, at + syntax.open.len(), Start::Tagged));
                    let (fenced, fence_hold) = if syntax.fenced { call_start(&self.buf, true) } else { (None, None) };
                    let (bare, bare_hold) = if syntax.bare { call_start(&self.buf, false) } else { (None, None) };
                    let opener =
                        [tagged, fenced.map(|(a, b)| (a, b, Start::Fenced)), bare.map(|(a, b)| (a, b, Start::Bare))].into_iter().flatten().min_by_key(|o| o.0);
                    if let Some((at, end, start)) = opener {
                        let before: String = self.buf.drain(..at).collect();
                        self.spoke |= !before.trim().is_empty();
                        if !(between && before.trim().is_empty()) {
                            push_text(&mut out, before);
                        }
                        self.buf.drain(..end - at);
                        if start != Start::Tagged {
                            // The name's key was part of what matched; read on from it.
                            self.buf.insert_str(0, "{\"name\"");
                        }
                        self.start = start;
                        self.state = if start == Start::Tagged && syntax.list { State::List } else { State::Head };
                        continue;
                    }
                    // Hold back a tail that may be the start of an opener.
                    let open = syntax.open;
                    let hold = (1..open.len()).rev().find(|&n| self.buf.ends_with(&open[..n])).unwrap_or(0);
                    let cut = fence_hold.into_iter().chain(bare_hold).fold(self.buf.len() - hold, usize::min);
                    if between && self.buf[..cut].trim().is_empty() {
                        return out;
                    }
                    let emit: String = self.buf.drain(..cut).collect();
                    self.spoke |= !emit.trim().is_empty();
                    push_text(&mut out, emit);
                    return out;
                }
                State::List => {
                    let t = self.buf.trim_start();
                    if t.is_empty() {
                        return out;
                    }
                    let skip = self.buf.len() - t.len() + usize::from(t.starts_with('['));
                    self.buf.drain(..skip);
                    self.state = State::Head;
                }
                State::Head => {
                    let Some((name, used)) = read_head(&self.buf, syntax.args_key) else { return out };
                    out.push(Piece::Call { index: self.calls, id: self.format.call_id(), name });
                    self.calls += 1;
                    self.buf.drain(..used);
                    self.state = State::Arguments { depth: 0, in_string: false, escaped: false, started: false };
                }
                State::Arguments { depth, in_string, escaped, started } => {
                    let mut end = None;
                    let mut skip = 0;
                    for (i, c) in self.buf.char_indices() {
                        if !*started {
                            if c.is_whitespace() {
                                skip = i + c.len_utf8();
                                continue;
                            }
                            *started = true;
                        }
                        if *in_string {
                            match (c, *escaped) {
                                (_, true) => *escaped = false,
                                ('\\', false) => *escaped = true,
                                ('"', false) => *in_string = false,
                                _ => {}
                            }
                            continue;
                        }
                        match c {
                            '"' => *in_string = true,
                            '{' | '[' => *depth += 1,
                            '}' | ']' => {
                                *depth -= 1;
                                if *depth == 0 {
                                    end = Some(i + 1);
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    let index = self.calls - 1;
                    let upto = end.unwrap_or(self.buf.len());
                    let piece = self.buf[skip.min(upto)..upto].to_string();
                    self.buf.drain(..upto);
                    if !piece.is_empty() {
                        out.push(Piece::Arguments { index, text: piece });
                    }
                    if end.is_none() {
                        return out;
                    }
                    self.state = State::Tail;
                }
                State::Close => {
                    // A list format's closer, if it has one.
                    let close = syntax.close;
                    let t = self.buf.trim_start();
                    if !close.is_empty() && t.len() < close.len() && close.starts_with(t) {
                        return out;
                    }
                    if let Some(rest) = t.strip_prefix(close).filter(|_| !close.is_empty()) {
                        let n = self.buf.len() - rest.len();
                        self.buf.drain(..n);
                    }
                    self.state = State::Text;
                }
                State::Tail => match self.start {
                    Start::Fenced => {
                        let Some(at) = self.buf.find("```") else { return out };
                        self.buf.drain(..at + 3);
                        self.state = State::Text;
                    }
                    Start::Bare => {
                        // The call object's own `}` (two when it opened with two).
                        let close = if self.doubled { "}}" } else { "}" };
                        let t = self.buf.trim_start();
                        let skip = self.buf.len() - t.len();
                        if t.len() < close.len() && close.starts_with(t) {
                            return out;
                        }
                        let n = if t.starts_with(close) { skip + close.len() } else { skip + usize::from(t.starts_with('}')) };
                        self.buf.drain(..n);
                        self.state = State::Text;
                    }
                    Start::Tagged if syntax.list => {
                        // `}` then `,` and the next call, or `]` and the closer.
                        let t = self.buf.trim_start();
                        let Some(rest) = t.strip_prefix('}') else {
                            if t.is_empty() {
                                return out;
                            }
                            // Not the list's shape: the rest is text.
                            self.state = State::Text;
                            continue;
                        };
                        let r = rest.trim_start();
                        if r.is_empty() {
                            return out;
                        }
                        let used = self.buf.len() - r.len() + 1;
                        if r.starts_with(',') {
                            self.buf.drain(..used);
                            self.state = State::Head;
                        } else {
                            self.buf.drain(..used - usize::from(!r.starts_with(']')));
                            self.state = State::Close;
                        }
                    }
                    Start::Tagged => {
                        let close = if syntax.close.is_empty() { "}" } else { syntax.close };
                        let Some(at) = self.buf.find(close) else { return out };
                        self.buf.drain(..at + close.len());
                        self.state = State::Text;
                    }
                },
            }
        }
    }

    /// The end of the output: text still held back.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        if matches!(self.state, State::Text) && !(self.calls > 0 && rest.trim().is_empty()) {
            push_text(&mut out, rest);
        }
        out
    }
}

/// The first call start in `buf` (start, and end after its `"name"`): a
/// fenced one (```` ```json {"name" ````) when `fenced`, else a bare
/// `{"name"`; and where text must be held back because one may be starting.
fn call_start(buf: &str, fenced: bool) -> (Option<(usize, usize)>, Option<usize>) {
    let first = if fenced { '`' } else { '{' };
    let mut from = 0;
    while let Some(i) = buf[from..].find(first).map(|i| i + from) {
        match call_at(&buf[i..], fenced) {
            Fence::Whole(len) => return (Some((i, i + len)), None),
            Fence::Partial => return (None, Some(i)),
            Fence::No => from = i + 1,
        }
    }
    (None, None)
}

enum Fence {
    Whole(usize),
    Partial,
    No,
}

/// Whether `s` starts with a call start: [`FENCE_REGEX`] when `fenced`,
/// else `{` and `"name"` with whitespace between.
fn call_at(s: &str, fenced: bool) -> Fence {
    let b = s.as_bytes();
    let mut i = 0;
    let lit = |i: &mut usize, lit: &[u8], optional: bool| -> Option<bool> {
        let n = lit.len().min(b.len() - *i);
        if b[*i..*i + n] != lit[..n] {
            return if optional { Some(true) } else { None };
        }
        if n < lit.len() {
            return Some(false);
        }
        *i += lit.len();
        Some(true)
    };
    let ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\r' | b'\n') {
            *i += 1;
        }
    };
    if fenced {
        for (part, optional) in [(&b"```"[..], false), (&b"json"[..], true)] {
            match lit(&mut i, part, optional) {
                None => return Fence::No,
                Some(false) => return Fence::Partial,
                Some(true) => {}
            }
        }
        ws(&mut i);
    }
    match lit(&mut i, b"{", false) {
        None => return Fence::No,
        Some(false) => return Fence::Partial,
        Some(true) => {}
    }
    ws(&mut i);
    match lit(&mut i, b"\"name\"", false) {
        None => Fence::No,
        Some(false) => Fence::Partial,
        Some(true) => Fence::Whole(i),
    }
}

fn push_text(out: &mut Vec<Piece>, text: String) {
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
}

/// Reads `{"name": "…", "arguments":` (or the format's key for the
/// arguments) from the start of a call; returns the name and the bytes
/// read, or `None` until all of it is there.
fn read_head(buf: &str, args_key: &str) -> Option<(String, usize)> {
    let s = buf.trim_start();
    let mut i = buf.len() - s.len();
    let expect = |i: &mut usize, lit: &str| -> Option<()> {
        let rest = &buf[*i..];
        let t = rest.trim_start();
        *i += rest.len() - t.len();
        if t.starts_with(lit) {
            *i += lit.len();
            Some(())
        } else {
            None
        }
    };
    expect(&mut i, "{")?;
    expect(&mut i, "\"name\"")?;
    expect(&mut i, ":")?;
    let rest = &buf[i..];
    let t = rest.trim_start();
    i += rest.len() - t.len();
    // The name: a JSON string, read whole.
    let mut de = serde_json::Deserializer::from_str(&buf[i..]).into_iter::<String>();
    let name = de.next()?.ok()?;
    i += de.byte_offset();
    expect(&mut i, ",")?;
    expect(&mut i, &format!("\"{args_key}\""))?;
    expect(&mut i, ":")?;
    Some((name, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str]) -> Vec<Piece> {
        run_as(ToolFormat::Hermes, chunks)
    }

    fn run_as(format: ToolFormat, chunks: &[&str]) -> Vec<Piece> {
        let mut p = Parser::new(format);
        let mut out: Vec<Piece> = chunks.iter().flat_map(|c| p.push(c)).collect();
        out.extend(p.finish());
        out
    }

    /// Joins consecutive pieces of one kind, and replaces ids (random) by their index.
    fn joined(pieces: Vec<Piece>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for p in pieces {
            let (k, v) = match p {
                Piece::Text(t) => ("text".to_string(), t),
                Piece::Call { index, id, name } => {
                    assert!((id.starts_with("call_") && id.len() == 29) || (id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric())), "{id}");
                    (format!("call{index}"), name)
                }
                Piece::Arguments { index, text } => (format!("args{index}"), text),
            };
            match out.last_mut() {
                Some((lk, lv)) if *lk == k && k != "call0" && k != "call1" => lv.push_str(&v),
                _ => out.push((k, v)),
            }
        }
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn calls_are_read_however_the_text_is_split() {
        let whole = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}{\", \"days\": [1, {\"x\": 2}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        let want = pairs(&[
            ("text", "Let me look.\n"),
            ("call0", "get_weather"),
            ("args0", "{\"city\": \"Paris \\\"}{\", \"days\": [1, {\"x\": 2}]}"),
            ("call1", "now"),
            ("args1", "{}"),
        ]);
        assert_eq!(joined(run(&[whole])), want);
        // One character at a time, and in uneven pieces.
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        assert_eq!(joined(run(&chars.iter().map(String::as_str).collect::<Vec<_>>())), want);
        for step in [2, 3, 5, 7, 11] {
            let pieces: Vec<String> = chars.chunks(step).map(|c| c.concat()).collect();
            assert_eq!(joined(run(&pieces.iter().map(String::as_str).collect::<Vec<_>>())), want, "step {step}");
        }
    }

    #[test]
    fn text_that_only_looks_like_an_opener_is_released() {
        assert_eq!(joined(run(&["a <tool", "box> b <", "tool_c"])), pairs(&[("text", "a <toolbox> b <tool_c")]));
        // The name is given once it is whole, before any argument.
        let mut p = Parser::default();
        assert_eq!(p.push("<tool_call>\n{\"name\": \"ab"), vec![]);
        let got = p.push("c\", \"arguments\": {\"q");
        assert!(matches!(&got[..], [Piece::Call { index: 0, name, .. }, Piece::Arguments { index: 0, text }] if name == "abc" && text == "{\"q"), "{got:?}");
    }

    #[test]
    fn fenced_calls_are_calls_and_other_fences_are_text() {
        let whole = "Sure.\n```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\n    \"city\": \"Paris\"\n  }\n}\n```\n```json\n{\"name\": \"now\", \"arguments\": {}}\n```";
        let want = pairs(&[("text", "Sure.\n"), ("call0", "get_weather"), ("args0", "{\n    \"city\": \"Paris\"\n  }"), ("call1", "now"), ("args1", "{}")]);
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        for step in [1, 2, 3, 4, 5, 1000] {
            let pieces: Vec<String> = chars.chunks(step).map(|c| c.concat()).collect();
            assert_eq!(joined(run(&pieces.iter().map(String::as_str).collect::<Vec<_>>())), want, "step {step}");
        }
        let code = "Use:\n```python\nprint(1)\n```\nand ```json\n{\"a\": 1}\n``` or `x`";
        for step in [1, 3, 1000] {
            let pieces: Vec<String> = code.chars().map(String::from).collect::<Vec<_>>().chunks(step).map(|c| c.concat()).collect();
            assert_eq!(joined(run(&pieces.iter().map(String::as_str).collect::<Vec<_>>())), pairs(&[("text", code)]), "step {step}");
        }
    }

    /// `whole` read in pieces of every size gives `want`.
    fn each_split(format: ToolFormat, whole: &str, want: &[(String, String)]) {
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        for step in [1, 2, 3, 5, 7, 1000] {
            let pieces: Vec<String> = chars.chunks(step).map(|c| c.concat()).collect();
            assert_eq!(joined(run_as(format, &pieces.iter().map(String::as_str).collect::<Vec<_>>())), want, "{format:?} step {step}");
        }
    }

    #[test]
    fn llama3_mistral_and_phi4_calls_are_read_in_their_own_forms() {
        let args = "{\"city\": \"Paris ]}\", \"days\": [1, {\"x\": 2}]}";
        let want = pairs(&[("text", "Sure: "), ("call0", "get_weather"), ("args0", args)]);
        each_split(ToolFormat::Llama3, &format!("Sure: {{\"name\": \"get_weather\", \"parameters\": {args}}}"), &want);
        let two = pairs(&[("call0", "get_weather"), ("args0", args), ("call1", "now"), ("args1", "{}")]);
        each_split(
            ToolFormat::Mistral,
            &format!("[TOOL_CALLS] [{{\"name\": \"get_weather\", \"arguments\": {args}}}, {{\"name\": \"now\", \"arguments\": {{}}}}]"),
            &two,
        );
        each_split(
            ToolFormat::Phi4,
            &format!("<|tool_call|>[{{\"name\": \"get_weather\", \"arguments\": {args}}},\n {{\"name\": \"now\", \"arguments\": {{}}}}]<|/tool_call|>"),
            &two,
        );
        // Mistral's ids are nine letters and digits.
        let mut p = Parser::new(ToolFormat::Mistral);
        let got = p.push("[TOOL_CALLS][{\"name\": \"now\", \"arguments\": {}}]");
        assert!(matches!(&got[0], Piece::Call { id, .. } if id.len() == 9), "{got:?}");
        // Text that is not a call stays text.
        each_split(ToolFormat::Llama3, "A set {\"a\": 1} and {nam}", &pairs(&[("text", "A set {\"a\": 1} and {nam}")]));
    }

    #[test]
    fn a_bare_call_leading_the_answer_is_a_call_in_either_brace_form() {
        let want = pairs(&[("call0", "get_weather"), ("args0", "{\"city\": \"Paris\"}")]);
        each_split(ToolFormat::Hermes, "{{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}", &want);
        each_split(ToolFormat::Hermes, "\n {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n", &want);
        // Only leading the answer; other JSON is text.
        let later = "Sure: {\"name\": \"get_weather\", \"arguments\": {}}";
        each_split(ToolFormat::Hermes, later, &pairs(&[("text", later)]));
        each_split(ToolFormat::Hermes, "{\"a\": 1} {{x}}", &pairs(&[("text", "{\"a\": 1} {{x}}")]));
    }

    #[test]
    fn calls_written_reopened_and_rewritten_read_back_in_each_format() {
        let calls = vec![
            ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: "{\"city\": \"Paris\"}".into() },
            ToolCall { id: "call_2".into(), name: "now".into(), arguments: "{}".into() },
        ];
        let want = pairs(&[("call0", "get_weather"), ("args0", "{\"city\": \"Paris\"}"), ("call1", "now"), ("args1", "{}")]);
        for format in [ToolFormat::Hermes, ToolFormat::Mistral, ToolFormat::Phi4] {
            assert_eq!(joined(run_as(format, &[&write_calls(format, &calls)])), want, "{format:?}");
        }
        // An answer with a call in the Hermes form (as failover replays it),
        // rewritten in each format, reads back as the same call.
        for format in [ToolFormat::Mistral, ToolFormat::Phi4, ToolFormat::Llama3] {
            let text = rewrite("Checking. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", format);
            let got = joined(run_as(format, &[&text]));
            assert_eq!(got[..3], pairs(&[("text", "Checking. "), ("call0", "get_weather"), ("args0", "{\"city\": \"Paris\"}")])[..], "{format:?}: {text}");
        }
        assert_eq!(nine_char_id("call_abc"), nine_char_id("call_abc"));
        assert_ne!(nine_char_id("call_abc"), nine_char_id("call_abd"));
        assert_eq!(nine_char_id("abcDEF123"), "abcDEF123");
    }

    #[test]
    fn formats_are_told_apart_by_their_templates() {
        for (source, want) in [
            ("{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>", ToolFormat::Hermes),
            ("[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS][TOOL_CALLS]", ToolFormat::Mistral),
            ("<|system|>{{ m.content }}<|tool|>{{ m.tools }}<|/tool|>", ToolFormat::Phi4),
            ("<|start_header_id|>ipython<|end_header_id|>{% if tools %}{{ tools }}{% endif %}", ToolFormat::Llama3),
            ("<|start_header_id|>{{ m.role }}<|end_header_id|>", ToolFormat::Described),
            ("<|im_start|>{{ m.role }}", ToolFormat::Described),
        ] {
            assert_eq!(ToolFormat::of_template(source), want, "{source}");
        }
    }

    #[test]
    fn json_is_written_as_python_writes_it() {
        let v: Value = serde_json::from_str(r#"{"a": [1, 2.5, "é<&>"], "b": {}, "c": {"d": null}}"#).unwrap();
        assert_eq!(python_json(&v), r#"{"a": [1, 2.5, "é<&>"], "b": {}, "c": {"d": null}}"#);
        assert_eq!(python_json_indent(&v, Some(2)), "{\n  \"a\": [\n    1,\n    2.5,\n    \"é<&>\"\n  ],\n  \"b\": {},\n  \"c\": {\n    \"d\": null\n  }\n}");
    }
}
