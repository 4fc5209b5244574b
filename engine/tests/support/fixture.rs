//! Where the fixture model is: the one helper every test uses.

use std::path::PathBuf;

/// The fixture model (Gemma 3 270M Q4_K_M). The test command fetches it
/// (e2e/fetch-fixture.sh) and exports `RBEE_FIXTURE`; the default is the
/// cache path that script uses.
pub fn fixture() -> PathBuf {
    let path = std::env::var_os("RBEE_FIXTURE").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
        cache.join("rbee/fixtures/gemma-3-270m-q4_k_m.gguf")
    });
    assert!(path.exists(), "fixture model missing at {}: run e2e/fetch-fixture.sh (the test command does)", path.display());
    path
}
