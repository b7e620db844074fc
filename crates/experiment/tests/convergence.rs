//! The short convergence study: a few hundred steps of two replicas on Moby-Dick under every
//! method. Every method must learn, and the bytes counted must be what the transport carries: the
//! all-reduce formula for the dense methods, the codec's encoded payloads for the sparse ones.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use templar_codec::schema::value_bytes;
use templar_codec::{CodecConfig, Schema, TensorSpec, Transform, ValueCoding};
use templar_data::{PrepareOptions, TokenizerSpec, prepare};
use templar_engine::{Device, Preset, parameter_shapes};
use templar_experiment::{Method, RunResult, Settings, Study, StudyData, ring_allreduce_bytes};

const REPLICAS: usize = 2;
const STEPS: u64 = 200;
const SEQ_LEN: usize = 64;

fn cache() -> PathBuf {
    std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/templar"))
}

fn prepare_data(dir: &Path) -> PathBuf {
    let corpus = cache().join("corpus/text/moby-dick.jsonl");
    assert!(
        corpus.exists(),
        "{} is missing: run scripts/setup",
        corpus.display()
    );
    let input = dir.join("text");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(&corpus, input.join("moby-dick.jsonl")).unwrap();
    let out = dir.join("data");
    prepare(&PrepareOptions::new(
        input,
        out.clone(),
        TokenizerSpec::Bytes,
        SEQ_LEN,
    ))
    .unwrap();
    out
}

/// The tiny preset shrunk to about 0.4 M parameters, so the whole study takes about a minute.
fn preset() -> Preset {
    let mut preset = Preset::load("tiny").unwrap();
    preset.model.hidden_size = 128;
    preset.model.intermediate_size = 384;
    preset.model.num_hidden_layers = 2;
    preset.train.seq_len = SEQ_LEN;
    preset.train.warmup_steps = 10;
    preset
}

fn schema(preset: &Preset, config: CodecConfig) -> Schema {
    let specs = parameter_shapes(&preset.model)
        .into_iter()
        .map(|(name, shape)| {
            TensorSpec::new(name, &shape.iter().map(|&d| d as usize).collect::<Vec<_>>())
        })
        .collect();
    Schema::new(specs, config).unwrap()
}

/// The bytes a payload of `schema` takes for its values alone: every payload is at least this.
fn value_floor(schema: &Schema) -> u64 {
    (0..schema.len())
        .map(|i| value_bytes(schema.config().values, schema.plan(i).kept()) as u64)
        .sum()
}

fn assert_learned(run: &RunResult) {
    let start = run.curve[0].bpb;
    assert!(
        run.final_bpb < 0.75 * start,
        "{}: validation BpB went from {start:.3} to {:.3}",
        run.name,
        run.final_bpb
    );
    let (first, last) = run.train_loss_first_last().unwrap();
    assert!(
        last < first,
        "{}: training loss {first:.3} → {last:.3}",
        run.name
    );
}

fn assert_payloads_within(run: &RunResult, schema: &Schema) {
    let range = run.payload_bytes.unwrap();
    assert!(
        range.min >= value_floor(schema) && range.max <= schema.max_payload_bytes() as u64,
        "{}: payloads of {range:?} bytes, the schema allows {}..={}",
        run.name,
        value_floor(schema),
        schema.max_payload_bytes()
    );
    assert!(
        run.bytes_sent >= range.min * run.exchanges && run.bytes_sent <= range.max * run.exchanges,
        "{}: {} bytes sent in {} exchanges of {range:?}",
        run.name,
        run.bytes_sent,
        run.exchanges
    );
    // With two replicas each one downloads exactly what the other uploaded.
    assert_eq!(run.bytes_received, run.bytes_sent, "{}", run.name);
}

#[test]
fn every_method_learns_and_counts_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = prepare_data(dir.path());
    let preset = preset();
    let settings = Settings {
        replicas: REPLICAS,
        tokens: STEPS * (REPLICAS * 2 * SEQ_LEN) as u64,
        batch_size: 2,
        eval_points: 4,
        validation_samples: 32,
        ..Settings::quick()
    };
    let data = StudyData::open(&data_dir, preset.model.vocab_size, 0, 32).unwrap();
    let study = Study {
        preset: &preset,
        data: &data,
        settings: &settings,
        device: Device::Cpu,
    };
    assert_eq!(study.steps(), STEPS);
    let dense_exchange = ring_allreduce_bytes(4 * preset.model.parameter_count(), REPLICAS as u64);

    let ddp = study.run(Method::Ddp).unwrap();
    assert_learned(&ddp);
    assert_eq!((ddp.steps, ddp.exchanges), (STEPS, STEPS));
    assert_eq!(ddp.bytes_sent, STEPS * dense_exchange);
    assert_eq!(ddp.tokens, settings.tokens);

    let diloco = study.run(Method::Diloco { inner_steps: 10 }).unwrap();
    assert_learned(&diloco);
    assert_eq!(diloco.exchanges, STEPS / 10);
    assert_eq!(diloco.bytes_sent, STEPS / 10 * dense_exchange);

    let sparseloco = study
        .run(Method::SparseLoco {
            inner_steps: 10,
            topk: 64,
        })
        .unwrap();
    assert_learned(&sparseloco);
    assert_eq!(sparseloco.exchanges, STEPS / 10);
    let codec = CodecConfig {
        topk: 64,
        ..CodecConfig::default()
    };
    assert_payloads_within(&sparseloco, &schema(&preset, codec));
    assert!(sparseloco.bytes_sent * 100 < diloco.bytes_sent);

    // Overlapped windows: the aggregate arrives two steps into the next round. With none, the
    // guess is taken back before any step and the run is the sequential one, to rounding.
    let overlapped = study
        .run(Method::Overlapped {
            inner_steps: 10,
            topk: 64,
            delay: 2,
        })
        .unwrap();
    assert_learned(&overlapped);
    assert_eq!(overlapped.exchanges, STEPS / 10);
    let at_once = study
        .run(Method::Overlapped {
            inner_steps: 10,
            topk: 64,
            delay: 0,
        })
        .unwrap();
    assert!(
        (at_once.final_bpb - sparseloco.final_bpb).abs() < 1e-3 * sparseloco.final_bpb,
        "{} against {}",
        at_once.final_bpb,
        sparseloco.final_bpb
    );

    let demo = study.run(Method::Demo { topk: 32 }).unwrap();
    assert_learned(&demo);
    assert_eq!(demo.exchanges, STEPS);
    let codec = CodecConfig {
        topk: 32,
        transform: Transform::Dct,
        values: ValueCoding::Bf16,
        ..CodecConfig::default()
    };
    assert_payloads_within(&demo, &schema(&preset, codec));
}

#[test]
fn the_same_settings_give_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = prepare_data(dir.path());
    let preset = preset();
    let settings = Settings {
        replicas: REPLICAS,
        tokens: 20 * (REPLICAS * 2 * SEQ_LEN) as u64,
        batch_size: 2,
        eval_points: 2,
        validation_samples: 16,
        ..Settings::quick()
    };
    let data = StudyData::open(&data_dir, preset.model.vocab_size, 0, 16).unwrap();
    let study = Study {
        preset: &preset,
        data: &data,
        settings: &settings,
        device: Device::Cpu,
    };
    let method = Method::SparseLoco {
        inner_steps: 5,
        topk: 32,
    };
    let (a, b) = (study.run(method).unwrap(), study.run(method).unwrap());
    assert_eq!(a.final_bpb, b.final_bpb);
    assert_eq!(a.bytes_sent, b.bytes_sent);
}
