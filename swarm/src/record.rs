//! What a node says about itself, and the signed envelope it travels in.
//!
//! Each node is the only writer of its own record. Records are JSON inside
//! an envelope signed with the owner's identity key, so a record relayed by
//! another node (in a snapshot) is as trustworthy as one heard from its
//! owner. Unknown fields are ignored, so nodes of mixed versions coexist.

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The record layout this build writes.
pub const SCHEMA: u32 = 1;

/// Largest encoded envelope accepted (a record lists models; 64 KiB is ample).
pub const MAX_ENVELOPE: usize = 64 * 1024;

/// A model file a node holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelOnDisk {
    pub id: String,
    pub architecture: String,
    pub quantization: String,
    pub size_bytes: u64,
    /// The file's sha256 (hex): what a peer asks for to copy it.
    pub sha256: String,
    /// The Hugging Face repository and file it came from, when pulled (so a
    /// node that cannot reach the hub still finds who has that file).
    pub repo: String,
    pub file: String,
}

/// A model a node has in memory now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadedModel {
    pub id: String,
    pub slots: u32,
    pub busy: u32,
    pub queued: u32,
    /// Measured decode speed on this node, tokens/s (0 = not measured yet).
    pub decode_tps: f32,
}

/// A node of the swarm: its libp2p peer id, base58, as text. Its own type so
/// that "which node" cannot be confused with other strings (and "no node",
/// a node running alone, is `Option<NodeId>`, not an empty string).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<libp2p::PeerId> for NodeId {
    fn from(p: libp2p::PeerId) -> Self {
        Self(p.to_string())
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// One node's state as the swarm sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRecord {
    pub schema: u32,
    /// The owner's libp2p peer id (base58).
    pub node_id: String,
    pub hostname: String,
    /// Where the owner's HTTP API listens (as it sees it).
    pub api: String,
    pub api_version: String,
    /// e.g. "cpu", "cuda: NVIDIA RTX 4090".
    pub devices: Vec<String>,
    pub ram_total_bytes: u64,
    pub ram_free_bytes: u64,
    pub models_on_disk: Vec<ModelOnDisk>,
    pub models_loaded: Vec<LoadedModel>,
    /// Whether this node runs requests for others.
    pub share: bool,
    /// Where its swarm listens (multiaddrs), so that nodes which learn of
    /// it through others (bootstrap peers, no mDNS) can connect to it too.
    pub addrs: Vec<String>,
    /// Bumped on every start; a restarted node's records beat its old ones.
    pub incarnation: u64,
    /// Bumped on every change within one incarnation.
    pub seq: u64,
}

impl NodeRecord {
    /// Whether `self` is newer than `other` (same owner): higher
    /// incarnation, then higher seq.
    pub fn newer_than(&self, other: &NodeRecord) -> bool {
        (self.incarnation, self.seq) > (other.incarnation, other.seq)
    }

    /// The same record without `seq`, to tell whether anything changed.
    pub fn content_eq(&self, other: &NodeRecord) -> bool {
        // Every field but seq (spelled out: the compiler then says when a
        // new field is not compared).
        let NodeRecord {
            schema,
            node_id,
            hostname,
            api,
            api_version,
            devices,
            ram_total_bytes,
            ram_free_bytes,
            models_on_disk,
            models_loaded,
            share,
            addrs,
            incarnation,
            seq: _,
        } = self;
        *schema == other.schema
            && *node_id == other.node_id
            && *hostname == other.hostname
            && *api == other.api
            && *api_version == other.api_version
            && *devices == other.devices
            && *ram_total_bytes == other.ram_total_bytes
            && *ram_free_bytes == other.ram_free_bytes
            && *models_on_disk == other.models_on_disk
            && *models_loaded == other.models_loaded
            && *share == other.share
            && *addrs == other.addrs
            && *incarnation == other.incarnation
    }
}

/// A record with its owner's public key and signature over the record bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The owner's public key, protobuf-encoded.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
    /// The record as JSON (carried as a string: the signed bytes verbatim).
    #[serde(with = "utf8_bytes")]
    pub record: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

impl Envelope {
    /// Signs `record` with `key`.
    ///
    /// # Errors
    /// When signing fails (not for ed25519 keys).
    pub fn seal(record: &NodeRecord, key: &Keypair) -> Result<Self> {
        let bytes = serde_json::to_vec(record).map_err(|e| Error::Rejected(e.to_string()))?;
        let signature = key.sign(&bytes).map_err(|e| Error::Rejected(e.to_string()))?;
        Ok(Self { public_key: key.public().encode_protobuf(), record: bytes, signature })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes serialize")
    }

    /// Decodes and checks an envelope from the network: size, JSON, the
    /// signature, and that the record's node id is the signer's. Returns the
    /// owner, the record and the envelope (kept for relaying).
    ///
    /// # Errors
    /// [`Error::Rejected`] saying which check failed.
    pub fn open(bytes: &[u8]) -> Result<(PeerId, NodeRecord, Envelope)> {
        let env = Self::parse(bytes)?;
        let (owner, record) = env.verify()?;
        Ok((owner, record, env))
    }

    /// Decodes an envelope from the network without checking its signature.
    ///
    /// # Errors
    /// [`Error::Rejected`] when it is oversized or not an envelope.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(Error::Rejected(format!("envelope of {} bytes exceeds {MAX_ENVELOPE}", bytes.len())));
        }
        serde_json::from_slice(bytes).map_err(|e| Error::Rejected(format!("not an envelope: {e}")))
    }

    /// The record and the owner it names, unchecked: enough to drop, before
    /// any signature is checked, a record no newer than the one held.
    ///
    /// # Errors
    /// [`Error::Rejected`] when it is not a record or names no valid node id.
    pub fn read(&self) -> Result<(PeerId, NodeRecord)> {
        let record: NodeRecord = serde_json::from_slice(&self.record).map_err(|e| Error::Rejected(format!("not a record: {e}")))?;
        let owner = record.node_id.parse().map_err(|e| Error::Rejected(format!("bad node id {:?}: {e}", record.node_id)))?;
        Ok((owner, record))
    }

    /// Whether `owner`'s record, as `sender` passed it on, is genuine. A
    /// record its owner sends itself needs no signature check: the
    /// connection it came over is authenticated (Noise) with that owner's
    /// identity key. One that a peer relays must carry its owner's signature.
    ///
    /// # Errors
    /// [`Error::Rejected`] saying which check failed.
    pub fn authenticate(&self, owner: &PeerId, sender: Option<PeerId>) -> Result<()> {
        if sender.as_ref() == Some(owner) {
            return Ok(());
        }
        let key = PublicKey::try_decode_protobuf(&self.public_key).map_err(|e| Error::Rejected(format!("bad public key: {e}")))?;
        if !key.verify(&self.record, &self.signature) {
            return Err(Error::Rejected("signature does not match the record".into()));
        }
        let signer = key.to_peer_id();
        if signer != *owner {
            return Err(Error::Rejected(format!("record of {owner} signed by {signer}")));
        }
        Ok(())
    }

    /// The record and its owner, as `sender` passed it on ([`Self::read`]
    /// then [`Self::authenticate`]).
    ///
    /// # Errors
    /// [`Error::Rejected`] saying which check failed.
    pub fn verify_from(&self, sender: Option<PeerId>) -> Result<(PeerId, NodeRecord)> {
        let (owner, record) = self.read()?;
        self.authenticate(&owner, sender)?;
        Ok((owner, record))
    }

    /// Checks the signature and the owner.
    ///
    /// # Errors
    /// [`Error::Rejected`] saying which check failed.
    pub fn verify(&self) -> Result<(PeerId, NodeRecord)> {
        self.verify_from(None)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

mod utf8_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(b).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn record(key: &Keypair) -> NodeRecord {
        NodeRecord { schema: SCHEMA, node_id: key.public().to_peer_id().to_string(), hostname: "pc-1".into(), incarnation: 3, seq: 9, ..Default::default() }
    }

    #[test]
    fn a_sealed_record_opens_and_a_forged_one_does_not() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let env = Envelope::seal(&record(&a), &a).unwrap();
        let (peer, r, _) = Envelope::open(&env.to_bytes()).unwrap();
        assert_eq!((peer, r.hostname.as_str()), (a.public().to_peer_id(), "pc-1"));
        // b signs a record claiming to be a.
        let forged = Envelope::seal(&record(&a), &b).unwrap();
        assert!(Envelope::open(&forged.to_bytes()).unwrap_err().to_string().contains("signed by"));
        // Tampered bytes.
        let mut tampered = env.clone();
        tampered.record = serde_json::to_vec(&NodeRecord { seq: 10, ..record(&a) }).unwrap();
        assert!(Envelope::open(&tampered.to_bytes()).unwrap_err().to_string().contains("signature"));
        assert!(Envelope::open(&vec![b' '; MAX_ENVELOPE + 1]).unwrap_err().to_string().contains("exceeds"));
    }

    #[test]
    fn a_record_its_owner_sends_needs_no_signature_but_a_relayed_one_does() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (pa, pb) = (a.public().to_peer_id(), b.public().to_peer_id());
        let mut env = Envelope::seal(&record(&a), &a).unwrap();
        env.signature = vec![0; 64];
        // Straight from a over a connection authenticated as a: its own word.
        assert_eq!(env.verify_from(Some(pa)).unwrap().0, pa);
        // The same bytes passed on by b, or from a snapshot: the signature counts.
        assert!(env.verify_from(Some(pb)).unwrap_err().to_string().contains("signature"));
        assert!(env.verify_from(None).is_err());
        // b cannot speak for a by sending a record that names a.
        let forged = Envelope::seal(&record(&a), &b).unwrap();
        assert!(forged.verify_from(Some(pb)).unwrap_err().to_string().contains("signed by"));
        assert_eq!(forged.read().unwrap().0, pa);
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        let r: NodeRecord = serde_json::from_str(r#"{"schema": 2, "node_id": "x", "gpu_temp": 71, "seq": 4}"#).unwrap();
        assert_eq!((r.schema, r.seq, r.hostname.as_str()), (2, 4, ""));
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let key = Keypair::generate_ed25519();
        let good = Envelope::seal(&record(&key), &key).unwrap().to_bytes();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                (0..rng.random_range(0..300)).map(|_| rng.random()).collect()
            } else {
                let mut b = good.clone();
                for _ in 0..rng.random_range(1..6) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b.truncate(rng.random_range(0..=b.len()));
                b
            };
            let _ = Envelope::open(&bytes);
        }
    }
}
