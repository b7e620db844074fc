#![allow(clippy::unwrap_used)]
//! A templar checkpoint loads in Hugging Face transformers as `LlamaForCausalLM` and computes the same
//! logits (bench/hf_logits.py, run with the transformers and torch that scripts/setup installs).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use common::{batch, cache, small};
use safetensors::tensor::{Dtype, TensorView};
use templar_engine::{Device, Llama, Trainer, save_model, save_weights};

fn python_path() -> String {
    let parts = ["transformers-4.57.1", "torch-2.11.0"].map(|d| cache().join(d));
    for part in &parts {
        assert!(
            part.join(".complete").exists(),
            "{} is missing: run scripts/setup",
            part.display()
        );
    }
    parts.map(|p| p.display().to_string()).join(":")
}

/// `max_shard_bytes`: `None` for one file, else shards with Hugging Face's index.
fn check(tie_word_embeddings: bool, max_shard_bytes: Option<u64>) {
    let (mut config, train) = small();
    config.tie_word_embeddings = tie_word_embeddings;
    let mut trainer =
        Trainer::new(Llama::new(&config, 11, Device::Cpu).unwrap(), train.clone()).unwrap();
    // A couple of steps so that norm weights and both embeddings differ from their initial values.
    for step in 0..2 {
        trainer.train_step(&batch(step, &config, &train)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    match max_shard_bytes {
        None => {
            save_model(&checkpoint, &trainer.model).unwrap();
        }
        Some(limit) => {
            let files = save_weights(&checkpoint, &config, limit, |i, start, out| {
                trainer.model.params.read_range(i, start, out)
            })
            .unwrap();
            assert!(
                files.iter().any(|f| f == "model.safetensors.index.json"),
                "{files:?}"
            );
        }
    }

    let input = batch(9, &config, &train).input_ids.narrow(0, 0, 2);
    let logits = tch::no_grad(|| trainer.model.forward(&input)).unwrap();
    let ids: Vec<i64> = Vec::try_from(input.flatten(0, -1)).unwrap();
    let values: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).unwrap();
    let id_bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let logit_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = |t: &tch::Tensor| t.size().iter().map(|&d| d as usize).collect::<Vec<_>>();
    let views = vec![
        (
            "input_ids",
            TensorView::new(Dtype::I64, shape(&input), &id_bytes).unwrap(),
        ),
        (
            "logits",
            TensorView::new(Dtype::F32, shape(&logits), &logit_bytes).unwrap(),
        ),
    ];
    let expected = dir.path().join("expected.safetensors");
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, &expected).unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/hf_logits.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(&checkpoint)
        .arg(&expected)
        .env("PYTHONPATH", python_path())
        .env("PYTHONWARNINGS", "ignore")
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let diff = report["max_abs_diff"].as_f64().unwrap();
    eprintln!("transformers vs templar: {report}");
    assert!(
        diff < 1e-4,
        "transformers' logits differ from templar's by {diff}: {report}"
    );
}

#[test]
fn transformers_loads_the_checkpoint_and_agrees_tied() {
    check(true, None);
}

#[test]
fn transformers_loads_the_checkpoint_and_agrees_untied() {
    check(false, None);
}

#[test]
fn transformers_loads_a_sharded_checkpoint_and_agrees() {
    // Shards of 200 kB: several files and model.safetensors.index.json, as transformers writes them.
    check(false, Some(200_000));
}
