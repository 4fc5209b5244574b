//! Tokenizers rebuilt from GGUF metadata, on tiny vocabularies of both kinds.

mod support;

use rbee_engine::gguf::Gguf;
use rbee_engine::tokenizer::Tokenizer;
use support::{Tiny, Vocab, tiny};

fn build(t: &Tiny) -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = t.write_in(dir.path(), "tok");
    let tk = Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
    (dir, tk)
}

fn pieces(tk: &Tokenizer, text: &str) -> Vec<String> {
    tk.encode(text).unwrap().iter().map(|&i| tk.token(i).unwrap().to_string()).collect()
}

#[test]
fn sentencepiece_merges_by_score_and_falls_back_to_bytes() {
    let (_d, tk) = build(&tiny("llama"));
    assert_eq!(pieces(&tk, "hello the world"), ["▁hello", "▁the", "▁world"]);
    // "é" is not in the vocabulary: its two UTF-8 bytes become byte tokens.
    assert_eq!(pieces(&tk, "hé"), ["▁h", "<0xC3>", "<0xA9>"]);
    for text in ["hello the world", "hé", "a  b c", "日本"] {
        assert_eq!(tk.decode(&tk.encode(text).unwrap()).unwrap(), text, "round trip of {text:?}");
    }
    assert_eq!(tk.encode_prompt("hello").unwrap()[0], 2, "llama vocabularies start with BOS");
}

#[test]
fn special_and_user_defined_tokens_are_matched_in_text() {
    let (_d, tk) = build(&tiny("gemma3"));
    assert_eq!(pieces(&tk, "<start_of_turn>hello\n"), ["<start_of_turn>", "he", "llo", "\n"]);
    assert!(tk.end_of_generation.contains(&1), "EOS ends generation");
    let eot = tk.encode("<end_of_turn>").unwrap();
    assert_eq!(eot.len(), 1);
    assert!(tk.end_of_generation.contains(&eot[0]), "<end_of_turn> ends generation");
    // Gemma has no space prefix.
    assert_eq!(pieces(&tk, "hello"), ["he", "llo"]);
}

#[test]
fn byte_level_bpe_applies_merges() {
    let (_d, tk) = build(&tiny("qwen2"));
    assert_eq!(pieces(&tk, "hello the world"), ["hello", "Ġthe", "Ġworld"]);
    for text in ["hello the world", "héllo ✓", "tabs\tand\nnewlines  ", "<|im_start|>user"] {
        assert_eq!(tk.decode(&tk.encode(text).unwrap()).unwrap().replace("<|im_start|>", ""), text.replace("<|im_start|>", ""));
    }
    assert_eq!(pieces(&tk, "<|im_start|>user")[0], "<|im_start|>");
    assert!(!tk.encode_prompt("hi").unwrap().contains(&2), "byte-level vocabularies here add no BOS");
}

#[test]
fn streamed_text_never_splits_a_character() {
    for t in [tiny("llama"), tiny("qwen2")] {
        let (_d, tk) = build(&t);
        let text = "hé 日本 🐝!";
        let ids = tk.encode(text).unwrap();
        let mut stream = tk.stream();
        let mut out = String::new();
        let mut held = 0;
        for id in ids {
            match stream.step(id).unwrap() {
                Some(piece) => out.push_str(&piece),
                None => held += 1,
            }
        }
        // A stream continues earlier text, so it keeps the space that a
        // SentencePiece vocabulary puts in front ("▁hé" streams as " hé").
        let want = if t.vocab == Vocab::SentencePiece { format!(" {text}") } else { text.to_string() };
        assert_eq!(out, want, "{:?}", t.vocab);
        assert!(held > 0, "{:?}: multi-byte characters span several tokens and are held back", t.vocab);
    }
    assert_eq!(Vocab::SentencePiece, tiny("phi3").vocab);
}

#[test]
fn a_streamed_continuation_keeps_its_leading_space() {
    // The first generated token after "The capital of France is" is "▁the";
    // dropping its space would glue the words together.
    let (_d, tk) = build(&tiny("llama"));
    let the = tk.encode("the").unwrap();
    assert_eq!(pieces(&tk, "the"), ["▁the"]);
    assert_eq!(tk.stream().step(the[0]).unwrap().as_deref(), Some(" the"));
    assert_eq!(tk.decode(&the).unwrap(), "the", "whole-text decoding undoes the prefixed space");
}
