//! The replicated registry: every node's newest record, and whether it is up.
//!
//! Merge rule: per owner, the record with the higher (incarnation, seq)
//! wins, and a newer record proves its owner alive (owners bump seq on every
//! heartbeat). A peer whose connections all
//! closed is down at once; one not heard from within the TTL is down; a down
//! peer is forgotten after `forget_after`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::record::{Envelope, NodeId, NodeRecord};

#[derive(Debug, Clone)]
struct Entry {
    /// Shared with every view handed out (a view is taken on every change).
    record: Arc<NodeRecord>,
    envelope: Envelope,
    heard: Instant,
    down_since: Option<Instant>,
    /// Down because its connection to us closed (not for silence).
    closed: bool,
}

/// What a [`Registry::merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    Unchanged,
    /// A newer record of an owner that is up, saying nothing new but that it
    /// is alive (a heartbeat: only `seq` moved).
    Refreshed,
    /// A newer record of an owner that is up, with something changed.
    Updated,
    /// A newer record of an owner that was down: it is back.
    Revived,
    /// An owner not known before.
    New,
}

impl Merge {
    pub fn changed(self) -> bool {
        self != Merge::Unchanged
    }

    /// Whether anyone looking at the registry would see a difference (a
    /// heartbeat moves only `seq` and the time last heard).
    pub fn visible(self) -> bool {
        !matches!(self, Merge::Unchanged | Merge::Refreshed)
    }

    /// Whether the owner joined (or came back) with this record: news worth
    /// passing on at once rather than at the owner's next heartbeat.
    pub fn joined(self) -> bool {
        matches!(self, Merge::New | Merge::Revived)
    }
}

/// One peer as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub node_id: NodeId,
    pub up: bool,
    /// Milliseconds since the owner was last heard from.
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
    ttl: Duration,
    forget_after: Duration,
}

impl Registry {
    pub fn new(local: PeerId, ttl: Duration, forget_after: Duration) -> Self {
        Self { local, entries: HashMap::new(), ttl, forget_after }
    }

    /// Takes a verified record of `owner`; `from_owner` when the owner itself
    /// sent it (otherwise a peer relayed it). Returns what changed.
    pub fn merge(&mut self, owner: PeerId, record: NodeRecord, envelope: Envelope, from_owner: bool, now: Instant) -> Merge {
        match self.entries.get_mut(&owner) {
            // A node whose connection closed is back when it says so itself
            // (it reconnected) or restarts; a peer's copy of a record of the
            // same run, maybe the last heartbeat it sent before dying and
            // still being forwarded (gossip caches messages for seconds), is
            // believed only once that window is past.
            Some(e)
                if e.closed
                    && !from_owner
                    && record.incarnation == e.record.incarnation
                    && e.down_since.is_some_and(|d| now.saturating_duration_since(d) < self.ttl * 2) =>
            {
                Merge::Unchanged
            }
            // A newer record is news of its owner, whoever brings it.
            Some(e) if record.newer_than(&e.record) => {
                e.closed = false;
                let same = record.content_eq(&e.record);
                e.record = Arc::new(record);
                e.envelope = envelope;
                e.heard = now;
                match (e.down_since.take(), same) {
                    (Some(_), _) => Merge::Revived,
                    (None, true) => Merge::Refreshed,
                    (None, false) => Merge::Updated,
                }
            }
            // Owners bump seq on every heartbeat, so only a newer record is
            // news: a late or replayed copy of a down node's last record
            // (gossip caches and forwards messages) must not bring it back.
            Some(_) => Merge::Unchanged,
            None => {
                self.entries.insert(owner, Entry { record: Arc::new(record), envelope, heard: now, down_since: None, closed: false });
                Merge::New
            }
        }
    }

    /// All connections to `peer` closed: it is down now.
    pub fn mark_down(&mut self, peer: &PeerId, now: Instant) -> bool {
        match self.entries.get_mut(peer) {
            Some(e) if e.down_since.is_none() && *peer != self.local => {
                e.down_since = Some(now);
                e.closed = true;
                true
            }
            _ => false,
        }
    }

    /// Applies the TTL and forgets long-down peers. Returns whether anything changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let (ttl, forget, local) = (self.ttl, self.forget_after, self.local);
        for (peer, e) in &mut self.entries {
            if *peer != local && e.down_since.is_none() && now.saturating_duration_since(e.heard) > ttl {
                e.down_since = Some(now);
                changed = true;
            }
        }
        let before = self.entries.len();
        self.entries.retain(|_, e| e.down_since.is_none_or(|d| now.saturating_duration_since(d) < forget));
        changed || self.entries.len() != before
    }

    /// What this registry holds, as (node id, incarnation) of every up
    /// entry: a peer answers it with only what is missing.
    pub fn summary(&self) -> Vec<(String, u64)> {
        self.entries.values().filter(|e| e.down_since.is_none()).map(|e| (e.record.node_id.clone(), e.record.incarnation)).collect()
    }

    /// The envelopes of up entries whose owner `summary` lacks, or has only
    /// from an older incarnation. A newer seq of the same incarnation is left
    /// out: every heartbeat bumps it, gossip brings it within a second, and
    /// sending it would make every answer the whole registry.
    pub fn envelopes_missing_from(&self, summary: &[(String, u64)]) -> Vec<Envelope> {
        let held: HashMap<&str, u64> = summary.iter().map(|(id, i)| (id.as_str(), *i)).collect();
        self.entries
            .values()
            .filter(|e| e.down_since.is_none())
            .filter(|e| held.get(e.record.node_id.as_str()).is_none_or(|&incarnation| e.record.incarnation > incarnation))
            .map(|e| e.envelope.clone())
            .collect()
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
                up: e.down_since.is_none(),
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
        (Registry::new(Keypair::generate_ed25519().public().to_peer_id(), Duration::from_secs(3), Duration::from_secs(30)), Instant::now())
    }

    #[test]
    fn newest_incarnation_then_seq_wins() {
        let (mut r, t) = reg();
        let k = Keypair::generate_ed25519();
        let (p, rec, env) = sealed(&k, 1, 5, "old");
        assert_eq!(r.merge(p, rec, env, true, t), Merge::New);
        let (p, rec, env) = sealed(&k, 1, 4, "stale");
        assert_eq!(r.merge(p, rec, env, true, t), Merge::Unchanged);
        assert_eq!(r.record(&p).unwrap().hostname, "old");
        // A heartbeat (only seq moved) is newer but shows nothing new.
        let (p, rec, env) = sealed(&k, 1, 6, "old");
        let m = r.merge(p, rec, env, true, t);
        assert_eq!(m, Merge::Refreshed);
        assert!(m.changed() && !m.visible());
        assert_eq!(r.record(&p).unwrap().seq, 6);
        // A restart: lower seq, higher incarnation.
        let (p, rec, env) = sealed(&k, 2, 0, "restarted");
        assert_eq!(r.merge(p, rec, env, true, t), Merge::Updated);
        assert_eq!(r.record(&p).unwrap().hostname, "restarted");
        assert_eq!(r.view(t).len(), 1, "one entry per owner");
    }

    #[test]
    fn silence_past_the_ttl_is_down_then_forgotten_and_speech_revives() {
        let (mut r, t) = reg();
        let k = Keypair::generate_ed25519();
        let (p, rec, env) = sealed(&k, 1, 1, "a");
        r.merge(p, rec.clone(), env.clone(), true, t);
        assert!(!r.tick(t + Duration::from_millis(2900)));
        assert!(r.tick(t + Duration::from_millis(3100)));
        assert!(!r.view(t + Duration::from_secs(4))[0].up);
        // Its last record again (a replay) does not bring it back; its next heartbeat does.
        assert!(!r.merge(p, rec.clone(), env.clone(), true, t + Duration::from_secs(5)).changed());
        assert!(!r.view(t + Duration::from_secs(5))[0].up);
        let (p, rec, env) = sealed(&k, 1, 2, "a");
        assert!(r.merge(p, rec.clone(), env.clone(), true, t + Duration::from_secs(5)).changed());
        assert!(r.view(t + Duration::from_secs(5))[0].up);
        // Connections closed: down at once; forgotten after 30 s down.
        assert!(r.mark_down(&p, t + Duration::from_secs(6)));
        r.tick(t + Duration::from_secs(35));
        assert_eq!(r.view(t + Duration::from_secs(35)).len(), 1);
        r.tick(t + Duration::from_secs(37));
        assert!(r.view(t + Duration::from_secs(37)).is_empty());
    }

    #[test]
    fn a_peer_whose_connection_closed_is_revived_by_its_own_word_a_restart_or_late_enough_gossip() {
        let (mut r, t) = reg();
        let k = Keypair::generate_ed25519();
        let (p, rec, env) = sealed(&k, 1, 1, "a");
        assert_eq!(r.merge(p, rec.clone(), env.clone(), false, t), Merge::New);
        r.mark_down(&p, t);
        assert_eq!(r.merge(p, rec, env, false, t), Merge::Unchanged);
        assert!(!r.view(t)[0].up);
        // Its connection closed: a newer heartbeat of the same run relayed
        // by a peer (sent just before it died) does not bring it back…
        let (p, rec, env) = sealed(&k, 1, 2, "a");
        assert_eq!(r.merge(p, rec.clone(), env.clone(), false, t + Duration::from_secs(1)), Merge::Unchanged);
        assert!(!r.view(t)[0].up);
        // …but its own word does (it reconnected), as would a restart, and
        // a relayed one once gossip can no longer be carrying old copies.
        assert_eq!(r.merge(p, rec.clone(), env.clone(), true, t + Duration::from_secs(1)), Merge::Revived);
        r.mark_down(&p, t + Duration::from_secs(2));
        let (p, rec, env) = sealed(&k, 1, 3, "a");
        assert_eq!(r.merge(p, rec, env, false, t + Duration::from_secs(9)), Merge::Revived);
        r.mark_down(&p, t + Duration::from_secs(10));
        let (p, rec, env) = sealed(&k, 2, 1, "a");
        assert_eq!(r.merge(p, rec, env, false, t + Duration::from_secs(10)), Merge::Revived);
        assert!(r.view(t)[0].up);
    }

    #[test]
    fn a_joining_peer_is_sent_only_the_nodes_it_lacks_or_holds_from_an_older_incarnation() {
        let (mut r, t) = reg();
        let (a, b, c) = (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
        for (k, inc, host) in [(&a, 1, "a"), (&b, 2, "b"), (&c, 1, "c")] {
            let (p, rec, env) = sealed(k, inc, 9, host);
            r.merge(p, rec, env, true, t);
        }
        let id = |k: &Keypair| k.public().to_peer_id().to_string();
        // The asker has a (this run of it) and b's first incarnation.
        let summary = vec![(id(&a), 1), (id(&b), 1)];
        let mut sent: Vec<String> = r.envelopes_missing_from(&summary).iter().map(|e| e.verify().unwrap().1.hostname).collect();
        sent.sort();
        assert_eq!(sent, ["b", "c"]);
        assert!(r.holds(&a.public().to_peer_id(), 1, 9) && !r.holds(&a.public().to_peer_id(), 1, 10));
    }
}
