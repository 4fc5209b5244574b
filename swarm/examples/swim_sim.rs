//! The membership protocol ([`rbee_swarm::swim`]) at sizes one machine
//! cannot run for real: a discrete-event simulation in virtual time, every
//! node the same state machine the swarm runs, messages delivered after a
//! LAN's latency (0.3–0.7 ms) or lost with a given probability. Messages go
//! to any member, as datagrams would (the swarm sends them over its
//! connections).
//!
//! `swim_sim NODES [LOSS_PERCENT]` prints, in virtual time:
//! - start-up: the nodes start within one second, each knowing one node
//!   started before it; how long until every node lists every other alive;
//! - how long the start-up's updates take to spread, then the steady
//!   state: messages and bytes (as JSON) per node per second;
//! - a node that stops answering (hung, cut off): until every other lists it
//!   down;
//! - a node that leaves: until every other lists it left;
//! - 60 s at the given loss: live nodes wrongly marked down (and suspicions).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rbee_swarm::swim::{Config, Event, Msg, State, Swim};

enum What {
    Wake(u32),
    Deliver { from: u32, to: u32, msg: Msg<u32> },
}

struct Sim {
    nodes: Vec<Swim<u32>>,
    /// Started and not stopped (a stopped node neither sends nor hears).
    running: Vec<bool>,
    /// The wake-up queued for each node (one at a time).
    wake_at: Vec<Option<Duration>>,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pending: std::collections::HashMap<u64, What>,
    next_id: u64,
    now: Duration,
    rng: StdRng,
    loss: f64,
    messages: u64,
    bytes: u64,
    /// Live nodes some node marked down, and suspicions raised.
    false_downs: u64,
    suspicions: u64,
}

impl Sim {
    fn new(n: u32, loss: f64) -> Self {
        let nodes = (0..n).map(|i| Swim::new(i, 1, Config::default(), u64::from(i) + 1)).collect();
        Self {
            nodes,
            running: vec![false; n as usize],
            wake_at: vec![None; n as usize],
            queue: BinaryHeap::new(),
            pending: std::collections::HashMap::new(),
            next_id: 0,
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(7),
            loss,
            messages: 0,
            bytes: 0,
            false_downs: 0,
            suspicions: 0,
        }
    }

    fn at(&mut self, t: Duration, w: What) {
        self.next_id += 1;
        self.queue.push(Reverse((t, self.next_id)));
        self.pending.insert(self.next_id, w);
    }

    /// Sends what node `i` wrote, handles its events, and wakes it when its
    /// timers next fall due.
    fn after(&mut self, i: u32) {
        let out = self.nodes[i as usize].take_outbox();
        for (to, msg) in out {
            self.messages += 1;
            self.bytes += serde_json::to_vec(&msg).map_or(0, |b| b.len() as u64);
            if self.rng.random_bool(self.loss) {
                continue;
            }
            let latency = Duration::from_micros(self.rng.random_range(300..700));
            self.at(self.now + latency, What::Deliver { from: i, to, msg });
        }
        for e in self.nodes[i as usize].take_events() {
            match e {
                // A member heard of is connected to, as the swarm would.
                Event::Alive(k) => self.nodes[i as usize].set_reachable(&k, true),
                Event::Suspect(_) => self.suspicions += 1,
                Event::Down(k) if self.running[k as usize] => self.false_downs += 1,
                _ => {}
            }
        }
        let wake = self.nodes[i as usize].next_wake().max(self.now + Duration::from_micros(100));
        if self.wake_at[i as usize].is_none_or(|w| wake < w) {
            self.wake_at[i as usize] = Some(wake);
            self.at(wake, What::Wake(i));
        }
    }

    fn start(&mut self, i: u32, via: Option<u32>) {
        self.running[i as usize] = true;
        if let Some(v) = via {
            let now = self.now;
            self.nodes[i as usize].meet(v, 1, true, now);
            self.nodes[v as usize].meet(i, 1, true, now);
            self.after(v);
        }
        self.after(i);
    }

    /// Runs until `until` (virtual), or until `done` holds (checked every 10 ms).
    fn run(&mut self, until: Duration, done: impl Fn(&Sim) -> bool) -> Option<Duration> {
        let mut check = self.now;
        while let Some(Reverse((t, id))) = self.queue.pop() {
            if t > until {
                self.queue.push(Reverse((t, id)));
                break;
            }
            self.now = t;
            let w = self.pending.remove(&id).expect("queued");
            match w {
                What::Wake(i) => {
                    // One superseded by an earlier one is stale.
                    if self.wake_at[i as usize] == Some(t) {
                        self.wake_at[i as usize] = None;
                        if self.running[i as usize] {
                            let now = self.now;
                            self.nodes[i as usize].tick(now);
                            self.after(i);
                        }
                    }
                }
                What::Deliver { from, to, msg } => {
                    if self.running[to as usize] {
                        let now = self.now;
                        self.nodes[to as usize].handle(from, msg, now);
                        self.after(to);
                    }
                }
            }
            if self.now >= check {
                check = self.now + Duration::from_millis(10);
                if done(self) {
                    return Some(self.now);
                }
            }
        }
        self.now = self.now.max(until);
        None
    }

    fn all_see(&self, pred: impl Fn(&Swim<u32>) -> bool) -> bool {
        self.nodes.iter().zip(&self.running).filter(|(_, r)| **r).all(|(n, _)| pred(n))
    }
}

fn secs(d: Option<Duration>, from: Duration) -> String {
    d.map_or("not within the limit".into(), |t| format!("{:.2} s", (t - from).as_secs_f64()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let loss_pct: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let mut sim = Sim::new(n, 0.0);

    // Start-up: node i starts at i/n seconds, knowing one node started before it.
    let spacing = Duration::from_secs(1) / n;
    for i in 0..n {
        sim.run(spacing * i, |_| false);
        let via = (i > 0).then(|| sim.rng.random_range(0..i));
        sim.start(i, via);
    }
    let started = sim.now;
    let all = n as usize - 1;
    let t = sim.run(started + Duration::from_secs(60), |s| s.all_see(|x| x.members().filter(|(_, st)| *st == State::Alive).count() == all));
    println!("{n} nodes started over 1 s, each knowing one other: every node lists all others alive {} after the last start", secs(t, started));

    // Steady state, once the start-up's news has been spread.
    let t0 = sim.now;
    let t = sim.run(t0 + Duration::from_secs(300), |s| s.nodes.iter().all(|x| x.pending() == 0));
    println!("  the start-up's updates all spread (no node has any left to send) {} later", secs(t, t0));
    let (m0, b0, t0) = (sim.messages, sim.bytes, sim.now);
    sim.run(t0 + Duration::from_secs(30), |_| false);
    let per = |x: u64| x as f64 / 30.0 / f64::from(n);
    println!(
        "  steady state, per node per second: {:.1} messages, {:.0} bytes sent (as JSON, before framing and encryption)",
        per(sim.messages - m0),
        per(sim.bytes - b0)
    );

    // A node stops answering.
    let victim = n / 2;
    sim.running[victim as usize] = false;
    let t0 = sim.now;
    let t = sim.run(t0 + Duration::from_secs(60), |s| s.all_see(|x| x.state(&victim) == Some(State::Down)));
    println!("  a node that stops answering: down in every registry after {}", secs(t, t0));

    // A node leaves.
    let leaver = n / 3;
    sim.nodes[leaver as usize].leave();
    sim.after(leaver);
    sim.running[leaver as usize] = false;
    let t0 = sim.now;
    let t = sim.run(t0 + Duration::from_secs(60), |s| s.all_see(|x| x.state(&leaver) == Some(State::Left)));
    println!("  a node that leaves: left in every registry after {}", secs(t, t0));

    // Loss.
    sim.loss = loss_pct / 100.0;
    let (f0, s0, t0) = (sim.false_downs, sim.suspicions, sim.now);
    sim.run(t0 + Duration::from_secs(60), |_| false);
    println!("  60 s at {loss_pct} % message loss: {} live nodes marked down by someone, {} suspicions raised", sim.false_downs - f0, sim.suspicions - s0);
}
