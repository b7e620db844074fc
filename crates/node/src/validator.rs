//! The validator: after each window's upload slot closes it gathers every miner's payload, judges
//! a fair sample of them (the Gauntlet), sets weights, applies the same aggregate as the miners,
//! and publishes the window's manifest and, periodically, a checkpoint.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use templar_chain::Chain;
use templar_codec::Payload;
use templar_data::Split;
use templar_engine::memory::Role;
use templar_engine::{Batch, Device};
use templar_protocol::{AccountId, Kind};

use crate::catchup::{self, Position};
use crate::checkpoint;
use crate::error::NodeError;
use crate::events::{Event, Flag, MinerScore, Part, Phase};
use crate::fingerprint::Fingerprint;
use crate::gauntlet::norms::norm_outliers;
use crate::gauntlet::overlap::{
    Recalled, Upload, copiers_of, largest_overlaps, pair_overlaps, repeats,
};
use crate::gauntlet::score::{self, Control, Evaluation, Ledger, PayloadStatus, WindowInput};
use crate::gauntlet::selection::{
    JUDGED_MINERS, OWN_SAMPLES, RANDOM_SAMPLES, RECALLED_CHUNKS, fair_sample, mix,
};
use crate::gauntlet::weights::{to_u16, weights};
use crate::message::{Included, WindowManifest};
use crate::miner::Stop;
use crate::node::{Gathered, Node, Verdict, WindowPeers, aggregate_inputs};
use crate::peers::PeerSet;
use crate::replica::Replica;
use crate::saving::commit_weights;
use crate::state::{Background, StateDir};
use templar_dist::ProcessGroup;

/// Model states kept for measuring how far behind a miner's base model is.
const HISTORY: usize = 16;

/// Windows whose payloads a validator remembers to recognise repeats (see `Flag::Repeat`).
const REMEMBERED_WINDOWS: u64 = 3;

/// The usable payloads of a window, the first `reference` of them the paid peers' (what judged
/// updates are clipped to; all of them when none).
#[derive(Clone, Copy)]
struct Candidates<'a> {
    all: &'a [&'a Gathered],
    reference: usize,
}

/// Samples to measure a loss on, and the loss before any update.
struct Probe {
    batch: Batch,
    bytes: u64,
    before: f64,
}

/// What a validator persists every window, so that a restart changes no score.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ValidatorState {
    last_window: Option<u64>,
    global_step: u64,
    ledger: Ledger,
    /// Fingerprints of the last model states, oldest first.
    history: VecDeque<Fingerprint>,
    checkpoints: Vec<u64>,
}

pub struct Validator<C> {
    node: Node<C>,
    replica: Replica,
    state_dir: StateDir,
    state: ValidatorState,
    /// The last window's state generation, written beside the next window (the base it reads
    /// does not change until the next aggregate is applied, which waits for it).
    saving: Option<Background<()>>,
    /// A sample of the last windows' payloads, by window, to recognise repeats. Not persisted: a
    /// restarted validator recognises repeats again from its second window.
    recalled: VecDeque<(u64, Vec<Recalled>)>,
}

impl<C: Chain> Validator<C> {
    pub fn new(
        node: Node<C>,
        device: Device,
        state_dir: PathBuf,
    ) -> Result<Validator<C>, NodeError> {
        let state_dir = StateDir::new(state_dir);
        let saved = state_dir.load_digested::<ValidatorState>()?;
        let replica = match &saved {
            Some((_, dir, _)) => Replica::resume(&node.config, device, Role::Validator, dir)?,
            None => Replica::new(&node.config, device, Role::Validator)?,
        };
        Ok(Validator::start(
            node,
            replica,
            state_dir,
            saved.map(|(s, _, d)| (s, d)),
        ))
    }

    /// Rank 0 of a validator spanning the ranks of `group`: the others follow it
    /// ([`crate::ranks::follow`]) and measure their share of every evaluation. A validator's
    /// saved state is the base and its record, the same at any number of ranks.
    pub fn new_ranked(
        node: Node<C>,
        device: Device,
        state_dir: PathBuf,
        group: ProcessGroup,
    ) -> Result<Validator<C>, NodeError> {
        let state_dir = StateDir::new(state_dir);
        let saved = state_dir.load_digested::<ValidatorState>()?;
        // Every rank starts from the initial model, then loads the saved one together.
        let mut replica = Replica::new_ranked(&node.config, device, Role::Validator, group)?;
        if let Some((_, dir, _)) = &saved {
            replica.load_weights(dir)?;
        }
        Ok(Validator::start(
            node,
            replica,
            state_dir,
            saved.map(|(s, _, d)| (s, d)),
        ))
    }

    fn start(
        node: Node<C>,
        replica: Replica,
        state_dir: StateDir,
        saved: Option<(ValidatorState, String)>,
    ) -> Validator<C> {
        let state = match saved {
            Some((state, digest)) => {
                node.events.emit(Event::Resumed {
                    window: state.last_window,
                    state_blake3: digest,
                });
                state
            }
            None => ValidatorState {
                history: VecDeque::from([replica.fingerprint()]),
                ..ValidatorState::default()
            },
        };
        Validator {
            node,
            replica,
            state_dir,
            state,
            saving: None,
            recalled: VecDeque::new(),
        }
    }

    pub async fn run(mut self, stop: Stop) -> Result<(), NodeError> {
        // A commit from before a restart may come due during the catch-up below.
        self.reveal_due(None).await;
        let current = self
            .node
            .clock
            .window_of(self.node.chain.block().await?.number);
        let mut window = match self.state.last_window {
            Some(last) => last + 1,
            None => current,
        };
        if window + 1 < current {
            // Too far behind to judge those windows fairly: replay them, then judge live ones.
            let target = current - 1;
            let position = Position {
                last_window: self.state.last_window,
                global_step: self.state.global_step,
            };
            let slot = self.node.slot(target).await?;
            self.node
                .wait_until(self.node.clock.end_block(target), slot.closes_ms)
                .await?;
            let at = match catchup::catch_up(&self.node, &mut self.replica, position, target).await
            {
                // Its own model was apart from the network's (the manifests do not replay on
                // it): rebuild from the checkpoint and the manifests, keeping the ledger.
                Err(NodeError::CatchUp(reason)) if position.last_window.is_some() => {
                    tracing::warn!(%reason, "the saved model is apart from the network's: rebuilding it from the checkpoint");
                    self.replica.reset(&self.node.config)?;
                    let start = Position {
                        last_window: None,
                        global_step: 0,
                    };
                    catchup::catch_up(&self.node, &mut self.replica, start, target).await?
                }
                other => other?,
            };
            if at.last_window != Some(target) {
                // Judging and publishing from a model that skipped windows would make this
                // validator's manifests and checkpoints wrong for everyone who follows them.
                return Err(NodeError::CatchUp(format!(
                    "stopped short at window {:?} of {target}: a payload is gone and no \
                     checkpoint covers it yet; start again later",
                    at.last_window
                )));
            }
            self.state.last_window = at.last_window;
            self.state.global_step = at.global_step;
            self.remember(self.replica.fingerprint());
            window = current;
        }
        while !stop.now(window) {
            self.run_window(window).await?;
            window += 1;
        }
        self.finish_saving()?;
        self.replica.release_ranks()
    }

    async fn run_window(&mut self, window: u64) -> Result<(), NodeError> {
        let peers = self.node.window_peers(window).await?;
        let slot = self.node.slot(window).await?;
        self.node.phase(window, Phase::Waiting);
        // A commit can be revealed only within one epoch, which may be little longer than a
        // window: look mid-window as well as when setting weights, so that no epoch passes
        // without a look.
        let middle = self.node.clock.first_block(window) + self.node.clock.blocks_per_window() / 2;
        if self.node.chain.wait_for_block(middle).await.is_ok() {
            self.reveal_due(Some(window)).await;
        }
        self.node
            .wait_until(self.node.clock.end_block(window), slot.closes_ms)
            .await?;
        // Pins first, at the close: a redo from the last manifest may take a while, and pins
        // taken after the keys are out would pin nothing.
        self.node.phase(window, Phase::Gathering);
        let uids: Vec<u16> = peers.candidates.iter().map(|c| c.uid).collect();
        let pins = self.node.pin_all(window, &uids, &peers, slot).await;
        self.check_sync(window).await?;
        let verdicts = self
            .node
            .gather_pinned(window, &uids, &peers, Some(slot), Some(pins))
            .await;
        let (chosen, payloads) = aggregate_inputs(&peers.set, &verdicts);
        self.node.report(window, &verdicts, &chosen);

        self.node.phase(window, Phase::Evaluating);
        // Before judging: the choice of whom to judge reads the records, and a uid taken over
        // must not inherit the fairness its last holder earned while it went unjudged.
        let hotkeys: BTreeMap<u16, AccountId> =
            peers.candidates.iter().map(|c| (c.uid, c.hotkey)).collect();
        score::forget_replaced(&mut self.state.ledger, &hotkeys);
        let mut input = self.judge(window, &verdicts, &peers.set)?;
        input.hotkeys = hotkeys;
        score::update(
            &mut self.state.ledger,
            window,
            &input,
            &self.node.config.gauntlet,
        );
        self.set_weights(window, &peers).await;

        self.finish_saving()?;
        self.replica
            .apply_aggregate(&payloads.iter().map(|g| &g.payload).collect::<Vec<_>>())?;
        if !payloads.is_empty() {
            self.state.global_step += 1;
        }
        self.state.last_window = Some(window);
        let fingerprint = self.replica.fingerprint();
        self.remember(fingerprint);
        self.node.events.emit(Event::Applied {
            window,
            global_step: self.state.global_step,
            fingerprint,
        });
        self.validate(window)?;
        self.node.phase(window, Phase::Publishing);
        if let Err(error) = self.publish(window, &payloads, fingerprint).await {
            // Miners check their model against manifests when they can and catch up from
            // older ones otherwise: a storage outage must not stop the judging.
            self.node.failed(
                Part::Storage,
                "publishing the manifest or checkpoint",
                &error,
            );
            self.node.events.emit(Event::Skipped {
                window,
                reason: format!("publishing the manifest or checkpoint failed: {error}"),
            });
        }
        self.persist(window)
    }

    /// Each judged miner's update applied alone and measured on its own samples and the
    /// window's random samples; it is also measured on the previous judged miner's samples,
    /// which gives that miner's evaluation its control (see [`Evaluation::indicator`]).
    fn evaluate(
        &mut self,
        window: u64,
        seed: u64,
        judged: &[&Gathered],
        candidates: Candidates<'_>,
        random: &Probe,
    ) -> Result<Vec<(u16, Evaluation)>, NodeError> {
        let mut owns = Vec::with_capacity(judged.len());
        for gathered in judged {
            let own = self.own_samples(window, gathered, seed);
            owns.push(self.probe(&own)?);
        }
        let all: Vec<_> = candidates.all.iter().map(|g| &g.payload).collect();
        self.replica.share_candidates(&all)?;
        let scale = self.replica.outer_lr * self.node.config.gauntlet.eval_lr_factor;
        let n = judged.len();
        let mut evaluations = Vec::with_capacity(n);
        let mut controls = vec![None; n];
        for (i, gathered) in judged.iter().enumerate() {
            self.replica
                .apply_one(&gathered.payload, &all, candidates.reference, scale)?;
            let own_after = self.loss(&owns[i])?;
            let random_after = self.loss(random)?;
            if n > 1 {
                let previous = (i + n - 1) % n;
                controls[previous] = Some(Control {
                    own_after: self.loss(&owns[previous])?,
                    random_after,
                });
            }
            self.replica.restore()?;
            evaluations.push(Evaluation {
                own_before: owns[i].before,
                own_after,
                random_before: random.before,
                random_after,
                control: None,
            });
        }
        for (evaluation, control) in evaluations.iter_mut().zip(controls) {
            evaluation.control = control;
        }
        Ok(judged.iter().map(|g| g.uid).zip(evaluations).collect())
    }

    /// A set of samples and the current model's loss on it.
    fn probe(&mut self, ids: &[u64]) -> Result<Probe, NodeError> {
        let (batch, bytes) = self.node.data.batch(Split::Train, ids)?;
        let before = self.replica.evaluate(&batch, bytes)?.mean_loss();
        Ok(Probe {
            batch,
            bytes,
            before,
        })
    }

    fn loss(&mut self, probe: &Probe) -> Result<f64, NodeError> {
        Ok(self
            .replica
            .evaluate(&probe.batch, probe.bytes)?
            .mean_loss())
    }

    /// Statuses for every candidate, evaluations of a fair sample, copy detection.
    fn judge(
        &mut self,
        window: u64,
        verdicts: &BTreeMap<u16, Verdict>,
        set: &PeerSet,
    ) -> Result<WindowInput, NodeError> {
        let mut input = WindowInput::default();
        if unreachable(verdicts) {
            // Nothing could be read and storage failed: the validator's own connection, or an
            // outage everyone shares. The window says nothing about the miners.
            self.node.events.emit(Event::Skipped {
                window,
                reason: "no payload could be read from storage: nobody is scored this window"
                    .into(),
            });
            return Ok(input);
        }
        let mut usable: Vec<&Gathered> = Vec::new();
        for (&uid, verdict) in verdicts {
            let status = match verdict {
                Verdict::Accepted(g) => {
                    usable.push(g);
                    PayloadStatus::Usable {
                        steps_behind: self.steps_behind(&g.header.base_fingerprint),
                    }
                }
                Verdict::Rejected { status, .. } => *status,
            };
            input.statuses.insert(uid, status);
        }
        let pool: Vec<(u16, u64)> = usable
            .iter()
            .map(|g| {
                (
                    g.uid,
                    self.state.ledger.get(&g.uid).map_or(1, |r| r.fairness),
                )
            })
            .collect();
        // Every choice below comes from this validator's draw for the window, which nobody
        // else can compute: a miner cannot know before its upload which miners are judged or on
        // which samples (docs/node.md, "What a miner cannot predict").
        let (_, randomness) = self.node.hotkey.draw(&self.node.network, window);
        let chosen = fair_sample(
            &pool,
            self.node.config.gauntlet.uids_per_window,
            randomness.seed(JUDGED_MINERS),
        );
        let random = self.node.data.sampler.random(
            randomness.seed(RANDOM_SAMPLES),
            self.node.config.gauntlet.eval_samples,
        );
        let random = self.probe(&random)?;
        let judged: Vec<&Gathered> = usable
            .iter()
            .copied()
            .filter(|g| chosen.contains(&g.uid))
            .collect();
        // Norms are judged against the window's paid peers, a set nobody stuffs by uploading:
        // the peers' payloads come first, and they are the reference.
        usable.sort_by_key(|g| !set.peers.contains(&g.uid));
        let reference = usable
            .iter()
            .take_while(|g| set.peers.contains(&g.uid))
            .count();
        let candidates = Candidates {
            all: &usable,
            reference,
        };
        let own_seed = randomness.seed(OWN_SAMPLES);
        for (uid, evaluation) in self.evaluate(window, own_seed, &judged, candidates, &random)? {
            self.node.events.emit(Event::Evaluated {
                window,
                miner: uid,
                score: evaluation.score(),
                indicator: evaluation.indicator(),
                own_advantage: evaluation.own_advantage(),
                control_advantage: evaluation.control_advantage(),
            });
            input.evaluations.insert(uid, evaluation);
        }
        let uploads: Vec<Upload<'_>> = usable
            .iter()
            .map(|g| Upload {
                uid: g.uid,
                uploaded_ms: g.uploaded_ms,
                payload: &g.payload,
            })
            .collect();
        let settings = &self.node.config.gauntlet;
        let schema = &self.replica.schema;
        let pairs = pair_overlaps(schema, &uploads);
        let earlier = self
            .recalled
            .iter()
            .filter(|(w, _)| *w < window)
            .flat_map(|(_, r)| r.iter());
        let repeated = repeats(schema, &uploads, earlier, settings.overlap_threshold);
        self.node.events.emit(Event::Overlaps {
            window,
            largest: largest_overlaps(&uploads, &pairs),
            largest_earlier: repeated.largest,
        });
        let copies = copiers_of(&uploads, &pairs, settings.overlap_threshold)
            .into_iter()
            .map(|(uid, overlap)| (uid, Flag::Copy { overlap }))
            .chain(
                repeated
                    .flagged
                    .into_iter()
                    .map(|(uid, overlap)| (uid, Flag::Repeat { overlap })),
            );
        let payloads: Vec<(u16, &Payload)> = usable.iter().map(|g| (g.uid, &g.payload)).collect();
        let peers_payloads: Vec<&Payload> = payloads[..reference].iter().map(|(_, p)| *p).collect();
        let inflated = norm_outliers(&payloads, &peers_payloads, settings.norm_outlier_ratio)
            .into_iter()
            .map(|(uid, ratio)| (uid, Flag::NormOutlier { ratio }));
        for (uid, flag) in copies.chain(inflated) {
            self.node.events.emit(Event::Flagged {
                window,
                miner: uid,
                flag,
            });
            input.flagged.push(uid);
        }
        // Later windows compare with this one's unflagged payloads only: a repeat of a copy, a
        // replay or an inflated update says nothing about the miner who repeats it, and an
        // attacker must not be able to plant indices that honest miners would then "repeat".
        // The chunks are chosen by randomness never published (the draw is, with the manifest).
        let seed = self
            .node
            .hotkey
            .private_randomness(&self.node.network, window)
            .seed(RECALLED_CHUNKS);
        let remembered = uploads
            .iter()
            .filter(|u| !input.flagged.contains(&u.uid))
            .map(|u| Recalled::of(schema, u.uid, u.payload, seed))
            .collect();
        self.recalled
            .retain(|(w, _)| w + REMEMBERED_WINDOWS > window && *w < window);
        self.recalled.push_back((window, remembered));
        Ok(input)
    }

    /// `eval_samples` of the samples the miner says it trained on, chosen by the validator.
    fn own_samples(&self, window: u64, gathered: &Gathered, seed: u64) -> Vec<u64> {
        let trained =
            &self.node.data.assignment(gathered.uid, window)[..gathered.header.samples as usize];
        let count = self.node.config.gauntlet.eval_samples.min(trained.len());
        let offset = (mix(seed ^ u64::from(gathered.uid)) % trained.len() as u64) as usize;
        (0..count)
            .map(|i| trained[(offset + i * trained.len() / count) % trained.len()])
            .collect()
    }

    /// Windows between the miner's base model and ours: 0 when it trained from our current model.
    fn steps_behind(&self, base: &Fingerprint) -> Option<u64> {
        let history = &self.state.history;
        history
            .iter()
            .rposition(|f| f == base)
            .map(|i| (history.len() - 1 - i) as u64)
    }

    /// A validator other than the one the network follows compares its model after the last
    /// window with that validator's manifest of it. On a difference (its gather read another set
    /// of payloads) it takes that apply back and redoes it from the manifest, before it judges
    /// `window`, and publishes that window's manifest (and checkpoint) again: its judging,
    /// manifests and checkpoints rest on the network's model again.
    ///
    /// Nothing here stops the validator: its weights are what holds the followed validator to
    /// account, so a manifest it cannot follow (unreadable payloads, a model it does not lead to)
    /// leaves it judging on its own model, apart and saying so, until a restart rebuilds it.
    async fn check_sync(&mut self, window: u64) -> Result<(), NodeError> {
        let Some(previous) = window
            .checked_sub(1)
            .filter(|w| self.state.last_window == Some(*w))
        else {
            return Ok(());
        };
        let Some((source, manifest)) = catchup::followed_manifest(&self.node, previous).await
        else {
            return Ok(());
        };
        let ours = self.replica.fingerprint();
        if manifest.fingerprint == ours {
            return Ok(());
        }
        self.node.events.emit(Event::OutOfSync {
            window: previous,
            ours,
            manifest: manifest.fingerprint,
        });
        let doing = format!(
            "redoing window {previous} from validator {}'s manifest",
            source.uid
        );
        match self.redo(&manifest).await {
            Ok(payloads) => {
                self.redone(previous, ours, &manifest, &payloads).await;
                Ok(())
            }
            Err(error) if error.is_transient() || matches!(error, NodeError::CatchUp(_)) => {
                self.node.failed(Part::Storage, &doing, &error);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Takes the last apply back and applies `manifest`'s aggregate instead. The payloads are
    /// fetched and checked first, so that a failure to read them leaves the model as it was.
    /// When the redone model is still not the manifest's (the model before the window was apart
    /// already), it is kept: it holds the network's aggregate of the window, which is closer to
    /// the network than this validator's own; the caller reports it.
    async fn redo(&mut self, manifest: &WindowManifest) -> Result<Vec<Gathered>, NodeError> {
        let own_step = self.state.global_step;
        if manifest.global_step.abs_diff(own_step) > 1 {
            return Err(NodeError::CatchUp(format!(
                "its global step {} is not within one of this validator's {own_step}",
                manifest.global_step
            )));
        }
        let peers = self.node.window_peers(manifest.window).await?;
        let payloads = catchup::fetch_manifest(&self.node, &peers, manifest).await?;
        self.finish_saving()?;
        if !self.replica.revert_last_apply()? {
            return Err(NodeError::CatchUp(
                "no record of that apply to redo it".into(),
            ));
        }
        let refs: Vec<&Payload> = payloads.iter().map(|g| &g.payload).collect();
        self.replica.apply_aggregate(&refs)?;
        self.state.global_step = manifest.global_step;
        catchup::check_model(self.replica.fingerprint(), manifest)?;
        Ok(payloads)
    }

    /// After a redo: the model it held is no miner's base, and its manifest (and checkpoint) of
    /// the window described that model; both are replaced.
    async fn redone(
        &mut self,
        window: u64,
        ours: Fingerprint,
        manifest: &WindowManifest,
        payloads: &[Gathered],
    ) {
        if self.state.history.back() == Some(&ours) {
            self.state.history.pop_back();
        }
        self.remember(manifest.fingerprint);
        self.node.events.emit(Event::Resynced {
            window,
            full_rebuild: false,
        });
        let refs: Vec<&Gathered> = payloads.iter().collect();
        if let Err(error) = self.publish(window, &refs, manifest.fingerprint).await {
            let doing = "publishing the redone window's manifest or checkpoint";
            self.node.failed(Part::Storage, doing, &error);
        }
    }

    fn remember(&mut self, fingerprint: Fingerprint) {
        if self.state.history.back() != Some(&fingerprint) {
            self.state.history.push_back(fingerprint);
        }
        while self.state.history.len() > HISTORY {
            self.state.history.pop_front();
        }
    }

    /// Reveals weight commits that are due (commit-reveal subnets): those of earlier windows, or
    /// from before a restart, in the epoch they come due whether or not weights are set now.
    async fn reveal_due(&self, window: Option<u64>) {
        match self.node.chain.reveal_due_weights(&self.node.hotkey).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(?window, "revealed {count} weight commit(s)"),
            Err(error) => self.node.failed(Part::Chain, "revealing weights", &error),
        }
    }

    async fn set_weights(&mut self, window: u64, peers: &WindowPeers) {
        self.reveal_due(Some(window)).await;
        let config = &self.node.config;
        let current: Ledger = self
            .state
            .ledger
            .iter()
            .filter(|(uid, _)| peers.candidates.iter().any(|c| c.uid == **uid))
            .map(|(uid, r)| (*uid, r.clone()))
            .collect();
        let computed = weights(&current, &config.gather, &config.gauntlet);
        let miners = current
            .iter()
            .map(|(&uid, r)| MinerScore {
                uid,
                final_score: r.final_score,
                ordinal: r.rating.ordinal(),
                binary_ma: r.binary_ma,
                sync: r.sync,
                last_score: r.last_score,
                weight: computed
                    .iter()
                    .find(|(u, _)| *u == uid)
                    .map_or(0.0, |(_, w)| *w),
            })
            .collect();
        self.node.events.emit(Event::Scores { window, miners });
        if !window.is_multiple_of(config.gauntlet.windows_per_weights) || computed.is_empty() {
            return;
        }
        let computed = self.still_held(computed, &current).await;
        if computed.is_empty() {
            return;
        }
        let (uids, values) = to_u16(&computed);
        let version = match self.node.chain.hyperparameters().await {
            Ok(hp) => hp.weights_version,
            Err(error) => {
                self.node.failed(
                    Part::Chain,
                    "reading hyperparameters to set weights",
                    &error,
                );
                return;
            }
        };
        match self
            .node
            .chain
            .set_weights(&self.node.hotkey, &uids, &values, version)
            .await
        {
            Ok(()) => self.node.events.emit(Event::WeightsSet {
                window,
                uids,
                weights: values,
            }),
            Err(error) => self.node.failed(Part::Chain, "setting weights", &error),
        }
    }

    /// The weights of uids still held by the hotkey their record was made for. The records
    /// are of the hotkeys at the window's start and the weights land at its end: a uid taken over
    /// in between must not be paid for its last holder's work. Unchecked when the chain cannot
    /// be read now (the weights are then as computed).
    async fn still_held(&self, computed: Vec<(u16, f64)>, records: &Ledger) -> Vec<(u16, f64)> {
        let live = match self.node.chain.metagraph().await {
            Ok(live) => live,
            Err(error) => {
                self.node
                    .failed(Part::Chain, "reading who holds each uid now", &error);
                return computed;
            }
        };
        computed
            .into_iter()
            .filter(|(uid, _)| {
                let now = live.neuron(*uid).map(|n| n.hotkey);
                let made_for = records.get(uid).and_then(|r| r.hotkey);
                made_for.is_none() || now == made_for
            })
            .collect()
    }

    /// Scores the model on the start of the validation split: the network's progress.
    fn validate(&mut self, window: u64) -> Result<(), NodeError> {
        let split = self.node.data.dataset.split(Split::Validation);
        let count = (self.node.config.gauntlet.validation_samples as u64).min(split.len());
        if count == 0 {
            return Ok(());
        }
        let mut total = templar_engine::Evaluation::default();
        let ids: Vec<u64> = (0..count).collect();
        for chunk in ids.chunks(self.node.data.batch_size.max(1)) {
            let (batch, bytes) = self.node.data.batch(Split::Validation, chunk)?;
            total.add(self.replica.evaluate(&batch, bytes)?);
        }
        self.node.events.emit(Event::Validation {
            window,
            loss: total.mean_loss(),
            bits_per_byte: total.bits_per_byte(),
        });
        Ok(())
    }

    async fn publish(
        &mut self,
        window: u64,
        payloads: &[&Gathered],
        fingerprint: Fingerprint,
    ) -> Result<(), NodeError> {
        let node = &self.node;
        let manifest = WindowManifest {
            window,
            draw: node.hotkey.draw(&node.network, window).0,
            included: payloads
                .iter()
                .map(|g| Included {
                    uid: g.uid,
                    hash: g.hash,
                })
                .collect(),
            fingerprint,
            global_step: self.state.global_step,
            checkpoint_window: self.state.checkpoints.last().copied(),
        };
        node.store
            .publish(
                &node.hotkey,
                &node.network,
                Kind::Manifest,
                window,
                node.uid,
                &manifest.encode(),
            )
            .await?;
        node.events.emit(Event::ManifestPublished { window });
        if (window + 1).is_multiple_of(node.config.checkpoints.every) {
            checkpoint::publish(
                &node.store,
                &node.network,
                &node.hotkey,
                node.uid,
                &self.replica,
                window,
                self.state.global_step,
            )
            .await?;
            if self.state.checkpoints.last() != Some(&window) {
                self.state.checkpoints.push(window);
            }
            self.state.checkpoints = checkpoint::prune(
                &node.store,
                &node.network,
                node.uid,
                &self.state.checkpoints,
                node.config.checkpoints.keep,
            )
            .await?;
            node.events.emit(Event::CheckpointPublished { window });
        }
        Ok(())
    }

    /// Saves the window's state on a thread of its own: the scores and the base model, which the
    /// thread reads without a copy.
    fn persist(&mut self, window: u64) -> Result<(), NodeError> {
        self.finish_saving()?;
        let staging = self.state_dir.begin(window)?;
        self.saving = Some(commit_weights(staging, &self.replica, self.state.clone())?);
        Ok(())
    }

    /// Waits for the state save in flight, if any.
    fn finish_saving(&mut self) -> Result<(), NodeError> {
        match self.saving.take() {
            Some(work) => work.wait(),
            None => Ok(()),
        }
    }
}

/// Whether a gather read nothing and at least one read failed in storage itself.
fn unreachable(verdicts: &BTreeMap<u16, Verdict>) -> bool {
    let storage_failed = |v: &Verdict| {
        matches!(
            v,
            Verdict::Rejected {
                outcome: "storage_error",
                ..
            }
        )
    };
    verdicts.values().all(|v| v.accepted().is_none()) && verdicts.values().any(storage_failed)
}
