//! The `rbee` command as a user runs it, on the fixture model.

#[path = "../../engine/tests/support/fixture.rs"]
mod fixture;

use std::path::Path;
use std::process::{Command, Output};

fn rbee(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbee")).arg("--data-dir").arg(data).args(args).output().expect("rbee runs")
}

fn ok(out: Output) -> (String, String) {
    let (so, se) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "rbee failed: {se}");
    (so, se)
}

#[test]
fn import_list_survive_a_corrupt_catalog_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (out, _) = ok(rbee(&data, &["models", "import", fixture::fixture().to_str().unwrap()]));
    assert!(out.contains("imported gemma-3-270m-q4_k_m (gemma3, Q4_K_M"), "{out}");
    let (before, _) = ok(rbee(&data, &["models", "ls"]));
    assert!(before.contains("gemma-3-270m-q4_k_m") && before.contains("a5fd3b62230a"), "{before}");

    std::fs::write(data.join("catalog.sqlite"), b"garbage garbage garbage garbage garbage garbage garbage garbage").unwrap();
    let (after, warn) = ok(rbee(&data, &["models", "ls"]));
    assert!(warn.contains("warning:") && warn.contains("rebuilt"), "{warn}");
    assert_eq!(after, before, "the same models are listed");
    let (_, warn) = ok(rbee(&data, &["models", "ls"]));
    assert!(!warn.contains("warning"), "repaired once, quiet after: {warn}");

    let (out, _) = ok(rbee(&data, &["models", "rm", "gemma-3"]));
    assert!(out.contains("removed gemma-3-270m-q4_k_m"), "{out}");
    let (out, _) = ok(rbee(&data, &["models", "ls"]));
    assert!(out.contains("no models"), "{out}");
}

#[test]
fn truncated_gguf_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(fixture::fixture()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = rbee(&dir.path().join("data"), &["models", "import", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cut.gguf") && err.contains("truncated"), "{err}");
}

#[test]
fn generate_streams_a_sensible_continuation_and_seeds_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(rbee(&data, &["models", "import", fixture::fixture().to_str().unwrap()]));
    let (greedy, _) = ok(rbee(&data, &["generate", "gemma-3-270m-q4_k_m", "The capital of France is", "--temperature", "0", "--max-tokens", "12"]));
    assert!(greedy.starts_with(" the capital of the country of France"), "llama.cpp's greedy continuation: {greedy}");
    let seeded = ["generate", "gemma-3-270m-q4_k_m", "The capital of France is", "--seed", "7", "--max-tokens", "24"];
    let a = rbee(&data, &seeded);
    let b = rbee(&data, &seeded);
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout, "same seed, identical bytes");
    let out = rbee(&data, &["generate", "nope", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("model `nope` not found"));
}
