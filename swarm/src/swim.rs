//! Who is alive: SWIM membership (Das, Gupta and Motivala, DSN 2002) with
//! Lifeguard's local health and shrinking suspicion (Dadgar et al., 2018),
//! as a state machine without I/O.
//!
//! Each period a node probes one member, round-robin over a shuffled list:
//! a `Ping` answered by an `Ack`. No ack within the ack timeout → it asks
//! up to `indirect` others to probe the member for it (`PingReq`; they
//! answer with the member's ack, or a `Nack` when the member did not answer
//! them). Still nothing at the end of the period → the member is suspected.
//! A suspected member that hears of it refutes with a higher incarnation;
//! one that does not is down when its suspicion times out. The timeout
//! starts long and shrinks as other members independently suspect the
//! same member (Lifeguard), so a lone slow observer cannot convict anyone
//! quickly while a real failure seen by many is confirmed fast.
//!
//! State changes ride on the probes (each message carries the least-sent
//! updates, each update sent about `retransmit_mult · log10(N+1)` times) and,
//! while there are updates to spread, on gossip to three random members a
//! round. Every message also carries a digest of the membership; a member
//! whose digest differs is sent the whole list (anti-entropy): with no
//! change anywhere a node sends only its probes and their acks, whatever
//! the size of the swarm.
//!
//! A node that sees itself failing (probes unanswered while the members it
//! asked to help answered, suspicions of itself to refute) is likelier slow
//! than its peers dead: it raises its local health multiplier, which
//! stretches its period and timeouts, and lowers it again on each
//! answered probe (Lifeguard).
//!
//! Time is a `Duration` since any fixed start, passed in: the node's event
//! loop passes the wall clock, the simulation (`examples/swim_sim.rs`) a
//! virtual one.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Timings and limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// One probe per period.
    pub period: Duration,
    /// A direct probe unanswered this long asks others to probe.
    pub ack_timeout: Duration,
    /// How many others are asked.
    pub indirect: usize,
    /// The shortest suspicion lasts `suspicion_mult · max(1, log10 N)`
    /// periods.
    pub suspicion_mult: u32,
    /// The longest (no one else suspects too) is this many times that.
    pub suspicion_max_mult: u32,
    /// Each update is piggybacked `retransmit_mult · ⌈log10(N + 1)⌉` times.
    pub retransmit_mult: u32,
    /// Updates carried by one message.
    pub max_piggyback: usize,
    /// While updates are pending, this many random members get them each
    /// `gossip_interval`.
    pub gossip_fanout: usize,
    pub gossip_interval: Duration,
    /// This node starts anti-entropy (sends its membership to a peer whose
    /// digest differs) at most this often.
    pub sync_interval: Duration,
    /// The local health multiplier's ceiling (periods and timeouts stretch
    /// up to `1 + lhm_max` times).
    pub lhm_max: u32,
    /// A member down or left this long is forgotten.
    pub forget_after: Duration,
}

impl Default for Config {
    /// For a LAN: half-second probes, a 200 ms ack timeout (a round trip
    /// on a LAN is under a millisecond; a TCP retransmission takes 200 ms),
    /// suspicion of 0.5–1.5 s in swarms of up to ten nodes (1–3 s at 100).
    fn default() -> Self {
        Self {
            period: Duration::from_millis(500),
            ack_timeout: Duration::from_millis(200),
            indirect: 3,
            suspicion_mult: 1,
            suspicion_max_mult: 3,
            retransmit_mult: 4,
            max_piggyback: 16,
            gossip_fanout: 3,
            gossip_interval: Duration::from_millis(100),
            sync_interval: Duration::from_millis(500),
            lhm_max: 8,
            forget_after: Duration::from_secs(60),
        }
    }
}

/// What is known of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Alive,
    /// Probes went unanswered; down unless it refutes in time.
    Suspect,
    /// Crashed, hung or cut off.
    Down,
    /// Said goodbye.
    Left,
}

impl State {
    /// Down or left: not to be probed or routed to.
    pub fn gone(self) -> bool {
        matches!(self, State::Down | State::Left)
    }
}

/// A change of one member's state, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update<K> {
    pub node: K,
    pub inc: u64,
    pub state: State,
    /// Who suspects (suspicions only): independent suspicions shorten the
    /// timeout.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub by: Option<K>,
}

fn none<K>() -> Option<K> {
    None
}

/// What a message asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Kind<K> {
    Ping {
        seq: u64,
    },
    Ack {
        seq: u64,
    },
    /// Probe `target` for me and answer `Ack { seq }` or `Nack { seq }`.
    PingReq {
        seq: u64,
        target: K,
    },
    Nack {
        seq: u64,
    },
    /// Carries only updates (gossip while updates are pending, a goodbye).
    Gossip,
    /// The sender's whole membership (anti-entropy); `reply` asks for the
    /// receiver's in return.
    Sync {
        members: Vec<Update<K>>,
        reply: bool,
    },
}

/// One message between members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg<K> {
    #[serde(flatten)]
    pub kind: Kind<K>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub gossip: Vec<Update<K>>,
    /// The sender's membership digest.
    #[serde(default)]
    pub digest: u64,
}

/// A change the owner of the state machine acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<K> {
    /// A member heard of for the first time, or back after being down.
    Alive(K),
    Suspect(K),
    Down(K),
    Left(K),
    /// A down or left member kept for `forget_after` is dropped.
    Forgotten(K),
    /// A direct probe's round trip.
    Rtt(K, Duration),
}

#[derive(Debug, Clone)]
struct Member<K> {
    inc: u64,
    state: State,
    /// When it entered `state`.
    since: Duration,
    /// Those who suspect it (suspect only).
    suspecters: BTreeSet<K>,
    /// Whether there is a way to reach it now (a connection).
    reachable: bool,
}

#[derive(Debug)]
struct Probe<K> {
    target: K,
    seq: u64,
    started: Duration,
    indirect_sent: usize,
    acked: bool,
    nacks: usize,
}

#[derive(Debug)]
struct Relay<K> {
    origin: K,
    origin_seq: u64,
    nack_at: Duration,
    expires: Duration,
    nacked: bool,
}

/// One node's view of the membership.
#[derive(Debug)]
pub struct Swim<K> {
    me: K,
    inc: u64,
    cfg: Config,
    members: HashMap<K, Member<K>>,
    order: Vec<K>,
    next: usize,
    probe: Option<Probe<K>>,
    next_probe: Duration,
    relays: HashMap<u64, Relay<K>>,
    seq: u64,
    /// Updates to spread, with how often each has been sent.
    pending: Vec<(Update<K>, u32)>,
    next_gossip: Duration,
    /// When this node last sent its membership unasked (once per
    /// `sync_interval` at most, whatever the number of peers that differ).
    last_sync: Option<Duration>,
    lhm: u32,
    leaving: bool,
    /// Taking in a peer's whole membership (anti-entropy): what it brings
    /// is not passed on (the digests reconcile the rest).
    syncing: bool,
    digest: u64,
    rng: StdRng,
    outbox: Vec<(K, Msg<K>)>,
    events: Vec<Event<K>>,
}

impl<K: Clone + Eq + Hash + Ord + Debug> Swim<K> {
    /// `inc` is this run's first incarnation: a node that restarts must
    /// start above the last one it used (the node passes its start time in
    /// milliseconds), so that its return is news.
    pub fn new(me: K, inc: u64, cfg: Config, seed: u64) -> Self {
        Self {
            digest: entry_hash(&me, inc),
            me,
            inc,
            cfg,
            members: HashMap::new(),
            order: Vec::new(),
            next: 0,
            probe: None,
            next_probe: Duration::ZERO,
            relays: HashMap::new(),
            seq: 0,
            pending: Vec::new(),
            next_gossip: Duration::ZERO,
            last_sync: None,
            lhm: 0,
            leaving: false,
            syncing: false,
            rng: StdRng::seed_from_u64(seed),
            outbox: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn incarnation(&self) -> u64 {
        self.inc
    }

    /// The local health multiplier (0 = healthy).
    pub fn health(&self) -> u32 {
        self.lhm
    }

    pub fn state(&self, k: &K) -> Option<State> {
        self.members.get(k).map(|m| m.state)
    }

    /// Updates waiting to be spread.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Members not down or left (this node not included).
    pub fn alive_count(&self) -> usize {
        self.members.values().filter(|m| !m.state.gone()).count()
    }

    /// Every member and its state.
    pub fn members(&self) -> impl Iterator<Item = (&K, State)> {
        self.members.iter().map(|(k, m)| (k, m.state))
    }

    /// Messages to send, to whom.
    pub fn take_outbox(&mut self) -> Vec<(K, Msg<K>)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn take_events(&mut self) -> Vec<Event<K>> {
        std::mem::take(&mut self.events)
    }

    /// A member met directly (a connection opened, its record arrived)
    /// with incarnation `inc`: alive if new, or if `inc` is newer than
    /// what is known.
    pub fn meet(&mut self, k: K, inc: u64, reachable: bool, now: Duration) {
        if k == self.me {
            return;
        }
        self.apply(Update { node: k.clone(), inc, state: State::Alive, by: None }, now);
        if let Some(m) = self.members.get_mut(&k) {
            m.reachable |= reachable;
        }
    }

    /// Whether `k` can be reached now (a connection is open): only those
    /// are probed or asked to probe.
    pub fn set_reachable(&mut self, k: &K, reachable: bool) {
        if let Some(m) = self.members.get_mut(k) {
            m.reachable = reachable;
        }
    }

    /// The connection to `k` closed: the process died or the machine is
    /// gone (a live one refutes and reconnects).
    pub fn closed(&mut self, k: &K, now: Duration) {
        let Some(m) = self.members.get_mut(k) else { return };
        m.reachable = false;
        if !m.state.gone() {
            let inc = m.inc;
            self.apply(Update { node: k.clone(), inc, state: State::Down, by: None }, now);
        }
    }

    /// Says goodbye to every member this node can reach: they show it as
    /// left, not crashed. Nothing is probed afterwards.
    pub fn leave(&mut self) {
        self.leaving = true;
        let bye = Update { node: self.me.clone(), inc: self.inc, state: State::Left, by: None };
        let to: Vec<K> = self.members.iter().filter(|(_, m)| m.reachable && !m.state.gone()).map(|(k, _)| k.clone()).collect();
        for k in to {
            self.outbox.push((k, Msg { kind: Kind::Gossip, gossip: vec![bye.clone()], digest: self.digest }));
        }
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub fn next_wake(&self) -> Duration {
        let mut t = self.next_probe;
        if let Some(p) = &self.probe {
            t = t.min(if p.indirect_sent == 0 && !p.acked {
                p.started + self.stretch(self.cfg.ack_timeout)
            } else {
                p.started + self.stretch(self.cfg.period)
            });
        }
        if !self.pending.is_empty() {
            t = t.min(self.next_gossip);
        }
        for r in self.relays.values() {
            t = t.min(if r.nacked { r.expires } else { r.nack_at });
        }
        let n = self.members.len();
        for m in self.members.values() {
            match m.state {
                State::Suspect => t = t.min(m.since + self.suspicion_timeout(n, m.suspecters.len())),
                State::Down | State::Left => t = t.min(m.since + self.cfg.forget_after),
                State::Alive => {}
            }
        }
        t
    }

    /// Does what is due at `now`: probes, indirect probes, suspicions that
    /// ran out, gossip, forgetting.
    pub fn tick(&mut self, now: Duration) {
        if self.leaving {
            return;
        }
        self.expire_relays(now);
        self.run_probe(now);
        self.expire_suspicions(now);
        if !self.pending.is_empty() && now >= self.next_gossip {
            self.next_gossip = now + self.cfg.gossip_interval;
            let targets = self.random_reachable(self.cfg.gossip_fanout, None);
            for k in targets {
                let gossip = self.piggyback(&k);
                if gossip.is_empty() {
                    break;
                }
                self.outbox.push((k, Msg { kind: Kind::Gossip, gossip, digest: self.digest }));
            }
        }
        let forget = self.cfg.forget_after;
        let gone: Vec<K> = self.members.iter().filter(|(_, m)| m.state.gone() && now.saturating_sub(m.since) >= forget).map(|(k, _)| k.clone()).collect();
        for k in gone {
            let m = self.members.remove(&k).expect("listed");
            self.digest ^= entry_hash(&k, m.inc);
            self.events.push(Event::Forgotten(k));
        }
    }

    /// A message from `from`.
    pub fn handle(&mut self, from: K, msg: Msg<K>, now: Duration) {
        if self.leaving {
            return;
        }
        for u in msg.gossip {
            self.apply(u, now);
        }
        match msg.kind {
            Kind::Ping { seq } => self.send(from.clone(), Kind::Ack { seq }),
            Kind::Ack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.acked = true;
                    if p.indirect_sent == 0 && from == p.target {
                        self.events.push(Event::Rtt(from.clone(), now.saturating_sub(p.started)));
                    }
                } else if let Some(r) = self.relays.remove(&seq) {
                    self.send(r.origin, Kind::Ack { seq: r.origin_seq });
                }
            }
            Kind::Nack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.nacks += 1;
                }
            }
            Kind::PingReq { seq, target } => {
                self.seq += 1;
                let mine = self.seq;
                let ack = self.cfg.ack_timeout;
                self.relays
                    .insert(mine, Relay { origin: from.clone(), origin_seq: seq, nack_at: now + ack * 4 / 5, expires: now + self.cfg.period, nacked: false });
                self.send(target, Kind::Ping { seq: mine });
            }
            Kind::Gossip => {}
            Kind::Sync { members, reply } => {
                self.syncing = true;
                for u in members {
                    self.apply(u, now);
                }
                self.syncing = false;
                if reply && msg.digest != self.digest {
                    self.sync_to(from.clone(), false);
                }
                return;
            }
        }
        if msg.digest != 0 && msg.digest != self.digest && self.members.get(&from).is_some_and(|m| m.reachable) {
            let due = self.last_sync.is_none_or(|t| now.saturating_sub(t) >= self.cfg.sync_interval);
            if due {
                self.last_sync = Some(now);
                self.sync_to(from, true);
            }
        }
    }

    fn sync_to(&mut self, to: K, reply: bool) {
        let mut members: Vec<Update<K>> = self.members.iter().map(|(k, m)| Update { node: k.clone(), inc: m.inc, state: m.state, by: None }).collect();
        members.push(Update { node: self.me.clone(), inc: self.inc, state: State::Alive, by: None });
        self.outbox.push((to, Msg { kind: Kind::Sync { members, reply }, gossip: Vec::new(), digest: self.digest }));
    }

    /// Takes in one update; news is passed on.
    fn apply(&mut self, u: Update<K>, now: Duration) {
        if u.node == self.me {
            // Suspected, declared down or left while alive: refute with a higher
            // incarnation (and take it as a sign of being slow).
            // A "left" this node did not say is refuted too: a peer cannot
            // make a live node look shut down.
            if matches!(u.state, State::Suspect | State::Down | State::Left) && u.inc >= self.inc && !self.leaving {
                let old = self.inc;
                self.inc = u.inc + 1;
                self.digest ^= entry_hash(&self.me, old) ^ entry_hash(&self.me, self.inc);
                self.lhm = (self.lhm + 1).min(self.cfg.lhm_max);
                self.enqueue(Update { node: self.me.clone(), inc: self.inc, state: State::Alive, by: None });
            }
            return;
        }
        let Some(m) = self.members.get_mut(&u.node) else {
            // Unknown: only news of a live member adds it (a stranger's
            // death is no news).
            if u.state == State::Alive {
                self.members.insert(u.node.clone(), Member { inc: u.inc, state: State::Alive, since: now, suspecters: BTreeSet::new(), reachable: false });
                self.digest ^= entry_hash(&u.node, u.inc);
                let at = if self.order.is_empty() { 0 } else { self.rng.random_range(0..=self.order.len()) };
                self.order.insert(at, u.node.clone());
                self.events.push(Event::Alive(u.node.clone()));
                self.enqueue(u);
            }
            return;
        };
        let old_inc = m.inc;
        let news = match (m.state, u.state) {
            // A higher incarnation of a live member refutes anything older.
            (_, State::Alive) => u.inc > m.inc,
            (State::Alive, State::Suspect) => u.inc >= m.inc,
            // Another suspicion of the same incarnation: a confirmation.
            (State::Suspect, State::Suspect) if u.inc == m.inc => {
                if let Some(by) = &u.by
                    && m.suspecters.insert(by.clone())
                    && m.suspecters.len() <= self.cfg.indirect + 1
                {
                    self.enqueue(u);
                }
                return;
            }
            (State::Suspect, State::Suspect) => u.inc > m.inc,
            (State::Alive | State::Suspect, State::Down | State::Left) => u.inc >= m.inc,
            (State::Down, State::Left) => u.inc >= m.inc,
            (State::Down | State::Left, State::Suspect | State::Down) | (State::Left, State::Left) => u.inc > m.inc,
        };
        if !news {
            return;
        }
        let before = m.state;
        m.inc = u.inc;
        m.state = u.state;
        m.since = now;
        m.suspecters.clear();
        if let Some(by) = &u.by {
            m.suspecters.insert(by.clone());
        }
        if old_inc != u.inc {
            self.digest ^= entry_hash(&u.node, old_inc) ^ entry_hash(&u.node, u.inc);
        }
        let ev = match (before, u.state) {
            (State::Down | State::Left, State::Alive) => Some(Event::Alive(u.node.clone())),
            (_, State::Suspect) if before != State::Suspect => Some(Event::Suspect(u.node.clone())),
            (State::Suspect, State::Alive) => Some(Event::Alive(u.node.clone())),
            (_, State::Down) => Some(Event::Down(u.node.clone())),
            (_, State::Left) => Some(Event::Left(u.node.clone())),
            _ => None,
        };
        if let Some(e) = ev {
            self.events.push(e);
        }
        self.enqueue(u);
    }

    /// Queues an update to spread, replacing an older one of the same node.
    fn enqueue(&mut self, u: Update<K>) {
        // A refutation of this node's own death is always spread.
        if self.syncing && u.node != self.me {
            return;
        }
        self.pending.retain(|(p, _)| p.node != u.node || (p.state == State::Suspect && u.state == State::Suspect && p.by != u.by));
        self.pending.push((u, 0));
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.members.len() as f64 + 1.0;
        self.cfg.retransmit_mult * ((n + 1.0).log10().ceil().max(1.0) as u32)
    }

    /// The least-sent pending updates, those about `to` first (a suspect
    /// learns of its suspicion from the probes themselves).
    fn piggyback(&mut self, to: &K) -> Vec<Update<K>> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let limit = self.retransmit_limit();
        self.pending.sort_by_key(|(u, sent)| (u.node != *to, *sent));
        let take = self.pending.len().min(self.cfg.max_piggyback);
        let out: Vec<Update<K>> = self.pending[..take].iter().map(|(u, _)| u.clone()).collect();
        for p in &mut self.pending[..take] {
            p.1 += 1;
        }
        self.pending.retain(|(_, sent)| *sent < limit);
        out
    }

    fn send(&mut self, to: K, kind: Kind<K>) {
        let mut gossip = self.piggyback(&to);
        // A probe of a member held suspect or down tells it so, even once
        // that news is no longer being spread (Lifeguard's buddy system).
        if matches!(kind, Kind::Ping { .. })
            && let Some(m) = self.members.get(&to).filter(|m| matches!(m.state, State::Suspect | State::Down))
            && !gossip.iter().any(|u| u.node == to)
        {
            gossip.push(Update { node: to.clone(), inc: m.inc, state: m.state, by: None });
        }
        self.outbox.push((to, Msg { kind, gossip, digest: self.digest }));
    }

    fn stretch(&self, d: Duration) -> Duration {
        d * (1 + self.lhm)
    }

    /// Lifeguard's suspicion timeout: from `max` with no confirmation down
    /// to `min` with `indirect` of them, logarithmically.
    fn suspicion_timeout(&self, members: usize, confirmations: usize) -> Duration {
        let scale = ((members + 1) as f64).log10().max(1.0);
        let min = self.cfg.period.mul_f64(f64::from(self.cfg.suspicion_mult) * scale);
        let max = min * self.cfg.suspicion_max_mult;
        let k = self.cfg.indirect.min(members.saturating_sub(2)).max(1) as f64;
        // The first suspecter is the one who started it.
        let c = confirmations.saturating_sub(1) as f64;
        let frac = ((c + 1.0).ln() / (k + 1.0).ln()).min(1.0);
        max.saturating_sub((max - min).mul_f64(frac)).max(min)
    }

    /// Members held down are probed too while a connection to them is
    /// open: one that was only cut off (a partition that healed, a process
    /// that was stopped and resumed) hears of its death and refutes it.
    fn probeable(&self, k: &K) -> bool {
        self.members.get(k).is_some_and(|m| m.reachable && m.state != State::Left)
    }

    fn random_reachable(&mut self, n: usize, except: Option<&K>) -> Vec<K> {
        let all: Vec<K> = self.members.iter().filter(|(k, m)| m.reachable && !m.state.gone() && Some(*k) != except).map(|(k, _)| k.clone()).collect();
        all.choose_multiple(&mut self.rng, n).cloned().collect()
    }

    fn run_probe(&mut self, now: Duration) {
        if let Some(p) = &self.probe {
            let target = p.target.clone();
            if !p.acked && p.indirect_sent == 0 && now >= p.started + self.stretch(self.cfg.ack_timeout) {
                let seq = p.seq;
                let helpers = self.random_reachable(self.cfg.indirect, Some(&target));
                let sent = helpers.len();
                for h in helpers {
                    self.send(h, Kind::PingReq { seq, target: target.clone() });
                }
                // No one to ask: the period's end decides alone.
                if let Some(p) = self.probe.as_mut() {
                    p.indirect_sent = sent.max(1);
                }
            }
            let p = self.probe.as_ref().expect("probing");
            if p.acked || now >= p.started + self.stretch(self.cfg.period) {
                let p = self.probe.take().expect("probing");
                if p.acked {
                    self.lhm = self.lhm.saturating_sub(1);
                } else {
                    // Helpers that answered with a nack reached us while the
                    // target did not: the target's fault. Missing nacks
                    // mean our own messages are not getting through.
                    if p.nacks < p.indirect_sent && self.alive_count() > 1 {
                        self.lhm = (self.lhm + 1).min(self.cfg.lhm_max);
                    }
                    if let Some(m) = self.members.get(&p.target).filter(|m| m.state == State::Alive) {
                        let inc = m.inc;
                        let suspicion = Update { node: p.target.clone(), inc, state: State::Suspect, by: Some(self.me.clone()) };
                        self.apply(suspicion.clone(), now);
                        // Told at once: if it is alive but slow, it refutes
                        // before the others have counted it out.
                        self.outbox.push((p.target, Msg { kind: Kind::Gossip, gossip: vec![suspicion], digest: self.digest }));
                    }
                }
            }
        }
        if self.probe.is_none() && now >= self.next_probe {
            self.next_probe = now + self.stretch(self.cfg.period);
            if let Some(target) = self.next_target() {
                self.seq += 1;
                let seq = self.seq;
                self.probe = Some(Probe { target: target.clone(), seq, started: now, indirect_sent: 0, acked: false, nacks: 0 });
                self.send(target, Kind::Ping { seq });
            }
        }
    }

    /// Round-robin over a shuffled list, reshuffled each pass: every member
    /// is probed within one pass.
    fn next_target(&mut self) -> Option<K> {
        for _ in 0..2 {
            while self.next < self.order.len() {
                let k = self.order[self.next].clone();
                self.next += 1;
                if self.probeable(&k) {
                    return Some(k);
                }
            }
            self.order.retain(|k| self.members.contains_key(k));
            self.order.shuffle(&mut self.rng);
            self.next = 0;
        }
        None
    }

    fn expire_relays(&mut self, now: Duration) {
        let mut nacks = Vec::new();
        self.relays.retain(|_, r| {
            if !r.nacked && now >= r.nack_at {
                r.nacked = true;
                nacks.push((r.origin.clone(), r.origin_seq));
            }
            now < r.expires
        });
        for (to, seq) in nacks {
            self.send(to, Kind::Nack { seq });
        }
    }

    fn expire_suspicions(&mut self, now: Duration) {
        let n = self.members.len();
        let due: Vec<(K, u64)> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == State::Suspect && now >= m.since + self.suspicion_timeout(n, m.suspecters.len()))
            .map(|(k, m)| (k.clone(), m.inc))
            .collect();
        for (k, inc) in due {
            self.apply(Update { node: k, inc, state: State::Down, by: None }, now);
        }
    }
}

/// A hasher whose output is the same on every node and build (FNV-1a,
/// then splitmix64's finaliser, so that XOR-ing many hashes does not
/// cancel): digests are compared across machines.
#[derive(Debug)]
pub struct StableHasher(u64);

impl StableHasher {
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        // splitmix64's finaliser.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn entry_hash<K: Hash>(k: &K, inc: u64) -> u64 {
    let mut h = StableHasher::new();
    k.hash(&mut h);
    inc.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes 0..n wired together with instant delivery; `cut` nodes
    /// neither send nor receive.
    struct Net {
        nodes: Vec<Swim<u32>>,
        cut: Vec<bool>,
        now: Duration,
    }

    impl Net {
        fn new(n: u32) -> Self {
            let mut nodes: Vec<Swim<u32>> = (0..n).map(|i| Swim::new(i, 1, Config::default(), u64::from(i))).collect();
            for a in 0..n {
                for b in 0..n {
                    nodes[a as usize].meet(b, 1, true, Duration::ZERO);
                }
            }
            for s in &mut nodes {
                s.take_events();
            }
            Self { cut: vec![false; n as usize], nodes, now: Duration::ZERO }
        }

        /// Runs for `d` in 10 ms steps, delivering every message at once.
        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.now += Duration::from_millis(10);
                for i in 0..self.nodes.len() {
                    if !self.cut[i] {
                        self.nodes[i].tick(self.now);
                    }
                }
                self.deliver();
            }
        }

        fn deliver(&mut self) {
            loop {
                let mut any = false;
                for i in 0..self.nodes.len() {
                    for (to, msg) in self.nodes[i].take_outbox() {
                        any = true;
                        if !self.cut[i] && !self.cut[to as usize] {
                            self.nodes[to as usize].handle(i as u32, msg, self.now);
                        }
                    }
                }
                if !any {
                    break;
                }
            }
        }

        fn state(&self, at: usize, of: u32) -> Option<State> {
            self.nodes[at].state(&of)
        }
    }

    #[test]
    fn a_silent_member_is_suspected_then_down_everywhere_and_nobody_else_is() {
        let mut net = Net::new(8);
        net.run(Duration::from_secs(3));
        assert!((0..8).all(|i| net.nodes[i].members().all(|(_, s)| s == State::Alive)), "no false suspicion while all answer");
        net.cut[5] = true;
        let t0 = net.now;
        let mut down_at = None;
        while net.now < t0 + Duration::from_secs(10) {
            net.run(Duration::from_millis(10));
            if (0..8).filter(|&i| i != 5).all(|i| net.state(i, 5) == Some(State::Down)) {
                down_at = Some(net.now - t0);
                break;
            }
        }
        let took = down_at.expect("down everywhere within 10 s");
        assert!(took < Duration::from_secs(4), "took {took:?}");
        for i in (0..8).filter(|&i| i != 5) {
            for (k, s) in net.nodes[i].members() {
                assert!(*k == 5 || s == State::Alive, "{i} holds {k} as {s:?}");
            }
        }
    }

    #[test]
    fn a_suspected_member_that_hears_of_it_refutes_and_stays_alive() {
        let mut net = Net::new(5);
        net.run(Duration::from_secs(1));
        // 0 suspects 3 (say a lost ack); 3 hears it through gossip.
        let inc = net.nodes[0].members.get(&3).unwrap().inc;
        net.nodes[0].apply(Update { node: 3, inc, state: State::Suspect, by: Some(0) }, net.now);
        assert_eq!(net.state(0, 3), Some(State::Suspect));
        net.run(Duration::from_secs(10));
        assert!(net.nodes[3].incarnation() > inc, "3 refuted");
        assert!((0..5).filter(|&i| i != 3).all(|i| net.state(i, 3) == Some(State::Alive)));
    }

    #[test]
    fn a_peer_cannot_make_a_live_member_look_shut_down() {
        let mut net = Net::new(4);
        net.run(Duration::from_secs(1));
        // 0 claims 2 left (2 said no such thing); the claim spreads, 2 hears it.
        let inc = net.nodes[0].members.get(&2).unwrap().inc;
        net.nodes[0].apply(Update { node: 2, inc, state: State::Left, by: None }, net.now);
        net.run(Duration::from_secs(5));
        assert!((0..4).filter(|&i| i != 2).all(|i| net.state(i, 2) == Some(State::Alive)), "2 refuted the false goodbye");
    }

    #[test]
    fn a_member_that_leaves_is_left_not_down_and_a_restart_is_alive_again() {
        let mut net = Net::new(4);
        net.run(Duration::from_secs(1));
        net.nodes[2].leave();
        net.deliver();
        net.cut[2] = true;
        assert!((0..4).filter(|&i| i != 2).all(|i| net.state(i, 2) == Some(State::Left)), "told directly, at once");
        net.run(Duration::from_secs(5));
        assert!((0..4).filter(|&i| i != 2).all(|i| net.state(i, 2) == Some(State::Left)), "still left, not down");
        // It starts again with a later incarnation and meets one node.
        net.nodes[2] = Swim::new(2, 1000, Config::default(), 99);
        net.cut[2] = false;
        net.nodes[2].meet(0, 1, true, net.now);
        net.nodes[0].meet(2, 1000, true, net.now);
        net.run(Duration::from_secs(5));
        assert!((0..4).filter(|&i| i != 2).all(|i| net.state(i, 2) == Some(State::Alive)), "back everywhere");
        assert_eq!(net.nodes[2].alive_count(), 3, "and it knows everyone again (anti-entropy)");
    }

    #[test]
    fn a_member_cut_off_and_convicted_comes_back_when_the_cut_heals() {
        let mut net = Net::new(4);
        net.run(Duration::from_secs(1));
        net.cut[3] = true;
        net.run(Duration::from_secs(8));
        assert!((0..3).all(|i| net.state(i, 3) == Some(State::Down)));
        net.cut[3] = false;
        net.run(Duration::from_secs(3));
        assert!((0..3).all(|i| net.state(i, 3) == Some(State::Alive)), "probed while down, it refuted");
        assert!(net.nodes[3].members().all(|(_, s)| s == State::Alive), "and it sees the others alive: {:?}", net.nodes[3].members().collect::<Vec<_>>());
    }

    #[test]
    fn a_node_whose_probes_go_unanswered_slows_itself_down() {
        let mut net = Net::new(4);
        net.run(Duration::from_secs(1));
        // Node 1 hears nothing back: its own links are the problem.
        net.cut[1] = true;
        let mut s = std::mem::replace(&mut net.nodes[1], Swim::new(1, 1, Config::default(), 0));
        let mut t = net.now;
        for _ in 0..100 {
            t += Duration::from_millis(10);
            s.tick(t);
            s.take_outbox();
        }
        assert!(s.health() > 0, "local health multiplier raised");
        assert!(s.next_wake() > t + Config::default().period, "its probes are spaced out");
    }

    #[test]
    fn suspicion_shrinks_with_independent_confirmations() {
        let s: Swim<u32> = Swim::new(0, 1, Config::default(), 0);
        let none = s.suspicion_timeout(9, 1);
        let three = s.suspicion_timeout(9, 4);
        assert_eq!(none, Duration::from_millis(1500));
        assert_eq!(three, Duration::from_millis(500));
        assert!(s.suspicion_timeout(9, 2) < none && s.suspicion_timeout(9, 2) > three);
    }
}
