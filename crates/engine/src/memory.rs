//! What a node's window costs in memory and disk, computed from the buffers the running code
//! really holds: the planner behind `templar model info --role` and the check that refuses a
//! model too large for its device before anything is allocated.
//!
//! Every figure is `parameters × bytes` of a buffer named here, or an estimate of activations from
//! the decoder's shapes; nothing is a fudge factor except the process baseline, which is measured.

use serde::Serialize;

use crate::config::{ModelConfig, TrainConfig};
use crate::error::EngineError;

/// Which node the plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Miner,
    Validator,
}

/// Where a buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Device,
    Host,
    Disk,
}

/// One buffer of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub what: &'static str,
    pub place: Place,
    pub bytes: u64,
    /// Part of the training state: weights, gradients and optimizer state, which no streaming
    /// removes.
    pub training_state: bool,
}

/// The shapes a window runs at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowShape {
    /// Samples per forward/backward pass.
    pub micro_batch: usize,
    pub seq_len: usize,
    /// Payloads held at once by a gather (peers for a miner, every candidate for a validator).
    pub payloads: usize,
    /// Memory one gathered payload holds: its largest wire size and its decoded form.
    pub payload_bytes: u64,
    /// Of `payload_bytes`, the decoded form: a rank of a fully sharded node other than rank 0
    /// keeps only its own tensors' share of it.
    pub payload_decoded_bytes: u64,
    /// Values one payload carries (its indices): what applying it can change in the model
    /// (`u64::MAX`: no bound, as with DCT coefficients).
    pub payload_values: u64,
    /// Whether the device is the host (CPU training): then device buffers count as host memory.
    pub device_is_host: bool,
    /// Whether training recomputes each layer's activations in the backward pass
    /// ([`TrainConfig::recompute_activations`]).
    pub recompute: bool,
    /// Threads the outer step compresses tensors on, each with a piece of scratch.
    pub codec_threads: usize,
    /// Rank processes the node spans on this machine (1: one process). The plan is then one
    /// rank's, the worst rank's where the shares differ, and the host's memory is shared by all.
    pub ranks: usize,
}

/// Resident memory of the `templar` process before any model buffer: libtorch's libraries and
/// the runtime. A `cuda` build keeps `libtorch_cuda` linked, so CUDA's libraries load even on a
/// CPU machine: `templar model info` peaks at 465 MiB on the reference machine; a CPU build, which
/// loads only libtorch's CPU libraries, at 122 MiB.
pub const PROCESS_BASELINE_BYTES: u64 = if crate::CUDA_BUILD {
    460 << 20
} else {
    120 << 20
};
/// Device memory a CUDA context takes before any tensor.
pub const CUDA_CONTEXT_BYTES: u64 = 600 << 20;
/// A piece of scratch: 4 Mi values, the node's merge and outer-step piece (a file write's is
/// smaller).
pub const PIECE_BYTES: u64 = 16 << 20;
/// State generations kept on disk (the current one and its predecessor).
pub const STATE_GENERATIONS: u64 = 2;

/// The plan of one role's window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub role: Role,
    pub parameters: u64,
    /// Processes of the node on one host (each holds these items).
    pub ranks: u64,
    pub items: Vec<Item>,
}

impl MemoryPlan {
    pub fn new(model: &ModelConfig, role: Role, shape: WindowShape) -> MemoryPlan {
        let p = model.parameter_count();
        let f32s = p * 4;
        let device = if shape.device_is_host {
            Place::Host
        } else {
            Place::Device
        };
        let mut items = vec![
            item("process baseline", Place::Host, PROCESS_BASELINE_BYTES),
            state_item("weights (f32)", device, f32s),
            item("network model (f32 host copy)", Place::Host, f32s),
            item("piece scratch", Place::Host, 2 * PIECE_BYTES),
            // A tensor open per codec thread, each holding its pseudo-gradient's piece and the
            // piece read from the device. On the host they fit in the gradients the outer step
            // has just released.
            item(
                "outer-step scratch (two pieces per codec thread)",
                Place::Host,
                if shape.device_is_host {
                    0
                } else {
                    2 * shape.codec_threads as u64 * PIECE_BYTES
                },
            ),
            item(
                "gathered payloads",
                Place::Host,
                shape.payloads as u64 * shape.payload_bytes,
            ),
        ];
        if !shape.device_is_host {
            items.push(item("CUDA context", Place::Device, CUDA_CONTEXT_BYTES));
        }
        match role {
            Role::Miner if shape.ranks > 1 => {
                let share = RankShare::of(model, shape.ranks);
                // Every rank holds the whole network model, and its own record of the apply.
                items.push(undo_item(shape, f32s));
                items.push(state_item("gradients (f32)", device, f32s));
                items.push(state_item(
                    "AdamW moments (2 × f32, this rank's spans)",
                    device,
                    2 * share.span_bytes,
                ));
                items.push(state_item(
                    "summed gradient spans (f32)",
                    device,
                    share.span_bytes,
                ));
                items.push(item(
                    "sharded step scratch (one padded bucket)",
                    device,
                    share.bucket_scratch_bytes,
                ));
                items.push(state_item(
                    "error feedback (f32, this rank's tensors)",
                    Place::Host,
                    share.owned_tensor_bytes,
                ));
                items.push(item(
                    "outer step's records from every rank",
                    Place::Host,
                    shape.payload_bytes,
                ));
                items.push(item(
                    "activations (training)",
                    device,
                    training_activation_bytes(model, shape),
                ));
                // The node's: rank 0's weights and every rank's moments and error feedback,
                // together as much as one process writes (the ranks share the disk).
                items.push(item(
                    "state on disk (every rank's files)",
                    Place::Disk,
                    STATE_GENERATIONS * 4 * f32s,
                ));
            }
            Role::Miner => {
                items.push(undo_item(shape, f32s));
                items.push(state_item("gradients (f32)", device, f32s));
                items.push(state_item("AdamW moments (2 × f32)", device, 2 * f32s));
                items.push(state_item("error feedback (f32)", Place::Host, f32s));
                // Overlapped windows apply an aggregate under the live weights mid-training:
                // a piece of the base before the apply and a piece of the live weights.
                items.push(item(
                    "overlapped apply scratch (two pieces)",
                    Place::Host,
                    2 * PIECE_BYTES,
                ));
                items.push(item(
                    "activations (training)",
                    device,
                    training_activation_bytes(model, shape),
                ));
                items.push(item(
                    "state on disk",
                    Place::Disk,
                    STATE_GENERATIONS * 4 * f32s,
                ));
            }
            Role::Validator => {
                items.push(undo_item(shape, f32s));
                items.push(item(
                    "activations (evaluation)",
                    device,
                    evaluation_activation_bytes(model, shape),
                ));
                items.push(item(
                    "state and checkpoint on disk",
                    Place::Disk,
                    (STATE_GENERATIONS + 1) * f32s,
                ));
            }
        }
        MemoryPlan {
            role,
            parameters: p,
            ranks: shape.ranks.max(1) as u64,
            items,
        }
    }

    pub fn bytes(&self, place: Place) -> u64 {
        self.items
            .iter()
            .filter(|i| i.place == place)
            .map(|i| i.bytes)
            .sum()
    }

    /// Weights, gradients and optimizer state of the role (AdamW moments and error feedback for
    /// a miner; none for a validator): what training needs whatever the streaming.
    pub fn training_state_bytes(&self) -> u64 {
        self.items
            .iter()
            .filter(|i| i.training_state)
            .map(|i| i.bytes)
            .sum()
    }
}

/// Refuses a plan that does not fit: the host's available memory, and on CUDA the device's
/// free memory as `nvidia-smi` reports it (skipped, with a warning, when it cannot be read).
pub fn check_fits(plan: &MemoryPlan, device: tch::Device) -> Result<(), EngineError> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let refuse = |place: &str, need: u64, have: u64| {
        EngineError::Memory(format!(
            "a {:?} of {} parameters needs {:.1} GiB of {place} memory per window and {:.1} GiB is \
             available ({}); use a smaller preset, more devices, or a larger machine \
             (`templar model info --role` shows the figures)",
            plan.role,
            plan.parameters,
            gib(need),
            gib(have),
            plan.items
                .iter()
                .filter(|i| i.place != Place::Disk)
                .map(|i| format!("{} {:.2} GiB", i.what, gib(i.bytes)))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    if let Some(available) = available_host_bytes() {
        // The ranks of a node share the host: each holds the plan's host items.
        let need = plan.bytes(Place::Host) * plan.ranks;
        if need > available {
            return Err(refuse("host", need, available));
        }
    }
    if let tch::Device::Cuda(index) = device {
        match free_device_bytes(index) {
            Some(free) if plan.bytes(Place::Device) > free => {
                return Err(refuse("device", plan.bytes(Place::Device), free));
            }
            Some(_) => {}
            None => tracing::warn!(
                "could not read cuda:{index}'s free memory with nvidia-smi; not checked"
            ),
        }
    }
    Ok(())
}

/// `MemAvailable` from `/proc/meminfo`.
pub fn available_host_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `cuda:index`'s free memory as `nvidia-smi` reports it.
pub(crate) fn free_device_bytes(index: usize) -> Option<u64> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.free",
            "--format=csv,noheader,nounits",
            &format!("--id={index}"),
        ])
        .output()
        .ok()?;
    let mib: u64 = String::from_utf8(output.stdout).ok()?.trim().parse().ok()?;
    Some(mib << 20)
}

fn item(what: &'static str, place: Place, bytes: u64) -> Item {
    Item {
        what,
        place,
        bytes,
        training_state: false,
    }
}

fn state_item(what: &'static str, place: Place, bytes: u64) -> Item {
    Item {
        training_state: true,
        ..item(what, place, bytes)
    }
}

/// The worst rank's share of a model sharded over `ranks` ranks, from the layouts the code uses:
/// the sharded optimizer's buckets ([`crate::buckets`]) and the outer step's round robin of whole
/// tensors.
struct RankShare {
    /// Every bucket's span on one rank, in f32 bytes (moments and summed gradients each).
    span_bytes: u64,
    /// The largest padded bucket, in f32 bytes: the step's scratch.
    bucket_scratch_bytes: u64,
    /// The largest round-robin share of whole tensors, in f32 bytes: a rank's error feedback.
    owned_tensor_bytes: u64,
}

impl RankShare {
    fn of(model: &ModelConfig, ranks: usize) -> RankShare {
        let numels: Vec<i64> = crate::params::parameter_shapes(model)
            .iter()
            .map(|(_, shape)| shape.iter().product())
            .collect();
        let buckets = crate::buckets::buckets(&numels, 0, ranks, crate::buckets::BUCKET_VALUES);
        let owned = (0..ranks)
            .map(|rank| {
                numels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % ranks == rank)
                    .map(|(_, n)| *n as u64)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        RankShare {
            span_bytes: 4 * buckets.iter().map(|b| b.span as u64).sum::<u64>(),
            bucket_scratch_bytes: 4 * buckets
                .iter()
                .map(|b| b.padded(ranks) as u64)
                .max()
                .unwrap_or(0),
            owned_tensor_bytes: 4 * owned,
        }
    }
}

/// Tensors autograd keeps for the backward pass of one micro-batch, in f32 (bf16 autocast on
/// CUDA keeps most of them at half that; the estimate stays on the safe side). Per token and
/// layer: the two norms' inputs and outputs, q, k and v before and after rotation, the attention
/// output and its copy, the residual sums, and the MLP's gate, its SiLU, up and their product;
/// per token once: the final hidden states, cut from the graph, and their gradient (with
/// `recompute`, each layer's input and one layer's intermediates instead); per position
/// of one loss chunk ([`crate::model::loss_chunk`]): the logits, their log-softmax and their
/// gradient.
pub fn training_activation_bytes(model: &ModelConfig, shape: WindowShape) -> u64 {
    let tokens = (shape.micro_batch * shape.seq_len) as u64;
    let (h, i, kv) = (
        model.hidden_size as u64,
        model.intermediate_size as u64,
        model.kv_dim() as u64,
    );
    let per_layer = 13 * h + 4 * kv + 4 * i;
    let layers = model.num_hidden_layers as u64;
    // Recomputing keeps each layer's input and one layer's intermediates at a time.
    let kept = if shape.recompute {
        layers * h + per_layer
    } else {
        layers * per_layer
    };
    let per_token = kept + 2 * h;
    (tokens * per_token + loss_positions(model, tokens) * 3 * model.vocab_size as u64) * 4
}

/// Evaluation keeps no graph: one layer's intermediates, and one loss chunk's logits with their
/// log-softmax.
pub fn evaluation_activation_bytes(model: &ModelConfig, shape: WindowShape) -> u64 {
    let tokens = (shape.micro_batch * shape.seq_len) as u64;
    let (h, i) = (model.hidden_size as u64, model.intermediate_size as u64);
    (tokens * (6 * h + 3 * i) + loss_positions(model, tokens) * 2 * model.vocab_size as u64) * 4
}

/// Positions whose logits exist at once.
fn loss_positions(model: &ModelConfig, tokens: u64) -> u64 {
    tokens.min(crate::model::loss_chunk(model) as u64)
}

/// What one rank of a fully sharded trainer ([`crate::FullyShardedTrainer`]) holds to train at
/// `shape` (`shape.ranks` ranks; it always recomputes activations), its spans offloaded to host
/// memory or not, with what the node's window holds beside it (the network model's and the
/// error feedback's tensors the rank owns, and the gathered payloads: whole on rank 0, only the
/// rank's own tensors decoded elsewhere). From the trainer's real buffers: the unit buckets' spans (the worst rank's), the padded scratch of the largest unit, one span in
/// flight, and at the peak the units gathered together with their gradients (the tied head's
/// embedding and a layer, or the head) and, on CUDA, the largest unit once more on the wire in
/// bf16.
pub fn full_shard_plan(model: &ModelConfig, shape: WindowShape, offload: bool) -> MemoryPlan {
    let ranks = shape.ranks.max(1);
    let (names, numels): (Vec<String>, Vec<i64>) = crate::params::parameter_shapes(model)
        .into_iter()
        .map(|(name, shape)| (name, shape.iter().product::<i64>()))
        .unzip();
    let units = crate::full_shard::units(&names);
    let buckets = crate::buckets::unit_buckets(&numels, &units, 0, ranks);
    let span_values: u64 = buckets.iter().map(|b| b.span as u64).sum();
    let largest_span = buckets.iter().map(|b| b.span as u64).max().unwrap_or(0);
    let largest_padded = buckets
        .iter()
        .map(|b| b.padded(ranks) as u64)
        .max()
        .unwrap_or(0);
    let unit_values: Vec<u64> = buckets.iter().map(|b| b.numel as u64).collect();
    let embedding = unit_values.first().copied().unwrap_or(0);
    let tied = if model.tie_word_embeddings {
        embedding
    } else {
        0
    };
    let others = unit_values.iter().skip(1).copied().max().unwrap_or(0);
    let together = (tied + others).max(embedding);
    let largest_unit = unit_values.iter().copied().max().unwrap_or(0);
    let (device, state) = if shape.device_is_host {
        (Place::Host, Place::Host)
    } else if offload {
        (Place::Device, Place::Host)
    } else {
        (Place::Device, Place::Device)
    };
    let recomputing = WindowShape {
        recompute: true,
        ..shape
    };
    let owned_tensor_bytes = RankShare::of(model, ranks).owned_tensor_bytes;
    let mut items = vec![
        item("process baseline", Place::Host, PROCESS_BASELINE_BYTES),
        state_item("weights (f32, this rank's spans)", state, 4 * span_values),
        state_item("AdamW moments (2 × f32, spans)", state, 8 * span_values),
        state_item("summed gradient spans (f32)", state, 4 * span_values),
        item(
            "units gathered at once, with gradients",
            device,
            8 * together,
        ),
        // On CUDA a unit arrives in bf16 and is widened to f32; on the CPU it arrives in f32.
        item(
            "largest unit on the wire (bf16, CUDA)",
            device,
            if shape.device_is_host {
                0
            } else {
                2 * largest_unit
            },
        ),
        item(
            "gradient scratch (largest unit)",
            device,
            4 * largest_padded,
        ),
        item("one span in flight", device, 4 * largest_span),
        item(
            "activations (training, recomputed)",
            device,
            training_activation_bytes(model, recomputing),
        ),
        state_item(
            "network model (f32, this rank's tensors)",
            Place::Host,
            owned_tensor_bytes,
        ),
        state_item(
            "error feedback (f32, this rank's tensors)",
            Place::Host,
            owned_tensor_bytes,
        ),
        item(
            "gathered payloads (a rank's mean)",
            Place::Host,
            shape.payloads as u64 * full_shard_payload_bytes(shape, ranks as u64),
        ),
        // Of this rank's tensors: about a rank's share of the payloads' values.
        undo_item(
            WindowShape {
                payload_values: shape.payload_values.div_ceil(ranks as u64),
                ..shape
            },
            owned_tensor_bytes,
        ),
    ];
    if !shape.device_is_host {
        items.push(item("CUDA context", Place::Device, CUDA_CONTEXT_BYTES));
    }
    MemoryPlan {
        role: Role::Miner,
        parameters: model.parameter_count(),
        ranks: ranks as u64,
        items,
    }
}

/// A node's record of its last apply (`crates/node/src/undo.rs`), to redo a window: 8 bytes per
/// value the payloads carry, at most the model's f32s (`model_bytes`: tensors it would rather copy
/// whole).
fn undo_item(shape: WindowShape, model_bytes: u64) -> Item {
    let changes = (shape.payloads as u64).saturating_mul(shape.payload_values);
    item(
        "last apply's record (to redo a window)",
        Place::Host,
        changes.saturating_mul(8).min(model_bytes),
    )
}

/// What one gathered payload costs a rank of a fully sharded node, on average over its `ranks`
/// ranks (which share the host, so the mean times the ranks is the host's whole). Rank 0 holds
/// it whole, wire and decoded, as it gathered it, and its wire bytes once more in the message
/// that sends it. Every other rank holds the message's wire bytes and only its own tensors
/// decoded, about a rank's share. One rank sends nothing.
fn full_shard_payload_bytes(shape: WindowShape, ranks: u64) -> u64 {
    if ranks <= 1 {
        return shape.payload_bytes;
    }
    let decoded = shape.payload_decoded_bytes.min(shape.payload_bytes);
    let wire = shape.payload_bytes - decoded;
    let leader = shape.payload_bytes + wire;
    let follower = wire + decoded.div_ceil(ranks);
    (leader + (ranks - 1) * follower).div_ceil(ranks)
}

impl WindowShape {
    /// The preset's own training shape on a device that is the host or not.
    pub fn of_train(train: &TrainConfig, device_is_host: bool) -> WindowShape {
        WindowShape {
            micro_batch: train.micro_batch_size,
            seq_len: train.seq_len,
            payloads: 0,
            payload_bytes: 0,
            payload_decoded_bytes: 0,
            payload_values: 0,
            device_is_host,
            recompute: train.recompute_activations,
            codec_threads: codec_threads(),
            ranks: 1,
        }
    }
}

/// The threads a node's codec runs on: one per core.
pub fn codec_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn a_fully_sharded_rank_holds_its_spans_and_one_layer_with_the_tied_embedding() {
        // tiny: embedding 320 × 256 = 81 920; a layer 2·256² + 2·128·256 + 3·704·256 + 2·256
        // = 737 792; the head unit is the final norm, 256. Over 4 ranks the spans are 20 480,
        // 184 448 (each layer) and 64: 758 336 values.
        let preset = Preset::load("tiny").unwrap();
        let shape = WindowShape {
            ranks: 4,
            ..WindowShape::of_train(&preset.train, false)
        };
        let plan = full_shard_plan(&preset.model, shape, false);
        let bytes = |what: &str| {
            plan.items
                .iter()
                .find(|i| i.what.starts_with(what))
                .map(|i| (i.bytes, i.place))
                .unwrap()
        };
        assert_eq!(bytes("weights"), (4 * 758_336, Place::Device));
        assert_eq!(bytes("AdamW"), (8 * 758_336, Place::Device));
        assert_eq!(bytes("summed"), (4 * 758_336, Place::Device));
        // The tied head keeps the embedding gathered beside a layer: (81 920 + 737 792) values,
        // weights and gradients.
        assert_eq!(bytes("units gathered").0, 8 * 819_712);
        assert_eq!(bytes("largest unit").0, 2 * 737_792);
        assert_eq!(bytes("gradient scratch").0, 4 * 737_792);
        assert_eq!(bytes("one span").0, 4 * 184_448);
        // Payloads of 1 000 bytes, 600 of them decoded (400 on the wire): rank 0 holds each
        // whole and sends its wire bytes, 1 000 + 400 = 1 400; the three others receive them
        // and keep a quarter decoded, 400 + 600 / 4 = 550; the mean (1 400 + 3 · 550) / 4 =
        // 762.5, rounded up.
        let gathering = WindowShape {
            payloads: 2,
            payload_bytes: 1_000,
            payload_decoded_bytes: 600,
            payload_values: 0,
            ..shape
        };
        let payloads = full_shard_plan(&preset.model, gathering, false);
        let held = payloads
            .items
            .iter()
            .find(|i| i.what.starts_with("gathered"));
        assert_eq!(held.map(|i| i.bytes), Some(2 * 763));
        let offloaded = full_shard_plan(&preset.model, shape, true);
        let state = offloaded.items.iter().filter(|i| i.training_state);
        assert!(state.clone().all(|i| i.place == Place::Host));
        assert_eq!(
            plan.bytes(Place::Device) - offloaded.bytes(Place::Device),
            16 * 758_336
        );
    }

    #[test]
    fn a_miner_holds_weights_grads_moments_error_feedback_and_one_copy() {
        let preset = Preset::load("8b").unwrap();
        let shape = WindowShape {
            ranks: 1,
            micro_batch: 1,
            seq_len: 8,
            payloads: 0,
            payload_bytes: 0,
            payload_decoded_bytes: 0,
            payload_values: 0,
            device_is_host: false,
            recompute: false,
            codec_threads: 16,
        };
        let plan = MemoryPlan::new(&preset.model, Role::Miner, shape);
        let p = 8_030_261_248u64;
        // Device: weights, gradients, two moments (16 bytes a parameter), context, activations.
        let activations = training_activation_bytes(&preset.model, shape);
        assert_eq!(
            plan.bytes(Place::Device),
            16 * p + CUDA_CONTEXT_BYTES + activations
        );
        // Host: the network model and error feedback (8 bytes a parameter), two 16 MiB pieces
        // of scratch, two per codec thread and two for an apply under training (never a whole
        // tensor), the baseline.
        assert_eq!(
            plan.bytes(Place::Host),
            8 * p + (2 + 2 * 16 + 2) * (16 << 20) + PROCESS_BASELINE_BYTES
        );
        assert_eq!(plan.training_state_bytes(), 20 * p);
    }

    #[test]
    fn a_rank_holds_its_share_of_moments_and_error_feedback() {
        // tiny over 2 ranks: 3 033 344 parameters in one bucket (under 32 Mi values), spans of
        // 1 516 672; whole tensors round robin, the embedding and every even-indexed tensor on
        // rank 0.
        let preset = Preset::load("tiny").unwrap();
        let p = preset.model.parameter_count();
        let shape = WindowShape {
            ranks: 2,
            payloads: 0,
            payload_bytes: 0,
            ..WindowShape::of_train(&preset.train, false)
        };
        let plan = MemoryPlan::new(&preset.model, Role::Miner, shape);
        let bytes = |what: &str| {
            plan.items
                .iter()
                .find(|i| i.what.starts_with(what))
                .map(|i| i.bytes)
                .unwrap()
        };
        let span = p.div_ceil(2);
        assert_eq!(bytes("AdamW moments"), 2 * 4 * span);
        assert_eq!(bytes("summed gradient spans"), 4 * span);
        assert_eq!(bytes("sharded step scratch"), 4 * 2 * span);
        let shapes = crate::params::parameter_shapes(&preset.model);
        let share = |rank: usize| -> u64 {
            shapes
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == rank)
                .map(|(_, (_, s))| s.iter().product::<i64>() as u64)
                .sum()
        };
        assert_eq!(bytes("error feedback"), 4 * share(0).max(share(1)));
        assert_eq!(plan.ranks, 2);
        // The whole moments of one process are twice a rank's.
        let alone = MemoryPlan::new(
            &preset.model,
            Role::Miner,
            WindowShape { ranks: 1, ..shape },
        );
        let moments = |plan: &MemoryPlan| {
            plan.items
                .iter()
                .find(|i| i.what.starts_with("AdamW"))
                .map(|i| i.bytes)
                .unwrap()
        };
        assert_eq!(moments(&alone), 8 * p);
    }

    #[test]
    fn recomputing_keeps_each_layers_input_and_one_layer() {
        let preset = Preset::load("8b").unwrap();
        let (h, i, kv, layers) = (4_096u64, 14_336u64, 1_024u64, 32u64);
        let shape = |recompute| WindowShape {
            ranks: 1,
            micro_batch: 2,
            seq_len: 2_048,
            payloads: 0,
            payload_bytes: 0,
            payload_decoded_bytes: 0,
            payload_values: 0,
            device_is_host: false,
            recompute,
            codec_threads: 16,
        };
        let tokens = 4_096u64;
        let per_layer = 13 * h + 4 * kv + 4 * i;
        // The vocabulary's part: one loss chunk of 128 positions (16 MiB of logits is 32 of
        // them at this vocabulary, below the floor), three f32 rows of 128 256 each.
        let logits = 128 * 3 * 128_256 * 4;
        let kept = training_activation_bytes(&preset.model, shape(false));
        assert_eq!(kept, tokens * (layers * per_layer + 2 * h) * 4 + logits);
        let recomputed = training_activation_bytes(&preset.model, shape(true));
        assert_eq!(
            recomputed,
            tokens * (layers * h + per_layer + 2 * h) * 4 + logits
        );
        // 56.3 GiB of activations become 4.1 GiB.
        assert!(
            kept > 56 << 30 && recomputed < 5 << 30,
            "{kept} {recomputed}"
        );
    }

    #[test]
    fn a_validator_holds_no_optimizer_state() {
        let preset = Preset::load("150m").unwrap();
        let shape = WindowShape::of_train(&preset.train, true);
        let plan = MemoryPlan::new(&preset.model, Role::Validator, shape);
        let p = preset.model.parameter_count();
        assert_eq!(plan.training_state_bytes(), 4 * p);
        assert_eq!(plan.bytes(Place::Device), 0);
        assert!(plan.items.iter().all(|i| !i.what.contains("moments")));
    }
}
