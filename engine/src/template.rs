//! Chat templates: the GGUF's `tokenizer.chat_template` rendered with
//! minijinja, or a built-in one per architecture when the file has none.

use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::model::Arch;
use crate::tokenizer::Tokenizer;
use crate::tools::{ToolCall, ToolFormat, Tools, prepare, python_json_indent};

/// One chat message as the OpenAI API carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant message's calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A system message's tools as JSON, for templates that take them there (Phi-4-mini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: None, name: None, tools: None }
    }

    /// The message as chat templates take it (OpenAI's shape; a call's
    /// arguments as an object, which templates write with `tojson`).
    fn for_template(&self) -> serde_json::Value {
        let mut m = serde_json::json!({"role": self.role, "content": self.content});
        if !self.tool_calls.is_empty() {
            m["tool_calls"] = self
                .tool_calls
                .iter()
                .map(|c| {
                    let arguments = serde_json::from_str(&c.arguments).unwrap_or_else(|_| serde_json::Value::String(c.arguments.clone()));
                    serde_json::json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}})
                })
                .collect();
        }
        if let Some(id) = &self.tool_call_id {
            m["tool_call_id"] = id.clone().into();
        }
        if let Some(n) = &self.name {
            m["name"] = n.clone().into();
        }
        if let Some(t) = &self.tools {
            m["tools"] = t.clone().into();
        }
        m
    }
}

// The built-in templates are single lines with no whitespace control: every
// newline in them is one the model expects.

// Gemma: no system role; a system message is folded into the first user turn.
const GEMMA: &str = "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}\
{% if m.role == 'system' %}{% set ns.system = ns.system + m.content + '\\n\\n' %}\
{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n\
{% if m.role == 'user' and ns.system %}{{ ns.system }}{% set ns.system = '' %}{% endif %}\
{{ m.content | trim }}<end_of_turn>\n{% endif %}{% endfor %}\
{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const LLAMA3: &str = "{{ bos_token }}{% for m in messages %}\
<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{% endfor %}\
{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

// Llama 2 / Mistral instruction format; the system prompt joins the first user turn.
const INST: &str = "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}\
{% if m.role == 'system' %}{% set ns.system = ns.system + m.content + '\\n\\n' %}\
{% elif m.role == 'user' %}[INST] {{ ns.system }}{{ m.content | trim }} [/INST]{% set ns.system = '' %}\
{% else %} {{ m.content | trim }}{{ eos_token }}{% endif %}{% endfor %}";

const PHI3: &str = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}\
{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// A model's chat template, ready to render.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Whether the template came from the GGUF file (else built in).
    pub from_file: bool,
    /// How it takes tools.
    pub tool_format: ToolFormat,
}

impl ChatTemplate {
    /// The template of `gguf`, or the built-in one for its architecture.
    ///
    /// # Errors
    /// [`Error::Template`] when the file's template does not compile.
    pub fn from_gguf(gguf: &Gguf, arch: Arch, tokenizer: &Tokenizer) -> Result<Self> {
        let from_file = gguf.get_str("tokenizer.chat_template").ok().map(str::to_string);
        let has = |t: &str| (0..tokenizer.vocab_size() as u32).any(|i| tokenizer.token(i) == Some(t));
        let source = match (&from_file, arch) {
            (Some(t), _) => t.clone(),
            (None, Arch::Gemma3) => GEMMA.into(),
            (None, Arch::Qwen2 | Arch::Qwen3) => CHATML.into(),
            (None, Arch::Phi3) => PHI3.into(),
            (None, Arch::Llama) if has("<|start_header_id|>") => LLAMA3.into(),
            (None, Arch::Llama) if has("<|im_start|>") => CHATML.into(),
            (None, Arch::Llama) => INST.into(),
            // Encoders are not chatted with; they never render one.
            (None, Arch::Bert | Arch::NomicBert) => CHATML.into(),
        };
        let name = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default().to_string();
        Self::new(source, name(tokenizer.bos), name(tokenizer.eos), from_file.is_some())
    }

    /// Compiles `source`.
    ///
    /// # Errors
    /// [`Error::Template`] when it does not compile.
    pub fn new(source: String, bos: String, eos: String, from_file: bool) -> Result<Self> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with these two switched on.
        let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| Error::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
        // Python's json.dumps, as Hugging Face's renderer has it (minijinja's
        // own writes compact JSON and escapes HTML characters).
        env.add_filter("tojson", |v: Value, kwargs: minijinja::value::Kwargs| -> std::result::Result<Value, minijinja::Error> {
            let indent: Option<usize> = kwargs.get("indent")?;
            for ignored in ["ensure_ascii", "sort_keys", "separators"] {
                let _: Option<Value> = kwargs.get(ignored)?;
            }
            kwargs.assert_all_used()?;
            let json = serde_json::to_value(&v).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(Value::from_safe_string(python_json_indent(&json, indent)))
        });
        let tool_format = ToolFormat::of_template(&source);
        env.add_template_owned("chat", source).map_err(|e| Error::Template(e.to_string()))?;
        Ok(Self { env, bos, eos, from_file, tool_format })
    }

    /// The prompt text for `messages`, ending with the opening of the
    /// assistant's turn when `add_generation_prompt`.
    ///
    /// # Errors
    /// [`Error::Template`] when rendering fails (the template may reject the
    /// message order, e.g. two user turns in a row).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Like [`render`](Self::render), offering `tools` to the model: in the
    /// template's `tools` variable where it takes them, else described in
    /// the system message (see [`crate::tools`]).
    ///
    /// # Errors
    /// As [`render`](Self::render).
    pub fn render_with_tools(&self, messages: &[Message], tools: Option<&Tools>, add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::InvalidRequest("`messages` is empty: send at least one message".into()));
        }
        let messages = prepare(self.tool_format, messages, tools);
        let view: Vec<serde_json::Value> = messages.iter().map(Message::for_template).collect();
        let tools = match (self.tool_format, tools) {
            (f, Some(t)) if f.native() && !t.tools.is_empty() => Some(Value::from(minijinja::value::Serde(t.for_template()))),
            _ => None,
        };
        let tmpl = self.env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => Value::from(minijinja::value::Serde(&view)),
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| Error::Template(e.to_string()))
    }
}

/// The current UTC date for templates that print it, in the few strftime
/// codes templates use.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    fmt.replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, msgs: &[Message]) -> String {
        ChatTemplate::new(src.into(), "<bos>".into(), "<eos>".into(), false).unwrap().render(msgs, true).unwrap()
    }

    #[test]
    fn gemma_folds_system_into_first_user_turn() {
        let out =
            render(GEMMA, &[Message::new("system", "Be brief."), Message::new("user", "Hi"), Message::new("assistant", "Hello!"), Message::new("user", "Bye")]);
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn chatml_and_phi3_and_llama3_shapes() {
        let msgs = [Message::new("system", "S"), Message::new("user", "U")];
        assert_eq!(render(CHATML, &msgs), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(render(PHI3, &msgs), "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\n");
        assert_eq!(
            render(LLAMA3, &msgs),
            "<bos><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            render(INST, &[Message::new("user", "U"), Message::new("assistant", "A"), Message::new("user", "V")]),
            "<bos>[INST] U [/INST] A<eos>[INST] V [/INST]"
        );
    }

    #[test]
    fn hugging_face_helpers_work() {
        // The shapes real HF templates use: python string methods, tojson,
        // raise_exception, loop variables, namespace.
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}\
{% for m in messages %}{{ m['content'].strip().upper() }}|{{ m | tojson }}|{{ loop.index }}{% endfor %}\
{% if messages[-1].content.startswith('hi') %}!{% endif %}";
        let out = render(src, &[Message::new("user", "  hi there ")]);
        assert_eq!(out, "HI THERE|{\"role\": \"user\", \"content\": \"  hi there \"}|1");
        let err = ChatTemplate::new(src.into(), String::new(), String::new(), true).unwrap().render(&[Message::new("system", "x")], true).unwrap_err();
        assert!(err.to_string().contains("Conversation must start with user"), "{err}");
    }

    #[test]
    fn strftime_now_prints_a_date() {
        let s = strftime_now("%d %B %Y");
        let parts: Vec<&str> = s.split(' ').collect();
        assert_eq!(parts.len(), 3, "{s}");
        assert!(parts[2].parse::<i32>().unwrap() >= 2025);
    }
}
