//! Bringing a node's model up to date: from its own saved state or the checkpoint of the
//! validator with the most stake, then window by window from that validator's manifests (or,
//! where a manifest is missing, by recomputing the window's aggregate from the miners' payloads,
//! which needs no leader at all). Each replayed manifest's fingerprint is checked.

use templar_chain::Chain;
use templar_protocol::{AccountId, Expected, Kind, layout};
use templar_storage::{ReadOutcome, Store};

use crate::checkpoint;
use crate::commitment::{Commitment, Role};
use crate::error::NodeError;
use crate::events::{Event, Phase};
use crate::message::{MAX_MANIFEST_BYTES, WindowManifest};
use crate::node::{Node, Verdict, aggregate_inputs};
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
    let Some((neuron, commitment)) = validators.into_iter().next() else {
        return Ok(None);
    };
    let store = Store::open(&commitment.store_config())?;
    Ok(Some(Source {
        uid: neuron.uid,
        hotkey: neuron.hotkey,
        store,
    }))
}

/// Brings `replica` from `position` to include every window up to `target`. Returns the new
/// position. A node with no state and a network with no checkpoint or manifest starts fresh.
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
        let newer = at.last_window.is_none_or(|w| descriptor.window > w);
        if newer && descriptor.window <= target {
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
    for window in first..=target {
        at.global_step += u64::from(replay(node, replica, &source, window).await?);
        at.last_window = Some(window);
        replayed += 1;
        progress.done = replayed;
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
    node.events.emit(Event::CaughtUp {
        from: position.last_window,
        to: target,
        replayed,
        checkpoint: loaded,
    });
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
        ReadOutcome::Ok(verified) => WindowManifest::decode(&verified.payload)
            .map(Some)
            .map_err(|e| NodeError::CatchUp(format!("manifest of window {window}: {e}"))),
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
        // No manifest: recompute the aggregate exactly as it was computed live.
        let slot = node.slot(window).await?;
        let uids: Vec<u16> = peers
            .set
            .peers
            .iter()
            .chain(&peers.set.reserves)
            .copied()
            .collect();
        let verdicts = node.gather(window, &uids, &peers, Some(slot)).await;
        let (_, gathered) = aggregate_inputs(&peers.set, &verdicts);
        let payloads: Vec<_> = gathered.iter().map(|g| &g.payload).collect();
        replica.apply_aggregate(&payloads)?;
        return Ok(!payloads.is_empty());
    };
    let uids: Vec<u16> = manifest.included.iter().map(|i| i.uid).collect();
    let verdicts = node.gather(window, &uids, &peers, None).await;
    let mut payloads = Vec::with_capacity(uids.len());
    for entry in &manifest.included {
        let gathered = verdicts
            .get(&entry.uid)
            .and_then(Verdict::accepted)
            .filter(|g| g.hash == entry.hash)
            .ok_or_else(|| {
                NodeError::CatchUp(format!(
                    "window {window}: the payload of uid {} is gone or differs from the manifest",
                    entry.uid
                ))
            })?;
        payloads.push(&gathered.payload);
    }
    replica.apply_aggregate(&payloads)?;
    let fingerprint = replica.fingerprint();
    if fingerprint != manifest.fingerprint {
        return Err(NodeError::CatchUp(format!(
            "window {window} replays to model {}, the manifest says {}",
            fingerprint.short(),
            manifest.fingerprint.short()
        )));
    }
    Ok(!payloads.is_empty())
}
