#![allow(clippy::unwrap_used)]

mod common;

use common::{batch, bits, small, trainer};
use templar_engine::{
    Batch, Device, IGNORE_INDEX, Llama, load_model, load_optimizer, parameter_shapes,
    save_lent_moments, save_model, save_optimizer,
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

/// The loss made a few positions at a time, gradients included, against plain autograd over the
/// whole logits, with some labels ignored.
#[test]
fn a_chunked_loss_gives_the_whole_logits_gradients() {
    for tied in [false, true] {
        chunked_loss_matches_autograd(tied);
    }
}

fn chunked_loss_matches_autograd(tied: bool) {
    let (mut config, mut train) = small();
    config.tie_word_embeddings = tied;
    train.grad_clip = 0.0;
    train.micro_batch_size = train.batch_size;
    let b = batch(0, &config, &train);
    let mut labels: Vec<i64> = Vec::<i64>::try_from(b.labels.reshape([-1])).unwrap();
    for j in (0..labels.len()).step_by(7) {
        labels[j] = IGNORE_INDEX;
    }
    let b = b.with_labels(&labels).unwrap();

    let whole = Llama::new(&config, 11, Device::Cpu).unwrap();
    let logits = whole.forward(&b.input_ids).unwrap();
    let seq = train.seq_len as i64;
    let predicted = logits
        .narrow(1, 0, seq - 1)
        .reshape([-1, config.vocab_size as i64]);
    let targets = b.labels.narrow(1, 1, seq - 1).reshape([-1]);
    let count = i64::try_from(targets.ne(IGNORE_INDEX).sum(tch::Kind::Int64)).unwrap();
    let loss = predicted.cross_entropy_loss::<tch::Tensor>(
        &targets,
        None,
        tch::Reduction::Sum,
        IGNORE_INDEX,
        0.0,
    );
    (&loss / count as f64).backward();

    // 60 predicted positions in chunks of 7: eight full chunks and one of 4.
    let chunked = Llama::new(&config, 11, Device::Cpu)
        .unwrap()
        .with_loss_chunk(7);
    let mut trainer = templar_engine::Trainer::new(chunked, train).unwrap();
    let gradients = trainer.compute_gradients(&b).unwrap();
    let expected = f64::try_from(&loss).unwrap() / count as f64;
    assert!(
        (gradients.loss - expected).abs() < 1e-5,
        "{} vs {expected}",
        gradients.loss
    );
    let (eval, _) = trainer.model.loss_sum(&b.input_ids, &b.labels).unwrap();
    assert!((f64::try_from(&eval).unwrap() - f64::try_from(&loss).unwrap()).abs() < 1e-3);
    let shapes = whole.params.shapes();
    for (i, name) in whole.params.names().iter().enumerate() {
        let n: usize = shapes[i].iter().product();
        let (mut a, mut c) = (vec![0f32; n], vec![0f32; n]);
        whole.params.read_gradient(i, &mut a).unwrap();
        trainer.model.params.read_gradient(i, &mut c).unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-8);
        let worst = a
            .iter()
            .zip(&c)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-4 * scale,
            "{name} (tied {tied}): differs by {worst} (scale {scale})"
        );
    }
}

/// Recomputing each layer's activations in the backward pass gives the gradients of keeping
/// them: the same bits on the CPU.
#[test]
fn recomputed_activations_give_the_same_gradients() {
    let (config, mut train) = small();
    train.grad_clip = 0.0;
    let b = batch(3, &config, &train);
    let gradients = |recompute: bool| {
        let mut train = train.clone();
        train.recompute_activations = recompute;
        let model = Llama::new(&config, 12, Device::Cpu)
            .unwrap()
            .with_loss_chunk(5);
        let mut trainer = templar_engine::Trainer::new(model, train).unwrap();
        let stats = trainer.compute_gradients(&b).unwrap();
        let shapes = trainer.model.params.shapes();
        let grads: Vec<Vec<u32>> = (0..shapes.len())
            .map(|i| {
                let mut g = vec![0f32; shapes[i].iter().product()];
                trainer.model.params.read_gradient(i, &mut g).unwrap();
                g.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        (stats.loss.to_bits(), grads)
    };
    let (kept, recomputed) = (gradients(false), gradients(true));
    assert!(
        kept.1.iter().flatten().any(|&g| g != 0),
        "some gradient is not zero"
    );
    assert_eq!(kept.0, recomputed.0, "loss");
    assert_eq!(kept.1, recomputed.1, "gradients");
}

/// AdamW updating a few values of a tensor at a time writes the bits of updating it whole.
#[test]
fn a_pieced_optimizer_step_is_bit_identical() {
    let mut whole = trainer(13);
    let mut pieced = trainer(13);
    pieced.optimizer = templar_engine::AdamW::new(&pieced.model.params, &pieced.config)
        .unwrap()
        .with_step_piece(7);
    for step in 0..2 {
        let b = batch(step, &whole.model.config, &whole.config);
        whole.train_step(&b).unwrap();
        pieced.train_step(&b).unwrap();
    }
    assert_eq!(bits(&whole), bits(&pieced));
    assert_ne!(
        bits(&whole),
        bits(&trainer(13)),
        "the steps changed the weights"
    );
}

/// Zeroing makes every gradient that does not exist yet, zero and of its parameter's size, so
/// that gradients are allocated before a step's activations, not between them.
#[test]
fn zeroing_makes_every_gradient_before_the_first_step() {
    let mut fresh = trainer(15);
    let shapes = fresh.model.params.shapes();
    // No gradient yet: reading one into nothing succeeds (it reads as zeros).
    assert!((0..shapes.len()).all(|i| fresh.model.params.read_gradient(i, &mut []).is_ok()));
    fresh.model.params.zero_gradients().unwrap();
    for (i, shape) in shapes.iter().enumerate() {
        assert!(fresh.model.params.read_gradient(i, &mut []).is_err(), "{i}");
        let mut values = vec![1.0f32; shape.iter().product()];
        fresh.model.params.read_gradient(i, &mut values).unwrap();
        assert!(values.iter().all(|v| *v == 0.0), "{i}");
    }
}

/// Gradients released between steps come back with their shapes, and training goes on with the
/// same bits.
#[test]
fn released_gradients_change_nothing() {
    let mut kept = trainer(14);
    let mut released = trainer(14);
    for step in 0..3 {
        let b = batch(step, &kept.model.config, &kept.config);
        kept.train_step(&b).unwrap();
        released.train_step(&b).unwrap();
        released.model.params.release_gradients().unwrap();
        // A released gradient holds no values; a kept one holds the parameter's.
        assert!(released.model.params.read_gradient(0, &mut []).is_ok());
        assert!(kept.model.params.read_gradient(0, &mut []).is_err());
    }
    assert_eq!(bits(&kept), bits(&released));
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut original = trainer(7);
    original
        .train_step(&batch(0, &original.model.config, &original.config))
        .unwrap();
    save_model(dir.path(), &original.model).unwrap();
    save_optimizer(
        dir.path(),
        &original.optimizer,
        original.model.params.names(),
    )
    .unwrap();
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

/// Moments lent to a slow writer on another thread are written as they were when lent, while
/// training goes on: a step waits for each tensor's moments to be read before changing them,
/// and ends with the bits of training that never lent anything.
#[test]
fn lent_moments_are_written_as_lent_while_training_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (before, lent) = (dir.path().join("before"), dir.path().join("lent"));
    let mut lending = trainer(9);
    let mut plain = trainer(9);
    let (config, train) = (lending.model.config.clone(), lending.config.clone());
    for step in 0..2 {
        lending.train_step(&batch(step, &config, &train)).unwrap();
        plain.train_step(&batch(step, &config, &train)).unwrap();
    }
    let names = lending.model.params.names().to_vec();
    save_optimizer(&before, &lending.optimizer, &names).unwrap();
    let loan = lending.optimizer.lend_moments();
    let writer = std::thread::spawn(move || {
        // Slower than the step below, which would otherwise change the moments first.
        std::thread::sleep(std::time::Duration::from_millis(300));
        save_lent_moments(&lent, loan, &names).unwrap();
    });
    for step in 2..4 {
        lending.train_step(&batch(step, &config, &train)).unwrap();
        plain.train_step(&batch(step, &config, &train)).unwrap();
    }
    writer.join().unwrap();
    let read = |d: &std::path::Path| std::fs::read(d.join("optimizer.safetensors")).unwrap();
    assert!(read(&before) == read(&dir.path().join("lent")));
    assert_eq!(bits(&lending), bits(&plain));

    // A loan dropped unread gives everything back at once.
    drop(lending.optimizer.lend_moments());
    lending.train_step(&batch(4, &config, &train)).unwrap();
    assert_eq!(lending.optimizer.steps(), 5);
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
        uninterrupted.model.params.names(),
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
