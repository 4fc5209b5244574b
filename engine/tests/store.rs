//! The model store: catalog, import, remove, rebuild, and pulls from a local
//! server that speaks the Hugging Face hub's download protocol.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rbee_engine::Error;
use rbee_engine::store::{Progress, ProgressFn, Source, Store, hash_file};
use support::hub::{hub_for, serve, serve_empty};
use support::{Tiny, tiny};

#[test]
fn import_list_remove() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny("qwen3").write_in(dir.path(), "My Model");
    let store = Store::open(&dir.path().join("data")).unwrap();
    let e = store.import(&src, None).unwrap();
    assert_eq!(e.id, "my-model");
    assert_eq!((e.architecture.as_str(), e.context_length), ("qwen3", 4096));
    assert_eq!(e.sha256, hash_file(&src).unwrap());
    assert!(e.path.starts_with(dir.path().join("data/models")));
    assert_eq!(store.import(&src, None).unwrap().id, "my-model", "importing the same file again is a no-op");
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.get("my-").unwrap().id, "my-model", "unique prefixes resolve");
    store.remove("my-model").unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!e.path.exists());
    assert!(matches!(store.remove("my-model"), Err(Error::ModelNotFound(_))));
}

#[test]
fn leftovers_of_killed_imports_are_swept_at_start_but_running_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let models = data.join("models");
    std::fs::create_dir_all(models.join(".upload-dead")).unwrap();
    std::fs::write(models.join(".import-dead"), vec![0u8; 4096]).unwrap();
    std::fs::write(models.join(".upload-dead/m.gguf"), b"partial").unwrap();
    // One still being written by someone else: locked.
    std::fs::create_dir_all(models.join(".upload-live")).unwrap();
    let live = std::fs::File::create(models.join(".upload-live/m.gguf")).unwrap();
    live.lock().unwrap();
    let store = Store::open(&data).unwrap();
    assert!(store.warnings().iter().any(|w| w.contains("removed 2 unfinished")), "{:?}", store.warnings());
    assert!(!models.join(".import-dead").exists());
    assert!(!models.join(".upload-dead").exists());
    assert!(models.join(".upload-live/m.gguf").exists());
}

#[test]
fn bad_files_are_refused_and_nothing_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny("llama").write_in(dir.path(), "m");
    let bytes = std::fs::read(&src).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    let err = store.import(&cut, None).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = store.import(&dir.path().join("missing.gguf"), None).unwrap_err();
    assert!(err.to_string().contains("missing.gguf"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("data/models")).unwrap().count(), 0, "no leftovers");
}

#[test]
fn corrupt_or_deleted_catalog_is_rebuilt_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, b) = (tiny("llama").write_in(dir.path(), "alpha"), tiny("gemma3").write_in(dir.path(), "beta"));
    let before = {
        let store = Store::open(&data).unwrap();
        store.import(&a, None).unwrap();
        store.import(&b, None).unwrap();
        store.list().unwrap()
    };
    std::fs::write(data.join("catalog.sqlite"), vec![0xA5u8; 8192]).unwrap();
    let store = Store::open(&data).unwrap();
    assert!(store.warnings().iter().any(|w| w.contains("unreadable")), "{:?}", store.warnings());
    assert_eq!(store.list().unwrap(), before, "same models, same sources, same checksums");
    drop(store);

    std::fs::remove_file(data.join("catalog.sqlite")).unwrap();
    let store = Store::open(&data).unwrap();
    assert!(store.warnings().iter().any(|w| w.contains("missing")), "{:?}", store.warnings());
    assert_eq!(store.list().unwrap(), before);
    drop(store);

    // A file deleted behind the catalog's back is dropped with a warning.
    std::fs::remove_file(&before[0].path).unwrap();
    let store = Store::open(&data).unwrap();
    assert!(store.warnings().iter().any(|w| w.contains("is gone")), "{:?}", store.warnings());
    assert_eq!(store.list().unwrap(), before[1..]);
}

#[tokio::test]
async fn pull_resumes_a_transfer_cut_off_halfway() {
    let dir = tempfile::tempdir().unwrap();
    // ~20 MB: three 8 MiB chunks.
    let src = Tiny { ffn: 32768, n_layer: 3, ..tiny("llama") }.write_in(dir.path(), "big");
    let hub = hub_for(&src);
    let size = hub.bytes.len() as u64;
    assert!(size > 16 << 20, "test file spans three chunks ({size} bytes)");
    let endpoint = serve(hub.clone()).await;
    let store = Store::open(&dir.path().join("data")).unwrap();

    // The second chunk is cut halfway; hf-hub (one file at a time, chunks in
    // order on this single-threaded runtime) has committed the first.
    hub.cut_at.store(8 << 20, Ordering::SeqCst);
    let err = store.pull(&endpoint, "acme/tiny-GGUF", "tiny-q8_0.gguf", "main", None).await.unwrap_err();
    assert!(matches!(err, Error::Download(_)), "{err}");
    assert!(store.list().unwrap().is_empty());

    hub.ranges.lock().unwrap().clear();
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let s = seen.clone();
    let progress: ProgressFn = Arc::new(move |p| s.lock().unwrap().push(p));
    let e = store.pull(&endpoint, "acme/tiny-GGUF", "tiny-q8_0.gguf", "main", Some(progress)).await.unwrap();
    let ranges = hub.ranges.lock().unwrap().clone();
    let data: Vec<&String> = ranges.iter().filter(|r| *r != "bytes=0-0").collect();
    let resumed = format!("bytes={}-{}", 8 << 20, (16 << 20) - 1);
    assert!(data.iter().any(|r| **r == resumed), "the second chunk is fetched again: {ranges:?}");
    assert!(!data.iter().any(|r| r.starts_with("bytes=0-")), "the committed first chunk is not fetched again: {ranges:?}");
    assert_eq!(e.sha256, hash_file(&src).unwrap());
    assert_eq!(e.id, "tiny-q8_0");
    assert_eq!(e.source, Source::HuggingFace { repo: "acme/tiny-GGUF".into(), file: "tiny-q8_0.gguf".into(), revision: "main".into(), copied: None });
    assert_eq!(hash_file(&e.path).unwrap(), e.sha256);
    let seen = seen.lock().unwrap();
    assert!(matches!(seen.first(), Some(Progress::Started { total, .. }) if *total == size), "{:?}", seen.first());
    assert!(seen.iter().any(|p| matches!(p, Progress::Advanced { done } if *done == size)), "progress reaches the full size");
    assert_eq!(seen.last(), Some(&Progress::Finished));
}

#[tokio::test]
async fn pull_rejects_a_corrupted_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny("qwen2").write_in(dir.path(), "m");
    let mut hub = hub_for(&src);
    hub.etag = "ab".repeat(32); // what the hub says the sha256 is
    let endpoint = serve(hub).await;
    let store = Store::open(&dir.path().join("data")).unwrap();
    let err = store.pull(&endpoint, "acme/m", "m.gguf", "main", None).await.unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn pull_of_a_missing_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    let err = store.pull(&serve_empty().await, "acme/none", "x.gguf", "main", None).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}
