//! Many swarm nodes in one process on libp2p's memory transport: how long
//! the registry takes to converge and what the swarm costs each node on the
//! wire. Every node runs the real stack (pnet, Noise, Yamux, gossipsub,
//! identify, SWIM membership, snapshot exchange); only mDNS is replaced by dialing.
//!
//! `swarm_sim NODES [mesh|sparse] [SECONDS]`; `FULL_MESH` sets the mesh limit
//! (`Config::full_mesh`); `STAGGER_MS` spaces the
//! starts.
//!
//! - `mesh`: every node connects to every other, as mDNS makes on a LAN.
//! - `sparse`: every node dials three earlier ones (bootstrap lists only), so
//!   records travel through gossip, several hops.
//!
//! It prints: the time from starting all nodes until every registry lists
//! every node up; then, over SECONDS of steady state, bytes on the wire per
//! node per second (everything: gossip, probes, identify, their framing and
//! encryption) and the record bytes gossiped; then how long a node that joins
//! the converged swarm takes to be in every registry (and to see everyone).

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use rand::seq::IndexedRandom;
use rbee_swarm::{Client, Config, SwarmKey};

struct Node {
    client: Client,
    addr: Multiaddr,
}

fn start(key: SwarmKey, bootstrap: Vec<Multiaddr>) -> Node {
    let identity = Keypair::generate_ed25519();
    let peer = identity.public().to_peer_id();
    let listen: Multiaddr = format!("/memory/{}", rand::random::<u64>() >> 1).parse().expect("memory address");
    let mut cfg = Config::new(identity, key);
    cfg.listen = vec![listen.clone()];
    cfg.bootstrap = bootstrap;
    cfg.memory_transport = true;
    if let Some(n) = std::env::var("FULL_MESH").ok().and_then(|v| v.parse().ok()) {
        cfg.full_mesh = n;
    }
    let client = rbee_swarm::start(cfg).expect("swarm starts");
    let c = client.clone();
    tokio::spawn(async move { c.update(rbee_swarm::NodeRecord { hostname: format!("sim-{peer}"), share: true, ..Default::default() }).await });
    Node { client, addr: listen.with(Protocol::P2p(peer)) }
}

fn up(c: &Client) -> usize {
    c.peers().iter().filter(|p| p.up).count()
}

/// Waits until `done` holds; the time it took, or `None` after `limit`.
async fn until(limit: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if done() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// CPU time this process has used (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (in parentheses) come state, ppid, …: utime
    // and stime are the 12th and 13th fields there, in clock ticks (100/s).
    let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let tick = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((tick(11) + tick(12)) * 10)
}

/// Seconds between the progress lines printed while the nodes converge.
const PROGRESS_EVERY: u64 = 1;

fn bootstrap_for(topology: &str, earlier: &[Node]) -> Vec<Multiaddr> {
    if topology == "mesh" {
        earlier.iter().map(|n| n.addr.clone()).collect()
    } else {
        earlier.choose_multiple(&mut rand::rng(), 3).map(|n| n.addr.clone()).collect()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let topology = args.get(2).map_or("mesh", String::as_str).to_string();
    let window = Duration::from_secs(args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10));
    assert!(topology == "mesh" || topology == "sparse", "topology is mesh or sparse");
    let key = SwarmKey::generate();

    let t0 = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(n + 1);
    let stagger = Duration::from_millis(std::env::var("STAGGER_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    for _ in 0..n {
        let b = bootstrap_for(&topology, &nodes);
        nodes.push(start(key, b));
        tokio::time::sleep(stagger).await;
    }
    let started = t0.elapsed();
    let clients: Vec<Client> = nodes.iter().map(|x| x.client.clone()).collect();
    let progress = {
        let clients = clients.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(PROGRESS_EVERY)).await;
                let sum = |f: fn(&rbee_swarm::node::Stats) -> u64| clients.iter().map(|c| f(&c.stats)).sum::<u64>();
                use std::sync::atomic::Ordering::Relaxed;
                eprintln!(
                    "  … registries list {}..{} up; wire in {} KiB, records in {} KiB, rejected {}, gossip dropped {}, membership msgs {}, record syncs {}, connections opened {} closed {}",
                    clients.iter().map(up).min().unwrap_or(0),
                    clients.iter().map(up).max().unwrap_or(0),
                    sum(|s| s.wire_bytes_in.load(Relaxed)) / 1024,
                    sum(|s| s.gossip_bytes_in.load(Relaxed)) / 1024,
                    sum(|s| s.rejected.load(Relaxed)),
                    sum(|s| s.gossip_dropped.load(Relaxed)),
                    sum(|s| s.swim_out.load(Relaxed)),
                    sum(|s| s.record_syncs.load(Relaxed)),
                    sum(|s| s.connections_opened.load(Relaxed)),
                    sum(|s| s.connections_closed.load(Relaxed)),
                );
            }
        })
    };
    let converged = until(Duration::from_secs(60), || clients.iter().all(|c| up(c) == n)).await;
    progress.abort();
    let Some(_) = converged else {
        let worst = clients.iter().map(up).min().unwrap_or(0);
        let (o, c) = clients.iter().fold((0, 0), |(o, c), x| {
            (
                o + x.stats.connections_opened.load(std::sync::atomic::Ordering::Relaxed),
                c + x.stats.connections_closed.load(std::sync::atomic::Ordering::Relaxed),
            )
        });
        println!("{n} nodes ({topology}): NOT converged within 60 s (a registry lists only {worst}; connections opened {o}, closed {c})");
        std::process::exit(1);
    };
    println!(
        "{n} nodes ({topology}): every registry lists all {n} up {:.0} ms after the first node started (starting them took {:.0} ms; {:.1} s of CPU)",
        t0.elapsed().as_secs_f64() * 1e3,
        started.as_secs_f64() * 1e3,
        cpu_time().as_secs_f64()
    );

    // Steady state: let the start-up traffic settle, then count a window.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let wire = |c: &Client| {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &c.stats;
        (
            s.wire_bytes_in.load(Relaxed),
            s.wire_bytes_out.load(Relaxed),
            s.gossip_bytes_in.load(Relaxed),
            s.gossip_bytes_out.load(Relaxed),
            s.swim_out.load(Relaxed),
            s.record_syncs.load(Relaxed),
        )
    };
    let before: Vec<_> = clients.iter().map(wire).collect();
    let (cpu0, w0) = (cpu_time(), Instant::now());
    tokio::time::sleep(window).await;
    let secs = w0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let after: Vec<_> = clients.iter().map(wire).collect();
    let per_node: Vec<[f64; 6]> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            [
                (a.0 - b.0) as f64 / secs,
                (a.1 - b.1) as f64 / secs,
                (a.2 - b.2) as f64 / secs,
                (a.3 - b.3) as f64 / secs,
                (a.4 - b.4) as f64 / secs,
                (a.5 - b.5) as f64 / secs,
            ]
        })
        .collect();
    let mean = |i: usize| per_node.iter().map(|x| x[i]).sum::<f64>() / n as f64;
    let max = |i: usize| per_node.iter().map(|x| x[i]).fold(0.0, f64::max);
    let still = clients.iter().all(|c| up(c) == n);
    println!(
        "  steady state over {secs:.1} s, per node per second: wire in {:.1} KiB (max {:.1}), out {:.1} KiB (max {:.1}); \
         records received {:.1} KiB, published {:.2} KiB; membership messages sent {:.1}, record syncs {:.2}; \
         CPU {:.1} ms per node per second; all still up: {still}",
        mean(0) / 1024.0,
        max(0) / 1024.0,
        mean(1) / 1024.0,
        max(1) / 1024.0,
        mean(2) / 1024.0,
        mean(3) / 1024.0,
        mean(4),
        mean(5),
        cpu / secs / n as f64 * 1e3,
    );

    // A change on one node (a model loaded, say) reaches every registry.
    let mut times = Vec::new();
    for round in 0..5 {
        let who = &clients[round * 7 % n];
        let wid = rbee_swarm::NodeId::from(who.peer_id);
        let host = format!("changed-{round}");
        let t0 = Instant::now();
        who.update(rbee_swarm::NodeRecord { hostname: host.clone(), share: true, ..Default::default() }).await.expect("update");
        let seen = |c: &Client| c.peers().iter().any(|p| p.node_id == wid && p.record.hostname == host);
        match until(Duration::from_secs(10), || clients.iter().all(seen)).await {
            Some(_) => times.push(t0.elapsed().as_secs_f64() * 1e3),
            None => println!("  a change did not reach every registry within 10 s ({} of {n})", clients.iter().filter(|c| seen(c)).count()),
        }
    }
    times.sort_by(f64::total_cmp);
    if !times.is_empty() {
        println!(
            "  a record change in every registry after {:.0} ms (median of {}; worst {:.0} ms)",
            times[times.len() / 2],
            times.len(),
            times[times.len() - 1]
        );
    }

    // One more node joins the converged swarm.
    let b = if topology == "mesh" { bootstrap_for("mesh", &nodes) } else { vec![nodes.choose(&mut rand::rng()).expect("nodes").addr.clone()] };
    let t0 = Instant::now();
    let new = start(key, b);
    let id = rbee_swarm::NodeId::from(new.client.peer_id);
    let everywhere = until(Duration::from_secs(30), || clients.iter().all(|c| c.peers().iter().any(|p| p.up && p.node_id == id))).await.map(|_| t0.elapsed());
    let seen_everyone = until(Duration::from_secs(30).saturating_sub(t0.elapsed()), || up(&new.client) == n + 1).await.map(|_| t0.elapsed());
    let ms = |d: Option<Duration>| d.map_or("not within 30 s".to_string(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3));
    println!(
        "  a joining node ({}): in all {n} registries after {}, sees all {} after {}",
        if topology == "mesh" { "dials everyone, as mDNS would" } else { "knows one peer" },
        ms(everywhere),
        n + 1,
        ms(seen_everyone)
    );
    if !still || everywhere.is_none() || seen_everyone.is_none() {
        std::process::exit(1);
    }
    nodes.push(new);
}
