//! The swarm key (a pre-shared key every member holds) and this node's
//! persistent identity.

use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

use crate::error::{Error, Result};

/// Join codes start with this, so a pasted string is recognisably ours.
const CODE_PREFIX: &str = "rbee-swarm-";

/// The 32-byte pre-shared key of one swarm. Without it a machine cannot
/// complete a connection to any member (libp2p pnet).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SwarmKey([u8; 32]);

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "SwarmKey({})", self.fingerprint())
    }
}

impl SwarmKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The join code people paste: `rbee-swarm-` and 64 hex digits.
    pub fn join_code(&self) -> String {
        format!("{CODE_PREFIX}{}", hex::encode(self.0))
    }

    /// Reads a join code (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] saying what is wrong with it.
    pub fn from_join_code(code: &str) -> Result<Self> {
        let hex_part = code.trim().strip_prefix(CODE_PREFIX).ok_or_else(|| Error::InvalidKey(format!("a join code starts with `{CODE_PREFIX}`")))?;
        let bytes = hex::decode(hex_part).map_err(|e| Error::InvalidKey(format!("the part after `{CODE_PREFIX}` must be hex digits: {e}")))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| Error::InvalidKey(format!("the key must be 32 bytes (64 hex digits), got {}", b.len())))?;
        // A key typed by hand (all zeros, one repeated byte, a short pattern)
        // is guessable; a random one has ~28 distinct bytes out of 32.
        let mut distinct = key.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 12 {
            return Err(Error::InvalidKey("this key is not random (too few distinct bytes): create one with `rbee swarm init`".into()));
        }
        Ok(Self(key))
    }

    /// A short public name of the key (libp2p's pnet fingerprint): safe to
    /// log and show, so two machines can tell whether they hold the same key.
    pub fn fingerprint(&self) -> String {
        PreSharedKey::new(self.0).fingerprint().to_string()
    }

    pub(crate) fn psk(&self) -> PreSharedKey {
        PreSharedKey::new(self.0)
    }
}

/// This node's identity key, created on first start and kept in `path`.
///
/// # Errors
/// When the file cannot be read or written, or holds no valid key.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::Identity(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| Error::Identity(e.to_string()))?;
            write_private(path, &bytes).map_err(|e| Error::Identity(format!("{}: {e}", path.display())))?;
            Ok(key)
        }
        Err(e) => Err(Error::Identity(format!("{}: {e}", path.display()))),
    }
}

/// Writes a secret to `path` whole or not at all: through a new temporary
/// file beside it that only the owner can read or write (mode 0600 on Unix
/// from the moment it exists), synced, then renamed over `path`. Creates the
/// parent directory.
///
/// # Errors
/// When the directory or the file cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    // tempfile creates its files with mode 0600 on Unix.
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_codes_round_trip_and_bad_ones_say_why() {
        let k = SwarmKey::generate();
        assert_eq!(SwarmKey::from_join_code(&format!("  {}\n", k.join_code())).unwrap(), k);
        assert_ne!(SwarmKey::generate(), k);
        let zeros = format!("rbee-swarm-{}", "00".repeat(32));
        let pattern = format!("rbee-swarm-{}", &"0123456789".repeat(7)[..64]);
        for (bad, why) in [
            ("abc", "starts with"),
            ("rbee-swarm-zz", "hex"),
            ("rbee-swarm-abcd", "32 bytes"),
            (zeros.as_str(), "not random"),
            (pattern.as_str(), "not random"),
        ] {
            assert!(SwarmKey::from_join_code(bad).unwrap_err().to_string().contains(why), "{bad}");
        }
        assert!(!format!("{k:?}").contains(&k.join_code()[11..]));
    }

    #[test]
    fn identity_is_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("swarm/identity.key");
        let a = load_or_create_identity(&p).unwrap();
        let b = load_or_create_identity(&p).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
            // Nothing but the key is left in its directory.
            assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        }
        std::fs::write(&p, b"garbage").unwrap();
        assert!(load_or_create_identity(&p).is_err());
    }
}
