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

    /// The grammar the answer must match. With `answer` (a `response_format`
    /// JSON grammar) and choice `auto`, an answer that is not a call is JSON
    /// of that format, and a call comes first or not at all.
    ///
    /// # Errors
    /// [`Error::InvalidGrammar`] for a `strict` tool whose schema cannot be
    /// enforced, or an `answer` grammar that is not JSON.
    pub fn grammar(&self, answer: Option<&Grammar>, strict_check: impl Fn(&Grammar) -> Result<()>) -> Result<Grammar> {
        for t in self.tools.iter().filter(|t| t.strict) {
            strict_check(&Grammar::JsonSchema { schema: t.parameters.clone(), strict: true }).map_err(|e| Error::InvalidGrammar {
                field: "tools",
                message: format!("tool `{}`: {}", t.name, e.to_string().replace("the JSON schema", "its parameters")),
            })?;
        }
        let calls: Vec<&Tool> = match &self.choice {
            ToolChoice::Function { name } => self.tools.iter().filter(|t| &t.name == name).collect(),
            _ => self.tools.iter().collect(),
        };
        let call = json!({
            "x-guidance": {"whitespace_pattern": crate::constraint::JSON_WHITESPACE, "lenient": true},
            "anyOf": calls.iter().map(|t| json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": arguments_schema(&t.parameters)},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })).collect::<Vec<_>>(),
        });
        let more = if self.parallel && !matches!(self.choice, ToolChoice::Function { .. }) {
            format!("(WS? {open} WS? call WS? {close})* WS?", open = lark_str(OPEN), close = lark_str(CLOSE))
        } else {
            "WS?".to_string()
        };
        let answer =
            match answer {
                Some(g) => Some(g.json_schema().ok_or_else(|| Error::InvalidGrammar {
                    field: "response_format",
                    message: "only a JSON response_format can be combined with tools".into(),
                })?),
                None => None,
            };
        let head = match self.choice {
            // The answer is JSON of the response format, or calls from its
            // first token: a call cannot follow JSON text.
            ToolChoice::Auto if answer.is_some() => {
                let more = if self.parallel { "(WS? FENCE fenced_call)* WS?" } else { "WS?" };
                format!(
                    "start: answer | {open} rest | FENCE fenced_call {more}\nanswer: %json {schema}\nFENCE: /{FENCE_REGEX}/\nfenced_call: WS? \":\" WS? named WS? \"}}\" WS? \"```\"\nnamed: {named}\n",
                    open = lark_str(OPEN),
                    schema = answer.as_ref().expect("matched"),
                    named = named_calls(&calls).join(" | "),
                )
            }
            // Free text until the model writes the opener (or a fenced call,
            // as small Qwen2.5-Coder models write them); then a call.
            ToolChoice::Auto => {
                let named = named_calls(&calls);
                let fenced_more = if self.parallel { "(WS? FENCE fenced_call)* WS?" } else { "WS?" };
                format!(
                    "start: TEXT | call_hd rest | fence_hd fenced_call {fenced_more}\ncall_hd[lazy]: TEXT {open}\nfence_hd[lazy]: TEXT FENCE\nFENCE: /{FENCE_REGEX}/\nfenced_call: WS? \":\" WS? named WS? \"}}\" WS? \"```\"\nnamed: {}\n",
                    named.join(" | "),
                    open = lark_str(OPEN),
                )
            }
            ToolChoice::Required | ToolChoice::Function { .. } => format!("start: {} rest\n", lark_str(OPEN)),
            ToolChoice::None => {
                return Ok(Grammar::Lark { grammar: format!("start: NO_CALL\nNO_CALL: /(?s:.*)/ & ~/(?s:.*){}(?s:.*)/\n", regex_escape(OPEN)) });
            }
        };
        let grammar =
            format!("{head}rest: WS? call WS? {close} {more}\ncall: %json {call}\nTEXT: /(?s:.*)/\nWS: /[ \\t\\r\\n]{{1,4}}/\n", close = lark_str(CLOSE),);
        Ok(Grammar::Lark { grammar })
    }
}

/// Each of `calls` from its name's value on, for a fenced call whose
/// `{"name"` the fence already matched.
fn named_calls(calls: &[&Tool]) -> Vec<String> {
    calls
        .iter()
        .map(|t| {
            let args = json!({
                "x-guidance": {"whitespace_pattern": crate::constraint::JSON_WHITESPACE, "lenient": true},
                "allOf": [arguments_schema(&t.parameters)],
            });
            format!("{} WS? \",\" WS? \"\\\"arguments\\\"\" WS? \":\" WS? %json {args}", lark_str(&lark_str(&t.name)))
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

/// How a chat template takes tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// The template renders `tools`, assistant `tool_calls` and `tool`
    /// messages itself, in the Hermes form.
    Native,
    /// The template knows nothing of tools: rbee describes them in the
    /// system message and writes calls and results as text.
    Described,
}

impl ToolFormat {
    /// The format of a template, from its source.
    pub fn of_template(source: &str) -> Self {
        if source.contains(OPEN) && source.contains("tools") { Self::Native } else { Self::Described }
    }
}

/// The conversation as a template of `format` takes it: for a template that
/// does not know tools, the tools go into the system message and calls and
/// results become text.
pub fn prepare(format: ToolFormat, messages: &[Message], tools: Option<&Tools>) -> Vec<Message> {
    if format == ToolFormat::Native {
        return messages.to_vec();
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(t) = tools.filter(|t| !t.tools.is_empty() && t.choice != ToolChoice::None) {
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
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!("{OPEN}\n{{\"name\": {}, \"arguments\": {}}}\n{CLOSE}", lark_str(&c.name), c.arguments));
                }
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

/// The text a model wrote to open call `name` (after another call when
/// `after_call`), up to where its arguments begin: with the arguments sent
/// so far, what a node that continues an answer another node began must
/// take as already written.
pub fn reopen(name: &str, after_call: bool) -> String {
    let close = if after_call { format!("}}\n{CLOSE}\n") } else { String::new() };
    format!("{close}{OPEN}\n{{\"name\": {}, \"arguments\": ", lark_str(name))
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
#[derive(Debug, Default)]
pub struct Parser {
    state: State,
    buf: String,
    calls: usize,
    /// The call being read is in a Markdown fence (it ends with ```` ``` ````).
    fenced: bool,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Text,
    /// After the opener, before the name has been read.
    Head,
    /// In the arguments object: nesting depth, inside a string, after a backslash.
    Arguments { depth: usize, in_string: bool, escaped: bool, started: bool },
    /// After the arguments, up to and including the closer.
    Tail,
}

impl Parser {
    /// Calls opened so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// A parser that has read `text` (written earlier, by another node):
    /// what follows continues it, and calls are numbered after its calls.
    pub fn after(text: &str) -> Self {
        let mut p = Self::default();
        p.push(text);
        p
    }

    /// Feeds `text`; returns what it completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                State::Text => {
                    // Between calls only whitespace is written: it is not text.
                    let between = self.calls > 0;
                    let tagged = self.buf.find(OPEN).map(|at| (at, at + OPEN.len(), false));
                    let (fenced, fence_hold) = fence_start(&self.buf);
                    let opener = match (tagged, fenced) {
                        (Some(t), Some(f)) => Some(if t.0 <= f.0 { t } else { (f.0, f.1, true) }),
                        (Some(t), None) => Some(t),
                        (None, Some(f)) => Some((f.0, f.1, true)),
                        (None, None) => None,
                    };
                    if let Some((at, end, fence)) = opener {
                        let before: String = self.buf.drain(..at).collect();
                        if !(between && before.trim().is_empty()) {
                            push_text(&mut out, before);
                        }
                        self.buf.drain(..end - at);
                        if fence {
                            // The name's key was part of the fence; read on from it.
                            self.buf.insert_str(0, "{\"name\"");
                        }
                        self.fenced = fence;
                        self.state = State::Head;
                        continue;
                    }
                    // Hold back a tail that may be the start of an opener.
                    let hold = (1..OPEN.len()).rev().find(|&n| self.buf.ends_with(&OPEN[..n])).unwrap_or(0);
                    let cut = fence_hold.unwrap_or(usize::MAX).min(self.buf.len() - hold);
                    if between && self.buf[..cut].trim().is_empty() {
                        return out;
                    }
                    let emit: String = self.buf.drain(..cut).collect();
                    push_text(&mut out, emit);
                    return out;
                }
                State::Head => {
                    let Some((name, used)) = read_head(&self.buf) else { return out };
                    out.push(Piece::Call { index: self.calls, id: call_id(), name });
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
                State::Tail => {
                    let close = if self.fenced { "```" } else { CLOSE };
                    let Some(at) = self.buf.find(close) else { return out };
                    self.buf.drain(..at + close.len());
                    self.state = State::Text;
                }
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

/// The first fenced call in `buf` (start, and end after its `"name"`), and
/// where text must be held back because a fenced call may be starting there.
fn fence_start(buf: &str) -> (Option<(usize, usize)>, Option<usize>) {
    let mut from = 0;
    while let Some(i) = buf[from..].find('`').map(|i| i + from) {
        match fence_at(&buf[i..]) {
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

/// Whether `s` starts with what [`FENCE_REGEX`] matches.
fn fence_at(s: &str) -> Fence {
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
    for (part, optional) in [(&b"```"[..], false), (&b"json"[..], true)] {
        match lit(&mut i, part, optional) {
            None => return Fence::No,
            Some(false) => return Fence::Partial,
            Some(true) => {}
        }
    }
    ws(&mut i);
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

/// Reads `{"name": "…", "arguments":` from the start of a call; returns the
/// name and the bytes read, or `None` until all of it is there.
fn read_head(buf: &str) -> Option<(String, usize)> {
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
    expect(&mut i, "\"arguments\"")?;
    expect(&mut i, ":")?;
    Some((name, i))
}

/// A new call id, as OpenAI's look.
fn call_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    format!("call_{}", (0..24).map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())])).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str]) -> Vec<Piece> {
        let mut p = Parser::default();
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
                    assert!(id.starts_with("call_") && id.len() == 29);
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

    #[test]
    fn json_is_written_as_python_writes_it() {
        let v: Value = serde_json::from_str(r#"{"a": [1, 2.5, "é<&>"], "b": {}, "c": {"d": null}}"#).unwrap();
        assert_eq!(python_json(&v), r#"{"a": [1, 2.5, "é<&>"], "b": {}, "c": {"d": null}}"#);
        assert_eq!(python_json_indent(&v, Some(2)), "{\n  \"a\": [\n    1,\n    2.5,\n    \"é<&>\"\n  ],\n  \"b\": {},\n  \"c\": {\n    \"d\": null\n  }\n}");
    }
}
