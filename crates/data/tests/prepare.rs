#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use templar_data::{Dataset, PrepareOptions, PrepareOutcome, Split, TokenizerSpec, prepare};

fn options(input: &Path, out: &Path, seq_len: usize) -> PrepareOptions {
    let mut options = PrepareOptions::new(input.into(), out.into(), TokenizerSpec::Bytes, seq_len);
    options.validation_fraction = 0.0;
    options.shard_samples = 2;
    options
}

#[test]
fn byte_samples_hold_the_text_and_its_target_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir(&input).unwrap();
    // Two documents: "abc" + EOT and "defgh" + EOT = 10 tokens → two samples of 4, 2 tokens dropped.
    fs::write(
        input.join("docs.jsonl"),
        "{\"text\":\"abc\"}\n{\"text\":\"defgh\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let PrepareOutcome::Prepared(manifest) = prepare(&options(&input, &out, 4)).unwrap() else {
        panic!("expected a fresh preparation")
    };
    assert_eq!(manifest.train.samples, 2);
    assert_eq!(manifest.dropped_tokens, 2);
    assert_eq!(manifest.documents, 2);
    assert_eq!(manifest.text_bytes, 8);

    let dataset = Dataset::open(&out).unwrap();
    dataset.verify().unwrap();
    let train = dataset.split(Split::Train);
    let mut tokens = Vec::new();
    train.read_tokens(0, &mut tokens).unwrap();
    train.read_tokens(1, &mut tokens).unwrap();
    let [a, b, c, d, e, f] = [b'a', b'b', b'c', b'd', b'e', b'f'].map(i64::from);
    assert_eq!(tokens, vec![a, b, c, 256, d, e, f, b'g'.into()]);
    // Sample 0 predicts "b", "c", EOT → 2 bytes; sample 1 predicts "e", "f", "g" → 3 bytes.
    assert_eq!(train.target_bytes(0).unwrap(), 2);
    assert_eq!(train.target_bytes(1).unwrap(), 3);
    assert!(train.read_tokens(2, &mut tokens).is_err());
}

#[test]
fn rerun_is_a_no_op_and_changed_input_is_prepared_again() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir(&input).unwrap();
    fs::write(input.join("a.txt"), "x".repeat(100)).unwrap();
    let out = dir.path().join("out");
    assert!(matches!(
        prepare(&options(&input, &out, 8)).unwrap(),
        PrepareOutcome::Prepared(_)
    ));
    assert!(matches!(
        prepare(&options(&input, &out, 8)).unwrap(),
        PrepareOutcome::UpToDate(_)
    ));
    fs::write(input.join("a.txt"), "y".repeat(100)).unwrap();
    assert!(matches!(
        prepare(&options(&input, &out, 8)).unwrap(),
        PrepareOutcome::Prepared(_)
    ));
    assert!(matches!(
        prepare(&options(&input, &out, 16)).unwrap(),
        PrepareOutcome::Prepared(_)
    ));
}

#[test]
fn truncated_shard_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir(&input).unwrap();
    fs::write(input.join("a.txt"), "z".repeat(100)).unwrap();
    let out = dir.path().join("out");
    prepare(&options(&input, &out, 8)).unwrap();
    let shard = out.join("train-00000.tokens");
    let bytes = fs::read(&shard).unwrap();
    fs::write(&shard, &bytes[..bytes.len() - 1]).unwrap();
    let error = Dataset::open(&out).err().unwrap().to_string();
    assert!(
        error.contains("train-00000.tokens") && error.contains("re-run"),
        "{error}"
    );
}

#[test]
fn refuses_to_replace_a_folder_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir(&input).unwrap();
    fs::write(input.join("a.txt"), "z".repeat(100)).unwrap();
    let out = dir.path().join("precious");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("thesis.tex"), "do not delete").unwrap();
    assert!(prepare(&options(&input, &out, 8)).is_err());
    assert!(out.join("thesis.tex").exists());
}

#[test]
fn gpt2_validation_split_is_held_out_by_document() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir(&input).unwrap();
    let docs: String = (0..200)
        .map(|i| {
            format!("{{\"text\":\"Document number {i} talks about whales and ships at sea.\"}}\n")
        })
        .collect();
    fs::write(input.join("docs.jsonl"), docs).unwrap();
    let out = dir.path().join("out");
    let mut opts = PrepareOptions::new(input, out.clone(), TokenizerSpec::Gpt2, 16);
    opts.validation_fraction = 0.1;
    let PrepareOutcome::Prepared(manifest) = prepare(&opts).unwrap() else {
        panic!()
    };
    assert!(
        manifest.validation.samples > 0 && manifest.train.samples > manifest.validation.samples
    );
    assert_eq!(manifest.token_width, templar_data::TokenWidth::U16);
    let total = manifest.train.target_bytes + manifest.validation.target_bytes;
    assert!(total <= manifest.text_bytes);
}
