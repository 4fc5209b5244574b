//! Several swarm nodes in one process on libp2p's memory transport (the real
//! pnet, Noise, Yamux, gossipsub and snapshot exchange; no mDNS).

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use rbee_swarm::record::{LoadedModel, ModelOnDisk};
use rbee_swarm::{Client, Config, NodeRecord, SwarmKey};

fn node(key: SwarmKey, host: &str, bootstrap: Vec<Multiaddr>) -> (Client, Multiaddr) {
    let (client, addr) = silent_node(key, bootstrap);
    let c = client.clone();
    let host = host.to_string();
    tokio::spawn(async move { c.update(NodeRecord { hostname: host, share: true, ..Default::default() }).await });
    (client, addr)
}

/// A node whose owner has not given it a record yet.
fn silent_node(key: SwarmKey, bootstrap: Vec<Multiaddr>) -> (Client, Multiaddr) {
    let identity = Keypair::generate_ed25519();
    let peer = identity.public().to_peer_id();
    let port: u64 = rand::random::<u64>() >> 1;
    let listen: Multiaddr = format!("/memory/{port}").parse().unwrap();
    let mut cfg = Config::new(identity, key);
    cfg.listen = vec![listen.clone()];
    cfg.bootstrap = bootstrap;
    cfg.memory_transport = true;
    cfg.redial = Duration::from_millis(200);
    let client = rbee_swarm::start(cfg).unwrap();
    (client, listen.with(libp2p::multiaddr::Protocol::P2p(peer)))
}

/// Waits until `pred` holds for the registry of `c`; panics after 10 s.
async fn until(c: &Client, what: &str, pred: impl Fn(&[rbee_swarm::PeerView]) -> bool) -> Duration {
    let start = Instant::now();
    let mut w = c.watch();
    loop {
        if pred(&w.borrow_and_update()) {
            return start.elapsed();
        }
        if tokio::time::timeout(Duration::from_secs(10).saturating_sub(start.elapsed()), w.changed()).await.is_err() {
            panic!("{what}: not within 10 s; registry: {:#?}", c.peers());
        }
    }
}

fn up_hosts(v: &[rbee_swarm::PeerView]) -> Vec<String> {
    let mut h: Vec<String> = v.iter().filter(|p| p.up).map(|p| p.record.hostname.clone()).collect();
    h.sort();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_registry_and_one_that_leaves_is_shown_as_left_at_once() {
    let key = SwarmKey::generate();
    let (a, a_addr) = node(key, "a", vec![]);
    let (b, b_addr) = node(key, "b", vec![a_addr.clone()]);
    // A full mesh, as mDNS makes on a LAN.
    let (c, _) = node(key, "c", vec![a_addr.clone(), b_addr]);
    for n in [&a, &b, &c] {
        let t = until(n, "all three", |v| up_hosts(v) == ["a", "b", "c"]).await;
        eprintln!("{} sees all three after {t:?}", n.peer_id);
    }
    // A change to one record reaches the others.
    c.update(NodeRecord {
        hostname: "c".into(),
        share: true,
        models_on_disk: vec![ModelOnDisk { id: "gemma".into(), ..Default::default() }],
        models_loaded: vec![LoadedModel { id: "gemma".into(), slots: 2, ..Default::default() }],
        ..Default::default()
    })
    .await
    .unwrap();
    let c_id = rbee_swarm::NodeId::from(c.peer_id);
    until(&a, "c's model", |v| v.iter().any(|p| p.node_id == c_id && p.record.models_loaded.len() == 1)).await;
    // C's swarm stops (its last handle dropped): it closes its connections
    // and the others mark it down without waiting for the TTL. (A killed
    // process's sockets close the same way: e2e/lan tests that.)
    drop(c);
    for n in [&a, &b] {
        let t = until(n, "c left", |v| v.iter().any(|p| p.node_id == c_id && p.status == rbee_swarm::registry::Status::Left)).await;
        assert!(t < Duration::from_secs(1), "left after {t:?}, not at once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_connects_to_no_one() {
    let key = SwarmKey::generate();
    let (a, a_addr) = node(key, "a", vec![]);
    let (b, _) = node(key, "b", vec![a_addr.clone()]);
    let (stranger, _) = node(SwarmKey::generate(), "stranger", vec![a_addr.clone()]);
    until(&a, "a and b", |v| up_hosts(v) == ["a", "b"]).await;
    until(&stranger, "stranger's own record", |v| up_hosts(v) == ["stranger"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(up_hosts(&a.peers()), ["a", "b"]);
    assert_eq!(up_hosts(&b.peers()), ["a", "b"]);
    assert_eq!(stranger.peers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_with_a_higher_incarnation_and_no_duplicate() {
    let key = SwarmKey::generate();
    let (a, a_addr) = node(key, "a", vec![]);
    let identity = Keypair::generate_ed25519();
    let start_b = |host: &str| {
        let mut cfg = Config::new(identity.clone(), key);
        cfg.listen = vec![format!("/memory/{}", rand::random::<u64>() >> 1).parse().unwrap()];
        cfg.bootstrap = vec![a_addr.clone()];
        cfg.memory_transport = true;
        cfg.redial = Duration::from_millis(200);
        let c = rbee_swarm::start(cfg).unwrap();
        let (c2, host) = (c.clone(), host.to_string());
        tokio::spawn(async move { c2.update(NodeRecord { hostname: host, ..Default::default() }).await });
        c
    };
    let b = start_b("b-first");
    until(&a, "b", |v| up_hosts(v) == ["a", "b-first"]).await;
    let first = a.peers().iter().find(|p| p.record.hostname == "b-first").unwrap().record.incarnation;
    drop(b);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _b = start_b("b-second");
    until(&a, "b again", |v| up_hosts(v) == ["a", "b-second"]).await;
    let v = a.peers();
    assert_eq!(v.len(), 2, "one entry per node");
    assert!(v.iter().find(|p| p.record.hostname == "b-second").unwrap().record.incarnation > first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_know_only_one_hub_connect_to_each_other_through_the_records() {
    let key = SwarmKey::generate();
    let (hub, hub_addr) = node(key, "hub", vec![]);
    let leaves: Vec<Client> = ["b", "c", "d"].iter().map(|h| node(key, h, vec![hub_addr.clone()]).0).collect();
    for n in leaves.iter().chain([&hub]) {
        until(n, "all four", |v| up_hosts(v) == ["b", "c", "d", "hub"]).await;
    }
    // A leaf pings (so is connected to) the other leaves, not only the hub:
    // a star would leave most of them out of the hub's gossip mesh.
    let start = Instant::now();
    for a in &leaves {
        for b in &leaves {
            if a.peer_id != b.peer_id {
                while a.rtt(&rbee_swarm::NodeId::from(b.peer_id)).is_none() {
                    assert!(start.elapsed() < Duration::from_secs(10), "{} never connected to {}", a.peer_id, b.peer_id);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_see_a_node_first_with_the_record_its_owner_gave_never_a_blank_one() {
    let key = SwarmKey::generate();
    let (a, a_addr) = silent_node(key, vec![]);
    let a_id = rbee_swarm::NodeId::from(a.peer_id);
    let (b, _) = node(key, "b", vec![a_addr]);
    // Everything b ever lists for a, from the start.
    let mut w = b.watch();
    let watched = a_id.clone();
    let seen = tokio::spawn(async move {
        let mut hosts = Vec::new();
        loop {
            if let Some(p) = w.borrow_and_update().iter().find(|p| p.node_id == watched) {
                hosts.push(p.record.hostname.clone());
                if p.record.hostname == "a" {
                    return hosts;
                }
            }
            if w.changed().await.is_err() {
                return hosts;
            }
        }
    });
    // Connected: b's record reaches a. Two seconds later b still has no entry for a.
    until(&a, "b's record at a", |v| up_hosts(v) == ["b"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(b.peers().iter().all(|p| p.node_id != a_id), "b lists a before a's owner gave its record: {:#?}", b.peers());
    a.update(NodeRecord { hostname: "a".into(), share: true, ..Default::default() }).await.unwrap();
    let hosts = tokio::time::timeout(Duration::from_secs(10), seen).await.expect("b sees a's record").unwrap();
    assert_eq!(hosts, ["a"], "what b listed for a");
}
