//! Choosing where a request runs: a pure function of a registry snapshot.
//!
//! Candidates are the nodes that are up, share (or are this node), and hold
//! the model. They are ordered by, in turn: the model loaded with a slot
//! free; the expected wait before the request starts (the time to load the
//! model when it is not loaded, plus, when every slot is busy, the queue
//! ahead of it drained at the node's measured speed); measured decode speed
//! (faster first); link round-trip time; this node before others; node id.
//! Speeds and times are bucketed (tok/s to whole numbers, waits to 100 ms,
//! RTT to milliseconds) so that near-equal nodes tie and the local node
//! wins them.

use std::time::Duration;

use crate::record::NodeId;
use crate::registry::PeerView;

/// Bytes per second assumed for loading a model from disk (a SATA SSD; the
/// page cache is faster, a network share slower).
pub const LOAD_BYTES_PER_SEC: f64 = 500e6;

/// Tokens a typical answer takes, to turn a queue into an expected wait.
pub const TYPICAL_ANSWER_TOKENS: f64 = 256.0;

/// Decode speed assumed for a node that has not measured one yet.
pub const UNMEASURED_TPS: f64 = 20.0;

/// A node that could run the request, best first in [`rank`]'s output.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub node_id: NodeId,
    pub local: bool,
    pub loaded: bool,
    pub free_slots: u32,
    pub queued: u32,
    pub load_secs: f64,
    pub decode_tps: f32,
    pub rtt: Option<Duration>,
}

impl Candidate {
    /// Seconds before the request could start here.
    pub fn expected_wait(&self) -> f64 {
        if self.loaded && self.free_slots > 0 {
            return 0.0;
        }
        let tps = if self.decode_tps > 0.0 { f64::from(self.decode_tps) } else { UNMEASURED_TPS };
        let queue = if self.loaded { f64::from(self.queued + 1) * TYPICAL_ANSWER_TOKENS / tps } else { 0.0 };
        self.load_secs + queue
    }
}

/// The nodes of `peers` that can run `model`, best first.
pub fn rank(peers: &[PeerView], model: &str, rtt: impl Fn(&NodeId) -> Option<Duration>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = peers
        .iter()
        .filter(|p| p.up && (p.local || p.record.share))
        .filter_map(|p| {
            let disk = p.record.models_on_disk.iter().find(|m| m.id == model)?;
            let loaded = p.record.models_loaded.iter().find(|m| m.id == model);
            Some(Candidate {
                node_id: p.node_id.clone(),
                local: p.local,
                loaded: loaded.is_some(),
                free_slots: loaded.map_or(0, |l| l.slots.saturating_sub(l.busy)),
                queued: loaded.map_or(0, |l| l.queued),
                load_secs: if loaded.is_some() { 0.0 } else { disk.size_bytes as f64 / LOAD_BYTES_PER_SEC },
                decode_tps: loaded.map_or(0.0, |l| l.decode_tps),
                rtt: if p.local { Some(Duration::ZERO) } else { rtt(&p.node_id) },
            })
        })
        .collect();
    out.sort_by(|a, b| {
        let ready = |c: &Candidate| c.loaded && c.free_slots > 0;
        let rtt_ms = |c: &Candidate| c.rtt.map_or(u128::MAX, |d| d.as_millis());
        ready(b)
            .cmp(&ready(a))
            .then_with(|| ((a.expected_wait() * 10.0).round() as i64).cmp(&((b.expected_wait() * 10.0).round() as i64)))
            .then_with(|| (b.decode_tps.round() as i64).cmp(&(a.decode_tps.round() as i64)))
            .then_with(|| rtt_ms(a).cmp(&rtt_ms(b)))
            .then_with(|| b.local.cmp(&a.local))
            .then_with(|| a.node_id.cmp(&b.node_id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LoadedModel, ModelOnDisk, NodeRecord};

    struct Node {
        id: &'static str,
        local: bool,
        up: bool,
        share: bool,
        disk: Vec<(&'static str, u64)>,
        loaded: Vec<(&'static str, u32, u32, u32, f32)>,
    }

    fn node(id: &'static str) -> Node {
        Node { id, local: false, up: true, share: true, disk: vec![("m", 1_000_000_000)], loaded: vec![] }
    }

    fn views(nodes: Vec<Node>) -> Vec<PeerView> {
        nodes
            .into_iter()
            .map(|n| PeerView {
                node_id: n.id.into(),
                up: n.up,
                status: if n.up { crate::registry::Status::Up } else { crate::registry::Status::Down },
                last_seen_ms: 0,
                local: n.local,
                record: std::sync::Arc::new(NodeRecord {
                    node_id: n.id.into(),
                    share: n.share,
                    models_on_disk: n.disk.iter().map(|(id, size)| ModelOnDisk { id: (*id).into(), size_bytes: *size, ..Default::default() }).collect(),
                    models_loaded: n
                        .loaded
                        .iter()
                        .map(|&(id, slots, busy, queued, decode_tps)| LoadedModel { id: id.into(), slots, busy, queued, decode_tps })
                        .collect(),
                    ..Default::default()
                }),
            })
            .collect()
    }

    fn order(nodes: Vec<Node>) -> Vec<String> {
        let rtt = |id: &NodeId| Some(Duration::from_micros(if id.as_str() == "far" { 9_000 } else { 500 }));
        rank(&views(nodes), "m", rtt).into_iter().map(|c| c.node_id.to_string()).collect()
    }

    #[test]
    fn loaded_with_a_free_slot_beats_everything() {
        let busy = Node { loaded: vec![("m", 2, 2, 3, 90.0)], ..node("busy") };
        let cold = node("cold");
        let ready = Node { loaded: vec![("m", 2, 1, 0, 10.0)], ..node("ready") };
        assert_eq!(order(vec![busy, cold, ready]), ["ready", "cold", "busy"]);
    }

    #[test]
    fn only_up_sharing_holders_are_candidates_but_local_need_not_share() {
        let down = Node { up: false, ..node("down") };
        let private = Node { share: false, ..node("private") };
        let other_model = Node { disk: vec![("x", 1)], ..node("other") };
        let me = Node { local: true, share: false, ..node("me") };
        assert_eq!(order(vec![down, private, other_model, me]), ["me"]);
    }

    #[test]
    fn then_load_time_queue_speed_rtt_and_the_local_node_on_ties() {
        let small = Node { disk: vec![("m", 100_000_000)], ..node("small") };
        let big = Node { disk: vec![("m", 4_000_000_000)], ..node("big") };
        assert_eq!(order(vec![big, small]), ["small", "big"]);
        let q1 = Node { loaded: vec![("m", 1, 1, 1, 50.0)], ..node("q1") };
        let q0 = Node { loaded: vec![("m", 1, 1, 0, 50.0)], ..node("q0") };
        // A longer queue on a faster node can still be the shorter wait.
        let q3_fast = Node { loaded: vec![("m", 1, 1, 3, 400.0)], ..node("q3-fast") };
        assert_eq!(order(vec![Node { loaded: vec![("m", 1, 1, 0, 50.0)], ..node("q0") }, q3_fast]), ["q3-fast", "q0"]);
        assert_eq!(order(vec![q1, q0]), ["q0", "q1"]);
        let slow = Node { loaded: vec![("m", 2, 0, 0, 20.0)], ..node("slow") };
        let fast = Node { loaded: vec![("m", 2, 0, 0, 60.0)], ..node("fast") };
        assert_eq!(order(vec![slow, fast]), ["fast", "slow"]);
        let far = Node { loaded: vec![("m", 2, 0, 0, 60.2)], ..node("far") };
        let near = Node { loaded: vec![("m", 2, 0, 0, 59.9)], ..node("near") };
        assert_eq!(order(vec![far, near]), ["near", "far"]);
        let me = Node { local: true, loaded: vec![("m", 2, 0, 0, 60.0)], ..node("zz-me") };
        let peer = Node { loaded: vec![("m", 2, 0, 0, 60.0)], ..node("aa-peer") };
        assert_eq!(order(vec![peer, me]), ["zz-me", "aa-peer"]);
    }

    #[test]
    fn ranking_is_deterministic() {
        let mk = || vec![node("c"), node("a"), node("b")];
        assert_eq!(order(mk()), ["a", "b", "c"]);
        assert_eq!(order(mk().into_iter().rev().collect()), ["a", "b", "c"]);
    }
}
