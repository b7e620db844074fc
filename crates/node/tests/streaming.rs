//! The streamed replica against the whole-model path it replaced: the same payload bytes, error
//! feedback, aggregate, weights and fingerprints, bit for bit. The whole-model path is written out
//! here with the codec's and the engine's whole-model functions, as the node used to run it.
#![allow(clippy::unwrap_used)]

use templar_codec::{Payload, compress, encode};
use templar_engine::memory::Role;
use templar_engine::{Batch, Device, Llama, NamedBuffer, Preset, learning_rate};
use templar_node::Fingerprint;
use templar_node::config::NetworkConfig;
use templar_node::miner::network_schedule_step;
use templar_node::replica::{LiveWeights, Replica};

fn config() -> NetworkConfig {
    NetworkConfig::defaults("streaming-test", Preset::load("tiny").unwrap(), "unused")
}

fn batch(config: &NetworkConfig, seed: u64) -> Batch {
    let (rows, seq) = (2, 32);
    let vocab = config.model.model.vocab_size as u64;
    let mut state = seed;
    let tokens: Vec<i64> = (0..rows * seq)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab) as i64
        })
        .collect();
    Batch::from_tokens(&tokens, rows, seq, vocab as usize).unwrap()
}

fn zeros(buffers: &[NamedBuffer]) -> Vec<Vec<f32>> {
    buffers.iter().map(|b| vec![0.0; b.data.len()]).collect()
}

/// Trains `replica` two steps and returns its payload from the streamed outer step, checking it
/// and the error feedback against the whole-model path.
fn train_and_compress(replica: &mut Replica, seed: u64, ef: &mut [Vec<f32>]) -> Payload {
    let config = config();
    let before = replica.model.params.read().unwrap();
    assert_eq!(Fingerprint::of(&before), replica.fingerprint());
    for step in 0..2 {
        replica.train_step(&batch(&config, seed + step)).unwrap();
    }
    let after = replica.model.params.read().unwrap();
    let delta: Vec<Vec<f32>> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| b.data.iter().zip(&a.data).map(|(x, y)| x - y).collect())
        .collect();
    let mut reference_ef = ef.to_vec();
    let reference = compress(&replica.schema, &mut reference_ef, &delta).unwrap();

    let payload = replica.outer_step(ef).unwrap();
    let coding = config.codec.index_coding;
    assert_eq!(
        encode(&replica.schema, &payload, coding),
        encode(&replica.schema, &reference, coding),
        "payload bytes differ from the whole-model path"
    );
    assert_eq!(ef, reference_ef.as_slice(), "error feedback differs");
    assert_eq!(
        replica.model.params.read().unwrap(),
        before,
        "live weights are not back at the base"
    );
    payload
}

#[test]
fn streamed_outer_step_and_apply_match_the_whole_model_path() {
    let config = config();
    let mut replica = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let initial = replica.model.params.read().unwrap();
    let mut ef = zeros(&initial);
    let first = train_and_compress(&mut replica, 1, &mut ef);
    // A second miner: another replica of the same model on other data.
    let mut other = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let mut other_ef = zeros(&initial);
    let second = train_and_compress(&mut other, 100, &mut other_ef);

    // The whole-model apply: a dense aggregate, then θ − lr·update through the engine.
    let payloads = [&first, &second];
    let update = replica.aggregate(&payloads).unwrap();
    let mut reference = Llama::new(&config.model.model, config.init_seed, Device::Cpu).unwrap();
    assert_eq!(reference.params.read().unwrap(), initial);
    let refs: Vec<&[f32]> = update.iter().map(Vec::as_slice).collect();
    reference
        .params
        .apply_update(&refs, config.training.outer_lr)
        .unwrap();
    let expected = reference.params.read().unwrap();

    replica.apply_aggregate(&payloads).unwrap();
    assert_eq!(replica.model.params.read().unwrap(), expected);
    assert_eq!(replica.fingerprint(), Fingerprint::of(&expected));
    assert_ne!(replica.fingerprint(), Fingerprint::of(&initial));

    // The next window trains from the applied model, as before.
    let third = train_and_compress(&mut replica, 7, &mut ef);
    assert_eq!(third.tensors.len(), replica.schema.len());
}

#[test]
fn an_apply_under_training_gives_the_same_base_and_keeps_the_steps() {
    let config = config();
    let mut overlapped = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let mut sequential = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let initial = overlapped.model.params.read().unwrap();
    let (mut ef, mut other_ef) = (zeros(&initial), zeros(&initial));
    let payload = train_and_compress(&mut overlapped, 11, &mut ef);
    // Both miners published the same payload: only what happens next differs.
    let same = train_and_compress(&mut sequential, 11, &mut other_ef);
    let coding = config.codec.index_coding;
    assert_eq!(
        encode(&sequential.schema, &same, coding),
        encode(&overlapped.schema, &payload, coding)
    );
    // The overlapped miner trains the next window before the aggregate is applied.
    for step in 0..2 {
        overlapped.train_step(&batch(&config, 50 + step)).unwrap();
    }
    let trained = overlapped.model.params.read().unwrap();
    let base_before: Vec<Vec<f32>> = overlapped.base().to_vec();

    sequential.apply_aggregate(&[&payload]).unwrap();
    overlapped
        .apply_aggregate_to(&[&payload], LiveWeights::Carried)
        .unwrap();
    // The network's model is the same bit for bit, whichever way it was applied.
    assert_eq!(overlapped.base(), sequential.base());
    assert_eq!(overlapped.fingerprint(), sequential.fingerprint());
    assert_ne!(overlapped.fingerprint(), Fingerprint::of(&initial));
    // The live weights moved by exactly the base's change: the two steps are kept on top.
    let live = overlapped.model.params.read().unwrap();
    for (((live, trained), before), after) in live
        .iter()
        .zip(&trained)
        .zip(&base_before)
        .zip(overlapped.base())
    {
        for (((&l, &t), &b), &a) in live.data.iter().zip(&trained.data).zip(before).zip(after) {
            assert_eq!(l, t + (a - b));
        }
    }
    assert_ne!(live, sequential.model.params.read().unwrap());

    // Taken back exactly, and a plain apply resets the live weights to the base again.
    assert!(overlapped.revert_last_apply().unwrap());
    assert_eq!(overlapped.base(), base_before.as_slice());
    overlapped.apply_aggregate(&[&payload]).unwrap();
    assert_eq!(
        overlapped.model.params.read().unwrap(),
        sequential.model.params.read().unwrap()
    );
}

#[test]
fn a_validator_judges_one_update_and_restores_the_base() {
    let config = config();
    let mut miner = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let mut ef = zeros(&miner.read());
    let payload = train_and_compress(&mut miner, 3, &mut ef);

    let mut validator = Replica::new(&config, Device::Cpu, Role::Validator).unwrap();
    assert!(validator.train_step(&batch(&config, 1)).is_err());
    let base = validator.model.params.read().unwrap();
    let probe = batch(&config, 9);
    let loss_before = validator.evaluate(&probe, 1).unwrap().mean_loss();
    validator.apply_one(&payload, &[&payload], 0, 1.0).unwrap();
    let judged = validator.model.params.read().unwrap();
    assert_ne!(judged, base);
    // The judged model is the base minus the (unclipped: it is its own median) update.
    let update = validator.aggregate(&[&payload]).unwrap();
    for ((j, b), u) in judged.iter().zip(&base).zip(&update) {
        for ((&jv, &bv), &uv) in j.data.iter().zip(&b.data).zip(u) {
            assert_eq!(jv, bv - 1.0 * uv);
        }
    }
    let loss_after = validator.evaluate(&probe, 1).unwrap().mean_loss();
    assert_ne!(loss_before, loss_after);
    validator.restore().unwrap();
    assert_eq!(validator.model.params.read().unwrap(), base);
    assert_eq!(
        validator.evaluate(&probe, 1).unwrap().mean_loss(),
        loss_before
    );
}

#[test]
fn a_sharded_checkpoint_resumes_to_the_same_fingerprint() {
    let config = config();
    let mut replica = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let mut ef = zeros(&replica.read());
    let payload = train_and_compress(&mut replica, 5, &mut ef);
    replica.apply_aggregate(&[&payload]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Shards of 1 MB: the tiny model's embedding alone is larger, so several files and an index.
    let files = replica.save_weights(dir.path(), 1_000_000).unwrap();
    assert!(files.len() > 3, "{files:?}");
    assert!(files.contains(&"model.safetensors.index.json".to_string()));
    let resumed = Replica::resume(&config, Device::Cpu, Role::Validator, dir.path()).unwrap();
    assert_eq!(resumed.fingerprint(), replica.fingerprint());
    assert_eq!(resumed.model.params.read().unwrap(), replica.read());

    // A missing shard is refused by name, and the model loaded before is left as it was.
    let shard = files.iter().find(|f| f.starts_with("model-00002")).unwrap();
    std::fs::remove_file(dir.path().join(shard)).unwrap();
    let mut target = Replica::new(&config, Device::Cpu, Role::Validator).unwrap();
    let fingerprint = target.fingerprint();
    let error = target.load_weights(dir.path()).unwrap_err().to_string();
    assert!(error.contains(shard.as_str()), "{error}");
    assert_eq!(target.fingerprint(), fingerprint);
}

#[test]
fn a_miner_trains_at_the_networks_learning_rate_not_its_own_step_count() {
    let config = config();
    let train = &config.model.train;
    let mut newcomer = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    // The network is 10 outer steps in: a newcomer's first step is where everyone else is in
    // the schedule, not at the start of its own warm-up.
    let position = network_schedule_step(10, &config);
    assert_eq!(position, 10 * u64::from(config.training.inner_steps));
    newcomer.set_schedule_step(position);
    let first = newcomer.train_step(&batch(&config, 1)).unwrap();
    assert_eq!(first.lr, learning_rate(train, position));
    assert_ne!(first.lr, learning_rate(train, 0));
    let second = newcomer.train_step(&batch(&config, 2)).unwrap();
    assert_eq!(second.lr, learning_rate(train, position + 1));
    // A window cut short: the next window is anchored afresh from the global step.
    newcomer.set_schedule_step(network_schedule_step(11, &config));
    let next = newcomer.train_step(&batch(&config, 3)).unwrap();
    assert_eq!(
        next.lr,
        learning_rate(train, network_schedule_step(11, &config))
    );
    assert_eq!(
        newcomer.optimizer_steps(),
        3,
        "AdamW still counts its own steps"
    );
}
