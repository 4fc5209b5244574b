//! rbee's byte-level BPE against Hugging Face's `tokenizers`, built from the
//! same GGUF metadata, on the two real byte-level vocabularies (SmolLM2's
//! 49 152 tokens, Qwen2.5's 151 665): the same ids for every text and the
//! same text for every id sequence.

mod support;

use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value;
use rbee_engine::gguf::Gguf;
use rbee_engine::tokenizer::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The pre-tokenizer regexes as published with each family's tokenizer.json.
fn regex(pre: &str) -> &'static str {
    match pre {
        "qwen2" => r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        _ => r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    }
}

/// The model's tokenizer as Hugging Face's library runs it: its BPE model
/// with the GGUF's vocabulary and merges, the regex split, byte-level
/// mapping, and control and user-defined tokens added (control ones special).
fn hugging_face(g: &Gguf) -> tokenizers::Tokenizer {
    let strings = |key: &str| g.get_array(key).unwrap().iter().map(|v| v.to_string().unwrap().clone()).collect::<Vec<String>>();
    let tokens = strings("tokenizer.ggml.tokens");
    let types: Vec<i32> = g.get_array("tokenizer.ggml.token_type").unwrap().iter().map(|t: &Value| t.to_i32().unwrap()).collect();
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = strings("tokenizer.ggml.merges").iter().map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).unwrap()).collect();
    let mut tk = tokenizers::Tokenizer::new(BPE::builder().vocab_and_merges(vocab, merges).build().unwrap());
    let split = Split::new(SplitPattern::Regex(regex(g.get_str("tokenizer.ggml.pre").unwrap()).into()), SplitDelimiterBehavior::Isolated, false).unwrap();
    tk.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()])));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(t, ty)| matches!(**ty, CONTROL | USER_DEFINED) && !t.is_empty())
        .map(|(t, ty)| AddedToken::from(t.clone(), *ty == CONTROL).normalized(false))
        .collect();
    tk.add_tokens(added).unwrap();
    tk
}

struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Texts that exercise the regex's branches and the byte mapping: scripts,
/// contractions in both cases, digit runs, whitespace runs and line ends,
/// controls, emoji, special tokens written in the text.
fn corpus() -> Vec<String> {
    let parts = [
        "a",
        "the",
        "The",
        " ",
        "  ",
        "   ",
        "\n",
        "\n\n",
        "\r\n",
        "\t",
        " \t ",
        "'s",
        "'S",
        "'ll",
        "'LL",
        "'ve",
        "'re",
        "'d",
        "'m",
        "'t",
        "123",
        "4567890",
        "3.14159",
        "-42",
        "1e-9",
        "0x1F",
        "é",
        "café",
        "ß",
        "Straße",
        "日本",
        "東京は",
        "北京欢迎你",
        "🐝",
        "🍯🚀",
        "∑∫√",
        "≠≤→",
        "€£¥",
        "Привет",
        "мир",
        "مرحبا",
        "नमस्ते",
        "ǅ",
        "１２３",
        "Ⅷ",
        "\u{a0}",
        "\u{200b}",
        "\u{0}",
        "\u{7f}",
        "\u{ad}",
        "!!!",
        "...",
        "(",
        ")",
        "{\n",
        "}",
        "def ",
        "x=1",
        "    return",
        "#",
        "//",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<tool_call>",
        "<think>",
        "<",
        "|",
        ">",
        "'",
        "\"",
        "`",
        "ǂ",
        "\u{fffd}",
    ];
    let mut texts: Vec<String> = [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "def add(a, b):\n    return a + b  # two  spaces\n\n\tindent\r\nend",
        "   leading spaces and trailing   ",
        "",
        "I'M SURE YOU'LL SEE IT'S FINE",
        &" ".repeat(300),
        &"\n".repeat(50),
        &"9".repeat(40),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut r = Lcg(11);
    for _ in 0..3000 {
        let n = 1 + r.below(24);
        texts.push((0..n).map(|_| parts[r.below(parts.len())]).collect());
    }
    texts
}

fn agrees(name: &str) {
    let g = Gguf::open(&support::instruct(name)).unwrap();
    let ours = Tokenizer::from_gguf(&g).unwrap();
    let theirs = hugging_face(&g);
    let mut tokens = 0;
    let (mut ours_time, mut theirs_time) = (Duration::ZERO, Duration::ZERO);
    for text in corpus() {
        let t = Instant::now();
        let ids = ours.encode(&text).unwrap();
        ours_time += t.elapsed();
        let t = Instant::now();
        let want = theirs.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        theirs_time += t.elapsed();
        assert_eq!(ids, want, "{name}: ids of {text:?}");
        assert_eq!(ours.decode(&ids).unwrap(), theirs.decode(&ids, true).unwrap(), "{name}: text of {ids:?}");
        tokens += ids.len();
    }
    // Any ids, control and partial-character ones included.
    let mut r = Lcg(5);
    let n = ours.vocab_size();
    for _ in 0..2000 {
        let ids: Vec<u32> = (0..1 + r.below(8)).map(|_| if r.below(4) == 0 { (n - 1 - r.below(300)) as u32 } else { r.below(n) as u32 }).collect();
        assert_eq!(ours.decode(&ids).unwrap(), theirs.decode(&ids, true).unwrap(), "{name}: text of {ids:?}");
    }
    eprintln!("{name}: 3008 texts ({tokens} tokens) and 2000 id sequences agree; encoding took {ours_time:?} here, {theirs_time:?} in tokenizers");
}

#[test]
fn smollm2_tokenizes_as_hugging_face_tokenizers() {
    agrees("smollm2");
}

#[test]
fn qwen_tokenizes_as_hugging_face_tokenizers() {
    agrees("qwen-coder");
}
