//! The miner's attacks, for test and research networks only: what a miner with a
//! [`Behavior`] other than honest publishes each window, and what it learns from the gather to
//! make the next attack plausible. The payload arithmetic is in [`crate::behavior`].

use std::collections::BTreeMap;
use std::time::Duration;

use templar_chain::Chain;
use templar_codec::Payload;
use templar_data::DataReceipt;
use templar_protocol::{AccountId, Keypair, UploadSlot};

use crate::behavior::{self, Behavior, Rng};
use crate::error::NodeError;
use crate::gauntlet::norms::median_norms;
use crate::gauntlet::selection::mix;
use crate::message::{GRADIENT_HEADER_LEN, GradientHeader};
use crate::miner::Miner;
use crate::node::{Gathered, Verdict, WindowPeers, now_ms, sleep_until_ms};
use crate::replica::NetworkReplica;

/// What an attacking miner remembers between windows.
#[derive(Default)]
pub struct Adversary {
    /// Windows this process has run.
    windows_run: u64,
    /// Per tensor, the median norm of last window's accepted payloads.
    reference_norms: Option<Vec<f64>>,
    /// Last window's aggregate (what `lazy` republishes).
    last_aggregate: Option<Vec<Vec<f32>>>,
    /// The codec bytes `replay` resends.
    replayed: Option<Vec<u8>>,
    /// The chain has paid this miner (what `inactive-after-paid` waits for).
    paid: bool,
    /// This window's upload is another miner's sealed payload, as taken (`early-copy`).
    copied_seal: Option<u16>,
}

/// A message to publish, or why nothing was.
pub type Contribution = Result<Vec<u8>, String>;

impl<C: Chain> Miner<C> {
    /// This window's message under the miner's behaviour.
    pub(crate) async fn misbehave(
        &mut self,
        window: u64,
        peers: &WindowPeers,
        slot: UploadSlot,
        train_until: u64,
    ) -> Result<Contribution, NodeError> {
        let behavior = self.behavior;
        let uid = self.node.uid;
        let mut rng = Rng::new(mix(window ^ (u64::from(uid) << 40) ^ 0x6174_7461_636b));
        if behavior == Behavior::InactiveAfterPaid {
            self.adversary.paid |= peers
                .candidates
                .iter()
                .any(|c| c.uid == uid && c.incentive > 0.0);
            if self.adversary.paid {
                return Ok(Err("paid now: no more work".into()));
            }
        }
        let trained = if behavior.trains(self.adversary.windows_run) {
            let data_uid = match behavior {
                Behavior::OtherData(victim) => victim.unwrap_or(uid.wrapping_add(1)),
                _ => uid,
            };
            let trained = self.train(window, data_uid, train_until, None).await?;
            if trained.is_none() {
                return Ok(Err("no time left to train before the window ended".into()));
            }
            trained
        } else {
            sleep_until_ms(train_until).await;
            None
        };
        let samples = trained
            .as_ref()
            .map_or(self.node.data.per_window, |(h, _)| h.samples as usize);
        let header = self.claim(window, samples)?;
        let schema = self.replica.schema().clone();
        let norms = self.adversary.reference_norms.clone();
        let bytes = match (behavior, trained) {
            (Behavior::Scaled(factor), Some((_, mut payload))) => {
                for tensor in &mut payload.tensors {
                    behavior::scale_tensor(tensor, factor);
                }
                self.encode(&payload)
            }
            (
                Behavior::OtherData(_)
                | Behavior::Late
                | Behavior::EvalOverfit
                | Behavior::InactiveAfterPaid,
                Some((_, payload)),
            ) => self.encode(&payload),
            (Behavior::Replay, Some((_, payload))) => {
                let bytes = self.encode(&payload);
                self.adversary.replayed = Some(bytes.clone());
                bytes
            }
            (Behavior::Replay, None) => match &self.adversary.replayed {
                Some(bytes) => bytes.clone(),
                None => return Ok(Err("nothing trained yet to replay".into())),
            },
            (Behavior::Zeros, _) => self.encode(&behavior::zero_payload(&schema).map_err(codec)?),
            (Behavior::Noise | Behavior::Takeover, _) => {
                let Some(norms) = norms else {
                    return Ok(Err("no payload seen yet to copy the norm of".into()));
                };
                let mut payload = behavior::noise_payload(&schema, &mut rng).map_err(codec)?;
                behavior::rescale_to(&mut payload, &norms);
                self.encode(&payload)
            }
            (Behavior::LowNorm, _) => {
                let Some(norms) = norms else {
                    return Ok(Err("no payload seen yet to take a norm from".into()));
                };
                let low: Vec<f64> = norms
                    .iter()
                    .map(|n| n * behavior::LOW_NORM_FACTOR)
                    .collect();
                let mut payload = behavior::noise_payload(&schema, &mut rng).map_err(codec)?;
                behavior::rescale_to(&mut payload, &low);
                self.encode(&payload)
            }
            (Behavior::Lazy, _) => {
                let Some(aggregate) = &self.adversary.last_aggregate else {
                    return Ok(Err("no aggregate seen yet".into()));
                };
                let mut payload = behavior::compress_fresh(&schema, aggregate).map_err(codec)?;
                if let Some(norms) = &norms {
                    behavior::rescale_to(&mut payload, norms);
                }
                self.encode(&payload)
            }
            (Behavior::EarlyCopy(victim), _) => {
                // Sealed, the payload says nothing yet: all it can take is the bytes as stored.
                let give_up = slot.closes_ms.saturating_sub(800);
                loop {
                    if let Some(sealed) = self.node.read_sealed(window, victim, peers).await {
                        self.adversary.copied_seal = Some(victim);
                        return Ok(Ok(sealed.to_vec()));
                    }
                    if now_ms() >= give_up {
                        return Ok(Err(format!("uid {victim} published nothing to copy")));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            (Behavior::Copycat(victim), _) => {
                match self.victim(window, victim, peers, slot).await {
                    Some(stolen) => {
                        let header = self.claim(window, stolen.header.samples as usize)?;
                        return Ok(Ok(header.encode(&self.encode(&stolen.payload))));
                    }
                    None => return Ok(Err(format!("uid {victim} published nothing to copy"))),
                }
            }
            (Behavior::PartialCopy { victim, fraction }, _) => {
                let Some(stolen) = self.victim(window, victim, peers, slot).await else {
                    return Ok(Err(format!("uid {victim} published nothing to copy")));
                };
                let mut filler = behavior::noise_payload(&schema, &mut rng).map_err(codec)?;
                behavior::rescale_to(&mut filler, &behavior::tensor_norms(&stolen.payload));
                let mixed =
                    behavior::partial_copy(&schema, &stolen.payload, &filler, fraction, &mut rng);
                self.encode(&mixed)
            }
            (Behavior::Malformed, _) => {
                let mut message = header.encode(&self.plausible(&schema, &mut rng)?);
                behavior::corrupt(&mut message, 0, &mut rng);
                return Ok(Ok(message));
            }
            (Behavior::Nan, _) => {
                let mut payload = behavior::zero_payload(&schema).map_err(codec)?;
                behavior::poison(&mut payload);
                self.encode(&payload)
            }
            (Behavior::Oversize, _) => {
                let mut message = header.encode(&self.plausible(&schema, &mut rng)?);
                let limit = GRADIENT_HEADER_LEN + schema.max_payload_bytes();
                behavior::pad_beyond(&mut message, limit, 4096);
                return Ok(Ok(message));
            }
            (
                Behavior::Honest
                | Behavior::PartTime(_)
                | Behavior::Scaled(_)
                | Behavior::OtherData(_)
                | Behavior::EvalOverfit
                | Behavior::InactiveAfterPaid,
                _,
            )
            | (Behavior::Late, None) => {
                return Ok(Err(format!("{behavior} has nothing to publish")));
            }
        };
        if behavior == Behavior::Late {
            // Past the slot by a margin the clock-skew allowance cannot cover.
            sleep_until_ms(slot.closes_ms + 1_000).await;
        }
        Ok(Ok(header.encode(&bytes)))
    }

    /// The victim whose sealed payload this window's upload is, if it is one (taken once).
    pub(crate) fn take_copied_seal(&mut self) -> Option<u16> {
        self.adversary.copied_seal.take()
    }

    /// What an attacker learns from a gather: the honest payloads' norms, and the aggregate.
    pub(crate) fn observe(
        &mut self,
        verdicts: &BTreeMap<u16, Verdict>,
        included: &[&Payload],
    ) -> Result<(), NodeError> {
        self.adversary.windows_run += 1;
        let accepted: Vec<&Payload> = verdicts
            .values()
            .filter_map(Verdict::accepted)
            .filter(|g| g.uid != self.node.uid)
            .map(|g| &g.payload)
            .collect();
        if !accepted.is_empty() {
            self.adversary.reference_norms = Some(median_norms(&accepted));
        }
        if self.behavior == Behavior::Lazy && !included.is_empty() {
            self.adversary.last_aggregate = Some(self.replica.whole()?.aggregate(included)?);
        }
        Ok(())
    }

    /// A header claiming the first `samples` of this miner's own assignment, trained from the
    /// current model: what a validator checks, filled in without the work behind it.
    fn claim(&self, window: u64, samples: usize) -> Result<GradientHeader, NodeError> {
        let assignment = self.node.data.assignment(self.node.uid, window);
        let samples = samples.min(assignment.len());
        Ok(GradientHeader {
            receipt: DataReceipt::of(&assignment[..samples]).0,
            samples: samples as u32,
            base_window: self.position.last_window.unwrap_or(u64::MAX),
            base_fingerprint: self.replica.fingerprint(),
        })
    }

    /// Codec bytes that decode: noise at the reference norm, or zeros before there is one.
    fn plausible(
        &self,
        schema: &templar_codec::Schema,
        rng: &mut Rng,
    ) -> Result<Vec<u8>, NodeError> {
        let payload = match &self.adversary.reference_norms {
            Some(norms) => {
                let mut payload = behavior::noise_payload(schema, rng).map_err(codec)?;
                behavior::rescale_to(&mut payload, norms);
                payload
            }
            None => behavior::zero_payload(schema).map_err(codec)?,
        };
        Ok(self.encode(&payload))
    }

    /// Polls the victim's storage for its payload of this window until shortly before the
    /// upload slot closes.
    async fn victim(
        &self,
        window: u64,
        victim: u16,
        peers: &WindowPeers,
        slot: UploadSlot,
    ) -> Option<Gathered> {
        let give_up = slot.closes_ms.saturating_sub(800);
        loop {
            if let Verdict::Accepted(stolen) = self.node.fetch(window, victim, peers, None).await {
                return Some(*stolen);
            }
            if now_ms() >= give_up {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The `takeover` attack's way in: watches the subnet until a uid the chain has paid (and that
/// the same hotkey still holds) is the one a registration would replace — its holder stopped
/// earning — and registers `hotkey` from `coldkey` then. Returns the uid taken, or `None` when
/// block `give_up` came first. Only a full subnet replaces anyone, so nothing is registered
/// before it is full.
///
/// Everything it reads is public; a validator that kept its records by uid alone would give the
/// newcomer the record the uid earned (`gauntlet::score::forget_replaced`).
pub async fn take_over<C: Chain>(
    chain: &C,
    coldkey: &Keypair,
    hotkey: &AccountId,
    give_up: Option<u64>,
) -> Result<Option<u16>, NodeError> {
    let rules = chain.hyperparameters().await?;
    let mut earned: BTreeMap<u16, AccountId> = BTreeMap::new();
    loop {
        let metagraph = chain.metagraph().await?;
        if let Some(uid) = metagraph.uid_of(hotkey) {
            return Ok(Some(uid));
        }
        for neuron in metagraph.neurons.iter().filter(|n| n.incentive > 0.0) {
            earned.insert(neuron.uid, neuron.hotkey);
        }
        let full = metagraph.neurons.len() >= usize::from(rules.max_uids);
        let next = metagraph.next_to_prune(rules.immunity_period, metagraph.block + 1);
        let due = next.filter(|uid| {
            let holder = metagraph.neuron(*uid).map(|n| n.hotkey);
            full && holder.is_some() && earned.get(uid).copied() == holder
        });
        if let Some(target) = due {
            let uid = chain.register(coldkey, hotkey).await?;
            tracing::warn!(uid, target, "took over a uid the chain had paid");
            return Ok(Some(uid));
        }
        if give_up.is_some_and(|block| metagraph.block >= block) {
            return Ok(None);
        }
        chain.wait_for_block(metagraph.block + 1).await?;
    }
}

fn codec(reason: String) -> NodeError {
    NodeError::Codec(reason)
}
