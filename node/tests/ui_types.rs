//! The UI's TypeScript types (`ui/src/api.ts`) checked against what a real
//! node answers: every field the UI declares must be there, of the declared
//! type, so a change on either side that the other does not follow fails
//! here rather than in a user's window.

mod support;

use std::collections::HashMap;

use serde_json::Value;
use support::TestNode;

/// One declared field: name, whether optional (`?`), its type as written.
type Field = (String, bool, String);

/// Splits `s` at `sep` where no bracket or quote is open.
fn split_top(s: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, false);
    for c in s.chars() {
        match c {
            '"' => quote = !quote,
            '{' | '(' | '[' | '<' if !quote => depth += 1,
            '}' | ')' | ']' | '>' if !quote => depth -= 1,
            _ => {}
        }
        if c == sep && depth == 0 && !quote {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

fn fields(body: &str) -> Vec<Field> {
    let body: String = body.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n").replace('\n', ";");
    split_top(&body, ';')
        .into_iter()
        .filter_map(|f| {
            let (name, ty) = f.split_once(':')?;
            let name = name.trim();
            let optional = name.ends_with('?');
            Some((name.trim_end_matches('?').to_string(), optional, ty.trim().to_string()))
        })
        .collect()
}

fn interfaces(ts: &str) -> HashMap<String, Vec<Field>> {
    let mut out = HashMap::new();
    let mut rest = ts;
    while let Some(i) = rest.find("export interface ") {
        rest = &rest[i + "export interface ".len()..];
        let name = rest.split_whitespace().next().unwrap().to_string();
        let open = rest.find('{').unwrap();
        let close = rest.find("\n}").unwrap();
        out.insert(name, fields(&rest[open + 1..close]));
        rest = &rest[close..];
    }
    out
}

/// Why `v` does not have type `ty`, if it does not.
fn check(v: &Value, ty: &str, ifaces: &HashMap<String, Vec<Field>>, at: &str) -> Result<(), String> {
    let alts = split_top(ty, '|');
    let mut why = Vec::new();
    for alt in &alts {
        let ok = match alt.as_str() {
            "null" => v.is_null().then_some(()).ok_or_else(|| format!("{at}: not null")),
            "string" => v.is_string().then_some(()).ok_or_else(|| format!("{at}: not a string: {v}")),
            "number" => v.is_number().then_some(()).ok_or_else(|| format!("{at}: not a number: {v}")),
            "boolean" => v.is_boolean().then_some(()).ok_or_else(|| format!("{at}: not a boolean: {v}")),
            a if a.starts_with('"') => (v.as_str() == Some(a.trim_matches('"'))).then_some(()).ok_or_else(|| format!("{at}: not {a}: {v}")),
            a if a.ends_with("[]") => match v.as_array() {
                Some(items) => items.iter().enumerate().try_for_each(|(i, x)| check(x, &a[..a.len() - 2], ifaces, &format!("{at}[{i}]"))),
                None => Err(format!("{at}: not an array: {v}")),
            },
            a if a.starts_with('{') => object(v, &fields(&a[1..a.len() - 1]), ifaces, at),
            a => match ifaces.get(a) {
                Some(f) => object(v, f, ifaces, at),
                None => Err(format!("{at}: type {a} is not one this test knows")),
            },
        };
        match ok {
            Ok(()) => return Ok(()),
            Err(e) => why.push(e),
        }
    }
    Err(why.join(" / "))
}

fn object(v: &Value, fields: &[Field], ifaces: &HashMap<String, Vec<Field>>, at: &str) -> Result<(), String> {
    let Some(o) = v.as_object() else { return Err(format!("{at}: not an object: {v}")) };
    for (name, optional, ty) in fields {
        match o.get(name) {
            Some(x) => check(x, ty, ifaces, &format!("{at}.{name}"))?,
            None if *optional => {}
            None => return Err(format!("{at}.{name}: missing (the UI declares it)")),
        }
    }
    Ok(())
}

#[tokio::test]
async fn what_nodes_answer_matches_the_ui_types() {
    let ts = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../ui/src/api.ts")).unwrap();
    let ifaces = interfaces(&ts);
    for name in ["Swarm", "Peer", "Settings", "Model", "ModelLocation", "Offer"] {
        assert!(ifaces.contains_key(name), "api.ts declares {name}");
    }
    let dir = tempfile::tempdir().unwrap();
    let code = rbee_swarm::SwarmKey::generate().join_code();
    let in_swarm = TestNode::start(|o| {
        o.swarm_key = Some(code);
        o.swarm_listen = Some("/ip4/127.0.0.1/tcp/0".into());
        o.mdns = Some(false);
    })
    .await;
    let mut cfg = rbee_node::Config::resolve(rbee_node::config::Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(support::data_dir()),
        ..Default::default()
    })
    .unwrap();
    cfg.config_file = Some(dir.path().join("config.toml"));
    let alone = TestNode::start_with(cfg).await;
    let client = reqwest::Client::new();
    client.post(format!("{}/api/settings/new-swarm", alone.url)).send().await.unwrap().error_for_status().unwrap();
    // The swarm node's own record appears within a refresh.
    let mut swarm = Value::Null;
    for _ in 0..50 {
        swarm = reqwest::get(format!("{}/api/swarm", in_swarm.url)).await.unwrap().json().await.unwrap();
        if swarm["peers"].as_array().is_some_and(|p| !p.is_empty() && !p[0]["record"]["models_on_disk"].as_array().unwrap().is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (what, url, ty) in [
        ("a swarm", format!("{}/api/swarm", in_swarm.url), "Swarm"),
        ("no swarm", format!("{}/api/swarm", alone.url), "Swarm"),
        ("settings", format!("{}/api/settings", alone.url), "Settings"),
        ("settings in a swarm", format!("{}/api/settings", in_swarm.url), "Settings"),
        ("models", format!("{}/v1/models", in_swarm.url), "{ data: Model[] }"),
        ("models alone", format!("{}/v1/models", alone.url), "{ data: Model[] }"),
        ("recommended", format!("{}/api/models/recommended", alone.url), "{ memory_bytes: number; data: Offer[] }"),
    ] {
        let v: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        check(&v, ty, &ifaces, what).unwrap_or_else(|e| panic!("{e}\n{v:#}"));
    }
    assert!(!swarm["peers"].as_array().unwrap().is_empty(), "{swarm}");
    // The server's own types read their JSON back (`rbee peers` does).
    let _: rbee_node::swarm::View = serde_json::from_value(swarm).unwrap();
    in_swarm.stop().await.unwrap();
    alone.stop().await.unwrap();
}
