//! Finding models on the Hugging Face hub (or a mirror of its API) for
//! people who do not know it: GGUF repositories matching a search, and a
//! repository's GGUF files with their size, quantization and where they
//! would fit. The node asks the hub it pulls from; the page never does.

use serde::{Deserialize, Serialize};

/// One repository a search found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Repo {
    pub repo: String,
    pub downloads: u64,
    pub likes: u64,
}

/// One GGUF file of a repository.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct File {
    pub file: String,
    pub size_bytes: u64,
    /// From the file name ("Q4_K_M", "Q8_0", "F16"); "" when it names none.
    pub quantization: String,
    /// Memory it needs to run (the weights and room for the KV cache).
    pub needs_bytes: u64,
    /// Whether that fits this machine's memory.
    pub fits: bool,
    /// The other live machines of the swarm it would fit on.
    pub fits_on: Vec<String>,
}

/// What a file needs to run: its weights plus a fifth (at least 256 MB)
/// for the KV cache and buffers (the recommended list reckons the same).
pub fn needs(size: u64) -> u64 {
    size + (size / 5).max(256_000_000)
}

/// The quantization a GGUF file's name gives, in capitals.
pub fn quantization(file: &str) -> String {
    let stem = file.rsplit('/').next().unwrap_or(file).trim_end_matches(".gguf").to_ascii_uppercase();
    stem.split(['-', '.'])
        .rev()
        .find(|t| {
            let t = t.strip_prefix('I').unwrap_or(t);
            (t.starts_with('Q') && t[1..].starts_with(|c: char| c.is_ascii_digit())) || matches!(t, "F16" | "BF16" | "F32")
        })
        .unwrap_or_default()
        .to_string()
}

/// A repository name as the hub spells one: `owner/name`, letters, digits,
/// `-`, `_` and `.`; anything else is refused before a request is made.
pub fn valid_repo(repo: &str) -> bool {
    let ok = |p: &str| !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    matches!(repo.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
}

fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(15)).build().map_err(|e| e.to_string())
}

fn url(endpoint: &str, segments: &[&str]) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(endpoint).map_err(|e| format!("{endpoint}: {e}"))?;
    url.path_segments_mut().map_err(|()| format!("{endpoint} cannot be a base URL"))?.pop_if_empty().extend(segments);
    Ok(url)
}

async fn get_json<T: for<'de> Deserialize<'de>>(url: reqwest::Url) -> Result<T, String> {
    let res = client()?.get(url.clone()).send().await.map_err(|e| format!("the model hub ({}) cannot be reached: {e}", url.origin().ascii_serialization()))?;
    if !res.status().is_success() {
        return Err(format!("the model hub answered {} for {}", res.status(), url.path()));
    }
    res.json().await.map_err(|e| format!("the model hub's answer was not understood: {e}"))
}

#[derive(Deserialize)]
struct HubModel {
    id: String,
    #[serde(default)]
    downloads: u64,
    #[serde(default)]
    likes: u64,
}

/// GGUF repositories whose name matches `query`, most downloaded first.
///
/// # Errors
/// The hub cannot be reached or answers with something else than a list.
pub async fn search(endpoint: &str, query: &str) -> Result<Vec<Repo>, String> {
    let mut url = url(endpoint, &["api", "models"])?;
    url.query_pairs_mut().append_pair("search", query).append_pair("filter", "gguf").append_pair("sort", "downloads").append_pair("limit", "20");
    let found: Vec<HubModel> = get_json(url).await?;
    Ok(found.into_iter().map(|m| Repo { repo: m.id, downloads: m.downloads, likes: m.likes }).collect())
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    size: u64,
}

/// The GGUF files of `repo` (its main branch), smallest first, with where
/// each would fit: `memory` is this machine's, `peers` the other live
/// machines' (hostname, memory).
///
/// # Errors
/// The hub cannot be reached, or has no such repository.
pub async fn files(endpoint: &str, repo: &str, memory: u64, peers: &[(String, u64)]) -> Result<Vec<File>, String> {
    let mut segments = vec!["api", "models"];
    segments.extend(repo.split('/'));
    segments.extend(["tree", "main"]);
    let entries: Vec<Entry> = get_json(url(endpoint, &segments)?).await?;
    let mut out: Vec<File> = entries
        .into_iter()
        .filter(|e| e.kind == "file" && e.path.to_ascii_lowercase().ends_with(".gguf"))
        .map(|e| {
            let size = e.lfs.map_or(e.size, |l| l.size);
            let needs_bytes = needs(size);
            File {
                quantization: quantization(&e.path),
                fits: needs_bytes <= memory,
                fits_on: peers.iter().filter(|(_, m)| needs_bytes <= *m).map(|(h, _)| h.clone()).collect(),
                file: e.path,
                size_bytes: size,
                needs_bytes,
            }
        })
        .collect();
    out.sort_by_key(|f| f.size_bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_comes_from_the_file_name() {
        for (file, q) in [
            ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
            ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
            ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
            ("gemma-3-270m-it-F16.gguf", "F16"),
            ("sub/dir/model-bf16.gguf", "BF16"),
            ("model.gguf", ""),
        ] {
            assert_eq!(quantization(file), q, "{file}");
        }
    }

    #[test]
    fn only_owner_slash_name_is_a_repository() {
        assert!(valid_repo("unsloth/gemma-3-270m-it-GGUF"));
        assert!(valid_repo("bartowski/Qwen2.5-1.5B_x.y"));
        for bad in ["", "gemma", "a/b/c", "../etc", "a/..", "a b/c", "a/b?x=1", "a/b#f", "/b"] {
            assert!(!valid_repo(bad), "{bad}");
        }
    }
}
