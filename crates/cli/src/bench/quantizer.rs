//! `templar bench quantizer`: how well each value quantizer reconstructs the values top-k keeps.

use anyhow::Result;
use serde::Serialize;
use templar_codec::quant::{Rule, quantize};
use templar_codec::{CodecConfig, Schema, TensorSpec, ValueCoding, compress_tensor};

use super::synthetic::{Distribution, fill};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 1024)]
    rows: usize,
    #[arg(long, default_value_t = 1024)]
    cols: usize,
}

#[derive(Serialize)]
struct Row {
    distribution: String,
    rule: &'static str,
    bins: u16,
    range: f32,
    /// ‖v − v̂‖ / ‖v‖ over the kept values.
    relative_error: f64,
}

pub fn run(args: Args) -> Result<()> {
    let schema = Schema::new(
        vec![TensorSpec::new("w", &[args.rows, args.cols])],
        CodecConfig {
            values: ValueCoding::F32,
            ..CodecConfig::default()
        },
    )?;
    let mut rows = Vec::new();
    for dist in [Distribution::Gaussian, Distribution::Laplace] {
        let kept = kept_values(&schema, dist)?;
        let candidates = [
            (Rule::Upstream, 4, 6.0),
            (Rule::Symmetric, 4, 3.0),
            (Rule::Symmetric, 4, 4.0),
            (Rule::Symmetric, 4, 5.0),
            (Rule::Symmetric, 4, 6.0),
            (Rule::Upstream, 256, 6.0),
            (Rule::Symmetric, 256, 6.0),
            (Rule::Symmetric, 256, 8.0),
        ];
        for (rule, bins, range) in candidates {
            rows.push(Row {
                distribution: format!("{dist:?}").to_lowercase(),
                rule: if rule == Rule::Symmetric {
                    "symmetric"
                } else {
                    "upstream"
                },
                bins,
                range,
                relative_error: relative_error(&kept, rule, bins, range),
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!(
            "{:<10} {:<10} {:>5} {:>6} {:>15}",
            "input", "rule", "bins", "range", "relative error"
        );
        for r in rows {
            println!(
                "{:<10} {:<10} {:>5} {:>6} {:>15.4}",
                r.distribution, r.rule, r.bins, r.range, r.relative_error
            );
        }
    }
    Ok(())
}

/// The values top-k keeps after a few windows of error feedback (so `e` has its steady shape).
fn kept_values(schema: &Schema, dist: Distribution) -> Result<Vec<f32>> {
    let n = schema.numel();
    let (mut e, mut delta) = (vec![0f32; n], vec![0f32; n]);
    let mut kept = Vec::new();
    for window in 0..5 {
        fill(&mut delta, 7 + window, 1e-3, dist);
        let t = compress_tensor(schema, 0, &mut e, &delta, Rule::Symmetric)?;
        kept = t.values.to_f32();
    }
    Ok(kept)
}

fn relative_error(v: &[f32], rule: Rule, bins: u16, range: f32) -> f64 {
    let q = quantize(v, bins, range, rule);
    let levels = q.levels(1.0);
    let (mut err, mut norm) = (0f64, 0f64);
    for (&x, &c) in v.iter().zip(&q.codes) {
        err += ((x - levels[c as usize]) as f64).powi(2);
        norm += (x as f64).powi(2);
    }
    (err / norm).sqrt()
}
