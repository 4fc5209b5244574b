//! Tokenizers rebuilt from GGUF metadata.
//!
//! Two vocabulary kinds occur in GGUF files:
//! - `llama` (SentencePiece): tokens with scores and byte-fallback tokens
//!   `<0xNN>`, no merges. Text is split into characters and the adjacent pair
//!   whose concatenation is the highest-scoring token merges first, repeatedly,
//!   as llama.cpp and SentencePiece do; pieces that are not tokens fall back
//!   to byte tokens. This runs on the vocabulary directly: the equivalent BPE
//!   would need a merge table derived from the scores (515 000 merges for
//!   Gemma 3's 262 144 tokens), which cost 0.8 s and ~100 MiB to build.
//! - `gpt2` (byte-level BPE): tokens and merges, plus a pre-tokenizer regex
//!   named by `tokenizer.ggml.pre`. Each piece the regex splits off is
//!   written as one character per byte (GPT-2's byte-to-character table)
//!   and its adjacent pairs merge lowest rank first, leftmost on ties. The
//!   tables are ids over the vocabulary's one text buffer: the `tokenizers`
//!   crate, which this replaced (a test checks the two agree), kept every
//!   token twice as its own `String` (7 MiB for a 49k vocabulary, 5 % of
//!   SmolLM2-135M's whole process).
//!
//! Control tokens (type 3) and user-defined ones (type 4) are matched in raw
//! text before the model's own splitting, as llama.cpp does; control tokens
//! are left out of decoded text.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};

use aho_corasick::{AhoCorasick, MatchKind};
use candle_core::quantized::gguf_file::Value;
use hashbrown::HashTable;

use crate::error::{Error, Result};
use crate::gguf::Gguf;

const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;
const TOKEN_BYTE: i32 = 6;

/// SentencePiece's visible space.
const SPACE: char = '\u{2581}';

/// A model's tokenizer with the special ids generation needs.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: Vocab,
    kind: Kind,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// Appended to a text to embed: EOS where the file asks for it
    /// (Qwen3-Embedding pools on it), `[SEP]` for a WordPiece vocabulary.
    pub end_of_text: Option<u32>,
    /// Every id that ends a turn (EOS, end-of-turn markers).
    pub end_of_generation: HashSet<u32>,
}

#[derive(Debug)]
enum Kind {
    Spm(Box<Spm>),
    Bpe(Box<Bpe>),
    Wpm(Box<Wpm>),
}

/// Token texts in one buffer (a `Vec<String>` of 262 144 tokens costs three
/// times the memory) and their types.
#[derive(Debug)]
struct Vocab {
    text: String,
    ends: Vec<u32>,
    types: Vec<i32>,
}

impl Vocab {
    fn new(values: &[Value], types: Vec<i32>) -> Result<Self> {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(values.len());
        for v in values {
            text.push_str(v.to_string().map_err(|e| Error::Tokenizer(format!("expected a string: {e}")))?);
            let end = u32::try_from(text.len()).map_err(|_| Error::Tokenizer("the vocabulary is larger than 4 GiB".into()))?;
            ends.push(end);
        }
        Ok(Self { text, ends, types })
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.text[start..end])
    }

    fn ty(&self, id: u32) -> i32 {
        self.types.get(id as usize).copied().unwrap_or(1)
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        (0..self.len() as u32).map(|i| (i, self.get(i).unwrap_or_default()))
    }
}

/// A SentencePiece vocabulary ready to tokenize.
#[derive(Debug)]
struct Spm {
    index: TextIndex,
    scores: Vec<f32>,
    /// The `<0xNN>` token of each byte.
    bytes: [Option<u32>; 256],
    unk: Option<u32>,
    add_space_prefix: bool,
    specials: Specials,
}

/// Token ids hashed by their text: lookups by text without a second copy of
/// the vocabulary.
#[derive(Debug)]
struct TextIndex {
    table: HashTable<u32>,
    hasher: ahash::RandomState,
}

impl TextIndex {
    fn new(vocab: &Vocab) -> Self {
        let hasher = ahash::RandomState::new();
        let mut table: HashTable<u32> = HashTable::with_capacity(vocab.len());
        for (id, text) in vocab.iter() {
            let hash = hasher.hash_one(text);
            // A text listed twice maps to its last id, as in llama.cpp.
            match table.find_mut(hash, |&i| vocab.get(i) == Some(text)) {
                Some(slot) => *slot = id,
                None => {
                    table.insert_unique(hash, id, |&i| hasher.hash_one(vocab.get(i).unwrap_or_default()));
                }
            }
        }
        Self { table, hasher }
    }

    fn get(&self, vocab: &Vocab, text: &str) -> Option<u32> {
        self.table.find(self.hasher.hash_one(text), |&i| vocab.get(i) == Some(text)).copied()
    }
}

/// Control and user-defined tokens, found in raw text before the model's
/// own splitting (the longest where several start at one place).
#[derive(Debug)]
struct Specials(Option<(AhoCorasick, Vec<u32>)>);

/// A stretch of text between special tokens, or one of them.
enum Segment<'t> {
    Text(&'t str),
    Special(u32),
}

impl Specials {
    fn new(vocab: &Vocab) -> Result<Self> {
        let (texts, ids): (Vec<&str>, Vec<u32>) =
            vocab.iter().filter(|(id, text)| matches!(vocab.ty(*id), TOKEN_CONTROL | TOKEN_USER_DEFINED) && !text.is_empty()).map(|(id, t)| (t, id)).unzip();
        if texts.is_empty() {
            return Ok(Self(None));
        }
        let ac = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&texts).map_err(|e| Error::Tokenizer(format!("special tokens: {e}")))?;
        Ok(Self(Some((ac, ids))))
    }

    /// Calls `each` with the segments of `text` in order.
    fn split<'t>(&self, text: &'t str, mut each: impl FnMut(Segment<'t>)) {
        let mut pos = 0;
        if let Some((ac, ids)) = &self.0 {
            for m in ac.find_iter(text) {
                if m.start() > pos {
                    each(Segment::Text(&text[pos..m.start()]));
                }
                each(Segment::Special(ids[m.pattern().as_usize()]));
                pos = m.end();
            }
        }
        if pos < text.len() {
            each(Segment::Text(&text[pos..]));
        }
    }
}

/// A WordPiece vocabulary (BERT) as GGUF stores it: a token that starts a
/// word carries a leading `▁`, a continuation (`##ing` in BERT's files) is
/// bare.
#[derive(Debug)]
struct Wpm {
    index: TextIndex,
    unk: Option<u32>,
    /// The longest token, in bytes: no match is looked for beyond it.
    longest: usize,
    specials: Specials,
}

impl Wpm {
    fn new(vocab: &Vocab, unk: Option<u32>) -> Result<Self> {
        let longest = vocab.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        let unk = unk.or_else(|| vocab.iter().find(|(_, t)| *t == "[UNK]").map(|(id, _)| id));
        Ok(Self { index: TextIndex::new(vocab), unk, longest, specials: Specials::new(vocab)? })
    }

    fn encode(&self, vocab: &Vocab, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.specials.split(text, |segment| match segment {
            Segment::Special(id) => out.push(id),
            Segment::Text(t) => {
                for word in Self::words(t) {
                    self.encode_word(vocab, &word, &mut out);
                }
            }
        });
        out
    }

    /// BERT's basic splitting (uncased): lowercase, accents stripped, split
    /// on whitespace, and each punctuation mark and CJK ideograph a word of
    /// its own; control characters dropped.
    fn words(text: &str) -> Vec<String> {
        use unicode_categories::UnicodeCategories;
        use unicode_normalization::UnicodeNormalization;
        let mut words = vec![String::new()];
        for c in text.nfd() {
            if c.is_whitespace() {
                if !words.last().is_some_and(String::is_empty) {
                    words.push(String::new());
                }
                continue;
            }
            if c == '\0' || c == '\u{FFFD}' || c.is_other_control() || c.is_other_format() || c.is_mark_nonspacing() {
                continue;
            }
            if c.is_punctuation() || (c.is_ascii() && !c.is_ascii_alphanumeric()) || is_cjk(c) {
                if !words.last().is_some_and(String::is_empty) {
                    words.push(String::new());
                }
                words.last_mut().expect("never empty").push(c);
                words.push(String::new());
            } else {
                words.last_mut().expect("never empty").extend(c.to_lowercase());
            }
        }
        words.retain(|w| !w.is_empty());
        words
    }

    /// Greedy longest match from the start of `▁word`; a word with any
    /// piece missing from the vocabulary becomes one unknown token.
    fn encode_word(&self, vocab: &Vocab, word: &str, out: &mut Vec<u32>) {
        let word = format!("{SPACE}{word}");
        let start_len = out.len();
        let mut at = 0;
        while at < word.len() {
            let mut end = (at + self.longest).min(word.len());
            let found = loop {
                while !word.is_char_boundary(end) {
                    end -= 1;
                }
                if end <= at {
                    break None;
                }
                if let Some(id) = self.index.get(vocab, &word[at..end]) {
                    break Some(id);
                }
                end -= 1;
            };
            match found {
                Some(id) => {
                    out.push(id);
                    at = end;
                }
                None => {
                    out.truncate(start_len);
                    out.extend(self.unk);
                    return;
                }
            }
        }
    }

    /// Appends the text token `id` stands for: a word start as a space and
    /// the word, a continuation as is; control tokens (`[CLS]`) add nothing.
    fn push_bytes(vocab: &Vocab, id: u32, bytes: &mut Vec<u8>) {
        let Some(text) = vocab.get(id) else { return };
        if vocab.ty(id) == TOKEN_CONTROL {
            return;
        }
        match text.strip_prefix(SPACE) {
            Some(rest) => {
                bytes.push(b' ');
                bytes.extend_from_slice(rest.as_bytes());
            }
            None => bytes.extend_from_slice(text.as_bytes()),
        }
    }
}

/// CJK ideographs, which BERT splits one per word.
fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// The byte a byte-fallback token `<0xNN>` stands for.
fn byte_of(token: &str) -> Option<u8> {
    token.strip_prefix("<0x")?.strip_suffix('>').and_then(|h| u8::from_str_radix(h, 16).ok())
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug, PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Highest score first; on equal scores the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A run of text during merging; merged-away symbols have `len` 0.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    fn new(vocab: &Vocab, scores: Vec<f32>, unk: Option<u32>, add_space_prefix: bool) -> Result<Self> {
        let mut bytes = [None; 256];
        for (id, text) in vocab.iter() {
            if vocab.ty(id) == TOKEN_BYTE
                && let Some(b) = byte_of(text)
            {
                bytes[b as usize] = Some(id);
            }
        }
        Ok(Self { index: TextIndex::new(vocab), scores, bytes, unk, add_space_prefix, specials: Specials::new(vocab)? })
    }

    fn lookup(&self, vocab: &Vocab, text: &str) -> Option<u32> {
        self.index.get(vocab, text)
    }

    fn encode(&self, vocab: &Vocab, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        // A space is prefixed to the text and to each run after a special
        // token, when the vocabulary wants one (llama.cpp's rule).
        let mut after_special = true;
        let raw = |s: &str, after_special: bool, out: &mut Vec<u32>| {
            let mut escaped = String::with_capacity(s.len() + 3);
            if self.add_space_prefix && after_special {
                escaped.push(SPACE);
            }
            escaped.extend(s.chars().map(|c| if c == ' ' { SPACE } else { c }));
            self.encode_run(vocab, &escaped, out);
        };
        self.specials.split(text, |segment| match segment {
            Segment::Text(t) => {
                raw(t, after_special, &mut out);
                after_special = false;
            }
            Segment::Special(id) => {
                out.push(id);
                after_special = true;
            }
        });
        out
    }

    /// Merges the characters of `text` by score; pieces that are not tokens
    /// become byte tokens.
    fn encode_run(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
        }
        let Some(last) = symbols.last_mut() else { return };
        last.next = None;
        let mut queue = BinaryHeap::new();
        let bigram = |symbols: &[Symbol], left: Option<usize>, right: Option<usize>| -> Option<Bigram> {
            let (left, right) = (left?, right?);
            let len = symbols[left].len + symbols[right].len;
            let start = symbols[left].start;
            let id = self.lookup(vocab, &text[start..start + len])?;
            Some(Bigram { score: self.scores.get(id as usize).copied().unwrap_or(0.0), left, right, len })
        };
        for i in 1..symbols.len() {
            queue.extend(bigram(&symbols, Some(i - 1), Some(i)));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // Stale: one side has merged since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            symbols[b.left].len = b.len;
            symbols[b.left].next = r.next;
            symbols[b.right].len = 0;
            if let Some(n) = r.next {
                symbols[n].prev = Some(b.left);
            }
            queue.extend(bigram(&symbols, l.prev, Some(b.left)));
            queue.extend(bigram(&symbols, Some(b.left), r.next));
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.lookup(vocab, piece) {
                Some(id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.bytes[b as usize].or(self.unk))),
            }
            at = s.next;
        }
    }

    /// Text of `ids`; control tokens are skipped.
    fn decode(&self, vocab: &Vocab, ids: &[u32], strip_prefix_space: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            Self::push_bytes(vocab, id, &mut bytes);
        }
        if strip_prefix_space && self.add_space_prefix && bytes.first() == Some(&b' ') {
            bytes.remove(0);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Appends the bytes token `id` stands for in text (none for a control token).
    fn push_bytes(vocab: &Vocab, id: u32, bytes: &mut Vec<u8>) {
        let Some(text) = vocab.get(id) else { return };
        match vocab.ty(id) {
            TOKEN_CONTROL => {}
            TOKEN_BYTE => match byte_of(text) {
                Some(b) => bytes.push(b),
                None => bytes.extend_from_slice(text.as_bytes()),
            },
            // llama.cpp shows an unknown piece as a lower block.
            TOKEN_UNKNOWN => bytes.extend_from_slice("\u{2585}".as_bytes()),
            _ => {
                for c in text.chars() {
                    let c = if c == SPACE { ' ' } else { c };
                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by `gguf`'s `tokenizer.ggml.*` keys.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] for a missing or unknown vocabulary.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let kind = gguf.get_str("tokenizer.ggml.model").map_err(|_| Error::Tokenizer("the GGUF has no tokenizer (tokenizer.ggml.model)".into()))?;
        let values = gguf.get_array("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match gguf.get_array("tokenizer.ggml.token_type") {
            Ok(v) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            Err(_) => vec![1; values.len()],
        };
        if types.len() != values.len() {
            return Err(Error::Tokenizer(format!("{} tokens but {} token types", values.len(), types.len())));
        }
        let vocab = Vocab::new(values, types)?;
        let opt_id = |k: &str| gguf.get_u32(k).ok().filter(|id| (*id as usize) < vocab.len());
        let bos = opt_id("tokenizer.ggml.bos_token_id");
        let eos = opt_id("tokenizer.ggml.eos_token_id");
        let kind = match kind {
            "llama" => {
                let scores: Vec<f32> = match gguf.get_array("tokenizer.ggml.scores") {
                    Ok(v) => v.iter().map(|s| s.to_f32().unwrap_or(0.0)).collect(),
                    Err(_) => (0..vocab.len()).map(|i| -(i as f32)).collect(),
                };
                let add_space_prefix = gguf.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                Kind::Spm(Box::new(Spm::new(&vocab, scores, opt_id("tokenizer.ggml.unknown_token_id"), add_space_prefix)?))
            }
            "gpt2" => {
                let merges = gguf.get_array("tokenizer.ggml.merges")?;
                let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
                Kind::Bpe(Box::new(Bpe::new(&vocab, merges, pre)?))
            }
            "bert" => Kind::Wpm(Box::new(Wpm::new(&vocab, opt_id("tokenizer.ggml.unknown_token_id"))?)),
            other => return Err(Error::Tokenizer(format!("unsupported tokenizer model `{other}` (supported: llama, gpt2, bert)"))),
        };
        let end_of_text = match kind {
            Kind::Wpm(_) => opt_id("tokenizer.ggml.seperator_token_id").or(eos),
            _ if gguf.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false) => eos,
            _ => None,
        };
        // Ends of turn: EOS, the explicit EOT key, and the markers chat
        // templates close turns with.
        let mut end_of_generation: HashSet<u32> = eos.into_iter().collect();
        if let Some(eot) = opt_id("tokenizer.ggml.eot_token_id") {
            end_of_generation.insert(eot);
        }
        for marker in ["<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>"] {
            if let Some((id, _)) = vocab.iter().find(|(_, t)| *t == marker)
                && vocab.ty(id) == TOKEN_CONTROL
            {
                end_of_generation.insert(id);
            }
        }
        let bos = match kind {
            Kind::Wpm(_) => opt_id("tokenizer.ggml.cls_token_id").or(bos),
            _ => bos,
        };
        let add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(matches!(kind, Kind::Spm(_) | Kind::Wpm(_)));
        Ok(Self { add_bos, end_of_text, vocab, kind, bos, eos, end_of_generation })
    }

    /// Token ids of `text`. Special tokens written in the text (`<bos>`,
    /// `<start_of_turn>`) are recognised; no BOS is added.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.kind {
            Kind::Spm(spm) => Ok(spm.encode(&self.vocab, text)),
            Kind::Bpe(bpe) => Ok(bpe.encode(text)),
            Kind::Wpm(wpm) => Ok(wpm.encode(&self.vocab, text)),
        }
    }

    /// Token ids of a text to embed: as a prompt, then EOS or `[SEP]`
    /// where the model's pooling expects it.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn encode_to_embed(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_prompt(text)?;
        if let Some(end) = self.end_of_text
            && ids.last() != Some(&end)
        {
            ids.push(end);
        }
        Ok(ids)
    }

    /// Like [`encode`](Self::encode), with BOS in front when the model wants one.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of `ids` as a whole, skipping control tokens: the inverse of
    /// [`encode`](Self::encode), so the space a SentencePiece vocabulary puts
    /// in front of the text is removed again.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    fn decode_with(&self, ids: &[u32], strip_prefix_space: bool) -> Result<String> {
        match &self.kind {
            Kind::Spm(spm) => Ok(spm.decode(&self.vocab, ids, strip_prefix_space)),
            Kind::Bpe(bpe) => Ok(bpe.decode(&self.vocab, ids)),
            Kind::Wpm(_) => {
                let mut bytes = Vec::new();
                for &id in ids {
                    Wpm::push_bytes(&self.vocab, id, &mut bytes);
                }
                if strip_prefix_space && bytes.first() == Some(&b' ') {
                    bytes.remove(0);
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// A decoder for a stream of ids that yields only whole UTF-8 characters.
    /// The text continues whatever came before, so a leading space is kept.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { tokenizer: self, ids: Vec::new(), prefix: 0, read: 0 }
    }

    /// The vocabulary entry of `id`.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.vocab.get(id)
    }

    /// The id of the control token written `text` (`[TOOL_CALLS]`), if the
    /// vocabulary has one.
    pub fn control_token(&self, text: &str) -> Option<u32> {
        if text.is_empty() {
            return None;
        }
        self.vocab.iter().find(|(id, t)| *t == text && self.vocab.ty(*id) == TOKEN_CONTROL).map(|(id, _)| id)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The bytes token `id` adds to decoded text, or `None` for a token that
    /// is not text: control tokens (`<|im_end|>`, `<end_of_turn>`) and the
    /// unknown and unused ones. A byte-fallback token is its one byte, which
    /// may be part of a character.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if matches!(self.vocab.ty(id), TOKEN_CONTROL | TOKEN_UNKNOWN | TOKEN_UNUSED) || id as usize >= self.vocab.len() {
            return None;
        }
        let mut bytes = Vec::new();
        match &self.kind {
            Kind::Spm(_) => Spm::push_bytes(&self.vocab, id, &mut bytes),
            Kind::Bpe(bpe) => bpe.push_bytes(&self.vocab, id, &mut bytes),
            Kind::Wpm(_) => Wpm::push_bytes(&self.vocab, id, &mut bytes),
        }
        Some(bytes)
    }
}

/// Incremental decoding: a character split across tokens is held back until
/// its last byte arrives, so every chunk is valid UTF-8.
///
/// Each step decodes the ids since the last emitted text twice (without and
/// with the new id) and emits the difference; decoding a short window rather
/// than one id at a time keeps the decoder's context (leading-space rules,
/// byte fallback) right. Bytes that never form a character (a model can emit
/// them) are released as U+FFFD after four tokens instead of being held
/// forever.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// End of the text already emitted.
    read: usize,
}

/// A UTF-8 character is at most four bytes, so at most four byte tokens.
const MAX_HELD: usize = 4;

impl TextStream<'_> {
    /// Feeds one id; returns the text it completes, if any.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = self.tokenizer.decode_with(&self.ids[self.prefix..self.read], false)?;
        let after = self.tokenizer.decode_with(&self.ids[self.prefix..], false)?;
        let held = self.ids.len() - self.read;
        let incomplete = after.len() <= before.len() || after.ends_with('\u{FFFD}');
        if incomplete && held < MAX_HELD {
            return Ok(None);
        }
        let mut common = before.bytes().zip(after.bytes()).take_while(|(a, b)| a == b).count();
        while !after.is_char_boundary(common) {
            common -= 1;
        }
        let text = after[common..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(if text.is_empty() { None } else { Some(text) })
    }
}

/// Pre-tokenizer regexes by `tokenizer.ggml.pre`, as published with each
/// model family's tokenizer.
fn pre_tokenizer_regex(pre: &str) -> &'static str {
    match pre {
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        "qwen2" | "deepseek-r1-qwen" => r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        _ => r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    }
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for
/// themselves, the others (controls, space, 0x7F–0xA0, soft hyphen) for
/// U+0100 onwards in byte order, so that every token is printable text.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0;
    for b in 0..=255u8 {
        table[b as usize] = if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("U+0100..U+0143 are characters")
        };
    }
    table
}

/// A byte-level BPE vocabulary ready to tokenize.
#[derive(Debug)]
struct Bpe {
    /// `(left, right)` → `(rank, merged)`: the merge's place in the list and
    /// the token it makes.
    merges: hashbrown::HashMap<(u32, u32), (u32, u32), ahash::RandomState>,
    /// The token of each byte's character.
    byte_ids: [Option<u32>; 256],
    /// The byte each table character stands for, by code point.
    char_bytes: Vec<Option<u8>>,
    pre: fancy_regex::Regex,
    specials: Specials,
}

/// A symbol of a piece being merged; merged-away ones are not `alive`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

/// No neighbour.
const NONE: usize = usize::MAX;

impl Bpe {
    fn new(vocab: &Vocab, merges: &[Value], pre: &str) -> Result<Self> {
        let index = TextIndex::new(vocab);
        let chars = byte_chars();
        let mut byte_ids = [None; 256];
        let mut char_bytes = vec![None; 0x144];
        for (b, c) in chars.iter().enumerate() {
            byte_ids[b] = index.get(vocab, c.encode_utf8(&mut [0; 4]));
            char_bytes[*c as usize] = Some(b as u8);
        }
        let mut table = hashbrown::HashMap::with_capacity_and_hasher(merges.len(), ahash::RandomState::new());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            let m = m.to_string().map_err(|e| Error::Tokenizer(format!("expected a string: {e}")))?;
            let (a, b) = m.split_once(' ').ok_or_else(|| Error::Tokenizer(format!("merge `{m}` is not two tokens separated by a space")))?;
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let id = |t: &str| index.get(vocab, t).ok_or_else(|| Error::Tokenizer(format!("merge `{m}`: `{t}` is not in the vocabulary")));
            let rank = u32::try_from(rank).map_err(|_| Error::Tokenizer("more than 2^32 merges".into()))?;
            // A pair listed twice keeps its first rank, as in llama.cpp.
            table.entry((id(a)?, id(b)?)).or_insert((rank, id(&joined)?));
        }
        let pre = fancy_regex::Regex::new(pre_tokenizer_regex(pre)).map_err(|e| Error::Tokenizer(format!("pre-tokenizer: {e}")))?;
        Ok(Self { merges: table, byte_ids, char_bytes, pre, specials: Specials::new(vocab)? })
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.specials.split(text, |segment| match segment {
            Segment::Special(id) => out.push(id),
            Segment::Text(t) => {
                // The regex's matches and the stretches between them are
                // pieces; a regex error (its backtracking limit) leaves the
                // rest as one piece.
                let mut pos = 0;
                for m in self.pre.find_iter(t) {
                    let Ok(m) = m else { break };
                    if m.start() > pos {
                        self.encode_piece(&t.as_bytes()[pos..m.start()], &mut out);
                    }
                    self.encode_piece(m.as_str().as_bytes(), &mut out);
                    pos = m.end();
                }
                if pos < t.len() {
                    self.encode_piece(&t.as_bytes()[pos..], &mut out);
                }
            }
        });
        out
    }

    /// Merges the byte tokens of one piece, lowest rank first and leftmost
    /// among equals (a queued pair is stale once either side has merged).
    fn encode_piece(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let ids: Vec<u32> = bytes.iter().filter_map(|&b| self.byte_ids[b as usize]).collect();
        let n = ids.len();
        let mut pieces: Vec<Piece> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Piece { id, prev: i.checked_sub(1).unwrap_or(NONE), next: if i + 1 < n { i + 1 } else { NONE }, alive: true })
            .collect();
        let mut queue = BinaryHeap::new();
        let pair = |pieces: &[Piece], left: usize| -> Option<Reverse<(u32, usize, u32)>> {
            let right = pieces[left].next;
            if right == NONE {
                return None;
            }
            self.merges.get(&(pieces[left].id, pieces[right].id)).map(|&(rank, merged)| Reverse((rank, left, merged)))
        };
        for i in 0..n.saturating_sub(1) {
            queue.extend(pair(&pieces, i));
        }
        while let Some(Reverse((_, left, merged))) = queue.pop() {
            let right = pieces[left].next;
            if !pieces[left].alive || right == NONE || self.merges.get(&(pieces[left].id, pieces[right].id)).is_none_or(|m| m.1 != merged) {
                continue;
            }
            pieces[left].id = merged;
            pieces[left].next = pieces[right].next;
            pieces[right].alive = false;
            if pieces[right].next != NONE {
                let after = pieces[right].next;
                pieces[after].prev = left;
            }
            if pieces[left].prev != NONE {
                queue.extend(pair(&pieces, pieces[left].prev));
            }
            queue.extend(pair(&pieces, left));
        }
        out.extend(pieces.iter().filter(|p| p.alive).map(|p| p.id));
    }

    /// Text of `ids`; control tokens are skipped, and a token that is not
    /// all table characters (an added one) stands for its own text.
    fn decode(&self, vocab: &Vocab, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.push_bytes(vocab, id, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Appends the bytes token `id` stands for in text (none for a control token).
    fn push_bytes(&self, vocab: &Vocab, id: u32, bytes: &mut Vec<u8>) {
        let Some(text) = vocab.get(id) else { return };
        if vocab.ty(id) == TOKEN_CONTROL {
            return;
        }
        let start = bytes.len();
        for c in text.chars() {
            match self.char_bytes.get(c as usize).copied().flatten() {
                Some(b) => bytes.push(b),
                None => {
                    bytes.truncate(start);
                    bytes.extend_from_slice(text.as_bytes());
                    break;
                }
            }
        }
    }
}
