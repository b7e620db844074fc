#![allow(clippy::unwrap_used)]

mod common;

use common::{batch, bits, small, trainer};
use templar_engine::{
    Batch, Device, IGNORE_INDEX, Llama, load_model, load_optimizer, parameter_shapes, save_model,
    save_optimizer,
};

#[test]
fn flat_read_write_read_is_bit_exact() {
    let mut source = trainer(1);
    source
        .train_step(&batch(0, &source.model.config, &source.config))
        .unwrap();
    let buffers = source.model.params.read().unwrap();
    let mut target = trainer(2);
    assert_ne!(bits(&source), bits(&target));
    target.model.params.write(&buffers).unwrap();
    assert_eq!(bits(&source), bits(&target));
}

#[test]
fn names_follow_the_documented_hugging_face_order() {
    let (config, _) = small();
    let model = Llama::new(&config, 0, Device::Cpu).unwrap();
    let names = model.params.names();
    assert_eq!(names[0], "model.embed_tokens.weight");
    assert_eq!(names[1], "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(names[9], "model.layers.0.post_attention_layernorm.weight");
    assert_eq!(names.last().unwrap(), "model.norm.weight");
    let expected: Vec<String> = parameter_shapes(&config)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, expected.as_slice());
}

#[test]
fn write_rejects_mismatched_layouts() {
    let mut model = trainer(1).model;
    let mut buffers = model.params.read().unwrap();
    buffers.swap(1, 2);
    let error = model.params.write(&buffers).unwrap_err().to_string();
    assert!(error.contains("q_proj"), "{error}");
}

#[test]
fn apply_update_is_multiply_then_subtract_in_f32() {
    let mut model = trainer(3).model;
    let before = model.params.read().unwrap();
    let updates: Vec<Vec<f32>> = before
        .iter()
        .map(|b| {
            b.data
                .iter()
                .enumerate()
                .map(|(i, _)| (i % 7) as f32 * 0.01 - 0.03)
                .collect()
        })
        .collect();
    let slices: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
    model.params.apply_update(&slices, 0.7).unwrap();
    let after = model.params.read().unwrap();
    for ((b, a), u) in before.iter().zip(&after).zip(&updates) {
        for ((&x, &y), &d) in b.data.iter().zip(&a.data).zip(u) {
            let step = 0.7f32 * d;
            assert_eq!(y.to_bits(), (x - step).to_bits());
        }
    }
}

#[test]
fn same_seed_gives_the_same_model() {
    assert_eq!(bits(&trainer(5)), bits(&trainer(5)));
}

#[test]
fn attention_is_causal() {
    let model = trainer(4).model;
    let vocab = model.config.vocab_size;
    let mut tokens: Vec<i64> = (0..16).map(|i| i * 3 % vocab as i64).collect();
    let before = Batch::from_tokens(&tokens, 1, 16, vocab).unwrap();
    tokens[10] = 99;
    let after = Batch::from_tokens(&tokens, 1, 16, vocab).unwrap();
    let a = model.forward(&before.input_ids).unwrap();
    let b = model.forward(&after.input_ids).unwrap();
    let early = |t: &tch::Tensor| t.narrow(1, 0, 10);
    assert!(
        early(&a).equal(&early(&b)),
        "positions before 10 must not see token 10"
    );
    assert!(!a.narrow(1, 10, 1).equal(&b.narrow(1, 10, 1)));
}

#[test]
fn ignored_labels_do_not_count() {
    let model = trainer(4).model;
    let vocab = model.config.vocab_size;
    let tokens: Vec<i64> = (0..16).map(|i| (i * 5) % vocab as i64).collect();
    let full = Batch::from_tokens(&tokens, 1, 16, vocab).unwrap();
    let mut labels = tokens.clone();
    labels[5] = IGNORE_INDEX;
    let masked = Batch::from_tokens(&tokens, 1, 16, vocab)
        .unwrap()
        .with_labels(&labels)
        .unwrap();
    let full_eval = model.evaluate(&full, 15).unwrap();
    let masked_eval = model.evaluate(&masked, 14).unwrap();
    assert_eq!(full_eval.tokens, 15);
    assert_eq!(masked_eval.tokens, 14);
    assert!(masked_eval.loss_sum < full_eval.loss_sum);
}

#[test]
fn out_of_vocabulary_tokens_are_rejected_before_libtorch() {
    let error = Batch::from_tokens(&[1, 2, 320, 4], 1, 4, 320)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("320") && error.contains("tokenizer"),
        "{error}"
    );
}

#[test]
fn micro_batching_matches_one_big_batch() {
    let mut split = trainer(6);
    let mut whole = trainer(6);
    whole.config.micro_batch_size = whole.config.batch_size;
    let b = batch(0, &split.model.config, &split.config);
    let s = split.train_step(&b).unwrap();
    let w = whole.train_step(&b).unwrap();
    assert!((s.loss - w.loss).abs() < 1e-5, "{} vs {}", s.loss, w.loss);
    assert!((s.grad_norm - w.grad_norm).abs() < 1e-4 * w.grad_norm);
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut original = trainer(7);
    original
        .train_step(&batch(0, &original.model.config, &original.config))
        .unwrap();
    save_model(dir.path(), &original.model).unwrap();
    save_optimizer(dir.path(), &original.optimizer, &original.model.params).unwrap();
    let loaded = load_model(dir.path(), Device::Cpu).unwrap();
    assert_eq!(loaded.config, original.model.config);
    assert_eq!(
        loaded.params.read().unwrap(),
        original.model.params.read().unwrap()
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["num_key_value_heads"], 2);
}

#[test]
fn resumed_training_continues_identically() {
    let dir = tempfile::tempdir().unwrap();
    let mut uninterrupted = trainer(8);
    let (config, train) = (
        uninterrupted.model.config.clone(),
        uninterrupted.config.clone(),
    );
    for step in 0..3 {
        uninterrupted
            .train_step(&batch(step, &config, &train))
            .unwrap();
    }
    save_model(dir.path(), &uninterrupted.model).unwrap();
    save_optimizer(
        dir.path(),
        &uninterrupted.optimizer,
        &uninterrupted.model.params,
    )
    .unwrap();
    for step in 3..6 {
        uninterrupted
            .train_step(&batch(step, &config, &train))
            .unwrap();
    }

    let model = load_model(dir.path(), Device::Cpu).unwrap();
    let mut resumed = templar_engine::Trainer::new(model, train.clone()).unwrap();
    load_optimizer(dir.path(), &mut resumed.optimizer, &resumed.model.params).unwrap();
    assert_eq!(resumed.optimizer.steps(), 3);
    for step in 3..6 {
        resumed.train_step(&batch(step, &config, &train)).unwrap();
    }
    assert_eq!(bits(&uninterrupted), bits(&resumed));
}

#[test]
fn corrupt_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let original = trainer(9);
    save_model(dir.path(), &original.model).unwrap();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let error = load_model(dir.path(), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("model.safetensors"), "{error}");
}

#[test]
fn a_gradient_pass_gives_a_descent_direction_and_leaves_the_model_alone() {
    let mut t = trainer(3);
    let b = batch(0, &t.model.config, &t.config);
    let before = bits(&t);
    let loss = t.compute_gradients(&b).unwrap().loss;
    assert_eq!(bits(&t), before);
    assert_eq!(t.optimizer.steps(), 0);
    let mut weights = t.model.params.read().unwrap();
    let mut nonzero = false;
    for (i, w) in weights.iter_mut().enumerate() {
        let mut gradient = vec![0f32; w.data.len()];
        t.model.params.read_gradient(i, &mut gradient).unwrap();
        nonzero |= gradient.iter().any(|&g| g != 0.0);
        for (x, g) in w.data.iter_mut().zip(&gradient) {
            *x -= 0.1 * g;
        }
    }
    assert!(nonzero);
    t.model.params.write(&weights).unwrap();
    let after = t.compute_gradients(&b).unwrap().loss;
    assert!(
        after < loss,
        "a step against the gradient took the loss from {loss} to {after}"
    );
}
