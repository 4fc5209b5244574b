//! Constrained decoding: output held to a JSON schema or a grammar, token by
//! token, with llguidance.
//!
//! A model's token trie is built from its vocabulary's bytes the first time
//! a constrained request needs it (control tokens are marked special, so
//! grammar text never produces `<|im_end|>` or `<end_of_turn>`). Each request
//! compiles its grammar into a [`Constraint`]; before every sampled token its
//! mask leaves only the tokens that keep the output a valid prefix, and the
//! model's ends of turn only where the grammar is complete. The mask is
//! exact: whatever the model's logits, the text is valid.

use std::collections::HashSet;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Grammar {
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema`. With `strict`, a keyword that cannot be
    /// enforced is an error; without, such keywords are ignored and the rest
    /// of the schema still holds.
    JsonSchema { schema: Value, strict: bool },
    /// A grammar in llguidance's Lark dialect (`%json { schema }` embeds a
    /// JSON schema; `<|name|>` matches a special token).
    Lark { grammar: String },
}

/// Whitespace JSON may hold between tokens: a space or two, or a line break
/// with indentation. llguidance's default is unbounded, and a small model
/// can fill its whole answer with newlines; llama.cpp bounds it the same way.
pub(crate) const JSON_WHITESPACE: &str = r"[ \t]{1,2}|\n{1,2}[ \t]{0,24}";

impl Grammar {
    fn to_llguidance(&self) -> TopLevelGrammar {
        match self {
            Self::JsonObject => TopLevelGrammar::from_json_schema(with_options(json!({"type": "object"}), true)),
            Self::JsonSchema { schema, strict } => TopLevelGrammar::from_json_schema(with_options(schema.clone(), *strict)),
            Self::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        }
    }
}

impl Grammar {
    /// The schema a JSON grammar holds to, with rbee's options, for
    /// embedding in a Lark grammar as `%json`; `None` for a Lark grammar.
    pub(crate) fn json_schema(&self) -> Option<Value> {
        match self {
            Self::JsonObject => Some(with_options(json!({"type": "object"}), true)),
            Self::JsonSchema { schema, strict } => Some(with_options(schema.clone(), *strict)),
            Self::Lark { .. } => None,
        }
    }
}

/// `schema` with rbee's compile options (the caller's own `x-guidance`
/// options win).
fn with_options(mut schema: Value, strict: bool) -> Value {
    if let Value::Object(map) = &mut schema {
        let options = map.entry("x-guidance").or_insert_with(|| json!({}));
        if let Value::Object(o) = options {
            o.entry("whitespace_pattern").or_insert_with(|| JSON_WHITESPACE.into());
            o.entry("lenient").or_insert_with(|| (!strict).into());
        }
    }
    schema
}

/// A model's compiled vocabulary for grammars, shared by its requests.
pub struct Grammars {
    factory: ParserFactory,
    vocab: usize,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab", &self.vocab).finish()
    }
}

impl Grammars {
    /// Builds the token trie of `tokenizer`'s vocabulary; `ends` are the
    /// tokens that end a turn, allowed where a grammar is complete.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when the vocabulary cannot be used.
    pub fn new(tokenizer: &Tokenizer, ends: &HashSet<u32>) -> Result<Self> {
        let vocab = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                tokenizer.token_bytes(id).unwrap_or_else(|| {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token(id).unwrap_or_default().as_bytes());
                    w
                })
            })
            .collect();
        let mut ends: Vec<u32> = ends.iter().copied().filter(|&t| (t as usize) < vocab).collect();
        ends.sort_unstable();
        let first = *ends.first().ok_or_else(|| Error::Tokenizer("the model has no end-of-turn token, so a grammar could never end".into()))?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, first), &words).with_eos_tokens(&ends);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Tokenizer(format!("building the grammar vocabulary: {e}")))?;
        factory.set_stderr_log_level(0);
        Ok(Self { factory, vocab })
    }

    /// Compiles `grammar` for one request.
    ///
    /// # Errors
    /// [`Error::InvalidGrammar`] saying what in the grammar or schema cannot
    /// be enforced.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint> {
        let parser = self.factory.create_parser(grammar.to_llguidance()).map_err(|e| {
            let what = match grammar {
                Grammar::JsonObject | Grammar::JsonSchema { .. } => "the JSON schema",
                Grammar::Lark { .. } => "the grammar",
            };
            Error::InvalidGrammar { field: "response_format", message: format!("{what} cannot be enforced: {e}") }
        })?;
        Ok(Constraint { matcher: Matcher::new(Ok(parser)), vocab: self.vocab })
    }
}

/// One request's grammar state.
pub struct Constraint {
    matcher: Matcher,
    vocab: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("done", &self.matcher.is_stopped()).finish()
    }
}

impl Constraint {
    /// Sets the logits of every token the grammar does not allow next to −∞.
    ///
    /// # Errors
    /// [`Error::Grammar`] when the matcher fails.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self.matcher.compute_mask_or_eos().map_err(|e| Error::Grammar(format!("grammar: {e}")))?;
        let words = mask.as_slice();
        let n = self.vocab.min(logits.len());
        for (chunk, &bits) in logits[..n].chunks_mut(32).zip(words) {
            if bits == u32::MAX {
                continue;
            }
            for (j, l) in chunk.iter_mut().enumerate() {
                if bits >> j & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if logits.len() > self.vocab {
            logits[self.vocab..].fill(f32::NEG_INFINITY);
        }
        Ok(())
    }

    /// Advances past `tokens` (a sampled token, or text an earlier node
    /// already generated).
    ///
    /// # Errors
    /// [`Error::Grammar`] when the grammar does not allow them.
    pub fn advance(&mut self, tokens: &[u32]) -> Result<()> {
        self.matcher.consume_tokens(tokens).map_err(|e| Error::Grammar(format!("grammar: {e}")))
    }

    /// Advances past `text` already generated.
    ///
    /// # Errors
    /// [`Error::InvalidGrammar`] when the text does not fit the grammar.
    pub fn advance_text(&mut self, text: &str) -> Result<()> {
        let env = self.matcher.tok_env().map_err(|e| Error::Grammar(format!("grammar: {e}")))?;
        let tokens = env.tok_trie().greedy_tokenize(text.as_bytes());
        self.advance(&tokens).map_err(|e| Error::InvalidGrammar { field: "prompt", message: format!("the text to continue does not match the grammar: {e}") })
    }

    /// Whether the grammar is complete and allows nothing more.
    pub fn done(&self) -> bool {
        self.matcher.is_stopped()
    }
}
