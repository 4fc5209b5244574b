//! The replicated registry: every node's newest record, and what is known
//! of its liveness.
//!
//! Records: per owner, the one with the higher (incarnation, seq) wins;
//! owners bump `seq` only when something in their record changed. Liveness
//! is not the records' business: the membership protocol ([`crate::swim`])
//! sets each entry's [`Status`] (a closed connection is down at once, a
//! silent node down after its suspicion runs out, a node that said goodbye
//! left). A node down or left is forgotten after `forget_after`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::record::{Envelope, NodeId, NodeRecord};

/// A node's liveness as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    /// Probes to it went unanswered; down unless it answers soon.
    Suspect,
    /// Crashed, hung or cut off.
    Down,
    /// Shut down and said so.
    Left,
}

impl From<crate::swim::State> for Status {
    fn from(s: crate::swim::State) -> Self {
        match s {
            crate::swim::State::Alive => Status::Up,
            crate::swim::State::Suspect => Status::Suspect,
            crate::swim::State::Down => Status::Down,
            crate::swim::State::Left => Status::Left,
        }
    }
}

impl Status {
    /// Up or suspected (not yet convicted): still routed to.
    pub fn up(self) -> bool {
        matches!(self, Status::Up | Status::Suspect)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// Shared with every view handed out (a view is taken on every change).
    record: Arc<NodeRecord>,
    envelope: Envelope,
    heard: Instant,
    status: Status,
    /// When it went down or left.
    gone_since: Option<Instant>,
}

/// What a [`Registry::merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    Unchanged,
    /// A newer record of an owner already known.
    Updated,
    /// A new run (higher incarnation) of an owner that was down or left.
    Revived,
    /// An owner not known before.
    New,
}

impl Merge {
    pub fn changed(self) -> bool {
        self != Merge::Unchanged
    }

    /// Whether the owner joined (or came back) with this record: news worth
    /// passing on at once.
    pub fn joined(self) -> bool {
        matches!(self, Merge::New | Merge::Revived)
    }
}

/// One peer as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub node_id: NodeId,
    /// Up or suspected: `status` says which.
    pub up: bool,
    pub status: Status,
    /// Milliseconds since the owner was last heard from (when the view was
    /// taken).
    pub last_seen_ms: u64,
    /// This node's own entry.
    pub local: bool,
    pub record: Arc<NodeRecord>,
}

/// Every known node's newest record.
#[derive(Debug)]
pub struct Registry {
    local: PeerId,
    entries: HashMap<PeerId, Entry>,
    forget_after: Duration,
    /// [`Registry::digest`], kept as entries change (every probe carries it).
    digest: u64,
}

/// One entry's part of the digest: a stable hash of its owner, incarnation
/// and seq while it is live, nothing once it is down or left.
fn share(e: &Entry) -> u64 {
    if !e.status.up() {
        return 0;
    }
    let mut h = crate::swim::StableHasher::new();
    (e.record.node_id.as_str(), e.record.incarnation, e.record.seq).hash(&mut h);
    h.finish()
}

impl Registry {
    pub fn new(local: PeerId, forget_after: Duration) -> Self {
        Self { local, entries: HashMap::new(), forget_after, digest: 0 }
    }

    /// Takes a verified record of `owner`. Returns what changed.
    pub fn merge(&mut self, owner: PeerId, record: NodeRecord, envelope: Envelope, now: Instant) -> Merge {
        match self.entries.get_mut(&owner) {
            Some(e) if record.newer_than(&e.record) => {
                self.digest ^= share(e);
                // A new run of a node that was gone is back; a newer record
                // of the same run changes what it offers, not whether it is
                // alive (that is the membership protocol's word).
                let revived = !e.status.up() && record.incarnation > e.record.incarnation;
                e.record = Arc::new(record);
                e.envelope = envelope;
                e.heard = now;
                if revived {
                    e.status = Status::Up;
                    e.gone_since = None;
                }
                self.digest ^= share(e);
                if revived { Merge::Revived } else { Merge::Updated }
            }
            Some(_) => Merge::Unchanged,
            None => {
                let e = Entry { record: Arc::new(record), envelope, heard: now, status: Status::Up, gone_since: None };
                self.digest ^= share(&e);
                self.entries.insert(owner, e);
                Merge::New
            }
        }
    }

    /// Sets `peer`'s liveness; whether that changed anything.
    pub fn set_status(&mut self, peer: &PeerId, status: Status, now: Instant) -> bool {
        match self.entries.get_mut(peer) {
            Some(e) if e.status != status && *peer != self.local => {
                self.digest ^= share(e);
                e.status = status;
                self.digest ^= share(e);
                e.gone_since = (!status.up()).then_some(now);
                if status.up() {
                    e.heard = now;
                }
                true
            }
            _ => false,
        }
    }

    /// Something arrived from `peer` (a probe, an answer).
    pub fn heard(&mut self, peer: &PeerId, now: Instant) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.heard = now;
        }
    }

    /// Entries up or suspected, this node's own included.
    pub fn live(&self) -> usize {
        self.entries.values().filter(|e| e.status.up()).count()
    }

    pub fn status(&self, peer: &PeerId) -> Option<Status> {
        self.entries.get(peer).map(|e| e.status)
    }

    /// Forgets peers down or left for `forget_after`. Returns whether any were.
    pub fn tick(&mut self, now: Instant) -> bool {
        let forget = self.forget_after;
        let before = self.entries.len();
        self.entries.retain(|_, e| e.gone_since.is_none_or(|d| now.saturating_duration_since(d) < forget));
        self.entries.len() != before
    }

    /// What this registry holds, as (node id, incarnation, seq) of every
    /// live entry: a peer answers it with only what is missing or newer.
    pub fn summary(&self) -> Vec<(String, u64, u64)> {
        self.entries.values().filter(|e| e.status.up()).map(|e| (e.record.node_id.clone(), e.record.incarnation, e.record.seq)).collect()
    }

    /// The envelopes of live entries that `summary` lacks or holds older.
    pub fn envelopes_missing_from(&self, summary: &[(String, u64, u64)]) -> Vec<Envelope> {
        let held: HashMap<&str, (u64, u64)> = summary.iter().map(|(id, i, s)| (id.as_str(), (*i, *s))).collect();
        self.entries
            .values()
            .filter(|e| e.status.up())
            .filter(|e| held.get(e.record.node_id.as_str()).is_none_or(|&v| (e.record.incarnation, e.record.seq) > v))
            .map(|e| e.envelope.clone())
            .collect()
    }

    /// A digest of the live records held (owner, incarnation, seq): two
    /// registries with the same digest hold the same records, so
    /// anti-entropy compares eight bytes, not the registry.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Whether the record held for `owner` is at least as new as
    /// (`incarnation`, `seq`): a record claiming that could change nothing.
    pub fn holds(&self, owner: &PeerId, incarnation: u64, seq: u64) -> bool {
        self.entries.get(owner).is_some_and(|e| (e.record.incarnation, e.record.seq) >= (incarnation, seq))
    }

    pub fn record(&self, peer: &PeerId) -> Option<&NodeRecord> {
        self.entries.get(peer).map(|e| &*e.record)
    }

    /// Every entry, this node first, then by node id.
    pub fn view(&self, now: Instant) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self
            .entries
            .iter()
            .map(|(peer, e)| PeerView {
                // Verified equal to the signer's id, and cheaper than
                // formatting the peer id (base58) for every entry of every view.
                node_id: NodeId::from(e.record.node_id.as_str()),
                up: e.status.up(),
                status: e.status,
                last_seen_ms: u64::try_from(now.saturating_duration_since(e.heard).as_millis()).unwrap_or(u64::MAX),
                local: *peer == self.local,
                record: e.record.clone(),
            })
            .collect();
        v.sort_by(|a, b| b.local.cmp(&a.local).then_with(|| a.node_id.cmp(&b.node_id)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn sealed(key: &Keypair, incarnation: u64, seq: u64, host: &str) -> (PeerId, NodeRecord, Envelope) {
        let peer = key.public().to_peer_id();
        let r = NodeRecord { node_id: peer.to_string(), hostname: host.into(), incarnation, seq, ..Default::default() };
        let env = Envelope::seal(&r, key).unwrap();
        (peer, r, env)
    }

    fn reg() -> (Registry, Instant) {
        (Registry::new(Keypair::generate_ed25519().public().to_peer_id(), Duration::from_secs(30)), Instant::now())
    }

    #[test]
    fn newest_incarnation_then_seq_wins() {
        let (mut r, t) = reg();
        let k = Keypair::generate_ed25519();
        let (p, rec, env) = sealed(&k, 1, 5, "old");
        assert_eq!(r.merge(p, rec, env, t), Merge::New);
        let (p, rec, env) = sealed(&k, 1, 4, "stale");
        assert_eq!(r.merge(p, rec, env, t), Merge::Unchanged);
        assert_eq!(r.record(&p).unwrap().hostname, "old");
        let (p, rec, env) = sealed(&k, 1, 6, "changed");
        assert_eq!(r.merge(p, rec, env, t), Merge::Updated);
        // A restart: lower seq, higher incarnation.
        let (p, rec, env) = sealed(&k, 2, 0, "restarted");
        assert_eq!(r.merge(p, rec, env, t), Merge::Updated);
        assert_eq!(r.record(&p).unwrap().hostname, "restarted");
        assert_eq!(r.view(t).len(), 1, "one entry per owner");
    }

    #[test]
    fn liveness_is_set_from_outside_a_gone_node_is_forgotten_and_only_a_new_run_revives_it_by_record() {
        let (mut r, t) = reg();
        let k = Keypair::generate_ed25519();
        let (p, rec, env) = sealed(&k, 1, 1, "a");
        r.merge(p, rec, env, t);
        assert!(r.set_status(&p, Status::Suspect, t));
        assert!(r.view(t)[0].up, "a suspect is still routed to");
        assert!(r.set_status(&p, Status::Down, t));
        assert!(!r.view(t)[0].up && r.summary().is_empty() && r.digest() == 0);
        // A changed record of the same run does not say it is alive…
        let (p, rec, env) = sealed(&k, 1, 2, "a2");
        assert_eq!(r.merge(p, rec, env, t), Merge::Updated);
        assert_eq!(r.view(t)[0].status, Status::Down);
        // …a new run does.
        let (p, rec, env) = sealed(&k, 2, 0, "a3");
        assert_eq!(r.merge(p, rec, env, t), Merge::Revived);
        assert_eq!(r.view(t)[0].status, Status::Up);
        assert!(r.set_status(&p, Status::Left, t + Duration::from_secs(1)));
        assert!(!r.tick(t + Duration::from_secs(30)));
        assert!(r.tick(t + Duration::from_secs(32)));
        assert!(r.view(t).is_empty());
    }

    #[test]
    fn a_peer_is_sent_only_the_records_it_lacks_or_holds_older_and_equal_registries_have_equal_digests() {
        let (mut r, t) = reg();
        let (mut r2, _) = reg();
        let (a, b, c) = (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
        for (k, inc, host) in [(&a, 1, "a"), (&b, 2, "b"), (&c, 1, "c")] {
            let (p, rec, env) = sealed(k, inc, 9, host);
            r.merge(p, rec.clone(), env.clone(), t);
            r2.merge(p, rec, env, t);
        }
        assert_eq!(r.digest(), r2.digest());
        let id = |k: &Keypair| k.public().to_peer_id().to_string();
        // The asker has a (this version), b's first incarnation, and an older c.
        let summary = vec![(id(&a), 1, 9), (id(&b), 1, 9), (id(&c), 1, 8)];
        let mut sent: Vec<String> = r.envelopes_missing_from(&summary).iter().map(|e| e.verify().unwrap().1.hostname).collect();
        sent.sort();
        assert_eq!(sent, ["b", "c"]);
        let (p, rec, env) = sealed(&c, 1, 10, "c");
        r.merge(p, rec, env, t);
        assert_ne!(r.digest(), r2.digest(), "one newer record changes the digest");
        let recomputed = r.entries.values().map(share).fold(0, |a, b| a ^ b);
        assert_eq!(r.digest(), recomputed, "the kept digest is the entries' own");
        assert!(r.holds(&a.public().to_peer_id(), 1, 9) && !r.holds(&a.public().to_peer_id(), 1, 10));
    }
}
