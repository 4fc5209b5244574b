//! The swarm's event loop and the cloneable [`Client`] that talks to it.
//!
//! One task owns the libp2p `Swarm`: it dials what mDNS and the bootstrap
//! list find (on a fresh source port, and again every `redial` while not
//! connected: simultaneous dials from listen ports collide), publishes this
//! node's signed record on gossipsub when it changes (never to say it is
//! alive), trades snapshots with every new connection, runs the SWIM
//! membership protocol ([`crate::swim`]) over one stream each way per
//! connection, and keeps the [`Registry`]. Readers get the registry as a
//! `watch` value; updates go in over a bounded channel.
//!
//! Idle, a node sends one probe per period and answers the probes it gets:
//! its traffic does not grow with the swarm. Every probe and answer carries
//! a digest of the records its sender holds; a peer whose digest differs is
//! asked for what it has that this node lacks (anti-entropy).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, Transport, gossipsub, identify, mdns, noise, tcp, yamux};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::frame;
use crate::key::SwarmKey;
use crate::record::{Envelope, MAX_ENVELOPE, NodeId, NodeRecord, SCHEMA};
use crate::registry::{PeerView, Registry, Status};
use crate::swim::{self, Swim};

/// The gossip topic of registry records.
pub const TOPIC: &str = "/rbee/registry/1";
/// The snapshot exchange's protocol.
pub const SNAPSHOT_PROTOCOL: &str = "/rbee/snapshot/2";
/// The membership protocol's streams.
pub const SWIM_PROTOCOL: &str = "/rbee/swim/1";

/// Swarm settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub identity: Keypair,
    pub key: SwarmKey,
    /// e.g. `/ip4/0.0.0.0/tcp/0` (or `/memory/N` with `memory_transport`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial without mDNS (offices whose networks block multicast).
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Membership timings (probe period, suspicion).
    pub swim: swim::Config,
    /// How often at most this node asks one peer for records when their
    /// digests differ.
    pub record_sync: Duration,
    /// Up to this many nodes every node connects to every other (as mDNS
    /// finds them); in a larger swarm each keeps about `degree` connections
    /// to random others, and records and membership travel over them.
    pub full_mesh: usize,
    pub degree: usize,
    /// A down peer is no longer probed or dialed after this long.
    pub forget_after: Duration,
    /// ... but stays in the registry, shown down (or left), this long: a
    /// machine switched off for lunch is still listed as offline.
    pub show_gone_for: Duration,
    /// How often known but unconnected peers are dialed again.
    pub redial: Duration,
    /// In-process tests: libp2p's memory transport instead of TCP.
    pub memory_transport: bool,
}

impl Config {
    pub fn new(identity: Keypair, key: SwarmKey) -> Self {
        Self {
            identity,
            key,
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr")],
            bootstrap: Vec::new(),
            mdns: true,
            swim: swim::Config::default(),
            record_sync: Duration::from_millis(500),
            full_mesh: 64,
            degree: 16,
            forget_after: Duration::from_secs(60),
            show_gone_for: Duration::from_secs(24 * 3600),
            redial: Duration::from_secs(2),
            memory_transport: false,
        }
    }
}

/// The exchange when a connection opens: each side sends its own record
/// and is answered with the other's. With everyone connected to everyone
/// (mDNS), a node joining a swarm of N gets each record once, from its
/// owner; what a node still lacks (it is connected to only some nodes, or a
/// record was lost) comes by anti-entropy: asked with `delta` and a
/// summary of what it holds, a peer answers with every record it holds
/// newer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Snapshot {
    envelopes: Vec<Envelope>,
    /// (node id, incarnation, seq) of every record the asker holds (with
    /// `delta`); empty in answers.
    #[serde(default)]
    have: Vec<(String, u64, u64)>,
    #[serde(default)]
    delta: bool,
}

/// One membership message on the wire, with the digest of the records its
/// sender holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wire {
    m: swim::Msg<NodeId>,
    #[serde(default)]
    r: u64,
}

/// What a peer's writer task is given.
enum Out {
    Frame(Wire),
    /// Answered once everything before it is written.
    Flush(oneshot::Sender<()>),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    identify: identify::Behaviour,
    snapshot: request_response::cbor::Behaviour<Snapshot, Snapshot>,
    stream: libp2p_stream::Behaviour,
}

/// Counters of what the swarm did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Gossip and snapshot records rejected (malformed, oversized, forged).
    pub rejected: AtomicU64,
    /// Bytes of records this node published on the gossip topic.
    pub gossip_bytes_out: AtomicU64,
    /// Bytes of records received on the gossip topic.
    pub gossip_bytes_in: AtomicU64,
    /// Every byte this node's swarm connections sent (all protocols, as
    /// they leave the socket: encrypted, framed, multiplexed).
    pub wire_bytes_out: AtomicU64,
    /// Every byte its swarm connections received.
    pub wire_bytes_in: AtomicU64,
    /// Gossip messages not published (no mesh peer to publish to) or that
    /// gossipsub could not hand a peer in time (its queue to that peer was
    /// full or the message expired there).
    pub gossip_dropped: AtomicU64,
    /// Connections established and closed (all peers, all reasons).
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    /// Membership messages sent and received.
    pub swim_out: AtomicU64,
    pub swim_in: AtomicU64,
    /// Snapshot requests sent because a peer's record digest differed.
    pub record_syncs: AtomicU64,
}

/// A connection that adds what passes through it to [`Stats`].
struct Counted<S> {
    inner: S,
    stats: Arc<Stats>,
}

impl<S: futures_util::AsyncRead + Unpin> futures_util::AsyncRead for Counted<S> {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut [u8]) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.stats.wire_bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: futures_util::AsyncWrite + Unpin> futures_util::AsyncWrite for Counted<S> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.stats.wire_bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

enum Command {
    Update(Box<NodeRecord>),
    Leave,
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial(Multiaddr),
    /// Connect to a node (if not connected) and say whether it worked.
    Connect(PeerId, oneshot::Sender<bool>),
}

/// A handle on the running swarm. Cheap to clone; the swarm stops when
/// [`leave`](Client::leave) is called or the last handle is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    /// The event loop's task, taken by the first `leave`.
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<Vec<PeerView>>>,
    rtts: Arc<Mutex<HashMap<NodeId, Duration>>>,
    pub stats: Arc<Stats>,
    pub peer_id: PeerId,
    pub fingerprint: String,
    control: StreamControl,
}

/// libp2p-stream's control, which has no `Debug`.
#[derive(Clone)]
struct StreamControl(libp2p_stream::Control);

impl std::fmt::Debug for StreamControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamControl")
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Update(_) => "Update",
            Command::Leave => "Leave",
            Command::ListenAddrs(_) => "ListenAddrs",
            Command::Dial(_) => "Dial",
            Command::Connect(..) => "Connect",
        })
    }
}

impl Client {
    /// The registry now: this node first.
    pub fn peers(&self) -> Arc<Vec<PeerView>> {
        self.view.borrow().clone()
    }

    /// A receiver that changes whenever the registry does.
    pub fn watch(&self) -> watch::Receiver<Arc<Vec<PeerView>>> {
        self.view.clone()
    }

    /// Measured round-trip time to `node_id`.
    pub fn rtt(&self, node_id: &NodeId) -> Option<Duration> {
        self.rtts.lock().expect("rtt lock").get(node_id).copied()
    }

    /// Replaces this node's record (identity fields are filled in); gossiped at once if it changed.
    /// The first call announces the node: until then peers hold no record of it,
    /// so none of them ever lists it without models, memory or hostname.
    ///
    /// # Errors
    /// [`Error::Stopped`] when the swarm has stopped.
    pub async fn update(&self, record: NodeRecord) -> Result<()> {
        self.commands.send(Command::Update(Box::new(record))).await.map_err(|_| Error::Stopped)
    }

    /// The addresses this node listens on (a listener just asked for has
    /// none until its socket is bound: this waits up to 5 s for the first).
    ///
    /// # Errors
    /// [`Error::Stopped`] when the swarm has stopped.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        let start = Instant::now();
        loop {
            let (tx, rx) = oneshot::channel();
            self.commands.send(Command::ListenAddrs(tx)).await.map_err(|_| Error::Stopped)?;
            let addrs = rx.await.map_err(|_| Error::Stopped)?;
            if !addrs.is_empty() || start.elapsed() > Duration::from_secs(5) {
                return Ok(addrs);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Opens a stream of `protocol` to `node_id` (encrypted like every
    /// connection of the swarm).
    ///
    /// # Errors
    /// [`Error::Stream`] when the node id is not one or the stream cannot be opened.
    pub async fn open(&self, node_id: &NodeId, protocol: &'static str) -> Result<libp2p::Stream> {
        let peer: PeerId = node_id.as_str().parse().map_err(|e| Error::Stream(format!("{node_id}: {e}")))?;
        // In a large swarm a node is connected to only some others: connect
        // first (from the addresses its record gives).
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Connect(peer, tx)).await.map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(true)) => {}
            _ => return Err(Error::Stream(format!("{node_id}: cannot connect"))),
        }
        let mut control = self.control.0.clone();
        control.open_stream(peer, StreamProtocol::new(protocol)).await.map_err(|e| Error::Stream(format!("{node_id}: {e}")))
    }

    /// Streams other nodes open with `protocol`.
    ///
    /// # Errors
    /// [`Error::Stream`] when something already accepts `protocol`.
    pub fn accept(&self, protocol: &'static str) -> Result<libp2p_stream::IncomingStreams> {
        let mut control = self.control.0.clone();
        control.accept(StreamProtocol::new(protocol)).map_err(|e| Error::Stream(e.to_string()))
    }

    /// Leaves the swarm: says goodbye to every peer (they show this node as
    /// left, not crashed), closes every connection and stops the event loop;
    /// returns when it has stopped. Streams already open end with their
    /// connections.
    pub async fn leave(&self) {
        let task = self.task.lock().expect("task lock").take();
        let _ = self.commands.send(Command::Leave).await;
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Dials `addr` now (and keeps redialing it while unconnected).
    ///
    /// # Errors
    /// [`Error::Stopped`] when the swarm has stopped.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.commands.send(Command::Dial(addr)).await.map_err(|_| Error::Stopped)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn transport(key: &Keypair, swarm_key: SwarmKey, memory: bool, stats: &Arc<Stats>) -> std::result::Result<Boxed<(PeerId, StreamMuxerBox)>, BoxError> {
    Ok(if memory {
        secure(MemoryTransport::default(), key, swarm_key, stats)?
    } else {
        secure(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)), key, swarm_key, stats)?
    })
}

/// `base` (counted) behind the swarm key (pnet), then Noise and Yamux.
fn secure<T>(base: T, key: &Keypair, swarm_key: SwarmKey, stats: &Arc<Stats>) -> std::result::Result<Boxed<(PeerId, StreamMuxerBox)>, BoxError>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures_util::AsyncRead + futures_util::AsyncWrite + Send + Unpin + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let psk = swarm_key.psk();
    let stats = stats.clone();
    Ok(base
        .map(move |inner, _| Counted { inner, stats: stats.clone() })
        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(10))
        .boxed())
}

/// Starts the swarm on the current tokio runtime.
///
/// # Errors
/// When libp2p cannot be set up or a listen address cannot be used.
pub fn start(cfg: Config) -> Result<Client> {
    let peer_id = cfg.identity.public().to_peer_id();
    let memory = cfg.memory_transport;
    let swarm_key = cfg.key;
    let stats = Arc::new(Stats::default());
    let (mdns_on, query_interval) = (cfg.mdns && !memory, Duration::from_secs(5));
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.identity.clone())
        .with_tokio()
        .with_other_transport(|key| transport(key, swarm_key, memory, &stats))
        .map_err(|e| Error::Start(e.to_string()))?
        .with_behaviour(|key| {
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_secs(1))
                .max_transmit_size(MAX_ENVELOPE + 4096)
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                // Every node gets every record about once per mesh peer: a
                // smaller mesh than the default (6, 5..12) cuts what a node
                // receives. Publishing still goes to every connected peer
                // (flood publish): with mDNS that is everyone, so each record
                // arrives first from its owner, one hop, over a connection
                // that authenticates it (no signature check).
                .mesh_n(4)
                .mesh_n_low(3)
                .mesh_n_high(6)
                .mesh_outbound_min(1)
                // IHAVE (ids of recent messages, so peers can fetch any they
                // missed) to three non-mesh peers per heartbeat, not to a
                // quarter of all of them (a quarter of 99 peers × 100 ids
                // per second was most of the traffic at 100 nodes).
                .gossip_lazy(3)
                .gossip_factor(0.0)
                .flood_publish(true)
                // A record's id is its content: the copies of one new node's
                // record that every peer relays from its snapshot are one
                // message to gossipsub, seen once and forwarded once.
                .message_id_fn(|m| gossipsub::MessageId::from(Sha256::digest(&m.data).to_vec()))
                .build()
                .map_err(|e| Error::Start(e.to_string()))?;
            // Records carry their owner's signature, checked on receipt, so
            // gossipsub's own signing (one more signature per message, checked
            // on every copy) adds nothing: messages go unsigned, identified
            // by their content.
            let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_cfg).map_err(|e| Error::Start(e.to_string()))?;
            let mdns = if mdns_on {
                Some(
                    mdns::tokio::Behaviour::new(mdns::Config { query_interval, ..Default::default() }, key.public().to_peer_id())
                        .map_err(|e| Error::Start(format!("mDNS: {e}")))?,
                )
            } else {
                None
            };
            Ok(Behaviour {
                gossipsub,
                mdns: Toggle::from(mdns),
                identify: identify::Behaviour::new(identify::Config::new("/rbee/1".into(), key.public())),
                snapshot: request_response::cbor::Behaviour::new(
                    [(StreamProtocol::new(SNAPSHOT_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| Error::Start(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    let control = StreamControl(swarm.behaviour().stream.new_control());
    swarm.behaviour_mut().gossipsub.subscribe(&gossipsub::IdentTopic::new(TOPIC)).map_err(|e| Error::Start(e.to_string()))?;
    for addr in &cfg.listen {
        swarm.listen_on(addr.clone()).map_err(|e| Error::Address { addr: addr.to_string(), reason: e.to_string() })?;
    }
    let (commands, rx) = mpsc::channel(64);
    let (view_tx, view) = watch::channel(Arc::new(Vec::new()));
    let rtts = Arc::new(Mutex::new(HashMap::new()));
    let fingerprint = cfg.key.fingerprint();
    tracing::info!(%peer_id, swarm_key = %fingerprint, mdns = mdns_on, "swarm starting");
    let incarnation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let local = NodeRecord { schema: SCHEMA, node_id: peer_id.to_string(), incarnation, ..Default::default() };
    let registry = Registry::new(peer_id, cfg.show_gone_for.max(cfg.forget_after));
    let mut swim_cfg = cfg.swim.clone();
    swim_cfg.forget_after = cfg.forget_after;
    let swim = Swim::new(NodeId::from(peer_id), incarnation, swim_cfg, rand::random());
    let (inbound_tx, inbound) = mpsc::channel(1024);
    let incoming = control.0.clone().accept(StreamProtocol::new(SWIM_PROTOCOL)).map_err(|e| Error::Start(e.to_string()))?;
    let mut ev = EventLoop {
        swarm,
        cfg,
        registry,
        local,
        envelope: None,
        known: HashMap::new(),
        bootstrap: HashSet::new(),
        view: view_tx,
        view_stale: false,
        rtts: rtts.clone(),
        stats: stats.clone(),
        swim,
        t0: Instant::now(),
        writers: HashMap::new(),
        control: control.0.clone(),
        last_record_sync: None,
        inbound_tx,
        connecting: HashMap::new(),
    };
    ev.bootstrap.extend(ev.cfg.bootstrap.iter().cloned());
    ev.dial_bootstrap();
    // Nothing is announced until the owner gives its first record
    // (`Client::update`): peers never see a placeholder without models,
    // memory or hostname.
    let task = Arc::new(Mutex::new(Some(tokio::spawn(ev.run(rx, inbound, incoming)))));
    Ok(Client { task, commands, view, rtts, stats, peer_id, fingerprint, control })
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    cfg: Config,
    registry: Registry,
    local: NodeRecord,
    envelope: Option<Envelope>,
    /// Peers heard of (mDNS, identify, records) with an address of each
    /// and when they were last connected or heard of: one unreachable for
    /// `forget_after` is no longer dialed (mDNS or a record brings it back).
    known: HashMap<PeerId, (Multiaddr, Instant)>,
    bootstrap: HashSet<Multiaddr>,
    view: watch::Sender<Arc<Vec<PeerView>>>,
    /// Peers were heard from since the view was last built: that moves
    /// only their time last heard, so the view is rebuilt once a second
    /// rather than on every probe.
    view_stale: bool,
    rtts: Arc<Mutex<HashMap<NodeId, Duration>>>,
    stats: Arc<Stats>,
    swim: Swim<NodeId>,
    /// The membership protocol's clock starts here.
    t0: Instant,
    /// One writer task per connected peer, each with its own stream.
    writers: HashMap<PeerId, mpsc::Sender<Out>>,
    control: libp2p_stream::Control,
    /// When a peer was last asked for records (anti-entropy: one peer per
    /// `record_sync`, however many differ, or a node that lacks records
    /// would be sent them by every peer at once).
    last_record_sync: Option<Instant>,
    /// Where the readers of peers' membership streams put what they read.
    inbound_tx: mpsc::Sender<(PeerId, Wire)>,
    /// Those waiting for a connection to a node (`Client::open`).
    connecting: HashMap<PeerId, Vec<oneshot::Sender<bool>>>,
}

/// Reads one peer's membership stream into `tx` until the stream ends (a
/// message that finds the event loop's queue full is dropped, as a datagram
/// would be: the protocol expects losses).
async fn read_swim(peer: PeerId, mut stream: libp2p::Stream, tx: mpsc::Sender<(PeerId, Wire)>) {
    loop {
        let w = tokio::select! {
            r = frame::read::<_, Wire>(&mut stream) => match r {
                Ok(Some(w)) => w,
                _ => return,
            },
            // The event loop ended: the stream is dropped, so its
            // connection can close.
            () = tx.closed() => return,
        };
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send((peer, w)) {
            return;
        }
    }
}

/// Writes what the event loop sends `peer` onto one stream, in order.
fn spawn_writer(mut control: libp2p_stream::Control, peer: PeerId) -> mpsc::Sender<Out> {
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    tokio::spawn(async move {
        // Bounded: a stream asked for as the connection closes would
        // otherwise wait for a connection that never comes.
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), control.open_stream(peer, StreamProtocol::new(SWIM_PROTOCOL))).await else {
            return;
        };
        while let Some(out) = rx.recv().await {
            match out {
                Out::Frame(w) => {
                    if frame::write(&mut stream, &w).await.is_err() {
                        return;
                    }
                }
                Out::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
        let _ = futures_util::AsyncWriteExt::close(&mut stream).await;
    });
    tx
}

impl EventLoop {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut inbound: mpsc::Receiver<(PeerId, Wire)>, mut incoming: libp2p_stream::IncomingStreams) {
        let mut redial = tokio::time::interval(self.cfg.redial);
        let mut expire = tokio::time::interval(Duration::from_secs(1));
        let wake = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                cmd = commands.recv() => match cmd {
                    Some(Command::Update(r)) => self.update(*r),
                    Some(Command::Leave) => break,
                    Some(Command::ListenAddrs(tx)) => { let _ = tx.send(self.swarm.listeners().cloned().collect()); }
                    Some(Command::Dial(addr)) => { self.bootstrap.insert(addr.clone()); self.dial_addr(addr); }
                    Some(Command::Connect(peer, tx)) => self.connect(peer, tx),
                    None => break,
                },
                Some((peer, wire)) = inbound.recv() => self.on_swim(peer, wire),
                Some((peer, stream)) = incoming.next() => { tokio::spawn(read_swim(peer, stream, self.inbound_tx.clone())); }
                () = &mut wake => self.swim.tick(self.now()),
                _ = redial.tick() => self.redial(),
                _ = expire.tick() => {
                    if self.registry.tick(Instant::now()) || self.view_stale {
                        self.publish_view();
                    }
                }
            }
            self.flush_swim();
            wake.as_mut().reset((self.t0 + self.swim.next_wake()).into());
        }
        self.leave().await;
        tracing::info!("swarm stopped");
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Sends what the membership protocol wrote and acts on what it
    /// decided.
    fn flush_swim(&mut self) {
        loop {
            let out = self.swim.take_outbox();
            let events = self.swim.take_events();
            if out.is_empty() && events.is_empty() {
                return;
            }
            if !out.is_empty() {
                let digest = self.registry.digest();
                for (to, m) in out {
                    self.send_swim(&to, Wire { m, r: digest });
                }
            }
            for e in events {
                self.on_membership(e);
            }
        }
    }

    fn send_swim(&mut self, to: &NodeId, w: Wire) {
        let Ok(peer) = to.as_str().parse::<PeerId>() else { return };
        if !self.swarm.is_connected(&peer) {
            return;
        }
        let control = &self.control;
        let tx = self.writers.entry(peer).or_insert_with(|| spawn_writer(control.clone(), peer));
        match tx.try_send(Out::Frame(w)) {
            Ok(()) => {
                self.stats.swim_out.fetch_add(1, Ordering::Relaxed);
            }
            // The writer gave up (its stream failed): a new one next time.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.writers.remove(&peer);
            }
            // Backed up: dropped, like a datagram.
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
    }

    fn on_swim(&mut self, peer: PeerId, w: Wire) {
        self.stats.swim_in.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.registry.heard(&peer, now);
        self.view_stale = true;
        self.swim.handle(NodeId::from(peer), w.m, self.now());
        // Anti-entropy: the peer holds records that differ from ours; ask it
        // for those we lack (at most once per `record_sync`).
        if w.r != 0 && self.envelope.is_some() && w.r != self.registry.digest() {
            let due = self.last_record_sync.is_none_or(|t| now.duration_since(t) >= self.cfg.record_sync);
            if due {
                self.last_record_sync = Some(now);
                self.stats.record_syncs.fetch_add(1, Ordering::Relaxed);
                self.ask_snapshot(peer, true);
            }
        }
    }

    /// Sends `peer` this node's record and asks for its own; with `delta`,
    /// for every record it holds that this node lacks or holds older.
    fn ask_snapshot(&mut self, peer: PeerId, delta: bool) {
        let have = if delta { self.registry.summary() } else { Vec::new() };
        let ask = Snapshot { envelopes: self.envelope.iter().cloned().collect(), have, delta };
        self.swarm.behaviour_mut().snapshot.send_request(&peer, ask);
    }

    /// A membership change: the registry shows it.
    fn on_membership(&mut self, e: swim::Event<NodeId>) {
        let now = Instant::now();
        let (id, status) = match e {
            swim::Event::Alive(id) => (id, Status::Up),
            swim::Event::Suspect(id) => (id, Status::Suspect),
            swim::Event::Down(id) => (id, Status::Down),
            swim::Event::Left(id) => (id, Status::Left),
            swim::Event::Rtt(id, rtt) => {
                self.rtts.lock().expect("rtt lock").insert(id, rtt);
                return;
            }
            swim::Event::Forgotten(_) => return,
        };
        let Ok(peer) = id.as_str().parse::<PeerId>() else { return };
        tracing::debug!(%peer, ?status, "membership");
        if status == Status::Left {
            // Gone for good: not dialed again (mDNS brings it back if it returns).
            self.known.remove(&peer);
        }
        // Alive, or back: its record may be missing or from an earlier run
        // (a restart is news to the membership protocol first); ask it.
        if status == Status::Up && self.swarm.is_connected(&peer) {
            self.ask_snapshot(peer, false);
        }
        if self.registry.record(&peer).is_none() {
            return;
        }
        if self.registry.set_status(&peer, status, now) {
            self.publish_view();
        }
    }

    /// Says goodbye, then closes every connection, so peers show this node
    /// as left at once (bounded: a peer that does not answer is left).
    async fn leave(&mut self) {
        self.swim.leave();
        self.flush_swim();
        let flushed: Vec<oneshot::Receiver<()>> = self
            .writers
            .values()
            .filter_map(|tx| {
                let (done, rx) = oneshot::channel();
                tx.try_send(Out::Flush(done)).ok().map(|()| rx)
            })
            .collect();
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            let all = futures_util::future::join_all(flushed);
            tokio::pin!(all);
            loop {
                tokio::select! {
                    _ = &mut all => break,
                    _ = self.swarm.select_next_some() => {}
                }
            }
        })
        .await;
        self.writers.clear();
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while self.swarm.connected_peers().next().is_some() {
                self.swarm.select_next_some().await;
            }
        })
        .await;
    }

    fn update(&mut self, mut r: NodeRecord) {
        r.schema = SCHEMA;
        r.node_id = self.local.node_id.clone();
        r.addrs.clone_from(&self.local.addrs);
        r.incarnation = self.local.incarnation;
        r.seq = self.local.seq;
        let first = self.envelope.is_none();
        if !r.content_eq(&self.local) || first {
            r.seq = self.local.seq + 1;
            self.local = r;
            self.publish_local();
            self.gossip();
            // The first record is handed to every peer connected so far as
            // well: gossipsub drops a publish to peers whose subscription it
            // has not heard yet, which is likely this early.
            if first {
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for p in peers {
                    self.ask_snapshot(p, false);
                }
            }
        }
    }

    /// Seals the local record and puts it in our own registry.
    fn publish_local(&mut self) {
        match Envelope::seal(&self.local, &self.cfg.identity) {
            Ok(env) => {
                let peer = *self.swarm.local_peer_id();
                let merged = self.registry.merge(peer, self.local.clone(), env.clone(), Instant::now());
                self.envelope = Some(env);
                if merged.changed() {
                    self.publish_view();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot sign our record"),
        }
    }

    fn gossip(&mut self) {
        let Some(env) = &self.envelope else { return };
        let bytes = env.to_bytes();
        let n = bytes.len() as u64;
        match self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(TOPIC), bytes) {
            Ok(_) => {
                self.stats.gossip_bytes_out.fetch_add(n, Ordering::Relaxed);
            }
            // Alone, or before anyone subscribed: not an error.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic | gossipsub::PublishError::Duplicate) => {}
            Err(e) => {
                self.stats.gossip_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "gossip not published");
            }
        }
    }

    fn publish_view(&mut self) {
        self.view_stale = false;
        let v = self.registry.view(Instant::now());
        self.view.send_if_modified(|old| {
            if **old == v {
                return false;
            }
            *old = Arc::new(v);
            true
        });
    }

    /// A received envelope, read once: `None` when it is no newer than the
    /// record held (dropped before its signature is checked), else the
    /// authenticated owner and record.
    fn check(&self, env: Result<Envelope>, from: Option<PeerId>) -> Result<Option<(PeerId, NodeRecord, Envelope)>> {
        let env = env?;
        let (owner, record) = env.read()?;
        if self.registry.holds(&owner, record.incarnation, record.seq) {
            return Ok(None);
        }
        env.authenticate(&owner, from)?;
        Ok(Some((owner, record, env)))
    }

    /// Merges a received record. A node learned of from a snapshot (a peer
    /// that just connected) is passed on to everyone at once, so a new node
    /// is in every registry within milliseconds.
    fn take(&mut self, env: Result<Envelope>, from: Option<PeerId>, via_snapshot: bool) {
        match self.check(env, from) {
            Ok(None) => {}
            Ok(Some((owner, record, env))) => {
                if owner == *self.swarm.local_peer_id() {
                    return;
                }
                let relay = via_snapshot.then(|| env.to_bytes());
                let dial: Vec<Multiaddr> = if self.swarm.is_connected(&owner) || self.known.contains_key(&owner) {
                    Vec::new()
                } else {
                    record.addrs.iter().filter_map(|a| a.parse().ok()).collect()
                };
                let incarnation = record.incarnation;
                let merged = self.registry.merge(owner, record, env, Instant::now());
                if merged.changed() {
                    self.publish_view();
                    // A member from now on (or again, for a new run).
                    let reachable = self.swarm.is_connected(&owner);
                    self.swim.meet(NodeId::from(owner), incarnation, reachable, self.now());
                    // The membership protocol may hold it down (its death
                    // was news before this record): the record does not
                    // overrule it.
                    if let Some(state) = self.swim.state(&NodeId::from(owner))
                        && self.registry.set_status(&owner, state.into(), Instant::now())
                    {
                        self.publish_view();
                    }
                }
                // Connect to every node heard of, as mDNS would: with
                // bootstrap peers alone the swarm would otherwise be a star,
                // and gossipsub keeps only a few of a hub's leaves in its
                // mesh, so the others hear of everyone late.
                if merged.changed()
                    && let Some(first) = dial.first()
                {
                    self.known.insert(owner, (first.clone(), Instant::now()));
                    if self.wants_more()
                        && let Err(e) = self.swarm.dial(DialOpts::peer_id(owner).addresses(dial).allocate_new_port().build())
                    {
                        tracing::debug!(%owner, error = %e, "dial failed");
                    }
                }
                // Only a join is relayed: a snapshot also carries newer
                // records of nodes everyone already has (anti-entropy), and
                // relaying those floods the swarm while many nodes start.
                if merged.joined()
                    && let Some(bytes) = relay
                {
                    let n = bytes.len() as u64;
                    if self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(TOPIC), bytes).is_ok() {
                        self.stats.gossip_bytes_out.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?from, error = %e, "record rejected");
            }
        }
    }

    fn dial_addr(&mut self, addr: Multiaddr) {
        let peer = addr.iter().find_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None });
        if let Some(p) = peer
            && (self.swarm.is_connected(&p) || p == *self.swarm.local_peer_id())
        {
            return;
        }
        let opts = match peer {
            Some(p) => DialOpts::peer_id(p).addresses(vec![addr.clone()]).allocate_new_port().build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).allocate_new_port().build(),
        };
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%addr, error = %e, "dial failed");
        }
    }

    /// How many nodes the swarm has, as far as this node can tell.
    fn swarm_size(&self) -> usize {
        self.registry.live().max(self.known.len() + 1).max(self.bootstrap.len() + 1)
    }

    /// Whether to connect to one more node: always in a swarm small enough
    /// for a full mesh, else while this node has fewer than `degree`
    /// connections.
    fn wants_more(&self) -> bool {
        self.swarm_size() <= self.cfg.full_mesh || self.swarm.connected_peers().count() < self.cfg.degree
    }

    /// Dials the bootstrap peers: all of them in a small swarm, else a
    /// random `degree` of them (any one is enough to learn the rest).
    fn dial_bootstrap(&mut self) {
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut boot: Vec<Multiaddr> = self.bootstrap.iter().cloned().collect();
        boot.retain(|addr| {
            let peer = addr.iter().find_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None });
            // Without a peer id we cannot tell whether it is connected: redial
            // only while nobody at all is connected.
            peer.is_some_and(|p| !connected.contains(&p)) || (peer.is_none() && connected.is_empty())
        });
        if self.swarm_size() > self.cfg.full_mesh {
            use rand::seq::SliceRandom;
            boot.shuffle(&mut rand::rng());
            boot.truncate(self.cfg.degree.saturating_sub(connected.len()).max(usize::from(connected.is_empty())));
        }
        for addr in boot {
            self.dial_addr(addr);
        }
    }

    /// Connects to `peer` for `Client::open`, from the addresses its record
    /// or discovery gave.
    fn connect(&mut self, peer: PeerId, tx: oneshot::Sender<bool>) {
        if self.swarm.is_connected(&peer) || peer == *self.swarm.local_peer_id() {
            let _ = tx.send(true);
            return;
        }
        let mut addrs: Vec<Multiaddr> = self.registry.record(&peer).map(|r| r.addrs.iter().filter_map(|a| a.parse().ok()).collect()).unwrap_or_default();
        if let Some((a, _)) = self.known.get(&peer) {
            addrs.push(a.clone());
        }
        if addrs.is_empty() {
            let _ = tx.send(false);
            return;
        }
        self.connecting.entry(peer).or_default().push(tx);
        if let Err(e) = self.swarm.dial(DialOpts::peer_id(peer).addresses(addrs).allocate_new_port().build()) {
            tracing::debug!(%peer, error = %e, "dial failed");
            for tx in self.connecting.remove(&peer).unwrap_or_default() {
                let _ = tx.send(false);
            }
        }
    }

    fn dial_peer(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) || !self.wants_more() {
            return;
        }
        let opts = DialOpts::peer_id(peer).addresses(vec![addr]).allocate_new_port().build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial failed");
        }
    }

    fn redial(&mut self) {
        let now = Instant::now();
        let forget = self.cfg.forget_after;
        let swarm = &self.swarm;
        self.known.retain(|p, (_, seen)| {
            if swarm.is_connected(p) {
                *seen = now;
            }
            now.duration_since(*seen) < forget
        });
        let known: Vec<(PeerId, Multiaddr)> = self.known.iter().map(|(p, (a, _))| (*p, a.clone())).collect();
        for (p, a) in known {
            self.dial_peer(p, a);
        }
        if self.wants_more() {
            self.dial_bootstrap();
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "swarm listening");
                if !address.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()) || matches!(p, Protocol::Ip6(ip) if ip.is_loopback())) {
                    self.local.addrs.push(address.to_string());
                    if self.envelope.is_some() {
                        self.local.seq += 1;
                        self.publish_local();
                        self.gossip();
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, num_established, .. } => {
                tracing::debug!(%peer_id, "connected");
                self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
                for tx in self.connecting.remove(&peer_id).unwrap_or_default() {
                    let _ = tx.send(true);
                }
                if num_established.get() == 1 {
                    self.ask_snapshot(peer_id, false);
                    self.swim.set_reachable(&NodeId::from(peer_id), true);
                }
            }
            SwarmEvent::ConnectionClosed { num_established: n, .. } if n > 0 => {
                self.stats.connections_closed.fetch_add(1, Ordering::Relaxed);
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => {
                tracing::debug!(%peer_id, "disconnected");
                self.stats.connections_closed.fetch_add(1, Ordering::Relaxed);
                self.writers.remove(&peer_id);
                // Its process ended or its machine is gone: down now, and
                // the others are told (a live node refutes and reconnects).
                self.swim.closed(&NodeId::from(peer_id), self.now());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.known.insert(peer, (addr.clone(), Instant::now()));
                    self.dial_peer(peer, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                if let Some(addr) = info.listen_addrs.iter().find(|a| !a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()))) {
                    self.known.entry(peer_id).or_insert_with(|| (addr.clone(), Instant::now()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message, .. })) => {
                self.stats.gossip_bytes_in.fetch_add(message.data.len() as u64, Ordering::Relaxed);
                self.take(Envelope::parse(&message.data), Some(propagation_source), false);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Snapshot(request_response::Event::Message { peer, message, .. })) => {
                let snapshot = match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let envelopes =
                            if request.delta { self.registry.envelopes_missing_from(&request.have) } else { self.envelope.iter().cloned().collect() };
                        let _ = self.swarm.behaviour_mut().snapshot.send_response(channel, Snapshot { envelopes, have: Vec::new(), delta: false });
                        request
                    }
                    request_response::Message::Response { response, .. } => response,
                };
                for env in snapshot.envelopes.into_iter().take(10_000) {
                    self.take(Ok(env), Some(peer), true);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::SlowPeer { peer_id, failed_messages })) => {
                let n = failed_messages.priority + failed_messages.non_priority;
                self.stats.gossip_dropped.fetch_add(n as u64, Ordering::Relaxed);
                tracing::debug!(%peer_id, dropped = n, "gossip to a slow peer dropped");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "dial error");
                if let Some(p) = peer_id
                    && !self.swarm.is_connected(&p)
                {
                    for tx in self.connecting.remove(&p).unwrap_or_default() {
                        let _ = tx.send(false);
                    }
                }
            }
            _ => {}
        }
    }
}
