//! `templar bench codec`: the miner's compression path and everyone's aggregation path on one
//! large matrix, plus payload size in bits per parameter.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use templar_codec::{
    CodecConfig, IndexCoding, Payload, Schema, TensorSpec, Transform, ValueCoding,
};

use super::synthetic::{Distribution, fill};

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 4096)]
    rows: usize,
    #[arg(long, default_value_t = 4096)]
    cols: usize,
    #[arg(long, default_value_t = 64)]
    chunk: usize,
    #[arg(long, default_value_t = 64)]
    topk: usize,
    /// Peers merged in the aggregation measurement.
    #[arg(long, default_value_t = 20)]
    peers: usize,
    /// Timed repetitions of each path (the median is reported).
    #[arg(long, default_value_t = 9)]
    iters: usize,
    #[arg(long, value_enum, default_value = "two-bit")]
    values: ValuesArg,
    /// Apply the per-chunk DCT before top-k.
    #[arg(long)]
    dct: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "gaussian")]
    distribution: Distribution,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ValuesArg {
    TwoBit,
    EightBit,
    F32,
    Bf16,
}

#[derive(Serialize)]
struct Report {
    params: usize,
    threads: usize,
    peers: usize,
    values: &'static str,
    dct: bool,
    /// Error feedback + top-k + quantize + subtract what was sent + encode, per second.
    compress_mparam_s: f64,
    compress_ms: f64,
    compress_select_quantize_ms: f64,
    compress_encode_ms: f64,
    /// Decode (validate) + clip + merge of all peers into a dense update, per second.
    aggregate20_mparam_s: f64,
    aggregate_ms: f64,
    aggregate_decode_ms: f64,
    aggregate_merge_ms: f64,
    payload_bytes: usize,
    payload_bytes_12bit: usize,
    bits_per_param: f64,
    bits_per_param_12bit: f64,
}

pub fn run(args: Args) -> Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let report = pool.install(|| measure(&args, threads))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn measure(args: &Args, threads: usize) -> Result<Report> {
    let values = match args.values {
        ValuesArg::TwoBit => ValueCoding::TWO_BIT,
        ValuesArg::EightBit => ValueCoding::EIGHT_BIT,
        ValuesArg::F32 => ValueCoding::F32,
        ValuesArg::Bf16 => ValueCoding::Bf16,
    };
    let config = CodecConfig {
        target_chunk: args.chunk,
        topk: args.topk,
        transform: if args.dct {
            Transform::Dct
        } else {
            Transform::None
        },
        values,
        ..CodecConfig::default()
    };
    let schema = Schema::new(
        vec![TensorSpec::new("weight", &[args.rows, args.cols])],
        config,
    )?;
    let n = schema.numel();
    let iters = args.iters.max(1);
    let mut delta = vec![0f32; n];
    let mut ef = vec![vec![0f32; n]];

    fill(&mut delta, 1, 1e-3, args.distribution);
    let (mut select, mut encode) = (Vec::new(), Vec::new());
    let mut payload = None;
    for _ in 0..iters + 1 {
        let t0 = Instant::now();
        let p = templar_codec::compress(&schema, &mut ef, &[&delta])?;
        let t1 = Instant::now();
        let bytes = templar_codec::encode(&schema, &p, IndexCoding::Rice);
        let t2 = Instant::now();
        select.push(t1 - t0);
        encode.push(t2 - t1);
        std::hint::black_box(bytes);
        payload = Some(p);
    }
    let payload = payload.context("no iteration ran")?;
    let rice = templar_codec::encode(&schema, &payload, IndexCoding::Rice).len();
    let packed12 = templar_codec::encode(&schema, &payload, IndexCoding::Packed12).len();

    let peers = peer_payloads(&schema, args, &mut delta)?;
    let mut out = vec![vec![0f32; n]];
    let (mut decode, mut merge) = (Vec::new(), Vec::new());
    for _ in 0..iters + 1 {
        let t0 = Instant::now();
        let decoded: Vec<Payload> = peers
            .par_iter()
            .map(|b| templar_codec::decode(&schema, b))
            .collect::<Result<_, _>>()?;
        let t1 = Instant::now();
        let refs: Vec<&Payload> = decoded.iter().collect();
        templar_codec::aggregate(&schema, &refs, &mut out)?;
        let t2 = Instant::now();
        decode.push(t1 - t0);
        merge.push(t2 - t1);
    }
    std::hint::black_box(&out);

    let ms = |v: &[Duration]| median(&v[1..]).as_secs_f64() * 1e3;
    let total = |a: &[Duration], b: &[Duration]| {
        let sums: Vec<Duration> = a[1..].iter().zip(&b[1..]).map(|(x, y)| *x + *y).collect();
        median(&sums).as_secs_f64() * 1e3
    };
    let compress_ms = total(&select, &encode);
    let aggregate_ms = total(&decode, &merge);
    Ok(Report {
        params: n,
        threads,
        peers: args.peers,
        values: value_name(values),
        dct: args.dct,
        compress_mparam_s: n as f64 / compress_ms / 1e3,
        compress_ms,
        compress_select_quantize_ms: ms(&select),
        compress_encode_ms: ms(&encode),
        aggregate20_mparam_s: n as f64 / aggregate_ms / 1e3,
        aggregate_ms,
        aggregate_decode_ms: ms(&decode),
        aggregate_merge_ms: ms(&merge),
        payload_bytes: rice,
        payload_bytes_12bit: packed12,
        bits_per_param: rice as f64 * 8.0 / n as f64,
        bits_per_param_12bit: packed12 as f64 * 8.0 / n as f64,
    })
}

/// Encoded payloads of `args.peers` miners, each from its own pseudo-gradient.
fn peer_payloads(schema: &Schema, args: &Args, delta: &mut [f32]) -> Result<Vec<Vec<u8>>> {
    let mut ef = vec![vec![0f32; delta.len()]];
    (0..args.peers)
        .map(|p| {
            fill(
                delta,
                100 + p as u64,
                1e-3 * (1.0 + p as f32 / 10.0),
                args.distribution,
            );
            ef[0].fill(0.0);
            let payload = templar_codec::compress(schema, &mut ef, &[&*delta])?;
            Ok(templar_codec::encode(schema, &payload, IndexCoding::Rice))
        })
        .collect()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn value_name(v: ValueCoding) -> &'static str {
    match v {
        ValueCoding::Quantized { n_bins: 4, .. } => "2-bit",
        ValueCoding::Quantized { n_bins: 256, .. } => "8-bit",
        ValueCoding::Quantized { .. } => "quantized",
        ValueCoding::F32 => "f32",
        ValueCoding::Bf16 => "bf16",
    }
}

fn print_table(r: &Report) {
    println!(
        "codec bench: {} params, {} threads, {} values{}",
        r.params,
        r.threads,
        r.values,
        if r.dct { ", DCT" } else { "" }
    );
    println!(
        "  compress     {:>9.1} Mparam/s  {:>7.2} ms  (select+quantize+feedback {:.2} ms, encode {:.2} ms)",
        r.compress_mparam_s, r.compress_ms, r.compress_select_quantize_ms, r.compress_encode_ms
    );
    println!(
        "  aggregate {:>2} {:>9.1} Mparam/s  {:>7.2} ms  (decode+validate {:.2} ms, clip+merge {:.2} ms)",
        r.peers,
        r.aggregate20_mparam_s,
        r.aggregate_ms,
        r.aggregate_decode_ms,
        r.aggregate_merge_ms
    );
    println!(
        "  payload      {:>9} bytes = {:.4} bits/param  (12-bit indices: {} bytes = {:.4} bits/param)",
        r.payload_bytes, r.bits_per_param, r.payload_bytes_12bit, r.bits_per_param_12bit
    );
}
