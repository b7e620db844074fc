//! What miners and validators share: identity, chain, storage, data, the window clock, and the
//! gather of one window's payloads.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayon::prelude::*;

use templar_chain::{Chain, Metagraph};
use templar_codec::Payload;
use templar_data::DataReceipt;
use templar_protocol::seal::{self, KEY_LEN, PayloadKey, TAG_LEN};
use templar_protocol::{Expected, Keypair, Kind, Network, UploadSlot, WindowClock};
use templar_storage::{ReadOutcome, Store};

use crate::commitment::{Commitment, Role};
use crate::config::NetworkConfig;
use crate::data::Data;
use crate::error::NodeError;
use crate::events::{Event, EventSink, Part, PeerReport, Phase};
use crate::gauntlet::PayloadStatus;
use crate::message::{GRADIENT_HEADER_LEN, GradientHeader};
use crate::peers::{Candidate, PeerSet, candidates, peer_set};

/// Everything a node needs besides its model.
pub struct Node<C> {
    pub config: NetworkConfig,
    pub network: Network,
    pub clock: WindowClock,
    pub chain: C,
    pub hotkey: Keypair,
    pub uid: u16,
    /// This node's own storage, where it publishes.
    pub store: Store,
    /// Shared with the thread a miner trains on.
    pub data: Arc<Data>,
    /// The codec schema of the network's model.
    pub schema: templar_codec::Schema,
    pub events: EventSink,
    /// Accept peers whose storage is a local directory (one-machine networks only).
    pub allow_local_peers: bool,
    /// Reads made to fail on purpose (fault scenarios on test networks).
    failed_reads: Vec<FailedRead>,
    peer_stores: Mutex<HashMap<Vec<u8>, Store>>,
}

/// A read made to fail on purpose, for fault scenarios on test networks: the live gather of
/// `window` meets a storage error on `uid`'s payload, as if the peer's bucket had not answered.
/// Later reads of it (a redo, a catch-up) succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedRead {
    pub window: u64,
    pub uid: u16,
}

impl std::str::FromStr for FailedRead {
    type Err = String;

    /// `WINDOW:UID`.
    fn from_str(text: &str) -> Result<FailedRead, String> {
        let bad = || format!("{text:?} is not WINDOW:UID (for example 12:3)");
        let (window, uid) = text.split_once(':').ok_or_else(bad)?;
        Ok(FailedRead {
            window: window.trim().parse().map_err(|_| bad())?,
            uid: uid.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// A payload whose signature and timing were verified, not yet decoded.
struct Read {
    uid: u16,
    uploaded_ms: u64,
    bytes: bytes::Bytes,
}

/// A verified, decoded payload.
pub struct Gathered {
    pub uid: u16,
    pub uploaded_ms: u64,
    /// blake3 of the gradient message (what manifests list).
    pub hash: [u8; 32],
    pub header: GradientHeader,
    pub payload: Payload,
    pub bytes: u64,
}

/// One peer's payload for a window: usable, or why not.
pub enum Verdict {
    Accepted(Box<Gathered>),
    Rejected {
        status: PayloadStatus,
        outcome: &'static str,
        reason: String,
    },
}

impl Verdict {
    fn rejected(
        status: PayloadStatus,
        outcome: &'static str,
        reason: impl Into<String>,
    ) -> Verdict {
        Verdict::Rejected {
            status,
            outcome,
            reason: reason.into(),
        }
    }

    pub fn accepted(&self) -> Option<&Gathered> {
        match self {
            Verdict::Accepted(g) => Some(g),
            Verdict::Rejected { .. } => None,
        }
    }
}

/// The chain's view of one window: who may contribute and whose payloads are aggregated.
/// A live gather's pins: each peer's pinned payload hash, or the verdict that already ends its
/// window, and when keys are due.
pub struct Pins {
    pins: BTreeMap<u16, Result<[u8; 32], Verdict>>,
    keys_due: u64,
}

/// `uids` without repeats, in their order.
fn unique(uids: &[u16]) -> Vec<u16> {
    let mut seen = std::collections::BTreeSet::new();
    uids.iter()
        .copied()
        .filter(|uid| seen.insert(*uid))
        .collect()
}

pub struct WindowPeers {
    pub metagraph: Metagraph,
    pub candidates: Vec<Candidate>,
    pub set: PeerSet,
}

impl<C: Chain> Node<C> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NetworkConfig,
        chain: C,
        hotkey: Keypair,
        uid: u16,
        store: Store,
        data: Data,
        events: EventSink,
        allow_local_peers: bool,
    ) -> Result<Node<C>, NodeError> {
        let network = config.network()?;
        let clock = WindowClock::new(config.window.blocks_per_window)
            .ok_or_else(|| NodeError::Config("window.blocks_per_window must be positive".into()))?;
        let schema = crate::replica::schema_for(&config)?;
        Ok(Node {
            schema,
            config,
            network,
            clock,
            chain,
            hotkey,
            uid,
            store,
            data: Arc::new(data),
            events,
            allow_local_peers,
            failed_reads: Vec::new(),
            peer_stores: Mutex::new(HashMap::new()),
        })
    }

    /// Makes these reads fail (see [`FailedRead`]): for test networks only.
    pub fn with_failed_reads(mut self, reads: Vec<FailedRead>) -> Node<C> {
        if !reads.is_empty() {
            tracing::warn!(
                ?reads,
                "reads of peers' payloads will fail on purpose (a fault scenario)"
            );
        }
        self.failed_reads = reads;
        self
    }

    /// Looks the hotkey up on chain and commits this node's storage location if it changed.
    pub async fn announce(&self, role: Role, commitment: &Commitment) -> Result<u16, NodeError> {
        let metagraph = self.chain.metagraph().await?;
        let account = self.hotkey.account();
        let neuron = metagraph
            .neurons
            .iter()
            .find(|n| n.hotkey == account)
            .ok_or_else(|| NodeError::NotRegistered(account.to_ss58()))?;
        let bytes = Commitment {
            role,
            ..commitment.clone()
        }
        .encode()?;
        if neuron.commitment.as_deref() != Some(bytes.as_slice()) {
            self.chain.commit(&self.hotkey, &bytes).await?;
        }
        Ok(neuron.uid)
    }

    pub fn phase(&self, window: u64, phase: Phase) {
        self.events.emit(Event::Phase { window, phase });
    }

    /// Reports a chain or storage failure the node goes on without.
    pub fn failed(&self, part: Part, action: &str, error: &dyn std::fmt::Display) {
        self.events.emit(Event::Failed {
            part,
            action: action.into(),
            error: error.to_string(),
        });
    }

    /// The peers of `window`, from the chain as it stood when the window began.
    pub async fn window_peers(&self, window: u64) -> Result<WindowPeers, NodeError> {
        let block = self.clock.first_block(window).saturating_sub(1);
        self.chain.wait_for_block(block + 1).await?;
        let metagraph = self.chain.metagraph_at(block).await?;
        let candidates = candidates(&metagraph);
        let set = peer_set(&candidates, &self.config.gather);
        Ok(WindowPeers {
            metagraph,
            candidates,
            set,
        })
    }

    /// The upload slot of `window` in chain time.
    pub async fn slot(&self, window: u64) -> Result<UploadSlot, NodeError> {
        let start = self
            .chain
            .block_timestamp(self.clock.first_block(window))
            .await?;
        let end = self
            .chain
            .block_timestamp(self.clock.end_block(window))
            .await?;
        let w = &self.config.window;
        Ok(UploadSlot::for_window(
            start,
            end,
            w.upload_grace_ms,
            w.clock_skew_ms,
        ))
    }

    /// Returns once the chain's clock has passed `ms` (the window's end block, then the local
    /// clock for the remainder: nodes are assumed within `clock_skew_ms` of chain time).
    pub async fn wait_until(&self, window_end_block: u64, ms: u64) -> Result<(), NodeError> {
        self.chain.wait_for_block(window_end_block).await?;
        let now = now_ms();
        if ms > now {
            tokio::time::sleep(Duration::from_millis(ms - now)).await;
        }
        Ok(())
    }

    /// How long after the upload slot closes miners reveal their payload keys: two clock
    /// skews, so that every gatherer, whose clock may differ from a miner's by that much, has
    /// pinned the sealed payloads before any key is out (see [`templar_protocol::seal`]).
    pub fn reveal_delay_ms(&self) -> u64 {
        2 * self.config.window.clock_skew_ms
    }

    /// Fetches, opens and checks the payloads of `uids` for `window`. `slot`: the live gather,
    /// called when the slot closes: it pins every payload first ([`Node::pin_all`]). `None`
    /// when replaying windows a manifest vouches for.
    pub async fn gather(
        &self,
        window: u64,
        uids: &[u16],
        peers: &WindowPeers,
        slot: Option<UploadSlot>,
    ) -> BTreeMap<u16, Verdict> {
        let pins = match slot {
            Some(slot) => Some(self.pin_all(window, uids, peers, slot).await),
            None => None,
        };
        self.gather_pinned(window, uids, peers, slot, pins).await
    }

    /// Pins every peer's sealed payload: the payload hash its signed head carries, read when the
    /// slot closes. A pin must be answered by the time keys are due (two clock skews after the
    /// close), before this node could have seen any key: a storage server that holds the answer back,
    /// to slip in a copy made from a revealed payload, has its payload left out (a storage
    /// failure: it may as well be this node's connection, so it never counts as a missed
    /// window). A node that itself starts pinning past that deadline counts its pins as its own
    /// read failure too.
    pub async fn pin_all(
        &self,
        window: u64,
        uids: &[u16],
        peers: &WindowPeers,
        slot: UploadSlot,
    ) -> Pins {
        // Keys come out two skews after the close by each miner's clock: a pin answered by then
        // came before any key this node's clock could have seen.
        let deadline = slot.closes_ms + self.reveal_delay_ms();
        let started_late = now_ms() > deadline;
        let uids = unique(uids);
        let pinned = uids.iter().map(|&uid| async move {
            if started_late {
                return (
                    uid,
                    Err(Verdict::rejected(
                        PayloadStatus::Unreadable,
                        "pinned_late",
                        "this node began pinning after the pin deadline: its own delay",
                    )),
                );
            }
            let left = Duration::from_millis(deadline.saturating_sub(now_ms()));
            let pin = match tokio::time::timeout(left, self.pin(window, uid, peers)).await {
                Ok(pin) => pin,
                // A storage failure: the peer's server, or this node's connection (an outage
                // must not slash everyone). Either way the payload is not used.
                Err(_) => Err(Verdict::rejected(
                    PayloadStatus::Unreadable,
                    "storage_error",
                    "the pin was not answered within a clock skew of the slot's close",
                )),
            };
            (uid, pin)
        });
        Pins {
            pins: futures::future::join_all(pinned)
                .await
                .into_iter()
                .collect(),
            keys_due: slot.closes_ms + self.reveal_delay_ms(),
        }
    }

    /// The rest of [`Node::gather`] once the payloads are pinned (`pins`: the live gather).
    /// It waits for the keys to be revealed, then refuses any payload other than the pinned
    /// one, whatever upload time its server claims, and enforces upload times.
    pub async fn gather_pinned(
        &self,
        window: u64,
        uids: &[u16],
        peers: &WindowPeers,
        slot: Option<UploadSlot>,
        pins: Option<Pins>,
    ) -> BTreeMap<u16, Verdict> {
        // Without pins (a catch-up recomputing a window), keys may still be on their way when
        // the window is recent: they are waited for up to the same deadline.
        let keys_due = pins
            .as_ref()
            .map(|p| p.keys_due)
            .or(slot.map(|s| s.closes_ms + self.reveal_delay_ms()));
        let mut pins = pins.map(|p| p.pins);
        let uids = unique(uids);
        if let Some(due) = keys_due {
            sleep_until_ms(due).await;
        }
        let reads = uids.iter().map(|&uid| {
            // A live gather reads nothing it did not pin.
            let pin = pins.as_mut().map(|pins| {
                pins.remove(&uid).unwrap_or_else(|| {
                    Err(Verdict::rejected(
                        PayloadStatus::Missing,
                        "missing",
                        "not pinned",
                    ))
                })
            });
            async move {
                let read = match pin {
                    Some(Err(verdict)) => Err(verdict),
                    Some(Ok(hash)) => {
                        self.read(window, uid, peers, slot, Some(hash), keys_due)
                            .await
                    }
                    None => self.read(window, uid, peers, slot, None, keys_due).await,
                };
                (uid, read)
            }
        });
        let read: Vec<(u16, Result<Read, Verdict>)> = futures::future::join_all(reads).await;
        // Decoding and validating is the CPU-heavy part: all payloads at once, on every core.
        read.into_par_iter()
            .map(|(uid, read)| (uid, read.map_or_else(|v| v, |r| self.decode(window, r))))
            .collect()
    }

    /// One peer's payload for `window`, checked as [`Node::gather`] checks it.
    pub async fn fetch(
        &self,
        window: u64,
        uid: u16,
        peers: &WindowPeers,
        slot: Option<UploadSlot>,
    ) -> Verdict {
        self.gather(window, &[uid], peers, slot)
            .await
            .remove(&uid)
            .unwrap_or_else(|| Verdict::rejected(PayloadStatus::Missing, "missing", "not read"))
    }

    /// The payload hash of `uid`'s sealed payload as it stands now, from its signed head.
    async fn pin(&self, window: u64, uid: u16, peers: &WindowPeers) -> Result<[u8; 32], Verdict> {
        let candidate = self.candidate(uid, peers)?;
        let store = self
            .peer_store(&candidate.commitment)
            .map_err(|reason| Verdict::rejected(PayloadStatus::Missing, "missing", reason))?;
        match store
            .read_head(&self.gradient_expected(window, candidate))
            .await
        {
            Ok(Ok(header)) => Ok(header.payload_hash),
            Ok(Err(ReadOutcome::Missing)) => Err(Verdict::rejected(
                PayloadStatus::Missing,
                "missing",
                "no payload when the upload slot closed",
            )),
            Ok(Err(outcome)) => Err(Verdict::rejected(
                PayloadStatus::Invalid,
                outcome.label(),
                format!("{outcome:?}"),
            )),
            Err(error) => Err(Verdict::rejected(
                PayloadStatus::Unreadable,
                "storage_error",
                error.to_string(),
            )),
        }
    }

    fn candidate<'p>(&self, uid: u16, peers: &'p WindowPeers) -> Result<&'p Candidate, Verdict> {
        peers
            .candidates
            .iter()
            .find(|c| c.uid == uid)
            .ok_or_else(|| Verdict::rejected(PayloadStatus::Missing, "missing", "not a miner"))
    }

    fn gradient_expected<'a>(&'a self, window: u64, candidate: &Candidate) -> Expected<'a> {
        Expected {
            network: &self.network,
            kind: Kind::Gradient,
            window,
            uid: candidate.uid,
            hotkey: candidate.hotkey,
            max_payload_len: (GRADIENT_HEADER_LEN + self.schema.max_payload_bytes() + TAG_LEN)
                as u64,
        }
    }

    /// `pinned`: the hash pinned when the slot closed (a live gather); `keys_due`: when keys
    /// are due, for a gather of a recent window.
    async fn read(
        &self,
        window: u64,
        uid: u16,
        peers: &WindowPeers,
        slot: Option<UploadSlot>,
        pinned: Option<[u8; 32]>,
        keys_due: Option<u64>,
    ) -> Result<Read, Verdict> {
        if slot.is_some() && self.failed_reads.contains(&FailedRead { window, uid }) {
            return Err(Verdict::rejected(
                PayloadStatus::Unreadable,
                "storage_error",
                "the read failed on purpose (a fault scenario)",
            ));
        }
        let candidate = self.candidate(uid, peers)?;
        self.read_payload(window, candidate, slot, pinned, keys_due)
            .await
    }

    /// Reads and verifies the signed object and opens it with its revealed key; decoding waits
    /// for [`Node::decode`].
    async fn read_payload(
        &self,
        window: u64,
        candidate: &Candidate,
        slot: Option<UploadSlot>,
        pinned: Option<[u8; 32]>,
        keys_due: Option<u64>,
    ) -> Result<Read, Verdict> {
        let store = match self.peer_store(&candidate.commitment) {
            Ok(store) => store,
            Err(reason) => {
                return Err(Verdict::rejected(PayloadStatus::Missing, "missing", reason));
            }
        };
        let expected = self.gradient_expected(window, candidate);
        let verified = match store.read_signed(&expected, slot).await {
            Ok(ReadOutcome::Ok(verified)) => verified,
            Ok(ReadOutcome::Missing) => {
                return Err(Verdict::rejected(
                    PayloadStatus::Missing,
                    "missing",
                    "no payload",
                ));
            }
            Ok(outcome @ (ReadOutcome::TooEarly { .. } | ReadOutcome::TooLate { .. })) => {
                return Err(Verdict::rejected(
                    PayloadStatus::Mistimed,
                    outcome.label(),
                    format!("{outcome:?}"),
                ));
            }
            Ok(outcome) => {
                return Err(Verdict::rejected(
                    PayloadStatus::Invalid,
                    outcome.label(),
                    format!("{outcome:?}"),
                ));
            }
            Err(error) => {
                return Err(Verdict::rejected(
                    PayloadStatus::Unreadable,
                    "storage_error",
                    error.to_string(),
                ));
            }
        };
        if pinned.is_some_and(|hash| hash != verified.header.payload_hash) {
            return Err(Verdict::rejected(
                PayloadStatus::Invalid,
                "changed",
                "the payload differs from the one pinned when the upload slot closed",
            ));
        }
        let key = self.read_key(&store, window, candidate, keys_due).await?;
        let message = seal::open(
            &key,
            &self.network,
            window,
            candidate.uid,
            &verified.payload,
        )
        .map_err(|e| Verdict::rejected(PayloadStatus::Invalid, "does_not_open", e.to_string()))?;
        Ok(Read {
            uid: candidate.uid,
            uploaded_ms: verified.uploaded_ms,
            bytes: message.into(),
        })
    }

    /// The key `candidate` revealed for `window`. In a live gather (`due`) a key not out yet is
    /// waited for, and a key counts only when its storage dates it at most two clock skews after
    /// it was due: the verdict rests on the key's upload time, the same for every gatherer, not
    /// on when each happened to read (which would let a miner revealing at the last moment
    /// split the network's gathers).
    async fn read_key(
        &self,
        store: &Store,
        window: u64,
        candidate: &Candidate,
        due: Option<u64>,
    ) -> Result<PayloadKey, Verdict> {
        let expected = Expected {
            network: &self.network,
            kind: Kind::PayloadKey,
            window,
            uid: candidate.uid,
            hotkey: candidate.hotkey,
            max_payload_len: KEY_LEN as u64,
        };
        let latest = due.map(|d| d + self.reveal_delay_ms());
        let give_up = latest.map(|l| l + self.config.window.clock_skew_ms);
        let mut pause = Duration::from_millis(50);
        loop {
            match store.read_signed(&expected, None).await {
                Ok(ReadOutcome::Ok(verified))
                    if latest.is_some_and(|l| verified.uploaded_ms > l) =>
                {
                    return Err(Verdict::rejected(
                        PayloadStatus::Missing,
                        "late_key",
                        format!(
                            "its payload key was revealed at {} ms, after the {} ms deadline",
                            verified.uploaded_ms,
                            latest.unwrap_or_default()
                        ),
                    ));
                }
                Ok(ReadOutcome::Ok(verified)) => {
                    return PayloadKey::from_bytes(&verified.payload).map_err(|e| {
                        Verdict::rejected(PayloadStatus::Invalid, "bad_key", e.to_string())
                    });
                }
                Ok(ReadOutcome::Missing) if give_up.is_some_and(|g| now_ms() < g) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Ok(ReadOutcome::Missing) => {
                    return Err(Verdict::rejected(
                        PayloadStatus::Missing,
                        "no_key",
                        "the key to its sealed payload was not revealed",
                    ));
                }
                Ok(outcome) => {
                    return Err(Verdict::rejected(
                        PayloadStatus::Invalid,
                        "bad_key",
                        format!("payload key: {outcome:?}"),
                    ));
                }
                Err(error) => {
                    return Err(Verdict::rejected(
                        PayloadStatus::Unreadable,
                        "storage_error",
                        error.to_string(),
                    ));
                }
            }
        }
    }

    /// `uid`'s sealed payload of `window` as stored, unopened: what a copier can take during
    /// the slot (the `early-copy` attack).
    pub(crate) async fn read_sealed(
        &self,
        window: u64,
        uid: u16,
        peers: &WindowPeers,
    ) -> Option<bytes::Bytes> {
        let candidate = self.candidate(uid, peers).ok()?;
        let store = self.peer_store(&candidate.commitment).ok()?;
        match store
            .read_signed(&self.gradient_expected(window, candidate), None)
            .await
        {
            Ok(ReadOutcome::Ok(verified)) => Some(verified.payload),
            _ => None,
        }
    }

    /// The key `uid` revealed for `window`, waiting until `give_up` (the `early-copy` attack
    /// republishes its victim's).
    pub(crate) async fn revealed_key(
        &self,
        window: u64,
        uid: u16,
        peers: &WindowPeers,
        due: u64,
    ) -> Option<PayloadKey> {
        let candidate = self.candidate(uid, peers).ok()?;
        let store = self.peer_store(&candidate.commitment).ok()?;
        self.read_key(&store, window, candidate, Some(due))
            .await
            .ok()
    }

    /// Checks a read payload's header and receipt and decodes it against the schema.
    fn decode(&self, window: u64, read: Read) -> Verdict {
        let bytes = read.bytes.len() as u64;
        let (header, codec_bytes) = match GradientHeader::decode(&read.bytes) {
            Ok(parts) => parts,
            Err(reason) => return Verdict::rejected(PayloadStatus::Invalid, "malformed", reason),
        };
        if let Err(reason) = self.check_receipt(read.uid, window, &header) {
            return Verdict::rejected(PayloadStatus::Invalid, "bad_receipt", reason);
        }
        let payload = match templar_codec::decode(&self.schema, codec_bytes) {
            Ok(payload) => payload,
            Err(e) => {
                return Verdict::rejected(PayloadStatus::Invalid, "undecodable", e.to_string());
            }
        };
        Verdict::Accepted(Box::new(Gathered {
            uid: read.uid,
            uploaded_ms: read.uploaded_ms,
            hash: *blake3::hash(&read.bytes).as_bytes(),
            header,
            payload,
            bytes,
        }))
    }

    /// The payload must say it trained on a whole number of batches from the start of its own
    /// assignment for this window, and carry the digest of exactly those samples.
    fn check_receipt(&self, uid: u16, window: u64, header: &GradientHeader) -> Result<(), String> {
        let samples = header.samples as usize;
        let batch = self.data.batch_size;
        if samples == 0 || samples > self.data.per_window || !samples.is_multiple_of(batch) {
            return Err(format!(
                "claims {samples} samples; expected a positive multiple of {batch} up to {}",
                self.data.per_window
            ));
        }
        let assignment = self.data.assignment(uid, window);
        if DataReceipt::of(&assignment[..samples]).0 != header.receipt {
            return Err("the data receipt does not match the miner's assignment".into());
        }
        Ok(())
    }

    fn peer_store(&self, commitment: &Commitment) -> Result<Store, String> {
        let local = !commitment.url.starts_with("s3://");
        if local && !self.allow_local_peers {
            return Err(format!(
                "storage {} is local to another machine; only s3:// locations are read",
                commitment.url
            ));
        }
        let key = commitment.encode().map_err(|e| e.to_string())?;
        let mut stores = self
            .peer_stores
            .lock()
            .map_err(|_| "store cache poisoned".to_string())?;
        if let Some(store) = stores.get(&key) {
            return Ok(store.clone());
        }
        let store = Store::open(&commitment.store_config()).map_err(|e| e.to_string())?;
        stores.insert(key, store.clone());
        Ok(store)
    }

    pub fn report(&self, window: u64, verdicts: &BTreeMap<u16, Verdict>, included: &[u16]) {
        let peers = verdicts
            .iter()
            .map(|(&uid, verdict)| match verdict {
                Verdict::Accepted(g) => PeerReport {
                    uid,
                    outcome: "ok".into(),
                    reason: String::new(),
                    bytes: g.bytes,
                },
                Verdict::Rejected {
                    outcome, reason, ..
                } => PeerReport {
                    uid,
                    outcome: (*outcome).into(),
                    reason: reason.clone(),
                    bytes: 0,
                },
            })
            .collect();
        self.events.emit(Event::Gathered {
            window,
            peers,
            included: included.to_vec(),
        });
    }
}

/// The window's aggregate inputs: the included uids (see [`crate::peers::included`]) and their
/// payloads, in ascending uid order.
pub fn aggregate_inputs<'a>(
    set: &PeerSet,
    verdicts: &'a BTreeMap<u16, Verdict>,
) -> (Vec<u16>, Vec<&'a Gathered>) {
    let accepted = |uid: &u16| verdicts.get(uid).and_then(Verdict::accepted);
    let chosen = crate::peers::included(set, |u| accepted(&u).is_some());
    let payloads = chosen.iter().filter_map(accepted).collect();
    (chosen, payloads)
}

/// Returns once the local clock has passed `ms` (Unix milliseconds).
pub async fn sleep_until_ms(ms: u64) {
    let now = now_ms();
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

pub fn now_ms() -> u64 {
    templar_chain::local::now_ms()
}
