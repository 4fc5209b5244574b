//! `POST /v1/embeddings` on a real socket with tiny generated embedding
//! models: OpenAI's shapes, float and base64, dimensions, token inputs, and
//! every refusal in OpenAI's error format.

mod support;
// The engine's generators of tiny models; both support modules bring the
// fixture helpers along.
#[allow(clippy::duplicate_mod)]
#[path = "../../engine/tests/support/mod.rs"]
mod tiny;

use base64::Engine as _;
use serde_json::{Value, json};
use support::TestNode;

async fn post(node: &TestNode, body: Value) -> (u16, Value) {
    let res = node.post("/v1/embeddings", &body).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_answer_as_openai_does_and_refuse_what_they_cannot() {
    let node = TestNode::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let store = node.state.engine.store();
    let bert = store.import(&tiny::tiny("bert").write_in(dir.path(), "tiny-bert"), None).unwrap().id;
    let nomic = store.import(&tiny::tiny("nomic-bert").write_in(dir.path(), "tiny-nomic"), None).unwrap().id;

    // One string, a list, token ids: one unit vector per input, in order.
    let (s, one) = post(&node, json!({"model": bert, "input": "the hive"})).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["object"], "list");
    assert_eq!(one["model"], bert.as_str());
    let v: Vec<f64> = one["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!((one["data"][0]["object"].as_str(), one["data"][0]["index"].as_u64(), v.len()), (Some("embedding"), Some(0), 64));
    assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    assert_eq!(one["usage"]["prompt_tokens"], 4, "[CLS] the hive [SEP]: {one}");
    assert_eq!(one["usage"]["total_tokens"], 4);
    let (_, many) = post(&node, json!({"model": bert, "input": ["a bee", "the hive", "honey"]})).await;
    let data = many["data"].as_array().unwrap();
    assert_eq!(data.iter().map(|d| d["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(data[1]["embedding"], one["data"][0]["embedding"], "the same text, the same vector in a batch");
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    let (_, ids) = post(&node, json!({"model": bert, "input": [2, 5, 10, 3]})).await;
    assert_eq!(ids["data"][0]["embedding"], one["data"][0]["embedding"], "token ids of the same text");
    let (_, lists) = post(&node, json!({"model": bert, "input": [[2, 5, 10, 3], [2, 10, 3]]})).await;
    assert_eq!(lists["data"].as_array().unwrap().len(), 2);

    // base64: little-endian f32s, the same numbers.
    let (_, b64) = post(&node, json!({"model": bert, "input": "the hive", "encoding_format": "base64"})).await;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let floats: Vec<f64> = bytes.chunks(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect();
    assert!(floats.iter().zip(&v).all(|(a, b)| (a - b).abs() < 1e-6));

    // dimensions: the first n, at unit length.
    let (_, cut) = post(&node, json!({"model": nomic, "input": "the hive", "dimensions": 8})).await;
    let c: Vec<f64> = cut["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(c.len(), 8);
    assert!((c.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);

    // Refusals: status, OpenAI's error object, the field at fault.
    for (body, status, param) in [
        (json!({"model": bert}), 400, "input"),
        (json!({"model": bert, "input": []}), 400, "input"),
        (json!({"model": bert, "input": ""}), 400, "input"),
        (json!({"model": bert, "input": [99999]}), 400, "input"),
        (json!({"model": bert, "input": [-1]}), 400, "input"),
        (json!({"model": bert, "input": "the ".repeat(600)}), 400, "input"),
        (json!({"model": bert, "input": "x", "encoding_format": "hex"}), 400, "encoding_format"),
        (json!({"model": bert, "input": "x", "dimensions": 0}), 400, "dimensions"),
        (json!({"model": bert, "input": "x", "dimensions": 65}), 400, "dimensions"),
        (json!({"model": "", "input": "x"}), 400, "model"),
        (json!({"model": "no-such-model", "input": "x"}), 404, "model"),
        (json!({"model": support::MODEL, "input": "x"}), 400, "model"),
    ] {
        let (s, e) = post(&node, body.clone()).await;
        assert_eq!((s, e["error"]["param"].as_str()), (status, Some(param)), "{body}: {e}");
        assert!(e["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (_, e) = post(&node, json!({"model": support::MODEL, "input": "x"})).await;
    assert!(e["error"]["message"].as_str().unwrap().contains("chat model"), "{e}");
    assert_eq!(e["error"]["code"], "model_not_supported");
    // An embedding model asked to chat says what it is.
    let res = node.post("/v1/chat/completions", &json!({"model": bert, "messages": [{"role": "user", "content": "hi"}]})).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let e: Value = res.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("embedding model"), "{e}");
    // After all that, it still answers.
    let (s, again) = post(&node, json!({"model": bert, "input": "the hive"})).await;
    assert_eq!((s, &again["data"][0]["embedding"]), (200, &one["data"][0]["embedding"]));
    node.stop().await.unwrap();
}
