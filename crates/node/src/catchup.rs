//! Bringing a node's model up to date: from its own saved state or the checkpoint of the
//! validator with the most stake, then window by window from that validator's manifests (or,
//! where a manifest is missing, by recomputing the window's aggregate from the miners' payloads,
//! which needs no leader at all). Each replayed manifest's fingerprint is checked.

use templar_chain::Chain;
use templar_codec::Payload;
use templar_protocol::{AccountId, Expected, Kind, layout};
use templar_storage::{ReadOutcome, Store};

use crate::checkpoint;
use crate::commitment::{Commitment, Role};
use crate::error::NodeError;
use crate::events::{Event, Part, Phase};
use crate::fingerprint::Fingerprint;
use crate::message::{MAX_MANIFEST_BYTES, WindowManifest};
use crate::node::{Gathered, Node, Verdict, WindowPeers, aggregate_inputs};
use crate::progress::{self, Progress};
use crate::replica::NetworkReplica;

/// The validator whose checkpoints and manifests a node follows.
pub struct Source {
    pub uid: u16,
    pub hotkey: AccountId,
    pub store: Store,
}

/// Where the replica stands: the last window whose aggregate it includes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    pub last_window: Option<u64>,
    pub global_step: u64,
}

/// The validator-role neuron with the most stake (ties: lowest uid) and a readable location.
pub async fn source<C: Chain>(node: &Node<C>) -> Result<Option<Source>, NodeError> {
    Ok(sources(node).await?.into_iter().next())
}

/// Every validator-role neuron whose location opens, most stake first (ties: lowest uid).
pub async fn sources<C: Chain>(node: &Node<C>) -> Result<Vec<Source>, NodeError> {
    let metagraph = node.chain.metagraph().await?;
    let mut validators: Vec<_> = metagraph
        .neurons
        .iter()
        .filter_map(|n| {
            let commitment = Commitment::decode(n.commitment.as_deref()?).ok()?;
            (commitment.role == Role::Validator).then_some((n, commitment))
        })
        .collect();
    validators.sort_by(|a, b| b.0.stake.cmp(&a.0.stake).then(a.0.uid.cmp(&b.0.uid)));
    let mut sources = Vec::with_capacity(validators.len());
    for (neuron, commitment) in validators {
        match Store::open(&commitment.store_config()) {
            Ok(store) => sources.push(Source {
                uid: neuron.uid,
                hotkey: neuron.hotkey,
                store,
            }),
            // The first must open: it is the network's reference. The others are fallbacks.
            Err(error) if sources.is_empty() => return Err(error.into()),
            Err(error) => {
                tracing::debug!(uid = neuron.uid, %error, "a validator's storage does not open")
            }
        }
    }
    Ok(sources)
}

/// The newest checkpoint a validator (most stake first) published of a window in `from..=to`,
/// and the store it is in: where a catch-up goes on past a window it cannot replay. Another
/// validator's checkpoint is taken only when `reference`'s manifest of its window names the same
/// model and global step (anyone can commit as a validator and publish a checkpoint; the
/// reference is the one the node follows).
async fn checkpoint_covering<C: Chain>(
    node: &Node<C>,
    reference: &Source,
    from: u64,
    to: u64,
) -> Result<Option<(checkpoint::Descriptor, Store)>, NodeError> {
    for source in sources(node).await? {
        let descriptor = match checkpoint::latest(
            &source.store,
            &node.network,
            source.uid,
            source.hotkey,
        )
        .await
        {
            Ok(Some(descriptor)) if (from..=to).contains(&descriptor.window) => descriptor,
            Ok(_) => continue,
            Err(error) => {
                tracing::debug!(uid = source.uid, %error, "a validator's checkpoint is not readable");
                continue;
            }
        };
        if source.uid != reference.uid {
            let vouched = manifest(node, reference, descriptor.window)
                .await
                .ok()
                .flatten()
                .is_some_and(|m| {
                    m.fingerprint == descriptor.fingerprint
                        && m.global_step == descriptor.global_step
                });
            if !vouched {
                tracing::warn!(
                    uid = source.uid,
                    window = descriptor.window,
                    "a validator's checkpoint is not the model the manifests name: not used"
                );
                continue;
            }
        }
        return Ok(Some((descriptor, source.store)));
    }
    Ok(None)
}

/// Brings `replica` from `position` to include every window up to `target`. Returns the new
/// position. A node with no state and a network with no checkpoint or manifest starts fresh.
///
/// A window whose listed payloads are gone (a miner deleted them early) is passed by loading a
/// checkpoint of it or later from any validator; without one the catch-up stops before it,
/// reports why (an [`Event::Failed`]), and returns where it got to: short of `target`.
pub async fn catch_up<C: Chain, R: NetworkReplica>(
    node: &Node<C>,
    replica: &mut R,
    position: Position,
    target: u64,
) -> Result<Position, NodeError> {
    if position.last_window.is_some_and(|w| w >= target) {
        return Ok(position);
    }
    node.phase(target, Phase::CatchingUp);
    let Some(source) = source(node).await? else {
        return Ok(position);
    };
    let mut at = position;
    let mut loaded = None;
    if let Some(descriptor) =
        checkpoint::latest(&source.store, &node.network, source.uid, source.hotkey).await?
    {
        // A node with a model of its own replays the windows it missed (their payloads are a
        // fraction of a checkpoint, which is the whole model) unless it missed more than a
        // checkpoint interval's worth: only then is a full rebuild cheaper, and needed (payloads
        // are kept about that long, see docs/node.md "Retention").
        let every = node.config.checkpoints.every;
        let worth_it = at
            .last_window
            .is_none_or(|w| descriptor.window > w && target - w > every);
        if worth_it && descriptor.window <= target {
            checkpoint::load(&source.store, &node.network, &descriptor, replica).await?;
            at = Position {
                last_window: Some(descriptor.window),
                global_step: descriptor.global_step,
            };
            loaded = Some(descriptor.window);
        }
    }
    let first = match at.last_window {
        Some(w) => w + 1,
        None => match earliest_manifest(node, &source).await? {
            Some(w) => w,
            None => return Ok(at),
        },
    };
    let mut replayed = 0;
    let started = std::time::Instant::now();
    let mut progress = Progress::new((target + 1).saturating_sub(first));
    let mut window = first;
    while window <= target {
        let stepped = match replay(node, replica, &source, window).await {
            Ok(stepped) => stepped,
            Err(gone @ NodeError::PayloadGone { .. }) => {
                // Nobody can replay this window exactly now: go on from a checkpoint past it,
                // or stop here and say why (the caller goes on; a later catch-up, once a
                // checkpoint covers the window, gets past it).
                let Some((descriptor, store)) =
                    checkpoint_covering(node, &source, window, target).await?
                else {
                    node.failed(Part::Storage, &format!("replaying window {window}"), &gone);
                    break;
                };
                tracing::info!(window, checkpoint = descriptor.window, %gone, "going on from a checkpoint past a window that cannot be replayed");
                checkpoint::load(&store, &node.network, &descriptor, replica).await?;
                at = Position {
                    last_window: Some(descriptor.window),
                    global_step: descriptor.global_step,
                };
                loaded = Some(descriptor.window);
                progress.done += descriptor.window + 1 - window;
                window = descriptor.window + 1;
                continue;
            }
            Err(error) => return Err(error),
        };
        at.global_step += u64::from(stepped);
        at.last_window = Some(window);
        window += 1;
        replayed += 1;
        progress.done += 1;
        let elapsed = started.elapsed();
        tracing::info!(
            window,
            "catching up: {replayed} of {} windows replayed ({:.0}%), {} left",
            progress.total,
            progress.percent(),
            progress
                .remaining(elapsed)
                .map_or("?".into(), progress::duration),
        );
    }
    if let Some(to) = at.last_window {
        node.events.emit(Event::CaughtUp {
            from: position.last_window,
            to,
            replayed,
            checkpoint: loaded,
        });
    }
    Ok(at)
}

async fn earliest_manifest<C: Chain>(
    node: &Node<C>,
    source: &Source,
) -> Result<Option<u64>, NodeError> {
    let prefix = layout::kind_prefix(&node.network, Kind::Manifest);
    let listed = source.store.list(&prefix).await?;
    Ok(listed
        .iter()
        .filter_map(|o| layout::parse_object_key(&node.network, Kind::Manifest, &o.key))
        .filter(|(_, uid)| *uid == source.uid)
        .map(|(window, _)| window)
        .min())
}

/// The followed validator's manifest of `window`, for `node` to check its model against: `None`
/// when `node` is that validator, when there is none yet, or when either cannot be read now
/// (reported, and read as "nothing to compare with": the next window checks again).
pub async fn followed_manifest<C: Chain>(
    node: &Node<C>,
    window: u64,
) -> Option<(Source, WindowManifest)> {
    let source = match source(node).await {
        Ok(source) => source.filter(|s| s.uid != node.uid)?,
        Err(error) => {
            node.failed(Part::Chain, "finding the manifests' validator", &error);
            return None;
        }
    };
    match manifest(node, &source, window).await {
        Ok(manifest) => Some((source, manifest?)),
        Err(error) => {
            node.failed(Part::Storage, "reading the manifest to check sync", &error);
            None
        }
    }
}

/// Reads the source's manifest of `window`, if it published one.
pub async fn manifest<C: Chain>(
    node: &Node<C>,
    source: &Source,
    window: u64,
) -> Result<Option<WindowManifest>, NodeError> {
    let expected = Expected {
        network: &node.network,
        kind: Kind::Manifest,
        window,
        uid: source.uid,
        hotkey: source.hotkey,
        max_payload_len: MAX_MANIFEST_BYTES,
    };
    match source.store.read_signed(&expected, None).await? {
        ReadOutcome::Ok(verified) => {
            let manifest = WindowManifest::decode(&verified.payload)
                .map_err(|e| NodeError::CatchUp(format!("manifest of window {window}: {e}")))?;
            if manifest.window != window {
                return Err(NodeError::CatchUp(format!(
                    "the manifest signed for window {window} describes window {}",
                    manifest.window
                )));
            }
            manifest
                .draw
                .verify(&source.hotkey, &node.network, window)
                .map_err(|e| NodeError::CatchUp(format!("manifest of window {window}: {e}")))?;
            Ok(Some(manifest))
        }
        ReadOutcome::Missing => Ok(None),
        other => Err(NodeError::CatchUp(format!(
            "manifest of window {window} is not usable: {}",
            other.label()
        ))),
    }
}

/// Applies one past window; returns whether anything was aggregated.
async fn replay<C: Chain, R: NetworkReplica>(
    node: &Node<C>,
    replica: &mut R,
    source: &Source,
    window: u64,
) -> Result<bool, NodeError> {
    let peers = node.window_peers(window).await?;
    let Some(manifest) = manifest(node, source, window).await? else {
        // No manifest: recompute the aggregate as it was computed live, upload times included.
        // Pins taken now, long after the keys came out, would only ever be late: the payloads
        // are read as they stand (docs/node.md, "Sealed payloads").
        let slot = node.slot(window).await?;
        let uids: Vec<u16> = peers
            .set
            .peers
            .iter()
            .chain(&peers.set.reserves)
            .copied()
            .collect();
        let verdicts = node
            .gather_pinned(window, &uids, &peers, Some(slot), None)
            .await;
        let (_, gathered) = aggregate_inputs(&peers.set, &verdicts);
        let payloads: Vec<_> = gathered.iter().map(|g| &g.payload).collect();
        replica.apply_aggregate(&payloads)?;
        return Ok(!payloads.is_empty());
    };
    apply_manifest(node, replica, &peers, &manifest).await
}

/// Applies the aggregate `manifest` lists, its payloads fetched from their miners and each
/// checked against the hash it lists, and checks the model against its fingerprint. Returns
/// whether anything was aggregated.
pub async fn apply_manifest<C: Chain, R: NetworkReplica>(
    node: &Node<C>,
    replica: &mut R,
    peers: &WindowPeers,
    manifest: &WindowManifest,
) -> Result<bool, NodeError> {
    let gathered = fetch_manifest(node, peers, manifest).await?;
    let payloads: Vec<&Payload> = gathered.iter().map(|g| &g.payload).collect();
    replica.apply_aggregate(&payloads)?;
    check_model(replica.fingerprint(), manifest)?;
    Ok(!payloads.is_empty())
}

/// The payloads `manifest` lists, in its order: fetched from their miners, each checked against
/// the hash it lists. The list itself must be one the window could have aggregated: each uid
/// once, all of the window's peers or reserves.
pub async fn fetch_manifest<C: Chain>(
    node: &Node<C>,
    peers: &WindowPeers,
    manifest: &WindowManifest,
) -> Result<Vec<Gathered>, NodeError> {
    let window = manifest.window;
    let uids: Vec<u16> = manifest.included.iter().map(|i| i.uid).collect();
    let eligible = |uid: &u16| peers.set.peers.contains(uid) || peers.set.reserves.contains(uid);
    let mut seen = std::collections::BTreeSet::new();
    if let Some(uid) = uids.iter().find(|u| !eligible(u) || !seen.insert(**u)) {
        return Err(NodeError::CatchUp(format!(
            "the manifest of window {window} lists uid {uid}, which that window could not \
             aggregate (not a peer or reserve, or listed twice)"
        )));
    }
    let mut verdicts = node.gather(window, &uids, peers, None).await;
    let mut payloads = Vec::with_capacity(uids.len());
    for entry in &manifest.included {
        let gone = |reason: String| NodeError::PayloadGone {
            window,
            uid: entry.uid,
            reason,
        };
        let gathered = match verdicts.remove(&entry.uid) {
            Some(Verdict::Accepted(gathered)) if gathered.hash == entry.hash => *gathered,
            Some(Verdict::Accepted(_)) => return Err(gone("another payload is there now".into())),
            Some(Verdict::Rejected { reason, .. }) => return Err(gone(reason)),
            None => return Err(gone("not gathered".into())),
        };
        payloads.push(gathered);
    }
    Ok(payloads)
}

/// Whether the model `fingerprint` names is the one `manifest` says its window ends with.
pub fn check_model(fingerprint: Fingerprint, manifest: &WindowManifest) -> Result<(), NodeError> {
    if fingerprint == manifest.fingerprint {
        return Ok(());
    }
    Err(NodeError::CatchUp(format!(
        "window {} replays to model {}, the manifest says {}",
        manifest.window,
        fingerprint.short(),
        manifest.fingerprint.short()
    )))
}
