#![allow(clippy::unwrap_used)]
//! Training on real text: the demo corpus that scripts/setup fetches (Moby-Dick here).

mod common;

use std::path::PathBuf;

use templar_data::{Dataset, PrepareOptions, Sampler, Split, TokenizerSpec, prepare};
use templar_engine::{Batch, Device, Evaluation, Llama, Preset, Trainer};

fn corpus_file() -> PathBuf {
    let file = common::cache().join("corpus/text/moby-dick.jsonl");
    assert!(
        file.exists(),
        "{} is missing: run scripts/setup",
        file.display()
    );
    file
}

fn batch_of(dataset: &Dataset, split: Split, ids: &[u64], vocab: usize) -> (Batch, u64) {
    let reader = dataset.split(split);
    let mut tokens = Vec::new();
    let mut bytes = 0;
    for &id in ids {
        reader.read_tokens(id, &mut tokens).unwrap();
        bytes += u64::from(reader.target_bytes(id).unwrap());
    }
    (
        Batch::from_tokens(&tokens, ids.len(), reader.seq_len(), vocab).unwrap(),
        bytes,
    )
}

#[test]
fn loss_and_bits_per_byte_fall_on_moby_dick() {
    const SEQ: usize = 64;
    const STEPS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("text");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(corpus_file(), input.join("moby-dick.jsonl")).unwrap();
    let mut options =
        PrepareOptions::new(input, dir.path().join("data"), TokenizerSpec::Bytes, SEQ);
    options.validation_fraction = 0.05;
    prepare(&options).unwrap();
    let dataset = Dataset::open(&dir.path().join("data")).unwrap();

    let preset = Preset::load("tiny").unwrap();
    let mut train = preset.train.clone();
    train.seq_len = SEQ;
    train.warmup_steps = 10;
    train.total_steps = STEPS;
    let vocab = preset.model.vocab_size;
    let mut trainer = Trainer::new(
        Llama::new(&preset.model, 1, Device::Cpu).unwrap(),
        train.clone(),
    )
    .unwrap();

    let validation_len = dataset.split(Split::Validation).len();
    let held_out: Vec<u64> = (0..validation_len.min(32)).collect();
    let evaluate = |model: &Llama| -> Evaluation {
        let (batch, bytes) = batch_of(&dataset, Split::Validation, &held_out, vocab);
        model.evaluate(&batch, bytes).unwrap()
    };
    let before = evaluate(&trainer.model);
    // Byte-level: an untrained model is near ln(vocab) = 5.77 nats, about 8.3 bits per byte.
    assert!(before.mean_loss() > 5.0, "{}", before.mean_loss());

    let sampler = Sampler::new(0, dataset.split(Split::Train).len()).unwrap();
    for step in 0..STEPS {
        let ids = sampler.assignment(0, step, train.batch_size);
        let (batch, _) = batch_of(&dataset, Split::Train, &ids, vocab);
        trainer.train_step(&batch).unwrap();
    }
    let after = evaluate(&trainer.model);
    eprintln!(
        "held-out loss {:.3} -> {:.3} nats, {:.3} -> {:.3} bits per byte",
        before.mean_loss(),
        after.mean_loss(),
        before.bits_per_byte(),
        after.bits_per_byte()
    );
    // Learning English byte statistics alone takes a byte model to about 3.5 bits per byte.
    assert!(
        after.mean_loss() < before.mean_loss() - 2.0,
        "{} -> {}",
        before.mean_loss(),
        after.mean_loss()
    );
    assert!(
        after.bits_per_byte() < 3.6,
        "bits per byte {}",
        after.bits_per_byte()
    );
}
