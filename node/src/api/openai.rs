//! OpenAI's wire types for chat and text completions, and their checks.
//!
//! Requests are read leniently (unknown fields are ignored, as OpenAI's own
//! API does for fields a model does not use) and checked strictly: every
//! out-of-range value is a 400 that names its field.

use rbee_engine::{Grammar, Message, SamplingParams, TokenLogprob, Tool, ToolCall, ToolChoice, Tools, Usage as EngineUsage};
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and text completions. Besides OpenAI's,
/// llama.cpp's `top_k`, `min_p`, `repeat_penalty` and `ignore_eos` are understood.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    #[serde(alias = "repetition_penalty")]
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    /// Chat: `true`/`false`; text completions: how many alternatives (0–5).
    pub logprobs: Option<serde_json::Value>,
    /// Chat: alternatives per token (0–20), with `logprobs: true`.
    pub top_logprobs: Option<i64>,
    pub stream: Option<bool>,
    /// llama.cpp's extension: keep generating past end-of-turn (fixed-length benchmarks).
    pub ignore_eos: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}`; read by
    /// [`grammar`], which names the field at fault.
    pub response_format: Option<serde_json::Value>,
}

/// The grammar `response_format` asks for: `json_object` (any object, or
/// llama.cpp's `schema` inside it), `json_schema` (`json_schema.schema`,
/// `strict` honoured: a keyword that cannot be enforced is a 400 instead of
/// being ignored), or none for `text`.
///
/// # Errors
/// A 400 naming the field at fault.
pub fn grammar(format: Option<&serde_json::Value>) -> Result<Option<Grammar>, ApiError> {
    use serde_json::Value;
    let Some(f) = format.filter(|f| !f.is_null()) else { return Ok(None) };
    let Some(kind) = f.get("type").and_then(Value::as_str) else {
        return Err(ApiError::invalid("response_format.type", "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\""));
    };
    let schema_object = |v: &Value, name: &str| -> Result<Value, ApiError> {
        match v {
            Value::Object(_) => Ok(v.clone()),
            Value::Bool(true) => Ok(serde_json::json!({})),
            _ => Err(ApiError::invalid(name, format!("`{name}` must be a JSON Schema object"))),
        }
    };
    match kind {
        "text" => Ok(None),
        "json_object" => match f.get("schema") {
            Some(s) => Ok(Some(Grammar::JsonSchema { schema: schema_object(s, "response_format.schema")?, strict: false })),
            None => Ok(Some(Grammar::JsonObject)),
        },
        "json_schema" => {
            let Some(js) = f.get("json_schema").filter(|j| j.is_object()) else {
                return Err(ApiError::invalid(
                    "response_format.json_schema",
                    "`response_format.json_schema` is required with type \"json_schema\": {\"name\": ..., \"schema\": {...}}",
                ));
            };
            let Some(schema) = js.get("schema") else {
                return Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "`response_format.json_schema.schema` is required: the JSON Schema the answer must match",
                ));
            };
            let strict = match js.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::invalid("response_format.json_schema.strict", "`response_format.json_schema.strict` must be true or false")),
            };
            Ok(Some(Grammar::JsonSchema { schema: schema_object(schema, "response_format.json_schema.schema")?, strict }))
        }
        other => Err(ApiError::invalid(
            "response_format.type",
            format!("`response_format.type` {other:?} is not supported; use \"text\", \"json_object\" or \"json_schema\""),
        )),
    }
}

/// Most stop strings a request may carry.
pub const MAX_STOP: usize = 16;

/// Most choices (`n`) one request may ask for: they share the prompt but
/// each takes a slot of its own.
pub const MAX_CHOICES: usize = 16;

impl Sampling {
    /// The engine's parameters, or a 400 naming the first bad field.
    ///
    /// # Errors
    /// An [`ApiError`] for an out-of-range or unsupported value.
    pub fn to_params(&self) -> Result<SamplingParams, ApiError> {
        let mut p = SamplingParams::default();
        let range = |name: &str, v: Option<f32>, lo: f32, hi: f32| -> Result<Option<f32>, ApiError> {
            match v {
                Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => {
                    Err(ApiError::invalid(name, format!("`{name}` must be between {lo} and {hi}, got {x}")))
                }
                v => Ok(v),
            }
        };
        if let Some(n) = self.n
            && !(1..=MAX_CHOICES as i64).contains(&n)
        {
            return Err(ApiError::invalid("n", format!("`n` must be between 1 and {MAX_CHOICES}, got {n}")));
        }
        p.logprobs = match &self.logprobs {
            None | Some(serde_json::Value::Null | serde_json::Value::Bool(false)) => None,
            Some(serde_json::Value::Bool(true)) => Some(match self.top_logprobs {
                None => 0,
                Some(t) if (0..=20).contains(&t) => t as usize,
                Some(t) => return Err(ApiError::invalid("top_logprobs", format!("`top_logprobs` must be between 0 and 20, got {t}"))),
            }),
            Some(v) => match v.as_i64() {
                Some(n) if (0..=5).contains(&n) => Some(n as usize),
                _ => return Err(ApiError::invalid("logprobs", format!("`logprobs` must be true or false (chat), or between 0 and 5 (completions), got {v}"))),
            },
        };
        if self.top_logprobs.is_some_and(|t| t > 0) && self.logprobs != Some(serde_json::Value::Bool(true)) {
            return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
        }
        if let Some(t) = range("temperature", self.temperature, 0.0, 2.0)? {
            p.temperature = t;
        }
        if let Some(t) = range("top_p", self.top_p, 0.0, 1.0)? {
            // OpenAI accepts 0: only the most likely token.
            if t == 0.0 {
                p.temperature = 0.0;
            } else {
                p.top_p = t;
            }
        }
        if let Some(k) = self.top_k {
            p.top_k = usize::try_from(k).map_err(|_| ApiError::invalid("top_k", format!("`top_k` must be 0 (off) or more, got {k}")))?;
        }
        if let Some(m) = range("min_p", self.min_p, 0.0, 1.0)? {
            p.min_p = m;
        }
        if let Some(r) = range("repeat_penalty", self.repeat_penalty, 0.01, 10.0)? {
            p.repetition_penalty = r;
        }
        if let Some(x) = range("presence_penalty", self.presence_penalty, -2.0, 2.0)? {
            p.presence_penalty = x;
        }
        if let Some(x) = range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)? {
            p.frequency_penalty = x;
        }
        // Seeds are 64-bit either way; a negative one is a different seed, not an error.
        p.seed = self.seed.map(|s| s as u64);
        let (name, max) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => ("max_completion_tokens", Some(m)),
            (None, m) => ("max_tokens", m),
        };
        if let Some(m) = max {
            if m < 1 {
                return Err(ApiError::invalid(name, format!("`{name}` must be at least 1, got {m}")));
            }
            p.max_tokens = Some(usize::try_from(m).unwrap_or(usize::MAX));
        }
        p.ignore_eos = self.ignore_eos.unwrap_or(false);
        p.stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if p.stop.len() > MAX_STOP {
            return Err(ApiError::invalid("stop", format!("`stop` may hold at most {MAX_STOP} strings, got {}", p.stop.len())));
        }
        p.grammar = grammar(self.response_format.as_ref())?;
        p.validate().map_err(|e| ApiError::bad_body(e.to_string()))?;
        Ok(p)
    }

    /// How many choices (`n`) to generate; checked by [`to_params`](Self::to_params).
    pub fn choices(&self) -> usize {
        self.n.map_or(1, |n| usize::try_from(n).unwrap_or(1).clamp(1, MAX_CHOICES))
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// A message's `content`: text, or a list of parts of which rbee reads the text ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant message's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// A call in an assistant message the client sends back.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    pub name: String,
    /// JSON text, as OpenAI sends it (an object is taken too).
    pub arguments: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// `[{"type": "function", "function": {"name", "description", "parameters", "strict"}}]`;
    /// read by [`ChatRequest::tools`], which names the field at fault.
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl ChatRequest {
    /// The tools offered and how they may be called; `None` without `tools`.
    ///
    /// # Errors
    /// A 400 naming the field at fault.
    pub fn tools(&self) -> Result<Option<Tools>, ApiError> {
        use serde_json::Value;
        let list = match &self.tools {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(ApiError::invalid("tools", "`tools` must be a list of {\"type\": \"function\", \"function\": {...}}")),
        };
        let mut tools = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let at = |f: &str| format!("tools[{i}]{f}");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(&at(".type"), format!("`{}` must be \"function\" (the only kind of tool)", at(".type"))));
            }
            let Some(f) = t.get("function").filter(|f| f.is_object()) else {
                return Err(ApiError::invalid(&at(".function"), format!("`{}` is required: {{\"name\", \"description\", \"parameters\"}}", at(".function"))));
            };
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
                return Err(ApiError::invalid(
                    &at(".function.name"),
                    format!("`{}` must be 1 to 64 letters, digits, underscores, dashes or dots", at(".function.name")),
                ));
            }
            if tools.iter().any(|t: &Tool| t.name == name) {
                return Err(ApiError::invalid(&at(".function.name"), format!("two tools are named `{name}`")));
            }
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => {
                    return Err(ApiError::invalid(&at(".function.parameters"), format!("`{}` must be a JSON Schema object", at(".function.parameters"))));
                }
            };
            tools.push(Tool {
                name: name.to_string(),
                description: f.get("description").and_then(Value::as_str).map(String::from),
                parameters,
                strict: f.get("strict").and_then(Value::as_bool).unwrap_or(false),
            });
        }
        let choice = match &self.tool_choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!(
                            "`tool_choice` {other:?} is not one of \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\"}}}}"
                        ),
                    ));
                }
            },
            // Whether the named tool was offered is the engine's check (a 400 on `tool_choice`).
            Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => ToolChoice::Function { name: name.to_string() },
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\"}}",
                    ));
                }
            },
        };
        if tools.is_empty() {
            return match choice {
                ToolChoice::Auto | ToolChoice::None => Ok(None),
                _ => Err(ApiError::invalid("tool_choice", "`tool_choice` asks for a call but the request offers no `tools`")),
            };
        }
        Ok(Some(Tools { tools, choice, parallel: self.parallel_tool_calls.unwrap_or(true) }))
    }

    /// The conversation for the engine's chat template.
    ///
    /// # Errors
    /// A 400 for no messages, an unknown role, or a non-text content part.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` is empty: send at least one message"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match m.role.as_str() {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    "tool" => "tool",
                    other => {
                        return Err(ApiError::invalid(
                            &format!("messages[{i}].role"),
                            format!("unknown role {other:?}; use system, developer, user, assistant or tool"),
                        ));
                    }
                };
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::invalid(
                                        &format!("messages[{i}].content[{j}]"),
                                        format!("content parts of type {kind:?} are not supported; rbee's models read text parts only"),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                let mut msg = Message::new(role, content);
                for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                    let arguments = match &c.function.arguments {
                        serde_json::Value::String(s) => s.clone(),
                        v => v.to_string(),
                    };
                    if serde_json::from_str::<serde_json::Value>(&arguments).is_err() {
                        return Err(ApiError::invalid(
                            &format!("messages[{i}].tool_calls[{j}].function.arguments"),
                            "the arguments of a call must be JSON text",
                        ));
                    }
                    msg.tool_calls.push(ToolCall { id: c.id.clone().unwrap_or_default(), name: c.function.name.clone(), arguments });
                }
                msg.tool_call_id = m.tool_call_id.clone();
                msg.name = m.name.clone();
                Ok(msg)
            })
            .collect()
    }
}

/// `prompt` of a text completion: a string, one string in a list, or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    Batches(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptInput,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub best_of: Option<i64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl CompletionRequest {
    /// The engine prompt.
    ///
    /// # Errors
    /// A 400 for several prompts in one request or an unsupported option.
    pub fn prompt(&self) -> Result<rbee_engine::Prompt, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "`echo` is not supported by rbee; leave it out"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "`suffix` (fill-in-the-middle) is not supported by rbee; leave it out"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid("best_of", "`best_of` must be 1"));
        }
        let several = || ApiError::invalid("prompt", "send one prompt per request (a list of several prompts is not supported)");
        Ok(match &self.prompt {
            PromptInput::Text(t) => rbee_engine::Prompt::Text(t.clone()),
            PromptInput::Texts(v) if v.len() == 1 => rbee_engine::Prompt::Text(v[0].clone()),
            PromptInput::Tokens(ids) => rbee_engine::Prompt::Tokens(ids.clone()),
            PromptInput::Batches(v) if v.len() == 1 => rbee_engine::Prompt::Tokens(v[0].clone()),
            PromptInput::Texts(_) | PromptInput::Batches(_) => return Err(several()),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl From<&EngineUsage> for Usage {
    fn from(u: &EngineUsage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens.min(u.prompt_tokens) },
        }
    }
}

/// rbee's extension (llama.cpp's server sends a similar `timings`): where a
/// generation's time went, measured by the node.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// The swarm node that ran it (null when the node runs alone).
    pub node_id: Option<rbee_swarm::NodeId>,
    /// From handing the request to the engine to its first token.
    pub ttft_ms: f64,
    /// Processing the prompt (the part not reused from the slot's cache).
    pub prompt_ms: f64,
    pub prompt_tokens_per_sec: f64,
    /// Generating, after the first token.
    pub decode_ms: f64,
    pub decode_tokens_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the answer is only tool calls, as OpenAI's.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A call in an answer.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionOut {
    pub name: String,
    pub arguments: String,
}

/// A streamed piece of a call: `id`, `type` and the name on its first
/// piece, then more of its arguments.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

/// A chat answer's (or chunk's) logprobs.
#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    pub refusal: Option<()>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub fn new(lps: &[TokenLogprob]) -> Self {
        let content = lps
            .iter()
            .map(|t| ChatTokenLogprob {
                token: t.token.clone(),
                logprob: t.logprob,
                bytes: t.bytes.clone(),
                top_logprobs: t.top.iter().map(|a| ChatTopLogprob { token: a.token.clone(), logprob: a.logprob, bytes: a.bytes.clone() }).collect(),
            })
            .collect();
        Self { content, refusal: None }
    }
}

/// A text completion's logprobs (the legacy shape); `text_offset` counts
/// characters from the start of the completion.
#[derive(Debug, Clone, Serialize)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

impl TextLogprobs {
    /// `offset`: characters of the completion before these tokens.
    pub fn new(lps: &[TokenLogprob], mut offset: usize) -> Self {
        let mut out = Self { tokens: Vec::new(), token_logprobs: Vec::new(), top_logprobs: Vec::new(), text_offset: Vec::new() };
        for t in lps {
            out.tokens.push(t.token.clone());
            out.token_logprobs.push(t.logprob);
            out.top_logprobs.push(t.top.iter().map(|a| (a.token.clone(), serde_json::Value::from(a.logprob))).collect());
            out.text_offset.push(offset);
            offset += t.token.chars().count();
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub timings: Timings,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<TextLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A streamed chunk of either kind; `usage` is `null` on every chunk but the
/// last when the client asked for usage, and absent otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk<C> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    /// On the last chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    pub usage: Usage,
    pub timings: Timings,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// rbee's extension: what the model is and whether it is in memory now.
    pub rbee: ModelInfo,
}

pub use crate::service::{ModelInfo, ModelLocation};

#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(json: &str) -> Sampling {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        for (body, param) in [
            (r#"{"temperature": 3}"#, "temperature"),
            (r#"{"top_p": 1.5}"#, "top_p"),
            (r#"{"presence_penalty": -3}"#, "presence_penalty"),
            (r#"{"frequency_penalty": 9}"#, "frequency_penalty"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"max_completion_tokens": -5}"#, "max_completion_tokens"),
            (r#"{"n": 0}"#, "n"),
            (r#"{"n": 17}"#, "n"),
            (r#"{"top_k": -1}"#, "top_k"),
            (r#"{"logprobs": 7}"#, "logprobs"),
            (r#"{"logprobs": true, "top_logprobs": 21}"#, "top_logprobs"),
            (r#"{"top_logprobs": 2}"#, "top_logprobs"),
        ] {
            let e = sampling(body).to_params().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status, 400);
            assert!(e.message.contains(param), "{}", e.message);
        }
    }

    #[test]
    fn fields_reach_the_engine() {
        let p = sampling(r#"{"temperature": 0, "seed": -1, "max_completion_tokens": 7, "max_tokens": 99, "stop": "x", "top_k": 5, "logprobs": false, "n": 1}"#)
            .to_params()
            .unwrap();
        assert_eq!((p.temperature, p.seed, p.max_tokens, p.top_k), (0.0, Some(u64::MAX), Some(7), 5));
        assert_eq!(p.stop, ["x"]);
        let p = sampling(r#"{"stop": ["a", "b"], "top_p": 0}"#).to_params().unwrap();
        assert_eq!((p.stop.len(), p.temperature), (2, 0.0));
    }

    #[test]
    fn messages_map_roles_and_text_parts() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": null}]}"#,
        )
        .unwrap();
        let m = r.messages().unwrap();
        assert_eq!((m[0].role.as_str(), m[1].content.as_str(), m[2].content.as_str()), ("system", "hi there", ""));
        let r: ChatRequest =
            serde_json::from_str(r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#).unwrap();
        assert_eq!(r.messages().unwrap_err().param.as_deref(), Some("messages[0].content[0]"));
        let r: ChatRequest = serde_json::from_str(r#"{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}"#).unwrap();
        assert_eq!(r.messages().unwrap_err().param.as_deref(), Some("messages[0].role"));
    }
}
