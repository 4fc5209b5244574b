//! Where the fixture models are: the one helper every test uses.

use std::path::PathBuf;

/// The fixture model (Gemma 3 270M Q4_K_M). The test command fetches it
/// (e2e/fetch-fixture.sh) and exports `RBEE_FIXTURE`; the default is the
/// cache path that script uses.
pub fn fixture() -> PathBuf {
    let path = std::env::var_os("RBEE_FIXTURE").map(PathBuf::from).unwrap_or_else(|| cached("gemma-3-270m-q4_k_m.gguf"));
    present(path, "gemma3")
}

/// An instruct fixture by the name `e2e/fetch-fixture.sh` takes:
/// `smollm2` (SmolLM2-135M-Instruct Q4_1) or `qwen-coder`
/// (Qwen2.5-Coder-1.5B-Instruct Q4_K_M), from the cache that script fills
/// (the test command runs it for each).
#[allow(dead_code)] // the node's tests include this file for `fixture` alone
pub fn instruct(name: &str) -> PathBuf {
    let file = match name {
        "smollm2" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen-coder" => "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        other => panic!("no instruct fixture named {other}"),
    };
    present(cached(file), name)
}

fn cached(file: &str) -> PathBuf {
    let cache = std::env::var_os("RBEE_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"))
            .join("rbee")
    });
    cache.join("fixtures").join(file)
}

fn present(path: PathBuf, name: &str) -> PathBuf {
    assert!(path.exists(), "fixture model missing at {}: run e2e/fetch-fixture.sh {name} (the test command does)", path.display());
    path
}

/// The device the engine's model tests run on: `RBEE_DEVICE` (`cpu`,
/// `cuda:0`, ...) or, unset, the first GPU this build can use, as the node
/// picks. `e2e/gpu/run.sh` runs the same tests on CUDA this way.
#[allow(dead_code)] // as `instruct`
pub fn device() -> rbee_engine::Device {
    let name = std::env::var("RBEE_DEVICE").unwrap_or_default();
    rbee_engine::hardware::device_named(&name).unwrap_or_else(|e| panic!("RBEE_DEVICE: {e}"))
}
