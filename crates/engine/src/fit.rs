//! Whether a role fits a machine, and with which options: the preset's own window shape first,
//! then the options that cost memory less and speed more — recomputing activations, then
//! smaller micro-batches — each planned by [`MemoryPlan`] over the code's real buffers. The
//! planner behind `templar model info --device-memory-gb`.

use serde::Serialize;

use crate::config::{ModelConfig, TrainConfig};
use crate::error::EngineError;
use crate::memory::{
    MemoryPlan, Place, Role, WindowShape, available_host_bytes, check_fits, free_device_bytes,
    full_shard_plan,
};

/// The memory a machine offers one node: each device's, and the host's (shared by the ranks).
/// `None`: not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub device_bytes: Option<u64>,
    pub host_bytes: Option<u64>,
}

/// One candidate shape, planned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub shape: WindowShape,
    /// One rank's device memory.
    pub device_bytes: u64,
    /// The host's memory for every rank.
    pub host_bytes: u64,
    pub fits_device: bool,
    pub fits_host: bool,
    /// Forward and backward passes each rank makes per inner step at this micro-batch.
    pub passes_per_step: usize,
    /// Fully sharded only: whether the spans are offloaded to host memory.
    pub offload: bool,
}

impl Candidate {
    pub fn fits(&self) -> bool {
        self.fits_device && self.fits_host
    }
}

/// The candidates in the order they are tried, and the first that fits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitReport {
    pub role: Role,
    pub ranks: usize,
    pub candidates: Vec<Candidate>,
    /// Index of the chosen candidate.
    pub chosen: Option<usize>,
    /// Why nothing fits, when nothing does.
    pub reason: Option<String>,
}

/// Plans `role` at the preset's shape `shape` and then at each cheaper option, against
/// `machine`.
pub fn find_fit(
    model: &ModelConfig,
    train: &TrainConfig,
    role: Role,
    shape: WindowShape,
    machine: Machine,
) -> FitReport {
    let ranks = shape.ranks.max(1);
    if role == Role::Miner && !train.batch_size.is_multiple_of(ranks) {
        return unsplit_batch(train, ranks);
    }
    let rows = (train.batch_size / ranks).max(1);
    let candidates: Vec<Candidate> = candidate_shapes(role, shape, rows)
        .into_iter()
        .map(|shape| plan(model, role, shape, machine, rows))
        .collect();
    let chosen = candidates.iter().position(Candidate::fits);
    let reason = chosen
        .is_none()
        .then(|| why_not(model, role, ranks, machine, candidates.last()));
    FitReport {
        role,
        ranks,
        candidates,
        chosen,
        reason,
    }
}

/// [`check_fits`] for `role` at `shape` on `device`; a refusal also says which cheaper option
/// would fit this machine, or why none does.
pub fn check_fits_or_suggest(
    model: &ModelConfig,
    train: &TrainConfig,
    role: Role,
    shape: WindowShape,
    device: tch::Device,
) -> Result<(), EngineError> {
    let message = match check_fits(&MemoryPlan::new(model, role, shape), device) {
        Err(EngineError::Memory(message)) => message,
        other => return other,
    };
    let machine = Machine {
        device_bytes: match device {
            tch::Device::Cuda(index) => free_device_bytes(index),
            _ => None,
        },
        host_bytes: available_host_bytes(),
    };
    Err(EngineError::Memory(
        message + &refusal_hint(model, train, role, shape, machine),
    ))
}

/// What to add to a refusal of `shape` on `machine`: the first cheaper option that fits, or
/// why none does (nothing when the shape itself fits: the machine changed between two reads).
fn refusal_hint(
    model: &ModelConfig,
    train: &TrainConfig,
    role: Role,
    shape: WindowShape,
    machine: Machine,
) -> String {
    let report = find_fit(model, train, role, shape, machine);
    match (report.chosen, report.reason) {
        (Some(0), _) | (None, None) => String::new(),
        (Some(i), _) => format!(
            "; it fits with {}",
            settings(role, &report.candidates[i].shape)
        ),
        (None, Some(reason)) => format!("; no cheaper option fits either: {reason}"),
    }
}

/// The refusal of a miner's batch that does not split over `ranks`, as the trainers refuse it.
fn unsplit_batch(train: &TrainConfig, ranks: usize) -> FitReport {
    FitReport {
        role: Role::Miner,
        ranks,
        candidates: Vec::new(),
        chosen: None,
        reason: Some(format!(
            "a batch of {} samples does not split evenly over {ranks} ranks: choose a number of \
             ranks that divides it",
            train.batch_size
        )),
    }
}

/// The preset settings a shape stands for, as an operator writes them in `[train]`.
pub fn settings(role: Role, shape: &WindowShape) -> String {
    match role {
        Role::Miner => format!(
            "micro_batch_size = {} and recompute_activations = {} in the preset's [train]",
            shape.micro_batch, shape.recompute
        ),
        Role::Validator => format!(
            "micro_batch_size = {} in the preset's [train] (evaluations run in micro-batches of \
             that many samples)",
            shape.micro_batch
        ),
    }
}

/// The preset's shape; for a miner that does not recompute, the same recomputing; then the
/// micro-batch halved while it still divides a rank's rows, down to one sample.
fn candidate_shapes(role: Role, shape: WindowShape, rows: usize) -> Vec<WindowShape> {
    let mut shapes = vec![shape];
    let mut last = shape;
    if role == Role::Miner && !last.recompute {
        last.recompute = true;
        shapes.push(last);
    }
    while last.micro_batch > 1 {
        last.micro_batch /= 2;
        if rows.is_multiple_of(last.micro_batch) {
            shapes.push(last);
        }
    }
    shapes
}

fn plan(
    model: &ModelConfig,
    role: Role,
    shape: WindowShape,
    machine: Machine,
    rows: usize,
) -> Candidate {
    candidate(MemoryPlan::new(model, role, shape), shape, machine, rows)
}

fn candidate(plan: MemoryPlan, shape: WindowShape, machine: Machine, rows: usize) -> Candidate {
    let device_bytes = if shape.device_is_host {
        0
    } else {
        plan.bytes(Place::Device)
    };
    let host_bytes = plan.bytes(Place::Host) * plan.ranks;
    Candidate {
        shape,
        device_bytes,
        host_bytes,
        fits_device: machine.device_bytes.is_none_or(|have| device_bytes <= have),
        fits_host: machine.host_bytes.is_none_or(|have| host_bytes <= have),
        passes_per_step: rows.div_ceil(shape.micro_batch.max(1)),
        offload: false,
    }
}

/// Whether a fully sharded trainer ([`crate::FullyShardedTrainer`], [`full_shard_plan`]) fits
/// `machine` over `shape.ranks` ranks: its spans on the device at the preset's micro-batch and
/// then at smaller ones, then the same with the spans offloaded to the host, each with the outer
/// step on shards beside it (`templar miner --shard full`).
pub fn find_full_shard_fit(
    model: &ModelConfig,
    train: &TrainConfig,
    shape: WindowShape,
    machine: Machine,
) -> FitReport {
    let ranks = shape.ranks.max(1);
    if !train.batch_size.is_multiple_of(ranks) {
        return unsplit_batch(train, ranks);
    }
    let rows = (train.batch_size / ranks).max(1);
    let recomputing = WindowShape {
        recompute: true,
        ..shape
    };
    let shapes = candidate_shapes(Role::Miner, recomputing, rows);
    let candidates: Vec<Candidate> = [false, true]
        .into_iter()
        .flat_map(|offload| {
            shapes.iter().map(move |&shape| Candidate {
                offload,
                ..candidate(full_shard_plan(model, shape, offload), shape, machine, rows)
            })
        })
        .collect();
    let chosen = candidates.iter().position(Candidate::fits);
    let reason = match (chosen, candidates.last()) {
        (None, Some(last)) => Some(format!(
            "fully sharded over {ranks} ranks with the spans offloaded, at micro-batch {}, a \
             device needs {:.1} GiB and the host {:.1} GiB: {}",
            last.shape.micro_batch,
            last.device_bytes as f64 / (1u64 << 30) as f64,
            last.host_bytes as f64 / (1u64 << 30) as f64,
            // Offloaded, more ranks shrink a device's share but not the host's total.
            if last.fits_device {
                "use a larger host, or spread the ranks over more hosts"
            } else {
                "use more ranks or larger devices"
            }
        )),
        _ => None,
    };
    FitReport {
        role: Role::Miner,
        ranks,
        candidates,
        chosen,
        reason,
    }
}

/// What stops the cheapest candidate: for a miner whose device cannot hold the state every
/// rank keeps whole, no option or number of ranks helps.
fn why_not(
    model: &ModelConfig,
    role: Role,
    ranks: usize,
    machine: Machine,
    cheapest: Option<&Candidate>,
) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let Some(cheapest) = cheapest else {
        return "no shape to plan".into();
    };
    let whole = model.parameter_count() * 4 * if role == Role::Miner { 2 } else { 1 };
    if let Some(have) = machine.device_bytes
        && !cheapest.fits_device
        && whole > have
    {
        return format!(
            "every rank holds the whole model's f32 weights{} ({:.1} GiB), more than a device's \
             {:.1} GiB: no number of ranks fits until parameters are sharded too",
            if role == Role::Miner {
                " and gradients"
            } else {
                ""
            },
            gib(whole),
            gib(have)
        );
    }
    let mut short = Vec::new();
    if let (false, Some(have)) = (cheapest.fits_device, machine.device_bytes) {
        short.push(format!(
            "a device needs {:.1} GiB of {:.1}",
            gib(cheapest.device_bytes),
            gib(have)
        ));
    }
    if let (false, Some(have)) = (cheapest.fits_host, machine.host_bytes) {
        short.push(format!(
            "the host needs {:.1} GiB of {:.1} for {ranks} rank(s)",
            gib(cheapest.host_bytes),
            gib(have)
        ));
    }
    // More ranks shrink a miner's device share (its moments are sharded), never the host's
    // (every rank holds the network model) nor a validator's (every rank holds the weights).
    let advice = match (role, cheapest.fits_device, cheapest.shape.device_is_host) {
        (Role::Miner, false, false) => "use more ranks or larger devices",
        (_, false, false) => "use larger devices",
        _ => "use a larger host, or fewer ranks",
    };
    format!(
        "even at micro-batch {}{}, {}; {advice}",
        cheapest.shape.micro_batch,
        if role == Role::Miner && cheapest.shape.recompute {
            " with recomputation"
        } else {
            ""
        },
        short.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    const GIB: u64 = 1 << 30;

    fn shape(preset: &Preset, ranks: usize) -> WindowShape {
        WindowShape {
            ranks,
            payloads: 20,
            payload_bytes: 0,
            codec_threads: 16,
            ..WindowShape::of_train(&preset.train, false)
        }
    }

    fn fit(name: &str, role: Role, ranks: usize, device_gib: u64) -> FitReport {
        let preset = Preset::load(name).unwrap();
        let machine = Machine {
            device_bytes: Some(device_gib * GIB),
            host_bytes: None,
        };
        find_fit(
            &preset.model,
            &preset.train,
            role,
            shape(&preset, ranks),
            machine,
        )
    }

    #[test]
    fn a_fully_sharded_70b_needs_its_spans_offloaded_on_8_h200s_and_not_on_16() {
        let preset = Preset::load("70b").unwrap();
        let machine = Machine {
            device_bytes: Some(139 * GIB),
            host_bytes: None,
        };
        let over = |ranks| {
            find_full_shard_fit(&preset.model, &preset.train, shape(&preset, ranks), machine)
        };
        let eight = over(8);
        let chosen = &eight.candidates[eight.chosen.unwrap()];
        assert!(chosen.offload, "{chosen:?}");
        // On the device the 16 bytes a parameter of spans alone are 70.6e9 × 16 / 8 = 131 GiB.
        assert!(eight.candidates.iter().all(|c| c.offload || !c.fits_device));
        let sixteen = over(16);
        assert!(!sixteen.candidates[sixteen.chosen.unwrap()].offload);
        // A batch that does not split over the ranks is refused as the trainer refuses it.
        let mut odd = preset.train.clone();
        odd.batch_size = 12;
        let refused = find_full_shard_fit(&preset.model, &odd, shape(&preset, 8), machine);
        assert!(refused.chosen.is_none());
        assert!(refused.reason.unwrap().contains("does not split evenly"));
    }

    #[test]
    fn candidates_go_from_the_preset_to_recomputation_to_smaller_micro_batches() {
        let mut preset = Preset::load("150m").unwrap();
        preset.train.recompute_activations = false;
        preset.train.micro_batch_size = 4;
        preset.train.batch_size = 24;
        let report = find_fit(
            &preset.model,
            &preset.train,
            Role::Miner,
            shape(&preset, 1),
            Machine {
                device_bytes: None,
                host_bytes: None,
            },
        );
        let shapes: Vec<(bool, usize, usize)> = report
            .candidates
            .iter()
            .map(|c| (c.shape.recompute, c.shape.micro_batch, c.passes_per_step))
            .collect();
        // 24 rows: micro-batches of 4, then 2 and 1 (each divides 24), 6, 12 and 24 passes.
        assert_eq!(
            shapes,
            vec![(false, 4, 6), (true, 4, 6), (true, 2, 12), (true, 1, 24)]
        );
        // Unchecked machine: the preset's own shape is chosen.
        assert_eq!(report.chosen, Some(0));
        // Each step down costs less device memory.
        let device: Vec<u64> = report.candidates.iter().map(|c| c.device_bytes).collect();
        assert!(device.windows(2).all(|w| w[1] < w[0]), "{device:?}");
    }

    #[test]
    fn the_first_candidate_that_fits_is_chosen() {
        let all = fit("8b", Role::Miner, 1, 10_000);
        assert_eq!(all.chosen, Some(0));
        // Between the preset's micro-batch of 2 and one sample: one sample is chosen.
        let (two, one) = (
            all.candidates[0].device_bytes,
            all.candidates[1].device_bytes,
        );
        assert_eq!(all.candidates[1].shape.micro_batch, 1);
        let between = (two + one) / 2 / GIB;
        let report = fit("8b", Role::Miner, 1, between);
        assert_eq!(report.chosen, Some(1), "{report:?}");
        assert!(report.reason.is_none());
    }

    /// A refusal names the option that would fit, worded for the role: a host of 64 GiB cannot
    /// hold a 150m miner training a million tokens a pass (nor one of 16 GiB a validator
    /// evaluating them), and can at a smaller micro-batch.
    #[test]
    fn a_refusal_names_the_option_that_fits() {
        let mut preset = Preset::load("150m").unwrap();
        preset.train.recompute_activations = false;
        preset.train.micro_batch_size = 1024;
        preset.train.batch_size = 1024;
        let shape = WindowShape {
            device_is_host: true,
            ..shape(&preset, 1)
        };
        let machine = Machine {
            device_bytes: None,
            host_bytes: Some(64 * GIB),
        };
        let (model, train) = (&preset.model, &preset.train);
        let miner = refusal_hint(model, train, Role::Miner, shape, machine);
        assert!(
            miner.starts_with("; it fits with micro_batch_size = "),
            "{miner}"
        );
        assert!(miner.contains("recompute_activations = true"), "{miner}");
        // A validator keeps no graph: its million tokens need less, and 16 GiB still too little.
        let small = Machine {
            device_bytes: None,
            host_bytes: Some(16 * GIB),
        };
        let validator = refusal_hint(model, train, Role::Validator, shape, small);
        assert!(
            validator.starts_with("; it fits with micro_batch_size = "),
            "{validator}"
        );
        assert!(!validator.contains("recompute"), "{validator}");
        // A host too small for any option: said, with what to do.
        let tiny_host = Machine {
            device_bytes: None,
            host_bytes: Some(GIB),
        };
        let none = refusal_hint(model, train, Role::Miner, shape, tiny_host);
        assert!(none.contains("no cheaper option fits either"), "{none}");
        assert!(none.contains("use a larger host"), "{none}");
        // The preset's own shape fitting (a second read of the machine found more): nothing.
        let roomy = Machine {
            device_bytes: None,
            host_bytes: Some(1 << 50),
        };
        assert_eq!(refusal_hint(model, train, Role::Miner, shape, roomy), "");
    }

    #[test]
    fn a_batch_that_does_not_split_over_the_ranks_is_refused() {
        let report = fit("8b", Role::Miner, 3, 10_000);
        assert_eq!(report.chosen, None);
        assert!(
            report
                .reason
                .unwrap()
                .contains("does not split evenly over 3 ranks")
        );
    }

    #[test]
    fn a_70b_miner_fits_no_number_of_ranks_until_parameters_are_sharded() {
        for ranks in [1, 8, 64] {
            let report = fit("70b", Role::Miner, ranks, 141);
            assert_eq!(report.chosen, None);
            let reason = report.reason.unwrap();
            assert!(reason.contains("no number of ranks fits"), "{reason}");
        }
        // A 70B validator holds the weights once, without gradients: one 141 GiB device is too
        // small for its f32 weights (282 GB) all the same.
        let report = fit("70b", Role::Validator, 1, 141);
        assert!(
            report
                .reason
                .unwrap()
                .contains("whole model's f32 weights (")
        );
    }

    #[test]
    fn an_8b_miner_over_eight_ranks_fits_smaller_devices_than_one() {
        let one = fit("8b", Role::Miner, 1, 100);
        assert_eq!(one.chosen, None);
        let eight = fit("8b", Role::Miner, 8, 100);
        assert_eq!(eight.chosen, Some(0), "{eight:?}");
    }
}
